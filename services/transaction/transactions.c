/*
 * transactions: Get and List, the owner's view of their history.
 *
 * A transaction belongs to the user whose money moved (the event's user
 * id); the caller is the user id in the call's metadata. Every read is
 * keyed by (id, user_id), so another user's transaction is NOT_FOUND,
 * never visible. This module only reads: rows are written by the recorder
 * (recorder.c) and never change.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "id/id.h"
#include "log/log.h"
#include "money/money.h"
#include "pgrpc/pgrpc.h"
#include "transaction.pb-c.h"
#include "transaction_service.h"

/* The columns every read returns, in the order transaction_from_row reads. */
#define TRANSACTION_COLUMNS                                                                        \
    "id, user_id, type, amount, currency, COALESCE(order_id, ''), COALESCE(payment_id, ''),"       \
    " COALESCE(refund_id, ''), COALESCE(topup_id, ''), description, " PGRPC_TIME("created_at")
enum {
    col_id,
    col_user_id,
    col_type,
    col_amount,
    col_currency,
    col_order_id,
    col_payment_id,
    col_refund_id,
    col_topup_id,
    col_description,
    col_created_at,
};

/* $1 id, $2 user */
static const char get_sql[] =
    "SELECT " TRANSACTION_COLUMNS " FROM transactions WHERE id = $1 AND user_id = $2";

/* $1 user, $2 rows */
static const char list_first_sql[] =
    "SELECT " TRANSACTION_COLUMNS " FROM transactions WHERE user_id = $1"
    " ORDER BY seq DESC LIMIT $2::int";

/* $1 user, $2 rows, $3 the previous page's last id (of the same user) */
static const char list_after_sql[] =
    "SELECT " TRANSACTION_COLUMNS " FROM transactions WHERE user_id = $1"
    " AND seq < (SELECT seq FROM transactions WHERE id = $3 AND user_id = $1)"
    " ORDER BY seq DESC LIMIT $2::int";

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

/* True when 'type' is one the schema allows. */
static bool transaction_type_known(const char *type)
{
    return strcmp(type, "PAYMENT") == 0 || strcmp(type, "REFUND") == 0 ||
           strcmp(type, "TOPUP") == 0;
}

/* Fills 'txn' from row 'row' of 'rows' (TRANSACTION_COLUMNS), copying into
 * call memory. False when memory ran out or the row breaks an invariant
 * (unknown type, amount out of range): the caller answers INTERNAL. */
static bool transaction_from_row(rpc_ctx_t *ctx, const PGresult *rows, int row,
                                 Paygate__V1__Transaction *txn)
{
    txn->id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_id));
    txn->user_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_user_id));
    txn->type = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_type));
    txn->amount = strtoll(PQgetvalue(rows, row, col_amount), NULL, 10);
    txn->currency = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_currency));
    txn->order_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_order_id));
    txn->payment_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_payment_id));
    txn->refund_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_refund_id));
    txn->topup_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_topup_id));
    txn->description = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_description));
    txn->created_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_created_at));
    if (txn->id == NULL || txn->user_id == NULL || txn->type == NULL || txn->currency == NULL ||
        txn->order_id == NULL || txn->payment_id == NULL || txn->refund_id == NULL ||
        txn->topup_id == NULL || txn->description == NULL || txn->created_at == NULL)
        return false;
    if (!transaction_type_known(txn->type) ||
        !money_amount_valid(txn->amount, transaction_amount_minor_max)) {
        log_error("transaction %s breaks an invariant: type %s, amount %" PRId64, txn->id,
                  txn->type, txn->amount);
        return false;
    }
    return true;
}

/* Fails the call as NOT_FOUND/transaction_not_found: the answer for a
 * transaction that does not exist and for one of another user alike. */
static Paygate__V1__Code fail_not_found(rpc_ctx_t *ctx)
{
    return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "transaction_not_found",
                        "no such transaction");
}

/* Fails the call as INVALID_ARGUMENT/invalid_starting_after. */
static Paygate__V1__Code fail_bad_cursor(rpc_ctx_t *ctx)
{
    return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_starting_after",
                        "starting_after must be the id of one of your transactions");
}

/* Reads transaction 'id' of 'user' into '*rows' (zero or one row) for
 * operation 'what'. Returns OK, or the code of the failed call ('*rows'
 * NULL). */
static Paygate__V1__Code transaction_select(rpc_ctx_t *ctx, transaction_thread_t *thread,
                                            const char *id, const char *user, const char *what,
                                            PGresult **rows)
{
    const char *params[] = {id, user};
    pg_result_t result = pg_exec_prepared(thread->pg, "transaction_get", get_sql, 2, params, rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, what);
    return PAYGATE__V1__CODE__OK;
}

