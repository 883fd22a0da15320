/*
 * rpc worker: serving a service's methods to the broker.
 *
 * One thread per instance, each with its own DEALER socket, registration
 * (READY) and heartbeats, so a process with N threads is N instances to
 * the broker and uses N cores. The life of an instance:
 *
 *   connect -> READY -> serve REQUESTs, heartbeat while idle
 *      ^                    |
 *      |  broker silent for liveness x interval: close, back off
 *      +--------------------+  (broker DISCONNECT "unknown worker": READY again)
 *
 *   stop -> DISCONNECT -> serve what is still in flight until the broker
 *           answers DISCONNECT or drain_timeout_ms passes -> exit
 *
 * This module must never let a handler's failure take the process down:
 * bad request bodies, unknown methods and passed deadlines are answered
 * with a status without calling the handler.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arena/arena.h"
#include "clock/clock.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "rpc.h"
#include "wire/wire.h"

enum {
    worker_poll_max_ms = 100,
    worker_backoff_max_ms = 8000,
    worker_arena_block_bytes = 64 * 1024,
    worker_linger_ms = 500,
};

typedef struct worker_thread worker_thread_t;

struct rpc_server {
    rpc_server_config_t config;
    char endpoint[256];
    char service[wire_service_bytes_max + 1];
    char instance_prefix[wire_instance_bytes_max + 1];
    void *zmq_ctx;
    atomic_int stopping;
    atomic_int failed;
    worker_thread_t *workers;
    metrics_family_t *handled;  /* paygate_rpc_handled_total, NULL: no metrics */
    metrics_family_t *duration; /* paygate_rpc_handle_duration_seconds */
};

/* Handling time buckets, in seconds: 0.5 ms to 5 s. */
static const double handle_bounds_s[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,   0.1,   0.25,   0.5,   1,    5};

struct worker_thread {
    rpc_server_t *server;
    unsigned index;
    pthread_t thread;
    bool started;
    char instance_id[wire_instance_bytes_max + 1];
    void *socket;
    void *state;
    arena_t *arena;
    int64_t last_recv_at;
    int64_t last_send_at;
    int64_t backoff_ms;
    uint64_t served;
    const char *serving_method; /* the request being served, for worker_count */
    int64_t serving_started_us;
};

struct rpc_ctx {
    worker_thread_t *worker;
    const Paygate__V1__Header *header;
    int64_t deadline_at;
    Paygate__V1__Status status;
    Paygate__V1__Status__DetailsEntry *details[rpc_details_max];
};

/* ---- configuration --------------------------------------------------- */

rpc_server_t *rpc_server_new(const rpc_server_config_t *config)
{
    if (config->endpoint == NULL || config->service == NULL || config->methods == NULL ||
        config->method_count == 0) {
        log_error("rpc server: endpoint, service and at least one method are required");
        return NULL;
    }
    if (!wire_service_name_valid(config->service) || strncmp(config->service, "broker.", 7) == 0) {
        log_error("rpc server: invalid service name '%s' (1..64 of [a-z0-9_.-], not broker.*)",
                  config->service);
        return NULL;
    }
    for (size_t i = 0; i < config->method_count; i++) {
        const rpc_method_t *m = &config->methods[i];
        if (!wire_method_name_valid(m->name) || m->request_desc == NULL || m->reply_desc == NULL ||
            m->handler == NULL) {
            log_error("rpc server: method %zu ('%s') is incomplete or badly named", i,
                      m->name ? m->name : "(null)");
            return NULL;
        }
    }
    if (config->identity == NULL && curve_process_identity() == NULL)
        return NULL; /* no broker credentials: curve logged which */
    rpc_server_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    if (self->config.identity == NULL)
        self->config.identity = curve_process_identity();
    rpc_server_config_t *c = &self->config;
    snprintf(self->endpoint, sizeof self->endpoint, "%s", config->endpoint);
    snprintf(self->service, sizeof self->service, "%s", config->service);
    c->endpoint = self->endpoint;
    c->service = self->service;
    if (c->threads == 0)
        c->threads = 1;
    if (c->heartbeat_interval_ms == 0)
        c->heartbeat_interval_ms = 1000;
    if (c->heartbeat_liveness == 0)
        c->heartbeat_liveness = 3;
    if (c->max_in_flight == 0)
        c->max_in_flight = 4;
    if (c->drain_timeout_ms == 0)
        c->drain_timeout_ms = 5000;
    if (c->message_bytes_max == 0)
        c->message_bytes_max = 1024 * 1024;
    if (c->metrics != NULL) {
        const char *const handled_labels[] = {"service", "method", "code", NULL};
        const char *const duration_labels[] = {"service", "method", NULL};
        self->handled = metrics_counter_family(
            c->metrics, "paygate_rpc_handled_total",
            "Requests answered by this process's worker instances, by service, method (unknown: "
            "not one of the service's) and status code.",
            handled_labels);
        self->duration = metrics_histogram_family(
            c->metrics, "paygate_rpc_handle_duration_seconds",
            "Time from a request's arrival at a worker instance to its reply, by service and "
            "method.",
            duration_labels, handle_bounds_s, sizeof handle_bounds_s / sizeof handle_bounds_s[0]);
    }
    if (config->instance != NULL && *config->instance != '\0') {
        snprintf(self->instance_prefix, sizeof self->instance_prefix, "%s", config->instance);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        snprintf(self->instance_prefix, sizeof self->instance_prefix, "%.64s-%.40s-%d",
                 self->service, host, (int)getpid());
    }
    if (!wire_token_valid(self->instance_prefix, wire_instance_bytes_max - 8)) {
        log_error("rpc server: invalid instance id prefix '%s'", self->instance_prefix);
        free(self);
        return NULL;
    }
    log_set_instance(self->instance_prefix); /* each thread's lines: its own id */
    return self;
}

