/*
 * paygate-echo-worker: a real worker process for tests and benchmarks.
 *
 * Serves the diagnostic echo service (proto/echo.proto) through the RPC
 * library: Echo answers the payload and its instance id; Sleep waits
 * sleep_ms first (to hold a request in flight). For tests of batches
 * (rpc_client_call_batch, "batch.<Method>"): Each (RPC_BATCH_EACH) and Txn
 * (RPC_BATCH_TRANSACTION) answer what the call saw; TxnLog reports, and
 * steers, the thread's fake transactions; Bulk has batch code
 * (RPC_BATCH_HANDLER), BulkPlain does not (see the methods). Configured by:
 *
 *   PAYGATE_BROKER_ENDPOINT   broker to register with
 *   ECHO_SERVICE              service name (default "echo")
 *   ECHO_THREADS              instances in this process (default 1)
 *   ECHO_HEARTBEAT_MS         heartbeat interval (default 1000)
 *   ECHO_MAX_IN_FLIGHT        requests per instance at once (default 4)
 *   ECHO_INSTANCE             instance id prefix (default derived)
 *   PAYGATE_METRICS_PORT      GET /metrics on this port (default 0: off)
 *   ECHO_BATCH_OPS            1: the server has batch_ops (the fake
 *                             transactions below), so Txn's batches run
 *                             in one; 0 (default): they run as Each's
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "echo.pb-c.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "metrics/metrics_server.h"
#include "rpc/rpc.h"

static Paygate__V1__Code echo_echo(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                   ProtobufCMessage *reply_msg, void *state)
{
    (void)state;
    const Paygate__V1__EchoRequest *request = (const Paygate__V1__EchoRequest *)request_msg;
    Paygate__V1__EchoReply *reply = (Paygate__V1__EchoReply *)reply_msg;
    reply->payload = request->payload; /* the request lives until the reply is sent */
    reply->instance_id = (char *)rpc_ctx_instance_id(ctx);
    return PAYGATE__V1__CODE__OK;
}

static Paygate__V1__Code echo_sleep(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                    ProtobufCMessage *reply_msg, void *state)
{
    const Paygate__V1__EchoRequest *request = (const Paygate__V1__EchoRequest *)request_msg;
    if (request->sleep_ms > 60000)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "sleep_too_long",
                            "sleep_ms %u is over 60000", request->sleep_ms);
    struct timespec pause = {.tv_sec = request->sleep_ms / 1000,
                             .tv_nsec = (long)(request->sleep_ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
    return echo_echo(ctx, request_msg, reply_msg, state);
}

static Paygate__V1__Code echo_fail(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                   ProtobufCMessage *reply_msg, void *state)
{
    (void)request_msg;
    (void)reply_msg;
    (void)state;
    rpc_ctx_detail(ctx, "instance_id", rpc_ctx_instance_id(ctx));
    return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "echo_failed",
                        "asked to fail (request %s)", rpc_ctx_request_id(ctx));
}

/* Caller: answers "<principal>|<user_id>" as the worker sees them in the
 * call metadata (tests of the broker's principal rule). */
static Paygate__V1__Code echo_caller(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                     ProtobufCMessage *reply_msg, void *state)
{
    (void)request_msg;
    (void)state;
    Paygate__V1__EchoReply *reply = (Paygate__V1__EchoReply *)reply_msg;
    size_t size = strlen(rpc_ctx_principal(ctx)) + strlen(rpc_ctx_user_id(ctx)) + 2;
    char *text = rpc_ctx_alloc(ctx, size);
    if (text == NULL)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, NULL, "out of memory");
    snprintf(text, size, "%s|%s", rpc_ctx_principal(ctx), rpc_ctx_user_id(ctx));
    reply->payload.data = (uint8_t *)text;
    reply->payload.len = strlen(text);
    reply->instance_id = (char *)rpc_ctx_instance_id(ctx);
    return PAYGATE__V1__CODE__OK;
}