Paygate__V1__Code transaction_get(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                  ProtobufCMessage *reply_msg, void *thread_state)
{
    transaction_thread_t *thread = thread_state;
    const Paygate__V1__GetTransactionRequest *request =
        (const Paygate__V1__GetTransactionRequest *)request_msg;
    Paygate__V1__Transaction *reply = (Paygate__V1__Transaction *)reply_msg;
    const char *user = caller_user(ctx);
    if (user == NULL)
        return PAYGATE__V1__CODE__UNAUTHENTICATED;
    if (!id_valid("txn", request->id))
        return fail_not_found(ctx);
    PGresult *rows = NULL;
    Paygate__V1__Code code =
        transaction_select(ctx, thread, request->id, user, "get transaction", &rows);
    if (code != PAYGATE__V1__CODE__OK)
        return code;
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return fail_not_found(ctx);
    }
    bool filled = transaction_from_row(ctx, rows, 0, reply);
    PQclear(rows);
    if (!filled)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "internal error (request %s)", rpc_ctx_request_id(ctx));
    return PAYGATE__V1__CODE__OK;
}

/*
 * List: the caller's transactions, newest first (in the order they were
 * recorded), one page of 'limit' after the cursor 'starting_after' (the
 * previous page's last id). One row more than the page is fetched to tell
 * 'has_more'. Pages follow the bigserial 'seq', so a transaction recorded
 * while a client pages appears on no later page and none is skipped or
 * repeated.
 */
Paygate__V1__Code transaction_list(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                   ProtobufCMessage *reply_msg, void *thread_state)
{
    transaction_thread_t *thread = thread_state;
    const Paygate__V1__ListTransactionsRequest *request =
        (const Paygate__V1__ListTransactionsRequest *)request_msg;
    Paygate__V1__TransactionList *reply = (Paygate__V1__TransactionList *)reply_msg;
    const char *user = caller_user(ctx);
    if (user == NULL)
        return PAYGATE__V1__CODE__UNAUTHENTICATED;
    if (request->limit < 0 || request->limit > transaction_list_limit_max)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_limit",
                            "limit must be from 1 to %d (0 means %d)", transaction_list_limit_max,
                            transaction_list_limit_default);
    int limit = request->limit == 0 ? transaction_list_limit_default : request->limit;
    const char *after = request->starting_after ? request->starting_after : "";
    bool paged = after[0] != '\0';
    if (paged && !id_valid("txn", after))
        return fail_bad_cursor(ctx);

    char fetch[16];
    snprintf(fetch, sizeof fetch, "%d", limit + 1);
    const char *params[] = {user, fetch, after};
    PGresult *rows = NULL;
    pg_result_t result = paged ? pg_exec_prepared(thread->pg, "transaction_list_after",
                                                  list_after_sql, 3, params, &rows)
                               : pg_exec_prepared(thread->pg, "transaction_list_first",
                                                  list_first_sql, 2, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "list transactions");
    int found = PQntuples(rows);
    if (found == 0 && paged) {
        /* An empty page: the cursor is the caller's oldest transaction,
         * or none of the caller's at all (rows are never deleted). */
        PQclear(rows);
        Paygate__V1__Code code =
            transaction_select(ctx, thread, after, user, "list transactions", &rows);
        if (code != PAYGATE__V1__CODE__OK)
            return code;
        bool known = PQntuples(rows) == 1;
        PQclear(rows);
        if (!known)
            return fail_bad_cursor(ctx);
        reply->has_more = false;
        return PAYGATE__V1__CODE__OK;
    }
    size_t count = (size_t)(found > limit ? limit : found);
    reply->has_more = found > limit;
    reply->n_data = count;
    reply->data = count ? rpc_ctx_alloc(ctx, count * sizeof *reply->data) : NULL;
    bool filled = count == 0 || reply->data != NULL;
    for (size_t i = 0; filled && i < count; i++) {
        reply->data[i] = rpc_ctx_alloc(ctx, sizeof *reply->data[i]);
        filled = reply->data[i] != NULL;
        if (filled) {
            paygate__v1__transaction__init(reply->data[i]);
            filled = transaction_from_row(ctx, rows, (int)i, reply->data[i]);
        }
    }
    PQclear(rows);
    if (!filled) {
        reply->n_data = 0; /* never pack a half-filled list */
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "internal error (request %s)", rpc_ctx_request_id(ctx));
    }
    return PAYGATE__V1__CODE__OK;
}
