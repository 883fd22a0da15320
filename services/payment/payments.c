/*
 * payments: CreatePayment, GetPayment and ListPayments.
 *
 * The payment row is also the idempotency record: (user, key) is UNIQUE.
 * A request with a known key either replays the recorded outcome, takes
 * over a saga whose driver's lease expired, or answers
 * idempotency_in_progress; a known key with another order is
 * idempotency_key_reused. A new key checks the order, inserts the row
 * (lease held) and drives the saga.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock/clock.h"
#include "id/id.h"
#include "log/log.h"
#include "order.pb-c.h"
#include "payment.pb-c.h"
#include "payment_service.h"
#include "pgrpc/pgrpc.h"
#include "wire/wire.h"

#define PAYMENT_COLUMNS                                                                            \
    "id, order_id, user_id, amount, currency, status, amount_refunded, failure_code,"              \
    " failure_message, " PGRPC_TIME("created_at") ", " PGRPC_TIME(                                 \
        "updated_at") ", step, locked_until > now()"

static const char by_key_sql[] =
    "SELECT " PAYMENT_COLUMNS " FROM payments WHERE user_id = $1 AND idempotency_key = $2";

static const char by_id_sql[] =
    "SELECT " PAYMENT_COLUMNS " FROM payments WHERE id = $1 AND user_id = $2";

/* $1 id, $2 user, $3 order, $4 key, $5 amount, $6 status, $7 step, $8 failure code,
 * $9 failure message, $10 lease ms */
static const char insert_sql[] =
    "INSERT INTO payments (id, user_id, order_id, idempotency_key, amount, status, step,"
    " failure_code, failure_message, locked_until)"
    " VALUES ($1, $2, $3, $4, $5::bigint, $6, $7, $8, $9,"
    "         now() + make_interval(secs => $10::int / 1000.0))"
    " ON CONFLICT (user_id, idempotency_key) DO NOTHING"
    " RETURNING id, lease_token, (extract(epoch FROM locked_until) * 1000)::bigint, " PGRPC_TIME(
        "created_at");

/* insert_sql for many payments at once: $1..$10 are arrays of its
 * parameters (pg_exec_prepared_rows), one element per payment; the rows
 * go in in that order. */
static const char insert_rows_sql[] =
    "INSERT INTO payments (id, user_id, order_id, idempotency_key, amount, status, step,"
    " failure_code, failure_message, locked_until)"
    " SELECT id, user_id, order_id, idempotency_key, amount, status, step, failure_code,"
    "        failure_message, now() + make_interval(secs => lease::int / 1000.0)"
    "   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],"
    "               $7::text[], $8::text[], $9::text[], $10::int[])"
    "        AS p(id, user_id, order_id, idempotency_key, amount, status, step, failure_code,"
    "             failure_message, lease)"
    " ON CONFLICT (user_id, idempotency_key) DO NOTHING"
    " RETURNING id, lease_token, (extract(epoch FROM locked_until) * 1000)::bigint, " PGRPC_TIME(
        "created_at");

/* (ordered by user and idempotency key: the unique key it may wait on) */
const payment_sql_kind_t payment_insert_statement = {"payment_insert", insert_sql, 10, {1, 3}};

/* Takes over a payment whose driver's lease ended (plus the clock-skew
 * margin $3): a new fencing token, and the step as it is now. */
static const char take_over_sql[] =
    "UPDATE payments SET locked_until = now() + make_interval(secs => $2::int / 1000.0),"
    " attempts = attempts + 1, lease_token = lease_token + 1"
    " WHERE id = $1 AND status = 'PROCESSING'"
    "   AND locked_until + make_interval(secs => $3::int / 1000.0) <= now()"
    " RETURNING step, lease_token, (extract(epoch FROM locked_until) * 1000)::bigint";

