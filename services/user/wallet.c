/*
 * wallet: GetWallet, TopUp, and the internal Debit and Credit.
 *
 * Every balance change is one SQL statement that updates the wallet and
 * inserts its ledger row together, so the balance always equals the sum of
 * the ledger. Each change is keyed (top-up: the caller's idempotency key;
 * debit/credit: the payment or refund id), and the key is looked up in the
 * same statement: a repeated call changes nothing and returns the first
 * result. Two concurrent calls with one key collide on a UNIQUE constraint;
 * the loser's statement is rolled back whole and it reads the winner's row.
 * The database CHECKs make a negative balance impossible whatever the code
 * does.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.pb-c.h"
#include "id/id.h"
#include "log/log.h"
#include "money/money.h"
#include "outbox/outbox.h"
#include "pgrpc/pgrpc.h"
#include "user.pb-c.h"
#include "user_service.h"
#include "wire/wire.h"

static const char wallet_get_sql[] =
    "SELECT user_id, balance, currency FROM wallets WHERE user_id = $1";

/* Whether the debit window $1 (Unix ms) has closed, by the database clock.
 * The statement's time, not now(): in a batch's transaction (Debit's
 * batch code, wallet_debit_batch) now() is when the batch began. */
static const char window_closed_sql[] =
    "SELECT statement_timestamp() > to_timestamp($1::bigint / 1000.0)";

/* $1 user, $2 key, $3 amount, $4 new top-up id, $5 event id, $6 event
 * payload (hex). The top-up, its ledger row and its event (the outbox row
 * that lib/outbox relays to the "wallet" topic) are one statement. */
static const char top_up_sql[] =
    "WITH prior AS ("
    "  SELECT id, amount, balance_after, created_at FROM topups"
    "   WHERE user_id = $1 AND idempotency_key = $2),"
    " moved AS ("
    "  UPDATE wallets SET balance = balance + $3::bigint, updated_at = now()"
    "   WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM prior)"
    "  RETURNING balance),"
    " entry AS ("
    "  INSERT INTO ledger (user_id, kind, amount, balance_after, reference)"
    "  SELECT $1, 'TOPUP', $3::bigint, balance, $4 FROM moved),"
    " topup AS ("
    "  INSERT INTO topups (id, user_id, idempotency_key, amount, balance_after)"
    "  SELECT $4, $1, $2, $3::bigint, balance FROM moved"
    "  RETURNING id, amount, balance_after, created_at),"
    " event AS ("
    "  INSERT INTO outbox (event_id, topic, key, payload)"
    "  SELECT $5, 'wallet', $1, decode($6, 'hex') FROM topup)"
    " SELECT false, id, amount, balance_after, " PGRPC_TIME(
        "created_at") " FROM topup"
                      " UNION ALL"
                      " SELECT true, id, amount, balance_after, " PGRPC_TIME(
                          "created_at") " FROM prior";

/* $1 user, $2 amount, $3 reference, $4 not after (Unix ms, 0 = always,
 * checked against the statement's own time: see window_closed_sql) */
static const char debit_sql[] =
    "WITH prior AS ("
    "  SELECT id, -amount AS amount, balance_after, created_at FROM ledger"
    "   WHERE user_id = $1 AND kind = 'DEBIT' AND reference = $3),"
    " moved AS ("
    "  UPDATE wallets SET balance = balance - $2::bigint, updated_at = now()"
    "   WHERE user_id = $1 AND balance >= $2::bigint AND NOT EXISTS (SELECT 1 FROM prior)"
    "     AND ($4::bigint = 0 OR statement_timestamp() <= to_timestamp($4::bigint / 1000.0))"
    "  RETURNING balance),"
    " entry AS ("
    "  INSERT INTO ledger (user_id, kind, amount, balance_after, reference)"
    "  SELECT $1, 'DEBIT', -$2::bigint, balance, $3 FROM moved"
    "  RETURNING id, -amount AS amount, balance_after, created_at)"
    " SELECT false, id, amount, balance_after, " PGRPC_TIME(
        "created_at") " FROM entry"
                      " UNION ALL"
                      " SELECT true, id, amount, balance_after, " PGRPC_TIME(
                          "created_at") " FROM prior";

