/*
 * orders: Create, Get, List, Cancel, and the internal MarkPaid.
 *
 * An order belongs to the user who created it (the caller's user id from
 * the call's metadata). Every read and change is keyed by (id, user_id),
 * so another user's order is NOT_FOUND, never visible and never changed.
 *
 * Status changes are one conditional UPDATE each (... AND status =
 * 'PENDING'): PostgreSQL re-checks the condition on the row's newest
 * version after waiting for a concurrent change, so of two racing changes
 * (two payments, or a payment and a cancellation) exactly one applies.
 * When the UPDATE changes nothing, a SELECT explains why: no such order,
 * a repeat of what was already done (answered with the order: both
 * changes are idempotent), or a state that does not allow it.
 *
 *   PENDING --Cancel--> CANCELLED     PENDING --MarkPaid(pay)--> COMPLETED
 *
 * The database's CHECKs hold the same rules (see migrations/0001_init.sql)
 * whatever this code does.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "id/id.h"
#include "log/log.h"
#include "text/utf8.h"
#include "money/money.h"
#include "order.pb-c.h"
#include "order_service.h"
#include "pgrpc/pgrpc.h"
#include "wire/wire.h"

/* The columns every statement returns, in the order order_from_row reads. */
#define ORDER_COLUMNS                                                                              \
    "id, user_id, amount, currency, status, receipt, description,"                                 \
    " COALESCE(payment_id, ''), " PGRPC_TIME("created_at") ", " PGRPC_TIME("updated_at")
enum {
    col_id,
    col_user_id,
    col_amount,
    col_currency,
    col_status,
    col_receipt,
    col_description,
    col_payment_id,
    col_created_at,
    col_updated_at,
};

/* $1 id, $2 user, $3 amount, $4 receipt, $5 description */
static const char create_sql[] = "INSERT INTO orders (id, user_id, amount, receipt, description)"
                                 " VALUES ($1, $2, $3::bigint, $4, $5) RETURNING " ORDER_COLUMNS;

/* $1 id, $2 user */
static const char get_sql[] = "SELECT " ORDER_COLUMNS " FROM orders WHERE id = $1 AND user_id = $2";

/* $1 user, $2 rows */
static const char list_first_sql[] = "SELECT " ORDER_COLUMNS " FROM orders WHERE user_id = $1"
                                     " ORDER BY seq DESC LIMIT $2::int";

/* $1 user, $2 rows, $3 the previous page's last id (of the same user) */
static const char list_after_sql[] =
    "SELECT " ORDER_COLUMNS " FROM orders WHERE user_id = $1"
    " AND seq < (SELECT seq FROM orders WHERE id = $3 AND user_id = $1)"
    " ORDER BY seq DESC LIMIT $2::int";

/* $1 id, $2 user */
static const char cancel_sql[] = "UPDATE orders SET status = 'CANCELLED', updated_at = now()"
                                 " WHERE id = $1 AND user_id = $2 AND status = 'PENDING'"
                                 " RETURNING " ORDER_COLUMNS;

/* $1 id, $2 payment, $3 user */
static const char mark_paid_sql[] =
    "UPDATE orders SET status = 'COMPLETED', payment_id = $2, updated_at = now()"
    " WHERE id = $1 AND user_id = $3 AND status = 'PENDING'"
    " RETURNING " ORDER_COLUMNS;

/* mark_paid_sql for many orders at once: $1 ids, $2 payments, $3 users
 * (arrays, pg_exec_prepared_rows); answers the orders it completed. */
static const char mark_paid_rows_sql[] =
    "UPDATE orders SET status = 'COMPLETED', payment_id = r.paying, updated_at = now()"
    "  FROM unnest($1::text[], $2::text[], $3::text[]) AS r(order_ref, paying, payer)"
    /* = ANY: the planner reads the orders by their index, not by
     * hashing the table (it cannot tell how many rows unnest gives) */
    " WHERE id = ANY($1::text[]) AND id = r.order_ref AND user_id = r.payer"
    "   AND status = 'PENDING'"
    " RETURNING " ORDER_COLUMNS;

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

/* The number of characters of 'text' (valid UTF-8 without control
 * characters, at most 'bytes_max' bytes), or -1. */