static const char list_sql[] =
    "SELECT " PAYMENT_COLUMNS " FROM payments WHERE user_id = $1"
    " AND ($2 = '' OR seq < (SELECT seq FROM payments WHERE id = $2 AND user_id = $1))"
    " ORDER BY seq DESC LIMIT $3::int";

static const char cursor_exists_sql[] = "SELECT 1 FROM payments WHERE id = $1 AND user_id = $2";

/* Column numbers of PAYMENT_COLUMNS. */
enum {
    col_id,
    col_order_id,
    col_user_id,
    col_amount,
    col_currency,
    col_status,
    col_refunded,
    col_failure_code,
    col_failure_message,
    col_created,
    col_updated,
    col_step,
    col_leased
};

static int64_t int_at(const PGresult *rows, int row, int col)
{
    return strtoll(PQgetvalue(rows, row, col), NULL, 10);
}

static Paygate__V1__PaymentStatus status_from_text(const char *text)
{
    if (strcmp(text, "SUCCEEDED") == 0)
        return PAYGATE__V1__PAYMENT_STATUS__SUCCEEDED;
    if (strcmp(text, "FAILED") == 0)
        return PAYGATE__V1__PAYMENT_STATUS__FAILED;
    return PAYGATE__V1__PAYMENT_STATUS__PROCESSING;
}

/* Fills 'payment' from row 'row' (strings copied into the call's memory). */
static void payment_from_row(rpc_ctx_t *ctx, const PGresult *rows, int row,
                             Paygate__V1__Payment *payment)
{
    payment->id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_id));
    payment->order_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_order_id));
    payment->user_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_user_id));
    payment->amount = int_at(rows, row, col_amount);
    payment->currency = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_currency));
    payment->status = status_from_text(PQgetvalue(rows, row, col_status));
    payment->amount_refunded = int_at(rows, row, col_refunded);
    payment->failure_code = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_failure_code));
    payment->failure_message = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_failure_message));
    payment->created_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_created));
    payment->updated_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, row, col_updated));
}

/* The answer for payment 'reply' (filled in): the payment when it
 * SUCCEEDED; the error (with the payment id) when it FAILED; "still
 * processing" otherwise. The same row always gives the same answer, which
 * is what makes replays return the first response. */
static Paygate__V1__Code payment_answer_code(rpc_ctx_t *ctx, Paygate__V1__Payment *reply)
{
    rpc_ctx_detail(ctx, "payment_id", reply->id);
    switch (reply->status) {
    case PAYGATE__V1__PAYMENT_STATUS__SUCCEEDED:
        return PAYGATE__V1__CODE__OK;
    case PAYGATE__V1__PAYMENT_STATUS__FAILED:
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, reply->failure_code,
                            "payment %s failed: %s", reply->id, reply->failure_message);
    default:
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAVAILABLE, "payment_processing",
                            "payment %s is still processing; retry with the same "
                            "Idempotency-Key to get its outcome",
                            reply->id);
    }
}

/* The answer for the payment in row 0 of 'rows': see payment_answer_code. */
static Paygate__V1__Code payment_answer(rpc_ctx_t *ctx, const PGresult *rows,
                                        Paygate__V1__Payment *reply)
{
    payment_from_row(ctx, rows, 0, reply);
    return payment_answer_code(ctx, reply);
}

/* Reads payment 'id' of 'user' and answers with it. */
static Paygate__V1__Code answer_by_id(rpc_ctx_t *ctx, payment_env_t *env, const char *id,
                                      const char *user, Paygate__V1__Payment *reply)
{
    const char *params[] = {id, user};
    PGresult *rows = NULL;
    pg_result_t result = pg_exec_prepared(env->pg, "payment_by_id", by_id_sql, 2, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "read payment");
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "payment_not_found",
                            "no such payment");
    }
    Paygate__V1__Code code = payment_answer(ctx, rows, reply);
    PQclear(rows);
    return code;
}

