/*
 * rpc: calling services through the broker, and being one.
 *
 * The client side sends a REQUEST for ("service", "method") with a
 * protobuf body and a deadline, and waits for the REPLY or a status. The
 * worker side registers handlers per method, runs one registered instance
 * per thread, heartbeats, and rejoins the broker by itself after a broker
 * restart. The frames are in broker/README.md.
 *
 * A client is not thread-safe: use one per thread. A worker handler runs
 * on its instance's thread with that thread's state (e.g. its own
 * database connection), so handlers need no locks for per-thread state.
 */
#ifndef PAYGATE_RPC_H
#define PAYGATE_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>
#include <zmq.h>

#include "broker.pb-c.h"
#include "status.pb-c.h"

enum {
    rpc_deadline_default_ms = 5000,
    rpc_reason_bytes_max = 64,
    rpc_message_bytes_max = 1024,
    rpc_details_max = 8,
    rpc_detail_bytes_max = 128,
};

/* The outcome of a call, owned by the caller (no pointers inside). */
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

/* Per-call options; a zeroed struct is valid (all defaults). */
typedef struct {
    uint32_t deadline_ms;   /* 0: rpc_deadline_default_ms */
    const char *request_id; /* tracing id; NULL: generated */
    const char *user_id;    /* caller identity for the service, or NULL */
    const char *principal;  /* e.g. "gateway", or NULL */
} rpc_call_opts_t;