static long text_chars(const char *text, size_t bytes_max)
{
    if (strnlen(text, bytes_max + 1) > bytes_max)
        return -1;
    return utf8_chars(text, true);
}

/* True when 'text' is at most 'chars_max' characters of valid UTF-8
 * without control characters ("" is valid). */
static bool text_valid(const char *text, long chars_max)
{
    long chars = text_chars(text, 4 * (size_t)chars_max);
    return chars >= 0 && chars <= chars_max;
}

/* The wire status of the database's 'text', or UNSPECIFIED for anything
 * the CHECK should have made impossible. */
static Paygate__V1__OrderStatus order_status_parse(const char *text)
{
    if (strcmp(text, "PENDING") == 0)
        return PAYGATE__V1__ORDER_STATUS__PENDING;
    if (strcmp(text, "COMPLETED") == 0)
        return PAYGATE__V1__ORDER_STATUS__COMPLETED;
    if (strcmp(text, "CANCELLED") == 0)
        return PAYGATE__V1__ORDER_STATUS__CANCELLED;
    return PAYGATE__V1__ORDER_STATUS__ORDER_STATUS_UNSPECIFIED;
}

/* Fills 'order' from row 'row' of 'rows' (ORDER_COLUMNS), copying into
 * call memory. False when memory ran out or the row breaks an invariant
 * (unknown status, amount out of range): the caller answers INTERNAL. */
static bool order_from_row(rpc_ctx_t *ctx, const PGresult *rows, int row, Paygate__V1__Order *order)
{
    order->id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_id));
    order->user_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_user_id));
    order->amount = strtoll(PQgetvalue(rows, row, col_amount), NULL, 10);
    order->currency = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_currency));
    order->status = order_status_parse(PQgetvalue(rows, row, col_status));
    order->receipt = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_receipt));
    order->description = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_description));
    order->payment_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_payment_id));
    order->created_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_created_at));
    order->updated_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_updated_at));
    if (order->id == NULL || order->user_id == NULL || order->currency == NULL ||
        order->receipt == NULL || order->description == NULL || order->payment_id == NULL ||
        order->created_at == NULL || order->updated_at == NULL)
        return false;
    if (order->status == PAYGATE__V1__ORDER_STATUS__ORDER_STATUS_UNSPECIFIED ||
        !money_amount_valid(order->amount, order_amount_minor_max) ||
        (order->status == PAYGATE__V1__ORDER_STATUS__COMPLETED) != (order->payment_id[0] != '\0')) {
        log_error("order %s breaks an invariant: status %s, amount %" PRId64, order->id,
                  PQgetvalue(rows, row, col_status), order->amount);
        return false;
    }
    return true;
}

/* Answers row 0 of 'rows' (which it clears) as 'reply'. */
static Paygate__V1__Code order_reply(rpc_ctx_t *ctx, PGresult *rows, Paygate__V1__Order *reply)
{
    bool filled = order_from_row(ctx, rows, 0, reply);
    PQclear(rows);
    if (!filled)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "internal error (request %s)", rpc_ctx_request_id(ctx));
    return PAYGATE__V1__CODE__OK;
}

/* Fails the call as NOT_FOUND/order_not_found: the answer for an order
 * that does not exist and for one of another user alike. */
static Paygate__V1__Code fail_not_found(rpc_ctx_t *ctx)
{
    return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found", "no such order");
}

/* Reads order 'id' of 'user' into '*rows' (zero or one row) for
 * operation 'what'. Returns OK, or the code of the failed call ('*rows'
 * NULL). */
static Paygate__V1__Code order_select(rpc_ctx_t *ctx, order_thread_t *thread, const char *id,
                                      const char *user, const char *what, PGresult **rows)
{
    const char *params[] = {id, user};
    pg_result_t result = pg_exec_prepared(thread->pg, "order_get", get_sql, 2, params, rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, what);
    return PAYGATE__V1__CODE__OK;
}

