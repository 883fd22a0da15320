/*
 * rpc: calling services through the broker, and being one. This header is
 * the public face of paygate's C client library (clients/c/README.md).
 *
 * The client side sends a REQUEST for ("service", "method") with a
 * protobuf body and a deadline, and waits for the REPLY or a status; it
 * also publishes events to the broker's event bus. The worker side
 * registers handlers per method, runs one registered instance per thread,
 * heartbeats, and rejoins the broker by itself after a broker restart. The
 * frames are in broker/README.md.
 *
 * Threads: a client is not thread-safe: use one per thread (clients may
 * share one ZeroMQ context, which is). A worker handler runs on its
 * instance's thread with that thread's state (e.g. its own database
 * connection), so handlers need no locks for per-thread state; handlers of
 * different instances run at the same time.
 *
 * Every call ends in exactly one status: the service's, the broker's own
 * (no_worker, deadline_exceeded, ...), or the client's when the broker does
 * not answer. This module never aborts the process on bad input from the
 * network. It writes its few warnings to stderr through lib/log.
 *
 * Request ids follow a request by themselves: while a worker serves a
 * call, the call's request id is its thread's log context (lib/log), so
 * every line the handler writes carries it, and every call the handler
 * makes through a client without an explicit id forwards it. Each worker
 * thread logs as its own instance id; at debug level it writes one line
 * per call served (service, method, status, reason, duration_ms).
 */
#ifndef PAYGATE_RPC_H
#define PAYGATE_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>
#include <zmq.h>

#include "batch.pb-c.h"
#include "broker.pb-c.h"
#include "curve/curve.h"
#include "status.pb-c.h"

enum {
    rpc_deadline_default_ms = 5000,
    rpc_reason_bytes_max = 64,
    rpc_message_bytes_max = 1024,
    rpc_details_max = 8,
    rpc_detail_bytes_max = 128,
    rpc_batch_items_max = 64, /* calls in one batch (proto/batch.proto) */
};

/* The outcome of a call, owned by the caller (no pointers inside). 'code'
 * is the coarse category to switch on, 'reason' the stable snake_case
 * cause (proto/status.proto). Longer texts than the arrays hold are cut;
 * details past rpc_details_max are dropped. */
typedef struct {
    Paygate__V1__Code code;
    char reason[rpc_reason_bytes_max + 1];   /* stable snake_case, may be "" */
    char message[rpc_message_bytes_max + 1]; /* for humans */
    size_t detail_count;
    struct {
        char key[rpc_detail_bytes_max + 1];
        char value[rpc_detail_bytes_max + 1];
    } details[rpc_details_max];
} rpc_status_t;

/* Per-call options; a zeroed struct (or a NULL pointer) is valid: all
 * defaults. The strings are only read during the call. The services trust
 * 'user_id' and 'principal' as given (clients/c/README.md says who must
 * set what): user.Register and user.Login need no user id, every other
 * public method acts for 'user_id', and the internal user.Debit,
 * user.Credit and order.MarkPaid refuse the principal "gateway". */
typedef struct {
    uint32_t deadline_ms;   /* 0: rpc_deadline_default_ms; the broker refuses
                               more than PAYGATE_BROKER_DEADLINE_MAX_MS */
    const char *request_id; /* tracing id (1..64 printable); NULL or "": the
                               calling thread's log request id
                               (log_set_request_id: a worker sets it for each
                               call it serves), else a fresh
                               "req_<16 hex digits>" */
    const char *user_id;    /* the acting user ("usr_..."), or NULL */
    const char *principal;  /* the calling program, e.g. "my-tool", or NULL */
} rpc_call_opts_t;

/* Sets 'status' to 'code' with a printf-style message, no reason and no
 * details. */
