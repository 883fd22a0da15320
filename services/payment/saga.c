/*
 * saga: the steps of a payment.
 *
 *   ORDER_CHECKED: debit the wallet (user.Debit, reference = payment id)
 *       ok                 -> complete the order (below); nothing recorded
 *       insufficient funds -> FAILED insufficient_funds (nothing moved)
 *   then complete the order (order.MarkPaid, keyed by payment id)
 *       ok                 -> SUCCEEDED
 *       order not payable  -> COMPENSATING
 *   COMPENSATING: give the money back (user.Credit, reference = payment id)
 *       ok                 -> FAILED order_not_payable
 *
 * The debit is not recorded here as a step of its own: the user service
 * keeps it under the payment id, so a driver that takes over at
 * ORDER_CHECKED asks for the debit again and gets the same one back
 * (replayed), never a second one, and goes on to the order. That saves
 * a commit per payment. COMPENSATING is recorded before the credit,
 * because from ORDER_CHECKED a new driver would complete the order, not
 * refund it. (Rows written by older versions may still be at step
 * DEBITED: a driver goes on from there to the order.)
 *
 * Any other answer (a service down, a deadline, a lost worker) leaves the
 * payment PROCESSING at its step: the outcome of that call is unknown, and
 * the recovery loop repeats it later. Repeating is safe because every call
 * is keyed by the payment id and changes nothing the second time. Never a
 * debit without a completed order or a refund.
 *
 * Only one driver decides at a time. A driver holds a lease with a
 * fencing token (lease_token), taken or renewed by the statement that
 * records its step (or before its first call, when it resumes a payment),
 * and records a step or the outcome only while the token is still its
 * own. A driver that was slow past its lease finds the token changed and
 * stops; at most it repeats a call the new driver also makes (the order's
 * completion, keyed by payment id), which changes nothing. The debit
 * carries the lease's end (not_after_ms) and the user service refuses a
 * debit whose statement starts later, so a slow debit cannot land after a
 * newer driver decided that the payment FAILED for lack of funds. (A
 * debit whose statement started in time may commit a little later, e.g.
 * in a batch; it holds the wallet's row lock until then, so a newer
 * driver's debit with the same reference waits for it and gets it back
 * as a replay.)
 */
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "events.pb-c.h"
#include "clock/clock.h"
#include "log/log.h"
#include "outbox/outbox.h"
#include "wire/wire.h"
#include "order.pb-c.h"
#include "payment_service.h"
#include "pgrpc/pgrpc.h"
#include "user.pb-c.h"

/* Renews the lease of the driver holding token $2 at step $3, before it
 * acts; answers the lease's end (Unix ms). No row: the lease is lost. */
static const char hold_sql[] =
    "UPDATE payments SET locked_until = now() + make_interval(secs => $4::int / 1000.0)"
    " WHERE id = $1 AND lease_token = $2::bigint AND status = 'PROCESSING' AND step = $3"
    " RETURNING (extract(epoch FROM locked_until) * 1000)::bigint";

/* Records step $2 of the driver holding token $3 and renews its lease
 * for the step's call in the same statement (one round trip and one
 * commit, not two); answers the lease's end. No row: the lease is lost. */
static const char advance_sql[] =
    "UPDATE payments SET step = $2, updated_at = now(),"
    "       locked_until = now() + make_interval(secs => $4::int / 1000.0)"
    " WHERE id = $1 AND status = 'PROCESSING' AND lease_token = $3::bigint"
    " RETURNING (extract(epoch FROM locked_until) * 1000)::bigint";

/* The final status and its event, in one statement: the event exists if
 * and only if the payment finished (lib/outbox relays it). Answers the
 * row's times, so the request needs no read of its own; no row: this
 * driver no longer held the payment. */
static const char saga_finish_sql[] =
    "WITH done AS ("
    "  UPDATE payments SET status = $2, step = 'DONE', failure_code = $3, failure_message = $4,"
    "         updated_at = now()"
    "   WHERE id = $1 AND status = 'PROCESSING' AND lease_token = $8::bigint"
    "  RETURNING id, " PGRPC_TIME("created_at") " AS created, " PGRPC_TIME(
        "updated_at") " AS updated),"
                      " event AS ("
                      "  INSERT INTO outbox (event_id, topic, key, payload)"
                      "  SELECT $5, 'payments', $6, decode($7, 'hex') FROM done"
                      "  ON CONFLICT (event_id) DO NOTHING)"
                      " SELECT created, updated FROM done";