/* $1 user, $2 amount, $3 reference */
static const char credit_sql[] =
    "WITH prior AS ("
    "  SELECT id, amount, balance_after, created_at FROM ledger"
    "   WHERE user_id = $1 AND kind = 'CREDIT' AND reference = $3),"
    " moved AS ("
    "  UPDATE wallets SET balance = balance + $2::bigint, updated_at = now()"
    "   WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM prior)"
    "  RETURNING balance),"
    " entry AS ("
    "  INSERT INTO ledger (user_id, kind, amount, balance_after, reference)"
    "  SELECT $1, 'CREDIT', $2::bigint, balance, $3 FROM moved"
    "  RETURNING id, amount, balance_after, created_at)"
    " SELECT false, id, amount, balance_after, " PGRPC_TIME(
        "created_at") " FROM entry"
                      " UNION ALL"
                      " SELECT true, id, amount, balance_after, " PGRPC_TIME(
                          "created_at") " FROM prior";

/* Parses column 'col' of row 0 as int64 (the database produced it). */
static int64_t column_int64(const PGresult *rows, int col)
{
    return strtoll(PQgetvalue(rows, 0, col), NULL, 10);
}

/* The calling user's id, or NULL after failing the call. */
static const char *caller_user(rpc_ctx_t *ctx)
{
    const char *user = rpc_ctx_user_id(ctx);
    if (user[0] == '\0') {
        rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated",
                     "this call needs an authenticated user");
        return NULL;
    }
    return user;
}

/* Tells a missing wallet from a short balance after a debit changed
 * nothing. */
static Paygate__V1__Code explain_no_debit(rpc_ctx_t *ctx, user_thread_t *thread, const char *user,
                                          int64_t amount)
{
    const char *params[] = {user};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(thread->pg, "wallet_get", wallet_get_sql, 1, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "debit");
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found",
                            "no wallet for user %s", user);
    }
    int64_t balance = column_int64(rows, 1);
    PQclear(rows);
    char text[32];
    snprintf(text, sizeof text, "%" PRId64, balance);
    rpc_ctx_detail(ctx, "balance", text);
    return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "insufficient_funds",
                        "insufficient funds: balance %" PRId64 " paise, needed %" PRId64, balance,
                        amount);
}

/* The answer for the wallet in row 0 of 'rows' (cleared here). */
static Paygate__V1__Code wallet_answer(rpc_ctx_t *ctx, PGresult *rows, Paygate__V1__Wallet *reply)
{
    reply->user_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 0));
    reply->balance = column_int64(rows, 1);
    reply->currency = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 2));
    PQclear(rows);
    return PAYGATE__V1__CODE__OK;
}

/* wallet_answer as a pgrpc_row_answer_fn. */
static Paygate__V1__Code wallet_row_answer(rpc_ctx_t *ctx, PGresult *rows,
                                           const ProtobufCMessage *request, ProtobufCMessage *reply)
{
    (void)request;
    return wallet_answer(ctx, rows, (Paygate__V1__Wallet *)reply);
}

Paygate__V1__Code wallet_get(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                             ProtobufCMessage *reply_msg, void *thread_state)
{
    (void)request_msg;
    user_thread_t *thread = thread_state;
    Paygate__V1__Wallet *reply = (Paygate__V1__Wallet *)reply_msg;
    const char *user = caller_user(ctx);
    if (user == NULL)
        return PAYGATE__V1__CODE__UNAUTHENTICATED;
    const char *params[] = {user};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(thread->pg, "wallet_get", wallet_get_sql, 1, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "get wallet");
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found",
                            "no wallet for this user");
    }
    return wallet_answer(ctx, rows, reply);
}

/* Batch code of GetWallet (lib/rpc RPC_BATCH_HANDLER): the reads run in
 * one round trip (pg_exec_prepared_batch; a transaction that writes
 * nothing) and each wallet found is answered from its row. A caller
 * without a user or a wallet, or everyone when the round trip fails, is
 * left to wallet_get, which answers it alone. */