/* Copies row 0 of 'rows' into a saga view. */
static void saga_from_row(const PGresult *rows, saga_payment_t *p)
{
    snprintf(p->id, sizeof p->id, "%s", PQgetvalue(rows, 0, col_id));
    snprintf(p->user_id, sizeof p->user_id, "%s", PQgetvalue(rows, 0, col_user_id));
    snprintf(p->order_id, sizeof p->order_id, "%s", PQgetvalue(rows, 0, col_order_id));
    p->amount = int_at(rows, 0, col_amount);
    snprintf(p->step, sizeof p->step, "%s", PQgetvalue(rows, 0, col_step));
}

/* A known key: replay, take over, or refuse. */
static Paygate__V1__Code payment_known_key(rpc_ctx_t *ctx, payment_env_t *env, const PGresult *rows,
                                           const char *order_id, Paygate__V1__Payment *reply)
{
    if (strcmp(PQgetvalue(rows, 0, col_order_id), order_id) != 0)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_key_reused",
                            "this Idempotency-Key was used to pay another order");
    if (strcmp(PQgetvalue(rows, 0, col_status), "PROCESSING") != 0)
        return payment_answer(ctx, rows, reply);
    if (PQgetvalue(rows, 0, col_leased)[0] == 't')
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_in_progress",
                            "a request with this Idempotency-Key is still in progress");
    /* Nobody drives it (its driver died or gave up): take it over. */
    saga_payment_t saga;
    saga_from_row(rows, &saga);
    char lease[16], skew[16];
    snprintf(lease, sizeof lease, "%u", env->settings->lease_ms);
    snprintf(skew, sizeof skew, "%u", env->settings->clock_skew_ms);
    const char *params[] = {saga.id, lease, skew};
    PGresult *taken = NULL;
    pg_result_t result =
        pg_exec_prepared(env->pg, "payment_take_over", take_over_sql, 3, params, &taken);
    if (result != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "take over payment");
    bool ours = PQntuples(taken) == 1;
    if (ours) {
        snprintf(saga.step, sizeof saga.step, "%s", PQgetvalue(taken, 0, 0));
        saga.lease_token = strtoll(PQgetvalue(taken, 0, 1), NULL, 10);
        saga.lease_until_ms = strtoll(PQgetvalue(taken, 0, 2), NULL, 10);
    }
    PQclear(taken);
    if (!ours)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_in_progress",
                            "a request with this Idempotency-Key is still in progress");
    saga_drive(env, &saga, rpc_ctx_request_id(ctx));
    return answer_by_id(ctx, env, saga.id, saga.user_id, reply);
}

/* Asks the order service for 'order_id' as the caller. Returns OK with
 * the amount and status; otherwise the code to answer with and, in
 * '*reason' and '*message', why (the call is not failed yet: a known
 * idempotency key answers first). */
static Paygate__V1__Code payment_load_order(payment_env_t *env, const char *order_id,
                                            const char *user, int64_t *amount,
                                            Paygate__V1__OrderStatus *status, const char **reason,
                                            const char **message)
{
    Paygate__V1__GetOrderRequest request = PAYGATE__V1__GET_ORDER_REQUEST__INIT;
    request.id = (char *)order_id;
    /* no request_id: lib/rpc forwards the one this thread is serving */
    rpc_call_opts_t opts = {
        .deadline_ms = env->settings->call_deadline_ms, .user_id = user, .principal = "payment"};
    ProtobufCMessage *reply = NULL;
    rpc_status_t st;
    Paygate__V1__Code code;
    if (!gather_rpc(PAYMENT_GATHER(env, order_get), env->rpc, &request.base, user, NULL, order_id,
                    &code, &st, &reply))
        code = rpc_client_call(env->rpc, "order", "Get", &request.base,
                               &paygate__v1__order__descriptor, &reply, &opts, &st);
    *reason = "order_not_found";
    *message = "no such order";
    if (code == PAYGATE__V1__CODE__NOT_FOUND || code == PAYGATE__V1__CODE__INVALID_ARGUMENT)
        return PAYGATE__V1__CODE__NOT_FOUND;
    if (code != PAYGATE__V1__CODE__OK) {
        *reason = "order_service_unavailable";
        *message = "the order could not be checked; retry with the same key";
        return PAYGATE__V1__CODE__UNAVAILABLE;
    }
    const Paygate__V1__Order *order = (const Paygate__V1__Order *)reply;
    *amount = order->amount;
    *status = order->status;
    bool owned = strcmp(order->user_id, user) == 0;
    protobuf_c_message_free_unpacked(reply, NULL);
    if (!owned) /* the order service already scopes by caller; never trust it blindly */
        return PAYGATE__V1__CODE__NOT_FOUND;
    return PAYGATE__V1__CODE__OK;
}