/* saga_finish_sql for many payments at once: $1..$8 are arrays of its
 * parameters (pg_exec_prepared_rows); answers the id and times of each
 * payment it finished, and inserts their events in the order given. */
static const char saga_finish_rows_sql[] =
    "WITH input AS ("
    "  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
    "                       $6::text[], $7::text[], $8::bigint[]) WITH ORDINALITY"
    "      AS i(id, status, failure_code, failure_message, event_id, key, payload, token, n)),"
    " done AS ("
    "  UPDATE payments p SET status = i.status, step = 'DONE', failure_code = i.failure_code,"
    "         failure_message = i.failure_message, updated_at = now()"
    "    FROM input i"
    /* = ANY: the payments are read by their index (see orders.c) */
    "   WHERE p.id = ANY($1::text[]) AND p.id = i.id AND p.status = 'PROCESSING'"
    "     AND p.lease_token = i.token"
    "  RETURNING p.id, " PGRPC_TIME("p.created_at") " AS created, " PGRPC_TIME(
        "p.updated_at") " AS updated),"
                        " event AS ("
                        "  INSERT INTO outbox (event_id, topic, key, payload)"
                        "  SELECT i.event_id, 'payments', i.key, decode(i.payload, 'hex')"
                        "    FROM input i JOIN done d ON d.id = i.id ORDER BY i.n"
                        "  ON CONFLICT (event_id) DO NOTHING)"
                        " SELECT id, created, updated FROM done";

/* (ordered by payment id: the row it updates) */
const payment_sql_kind_t saga_finish_statement = {"saga_finish", saga_finish_sql, 8, {0, -1}};

/* Renews this driver's lease before it acts at 'step'; sets '*until_ms'
 * to the lease's end. False when the lease is lost (another driver took
 * the payment over, or it is finished): the caller must stop. */
static bool saga_hold(payment_env_t *env, const saga_payment_t *p, const char *step,
                      int64_t *until_ms)
{
    char token[24], lease[16];
    snprintf(token, sizeof token, "%" PRId64, p->lease_token);
    snprintf(lease, sizeof lease, "%u", env->settings->lease_ms);
    const char *params[] = {p->id, token, step, lease};
    PGresult *rows = NULL;
    if (pg_exec_prepared(env->pg, "saga_hold", hold_sql, 4, params, &rows) != PG_OK)
        return false;
    bool held = PQntuples(rows) == 1;
    if (held && until_ms != NULL)
        *until_ms = strtoll(PQgetvalue(rows, 0, 0), NULL, 10);
    PQclear(rows);
    if (!held)
        log_info("saga %s: lease %" PRId64 " lost at %s; another driver has it", p->id,
                 p->lease_token, step);
    return held;
}

/* Records that 'p' reached 'step' and renews the lease for acting on it;
 * sets '*until_ms' to the lease's end. False when the database failed or
 * the lease is lost (the next driver redoes the idempotent step that led
 * here). */
static bool saga_advance(payment_env_t *env, const saga_payment_t *p, const char *step,
                         int64_t *until_ms)
{
    char token[24], lease[16];
    snprintf(token, sizeof token, "%" PRId64, p->lease_token);
    snprintf(lease, sizeof lease, "%u", env->settings->lease_ms);
    const char *params[] = {p->id, step, token, lease};
    PGresult *rows = NULL;
    pg_result_t result = pg_exec_prepared(env->pg, "saga_advance", advance_sql, 4, params, &rows);
    if (result != PG_OK) {
        log_warn("saga %s: cannot record step %s: %s", p->id, step, pg_error_message(env->pg));
        return false;
    }
    bool recorded = PQntuples(rows) == 1;
    if (recorded)
        *until_ms = strtoll(PQgetvalue(rows, 0, 0), NULL, 10);
    PQclear(rows);
    if (!recorded)
        log_info("saga %s: lease %" PRId64 " lost before recording %s", p->id, p->lease_token,
                 step);
    return recorded;
}

/* The finishing statement's parameters for 'p' (its outcome and its
 * event, caused by request 'request_id'). */
