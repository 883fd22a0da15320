/*
 * wallet_check: the wallet invariant. See wallet_check.h.
 */
#include "wallet_check.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

bool wallet_check(PGconn *db, const char *user, int64_t *balance, char *why, size_t why_size)
{
    static const char ledger_sql[] =
        "SELECT amount, balance_after, SUM(amount) OVER (ORDER BY id) FROM users.ledger"
        " WHERE user_id = $1 ORDER BY id";
    static const char balance_sql[] = "SELECT balance FROM users.wallets WHERE user_id = $1";
    const char *params[] = {user};
    PGresult *res = PQexecParams(db, ledger_sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        snprintf(why, why_size, "ledger query failed: %s", PQerrorMessage(db));
        PQclear(res);
        return false;
    }
    int64_t running = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        int64_t after = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        running = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        if (after != running || running < 0) {
            snprintf(why, why_size,
                     "wallet %s: ledger row %d says balance %" PRId64
                     ", the sum so far is %" PRId64,
                     user, i, after, running);
            PQclear(res);
            return false;
        }
    }
    PQclear(res);
    res = PQexecParams(db, balance_sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        snprintf(why, why_size, "wallet %s: no balance: %s", user, PQerrorMessage(db));
        PQclear(res);
        return false;
    }
    *balance = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    if (*balance != running) {
        snprintf(why, why_size, "wallet %s: balance %" PRId64 " but the ledger sums to %" PRId64,
                 user, *balance, running);
        return false;
    }
    return true;
}
