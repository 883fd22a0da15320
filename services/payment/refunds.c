/*
 * refunds: CreateRefund, and driving a refund's wallet credit.
 *
 * A refund is reserved first: one transaction raises the payment's
 * amount_refunded, only while the sum stays within the payment's amount
 * (and a CHECK says so again), and inserts the refund (PENDING). Then the wallet
 * is credited, keyed by the refund id, and the refund becomes SUCCEEDED.
 * If the credit's outcome is unknown, the refund stays PENDING and the
 * recovery loop credits it later (the key makes a repeat harmless).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "id/id.h"
#include "events.pb-c.h"
#include "log/log.h"
#include "outbox/outbox.h"
#include "payment.pb-c.h"
#include "payment_service.h"
#include "pgrpc/pgrpc.h"
#include "user.pb-c.h"
#include "wire/wire.h"

#define REFUND_COLUMNS "id, payment_id, amount, status, " PGRPC_TIME("created_at") ", user_id"

static const char refund_by_key_sql[] =
    "SELECT " REFUND_COLUMNS " FROM refunds WHERE user_id = $1 AND idempotency_key = $2";

static const char refund_by_id_sql[] = "SELECT " REFUND_COLUMNS " FROM refunds WHERE id = $1";

/* Raises amount_refunded of payment $1 (of user $2) by $3, or by what is
 * left when $3 is 0, only while the sum stays within the amount; returns
 * the refund's amount. The row lock (FOR UPDATE) makes concurrent refunds
 * of one payment take turns and each see the other's sum. */
static const char reserve_sql[] =
    "WITH old AS ("
    "  SELECT id, amount, amount_refunded FROM payments"
    "   WHERE id = $1 AND user_id = $2 AND status = 'SUCCEEDED' FOR UPDATE),"
    " wanted AS ("
    "  SELECT id, CASE WHEN $3::bigint = 0 THEN amount - amount_refunded"
    "                  ELSE $3::bigint END AS refund_amount FROM old),"
    " raised AS ("
    "  UPDATE payments p SET amount_refunded = p.amount_refunded + w.refund_amount,"
    "         updated_at = now()"
    "    FROM wanted w"
    "   WHERE p.id = w.id AND w.refund_amount > 0"
    "     AND p.amount_refunded + w.refund_amount <= p.amount"
    "  RETURNING w.refund_amount)"
    " SELECT refund_amount FROM raised";

static const char refund_insert_sql[] =
    "INSERT INTO refunds (id, payment_id, user_id, idempotency_key, amount, locked_until)"
    " VALUES ($1, $2, $3, $4, $5::bigint,"
    "         now() + make_interval(secs => $6::int / 1000.0))"
    " ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id";

/* The refund's success and its event, in one statement. */
static const char refund_done_sql[] =
    "WITH done AS ("
    "  UPDATE refunds SET status = 'SUCCEEDED', updated_at = now()"
    "   WHERE id = $1 AND status = 'PENDING' RETURNING id)"
    " INSERT INTO outbox (event_id, topic, key, payload)"
    " SELECT $2, 'payments', $3, decode($4, 'hex') FROM done"
    " ON CONFLICT (event_id) DO NOTHING";

static const char refund_order_sql[] =
    "SELECT p.id, p.order_id FROM refunds r JOIN payments p ON p.id = r.payment_id"
    " WHERE r.id = $1";

static const char payment_state_sql[] =
    "SELECT status, amount, amount_refunded FROM payments WHERE id = $1 AND user_id = $2";

