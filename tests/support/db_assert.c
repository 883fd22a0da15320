/*
 * db_assert: reads that fail the running test. See db_assert.h.
 */
#include "db_assert.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "wallet_check.h"

PGresult *db_assert_rows(PGconn *db, const char *sql, int n, const char *const params[])
{
    PGresult *res = PQexecParams(db, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", PQerrorMessage(db));
        PQclear(res);
        fail_msg("query failed: %s: %s", why, sql);
    }
    return res;
}

void db_assert_exec(PGconn *db, const char *sql)
{
    PGresult *res = PQexec(db, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", PQerrorMessage(db));
        PQclear(res);
        fail_msg("command failed: %s: %s", why, sql);
    }
    PQclear(res);
}

int64_t db_assert_int(PGconn *db, const char *sql, int n, const char *const params[])
{
    PGresult *res = db_assert_rows(db, sql, n, params);
    if (PQntuples(res) != 1 || PQnfields(res) != 1) {
        PQclear(res);
        fail_msg("expected one value from: %s", sql);
    }
    int64_t value = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return value;
}

int64_t db_assert_wallet(PGconn *db, const char *user)
{
    int64_t balance = 0;
    char why[512];
    if (!wallet_check(db, user, &balance, why, sizeof why))
        fail_msg("%s", why);
    return balance;
}
