/*
 * paygate-echo-worker: a real worker process for tests and benchmarks.
 *
 * Serves the diagnostic echo service (proto/echo.proto) through the RPC
 * library: Echo answers the payload and its instance id; Sleep waits
 * sleep_ms first (to hold a request in flight). Configured by:
 *
 *   PAYGATE_BROKER_ENDPOINT   broker to register with
 *   ECHO_SERVICE              service name (default "echo")
 *   ECHO_THREADS              instances in this process (default 1)
 *   ECHO_HEARTBEAT_MS         heartbeat interval (default 1000)
 *   ECHO_MAX_IN_FLIGHT        requests per instance at once (default 4)
 *   ECHO_INSTANCE             instance id prefix (default derived)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "echo.pb-c.h"
#include "log/log.h"
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

static const rpc_method_t echo_methods[] = {
    {"Caller", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_caller, RPC_BATCH_NONE},
    {"Echo", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_echo, RPC_BATCH_NONE},
    {"Sleep", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_sleep, RPC_BATCH_NONE},
    {"Fail", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_fail, RPC_BATCH_NONE},
};

int main(void)
{
    if (!log_init("echo-worker"))
        return 2;
    const char *endpoint, *service, *instance;
    int64_t threads, heartbeat_ms, max_in_flight;
    bool ok = config_str("PAYGATE_BROKER_ENDPOINT", "tcp://127.0.0.1:55555", 255, &endpoint);
    ok &= config_str("ECHO_SERVICE", "echo", 64, &service);
    ok &= config_str("ECHO_INSTANCE", NULL, 100, &instance);
    ok &= config_int("ECHO_THREADS", 1, 1, 64, &threads);
    ok &= config_int("ECHO_HEARTBEAT_MS", 1000, 50, 60000, &heartbeat_ms);
    ok &= config_int("ECHO_MAX_IN_FLIGHT", 4, 1, 1024, &max_in_flight);
    if (!ok)
        return 2;

    rpc_server_config_t config = {
        .endpoint = endpoint,
        .service = service,
        .instance = instance,
        .methods = echo_methods,
        .method_count = sizeof echo_methods / sizeof echo_methods[0],
        .threads = (unsigned)threads,
        .heartbeat_interval_ms = (uint32_t)heartbeat_ms,
        .max_in_flight = (uint32_t)max_in_flight,
    };
    rpc_server_t *server = rpc_server_new(&config);
    if (server == NULL)
        return 2;
    rpc_server_stop_on_signals(server);
    int rc = rpc_server_run(server);
    rpc_server_destroy(&server);
    return rc == 0 ? 0 : 1;
}