bool refund_drive(payment_env_t *env, const char *refund_id, const char *user_id, int64_t amount,
                  const char *request_id)
{
    Paygate__V1__WalletMovementRequest request = PAYGATE__V1__WALLET_MOVEMENT_REQUEST__INIT;
    request.user_id = (char *)user_id;
    request.amount = amount;
    request.reference = (char *)refund_id;
    rpc_call_opts_t opts = {.deadline_ms = env->settings->call_deadline_ms,
                            .request_id = request_id,
                            .user_id = user_id,
                            .principal = "payment"};
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code =
        rpc_client_call(env->rpc, "user", "Credit", &request.base,
                        &paygate__v1__wallet_movement__descriptor, &reply, &opts, &status);
    if (reply != NULL)
        protobuf_c_message_free_unpacked(reply, NULL);
    if (code != PAYGATE__V1__CODE__OK) {
        log_warn("refund %s: credit outcome unknown (%s: %s); will retry", refund_id,
                 wire_code_name(code), status.message);
        return false;
    }
    const char *params[] = {refund_id};
    PGresult *rows = NULL;
    if (pg_exec_prepared(env->pg, "refund_order", refund_order_sql, 1, params, &rows) != PG_OK)
        return false;
    if (PQntuples(rows) != 1) {
        PQclear(rows);
        return false;
    }
    char event_id[96], occurred_at[32], payment_id[payment_id_bytes_max + 1],
        order_id[order_id_bytes_max + 1];
    snprintf(payment_id, sizeof payment_id, "%s", PQgetvalue(rows, 0, 0));
    snprintf(order_id, sizeof order_id, "%s", PQgetvalue(rows, 0, 1));
    PQclear(rows);
    snprintf(event_id, sizeof event_id, "refund.succeeded:%s", refund_id);
    outbox_now_rfc3339(occurred_at, sizeof occurred_at);
    Paygate__V1__MoneyEvent event = PAYGATE__V1__MONEY_EVENT__INIT;
    event.event_id = event_id;
    event.type = PAYGATE__V1__MONEY_EVENT_TYPE__REFUND_SUCCEEDED;
    event.user_id = (char *)user_id;
    event.amount = amount;
    event.currency = (char *)"INR";
    event.order_id = order_id;
    event.payment_id = payment_id;
    event.refund_id = (char *)refund_id;
    event.occurred_at = occurred_at;
    event.request_id = (char *)log_request_id(); /* the request being served */
    char *payload = outbox_payload_hex(&event.base);
    if (payload == NULL)
        return false;
    const char *done_params[] = {refund_id, event_id, user_id, payload};
    pg_result_t result =
        pg_exec_prepared(env->pg, "refund_done", refund_done_sql, 4, done_params, NULL);
    free(payload);
    if (result != PG_OK)
        return false;
    metrics_counter_add(env->metrics->refunds_succeeded, 1);
    log_info("refund %s: %" PRId64 " paise credited to %s", refund_id, amount, user_id);
    return true;
}

/* Fills 'reply' from row 0 of a REFUND_COLUMNS result. */
static void refund_from_row(rpc_ctx_t *ctx, const PGresult *rows, Paygate__V1__Refund *reply)
{
    reply->id = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 0));
    reply->payment_id = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 1));
    reply->amount = strtoll(PQgetvalue(rows, 0, 2), NULL, 10);
    reply->status = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 3));
    reply->created_at = rpc_ctx_strdup(ctx, PQgetvalue(rows, 0, 4));
}

/* Reads refund 'id' into 'reply'. */
static Paygate__V1__Code refund_answer(rpc_ctx_t *ctx, payment_env_t *env, const char *id,
                                       Paygate__V1__Refund *reply)
{
    const char *params[] = {id};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(env->pg, "refund_by_id", refund_by_id_sql, 1, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "read refund");
    if (PQntuples(rows) != 1) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error", "refund vanished");
    }
    refund_from_row(ctx, rows, reply);
    PQclear(rows);
    return PAYGATE__V1__CODE__OK;
}

/* Explains why a refund could not be reserved. */
static Paygate__V1__Code refund_refused(rpc_ctx_t *ctx, payment_env_t *env, const char *payment_id,
                                        const char *user, int64_t amount)
{
    const char *params[] = {payment_id, user};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(env->pg, "refund_payment_state", payment_state_sql, 2, params, &rows);
    if (result != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "refund");
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "payment_not_found",
                            "no such payment");
    }
    bool succeeded = strcmp(PQgetvalue(rows, 0, 0), "SUCCEEDED") == 0;
    int64_t total = strtoll(PQgetvalue(rows, 0, 1), NULL, 10);
    int64_t refunded = strtoll(PQgetvalue(rows, 0, 2), NULL, 10);
    PQclear(rows);
    if (!succeeded)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "payment_not_refundable",
                            "only a SUCCEEDED payment can be refunded");
    return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "refund_exceeds_payment",
                        "refund of %" PRId64 " paise exceeds what is left of the payment "
                        "(%" PRId64 " of %" PRId64 " paise)",
                        amount, total - refunded, total);
}

/* Looks up the caller's refund with the request's idempotency key. When
 * there is one, sets '*known' and answers for it: the refund (driving it
 * when it is still PENDING), or idempotency_key_reused when the key was
 * used for another payment or amount. '*known' false: no such refund. */