Paygate__V1__Code order_create(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                               ProtobufCMessage *reply_msg, void *thread_state)
{
    order_thread_t *thread = thread_state;
    const Paygate__V1__CreateOrderRequest *request =
        (const Paygate__V1__CreateOrderRequest *)request_msg;
    Paygate__V1__Order *reply = (Paygate__V1__Order *)reply_msg;
    const char *user = caller_user(ctx);
    if (user == NULL)
        return PAYGATE__V1__CODE__UNAUTHENTICATED;
    if (!money_amount_valid(request->amount, order_amount_minor_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_amount",
                            "amount must be an integer number of paise from 1 to %d",
                            order_amount_minor_max);
    const char *currency = request->currency ? request->currency : "";
    if (currency[0] != '\0' && strcmp(currency, "INR") != 0)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_currency",
                            "currency must be INR");
    const char *receipt = request->receipt ? request->receipt : "";
    if (!text_valid(receipt, order_receipt_chars_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_receipt",
                            "receipt must be at most %d characters of UTF-8 without control "
                            "characters",
                            order_receipt_chars_max);
    const char *description = request->description ? request->description : "";
    if (!text_valid(description, order_description_chars_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_description",
                            "description must be at most %d characters of UTF-8 without control "
                            "characters",
                            order_description_chars_max);

    char id[id_bytes_max], amount[24];
    if (!id_new("ord", id, sizeof id))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error", "no id");
    snprintf(amount, sizeof amount, "%" PRId64, request->amount);
    const char *params[] = {id, user, amount, receipt, description};
    PGresult *rows = NULL;
    pg_result_t result = pg_exec_prepared(thread->pg, "order_create", create_sql, 5, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "create order");
    Paygate__V1__Code code = order_reply(ctx, rows, reply);
    if (code != PAYGATE__V1__CODE__OK)
        return code;
    if (reply->status != PAYGATE__V1__ORDER_STATUS__PENDING || reply->amount != request->amount) {
        log_error("create order: %s stored as status %d amount %" PRId64, reply->id,
                  (int)reply->status, reply->amount);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "order invariant broken");
    }
    log_info("create order: %s %" PRId64 " paise for %s (request %s)", reply->id, reply->amount,
             user, rpc_ctx_request_id(ctx));
    return PAYGATE__V1__CODE__OK;
}

Paygate__V1__Code order_get(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                            ProtobufCMessage *reply_msg, void *thread_state)
{
    order_thread_t *thread = thread_state;
    const Paygate__V1__GetOrderRequest *request = (const Paygate__V1__GetOrderRequest *)request_msg;
    Paygate__V1__Order *reply = (Paygate__V1__Order *)reply_msg;
    const char *user = caller_user(ctx);
    if (user == NULL)
        return PAYGATE__V1__CODE__UNAUTHENTICATED;
    if (!id_valid("ord", request->id))
        return fail_not_found(ctx);
    PGresult *rows = NULL;
    Paygate__V1__Code code = order_select(ctx, thread, request->id, user, "get order", &rows);
    if (code != PAYGATE__V1__CODE__OK)
        return code;
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return fail_not_found(ctx);
    }
    return order_reply(ctx, rows, reply);
}

/* order_reply as a pgrpc_row_answer_fn. */
static Paygate__V1__Code order_row_answer(rpc_ctx_t *ctx, PGresult *rows,
                                          const ProtobufCMessage *request, ProtobufCMessage *reply)
{
    (void)request;
    return order_reply(ctx, rows, (Paygate__V1__Order *)reply);
}

/* Batch code of Get (lib/rpc RPC_BATCH_HANDLER): the reads run in one
 * round trip (pg_exec_prepared_batch; a transaction that writes nothing);
 * each order found is answered from its row. What is not found, or
 * everything when the round trip fails, is left to order_get, which
 * answers it alone. */
void order_get_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                     ProtobufCMessage *const *replies, Paygate__V1__Code *codes, bool *answered,
                     size_t count, void *thread_state)
{
    order_thread_t *thread = thread_state;
    const char *params[rpc_batch_items_max][2];
    pgrpc_batch_t batch = {0};
    for (size_t i = 0; i < count && i < rpc_batch_items_max; i++) {
        const Paygate__V1__GetOrderRequest *request =
            (const Paygate__V1__GetOrderRequest *)requests[i];
        const char *user = rpc_ctx_user_id(ctxs[i]);
        if (user[0] == '\0' || !id_valid("ord", request->id))
            continue; /* order_get refuses it */
        size_t k = batch.count++;
        params[k][0] = request->id;
        params[k][1] = user;
        batch.params[k] = params[k];
        batch.index[k] = i;
    }
    pgrpc_batch_run(thread->pg, "order_get", get_sql, 2, &batch, ctxs, requests, replies, codes,
                    answered, order_row_answer);
}