void rpc_server_destroy(rpc_server_t **self)
{
    if (*self == NULL)
        return;
    free((*self)->workers);
    free(*self);
    *self = NULL;
}

void rpc_server_stop(rpc_server_t *self)
{
    atomic_store(&self->stopping, 1);
}

static rpc_server_t *signal_server;

static void rpc_on_signal(int signo)
{
    (void)signo;
    if (signal_server != NULL)
        rpc_server_stop(signal_server);
}

void rpc_server_stop_on_signals(rpc_server_t *server)
{
    signal_server = server;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = rpc_on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* ---- the handler's view ---------------------------------------------- */

Paygate__V1__Code rpc_ctx_fail(rpc_ctx_t *ctx, Paygate__V1__Code code, const char *reason,
                               const char *fmt, ...)
{
    char text[rpc_message_bytes_max];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    ctx->status.code = code;
    ctx->status.message = rpc_ctx_strdup(ctx, text);
    ctx->status.reason = rpc_ctx_strdup(ctx, reason ? reason : "");
    if (ctx->status.message == NULL || ctx->status.reason == NULL) {
        ctx->status.message = (char *)"out of memory";
        ctx->status.reason = (char *)"";
    }
    return code;
}

void rpc_ctx_detail(rpc_ctx_t *ctx, const char *key, const char *value)
{
    if (ctx->status.n_details >= rpc_details_max)
        return;
    Paygate__V1__Status__DetailsEntry *entry = rpc_ctx_alloc(ctx, sizeof *entry);
    if (entry == NULL)
        return;
    paygate__v1__status__details_entry__init(entry);
    entry->key = rpc_ctx_strdup(ctx, key);
    entry->value = rpc_ctx_strdup(ctx, value);
    if (entry->key == NULL || entry->value == NULL)
        return;
    ctx->details[ctx->status.n_details++] = entry;
    ctx->status.details = ctx->details;
}

static const char *meta_text(const char *text)
{
    return text != NULL ? text : "";
}

const char *rpc_ctx_request_id(const rpc_ctx_t *ctx)
{
    return ctx->header->meta ? meta_text(ctx->header->meta->request_id) : "";
}

const char *rpc_ctx_user_id(const rpc_ctx_t *ctx)
{
    const Paygate__V1__CallMeta *meta = ctx->header->meta;
    return meta && meta->caller ? meta_text(meta->caller->user_id) : "";
}

const char *rpc_ctx_principal(const rpc_ctx_t *ctx)
{
    const Paygate__V1__CallMeta *meta = ctx->header->meta;
    return meta && meta->caller ? meta_text(meta->caller->principal) : "";
}

int64_t rpc_ctx_deadline_left_ms(const rpc_ctx_t *ctx)
{
    return ctx->deadline_at - clock_now_ms();
}

const char *rpc_ctx_instance_id(const rpc_ctx_t *ctx)
{
    return ctx->worker->instance_id;
}

void *rpc_ctx_alloc(rpc_ctx_t *ctx, size_t bytes)
{
    return arena_alloc(ctx->worker->arena, bytes);
}

char *rpc_ctx_strdup(rpc_ctx_t *ctx, const char *text)
{
    return arena_strdup(ctx->worker->arena, text);
}

/* ---- one instance ---------------------------------------------------- */

/* Sends a command without body; updates the heartbeat clock. */
static int worker_send_command(worker_thread_t *self, Paygate__V1__Command command)
{
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = command;
    Paygate__V1__Ready ready = PAYGATE__V1__READY__INIT;
    if (command == PAYGATE__V1__COMMAND__READY) {
        const rpc_server_config_t *c = &self->server->config;
        ready.service = (char *)c->service;
        ready.instance_id = self->instance_id;
        ready.heartbeat_interval_ms = c->heartbeat_interval_ms;
        ready.max_in_flight = c->max_in_flight;
        header.ready = &ready;
    }
    int rc = wire_send(self->socket, NULL, 0, &header, NULL, ZMQ_DONTWAIT);
    if (rc == 0)
        self->last_send_at = clock_now_ms();
    return rc;
}

/* Opens a fresh socket to the broker and registers. */
static int worker_connect(worker_thread_t *self)
{
    const rpc_server_config_t *c = &self->server->config;
    self->socket = zmq_socket(self->server->zmq_ctx, ZMQ_DEALER);
    if (self->socket == NULL)
        return -1;
    int linger = worker_linger_ms, ivl = 100, ivl_max = 1000;
    int64_t maxmsg = (int64_t)c->message_bytes_max + wire_header_bytes_max;
    zmq_setsockopt(self->socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(self->socket, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(self->socket, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    zmq_setsockopt(self->socket, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (curve_client_apply(c->identity, self->socket) != 0 ||
        zmq_connect(self->socket, c->endpoint) != 0) {
        log_error("rpc worker %s: cannot connect to %s: %s", self->instance_id, c->endpoint,
                  zmq_strerror(errno));
        return -1;
    }
    int64_t now = clock_now_ms();
    self->last_recv_at = now;
    worker_send_command(self, PAYGATE__V1__COMMAND__READY);
    return 0;
}

static void worker_disconnect_socket(worker_thread_t *self)
{
    if (self->socket != NULL) {
        int zero = 0;
        zmq_setsockopt(self->socket, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(self->socket);
        self->socket = NULL;
    }
}

/* Counts the request being answered with 'code' (paygate_rpc_* when the
 * server has metrics). Before the reply leaves, so that whoever saw the
 * reply also sees the count. */
static void worker_count(worker_thread_t *self, Paygate__V1__Code code)
{
    rpc_server_t *server = self->server;
    if (server->handled == NULL)
        return;
    const char *const handled_values[] = {server->service, self->serving_method,
                                          wire_code_name(code)};
    metrics_counter_add(metrics_series(server->handled, handled_values), 1);
    const char *const duration_values[] = {server->service, self->serving_method};
    metrics_histogram_observe(metrics_series(server->duration, duration_values),
                              (double)(clock_now_us() - self->serving_started_us) / 1e6);
}

/* Sends the REPLY for 'header' with 'status' (NULL: OK) and 'body',
 * uncounted (a batch counts its calls). */
static void worker_send_reply(worker_thread_t *self, const Paygate__V1__Header *request,
                              Paygate__V1__Status *status, zmq_msg_t *body)
{
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REPLY;
    header.correlation_id = request->correlation_id;
    header.status = status;
    if (wire_send(self->socket, NULL, 0, &header, body, 0) == 0)
        self->last_send_at = clock_now_ms();
    else
        log_warn("rpc worker %s: reply not sent: %s", self->instance_id, zmq_strerror(errno));
}

/* Counts and sends the REPLY for 'header' with 'status' (NULL: OK) and
 * 'body'. */
static void worker_reply(worker_thread_t *self, const Paygate__V1__Header *request,
                         Paygate__V1__Status *status, zmq_msg_t *body)
{
    worker_count(self, status != NULL ? status->code : PAYGATE__V1__CODE__OK);
    worker_send_reply(self, request, status, body);
}

/* Answers 'request' with a failure status without running a handler. */
static void worker_reply_failure(worker_thread_t *self, const Paygate__V1__Header *request,
                                 Paygate__V1__Code code, const char *message)
{
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = code;
    status.message = (char *)message;
    worker_reply(self, request, &status, NULL);
}

/* ---- batches (proto/batch.proto) -------------------------------------- */

/* One call of a batch while it runs: its own header (the batch's, with
 * the item's user and tracing id), context, request and reply, all in
 * the thread's arena. */
typedef struct {
    Paygate__V1__Caller caller;
    Paygate__V1__CallMeta meta;
    Paygate__V1__Header header;
    rpc_ctx_t ctx;
    ProtobufCMessage *request; /* NULL: the body did not decode */
    ProtobufCMessage *reply;
    Paygate__V1__Code code;
    bool answered;
} batch_call_t;

/* Sets up item 'item' of 'method' as a call, as a REQUEST with 'header'
 * would be, acting for the item's user and tracing id. A body that does
 * not decode answers INVALID_ARGUMENT at once. False when memory runs
 * out. */
static bool batch_call_init(worker_thread_t *self, const rpc_method_t *method,
                            const Paygate__V1__Header *header, int64_t deadline_at,
                            const Paygate__V1__BatchItem *item, batch_call_t *call)
{
    paygate__v1__caller__init(&call->caller);
    call->caller.user_id = item->user_id;
    call->caller.principal =
        (char *)(header->meta && header->meta->caller ? meta_text(header->meta->caller->principal)
                                                      : "");
    paygate__v1__call_meta__init(&call->meta);
    call->meta.request_id = item->request_id[0] != '\0' || header->meta == NULL
                                ? item->request_id
                                : (char *)meta_text(header->meta->request_id);
    call->meta.deadline_ms = header->meta ? header->meta->deadline_ms : 0;
    call->meta.caller = &call->caller;
    call->header = *header;
    call->header.meta = &call->meta;
    call->header.method = (char *)method->name;
    call->ctx = (rpc_ctx_t){.worker = self, .header = &call->header, .deadline_at = deadline_at};
    paygate__v1__status__init(&call->ctx.status);
    call->answered = false;
    ProtobufCAllocator allocator = arena_protobuf_allocator(self->arena);
    call->request = protobuf_c_message_unpack(method->request_desc, &allocator, item->body.len,
                                              item->body.data);
    call->reply = arena_alloc(self->arena, method->reply_desc->sizeof_message);
    if (call->reply == NULL)
        return false;
    protobuf_c_message_init(method->reply_desc, call->reply);
    if (call->request == NULL) {
        call->code = rpc_ctx_fail(&call->ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, NULL,
                                  "request body is not a valid %s", method->request_desc->name);
        call->answered = true;
    }
    return true;
}

/* Runs the method's handler for 'call' unless it is answered already. */
static void batch_call_handle(worker_thread_t *self, const rpc_method_t *method, batch_call_t *call)
{
    if (call->answered)
        return;
    log_set_request_id(call->meta.request_id);
    call->code = method->handler(&call->ctx, call->request, call->reply, self->state);
    call->answered = true;
}

/* Stores the outcome of answered 'call' in 'result' (in the thread's
 * arena); both NULL status and body when memory ran out. */
static void batch_call_result(worker_thread_t *self, batch_call_t *call,
                              Paygate__V1__BatchResult *result)
{
    paygate__v1__batch_result__init(result);
    Paygate__V1__Code code = call->code;
    if (code == PAYGATE__V1__CODE__OK) {
        size_t size = protobuf_c_message_get_packed_size(call->reply);
        result->body.data = arena_alloc(self->arena, size > 0 ? size : 1);
        if (result->body.data != NULL) {
            result->body.len = protobuf_c_message_pack(call->reply, result->body.data);
            return;
        }
        code = rpc_ctx_fail(&call->ctx, PAYGATE__V1__CODE__INTERNAL, NULL, "out of memory");
    }
    const rpc_ctx_t *ctx = &call->ctx;
    Paygate__V1__Status *status = arena_alloc(self->arena, sizeof *status);
    if (status == NULL) /* nothing to say it with: the batch fails whole */
        return;
    *status = ctx->status;
    if (ctx->status.n_details > 0) {
        status->details = arena_alloc(self->arena, ctx->status.n_details * sizeof *status->details);
        if (status->details != NULL)
            memcpy(status->details, ctx->details, ctx->status.n_details * sizeof *status->details);
        else
            status->n_details = 0;
    }
    status->code = code;
    if (status->message == NULL)
        status->message = (char *)wire_code_name(code);
    result->status = status;
}

/* Runs one call of a batch from start to end into 'result'. */
static void batch_run_item(worker_thread_t *self, const rpc_method_t *method,
                           const Paygate__V1__Header *header, int64_t deadline_at,
                           const Paygate__V1__BatchItem *item, Paygate__V1__BatchResult *result)
{
    batch_call_t *call = arena_alloc(self->arena, sizeof *call);
    if (call == NULL || !batch_call_init(self, method, header, deadline_at, item, call)) {
        paygate__v1__batch_result__init(result); /* out of memory: the batch fails whole */
        return;
    }
    batch_call_handle(self, method, call);
    batch_call_result(self, call, result);
}

/* The batch handler the server has for 'method', or NULL. */
static rpc_batch_handler_fn batch_handler_of(const rpc_server_config_t *c,
                                             const rpc_method_t *method)
{
    for (size_t i = 0; i < c->batch_handler_count; i++)
        if (strcmp(c->batch_handlers[i].method, method->name) == 0)
            return c->batch_handlers[i].run;
    return NULL;
}

/* RPC_BATCH_HANDLER: the method's batch handler answers what it can of
 * 'batch' at once, its handler the rest one by one. False when memory
 * runs out. */
static bool batch_run_handler(worker_thread_t *self, const rpc_method_t *method,
                              rpc_batch_handler_fn run, const Paygate__V1__Header *header,
                              int64_t deadline_at, const Paygate__V1__BatchRequest *batch,
                              Paygate__V1__BatchResult *results)
{
    size_t n = batch->n_items, ready = 0;
    batch_call_t *calls = arena_alloc(self->arena, n * sizeof *calls);
    rpc_ctx_t **ctxs = arena_alloc(self->arena, n * sizeof *ctxs);
    const ProtobufCMessage **requests = arena_alloc(self->arena, n * sizeof *requests);
    ProtobufCMessage **replies = arena_alloc(self->arena, n * sizeof *replies);
    Paygate__V1__Code *codes = arena_alloc(self->arena, n * sizeof *codes);
    bool *answered = arena_alloc(self->arena, n * sizeof *answered);
    batch_call_t **ready_calls = arena_alloc(self->arena, n * sizeof *ready_calls);
    if (calls == NULL || ctxs == NULL || requests == NULL || replies == NULL || codes == NULL ||
        answered == NULL || ready_calls == NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!batch_call_init(self, method, header, deadline_at, batch->items[i], &calls[i]))
            return false;
        if (calls[i].answered)
            continue;
        ready_calls[ready] = &calls[i];
        ctxs[ready] = &calls[i].ctx;
        requests[ready] = calls[i].request;
        replies[ready] = calls[i].reply;
        answered[ready] = false;
        ready++;
    }
    if (ready > 0)
        run(ctxs, requests, replies, codes, answered, ready, self->state);
    for (size_t i = 0; i < ready; i++) {
        ready_calls[i]->answered = answered[i];
        ready_calls[i]->code = codes[i];
    }
    log_set_request_id(NULL);
    for (size_t i = 0; i < n; i++) {
        batch_call_handle(self, method, &calls[i]);
        batch_call_result(self, &calls[i], &results[i]);
    }
    return true;
}

/* Runs every item of 'batch' into 'results'; with 'transaction', inside
 * one transaction of the thread's state. Returns false when that
 * transaction did not commit (rolled back: the results are void). */
static bool batch_run(worker_thread_t *self, const rpc_method_t *method,
                      const Paygate__V1__Header *header, int64_t deadline_at,
                      const Paygate__V1__BatchRequest *batch, Paygate__V1__BatchResult *results,
                      bool transaction)
{
    const rpc_batch_ops_t *ops = self->server->config.batch_ops;
    if (transaction && !ops->begin(self->state))
        return false;
    for (size_t i = 0; i < batch->n_items; i++) {
        batch_run_item(self, method, header, deadline_at, batch->items[i], &results[i]);
        if (transaction && ops->failed(self->state)) {
            ops->rollback(self->state);
            return false;
        }
    }
    log_set_request_id(header->meta != NULL ? header->meta->request_id : NULL);
    if (!transaction || ops->commit(self->state))
        return true;
    ops->rollback(self->state); /* a commit that failed may leave it open */
    return false;
}

/* Serves a REQUEST for "batch.<method>": every call in it, then one REPLY
 * with their outcomes; each call is counted as one of 'method'. */
static Paygate__V1__Code worker_serve_batch(worker_thread_t *self, const rpc_method_t *method,
                                            wire_message_t *msg, int64_t deadline_at)
{
    const rpc_server_config_t *c = &self->server->config;
    const Paygate__V1__Header *header = msg->header;
    char text[256];
    if (method == NULL || method->batch == RPC_BATCH_NONE) {
        snprintf(text, sizeof text, "service %s has no method %s", c->service, header->method);
        worker_reply_failure(self, header, PAYGATE__V1__CODE__UNIMPLEMENTED, text);
        return PAYGATE__V1__CODE__UNIMPLEMENTED;
    }
    ProtobufCAllocator allocator = arena_protobuf_allocator(self->arena);
    const uint8_t *data = msg->has_body ? zmq_msg_data(&msg->body) : (const uint8_t *)"";
    size_t size = msg->has_body ? zmq_msg_size(&msg->body) : 0;
    Paygate__V1__BatchRequest *batch = paygate__v1__batch_request__unpack(&allocator, size, data);
    if (batch == NULL || batch->n_items == 0 || batch->n_items > rpc_batch_items_max) {
        snprintf(text, sizeof text, "request body is not a paygate.v1.BatchRequest of 1..%d calls",
                 rpc_batch_items_max);
        worker_reply_failure(self, header, PAYGATE__V1__CODE__INVALID_ARGUMENT, text);
        return PAYGATE__V1__CODE__INVALID_ARGUMENT;
    }
    /* The broker lets a caller user id through only from a key that may
     * act for users, and sees the batch's alone: a call's user id counts
     * only on a batch that carries one (rpc_client_call_batch does). */
    const char *batch_user =
        header->meta && header->meta->caller ? meta_text(header->meta->caller->user_id) : "";
    for (size_t i = 0; i < batch->n_items; i++) { /* as wire.c checks a single call's */
        if (!wire_token_valid(batch->items[i]->request_id, wire_request_id_bytes_max) &&
            batch->items[i]->request_id[0] != '\0') {
            worker_reply_failure(self, header, PAYGATE__V1__CODE__INVALID_ARGUMENT,
                                 "a batch call's request_id is not 1..64 printable characters");
            return PAYGATE__V1__CODE__INVALID_ARGUMENT;
        }
        if (batch->items[i]->user_id[0] != '\0' && batch_user[0] == '\0') {
            worker_reply_failure(self, header, PAYGATE__V1__CODE__PERMISSION_DENIED,
                                 "a batch's calls carry user ids but the batch carries none");
            return PAYGATE__V1__CODE__PERMISSION_DENIED;
        }
    }
    Paygate__V1__BatchResult *results = arena_alloc(self->arena, batch->n_items * sizeof *results);
    Paygate__V1__BatchResult **result_ptrs =
        arena_alloc(self->arena, batch->n_items * sizeof *result_ptrs);
    if (results == NULL || result_ptrs == NULL) {
        worker_reply_failure(self, header, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
        return PAYGATE__V1__CODE__RESOURCE_EXHAUSTED;
    }
    rpc_batch_handler_fn run =
        method->batch == RPC_BATCH_HANDLER ? batch_handler_of(c, method) : NULL;
    bool transaction = method->batch == RPC_BATCH_TRANSACTION && c->batch_ops != NULL;
    if (run != NULL) {
        if (!batch_run_handler(self, method, run, header, deadline_at, batch, results)) {
            worker_reply_failure(self, header, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED,
                                 "out of memory");
            return PAYGATE__V1__CODE__RESOURCE_EXHAUSTED;
        }
    } else if (!batch_run(self, method, header, deadline_at, batch, results, transaction)) {
        log_info("rpc worker %s: a batch of %zu %s calls did not commit; running them one by one",
                 self->instance_id, batch->n_items, method->name);
        batch_run(self, method, header, deadline_at, batch, results, false);
    }
    for (size_t i = 0; i < batch->n_items; i++) {
        if (results[i].status == NULL && results[i].body.data == NULL) {
            worker_reply_failure(self, header, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED,
                                 "out of memory");
            return PAYGATE__V1__CODE__RESOURCE_EXHAUSTED;
        }
    }
    for (size_t i = 0; i < batch->n_items; i++) {
        worker_count(self, results[i].status ? results[i].status->code : PAYGATE__V1__CODE__OK);
        result_ptrs[i] = &results[i];
    }
    Paygate__V1__BatchReply reply = PAYGATE__V1__BATCH_REPLY__INIT;
    reply.n_results = batch->n_items;
    reply.results = result_ptrs;
    zmq_msg_t body;
    zmq_msg_init_size(&body, paygate__v1__batch_reply__get_packed_size(&reply));
    paygate__v1__batch_reply__pack(&reply, zmq_msg_data(&body));
    worker_send_reply(self, header, NULL, &body);
    zmq_msg_close(&body);
    self->served += batch->n_items;
    return PAYGATE__V1__CODE__OK;
}

/* Runs the handler for one REQUEST and sends its REPLY. Returns the code
 * answered, and its reason (truncated) in 'reason'. */
static Paygate__V1__Code worker_serve_request(worker_thread_t *self, wire_message_t *msg,
                                              int64_t received_at,
                                              char reason[rpc_reason_bytes_max + 1])
{
    const rpc_server_config_t *c = &self->server->config;
    const Paygate__V1__Header *header = msg->header;
    /* "batch.<name>": several calls of method <name> */
    bool batch = strncmp(header->method, "batch.", 6) == 0;
    const char *name = batch ? header->method + 6 : header->method;
    const rpc_method_t *method = NULL;
    for (size_t i = 0; i < c->method_count; i++) {
        if (strcmp(c->methods[i].name, name) == 0) {
            method = &c->methods[i];
            break;
        }
    }
    /* for worker_count: the table's name, "unknown" for any other, so
     * that callers cannot grow the metrics' label values */
    self->serving_method =
        method != NULL && (!batch || method->batch != RPC_BATCH_NONE) ? method->name : "unknown";
    self->serving_started_us = clock_now_us();
    char text[256];
    if (method == NULL && !batch) {
        snprintf(text, sizeof text, "service %s has no method %s", c->service, header->method);
        worker_reply_failure(self, header, PAYGATE__V1__CODE__UNIMPLEMENTED, text);
        return PAYGATE__V1__CODE__UNIMPLEMENTED;
    }
    uint32_t deadline_ms = header->meta && header->meta->deadline_ms
                               ? header->meta->deadline_ms
                               : (uint32_t)rpc_deadline_default_ms;
    rpc_ctx_t ctx = {.worker = self, .header = header, .deadline_at = received_at + deadline_ms};
    paygate__v1__status__init(&ctx.status);
    if (clock_now_ms() >= ctx.deadline_at) {
        worker_reply_failure(self, header, PAYGATE__V1__CODE__DEADLINE_EXCEEDED,
                             "deadline passed before the worker started the request");
        return PAYGATE__V1__CODE__DEADLINE_EXCEEDED;
    }
    if (batch) {
        Paygate__V1__Code code = worker_serve_batch(self, method, msg, ctx.deadline_at);
        arena_reset(self->arena);
        return code;
    }
    ProtobufCAllocator allocator = arena_protobuf_allocator(self->arena);
    const uint8_t *data = msg->has_body ? zmq_msg_data(&msg->body) : (const uint8_t *)"";
    size_t size = msg->has_body ? zmq_msg_size(&msg->body) : 0;
    ProtobufCMessage *request =
        protobuf_c_message_unpack(method->request_desc, &allocator, size, data);
    ProtobufCMessage *reply = arena_alloc(self->arena, method->reply_desc->sizeof_message);
    if (request == NULL || reply == NULL) {
        snprintf(text, sizeof text, "request body is not a valid %s", method->request_desc->name);
        worker_reply_failure(self, header, PAYGATE__V1__CODE__INVALID_ARGUMENT, text);
        arena_reset(self->arena);
        return PAYGATE__V1__CODE__INVALID_ARGUMENT;
    }
    protobuf_c_message_init(method->reply_desc, reply);
    Paygate__V1__Code code = method->handler(&ctx, request, reply, self->state);
    if (code == PAYGATE__V1__CODE__OK) {
        zmq_msg_t body;
        zmq_msg_init_size(&body, protobuf_c_message_get_packed_size(reply));
        protobuf_c_message_pack(reply, zmq_msg_data(&body));
        worker_reply(self, header, NULL, &body);
        zmq_msg_close(&body);
    } else {
        ctx.status.code = code;
        if (ctx.status.message == NULL)
            ctx.status.message = (char *)wire_code_name(code);
        worker_reply(self, header, &ctx.status, NULL);
        snprintf(reason, rpc_reason_bytes_max + 1, "%s",
                 ctx.status.reason ? ctx.status.reason : "");
    }
    self->served++;
    arena_reset(self->arena);
    return code;
}

/* Serves one REQUEST with its request id as the thread's log context, so
 * that every line the handler writes (and every call it makes through
 * lib/rpc) carries it; at debug level, one line per call with its
 * outcome and duration (never its body). */
static void worker_serve(worker_thread_t *self, wire_message_t *msg, int64_t received_at)
{
    const Paygate__V1__Header *header = msg->header;
    log_set_request_id(header->meta != NULL ? header->meta->request_id : NULL);
    bool timed = log_enabled(LOG_LEVEL_DEBUG);
    int64_t started_us = timed ? clock_now_us() : 0;
    char reason[rpc_reason_bytes_max + 1] = "";
    Paygate__V1__Code code = worker_serve_request(self, msg, received_at, reason);
    if (timed) {
        double duration_ms = (double)(clock_now_us() - started_us) / 1000.0;
        log_write_fields(LOG_LEVEL_DEBUG,
                         LOG_FIELDS(LOG_STR("service", self->server->config.service),
                                    LOG_STR("method", meta_text(header->method)),
                                    LOG_STR("status", wire_code_name(code)),
                                    LOG_STR("reason", reason),
                                    LOG_DOUBLE("duration_ms", duration_ms)),
                         "rpc served");
    }
    log_set_request_id(NULL);
}

/* Handles one message from the broker. Returns false when the broker
 * refused this instance for good (stop the process). '*released' is set
 * when the broker confirms a DISCONNECT while draining. */
static bool worker_handle(worker_thread_t *self, wire_message_t *msg, bool draining, bool *released)
{
    const Paygate__V1__Header *header = msg->header;
    switch (header->command) {
    case PAYGATE__V1__COMMAND__REQUEST:
        worker_serve(self, msg, clock_now_ms());
        return true;
    case PAYGATE__V1__COMMAND__HEARTBEAT:
        return true;
    case PAYGATE__V1__COMMAND__DISCONNECT: {
        const Paygate__V1__Status *status = header->status;
        Paygate__V1__Code code = status ? status->code : PAYGATE__V1__CODE__OK;
        const char *why = status && status->message ? status->message : "";
        if (draining) {
            *released = true;
            return true;
        }
        if (code == PAYGATE__V1__CODE__PERMISSION_DENIED ||
            code == PAYGATE__V1__CODE__INVALID_ARGUMENT) {
            log_error("rpc worker %s: broker refused registration: %s: %s", self->instance_id,
                      wire_code_name(code), why);
            return false;
        }
        log_info("rpc worker %s: broker asked to register again (%s); sending READY",
                 self->instance_id, why);
        worker_send_command(self, PAYGATE__V1__COMMAND__READY);
        return true;
    }
    default:
        log_warn("rpc worker %s: unexpected command %d from broker", self->instance_id,
                 (int)header->command);
        return true;
    }
}

/* Waits up to 'timeout_ms' for one message and handles it. Returns false
 * on a fatal refusal. */
static bool worker_poll_once(worker_thread_t *self, long timeout_ms, bool draining, bool *released)
{
    zmq_pollitem_t item = {.socket = self->socket, .events = ZMQ_POLLIN};
    int ready = zmq_poll(&item, 1, timeout_ms);
    if (ready <= 0)
        return true;
    /* Handle everything already queued, then go back to the timers. */
    for (int i = 0; i < 64; i++) {
        wire_message_t msg;
        const char *detail = NULL;
        int rc = wire_recv(self->socket, false, self->server->config.message_bytes_max,
                           ZMQ_DONTWAIT, &msg, &detail);
        if (rc < 0) {
            wire_message_clear(&msg);
            break;
        }
        self->last_recv_at = clock_now_ms();
        self->backoff_ms = 0;
        bool ok = true;
        if (rc == WIRE_OK) {
            ok = worker_handle(self, &msg, draining, released);
        } else if (msg.header != NULL && msg.header->command == PAYGATE__V1__COMMAND__REQUEST) {
            worker_reply_failure(self, msg.header,
                                 rc == WIRE_ERR_TOO_BIG ? PAYGATE__V1__CODE__RESOURCE_EXHAUSTED
                                                        : PAYGATE__V1__CODE__INVALID_ARGUMENT,
                                 detail);
        } else {
            log_warn("rpc worker %s: malformed message from broker: %s", self->instance_id, detail);
        }
        wire_message_clear(&msg);
        if (!ok)
            return false;
    }
    return true;
}

/* Sleeps 'ms' in short steps, returning early when the server stops. */
static void worker_sleep(worker_thread_t *self, int64_t ms)
{
    int64_t until = clock_now_ms() + ms;
    while (!atomic_load(&self->server->stopping) && clock_now_ms() < until)
        usleep(20 * 1000);
}

/* The serving loop of one instance until stop or fatal refusal. */
static bool worker_serve_loop(worker_thread_t *self)
{
    const rpc_server_config_t *c = &self->server->config;
    int64_t silence_max_ms = (int64_t)c->heartbeat_interval_ms * c->heartbeat_liveness;
    bool released = false;
    while (!atomic_load(&self->server->stopping)) {
        int64_t now = clock_now_ms();
        if (now - self->last_recv_at > silence_max_ms) {
            self->backoff_ms =
                self->backoff_ms == 0 ? c->heartbeat_interval_ms / 4 + 1 : self->backoff_ms * 2;
            if (self->backoff_ms > worker_backoff_max_ms)
                self->backoff_ms = worker_backoff_max_ms;
            log_warn("rpc worker %s: broker silent for %lld ms; reconnecting in %lld ms",
                     self->instance_id, (long long)(now - self->last_recv_at),
                     (long long)self->backoff_ms);
            worker_disconnect_socket(self);
            worker_sleep(self, self->backoff_ms);
            if (atomic_load(&self->server->stopping) || worker_connect(self) != 0)
                return !atomic_load(&self->server->stopping) ? false : true;
            continue;
        }
        if (now - self->last_send_at >= c->heartbeat_interval_ms)
            worker_send_command(self, PAYGATE__V1__COMMAND__HEARTBEAT);
        int64_t next_beat = self->last_send_at + c->heartbeat_interval_ms - now;
        long timeout = (long)(next_beat < worker_poll_max_ms ? next_beat : worker_poll_max_ms);
        if (timeout < 0)
            timeout = 0;
        if (!worker_poll_once(self, timeout, false, &released))
            return false;
    }
    return true;
}

/* After stop: leave the broker's rotation and finish what it already
 * sent, until it confirms or the drain time runs out. */
static void worker_drain(worker_thread_t *self)
{
    const rpc_server_config_t *c = &self->server->config;
    if (self->socket == NULL)
        return;
    worker_send_command(self, PAYGATE__V1__COMMAND__DISCONNECT);
    int64_t until = clock_now_ms() + c->drain_timeout_ms;
    bool released = false;
    while (!released && clock_now_ms() < until)
        worker_poll_once(self, worker_poll_max_ms, true, &released);
    if (!released)
        log_warn("rpc worker %s: broker did not confirm DISCONNECT within %u ms", self->instance_id,
                 (unsigned)c->drain_timeout_ms);
}

static void *worker_thread_main(void *arg)
{
    worker_thread_t *self = arg;
    rpc_server_t *server = self->server;
    const rpc_server_config_t *c = &server->config;
    log_set_thread_instance(self->instance_id);
    self->arena = arena_new(worker_arena_block_bytes);
    if (self->arena == NULL)
        goto failed;
    if (c->thread_init != NULL) {
        self->state = c->thread_init(self->index, c->app);
        if (self->state == NULL) {
            log_error("rpc worker %s: thread start-up failed", self->instance_id);
            goto failed;
        }
    }
    if (worker_connect(self) != 0)
        goto failed;
    log_info("rpc worker %s: serving %s at %s", self->instance_id, c->service, c->endpoint);
    if (!worker_serve_loop(self))
        goto failed;
    worker_drain(self);
    goto done;
failed:
    atomic_store(&server->failed, 1);
    atomic_store(&server->stopping, 1);
done:
    worker_disconnect_socket(self);
    if (self->state != NULL && c->thread_fini != NULL)
        c->thread_fini(self->state);
    arena_destroy(&self->arena);
    log_info("rpc worker %s: stopped after %llu requests", self->instance_id,
             (unsigned long long)self->served);
    return NULL;
}

int rpc_server_run(rpc_server_t *self)
{
    const rpc_server_config_t *c = &self->config;
    self->zmq_ctx = zmq_ctx_new();
    self->workers = calloc(c->threads, sizeof *self->workers);
    if (self->zmq_ctx == NULL || self->workers == NULL) {
        log_error("rpc server: out of memory");
        return -1;
    }
    for (unsigned i = 0; i < c->threads; i++) {
        worker_thread_t *w = &self->workers[i];
        w->server = self;
        w->index = i;
        snprintf(w->instance_id, sizeof w->instance_id, "%.116s-%u", self->instance_prefix, i);
        if (pthread_create(&w->thread, NULL, worker_thread_main, w) != 0) {
            log_error("rpc server: cannot start thread %u", i);
            atomic_store(&self->failed, 1);
            atomic_store(&self->stopping, 1);
            break;
        }
        w->started = true;
    }
    for (unsigned i = 0; i < c->threads; i++) {
        if (self->workers[i].started)
            pthread_join(self->workers[i].thread, NULL);
    }
    zmq_ctx_term(self->zmq_ctx);
    self->zmq_ctx = NULL;
    return atomic_load(&self->failed) ? -1 : 0;
}
