/*
 * gather: the payment threads' calls of one kind, made together.
 *
 * Each payment thread drives one payment at a time and waits on every
 * step: a call to the order or user service, a statement on its own
 * database. Payments that reach the same step at about the same time are
 * gathered: the first thread to arrive while no call of that kind is
 * running (the leader) takes everything queued (up to gather_batch_max)
 * and makes one call for all of it with its own connection and client:
 * one message and one commit in the other service (lib/rpc's batches,
 * RPC_BATCH_TRANSACTION), or one transaction on the payment database.
 * The others wait, and whoever arrives meanwhile queues for the next
 * call. Nobody waits on purpose: a lone payment makes its single call at
 * once (as the leader: whoever comes meanwhile queues behind it).
 *
 * A gathered call means exactly what the single call means, item by
 * item: each keeps its own arguments, user, request id and answer. When
 * the batch cannot help (an older service that has no batches, a
 * transaction that did not commit), the items come back "not done" and
 * each thread makes its own single call as before, so every failure path
 * stays the single call's.
 */
#ifndef PAYGATE_PAYMENT_GATHER_H
#define PAYGATE_PAYMENT_GATHER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "metrics/metrics.h"
#include "pg/pg.h"
#include "rpc/rpc.h"

enum {
    gather_batch_max = 32,
    /* How long a leader waits for the payments of a batch of the step
     * before (gather_then): they come within tens of microseconds as
     * their threads wake (./dev bench payments: 1.2 calls per batch
     * without waiting, 4 to 5 with it, at 8 connections) ... */
    gather_linger_step_us = 300,
    /* ... and from the last step to the first: their clients' next
     * payments come back through the gateway. */
    gather_linger_round_us = 2000,
};

typedef struct gather_call gather_call_t;
struct payment_env;

/* One kind of call: a method of another service (rpc) or a statement on
 * the payment database (sql). */
typedef struct gather {
    pthread_mutex_t lock;
    pthread_cond_t arrived; /* a lingering leader waits on it */
    gather_call_t *head;
    gather_call_t **tail;
    bool running;
    bool lingering; /* a leader waits for 'expected' */
    size_t queued;
    unsigned expected;   /* calls a batch of the step before sent this way */
    unsigned linger_us;  /* how long a leader waits for them at most */
    struct gather *then; /* the next step, NULL: none */
    /* an RPC method ... */
    const char *service;
    const char *method;
    const ProtobufCMessageDescriptor *reply_desc;
    /* ... or a statement (name and SQL as for pg_exec_prepared) */
    const char *statement;
    const char *sql;
    int nparams;
    metrics_series_t *calls;   /* calls made together, NULL: not counted */
    metrics_series_t *batches; /* batches they made */
} gather_t;

/* The kinds a payment gathers, shared by the process's threads. */
typedef struct {
    gather_t order_get;      /* order.Get */
    gather_t debit;          /* user.Debit */
    gather_t mark_paid;      /* order.MarkPaid */
    gather_t payment_insert; /* payments.c's insert */
    gather_t payment_finish; /* saga.c's finishing statement */
} payment_gathers_t;

/* Sets up an RPC kind / a statement kind. */
void gather_init_rpc(gather_t *g, const char *service, const char *method,
                     const ProtobufCMessageDescriptor *reply_desc);
void gather_init_sql(gather_t *g, const char *statement, const char *sql, int nparams);
void gather_destroy(gather_t *g);

/* Makes 'then' the step after 'g': the calls of a batch of g go on to
 * 'then' next, so its leader waits up to 'linger_us' for them to queue
 * (they come one after another as their threads wake). */
void gather_then(gather_t *g, gather_t *then, unsigned linger_us);

/* The gather of 'kind' (a member of payment_gathers_t) for 'env', or
 * NULL when env has none (then the calls below answer false). */
#define PAYMENT_GATHER(env, kind) ((env)->gathers != NULL ? &(env)->gathers->kind : NULL)

/* Calls g's method with 'request' for 'user_id' (tracing id
 * 'request_id'; NULL or "": this thread's) together with other
 * threads' calls, ordered by 'order_key' within the batch (the rows the
 * method locks, so that two batches lock in the same order). Returns
 * true with '*code', 'status' and, on OK, '*reply' (free it with
 * protobuf_c_message_free_unpacked) set as rpc_client_call sets them;
 * false when the caller must make the single call itself. */
bool gather_rpc(struct payment_env *env, gather_t *g, const ProtobufCMessage *request,
                const char *user_id, const char *request_id, const char *order_key,
                Paygate__V1__Code *code, rpc_status_t *status, ProtobufCMessage **reply);

/* Runs g's statement with 'params' in one transaction with other
 * threads' statements of the kind. Returns true with '*result' and, on
 * PG_OK, '*rows' (the caller PQclears them) as pg_exec_prepared sets
 * them: a batch's statements answer PG_OK when its transaction
 * committed; a statement that ran alone (nothing else was queued) ran on
 * this thread's own connection, whose pg_error_*() tell why it failed.
 * Returns false when the caller must run the statement itself on its own
 * connection (the batch's transaction did not commit: nothing of it
 * happened, or its commit's outcome is unknown; as for any statement of
 * a saga, running it again is safe). */
bool gather_sql(struct payment_env *env, gather_t *g, const char *const *params, PGresult **rows,
                pg_result_t *result);

#endif