/* Looks up the caller's payment with this idempotency key; when there is
 * one, answers as for a known key (replay, take over or refuse) and sets
 * '*answered'; also when the lookup itself failed (the answer is the
 * error). '*answered' false: no such key. */
static Paygate__V1__Code payment_by_key(rpc_ctx_t *ctx, payment_env_t *env, const char *user,
                                        const Paygate__V1__CreatePaymentRequest *request,
                                        Paygate__V1__Payment *reply, bool *answered)
{
    *answered = false;
    const char *key_params[] = {user, request->idempotency_key};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(env->pg, "payment_by_key", by_key_sql, 2, key_params, &rows);
    if (result != PG_OK) {
        *answered = true;
        return pgrpc_fail(ctx, env->pg, result, "create payment");
    }
    Paygate__V1__Code code = PAYGATE__V1__CODE__OK;
    if (PQntuples(rows) == 1) {
        *answered = true;
        code = payment_known_key(ctx, env, rows, request->order_id, reply);
    }
    PQclear(rows);
    return code;
}

/* The answer for a payment this request's saga just finished, from what
 * the saga recorded (no read of the row). */
static Paygate__V1__Code answer_finished(rpc_ctx_t *ctx, const saga_payment_t *saga, bool succeeded,
                                         Paygate__V1__Payment *reply)
{
    reply->id = rpc_ctx_strdup(ctx, saga->id);
    reply->order_id = rpc_ctx_strdup(ctx, saga->order_id);
    reply->user_id = rpc_ctx_strdup(ctx, saga->user_id);
    reply->amount = saga->amount;
    reply->currency = (char *)"INR";
    reply->status =
        succeeded ? PAYGATE__V1__PAYMENT_STATUS__SUCCEEDED : PAYGATE__V1__PAYMENT_STATUS__FAILED;
    reply->amount_refunded = 0;
    reply->failure_code = rpc_ctx_strdup(ctx, saga->failure_code);
    reply->failure_message = rpc_ctx_strdup(ctx, saga->failure_message);
    reply->created_at = rpc_ctx_strdup(ctx, saga->created_at);
    reply->updated_at = rpc_ctx_strdup(ctx, saga->updated_at);
    return payment_answer_code(ctx, reply);
}