/*
 * List: the caller's orders, newest first, one page of 'limit' after the
 * cursor 'starting_after' (the previous page's last id). One row more
 * than the page is fetched to tell 'has_more'. Pages follow the bigserial
 * 'seq', so an order created while a client pages appears on no later
 * page (it is newer than the cursor) and none is skipped or repeated.
 */
Paygate__V1__Code order_list(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                             ProtobufCMessage *reply_msg, void *thread_state)
{
    order_thread_t *thread = thread_state;
    const Paygate__V1__ListOrdersRequest *request =
        (const Paygate__V1__ListOrdersRequest *)request_msg;
    Paygate__V1__OrderList *reply = (Paygate__V1__OrderList *)reply_msg;
    const char *user = caller_user(ctx);
    if (user == NULL)
        return PAYGATE__V1__CODE__UNAUTHENTICATED;
    if (request->limit < 0 || request->limit > order_list_limit_max)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_limit",
                            "limit must be from 1 to %d (0 means %d)", order_list_limit_max,
                            order_list_limit_default);
    int limit = request->limit == 0 ? order_list_limit_default : request->limit;
    const char *after = request->starting_after ? request->starting_after : "";
    bool paged = after[0] != '\0';
    if (paged && !id_valid("ord", after))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_starting_after",
                            "starting_after must be the id of one of your orders");

    char fetch[16];
    snprintf(fetch, sizeof fetch, "%d", limit + 1);
    const char *params[] = {user, fetch, after};
    PGresult *rows = NULL;
    pg_result_t result =
        paged ? pg_exec_prepared(thread->pg, "order_list_after", list_after_sql, 3, params, &rows)
              : pg_exec_prepared(thread->pg, "order_list_first", list_first_sql, 2, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "list orders");
    int found = PQntuples(rows);
    if (found == 0 && paged) {
        /* An empty page: the cursor is the caller's oldest order, or no
         * order of the caller at all (orders are never deleted). */
        PQclear(rows);
        Paygate__V1__Code code = order_select(ctx, thread, after, user, "list orders", &rows);
        if (code != PAYGATE__V1__CODE__OK)
            return code;
        bool known = PQntuples(rows) == 1;
        PQclear(rows);
        if (!known)
            return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_starting_after",
                                "starting_after must be the id of one of your orders");
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
            paygate__v1__order__init(reply->data[i]);
            filled = order_from_row(ctx, rows, (int)i, reply->data[i]);
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

/*
 * Cancel: PENDING -> CANCELLED for the owner. Cancelling a cancelled
 * order answers it again; a completed one cannot be cancelled.
 */
Paygate__V1__Code order_cancel(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                               ProtobufCMessage *reply_msg, void *thread_state)
{
    order_thread_t *thread = thread_state;
    const Paygate__V1__CancelOrderRequest *request =
        (const Paygate__V1__CancelOrderRequest *)request_msg;
    Paygate__V1__Order *reply = (Paygate__V1__Order *)reply_msg;
    const char *user = caller_user(ctx);
    if (user == NULL)
        return PAYGATE__V1__CODE__UNAUTHENTICATED;
    if (!id_valid("ord", request->id))
        return fail_not_found(ctx);
    const char *params[] = {request->id, user};
    PGresult *rows = NULL;
    pg_result_t result = pg_exec_prepared(thread->pg, "order_cancel", cancel_sql, 2, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "cancel order");
    if (PQntuples(rows) == 1) {
        log_info("cancel order: %s for %s (request %s)", request->id, user,
                 rpc_ctx_request_id(ctx));
        return order_reply(ctx, rows, reply);
    }
    PQclear(rows);

    /* Nothing changed: say why. */
    Paygate__V1__Code code = order_select(ctx, thread, request->id, user, "cancel order", &rows);
    if (code != PAYGATE__V1__CODE__OK)
        return code;
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return fail_not_found(ctx);
    }
    const char *status = PQgetvalue(rows, 0, col_status);
    if (strcmp(status, "CANCELLED") == 0)
        return order_reply(ctx, rows, reply);
    /* PENDING cannot be seen here: that row would have been updated, and
     * nothing turns an order back to PENDING. */
    rpc_ctx_detail(ctx, "status", status);
    code = rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_cancellable",
                        "order %s is %s and cannot be cancelled", request->id, status);
    PQclear(rows);
    return code;
}

