/*
 * recovery: finishes what crashed or timed-out requests left behind.
 *
 * At start-up and then every recovery_interval_ms, it leases (locked_until)
 * a batch of PROCESSING payments and PENDING refunds whose lease expired,
 * and drives each with the same idempotent steps a request would. FOR
 * UPDATE SKIP LOCKED lets several payment instances share the work without
 * taking the same row.
 */
#include <stdio.h>
#include <stdlib.h>

#include "clock/clock.h"
#include "log/log.h"
#include "payment_service.h"

/* Leases ONE payment whose driver's lease ended (plus the clock-skew
 * margin): a new fencing token, so that a slow earlier driver stops.
 * One at a time, so that no leased payment waits in a batch while its
 * lease runs out. */
static const char lease_payment_sql[] =
    "UPDATE payments SET locked_until = now() + make_interval(secs => $1::int / 1000.0),"
    " attempts = attempts + 1, lease_token = lease_token + 1"
    " WHERE id = (SELECT id FROM payments WHERE status = 'PROCESSING'"
    "               AND locked_until + make_interval(secs => $2::int / 1000.0) <= now()"
    "             ORDER BY locked_until LIMIT 1 FOR UPDATE SKIP LOCKED)"
    " RETURNING id, user_id, order_id, amount, step, attempts, lease_token,"
    "           (extract(epoch FROM locked_until) * 1000)::bigint";

static const char lease_refunds_sql[] =
    "UPDATE refunds SET locked_until = now() + make_interval(secs => $1::int / 1000.0)"
    " WHERE id IN (SELECT id FROM refunds WHERE status = 'PENDING' AND locked_until <= now()"
    "              ORDER BY locked_until LIMIT $2::int FOR UPDATE SKIP LOCKED)"
    " RETURNING id, user_id, amount";

int recovery_pass(payment_env_t *env)
{
    char lease[16], batch[16];
    snprintf(lease, sizeof lease, "%u", env->settings->lease_ms);
    snprintf(batch, sizeof batch, "%d", recovery_batch_max);
    const char *params[] = {lease, batch};
    int driven = 0;

    PGresult *rows = NULL;
    char skew[16];
    snprintf(skew, sizeof skew, "%u", env->settings->clock_skew_ms);
    const char *payment_params[] = {lease, skew};
    for (int i = 0; i < recovery_batch_max; i++) {
        if (pg_exec_prepared(env->pg, "recovery_payment", lease_payment_sql, 2, payment_params,
                             &rows) != PG_OK)
            break;
        if (PQntuples(rows) == 0) {
            PQclear(rows);
            break;
        }
        saga_payment_t p;
        snprintf(p.id, sizeof p.id, "%s", PQgetvalue(rows, 0, 0));
        snprintf(p.user_id, sizeof p.user_id, "%s", PQgetvalue(rows, 0, 1));
        snprintf(p.order_id, sizeof p.order_id, "%s", PQgetvalue(rows, 0, 2));
        p.amount = strtoll(PQgetvalue(rows, 0, 3), NULL, 10);
        snprintf(p.step, sizeof p.step, "%s", PQgetvalue(rows, 0, 4));
        p.lease_token = strtoll(PQgetvalue(rows, 0, 6), NULL, 10);
        p.lease_until_ms = strtoll(PQgetvalue(rows, 0, 7), NULL, 10);
        log_info("recovery: resuming payment %s at %s (attempt %s)", p.id, p.step,
                 PQgetvalue(rows, 0, 5));
        PQclear(rows);
        metrics_counter_add(env->metrics->recovered_payments, 1);
        saga_drive(env, &p, "recovery");
        driven++;
    }
    if (pg_exec_prepared(env->pg, "recovery_refunds", lease_refunds_sql, 2, params, &rows) ==
        PG_OK) {
        for (int i = 0; i < PQntuples(rows); i++) {
            log_info("recovery: resuming refund %s", PQgetvalue(rows, i, 0));
            metrics_counter_add(env->metrics->recovered_refunds, 1);
            refund_drive(env, PQgetvalue(rows, i, 0), PQgetvalue(rows, i, 1),
                         strtoll(PQgetvalue(rows, i, 2), NULL, 10), "recovery");
            driven++;
        }
        PQclear(rows);
    }
    return driven;
}

void payment_metrics_init(payment_metrics_t *out, metrics_t *metrics)
{
    const char *const outcome[] = {"outcome", NULL};
    const char *const kind[] = {"kind", NULL};
    metrics_family_t *payments = metrics_counter_family(
        metrics, "paygate_payment_payments_total",
        "Payments this process finished, by outcome (succeeded, failed).", outcome);
    metrics_family_t *refunds =
        metrics_counter_family(metrics, "paygate_payment_refunds_total",
                               "Refunds this process finished, by outcome.", outcome);
    metrics_family_t *recoveries = metrics_counter_family(
        metrics, "paygate_payment_recoveries_total",
        "Stuck payments and refunds the recovery loop took over, by kind.", kind);
    out->payments_succeeded = metrics_series(payments, (const char *const[]){"succeeded"});
    out->payments_failed = metrics_series(payments, (const char *const[]){"failed"});
    out->refunds_succeeded = metrics_series(refunds, (const char *const[]){"succeeded"});
    out->recovered_payments = metrics_series(recoveries, (const char *const[]){"payment"});
    out->recovered_refunds = metrics_series(recoveries, (const char *const[]){"refund"});
    static const double call_bounds[] = {1, 2, 4, 8, 16, 32, 64};
    out->batch_calls = metrics_series(
        metrics_histogram_family(metrics, "paygate_payment_batch_calls",
                                 "Calls per batch.Create (payments the gateway gathered).", NULL,
                                 call_bounds, sizeof call_bounds / sizeof call_bounds[0]),
        NULL);
    static const double step_bounds_s[] = {0.0005, 0.001, 0.002, 0.005, 0.01,
                                           0.025,  0.05,  0.1,   0.25,  1};
    static const char *const steps[PAYMENT_STEP_COUNT] = {"order_get", "insert", "debit",
                                                          "mark_paid", "finish"};
    metrics_family_t *step_family = metrics_histogram_family(
        metrics, "paygate_payment_batch_step_seconds",
        "How long each step of a batch of payments took (its calls and commits included), by "
        "step.",
        (const char *const[]){"step", NULL}, step_bounds_s,
        sizeof step_bounds_s / sizeof step_bounds_s[0]);
    for (size_t i = 0; i < PAYMENT_STEP_COUNT; i++)
        out->batch_steps[i] = metrics_series(step_family, (const char *const[]){steps[i]});
}

int64_t payment_step_done(const payment_metrics_t *metrics, payment_step_t step, int64_t began_us)
{
    int64_t now = clock_now_us();
    metrics_histogram_observe(metrics->batch_steps[step], (double)(now - began_us) / 1e6);
    return now;
}