void wallet_get_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                      ProtobufCMessage *const *replies, Paygate__V1__Code *codes, bool *answered,
                      size_t count, void *thread_state)
{
    user_thread_t *thread = thread_state;
    const char *users[rpc_batch_items_max][1];
    pgrpc_batch_t batch = {0};
    for (size_t i = 0; i < count && i < rpc_batch_items_max; i++) {
        users[batch.count][0] = rpc_ctx_user_id(ctxs[i]);
        if (users[batch.count][0][0] == '\0')
            continue; /* wallet_get refuses it */
        batch.params[batch.count] = users[batch.count];
        batch.index[batch.count++] = i;
    }
    pgrpc_batch_run(thread->pg, "wallet_get", wallet_get_sql, 1, &batch, ctxs, requests, replies,
                    codes, answered, wallet_row_answer);
}

Paygate__V1__Code wallet_top_up(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                ProtobufCMessage *reply_msg, void *thread_state)
{
    user_thread_t *thread = thread_state;
    const Paygate__V1__TopUpRequest *request = (const Paygate__V1__TopUpRequest *)request_msg;
    Paygate__V1__TopUp *reply = (Paygate__V1__TopUp *)reply_msg;
    const char *user = caller_user(ctx);
    if (user == NULL)
        return PAYGATE__V1__CODE__UNAUTHENTICATED;
    if (!money_amount_valid(request->amount, topup_amount_minor_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_amount",
                            "amount must be an integer number of paise from 1 to %d",
                            topup_amount_minor_max);
    if (!wire_token_valid(request->idempotency_key, idempotency_key_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_idempotency_key",
                            "an idempotency key of 1..255 printable characters is required");
    char amount[24], id[id_bytes_max];
    snprintf(amount, sizeof amount, "%" PRId64, request->amount);
    if (!id_new("top", id, sizeof id))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error", "no id");
    char event_id[96], occurred_at[32];
    snprintf(event_id, sizeof event_id, "topup.succeeded:%s", id);
    outbox_now_rfc3339(occurred_at, sizeof occurred_at);
    Paygate__V1__MoneyEvent event = PAYGATE__V1__MONEY_EVENT__INIT;
    event.event_id = event_id;
    event.type = PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED;
    event.user_id = (char *)user;
    event.amount = request->amount;
    event.currency = (char *)"INR";
    event.topup_id = id;
    event.occurred_at = occurred_at;
    event.request_id = (char *)log_request_id(); /* the request being served */
    char *payload = outbox_payload_hex(&event.base);
    if (payload == NULL)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error", "no memory");
    const char *params[] = {user, request->idempotency_key, amount, id, event_id, payload};
    PGresult *rows = NULL;
    pg_result_t result = PG_OK;
    for (int attempt = 0; attempt < 2; attempt++) {
        result = pg_exec_prepared(thread->pg, "wallet_top_up", top_up_sql, 6, params, &rows);
        /* a concurrent call with the same key won: read its result */
        if (!(result == PG_CONSTRAINT &&
              strcmp(pg_error_constraint(thread->pg), "topups_user_id_idempotency_key_key") == 0))
            break;
    }
    free(payload);
    if (result == PG_CONSTRAINT &&
        strcmp(pg_error_constraint(thread->pg), "wallets_balance_check") == 0)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "balance_limit",
                            "the wallet cannot hold more than %" PRId64 " paise",
                            MONEY_BALANCE_MINOR_MAX);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "top up");
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found",
                            "no wallet for this user");
    }
    bool replayed = PQgetvalue(rows, 0, 0)[0] == 't';
    int64_t stored_amount = column_int64(rows, 2);
    if (replayed && stored_amount != request->amount) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_key_reused",
                            "this idempotency key was used for a top-up of %" PRId64
                            " paise; use a new key for a different amount",
                            stored_amount);
    }
    reply->id = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 1));
    reply->amount = stored_amount;
    reply->balance = column_int64(rows, 3);
    reply->currency = (char *)"INR";
    reply->created_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 4));
    PQclear(rows);
    if (reply->balance < reply->amount) {
        log_error("top up: balance %" PRId64 " below the top-up %" PRId64 " (request %s)",
                  reply->balance, reply->amount, rpc_ctx_request_id(ctx));
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "balance invariant broken");
    }
    if (!replayed)
        log_info("top up: %s +%" PRId64 " paise for %s (request %s)", reply->id, reply->amount,
                 user, rpc_ctx_request_id(ctx));
    return PAYGATE__V1__CODE__OK;
}