void rpc_status_set(rpc_status_t *status, Paygate__V1__Code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies a wire Status into 'status' (texts cut to the arrays' sizes);
 * 'wire' may be NULL, which means OK. */
void rpc_status_from_wire(rpc_status_t *status, const Paygate__V1__Status *wire);

/* The value of detail 'key' in 'status' (pointing into 'status'), or
 * NULL when there is none. */
const char *rpc_status_detail(const rpc_status_t *status, const char *key);

/* ---- client ---------------------------------------------------------- */

typedef struct rpc_client rpc_client_t;

/* Connects a new client to the broker at 'endpoint' (a ZeroMQ endpoint,
 * e.g. "tcp://127.0.0.1:55555") with the process's CURVE identity
 * (curve_process_identity: PAYGATE_CURVE_CERT and the broker's key, or
 * PAYGATE_INSECURE_PLAINTEXT=1). The connection is made in the background
 * and remade after the broker restarts; a call made while it is down waits
 * for it within its deadline. 'zmq_ctx' may be NULL: the client then owns
 * a context of its own; otherwise the context must outlive the client.
 * Returns NULL when 'endpoint' is malformed or the process has no broker
 * credentials (both logged), or memory or sockets run out; an unreachable
 * broker is not an error here. A broker that refuses the key looks like
 * an unreachable one (calls end UNAVAILABLE); its log says why. */
rpc_client_t *rpc_client_new(void *zmq_ctx, const char *endpoint);

/* Like rpc_client_new with an explicit 'identity' (e.g. a test that
 * speaks with several keys, or a plaintext reference); it must outlive
 * the call. */
rpc_client_t *rpc_client_new_as(void *zmq_ctx, const char *endpoint,
                                const curve_identity_t *identity);

/* Closes the client (unsent requests and unread replies are dropped; its
 * own context, if any, is terminated) and sets '*self' to NULL. Does
 * nothing when '*self' is NULL. */
void rpc_client_destroy(rpc_client_t **self);

/* Calls 'service'.'method' with 'request' encoded, waits for the reply,
 * and on OK decodes the reply body as 'reply_desc' into '*reply' (free it
 * with protobuf_c_message_free_unpacked(*reply, NULL)); otherwise sets
 * '*reply' to NULL. Returns the status code, also stored with reason and
 * message in 'status' (may be NULL). Besides the service's and the
 * broker's statuses: UNAVAILABLE when no connection to the broker came up
 * within the deadline, DEADLINE_EXCEEDED when the broker did not answer
 * within the deadline plus one second, INTERNAL when the reply body is not
 * a 'reply_desc'. Drops replies to other requests of this client, so do not
 * call it while rpc_client_send requests are outstanding. */
Paygate__V1__Code rpc_client_call(rpc_client_t *self, const char *service, const char *method,
                                  const ProtobufCMessage *request,
                                  const ProtobufCMessageDescriptor *reply_desc,
                                  ProtobufCMessage **reply, const rpc_call_opts_t *opts,
                                  rpc_status_t *status);

/* Like rpc_client_call with raw bytes: 'body' of 'body_len' bytes goes out
 * as is ('body' may be NULL when 'body_len' is 0); on OK, the reply body replaces the
 * content of 'reply_body' (an initialised zmq_msg_t the caller closes),
 * which is left as it was on failure. 'reply_body' may be NULL: the reply
 * body is discarded. */
Paygate__V1__Code rpc_client_call_raw(rpc_client_t *self, const char *service, const char *method,
                                      const void *body, size_t body_len,
                                      const rpc_call_opts_t *opts, zmq_msg_t *reply_body,
                                      rpc_status_t *status);

/* Publishes one event ('payload' of 'payload_len' bytes) to 'topic'
 * ([a-z0-9][a-z0-9_.-]{0,47}) of the broker's event bus and waits until
 * the broker has stored it durably (fsync), or 'deadline_ms' (0: the
 * default) passes. 'event_id' (1..128 printable characters) makes a retry
 * safe: the broker stores an id once within its dedup window and answers a
 * duplicate with the first offset and '*duplicate' = true. Events with the
 * same 'key' (NULL: none) reach each consumer group in order. On OK sets
 * '*offset' and '*duplicate' (each may be NULL). Returns the status code,
 * also stored in 'status' (may be NULL): OK when stored,
 * UNIMPLEMENTED/bus_disabled when the broker runs without an event bus,
 * INVALID_ARGUMENT/malformed_request for a bad topic or id,
 * UNAVAILABLE/storage_error when the broker could not write it, and
 * UNAVAILABLE or DEADLINE_EXCEEDED when the broker did not answer in
 * time. The same rule as rpc_client_call: no rpc_client_send requests
 * outstanding. */
Paygate__V1__Code rpc_client_publish(rpc_client_t *self, const char *topic, const char *event_id,
                                     const char *key, const void *payload, size_t payload_len,
                                     uint32_t deadline_ms, uint64_t *offset, bool *duplicate,
                                     rpc_status_t *status);

/* One event of rpc_client_publish_many: the caller fills the first five
 * fields; the call sets the rest. */
typedef struct {
    const char *topic;
    const char *event_id;
    const char *key; /* NULL: none */
    const void *payload;
    size_t payload_len;
    Paygate__V1__Code code;  /* as rpc_client_publish answers for this event */
    uint64_t offset;         /* on OK */
    bool duplicate;          /* on OK */
    uint64_t correlation_id; /* the call's */
} rpc_publish_item_t;

/* Publishes 'count' events as rpc_client_publish publishes one, all sent
 * before any answer is awaited, so that the broker stores them together
 * (one fsync for the lot, as it reads them in one turn). Waits until
 * each is answered or 'deadline_ms' (0: the default) passes, and sets
 * each item's code (DEADLINE_EXCEEDED when unanswered: its outcome is
 * unknown; UNAVAILABLE when it could not be sent). The broker stores
 * them in the order sent, but one may fail while a later one is stored:
 * a caller that needs a key's events in order sends no two of one key
 * in one call. Returns how many are OK. The same rule as rpc_client_call:
 * no rpc_client_send requests outstanding. */
size_t rpc_client_publish_many(rpc_client_t *self, rpc_publish_item_t *items, size_t count,
                               uint32_t deadline_ms);

/* One call of a batch (rpc_client_call_batch): the caller fills the
 * first three fields; the call sets the other two. */
typedef struct {
    const ProtobufCMessage *request; /* the method's request */
    const char *user_id;             /* the acting user, or NULL */
    const char *request_id;          /* tracing id; NULL or "": as for a single call */
    ProtobufCMessage *reply;         /* on OK: the decoded reply (free it with
                                        protobuf_c_message_free_unpacked); else NULL */
    rpc_status_t status;             /* this call's outcome */
} rpc_batch_item_t;

/* Calls 'service'.'method' once per item of 'items' (1..rpc_batch_items_max)
 * in one message: the service's method "batch.<method>" (proto/batch.proto),
 * which it serves only for methods it marks batchable (else UNIMPLEMENTED).
 * The items share 'opts' except the user and the request id, which are
 * each item's; the batch itself carries the first item's user id, so the
 * broker refuses it (PERMISSION_DENIED) from a key that may not act for
 * users, as it would each call. Returns the batch's code, also in 'status' (may be NULL):
 * OK when the service answered the batch, and then each item's status
 * (and reply) is its own; any other code is every item's status too, with
 * the same meaning as for a single call (e.g. DEADLINE_EXCEEDED: the
 * outcome is unknown). The same rule as rpc_client_call: no
 * rpc_client_send requests outstanding. */
Paygate__V1__Code rpc_client_call_batch(rpc_client_t *self, const char *service, const char *method,
                                        rpc_batch_item_t *items, size_t count,
                                        const ProtobufCMessageDescriptor *reply_desc,
                                        const rpc_call_opts_t *opts, rpc_status_t *status);

/* Pipelined use (several requests in flight on one client): sends a
 * REQUEST like rpc_client_call_raw does without waiting for the reply, and
 * sets '*correlation_id' to the id its reply will carry (unique per
 * client). Collect the replies, in any order, with rpc_client_recv; the
 * broker answers every request it received (the reply, or its own status
 * when the deadline passes). Waits up to the deadline for a connection to
 * the broker. Returns 0, or -1 with 'status' (required) set to UNAVAILABLE
 * when the request could not be sent. */
int rpc_client_send(rpc_client_t *self, const char *service, const char *method, const void *body,
                    size_t body_len, const rpc_call_opts_t *opts, uint64_t *correlation_id,
                    rpc_status_t *status);

/* Waits up to 'timeout_ms' (0: only what has arrived) for one reply.
 * Returns 1 with '*correlation_id' and 'status' (required) set and, on
 * OK when 'reply_body' is not NULL, the body in 'reply_body' (as in
 * rpc_client_call_raw); 0 on timeout (nothing set); -1 on a socket error
 * (errno set). Malformed messages from the broker are logged and skipped. */
int rpc_client_recv(rpc_client_t *self, int timeout_ms, uint64_t *correlation_id,
                    zmq_msg_t *reply_body, rpc_status_t *status);

/* ---- worker ---------------------------------------------------------- */

typedef struct rpc_ctx rpc_ctx_t;

/* A handler gets the decoded 'request' and an initialised 'reply' of the
 * method's types and the calling thread's 'thread_state' (from
 * thread_init, or NULL). It returns OK after filling 'reply', or a failure
 * code, normally through rpc_ctx_fail() (without it the caller gets the
 * code's name as the message and no reason); on failure 'reply' is not
 * sent. The request, and memory from rpc_ctx_alloc/rpc_ctx_strdup, live
 * until the reply is sent, so reply fields may point into either. An
 * instance runs one handler at a time; the broker answers the caller
 * DEADLINE_EXCEEDED when a handler outlasts the deadline, so a slow
 * handler should watch rpc_ctx_deadline_left_ms(). Requests whose method
 * is unknown (UNIMPLEMENTED), whose body does not decode
 * (INVALID_ARGUMENT) or whose deadline passed while queued
 * (DEADLINE_EXCEEDED) are answered without calling a handler. */
typedef Paygate__V1__Code (*rpc_handler_fn)(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                            ProtobufCMessage *reply, void *thread_state);

/* Whether a method is also served in batches ("batch.<name>",
 * rpc_client_call_batch). */
typedef enum {
    RPC_BATCH_NONE = 0, /* no: "batch.<name>" is UNIMPLEMENTED */
    RPC_BATCH_EACH,     /* the items run one after another, as single calls */
    /* The items run in one transaction of the thread's state (the
     * server's batch_ops), committed once for all: one commit instead of
     * one per call. When a statement fails, the commit fails, or the
     * transaction cannot begin, the transaction is rolled back, the
     * answers are dropped, and the items run again as single calls. The
     * handler must therefore be safe to run twice (keyed, as Debit and
     * MarkPaid are) and must change nothing outside the database. */
    RPC_BATCH_TRANSACTION,
    /* The method's own batch code (rpc_server_config_t.batch_handlers)
     * answers what it can of a batch at once; its handler runs the rest
     * one by one. Without batch code: as RPC_BATCH_EACH. */
    RPC_BATCH_HANDLER,
} rpc_batch_mode_t;

/* One method of a service: its name ([A-Za-z0-9_.]{1,64}), its request
 * and reply message types, its handler, and whether it is batchable. */
typedef struct {
    const char *name;
    const ProtobufCMessageDescriptor *request_desc;
    const ProtobufCMessageDescriptor *reply_desc;
    rpc_handler_fn handler;
    rpc_batch_mode_t batch;
} rpc_method_t;

/* A method's batch code (RPC_BATCH_HANDLER). It gets the 'count' calls
 * of a batch whose bodies decoded, each with its own context (the item's
 * user and tracing id), request and initialised reply, and answers those
 * it can, typically all in one database round trip: for each it answers
 * it sets 'answered[i]' and 'codes[i]' as a handler's return value (OK
 * with 'replies[i]' filled, or a failure through rpc_ctx_fail(ctxs[i],
 * ...)). The calls it leaves unanswered then run through the method's
 * handler one by one, as single calls, so for them it must leave the
 * state as if it had not run: a batch code changes only what it
 * answers for. */
typedef void (*rpc_batch_handler_fn)(rpc_ctx_t *const *ctxs,
                                     const ProtobufCMessage *const *requests,
                                     ProtobufCMessage *const *replies, Paygate__V1__Code *codes,
                                     bool *answered, size_t count, void *thread_state);

/* The batch code of method 'method' (by name). */
typedef struct {
    const char *method;
    rpc_batch_handler_fn run;
} rpc_batch_handler_t;

/* How a worker thread's state runs a batch's transaction
 * (RPC_BATCH_TRANSACTION); lib/pgrpc has one for database states. Each
 * gets the thread's state. */
typedef struct {
    bool (*begin)(void *thread_state);  /* false: could not begin */
    bool (*failed)(void *thread_state); /* a statement in it failed */
    bool (*commit)(void *thread_state); /* false: not committed (or unknown);
                                           rollback() follows */
    void (*rollback)(void *thread_state);
} rpc_batch_ops_t;

/* A worker process's configuration. rpc_server_new copies the strings;
 * 'methods' and 'app' are used as given and must outlive the server. */
typedef struct {
    const char *endpoint; /* broker endpoint */
    const char *service;  /* service name to register: [a-z0-9_.-]{1,64}, not broker.* */
    const char *instance; /* instance id prefix; NULL: "<service>-<host>-<pid>";
                             each thread registers as "<prefix>-<index>" */
    const rpc_method_t *methods;
    size_t method_count;            /* at least 1 */
    unsigned threads;               /* worker instances (threads); 0: 1 */
    uint32_t heartbeat_interval_ms; /* 0: 1000 */
    uint32_t heartbeat_liveness;    /* silent intervals before reconnect; 0: 3 */
    uint32_t max_in_flight;         /* requests per instance at once; 0: 4 */
    uint32_t drain_timeout_ms;      /* on stop, wait this long for in-flight; 0: 5000 */
    size_t message_bytes_max;       /* larger requests get RESOURCE_EXHAUSTED; 0: 1 MiB */
    /* Called on each worker thread ('index' from 0) before it registers;
     * returns that thread's state, or NULL to fail start-up. May be NULL. */
    void *(*thread_init)(unsigned index, void *app);
    /* Called on the same thread with a non-NULL state when it ends. May be
     * NULL. */
    void (*thread_fini)(void *thread_state);
    void *app; /* passed to thread_init */
    /* Where to count requests (paygate_rpc_handled_total{service,method,
     * code}, paygate_rpc_handle_duration_seconds{service,method}); NULL:
     * not counted. Must outlive the server. */
    struct metrics *metrics;
    /* CURVE identity towards the broker; NULL: the process's
     * (curve_process_identity). */
    const curve_identity_t *identity;
    /* The transactions of RPC_BATCH_TRANSACTION methods; NULL: such
     * methods' batches run as RPC_BATCH_EACH. */
    const rpc_batch_ops_t *batch_ops;
    /* The batch code of RPC_BATCH_HANDLER methods (used as given; must
     * outlive the server). */
    const rpc_batch_handler_t *batch_handlers;
    size_t batch_handler_count;
} rpc_server_config_t;

typedef struct rpc_server rpc_server_t;

/* Checks 'config' and builds a server (nothing runs yet). NULL, after
 * logging why, when the configuration is invalid or there are no broker
 * credentials. */
rpc_server_t *rpc_server_new(const rpc_server_config_t *config);

/* Starts the worker threads, serves until rpc_server_stop() (or a fatal
 * refusal by the broker), drains (each instance leaves the broker's
 * rotation and finishes what it was sent, for at most drain_timeout_ms),
 * and joins them. Call it once per server. A broker that is down or
 * restarts is waited for, with backoff: not a failure. Returns 0 on a
 * clean stop; -1 when a thread could not start, thread_init returned NULL,
 * a socket could not be made, or the broker refused the registration
 * (PERMISSION_DENIED or INVALID_ARGUMENT): the other threads are stopped
 * too. */
int rpc_server_run(rpc_server_t *self);

/* Asks a running server to drain and stop; rpc_server_run then returns.
 * Safe from any thread and from a signal handler. */
void rpc_server_stop(rpc_server_t *self);

/* Frees a server that is not running and sets '*self' to NULL. Does
 * nothing when '*self' is NULL. */
void rpc_server_destroy(rpc_server_t **self);

/* Installs SIGINT/SIGTERM handlers that call rpc_server_stop('server')
 * and ignores SIGPIPE. One server per process: a second call replaces the
 * first server. */
void rpc_server_stop_on_signals(rpc_server_t *server);

/* ---- inside a handler ------------------------------------------------ */

/* Sets the failure returned to the caller: 'reason' is a stable
 * snake_case code or NULL (none); 'fmt' the printf-style human message,
 * cut to rpc_message_bytes_max - 1 bytes. Returns 'code', for
 * "return rpc_ctx_fail(...)". */
Paygate__V1__Code rpc_ctx_fail(rpc_ctx_t *ctx, Paygate__V1__Code code, const char *reason,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Adds a detail ("payment_id" -> "pay_...") to the failure status (sent
 * only when the handler fails). At most rpc_details_max; more, or a detail
 * that does not fit in memory, are dropped. */
void rpc_ctx_detail(rpc_ctx_t *ctx, const char *key, const char *value);

/* The call's metadata, as the caller set it in rpc_call_opts_t: tracing
 * id, caller user id, principal; "" when not given, never NULL. Valid
 * until the handler returns. Nothing authenticates them (see
 * rpc_call_opts_t). */
const char *rpc_ctx_request_id(const rpc_ctx_t *ctx);
const char *rpc_ctx_user_id(const rpc_ctx_t *ctx);
const char *rpc_ctx_principal(const rpc_ctx_t *ctx);

/* Milliseconds left until the call's deadline, counted from when this
 * instance received the request (<= 0: passed). */
int64_t rpc_ctx_deadline_left_ms(const rpc_ctx_t *ctx);

/* This instance's id, as registered with the broker ("<prefix>-<index>"). */
const char *rpc_ctx_instance_id(const rpc_ctx_t *ctx);

/* Call-scoped memory, zeroed, freed after the reply is sent: 'bytes'
 * bytes, or a copy of 'text'. NULL when memory runs out. */
void *rpc_ctx_alloc(rpc_ctx_t *ctx, size_t bytes);
char *rpc_ctx_strdup(rpc_ctx_t *ctx, const char *text);

#endif