/* ---- batches ----------------------------------------------------------
 *
 * Each thread has a fake transactional state standing in for a database
 * connection: the batch_ops (when ECHO_BATCH_OPS=1) open, spoil, commit
 * and roll back its "transaction", and count what they were asked to do,
 * so that a test can see how the worker ran a batch. */

typedef struct {
    bool in_txn;              /* begin() succeeded, no commit()/rollback() yet */
    bool failed;              /* a call inside the transaction "failed a statement" */
    bool commit_fails;        /* the next commit() answers false */
    bool begin_fails;         /* the next begin() answers false */
    unsigned begins;          /* begin() calls, failed ones included */
    unsigned commits;         /* commit() calls that committed */
    unsigned commit_refusals; /* commit() calls that answered false */
    unsigned rollbacks;       /* rollback() calls */
    unsigned runs;            /* Txn handler runs */
} echo_state_t;

static void *echo_thread_init(unsigned index, void *app)
{
    (void)index;
    (void)app;
    return calloc(1, sizeof(echo_state_t));
}

static void echo_thread_fini(void *state)
{
    free(state);
}

static bool txn_begin(void *state_p)
{
    echo_state_t *state = state_p;
    state->begins++;
    if (state->begin_fails) {
        state->begin_fails = false;
        return false;
    }
    if (state->in_txn) /* nested: a worker bug, which "open=1" in TxnLog shows */
        return false;
    state->in_txn = true;
    state->failed = false;
    return true;
}

static bool txn_failed(void *state_p)
{
    const echo_state_t *state = state_p;
    return state->in_txn && state->failed;
}

static bool txn_commit(void *state_p)
{
    echo_state_t *state = state_p;
    bool committed = state->in_txn && !state->failed && !state->commit_fails;
    state->in_txn = false; /* as COMMIT ends a transaction, committed or not */
    state->failed = false;
    state->commit_fails = false;
    if (committed)
        state->commits++;
    else
        state->commit_refusals++;
    return committed;
}

static void txn_rollback(void *state_p)
{
    echo_state_t *state = state_p;
    state->rollbacks++;
    state->in_txn = false;
    state->failed = false;
}

static const rpc_batch_ops_t echo_batch_ops = {
    .begin = txn_begin,
    .failed = txn_failed,
    .commit = txn_commit,
    .rollback = txn_rollback,
};

/* Sets 'reply''s payload to 'text' (copied into the call's memory). */
static Paygate__V1__Code reply_text(rpc_ctx_t *ctx, Paygate__V1__EchoReply *reply, const char *text)
{
    char *copy = rpc_ctx_strdup(ctx, text);
    if (copy == NULL)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, NULL, "out of memory");
    reply->payload.data = (uint8_t *)copy;
    reply->payload.len = strlen(copy);
    reply->instance_id = (char *)rpc_ctx_instance_id(ctx);
    return PAYGATE__V1__CODE__OK;
}

/* True when the request's payload is exactly 'word'. */
static bool payload_is(const Paygate__V1__EchoRequest *request, const char *word)
{
    return request->payload.len == strlen(word) &&
           memcmp(request->payload.data, word, request->payload.len) == 0;
}

/* Each (RPC_BATCH_EACH): answers "<user_id>|<request_id>|<payload>" as
 * the call saw them; payload "fail" fails it (FAILED_PRECONDITION,
 * reason echo_failed, the request id in the message). */
static Paygate__V1__Code echo_each(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                   ProtobufCMessage *reply_msg, void *state)
{
    (void)state;
    const Paygate__V1__EchoRequest *request = (const Paygate__V1__EchoRequest *)request_msg;
    if (payload_is(request, "fail"))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__FAILED_PRECONDITION, "echo_failed",
                            "asked to fail (request %s)", rpc_ctx_request_id(ctx));
    char text[512];
    snprintf(text, sizeof text, "%s|%s|%.*s", rpc_ctx_user_id(ctx), rpc_ctx_request_id(ctx),
             (int)(request->payload.len < 256 ? request->payload.len : 256),
             (const char *)request->payload.data);
    return reply_text(ctx, (Paygate__V1__EchoReply *)reply_msg, text);
}