typedef struct {
    char event_id[96];
    char occurred_at[32];
    char token[24];
    char *payload; /* hex of the MoneyEvent; free it (finish_args_free) */
    const char *params[8];
} finish_args_t;

/* Fills '*a' for finishing 'p'. False when the event cannot be built. */
static bool finish_args(const saga_payment_t *p, bool succeeded, const char *failure_code,
                        const char *failure_message, const char *request_id, finish_args_t *a)
{
    snprintf(a->event_id, sizeof a->event_id, "payment.%s:%s", succeeded ? "succeeded" : "failed",
             p->id);
    outbox_now_rfc3339(a->occurred_at, sizeof a->occurred_at);
    Paygate__V1__MoneyEvent event = PAYGATE__V1__MONEY_EVENT__INIT;
    event.event_id = a->event_id;
    event.type = succeeded ? PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED
                           : PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_FAILED;
    event.user_id = (char *)p->user_id;
    event.amount = p->amount;
    event.currency = (char *)"INR";
    event.order_id = (char *)p->order_id;
    event.payment_id = (char *)p->id;
    event.failure_code = (char *)failure_code;
    event.occurred_at = a->occurred_at;
    event.request_id = (char *)(request_id != NULL ? request_id : "");
    a->payload = outbox_payload_hex(&event.base);
    if (a->payload == NULL)
        return false;
    snprintf(a->token, sizeof a->token, "%" PRId64, p->lease_token);
    const char *params[] = {p->id,        succeeded ? "SUCCEEDED" : "FAILED",
                            failure_code, failure_message,
                            a->event_id,  p->user_id,
                            a->payload,   a->token};
    memcpy(a->params, params, sizeof params);
    return true;
}

/* The finishing statement's answer for 'p', row 'row' of 'rows' (its
 * created and updated times in columns 'col' and 'col' + 1; 'row' -1:
 * no row): the outcome recorded, or SAGA_PENDING when this driver no
 * longer held it. */
static saga_outcome_t finish_result(payment_env_t *env, saga_payment_t *p, bool succeeded,
                                    const char *failure_code, const char *failure_message,
                                    const PGresult *rows, int row, int col)
{
    /* The statement inserts the event row exactly when it finished the
     * payment: no row means this driver no longer held it. */
    bool finished = row >= 0;
    if (finished) {
        snprintf(p->created_at, sizeof p->created_at, "%s", PQgetvalue(rows, row, col));
        snprintf(p->updated_at, sizeof p->updated_at, "%s", PQgetvalue(rows, row, col + 1));
        p->failure_code = failure_code;
        p->failure_message = failure_message;
    }
    if (!finished) {
        log_info("saga %s: lease %" PRId64 " lost before finishing; outcome not recorded", p->id,
                 p->lease_token);
        return SAGA_PENDING;
    }
    metrics_counter_add(
        succeeded ? env->metrics->payments_succeeded : env->metrics->payments_failed, 1);
    log_info("saga %s: %s%s%s (order %s, %" PRId64 " paise)", p->id,
             succeeded ? "SUCCEEDED" : "FAILED", succeeded ? "" : " ", failure_code, p->order_id,
             p->amount);
    return succeeded ? SAGA_SUCCEEDED : SAGA_FAILED;
}

/* Records the final status of 'p'. */
static saga_outcome_t saga_finish(payment_env_t *env, saga_payment_t *p, bool succeeded,
                                  const char *failure_code, const char *failure_message)
{
    finish_args_t a;
    if (!finish_args(p, succeeded, failure_code, failure_message, log_request_id(), &a))
        return SAGA_PENDING;
    PGresult *rows = NULL;
    pg_result_t result = PG_OK;
    if (!payment_gather_sql(PAYMENT_GATHER(env, payment_finish), env->pg, a.params, &rows, &result))
        result = pg_exec_prepared(env->pg, "saga_finish", saga_finish_sql, 8, a.params, &rows);
    free(a.payload);
    if (result != PG_OK) {
        log_warn("saga %s: cannot record the outcome: %s", p->id, pg_error_message(env->pg));
        return SAGA_PENDING;
    }
    saga_outcome_t outcome = finish_result(env, p, succeeded, failure_code, failure_message, rows,
                                           PQntuples(rows) == 1 ? 0 : -1, 0);
    PQclear(rows);
    return outcome;
}