/*
 * MarkPaid (internal, for the payment service): PENDING -> COMPLETED with
 * 'payment_id', for the order of 'user_id'. Repeating it with the same
 * payment id answers the completed order; any other state or payment id
 * is order_not_payable. A payment id completes at most one order (UNIQUE
 * in the schema).
 */
/* The checks of a MarkPaid request before any statement: OK, or the
 * call failed with why. */
static Paygate__V1__Code mark_paid_check(rpc_ctx_t *ctx,
                                         const Paygate__V1__MarkPaidRequest *request)
{
    if (strcmp(rpc_ctx_principal(ctx), "gateway") == 0)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__PERMISSION_DENIED, "internal_only",
                            "MarkPaid is internal to paygate's services");
    if (!wire_token_valid(request->user_id, order_user_id_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_user_id",
                            "user_id of 1..%d printable characters is required",
                            order_user_id_bytes_max);
    if (!wire_token_valid(request->payment_id, order_payment_id_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_payment_id",
                            "payment_id of 1..%d printable characters is required",
                            order_payment_id_bytes_max);
    if (!id_valid("ord", request->order_id))
        return fail_not_found(ctx);
    return PAYGATE__V1__CODE__OK;
}

/* The answer for an order that MarkPaid left COMPLETED by this payment,
 * 'reply' filled from its row; 'changed': this call completed it. */
static Paygate__V1__Code mark_paid_answer_checked(rpc_ctx_t *ctx,
                                                  const Paygate__V1__MarkPaidRequest *request,
                                                  bool changed, Paygate__V1__Order *reply)
{
    /* Postcondition: the order is completed by this very payment. */
    if (reply->status != PAYGATE__V1__ORDER_STATUS__COMPLETED ||
        strcmp(reply->payment_id, request->payment_id) != 0) {
        log_error("mark paid: %s answered as status %d payment %s", reply->id, (int)reply->status,
                  reply->payment_id);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "order invariant broken");
    }
    if (changed)
        log_info("mark paid: %s completed by %s for %s (request %s)", reply->id,
                 request->payment_id, request->user_id, rpc_ctx_request_id(ctx));
    return PAYGATE__V1__CODE__OK;
}

/* The answer for an order that MarkPaid left COMPLETED by this payment,
 * from its row ('rows', cleared here); 'changed': this call completed
 * it. */
static Paygate__V1__Code mark_paid_answer(rpc_ctx_t *ctx, PGresult *rows,
                                          const Paygate__V1__MarkPaidRequest *request, bool changed,
                                          Paygate__V1__Order *reply)
{
    Paygate__V1__Code code = order_reply(ctx, rows, reply);
    if (code != PAYGATE__V1__CODE__OK)
        return code;
    return mark_paid_answer_checked(ctx, request, changed, reply);
}