/* Sets 'status' to 'code' with a printf-style message and no reason. */
void rpc_status_set(rpc_status_t *status, Paygate__V1__Code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies a wire Status (may be NULL, meaning OK) into 'status'. */
void rpc_status_from_wire(rpc_status_t *status, const Paygate__V1__Status *wire);

/* The value of detail 'key' in 'status', or NULL. */
const char *rpc_status_detail(const rpc_status_t *status, const char *key);

/* ---- client ---------------------------------------------------------- */

typedef struct rpc_client rpc_client_t;

/* Connects a new client to the broker at 'endpoint' (e.g.
 * "tcp://127.0.0.1:55555"). The connection is made in the background; a
 * call made before it is up waits for it within its deadline. 'zmq_ctx'
 * may be NULL (the client then owns a context of its own). NULL on error. */
rpc_client_t *rpc_client_new(void *zmq_ctx, const char *endpoint);

/* Closes the client and sets '*self' to NULL. */
void rpc_client_destroy(rpc_client_t **self);

/* Calls 'service'.'method' with 'request' encoded, waits for the reply
 * until the deadline, and on OK decodes the reply body as 'reply_desc'
 * into '*reply' (free with protobuf_c_message_free_unpacked(*reply, NULL)).
 * Returns the status code, also stored in 'status' (may be NULL). A broker
 * that does not answer in time gives DEADLINE_EXCEEDED or UNAVAILABLE. */
Paygate__V1__Code rpc_client_call(rpc_client_t *self, const char *service, const char *method,
                                  const ProtobufCMessage *request,
                                  const ProtobufCMessageDescriptor *reply_desc,
                                  ProtobufCMessage **reply, const rpc_call_opts_t *opts,
                                  rpc_status_t *status);

/* Like rpc_client_call with raw bytes: 'body' of 'body_len' bytes goes out
 * as is; on OK, the reply body is moved into 'reply_body' (an initialised
 * zmq_msg_t the caller closes). */
Paygate__V1__Code rpc_client_call_raw(rpc_client_t *self, const char *service, const char *method,
                                      const void *body, size_t body_len,
                                      const rpc_call_opts_t *opts, zmq_msg_t *reply_body,
                                      rpc_status_t *status);

/* Publishes one event to 'topic' of the broker's event bus and waits until
 * the broker has stored it durably (fsync), or 'deadline_ms' passes.
 * 'event_id' makes a retry safe: the broker stores an id once within its
 * dedup window and answers a duplicate with the first offset and
 * '*duplicate' = true. Events with the same 'key' reach each consumer
 * group in order. Returns the status code (OK: stored). */
Paygate__V1__Code rpc_client_publish(rpc_client_t *self, const char *topic, const char *event_id,
                                     const char *key, const void *payload, size_t payload_len,
                                     uint32_t deadline_ms, uint64_t *offset, bool *duplicate,
                                     rpc_status_t *status);

/* Asynchronous use (several requests in flight on one client): send with
 * rpc_client_send, which gives the request's correlation id, and collect
 * replies in any order with rpc_client_recv. Returns 0, or -1 when the
 * request could not be queued (status set). */
int rpc_client_send(rpc_client_t *self, const char *service, const char *method, const void *body,
                    size_t body_len, const rpc_call_opts_t *opts, uint64_t *correlation_id,
                    rpc_status_t *status);

/* Waits up to 'timeout_ms' for one reply. Returns 1 with '*correlation_id',
 * 'status' and (on OK, when 'reply_body' is not NULL) the body moved into
 * 'reply_body'; 0 on timeout; -1 on a socket error. Malformed replies are
 * skipped. */
int rpc_client_recv(rpc_client_t *self, int timeout_ms, uint64_t *correlation_id,
                    zmq_msg_t *reply_body, rpc_status_t *status);

/* ---- worker ---------------------------------------------------------- */

typedef struct rpc_ctx rpc_ctx_t;

/* A handler gets the decoded 'request' and an initialised 'reply' of the
 * method's types and the calling thread's 'thread_state'. It returns OK
 * after filling 'reply', or a failure code after rpc_ctx_fail(). Memory
 * for reply fields comes from rpc_ctx_alloc/rpc_ctx_strdup and is freed
 * after the reply is sent. */
typedef Paygate__V1__Code (*rpc_handler_fn)(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                            ProtobufCMessage *reply, void *thread_state);

typedef struct {
    const char *name;
    const ProtobufCMessageDescriptor *request_desc;
    const ProtobufCMessageDescriptor *reply_desc;
    rpc_handler_fn handler;
} rpc_method_t;

typedef struct {
    const char *endpoint; /* broker endpoint */
    const char *service;  /* service name to register */
    const char *instance; /* instance id prefix; NULL: "<service>-<host>-<pid>" */
    const rpc_method_t *methods;
    size_t method_count;
    unsigned threads;               /* worker instances (threads); 0: 1 */
    uint32_t heartbeat_interval_ms; /* 0: 1000 */
    uint32_t heartbeat_liveness;    /* silent intervals before reconnect; 0: 3 */
    uint32_t max_in_flight;         /* requests per instance at once; 0: 4 */
    uint32_t drain_timeout_ms;      /* on stop, wait this long for in-flight; 0: 5000 */
    size_t message_bytes_max;       /* 0: 1 MiB */
    /* Called on each worker thread before it registers; returns that
     * thread's state, or NULL to fail start-up. May be NULL. */
    void *(*thread_init)(unsigned index, void *app);
    void (*thread_fini)(void *thread_state);
    void *app;
} rpc_server_config_t;

typedef struct rpc_server rpc_server_t;

/* Checks 'config' and builds a server (nothing runs yet). NULL, after
 * logging why, when the configuration is invalid. */
rpc_server_t *rpc_server_new(const rpc_server_config_t *config);

/* Starts the worker threads, serves until rpc_server_stop() (or a fatal
 * refusal by the broker), drains, and joins them. Returns 0 on a clean
 * stop, -1 when start-up or registration failed. */
int rpc_server_run(rpc_server_t *self);

/* Asks a running server to drain and stop. Async-signal-safe. */
void rpc_server_stop(rpc_server_t *self);

/* Frees the server and sets '*self' to NULL. */
void rpc_server_destroy(rpc_server_t **self);

/* Installs SIGINT/SIGTERM handlers that call rpc_server_stop('server')
 * and ignores SIGPIPE. */
void rpc_server_stop_on_signals(rpc_server_t *server);

/* ---- inside a handler ------------------------------------------------ */

/* Sets the failure returned to the caller: 'reason' is a stable
 * snake_case code or NULL; 'fmt' the human message. Returns 'code'. */
Paygate__V1__Code rpc_ctx_fail(rpc_ctx_t *ctx, Paygate__V1__Code code, const char *reason,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Adds a detail ("payment_id" -> "pay_...") to the failure status. */
void rpc_ctx_detail(rpc_ctx_t *ctx, const char *key, const char *value);

/* The call's metadata: tracing id ("" when none), caller user id ("" when
 * none), principal ("" when none). */
const char *rpc_ctx_request_id(const rpc_ctx_t *ctx);
const char *rpc_ctx_user_id(const rpc_ctx_t *ctx);
const char *rpc_ctx_principal(const rpc_ctx_t *ctx);

/* Milliseconds left until the call's deadline (<= 0: passed). */
int64_t rpc_ctx_deadline_left_ms(const rpc_ctx_t *ctx);

/* This instance's id, as registered with the broker. */
const char *rpc_ctx_instance_id(const rpc_ctx_t *ctx);

/* Call-scoped memory, freed after the reply is sent. NULL on OOM. */
void *rpc_ctx_alloc(rpc_ctx_t *ctx, size_t bytes);
char *rpc_ctx_strdup(rpc_ctx_t *ctx, const char *text);

#endif