/* Calls user.'method' (Debit or Credit) for 'p'. */
static Paygate__V1__Code saga_wallet_call(payment_env_t *env, const saga_payment_t *p,
                                          const char *method, int64_t not_after_ms,
                                          const char *request_id, rpc_status_t *status)
{
    Paygate__V1__WalletMovementRequest request = PAYGATE__V1__WALLET_MOVEMENT_REQUEST__INIT;
    request.user_id = (char *)p->user_id;
    request.amount = p->amount;
    request.reference = (char *)p->id;
    request.not_after_ms = not_after_ms;
    rpc_call_opts_t opts = {.deadline_ms = env->settings->call_deadline_ms,
                            .request_id = request_id,
                            .user_id = p->user_id,
                            .principal = "payment"};
    ProtobufCMessage *reply = NULL;
    Paygate__V1__Code code;
    /* Debits gather (ordered by user: the wallet rows they lock); the
     * rare credits go alone. */
    if (strcmp(method, "Debit") != 0 ||
        !gather_rpc(PAYMENT_GATHER(env, debit), env->rpc, &request.base, p->user_id, request_id,
                    p->user_id, &code, status, &reply))
        code = rpc_client_call(env->rpc, "user", method, &request.base,
                               &paygate__v1__wallet_movement__descriptor, &reply, &opts, status);
    if (reply != NULL) {
        const Paygate__V1__WalletMovement *movement = (const Paygate__V1__WalletMovement *)reply;
        /* the wallet must have moved exactly our amount */
        if (movement->amount != p->amount) {
            log_error("saga %s: %s moved %" PRId64 " paise, expected %" PRId64, p->id, method,
                      movement->amount, p->amount);
            code = PAYGATE__V1__CODE__INTERNAL;
        }
        protobuf_c_message_free_unpacked(reply, NULL);
    }
    return code;
}

/* Calls order.MarkPaid for 'p'. */
static Paygate__V1__Code saga_mark_paid(payment_env_t *env, const saga_payment_t *p,
                                        const char *request_id, rpc_status_t *status)
{
    Paygate__V1__MarkPaidRequest request = PAYGATE__V1__MARK_PAID_REQUEST__INIT;
    request.order_id = (char *)p->order_id;
    request.payment_id = (char *)p->id;
    request.user_id = (char *)p->user_id;
    rpc_call_opts_t opts = {.deadline_ms = env->settings->call_deadline_ms,
                            .request_id = request_id,
                            .user_id = p->user_id,
                            .principal = "payment"};
    ProtobufCMessage *reply = NULL;
    Paygate__V1__Code code;
    if (!gather_rpc(PAYMENT_GATHER(env, mark_paid), env->rpc, &request.base, p->user_id, request_id,
                    p->order_id, &code, status, &reply))
        code = rpc_client_call(env->rpc, "order", "MarkPaid", &request.base,
                               &paygate__v1__order__descriptor, &reply, &opts, status);
    if (reply != NULL)
        protobuf_c_message_free_unpacked(reply, NULL);
    return code;
}

