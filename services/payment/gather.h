/*
 * gather (payment): the steps of a payment that its threads make
 * together (lib/gather).
 *
 * Each payment thread drives one payment at a time and waits on every
 * step. Payments at the same step at about the same time make one call
 * for all: order.Get, user.Debit and order.MarkPaid as one lib/rpc batch
 * (one message, one round trip to each service's database), the insert
 * and the finishing statement as one transaction on the payment database
 * sent in one round trip (pg_exec_prepared_batch). The steps are chained
 * (gather_then), the last to the first, so that payments that ran
 * together stay together.
 *
 * A gathered call means exactly what the single call means, item by
 * item: each keeps its own arguments, user, request id and answer. When
 * the batch cannot help (a service from before batches, a transaction
 * that did not commit), the calls come back not gathered and each thread
 * makes its single call itself, so every failure path stays the single
 * call's.
 */
#ifndef PAYGATE_PAYMENT_GATHER_H
#define PAYGATE_PAYMENT_GATHER_H

#include "gather/gather.h"
#include "pg/pg.h"

enum {
    /* How long a leader waits for the payments of a run of the step
     * before (gather_then): they come within tens of microseconds as
     * their threads wake (./dev bench payments: 1.2 calls per batch
     * without waiting, 4 to 5 with it, at 8 connections) ... */
    payment_linger_step_us = 300,
    /* ... and from the last step to the first: their clients' next
     * payments come back through the gateway. (2000 us gathered a little
     * more at 32 connections but could add that much to a payment when
     * the clients do not come back together; 1000 us did as well within
     * the runs' noise.) */
    payment_linger_round_us = 1000,
};

/* A statement on the payment database, as a kind. A batch runs its
 * statements ordered by the parameters 'order_by' names (the key the
 * statement locks: two batches then wait for each other in the same
 * order, never in a cycle); -1 ends the list. */
typedef struct {
    const char *statement; /* name and SQL as for pg_exec_prepared */
    const char *sql;
    int nparams;
    int order_by[2];
} payment_sql_kind_t;

/* The steps a payment gathers, shared by the process's threads. */
typedef struct {
    gather_rpc_kind_t order_get_kind, debit_kind, mark_paid_kind;
    payment_sql_kind_t insert_kind, finish_kind;
    gather_t order_get;      /* order.Get */
    gather_t payment_insert; /* payments.c's insert */
    gather_t debit;          /* user.Debit */
    gather_t mark_paid;      /* order.MarkPaid */
    gather_t payment_finish; /* saga.c's finishing statement */
} payment_gathers_t;

/* The gather of 'kind' (a member of payment_gathers_t) for payment_env_t
 * 'env', or NULL when env has none (the calls below then answer false). */
#define PAYMENT_GATHER(env, kind) ((env)->gathers != NULL ? &(env)->gathers->kind : NULL)

/* Sets up the process's gathers: the calls with deadline 'deadline_ms',
 * the insert and finish with their statements, counted in 'metrics'
 * (paygate_payment_gathered_calls_total{kind} and _batches_total). */
void payment_gathers_init(payment_gathers_t *gathers, uint32_t deadline_ms,
                          const payment_sql_kind_t *insert, const payment_sql_kind_t *finish,
                          metrics_t *metrics);

/* Runs g's statement with 'params' on the payment database together with
 * other threads' statements of the kind, with 'pg' when this thread
 * leads. Returns true with '*result' and, on PG_OK, '*rows' (the caller
 * PQclears them) as pg_exec_prepared sets them: a batch's statements
 * answer PG_OK when its transaction committed; a statement that ran
 * alone ran on 'pg', whose pg_error_*() tell why it failed. Returns
 * false when the caller must run the statement itself (the batch's
 * transaction did not commit: nothing of it happened, or its commit's
 * outcome is unknown; as for any statement of a saga, running it again
 * is safe). */
bool payment_gather_sql(gather_t *g, pg_conn_t *pg, const char *const *params, PGresult **rows,
                        pg_result_t *result);

#endif
