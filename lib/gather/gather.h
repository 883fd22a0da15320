/*
 * gather: one process's threads' calls of one kind, made together.
 *
 * A thread that serves one request at a time waits on each call it makes
 * (to another service, to its database). When several threads make the
 * same kind of call at about the same time, gathering makes it one: the
 * first thread to arrive while no call of that kind is running (the
 * leader) takes everything queued (up to gather_batch_max) and runs it
 * with its own connection or client; the others sleep until their part
 * is done, and whoever arrives meanwhile queues for the next run.
 *
 * Calls that ran together at one step tend to reach the next step
 * together, one after another as their threads wake: gather_then() names
 * the next step, whose leader then waits a moment (up to its linger) for
 * those expected, so that they stay one batch. That is the only waiting
 * on purpose: a lone call with nothing expected runs at once, and what
 * was expected but has not come within gather_expect_horizon lingers (it
 * took another path) is forgotten. A kind that is no step's next never
 * waits.
 *
 * What a run does is the kind's run function (gather_rpc_* below make
 * one lib/rpc batch call, proto/batch.proto). Each call keeps its own
 * arguments and answer; a run may also hand calls back "not gathered",
 * and their threads then make their single calls themselves.
 *
 * Threads: every function here is safe from any thread. A gather_t lives
 * as long as the threads that use it.
 */
#ifndef PAYGATE_GATHER_H
#define PAYGATE_GATHER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics/metrics.h"
#include "rpc/rpc.h"

enum {
    gather_batch_max = 32,
    gather_expect_horizon = 8, /* lingers after which expected calls are forgotten */
};

typedef struct gather gather_t;

/* One thread's call, on its stack while it waits. 'arg' is the kind's
 * (what to run and where the answer goes). */
typedef struct gather_call {
    void *arg;
    bool gathered; /* set by the run: false, make the single call yourself */
    /* the queue's */
    bool done;
    pthread_cond_t wake;
    struct gather_call *next;
} gather_call_t;

/* Runs 'count' (1..gather_batch_max) queued calls of 'g' with 'leader'
 * (what the leading thread passed to gather_submit: its connection or
 * client); sets each call's 'gathered' and answer. */
typedef void (*gather_run_fn)(gather_t *g, void *leader, gather_call_t **calls, size_t count);

struct gather {
    pthread_mutex_t lock;
    pthread_cond_t arrived; /* a lingering leader waits on it */
    gather_call_t *head;
    gather_call_t **tail;
    size_t queued;
    bool running;
    bool lingering;
    unsigned expected;      /* calls a run of the step before sent this way */
    int64_t expected_at_us; /* when (clock_now_us); forgotten after linger_us */
    unsigned linger_us;     /* how long a leader waits for them at most */
    struct gather *then;    /* the next step, NULL: none */
    gather_run_fn run;
    void *kind;                /* the run function's (e.g. gather_rpc_kind_t) */
    metrics_series_t *calls;   /* calls run two or more together; NULL: not counted */
    metrics_series_t *batches; /* the runs they made */
};

/* Sets up 'g' to run its calls with 'run' ('kind' is for it). */
void gather_init(gather_t *g, gather_run_fn run, void *kind);
void gather_destroy(gather_t *g);

/* Makes 'then' the step after 'g': the calls of a run of g go on to
 * 'then' next, so its leader waits up to 'linger_us' for them. */
void gather_then(gather_t *g, gather_t *then, unsigned linger_us);

/* Counts g's runs of two or more calls in 'calls' and 'batches' (series
 * of the process's metrics; NULL: not counted). */
void gather_count_in(gather_t *g, metrics_series_t *calls, metrics_series_t *batches);

/* Queues 'call' (its 'arg' set) and returns when it is done: run by this
 * thread as the leader (with 'leader'), or by another thread's run. */
void gather_submit(gather_t *g, void *leader, gather_call_t *call);

/* ---- calls of a method of another service ------------------------------- */

/* A kind that calls 'service'.'method' (lib/rpc batches); the strings
 * must outlive it. */
typedef struct {
    const char *service;
    const char *method;
    const ProtobufCMessageDescriptor *reply_desc;
    const char *principal; /* the callers' */
    uint32_t deadline_ms;  /* each call's, and the batch's */
} gather_rpc_kind_t;

/* Sets up 'g' for calls of 'kind' (which must outlive it). */
void gather_init_rpc(gather_t *g, const gather_rpc_kind_t *kind);

/* Calls g's method with 'request' for 'user_id' (tracing id 'request_id';
 * NULL or "": this thread's) together with other threads' calls, ordered
 * by 'order_key' within a batch (say, the rows the method locks, so that
 * two batches lock in the same order; NULL: ""), with 'client' when this
 * thread leads. Sets '*code', 'status' and, on OK,
 * '*reply' (free it with protobuf_c_message_free_unpacked) as
 * rpc_client_call sets them, and returns true; returns false when the
 * caller must make the single call itself (the service takes no batches,
 * e.g. an older version during a rolling upgrade), or 'g' is NULL. */
bool gather_rpc(gather_t *g, rpc_client_t *client, const ProtobufCMessage *request,
                const char *user_id, const char *request_id, const char *order_key,
                Paygate__V1__Code *code, rpc_status_t *status, ProtobufCMessage **reply);

#endif