saga_outcome_t saga_drive(payment_env_t *env, saga_payment_t *p, const char *request_id)
{
    rpc_status_t status;
    char step[sizeof p->step];
    snprintf(step, sizeof step, "%s", p->step);

    /* The lease the caller's statement just took serves the first step;
     * each recorded step renews it for the next (saga_advance). */
    int64_t lease_until_ms = p->lease_until_ms;
    if (strcmp(step, "ORDER_CHECKED") == 0) {
        if (lease_until_ms == 0 && !saga_hold(env, p, step, &lease_until_ms))
            return SAGA_PENDING;
        /* The debit may only land while this lease lasts: a driver that
         * takes over later (after the lease and the clock-skew margin)
         * can then trust that no late debit of ours appears after it
         * decided the payment's fate. */
        Paygate__V1__Code code =
            saga_wallet_call(env, p, "Debit", lease_until_ms, request_id, &status);
        if (code == PAYGATE__V1__CODE__FAILED_PRECONDITION &&
            strcmp(status.reason, "insufficient_funds") == 0)
            return saga_finish(env, p, false, "insufficient_funds",
                               "the wallet balance is lower than the order amount");
        if (code == PAYGATE__V1__CODE__NOT_FOUND)
            return saga_finish(env, p, false, "wallet_not_found", "the user has no wallet");
        if (code != PAYGATE__V1__CODE__OK) {
            log_warn("saga %s: debit outcome unknown (%s: %s); will retry", p->id,
                     wire_code_name(code), status.message);
            return SAGA_PENDING;
        }
        /* Not recorded (see the top of this file): on to the order
         * under the same lease. */
        snprintf(step, sizeof step, "DEBITED");
    }

    if (strcmp(step, "DEBITED") == 0) {
        if (lease_until_ms == 0 && !saga_hold(env, p, step, &lease_until_ms))
            return SAGA_PENDING;
        Paygate__V1__Code code = saga_mark_paid(env, p, request_id, &status);
        if (code == PAYGATE__V1__CODE__OK)
            return saga_finish(env, p, true, "", "");
        if (!((code == PAYGATE__V1__CODE__FAILED_PRECONDITION &&
               strcmp(status.reason, "order_not_payable") == 0) ||
              code == PAYGATE__V1__CODE__NOT_FOUND)) {
            log_warn("saga %s: mark paid outcome unknown (%s: %s); will retry", p->id,
                     wire_code_name(code), status.message);
            return SAGA_PENDING;
        }
        log_info("saga %s: order %s is not payable any more; refunding the debit", p->id,
                 p->order_id);
        if (!saga_advance(env, p, "COMPENSATING", &lease_until_ms))
            return SAGA_PENDING;
        snprintf(step, sizeof step, "COMPENSATING");
    }

    if (strcmp(step, "COMPENSATING") == 0) {
        if (lease_until_ms == 0 && !saga_hold(env, p, step, &lease_until_ms))
            return SAGA_PENDING;
        Paygate__V1__Code code = saga_wallet_call(env, p, "Credit", 0, request_id, &status);
        if (code != PAYGATE__V1__CODE__OK) {
            log_warn("saga %s: compensating credit outcome unknown (%s: %s); will retry", p->id,
                     wire_code_name(code), status.message);
            return SAGA_PENDING;
        }
        return saga_finish(env, p, false, "order_not_payable",
                           "the order was not payable; the debit was refunded");
    }

    log_error("saga %s: unknown step '%s'", p->id, step);
    return SAGA_PENDING;
}

/* ---- payments driven together ------------------------------------------- */

/* Sorts 'order' (indexes into 'ps', 'count' of them) by the text 'key'
 * gives for each payment: the rows a batch locks, in one order for all
 * batches, so that two never wait for each other in a cycle. */
static void saga_sort(size_t *order, size_t count, saga_payment_t *const *ps,
                      const char *(*key)(const saga_payment_t *p))
{
    for (size_t i = 1; i < count; i++) {
        size_t moving = order[i], j = i;
        for (; j > 0 && strcmp(key(ps[order[j - 1]]), key(ps[moving])) > 0; j--)
            order[j] = order[j - 1];
        order[j] = moving;
    }
}

static const char *saga_user_key(const saga_payment_t *p)
{
    return p->user_id;
}

static const char *saga_order_key(const saga_payment_t *p)
{
    return p->order_id;
}

static const char *saga_id_key(const saga_payment_t *p)
{
    return p->id;
}

/* The payments of 'ps' still 'going' (not left to go alone), in the
 * order of 'key'; returns how many. */
static size_t saga_going(saga_payment_t *const *ps, const bool *alone, size_t count,
                         const char *(*key)(const saga_payment_t *p), size_t *order)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        if (!alone[i])
            order[n++] = i;
    saga_sort(order, n, ps, key);
    return n;
}

/* Whether a batch call's own code 'code' means that the service did not
 * answer it (down, or too slow): the outcome of each call in it is then
 * unknown, as for a single call without an answer. */
static bool saga_batch_unanswered(Paygate__V1__Code code)
{
    return code == PAYGATE__V1__CODE__UNAVAILABLE || code == PAYGATE__V1__CODE__DEADLINE_EXCEEDED;
}