/* The checks of a Debit or Credit request before any statement: OK, or
 * the call failed with why. */
static Paygate__V1__Code
movement_check(rpc_ctx_t *ctx, const Paygate__V1__WalletMovementRequest *request, bool debit)
{
    if (strcmp(rpc_ctx_principal(ctx), "gateway") == 0)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__PERMISSION_DENIED, "internal_only",
                            "%s is internal to paygate's services", debit ? "Debit" : "Credit");
    if (!wire_token_valid(request->user_id, 64))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_user_id",
                            "user_id is required");
    if (!money_amount_valid(request->amount, movement_amount_minor_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_amount",
                            "amount must be from 1 to %d paise", movement_amount_minor_max);
    if (!wire_token_valid(request->reference, reference_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_reference",
                            "reference of 1..128 printable characters is required");
    return PAYGATE__V1__CODE__OK;
}

/* The answer for a movement whose statement returned one row ('rows',
 * cleared here): the movement, or reference_reused when the reference
 * was used before for another amount. */
static Paygate__V1__Code movement_answer(rpc_ctx_t *ctx, PGresult *rows,
                                         const Paygate__V1__WalletMovementRequest *request,
                                         bool debit, Paygate__V1__WalletMovement *reply)
{
    const char *kind = debit ? "DEBIT" : "CREDIT";
    bool replayed = PQgetvalue(rows, 0, 0)[0] == 't';
    int64_t stored_amount = column_int64(rows, 2);
    if (replayed && stored_amount != request->amount) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__ALREADY_EXISTS, "reference_reused",
                            "reference %s was used for a %s of %" PRId64 " paise",
                            request->reference, kind, stored_amount);
    }
    reply->ledger_id = column_int64(rows, 1);
    reply->user_id = rpc_ctx_strdup(ctx, request->user_id);
    reply->kind = (char *)kind;
    reply->amount = stored_amount;
    reply->balance_after = column_int64(rows, 3);
    reply->reference = rpc_ctx_strdup(ctx, request->reference);
    reply->created_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 4));
    reply->replayed = replayed;
    PQclear(rows);
    if (reply->balance_after < 0) { /* the CHECK makes this impossible */
        log_error("%s: negative balance %" PRId64 " for %s", kind, reply->balance_after,
                  request->user_id);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "balance invariant broken");
    }
    if (!replayed)
        log_info("%s: %s %" PRId64 " paise for %s, balance %" PRId64 " (request %s)", kind,
                 request->reference, stored_amount, request->user_id, reply->balance_after,
                 rpc_ctx_request_id(ctx));
    return PAYGATE__V1__CODE__OK;
}

/* movement_answer of a debit, as a pgrpc_row_answer_fn. */
static Paygate__V1__Code debit_row_answer(rpc_ctx_t *ctx, PGresult *rows,
                                          const ProtobufCMessage *request, ProtobufCMessage *reply)
{
    return movement_answer(ctx, rows, (const Paygate__V1__WalletMovementRequest *)request, true,
                           (Paygate__V1__WalletMovement *)reply);
}