Paygate__V1__Code payment_create(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                 ProtobufCMessage *reply_msg, void *thread_state)
{
    payment_env_t *env = thread_state;
    const Paygate__V1__CreatePaymentRequest *request =
        (const Paygate__V1__CreatePaymentRequest *)request_msg;
    Paygate__V1__Payment *reply = (Paygate__V1__Payment *)reply_msg;
    const char *user = rpc_ctx_user_id(ctx);
    if (user[0] == '\0')
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated",
                            "this call needs an authenticated user");
    if (!wire_token_valid(request->order_id, order_id_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_order_id",
                            "order_id is required");
    if (!wire_token_valid(request->idempotency_key, idempotency_key_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "idempotency_key_required",
                            "an idempotency key of 1..255 printable characters is required");

    /* New keys are the common case: check the order and insert, and read
     * the key's row only when the insert finds it there (or the order
     * cannot be checked: a known key is answered as recorded, whatever
     * the order service says now). */
    int64_t amount = 0;
    Paygate__V1__OrderStatus order_status = PAYGATE__V1__ORDER_STATUS__ORDER_STATUS_UNSPECIFIED;
    const char *reason = NULL, *message = NULL;
    Paygate__V1__Code code =
        payment_load_order(env, request->order_id, user, &amount, &order_status, &reason, &message);
    bool answered = false;
    if (code != PAYGATE__V1__CODE__OK) {
        Paygate__V1__Code answer = payment_by_key(ctx, env, user, request, reply, &answered);
        if (answered)
            return answer;
        return rpc_ctx_fail(ctx, code, reason, "%s", message);
    }
    bool payable = order_status == PAYGATE__V1__ORDER_STATUS__PENDING;

    char id[id_bytes_max], amount_text[24], lease[16];
    id_new("pay", id, sizeof id);
    snprintf(amount_text, sizeof amount_text, "%" PRId64, amount);
    snprintf(lease, sizeof lease, "%u", env->settings->lease_ms);
    const char *insert_params[] = {id,
                                   user,
                                   request->order_id,
                                   request->idempotency_key,
                                   amount_text,
                                   payable ? "PROCESSING" : "FAILED",
                                   payable ? "ORDER_CHECKED" : "DONE",
                                   payable ? "" : "order_not_payable",
                                   payable ? "" : "the order is not PENDING",
                                   lease};
    PGresult *inserted = NULL;
    pg_result_t result = PG_OK;
    if (!payment_gather_sql(PAYMENT_GATHER(env, payment_insert), env->pg, insert_params, &inserted,
                            &result))
        result =
            pg_exec_prepared(env->pg, "payment_insert", insert_sql, 10, insert_params, &inserted);
    if (result != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "create payment");
    if (PQntuples(inserted) == 0) { /* the key is known (maybe from a request racing this one) */
        PQclear(inserted);
        Paygate__V1__Code answer = payment_by_key(ctx, env, user, request, reply, &answered);
        if (answered)
            return answer;
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_in_progress",
                            "a request with this Idempotency-Key is still in progress");
    }
    saga_payment_t saga = {.amount = amount};
    snprintf(saga.id, sizeof saga.id, "%s", id);
    snprintf(saga.user_id, sizeof saga.user_id, "%s", user);
    snprintf(saga.order_id, sizeof saga.order_id, "%s", request->order_id);
    snprintf(saga.step, sizeof saga.step, "ORDER_CHECKED");
    saga.lease_token = strtoll(PQgetvalue(inserted, 0, 1), NULL, 10);
    saga.lease_until_ms = strtoll(PQgetvalue(inserted, 0, 2), NULL, 10);
    snprintf(saga.created_at, sizeof saga.created_at, "%s", PQgetvalue(inserted, 0, 3));
    PQclear(inserted);
    if (!payable) {
        snprintf(saga.updated_at, sizeof saga.updated_at, "%s", saga.created_at);
        saga.failure_code = "order_not_payable";
        saga.failure_message = "the order is not PENDING";
        return answer_finished(ctx, &saga, false, reply);
    }
    saga_outcome_t outcome = saga_drive(env, &saga, rpc_ctx_request_id(ctx));
    if (outcome == SAGA_PENDING) /* another driver may have finished it meanwhile */
        return answer_by_id(ctx, env, id, user, reply);
    return answer_finished(ctx, &saga, outcome == SAGA_SUCCEEDED, reply);
}

/* ---- payments created together (batch.Create) ------------------------- */

/* A call of a batch on its way: its order, its insert's parameters and
 * then its saga. */