Paygate__V1__Code order_mark_paid(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                  ProtobufCMessage *reply_msg, void *thread_state)
{
    order_thread_t *thread = thread_state;
    const Paygate__V1__MarkPaidRequest *request = (const Paygate__V1__MarkPaidRequest *)request_msg;
    Paygate__V1__Order *reply = (Paygate__V1__Order *)reply_msg;
    Paygate__V1__Code checked = mark_paid_check(ctx, request);
    if (checked != PAYGATE__V1__CODE__OK)
        return checked;
    const char *params[] = {request->order_id, request->payment_id, request->user_id};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(thread->pg, "order_mark_paid", mark_paid_sql, 3, params, &rows);
    if (result == PG_CONSTRAINT &&
        strcmp(pg_error_constraint(thread->pg), "orders_payment_id_key") == 0) {
        rpc_ctx_detail(ctx, "payment_id", request->payment_id);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable",
                            "payment %s has completed another order", request->payment_id);
    }
    if (result != PG_OK)
        return pgrpc_fail(ctx, thread->pg, result, "mark paid");
    bool changed = PQntuples(rows) == 1;
    if (!changed) {
        /* Nothing changed: a repeat, another state, or no such order. */
        PQclear(rows);
        Paygate__V1__Code code =
            order_select(ctx, thread, request->order_id, request->user_id, "mark paid", &rows);
        if (code != PAYGATE__V1__CODE__OK)
            return code;
        if (PQntuples(rows) == 0) {
            PQclear(rows);
            return fail_not_found(ctx);
        }
        const char *status = PQgetvalue(rows, 0, col_status);
        if (strcmp(status, "COMPLETED") != 0 ||
            strcmp(PQgetvalue(rows, 0, col_payment_id), request->payment_id) != 0) {
            rpc_ctx_detail(ctx, "status", status);
            code = rpc_ctx_fail(
                ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable",
                "order %s is %s%s and cannot be paid by %s", request->order_id, status,
                strcmp(status, "COMPLETED") == 0 ? " by another payment" : "", request->payment_id);
            PQclear(rows);
            return code;
        }
    }
    return mark_paid_answer(ctx, rows, request, changed, reply);
}

/* Batch code of MarkPaid (lib/rpc RPC_BATCH_HANDLER): the calls that
 * pass the checks run as one statement (pg_exec_prepared_rows: the
 * single call's UPDATE for all their orders); each that completed its
 * order is answered from its row. A call that changed nothing (a repeat,
 * an order in another state or completed by another call of the batch,
 * no such order), and every call when the statement failed (e.g. a
 * payment id already used for another order), is left to
 * order_mark_paid, which runs it again alone and answers why: nothing of
 * it happened. */
void order_mark_paid_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                           ProtobufCMessage *const *replies, Paygate__V1__Code *codes,
                           bool *answered, size_t count, void *thread_state)
{
    order_thread_t *thread = thread_state;
    const char *params[rpc_batch_items_max][3];
    const char *const *rows_params[rpc_batch_items_max];
    size_t index[rpc_batch_items_max], n = 0;
    for (size_t i = 0; i < count && i < rpc_batch_items_max; i++) {
        const Paygate__V1__MarkPaidRequest *request =
            (const Paygate__V1__MarkPaidRequest *)requests[i];
        codes[i] = mark_paid_check(ctxs[i], request);
        if (codes[i] != PAYGATE__V1__CODE__OK) {
            answered[i] = true;
            continue;
        }
        params[n][0] = request->order_id;
        params[n][1] = request->payment_id;
        params[n][2] = request->user_id;
        rows_params[n] = params[n];
        index[n++] = i;
    }
    if (n == 0)
        return;
    PGresult *rows = NULL;
    if (pg_exec_prepared_rows(thread->pg, "order_mark_paid_rows", mark_paid_rows_sql, 3, n,
                              rows_params, &rows) != PG_OK) {
        log_info("mark paid: a batch of %zu did not commit (%s); each goes alone", n,
                 pg_error_sqlstate(thread->pg));
        return;
    }
    for (size_t k = 0; k < n; k++) {
        size_t i = index[k];
        const Paygate__V1__MarkPaidRequest *request =
            (const Paygate__V1__MarkPaidRequest *)requests[i];
        int row = PQntuples(rows) - 1;
        while (row >= 0 &&
               (strcmp(PQgetvalue(rows, row, col_id), request->order_id) != 0 ||
                strcmp(PQgetvalue(rows, row, col_payment_id), request->payment_id) != 0))
            row--;
        if (row < 0)
            continue; /* changed nothing: order_mark_paid explains */
        Paygate__V1__Order *reply = (Paygate__V1__Order *)replies[i];
        log_set_request_id(rpc_ctx_request_id(ctxs[i]));
        answered[i] = true;
        codes[i] = order_from_row(ctxs[i], rows, row, reply)
                       ? mark_paid_answer_checked(ctxs[i], request, true, reply)
                       : rpc_ctx_fail(ctxs[i], PAYGATE__V1__CODE__INTERNAL, "internal_error",
                                      "internal error (request %s)", rpc_ctx_request_id(ctxs[i]));
    }
    log_set_request_id(NULL);
    PQclear(rows);
}
