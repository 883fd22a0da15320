/*
 * The payment service: its settings, the state each thread owns, the saga
 * and the handlers.
 */
#ifndef PAYGATE_PAYMENT_SERVICE_H
#define PAYGATE_PAYMENT_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "gather.h"
#include "metrics/metrics.h"
#include "pg/pg.h"
#include "rpc/rpc.h"

enum {
    payment_id_bytes_max = 64,
    order_id_bytes_max = 64,
    user_id_bytes_max = 64,
    idempotency_key_bytes_max = 255,
    failure_code_bytes_max = 64,
    failure_message_bytes_max = 256,
    list_limit_default = 10,
    list_limit_max = 100,
    recovery_batch_max = 32,
};

typedef struct {
    uint32_t lease_ms;         /* how long a saga's driver holds it */
    uint32_t call_deadline_ms; /* each call to user/order */
    uint32_t recovery_interval_ms;
    uint32_t clock_skew_ms; /* assumed bound on clock skew between databases */
} payment_settings_t;

/* The payment service's own counters (series of the process's metrics;
 * NULL series count nothing):
 *   paygate_payment_payments_total{outcome}   succeeded, failed: sagas
 *       finished by this process (each payment once, by its finisher)
 *   paygate_payment_refunds_total{outcome}    succeeded
 *   paygate_payment_recoveries_total{kind}    payment, refund: stuck
 *       sagas the recovery loop took over
 *   paygate_payment_batch_calls               histogram: calls per
 *       batch.Create (the gateway's gathered payments)
 *   paygate_payment_batch_step_seconds{step}  histogram: how long each
 *       step of a batch of payments took, calls and commits included
 *       (order_get, insert, debit, mark_paid, finish); with
 *       batch_calls, where a gathered payment's time goes */
typedef enum {
    PAYMENT_STEP_ORDER_GET,
    PAYMENT_STEP_INSERT,
    PAYMENT_STEP_DEBIT,
    PAYMENT_STEP_MARK_PAID,
    PAYMENT_STEP_FINISH,
    PAYMENT_STEP_COUNT
} payment_step_t;

typedef struct {
    metrics_series_t *payments_succeeded;
    metrics_series_t *payments_failed;
    metrics_series_t *refunds_succeeded;
    metrics_series_t *recovered_payments;
    metrics_series_t *recovered_refunds;
    metrics_series_t *batch_calls;
    metrics_series_t *batch_steps[PAYMENT_STEP_COUNT];
} payment_metrics_t;

/* Registers the series above in 'metrics'. */
void payment_metrics_init(payment_metrics_t *out, metrics_t *metrics);

/* Counts a batch step of 'step' that began at 'began_us' (clock_now_us)
 * and ended now; returns now, the next step's beginning. */
int64_t payment_step_done(const payment_metrics_t *metrics, payment_step_t step, int64_t began_us);

/* What a thread needs to drive sagas: its database connection and its
 * RPC client (both owned by the thread), and the process's gathers
 * (gather.h; NULL: every call single). */
typedef struct payment_env {
    pg_conn_t *pg;
    rpc_client_t *rpc;
    const payment_settings_t *settings;
    const payment_metrics_t *metrics;
    payment_gathers_t *gathers;
} payment_env_t;

/* A payment as the saga sees it. */
typedef struct {
    char id[payment_id_bytes_max + 1];
    char user_id[user_id_bytes_max + 1];
    char order_id[order_id_bytes_max + 1];
    int64_t amount;
    char step[24];
    int64_t lease_token; /* the fencing token this driver holds */
    /* The end (Unix ms) of the lease the statement that gave the token
     * just took, so the first step needs no renewal of its own; 0: not
     * known, renew before acting. */
    int64_t lease_until_ms;
    /* Filled by saga_drive when it records the outcome itself (SUCCEEDED
     * or FAILED), so that the caller can answer without reading the row
     * back: the row's times (RFC 3339) and, for FAILED, why. */
    char created_at[32];
    char updated_at[32];
    const char *failure_code;
    const char *failure_message;
} saga_payment_t;

typedef enum {
    SAGA_SUCCEEDED,
    SAGA_FAILED,
    SAGA_PENDING, /* a step's outcome is unknown: the recovery loop goes on */
} saga_outcome_t;

/* saga.c: drives 'p' from its recorded step as far as it can, while it
 * holds the payment's lease (p->lease_token). Every call is keyed by the
 * payment id and repeating any of them changes nothing, a step is
 * recorded before a call that could not be repeated safely from the
 * step before, and a driver that lost its lease records nothing and
 * stops, so running it twice, or after a crash, is safe. On SUCCEEDED
 * or FAILED it sets p's updated_at and failure fields. */
saga_outcome_t saga_drive(payment_env_t *env, saga_payment_t *p, const char *request_id);

/* saga.c: drives the fresh payments of 'ps' ('count', at most
 * rpc_batch_items_max; each at ORDER_CHECKED with the lease its insert
 * took, for request 'request_ids[i]') together: one user.Debit batch, one
 * order.MarkPaid batch, one statement for their outcomes. A payment
 * for which a batch did not simply succeed goes on alone (saga_drive)
 * from its recorded step, so that every failure is handled as for one
 * payment; but when a Debit or MarkPaid batch got no answer at all
 * (UNAVAILABLE, DEADLINE_EXCEEDED) its payments stay PENDING, as one
 * payment does after such a call, rather than wait out a deadline each.
 * Sets 'outcomes[i]' as saga_drive answers for each. */
void saga_drive_together(payment_env_t *env, saga_payment_t *const *ps,
                         const char *const *request_ids, size_t count, saga_outcome_t *outcomes);

/* payments.c: the insert of a new payment; saga.c: the statement that
 * finishes one (both gathered: gather.h). */
extern const payment_sql_kind_t payment_insert_statement;
extern const payment_sql_kind_t saga_finish_statement;

/* refunds.c: credits the wallet for PENDING refund 'refund_id' and marks
 * it SUCCEEDED. Returns true when done. */
bool refund_drive(payment_env_t *env, const char *refund_id, const char *user_id, int64_t amount,
                  const char *request_id);

/* recovery.c: one pass over stuck payments and refunds whose lease
 * expired. Returns how many it drove. */
int recovery_pass(payment_env_t *env);

/* payments.c / refunds.c: the RPC handlers (thread state: payment_env_t). */
Paygate__V1__Code payment_create(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                 ProtobufCMessage *reply, void *thread);

/* payments.c: Create's batch code (rpc_batch_handler_fn): the calls of a
 * batch (two or more) check their orders in one order.Get batch, insert
 * in one transaction and are driven together (saga_drive_together). It
 * answers what went as for one call (the same replies and errors) and
 * leaves to payment_create what does not: a call it would refuse, an
 * order not answered, a known idempotency key, a batch that failed. */
void payment_create_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                          ProtobufCMessage *const *replies, Paygate__V1__Code *codes,
                          bool *answered, size_t count, void *thread);
Paygate__V1__Code payment_get(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                              ProtobufCMessage *reply, void *thread);
Paygate__V1__Code payment_list(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                               ProtobufCMessage *reply, void *thread);
Paygate__V1__Code refund_create(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                ProtobufCMessage *reply, void *thread);

#endif