typedef struct {
    size_t call; /* index into the batch's calls */
    const char *user;
    const Paygate__V1__CreatePaymentRequest *request;
    int64_t amount;
    bool payable;
    char id[id_bytes_max], amount_text[24];
    const char *insert_params[10];
    saga_payment_t saga;
} create_item_t;

/* Orders two items as the insert locks them: by user, then key. */
static int create_item_compare(const create_item_t *a, const create_item_t *b)
{
    int c = strcmp(a->user, b->user);
    return c != 0 ? c : strcmp(a->request->idempotency_key, b->request->idempotency_key);
}

/* Asks the order service for every item's order in one batch; keeps (and
 * returns the count of) those it answered with an order of the caller's.
 * The others are left to the single handler, which asks again and
 * answers as for one call (a known key first, then the order's error). */
static size_t create_orders(payment_env_t *env, rpc_ctx_t *const *ctxs, create_item_t *items,
                            size_t count)
{
    Paygate__V1__GetOrderRequest requests[rpc_batch_items_max];
    rpc_batch_item_t calls[rpc_batch_items_max];
    for (size_t k = 0; k < count; k++) {
        paygate__v1__get_order_request__init(&requests[k]);
        requests[k].id = items[k].request->order_id;
        calls[k] = (rpc_batch_item_t){.request = &requests[k].base,
                                      .user_id = items[k].user,
                                      .request_id = rpc_ctx_request_id(ctxs[items[k].call])};
    }
    rpc_call_opts_t opts = {.deadline_ms = env->settings->call_deadline_ms, .principal = "payment"};
    Paygate__V1__Code code = rpc_client_call_batch(env->rpc, "order", "Get", calls, count,
                                                   &paygate__v1__order__descriptor, &opts, NULL);
    size_t kept = 0;
    for (size_t k = 0; k < count; k++) {
        const Paygate__V1__Order *order = (const Paygate__V1__Order *)calls[k].reply;
        bool known = code == PAYGATE__V1__CODE__OK &&
                     calls[k].status.code == PAYGATE__V1__CODE__OK && order != NULL &&
                     strcmp(order->user_id, items[k].user) == 0;
        if (known) {
            items[k].amount = order->amount;
            items[k].payable = order->status == PAYGATE__V1__ORDER_STATUS__PENDING;
            items[kept++] = items[k];
        }
        if (calls[k].reply != NULL)
            protobuf_c_message_free_unpacked(calls[k].reply, NULL);
    }
    return kept;
}