/* Txn (RPC_BATCH_TRANSACTION): answers
 * "<payload>|<user_id>|<request_id>|txn=<0|1>|run=<n>": whether it ran
 * inside the thread's fake transaction, and the how-manieth Txn run of
 * the thread it was. Inside a transaction, payload "spoil" fails a
 * "statement" (the transaction can no longer commit; the call answers
 * INTERNAL) and payload "nocommit" makes the commit fail; outside one,
 * both are plain calls. */
static Paygate__V1__Code echo_txn(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                  ProtobufCMessage *reply_msg, void *state_p)
{
    echo_state_t *state = state_p;
    const Paygate__V1__EchoRequest *request = (const Paygate__V1__EchoRequest *)request_msg;
    state->runs++;
    if (state->in_txn && payload_is(request, "spoil")) {
        state->failed = true;
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "statement_failed",
                            "a statement failed (request %s)", rpc_ctx_request_id(ctx));
    }
    if (state->in_txn && payload_is(request, "nocommit"))
        state->commit_fails = true;
    char text[512];
    snprintf(text, sizeof text, "%.*s|%s|%s|txn=%d|run=%u",
             (int)(request->payload.len < 256 ? request->payload.len : 256),
             (const char *)request->payload.data, rpc_ctx_user_id(ctx), rpc_ctx_request_id(ctx),
             state->in_txn ? 1 : 0, state->runs);
    return reply_text(ctx, (Paygate__V1__EchoReply *)reply_msg, text);
}

/* TxnLog: answers the thread's counts, "begin=B commit=C refused=R
 * rollback=L runs=N open=<0|1>", then obeys the payload: "reset" zeroes
 * them, "failbegin" makes the next begin() fail. */
static Paygate__V1__Code echo_txn_log(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                      ProtobufCMessage *reply_msg, void *state_p)
{
    echo_state_t *state = state_p;
    const Paygate__V1__EchoRequest *request = (const Paygate__V1__EchoRequest *)request_msg;
    char text[256];
    snprintf(text, sizeof text, "begin=%u commit=%u refused=%u rollback=%u runs=%u open=%d",
             state->begins, state->commits, state->commit_refusals, state->rollbacks, state->runs,
             state->in_txn ? 1 : 0);
    if (payload_is(request, "reset"))
        *state = (echo_state_t){0};
    if (payload_is(request, "failbegin"))
        state->begin_fails = true;
    return reply_text(ctx, (Paygate__V1__EchoReply *)reply_msg, text);
}

/* Bulk and BulkPlain (RPC_BATCH_HANDLER): singly, answer
 * "single|<user_id>|<request_id>|<payload>". Bulk has batch code
 * (echo_bulk_batch), BulkPlain none (its batches run call by call). */
static Paygate__V1__Code echo_bulk(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                   ProtobufCMessage *reply_msg, void *state)
{
    (void)state;
    const Paygate__V1__EchoRequest *request = (const Paygate__V1__EchoRequest *)request_msg;
    char text[512];
    snprintf(text, sizeof text, "single|%s|%s|%.*s", rpc_ctx_user_id(ctx), rpc_ctx_request_id(ctx),
             (int)(request->payload.len < 256 ? request->payload.len : 256),
             (const char *)request->payload.data);
    return reply_text(ctx, (Paygate__V1__EchoReply *)reply_msg, text);
}

/* Bulk's batch code: answers each call it gets
 * "bulk|<user_id>|<request_id>|<payload>|<k>/<count>" (k counting from 1
 * among the 'count' calls it got), except payload "single" (left to the
 * handler) and "bulkfail" (FAILED_PRECONDITION, reason bulk_failed). */