/* Debit (kind "DEBIT") or Credit (kind "CREDIT") of the request's user. */
static Paygate__V1__Code wallet_move(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                     ProtobufCMessage *reply_msg, user_thread_t *thread, bool debit)
{
    const Paygate__V1__WalletMovementRequest *request =
        (const Paygate__V1__WalletMovementRequest *)request_msg;
    Paygate__V1__WalletMovement *reply = (Paygate__V1__WalletMovement *)reply_msg;
    Paygate__V1__Code checked = movement_check(ctx, request, debit);
    if (checked != PAYGATE__V1__CODE__OK)
        return checked;
    char amount[24];
    snprintf(amount, sizeof amount, "%" PRId64, request->amount);
    char not_after[24];
    snprintf(not_after, sizeof not_after, "%" PRId64, request->not_after_ms);
    const char *params[] = {request->user_id, amount, request->reference, not_after};
    const char *name = debit ? "wallet_debit" : "wallet_credit";
    const char *sql = debit ? debit_sql : credit_sql;
    PGresult *rows = NULL;
    pg_result_t result = PG_OK;
    for (int attempt = 0; attempt < 3; attempt++) {
        result = pg_exec_prepared(thread->pg, name, sql, debit ? 4 : 3, params, &rows);
        /* A concurrent call with this reference won: its row is there now. */
        if (result == PG_CONSTRAINT &&
            strcmp(pg_error_constraint(thread->pg), "ledger_user_id_kind_reference_key") == 0)
            continue;
        /* A debit that waited for the wallet's row lock re-checks the
         * balance against the other call's result, but its "prior" lookup
         * saw the statement's start: if that other call was the same
         * reference, only a new statement sees its ledger row. */
        if (result == PG_OK && debit && attempt == 0 && PQntuples(rows) == 0) {
            PQclear(rows);
            rows = NULL;
            continue;
        }
        break;
    }
    if (result == PG_CONSTRAINT &&
        strcmp(pg_error_constraint(thread->pg), "wallets_balance_check") == 0)
        return debit ? explain_no_debit(ctx, thread, request->user_id, request->amount)
                     : rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "balance_limit",
                                    "the wallet would exceed its limit");
    if (result == PG_CONSTRAINT &&
        strcmp(pg_error_constraint(thread->pg), "ledger_user_id_fkey") == 0)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found",
                            "no wallet for user %s", request->user_id);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, debit ? "debit" : "credit");
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        if (debit && request->not_after_ms != 0) {
            const char *window_params[] = {not_after};
            PGresult *closed = NULL;
            result = pg_exec_prepared(thread->pg, "wallet_window_closed", window_closed_sql, 1,
                                      window_params, &closed);
            if (result != PG_OK)
                return pgrpc_fail(ctx, thread->pg, result, "debit");
            bool too_late = PQgetvalue(closed, 0, 0)[0] == 't';
            PQclear(closed);
            if (too_late)
                return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__DEADLINE_EXCEEDED,
                                    "debit_window_closed",
                                    "the debit's window closed before it could be applied");
        }
        if (debit)
            return explain_no_debit(ctx, thread, request->user_id, request->amount);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found",
                            "no wallet for user %s", request->user_id);
    }
    return movement_answer(ctx, rows, request, debit, reply);
}

/* Batch code of Debit (lib/rpc RPC_BATCH_HANDLER): the debits that pass
 * the checks run in one transaction sent in one round trip
 * (pg_exec_prepared_batch), each as the single call's statement; each
 * that moved money (or replayed) is answered from its row. A debit that
 * changed nothing (short balance, no wallet, window closed), and every
 * debit when the transaction did not commit, is left to wallet_debit,
 * which runs it again alone and says why: nothing of it happened. */
void wallet_debit_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                        ProtobufCMessage *const *replies, Paygate__V1__Code *codes, bool *answered,
                        size_t count, void *thread_state)
{
    user_thread_t *thread = thread_state;
    enum { most = rpc_batch_items_max };
    const char *params[most][4];
    char amounts[most][24], not_after[most][24];
    pgrpc_batch_t batch = {0};
    for (size_t i = 0; i < count && i < most; i++) {
        const Paygate__V1__WalletMovementRequest *request =
            (const Paygate__V1__WalletMovementRequest *)requests[i];
        codes[i] = movement_check(ctxs[i], request, true);
        if (codes[i] != PAYGATE__V1__CODE__OK) {
            answered[i] = true;
            continue;
        }
        size_t k = batch.count++;
        snprintf(amounts[k], sizeof amounts[k], "%" PRId64, request->amount);
        snprintf(not_after[k], sizeof not_after[k], "%" PRId64, request->not_after_ms);
        params[k][0] = request->user_id;
        params[k][1] = amounts[k];
        params[k][2] = request->reference;
        params[k][3] = not_after[k];
        batch.params[k] = params[k];
        batch.index[k] = i;
    }
    pgrpc_batch_run(thread->pg, "wallet_debit", debit_sql, 4, &batch, ctxs, requests, replies,
                    codes, answered, debit_row_answer);
}

Paygate__V1__Code wallet_debit(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                               ProtobufCMessage *reply, void *thread)
{
    return wallet_move(ctx, request, reply, thread, true);
}

Paygate__V1__Code wallet_credit(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                ProtobufCMessage *reply, void *thread)
{
    return wallet_move(ctx, request, reply, thread, false);
}