static Paygate__V1__Code refund_by_key(rpc_ctx_t *ctx, payment_env_t *env, const char *user,
                                       const Paygate__V1__CreateRefundRequest *request,
                                       Paygate__V1__Refund *reply, bool *known)
{
    *known = false;
    const char *key_params[] = {user, request->idempotency_key};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(env->pg, "refund_by_key", refund_by_key_sql, 2, key_params, &rows);
    if (result != PG_OK) {
        *known = true;
        return pgrpc_fail(ctx, env->pg, result, "refund");
    }
    if (PQntuples(rows) != 1) {
        PQclear(rows);
        return PAYGATE__V1__CODE__OK;
    }
    *known = true;
    int64_t stored = strtoll(PQgetvalue(rows, 0, 2), NULL, 10);
    bool same = strcmp(PQgetvalue(rows, 0, 1), request->payment_id) == 0 &&
                (request->amount == 0 || request->amount == stored);
    if (!same) {
        PQclear(rows);
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_key_reused",
                            "this Idempotency-Key was used for another refund");
    }
    refund_from_row(ctx, rows, reply);
    bool pending = strcmp(reply->status, "PENDING") == 0;
    char id[payment_id_bytes_max + 1];
    snprintf(id, sizeof id, "%s", reply->id);
    PQclear(rows);
    if (pending && refund_drive(env, id, user, stored, rpc_ctx_request_id(ctx)))
        return refund_answer(ctx, env, id, reply);
    return PAYGATE__V1__CODE__OK;
}

Paygate__V1__Code refund_create(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                ProtobufCMessage *reply_msg, void *thread_state)
{
    payment_env_t *env = thread_state;
    const Paygate__V1__CreateRefundRequest *request =
        (const Paygate__V1__CreateRefundRequest *)request_msg;
    Paygate__V1__Refund *reply = (Paygate__V1__Refund *)reply_msg;
    const char *user = rpc_ctx_user_id(ctx);
    if (user[0] == '\0')
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated",
                            "this call needs an authenticated user");
    if (!wire_token_valid(request->payment_id, payment_id_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__NOT_FOUND, "payment_not_found",
                            "no such payment");
    if (request->amount < 0 || request->amount > INT64_C(1000000000))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_amount",
                            "amount must be positive (or omitted for a full refund)");
    if (!wire_token_valid(request->idempotency_key, idempotency_key_bytes_max))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "idempotency_key_required",
                            "an idempotency key of 1..255 printable characters is required");

    /* A known key: the same refund again, or a misuse of the key. */
    bool known = false;
    Paygate__V1__Code code = refund_by_key(ctx, env, user, request, reply, &known);
    if (known)
        return code;

    /* Reserve: refund row and amount_refunded in one transaction. */
    PGresult *rows = NULL;
    pg_result_t result;
    char id[id_bytes_max], lease[16], amount_text[24];
    id_new("ref", id, sizeof id);
    snprintf(lease, sizeof lease, "%u", env->settings->lease_ms);
    if ((result = pg_begin(env->pg)) != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "refund");
    snprintf(amount_text, sizeof amount_text, "%" PRId64, request->amount);
    const char *reserve_params[] = {request->payment_id, user, amount_text};
    result = pg_exec_prepared(env->pg, "refund_reserve", reserve_sql, 3, reserve_params, &rows);
    if (result != PG_OK) {
        pg_rollback(env->pg);
        return pgrpc_fail(ctx, env->pg, result, "refund");
    }
    if (PQntuples(rows) == 0) {
        PQclear(rows);
        pg_rollback(env->pg);
        /* A concurrent request with this key may have reserved first: the
         * row lock made us wait for its commit, so its refund is visible
         * now, and it is the answer (not "exceeds the payment"). */
        code = refund_by_key(ctx, env, user, request, reply, &known);
        if (known)
            return code;
        return refund_refused(ctx, env, request->payment_id, user, request->amount);
    }
    int64_t amount = strtoll(PQgetvalue(rows, 0, 0), NULL, 10);
    PQclear(rows);
    snprintf(amount_text, sizeof amount_text, "%" PRId64, amount);
    const char *insert_params[] = {
        id, request->payment_id, user, request->idempotency_key, amount_text, lease};
    result = pg_exec_prepared(env->pg, "refund_insert", refund_insert_sql, 6, insert_params, &rows);
    bool inserted = result == PG_OK && PQntuples(rows) == 1;
    if (result == PG_OK)
        PQclear(rows);
    if (!inserted) {
        pg_rollback(env->pg);
        if (result != PG_OK)
            return pgrpc_fail(ctx, env->pg, result, "refund");
        /* The key's row was committed by a concurrent request meanwhile. */
        code = refund_by_key(ctx, env, user, request, reply, &known);
        if (known)
            return code;
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_in_progress",
                            "a request with this Idempotency-Key is still in progress");
    }
    if ((result = pg_commit(env->pg)) != PG_OK)
        return pgrpc_fail(ctx, env->pg, result, "refund");
    log_info("refund %s: reserved %" PRId64 " paise of payment %s", id, amount,
             request->payment_id);

    refund_drive(env, id, user, amount, rpc_ctx_request_id(ctx));
    return refund_answer(ctx, env, id, reply);
}