/* Leaves the payments of 'order' ('n' of them) PROCESSING at their step
 * after a batch of 'what' that got no answer ('code'), as saga_drive
 * leaves one whose call got none: '*pending' set (and '*alone', so that
 * no later batch takes them). Going on alone would repeat the same call
 * once per payment, one after another, each waiting out its deadline,
 * and the batch's caller would time out before any answer. */
static void saga_leave_pending(const size_t *order, size_t n, const char *what,
                               Paygate__V1__Code code, bool *alone, bool *pending)
{
    log_warn("saga: a batch of %zu %s got no answer (%s); they stay PROCESSING, to be retried", n,
             what, wire_code_name(code));
    for (size_t k = 0; k < n; k++)
        alone[order[k]] = pending[order[k]] = true;
}

/* One user.Debit batch for the payments going on; those it did not debit
 * as asked go alone (all stay pending when the batch got no answer). */
static void saga_debit_together(payment_env_t *env, saga_payment_t *const *ps,
                                const char *const *request_ids, bool *alone, bool *pending,
                                size_t count)
{
    size_t order[rpc_batch_items_max];
    size_t n = saga_going(ps, alone, count, saga_user_key, order);
    if (n == 0)
        return;
    Paygate__V1__WalletMovementRequest requests[rpc_batch_items_max];
    rpc_batch_item_t items[rpc_batch_items_max];
    for (size_t k = 0; k < n; k++) {
        const saga_payment_t *p = ps[order[k]];
        paygate__v1__wallet_movement_request__init(&requests[k]);
        requests[k].user_id = (char *)p->user_id;
        requests[k].amount = p->amount;
        requests[k].reference = (char *)p->id;
        /* the lease the insert took: see saga_drive */
        requests[k].not_after_ms = p->lease_until_ms;
        items[k] = (rpc_batch_item_t){.request = &requests[k].base,
                                      .user_id = p->user_id,
                                      .request_id = request_ids[order[k]]};
    }
    rpc_call_opts_t opts = {.deadline_ms = env->settings->call_deadline_ms, .principal = "payment"};
    Paygate__V1__Code code =
        rpc_client_call_batch(env->rpc, "user", "Debit", items, n,
                              &paygate__v1__wallet_movement__descriptor, &opts, NULL);
    if (saga_batch_unanswered(code))
        saga_leave_pending(order, n, "debits", code, alone, pending);
    for (size_t k = 0; k < n; k++) {
        const Paygate__V1__WalletMovement *movement =
            (const Paygate__V1__WalletMovement *)items[k].reply;
        bool debited = code == PAYGATE__V1__CODE__OK &&
                       items[k].status.code == PAYGATE__V1__CODE__OK && movement != NULL &&
                       movement->amount == ps[order[k]]->amount;
        if (!debited)
            alone[order[k]] = true;
        if (items[k].reply != NULL)
            protobuf_c_message_free_unpacked(items[k].reply, NULL);
    }
}

/* One order.MarkPaid batch for the payments going on; those whose order
 * it did not complete go alone (all stay pending when the batch got no
 * answer). */
static void saga_mark_paid_together(payment_env_t *env, saga_payment_t *const *ps,
                                    const char *const *request_ids, bool *alone, bool *pending,
                                    size_t count)
{
    size_t order[rpc_batch_items_max];
    size_t n = saga_going(ps, alone, count, saga_order_key, order);
    if (n == 0)
        return;
    Paygate__V1__MarkPaidRequest requests[rpc_batch_items_max];
    rpc_batch_item_t items[rpc_batch_items_max];
    for (size_t k = 0; k < n; k++) {
        const saga_payment_t *p = ps[order[k]];
        paygate__v1__mark_paid_request__init(&requests[k]);
        requests[k].order_id = (char *)p->order_id;
        requests[k].payment_id = (char *)p->id;
        requests[k].user_id = (char *)p->user_id;
        items[k] = (rpc_batch_item_t){.request = &requests[k].base,
                                      .user_id = p->user_id,
                                      .request_id = request_ids[order[k]]};
    }
    rpc_call_opts_t opts = {.deadline_ms = env->settings->call_deadline_ms, .principal = "payment"};
    Paygate__V1__Code code = rpc_client_call_batch(env->rpc, "order", "MarkPaid", items, n,
                                                   &paygate__v1__order__descriptor, &opts, NULL);
    if (saga_batch_unanswered(code))
        saga_leave_pending(order, n, "order completions", code, alone, pending);
    for (size_t k = 0; k < n; k++) {
        if (code != PAYGATE__V1__CODE__OK || items[k].status.code != PAYGATE__V1__CODE__OK)
            alone[order[k]] = true;
        if (items[k].reply != NULL)
            protobuf_c_message_free_unpacked(items[k].reply, NULL);
    }
}