static void echo_bulk_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                            ProtobufCMessage *const *replies, Paygate__V1__Code *codes,
                            bool *answered, size_t count, void *state)
{
    (void)state;
    for (size_t i = 0; i < count; i++) {
        const Paygate__V1__EchoRequest *request = (const Paygate__V1__EchoRequest *)requests[i];
        if (payload_is(request, "single"))
            continue;
        answered[i] = true;
        if (payload_is(request, "bulkfail")) {
            codes[i] =
                rpc_ctx_fail(ctxs[i], PAYGATE__V1__CODE__FAILED_PRECONDITION, "bulk_failed",
                             "failed in the batch code (request %s)", rpc_ctx_request_id(ctxs[i]));
            continue;
        }
        char text[512];
        snprintf(text, sizeof text, "bulk|%s|%s|%.*s|%zu/%zu", rpc_ctx_user_id(ctxs[i]),
                 rpc_ctx_request_id(ctxs[i]),
                 (int)(request->payload.len < 256 ? request->payload.len : 256),
                 (const char *)request->payload.data, i + 1, count);
        codes[i] = reply_text(ctxs[i], (Paygate__V1__EchoReply *)replies[i], text);
    }
}

static const rpc_batch_handler_t echo_batch_handlers[] = {
    {"Bulk", echo_bulk_batch},
};

static const rpc_method_t echo_methods[] = {
    {"Caller", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_caller, RPC_BATCH_NONE},
    {"Echo", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_echo, RPC_BATCH_NONE},
    {"Sleep", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_sleep, RPC_BATCH_NONE},
    {"Fail", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_fail, RPC_BATCH_NONE},
    {"Each", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_each, RPC_BATCH_EACH},
    {"Txn", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor, echo_txn,
     RPC_BATCH_TRANSACTION},
    {"TxnLog", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_txn_log, RPC_BATCH_NONE},
    {"Bulk", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_bulk, RPC_BATCH_HANDLER},
    {"BulkPlain", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_bulk, RPC_BATCH_HANDLER},
};

int main(void)
{
    if (!log_init("echo-worker"))
        return 2;
    const char *endpoint, *service, *instance;
    int64_t threads, heartbeat_ms, max_in_flight, batch_ops;
    bool ok = config_str("PAYGATE_BROKER_ENDPOINT", "tcp://127.0.0.1:55555", 255, &endpoint);
    ok &= config_str("ECHO_SERVICE", "echo", 64, &service);
    ok &= config_str("ECHO_INSTANCE", NULL, 100, &instance);
    ok &= config_int("ECHO_THREADS", 1, 1, 64, &threads);
    ok &= config_int("ECHO_HEARTBEAT_MS", 1000, 50, 60000, &heartbeat_ms);
    ok &= config_int("ECHO_MAX_IN_FLIGHT", 4, 1, 1024, &max_in_flight);
    ok &= config_int("ECHO_BATCH_OPS", 0, 0, 1, &batch_ops);
    if (!ok)
        return 2;
    metrics_t *metrics = metrics_new();
    metrics_server_t *metrics_server = NULL;
    if (metrics == NULL ||
        !metrics_server_start_from_env("PAYGATE_METRICS_PORT", metrics, &metrics_server))
        return 1;

    rpc_server_config_t config = {
        .endpoint = endpoint,
        .service = service,
        .instance = instance,
        .methods = echo_methods,
        .method_count = sizeof echo_methods / sizeof echo_methods[0],
        .threads = (unsigned)threads,
        .heartbeat_interval_ms = (uint32_t)heartbeat_ms,
        .max_in_flight = (uint32_t)max_in_flight,
        .thread_init = echo_thread_init,
        .thread_fini = echo_thread_fini,
        .batch_ops = batch_ops ? &echo_batch_ops : NULL,
        .metrics = metrics,
        .batch_handlers = echo_batch_handlers,
        .batch_handler_count = sizeof echo_batch_handlers / sizeof echo_batch_handlers[0],
    };
    rpc_server_t *server = rpc_server_new(&config);
    if (server == NULL) {
        metrics_server_stop(&metrics_server);
        metrics_destroy(&metrics);
        return 2;
    }
    rpc_server_stop_on_signals(server);
    int rc = rpc_server_run(server);
    rpc_server_destroy(&server);
    metrics_server_stop(&metrics_server);
    metrics_destroy(&metrics);
    return rc == 0 ? 0 : 1;
}