void payment_create_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                          ProtobufCMessage *const *replies, Paygate__V1__Code *codes,
                          bool *answered, size_t count, void *thread_state)
{
    payment_env_t *env = thread_state;
    create_item_t items[rpc_batch_items_max];
    size_t n = 0;
    metrics_histogram_observe(env->metrics->batch_calls, (double)count);
    /* What the single handler would refuse at once, it refuses. */
    for (size_t i = 0; i < count && n < rpc_batch_items_max; i++) {
        const Paygate__V1__CreatePaymentRequest *request =
            (const Paygate__V1__CreatePaymentRequest *)requests[i];
        const char *user = rpc_ctx_user_id(ctxs[i]);
        if (user[0] == '\0' || !wire_token_valid(request->order_id, order_id_bytes_max) ||
            !wire_token_valid(request->idempotency_key, idempotency_key_bytes_max))
            continue;
        items[n++] = (create_item_t){.call = i, .user = user, .request = request};
    }
    if (n < 2)
        return; /* one call: the single handler gathers it with others' */
    int64_t step_began = clock_now_us();
    n = create_orders(env, ctxs, items, n);
    step_began = payment_step_done(env->metrics, PAYMENT_STEP_ORDER_GET, step_began);
    if (n == 0)
        return;

    /* The inserts, in lock order, in one statement. When it fails,
     * nothing of it happened (or its outcome is unknown: then the single
     * handler finds the key in progress, and the recovery loop finishes
     * the payment), and every call goes to the single handler. */
    for (size_t i = 1; i < n; i++) {
        create_item_t moving = items[i];
        size_t j = i;
        for (; j > 0 && create_item_compare(&items[j - 1], &moving) > 0; j--)
            items[j] = items[j - 1];
        items[j] = moving;
    }
    char lease[16];
    snprintf(lease, sizeof lease, "%u", env->settings->lease_ms);
    const char *const *params[rpc_batch_items_max];
    for (size_t k = 0; k < n; k++) {
        create_item_t *it = &items[k];
        id_new("pay", it->id, sizeof it->id);
        snprintf(it->amount_text, sizeof it->amount_text, "%" PRId64, it->amount);
        const char *insert_params[] = {it->id,
                                       it->user,
                                       it->request->order_id,
                                       it->request->idempotency_key,
                                       it->amount_text,
                                       it->payable ? "PROCESSING" : "FAILED",
                                       it->payable ? "ORDER_CHECKED" : "DONE",
                                       it->payable ? "" : "order_not_payable",
                                       it->payable ? "" : "the order is not PENDING",
                                       lease};
        memcpy(it->insert_params, insert_params, sizeof insert_params);
        params[k] = it->insert_params;
    }
    PGresult *inserted = NULL;
    pg_result_t insert_result = pg_exec_prepared_rows(env->pg, "payment_insert_rows",
                                                      insert_rows_sql, 10, n, params, &inserted);
    payment_step_done(env->metrics, PAYMENT_STEP_INSERT, step_began);
    if (insert_result != PG_OK) {
        log_info("payment: a batch of %zu inserts did not commit (%s); each goes alone", n,
                 pg_error_sqlstate(env->pg));
        return;
    }

    /* A known key (no row) goes to the single handler, which replays it;
     * an order that is not payable is answered now; the rest are driven
     * together. */
    saga_payment_t *sagas[rpc_batch_items_max];
    const char *request_ids[rpc_batch_items_max];
    size_t driven[rpc_batch_items_max], m = 0;
    for (size_t k = 0; k < n; k++) {
        create_item_t *it = &items[k];
        int row = 0, inserted_rows = PQntuples(inserted);
        while (row < inserted_rows && strcmp(PQgetvalue(inserted, row, 0), it->id) != 0)
            row++;
        if (row == inserted_rows)
            continue;
        saga_payment_t fresh = {.amount = it->amount};
        snprintf(fresh.id, sizeof fresh.id, "%s", it->id);
        snprintf(fresh.user_id, sizeof fresh.user_id, "%s", it->user);
        snprintf(fresh.order_id, sizeof fresh.order_id, "%s", it->request->order_id);
        snprintf(fresh.step, sizeof fresh.step, "ORDER_CHECKED");
        fresh.lease_token = strtoll(PQgetvalue(inserted, row, 1), NULL, 10);
        fresh.lease_until_ms = strtoll(PQgetvalue(inserted, row, 2), NULL, 10);
        snprintf(fresh.created_at, sizeof fresh.created_at, "%s", PQgetvalue(inserted, row, 3));
        saga_payment_t *saga = &it->saga;
        *saga = fresh;
        size_t i = it->call;
        answered[i] = true;
        if (!it->payable) {
            memcpy(saga->updated_at, saga->created_at, sizeof saga->updated_at);
            saga->failure_code = "order_not_payable";
            saga->failure_message = "the order is not PENDING";
            codes[i] = answer_finished(ctxs[i], saga, false, (Paygate__V1__Payment *)replies[i]);
            continue;
        }
        sagas[m] = saga;
        request_ids[m] = rpc_ctx_request_id(ctxs[i]);
        driven[m++] = k;
    }
    PQclear(inserted);
    if (m == 0)
        return;
    saga_outcome_t outcomes[rpc_batch_items_max];
    saga_drive_together(env, sagas, request_ids, m, outcomes);
    for (size_t d = 0; d < m; d++) {
        create_item_t *it = &items[driven[d]];
        size_t i = it->call;
        Paygate__V1__Payment *reply = (Paygate__V1__Payment *)replies[i];
        log_set_request_id(request_ids[d]);
        codes[i] = outcomes[d] == SAGA_PENDING /* another driver may have finished it */
                       ? answer_by_id(ctxs[i], env, it->id, it->user, reply)
                       : answer_finished(ctxs[i], &it->saga, outcomes[d] == SAGA_SUCCEEDED, reply);
    }
    log_set_request_id(NULL);
}