/* The payments going on succeeded: their outcomes and events recorded
 * by one statement. Sets their outcomes; when it fails, they go alone. */
static void saga_finish_together(payment_env_t *env, saga_payment_t *const *ps,
                                 const char *const *request_ids, bool *alone, size_t count,
                                 saga_outcome_t *outcomes)
{
    size_t order[rpc_batch_items_max];
    size_t n = saga_going(ps, alone, count, saga_id_key, order);
    if (n == 0)
        return;
    finish_args_t args[rpc_batch_items_max];
    const char *const *params[rpc_batch_items_max];
    size_t built = 0;
    for (; built < n; built++) {
        if (!finish_args(ps[order[built]], true, "", "", request_ids[order[built]], &args[built]))
            break;
        params[built] = args[built].params;
    }
    PGresult *rows = NULL;
    pg_result_t result = built < n
                             ? PG_ERROR
                             : pg_exec_prepared_rows(env->pg, "saga_finish_rows",
                                                     saga_finish_rows_sql, 8, n, params, &rows);
    for (size_t k = 0; k < built; k++)
        free(args[k].payload);
    if (result != PG_OK) {
        log_info("saga: a batch of %zu outcomes did not commit (%s); each goes alone", n,
                 built < n ? "no event" : pg_error_sqlstate(env->pg));
        for (size_t k = 0; k < n; k++)
            alone[order[k]] = true;
        return;
    }
    for (size_t k = 0; k < n; k++) {
        saga_payment_t *p = ps[order[k]];
        int row = PQntuples(rows) - 1;
        while (row >= 0 && strcmp(PQgetvalue(rows, row, 0), p->id) != 0)
            row--;
        log_set_request_id(request_ids[order[k]]);
        outcomes[order[k]] = finish_result(env, p, true, "", "", rows, row, 1);
    }
    PQclear(rows);
    log_set_request_id(NULL);
}

void saga_drive_together(payment_env_t *env, saga_payment_t *const *ps,
                         const char *const *request_ids, size_t count, saga_outcome_t *outcomes)
{
    bool alone[rpc_batch_items_max] = {0};
    bool pending[rpc_batch_items_max] = {0}; /* left PROCESSING: a batch got no answer */
    if (count > rpc_batch_items_max)
        count = rpc_batch_items_max; /* the callers never pass more */
    for (size_t i = 0; i < count; i++) {
        outcomes[i] = SAGA_PENDING;
        /* only what payment_create_batch hands over: a fresh payment at
         * ORDER_CHECKED with its insert's lease */
        alone[i] = strcmp(ps[i]->step, "ORDER_CHECKED") != 0 || ps[i]->lease_until_ms == 0;
    }
    int64_t step_began = clock_now_us();
    saga_debit_together(env, ps, request_ids, alone, pending, count);
    step_began = payment_step_done(env->metrics, PAYMENT_STEP_DEBIT, step_began);
    saga_mark_paid_together(env, ps, request_ids, alone, pending, count);
    step_began = payment_step_done(env->metrics, PAYMENT_STEP_MARK_PAID, step_began);
    saga_finish_together(env, ps, request_ids, alone, count, outcomes);
    payment_step_done(env->metrics, PAYMENT_STEP_FINISH, step_began);
    /* Whatever did not simply succeed goes on alone from its recorded
     * step: the calls it repeats are keyed by the payment id and give the
     * same answers again (a debit made is replayed, an order completed
     * by this payment stays so), and each failure is then handled as in
     * a payment driven alone. Those a batch got no answer for stay
     * PENDING, as after a single call without an answer. */
    for (size_t i = 0; i < count; i++) {
        if (!alone[i] || pending[i])
            continue;
        log_set_request_id(request_ids[i]);
        outcomes[i] = saga_drive(env, ps[i], request_ids[i]);
    }
    log_set_request_id(NULL);
}