Paygate__V1__Code payment_get(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                              ProtobufCMessage *reply_msg, void *thread_state)
{
    payment_env_t *env = thread_state;
    const Paygate__V1__GetPaymentRequest *request =
        (const Paygate__V1__GetPaymentRequest *)request_msg;
    Paygate__V1__Payment *reply = (Paygate__V1__Payment *)reply_msg;
    const char *user = rpc_ctx_user_id(ctx);
    if (user[0] == '\0')
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated",
                            "this call needs an authenticated user");
    if (!wire_token_valid(request->id, payment_id_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "payment_not_found",
                            "no such payment");
    const char *params[] = {request->id, user};
    PGresult *rows = NULL;
    pg_result_t result = pg_exec_prepared(env->pg, "payment_by_id", by_id_sql, 2, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "get payment");
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "payment_not_found",
                            "no such payment");
    }
    payment_from_row(ctx, rows, 0, reply);
    PQclear(rows);
    return PAYGATE__V1__CODE__OK;
}

Paygate__V1__Code payment_list(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                               ProtobufCMessage *reply_msg, void *thread_state)
{
    payment_env_t *env = thread_state;
    const Paygate__V1__ListPaymentsRequest *request =
        (const Paygate__V1__ListPaymentsRequest *)request_msg;
    Paygate__V1__PaymentList *reply = (Paygate__V1__PaymentList *)reply_msg;
    const char *user = rpc_ctx_user_id(ctx);
    if (user[0] == '\0')
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated",
                            "this call needs an authenticated user");
    int limit = request->limit == 0 ? list_limit_default : request->limit;
    if (limit < 1 || limit > list_limit_max)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_limit",
                            "limit must be from 1 to %d", list_limit_max);
    const char *after = request->starting_after ? request->starting_after : "";
    if (after[0] != '\0') {
        const char *params[] = {after, user};
        PGresult *rows = NULL;
        pg_result_t result =
            pg_exec_prepared(env->pg, "payment_cursor", cursor_exists_sql, 2, params, &rows);
        if (result != PG_OK)
            return pgrpc_fail(ctx, env->pg, result, "list payments");
        bool known = PQntuples(rows) == 1;
        PQclear(rows);
        if (!known)
            return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_starting_after",
                                "starting_after is not one of your "
                                "payments");
    }
    char fetch[16];
    snprintf(fetch, sizeof fetch, "%d", limit + 1);
    const char *params[] = {user, after, fetch};
    PGresult *rows = NULL;
    pg_result_t result = pg_exec_prepared(env->pg, "payment_list", list_sql, 3, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "list payments");
    int count = PQntuples(rows);
    reply->has_more = count > limit;
    if (count > limit)
        count = limit;
    reply->data = rpc_ctx_alloc(ctx, (size_t)(count + 1) * sizeof *reply->data);
    for (int i = 0; reply->data != NULL && i < count; i++) {
        Paygate__V1__Payment *payment = rpc_ctx_alloc(ctx, sizeof *payment);
        if (payment == NULL)
            break;
        paygate__v1__payment__init(payment);
        payment_from_row(ctx, rows, i, payment);
        reply->data[reply->n_data++] = payment;
    }
    PQclear(rows);
    return PAYGATE__V1__CODE__OK;
}
