/*
 * echo_pipeline: a tiny worker and a pipelined caller in one program.
 *
 * The worker half (rpc_server) registers the service "example-echo" with
 * the broker, two instances (threads), and one method, "Upper", which
 * answers the request's payload in upper case (proto/echo.proto's
 * EchoRequest -> EchoReply). A real worker is its own process and stops
 * on SIGTERM (rpc_server_stop_on_signals); here a thread runs it.
 *
 * The caller half waits with rpc_client_call until the service answers,
 * then sends --count requests at once with rpc_client_send and collects
 * the replies, in whatever order they come, with rpc_client_recv, matching
 * them by correlation id. --method NAME calls another method instead: the
 * worker answers UNIMPLEMENTED for one it does not have, which the program
 * prints ("echo_pipeline: example-echo.NAME: UNIMPLEMENTED: ...", exit 1).
 *
 *   echo_pipeline [--endpoint tcp://127.0.0.1:55555] [--count 8] [--method Upper]
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep under -std=c17 */

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "echo.pb-c.h"
#include "rpc/rpc.h"

enum {
    count_default = 8,
    count_max = 1000,
    deadline_ms = 5000,
    reply_margin_ms = 1000,  /* after the deadline the broker has answered */
    service_wait_ms = 10000, /* for the worker to register */
    payload_bytes_max = 64,
};

static const char service[] = "example-echo";

/* ---- the worker ------------------------------------------------------- */

/* Upper: the payload in upper case, in memory that lives until the reply
 * is sent (rpc_ctx_alloc). */
static Paygate__V1__Code echo_upper(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                    ProtobufCMessage *reply_msg, void *thread_state)
{
    (void)thread_state;
    const Paygate__V1__EchoRequest *request = (const Paygate__V1__EchoRequest *)request_msg;
    Paygate__V1__EchoReply *reply = (Paygate__V1__EchoReply *)reply_msg;
    if (request->payload.len > payload_bytes_max)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "payload_too_long",
                            "payload of %zu bytes is over %d", request->payload.len,
                            payload_bytes_max);
    uint8_t *upper = rpc_ctx_alloc(ctx, request->payload.len + 1);
    if (upper == NULL)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, NULL, "out of memory");
    for (size_t i = 0; i < request->payload.len; i++)
        upper[i] = (uint8_t)toupper(request->payload.data[i]);
    reply->payload.data = upper;
    reply->payload.len = request->payload.len;
    reply->instance_id = (char *)rpc_ctx_instance_id(ctx);
    return PAYGATE__V1__CODE__OK;
}

static const rpc_method_t echo_methods[] = {
    {"Upper", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     echo_upper, RPC_BATCH_NONE},
};

static int worker_rc = -1;

/* The worker thread: serves until rpc_server_stop. */
static void *worker_main(void *server)
{
    worker_rc = rpc_server_run(server);
    return NULL;
}

/* ---- the caller ------------------------------------------------------- */

/* Connects to the broker at 'endpoint': the one place that sets up the
 * connection (keys go here when the broker asks for them). */
static rpc_client_t *caller_connect(const char *endpoint)
{
    rpc_client_t *client = rpc_client_new(NULL, endpoint);
    if (client == NULL)
        fprintf(stderr, "echo_pipeline: cannot use broker endpoint '%s'\n", endpoint);
    return client;
}

/* Prints "echo_pipeline: example-echo.METHOD: CODE reason: message". */
static void print_failure(const char *method, const rpc_status_t *status)
{
    const ProtobufCEnumValue *code =
        protobuf_c_enum_descriptor_get_value(&paygate__v1__code__descriptor, (int)status->code);
    fprintf(stderr, "echo_pipeline: %s.%s: %s%s%s: %s\n", service, method,
            code != NULL ? code->name : "?", status->reason[0] ? " " : "", status->reason,
            status->message);
}

static int64_t now_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Waits until the service answers a first call (the broker says no_worker
 * until an instance has registered). Returns false after printing why. */
static bool caller_wait_for_service(rpc_client_t *client, const char *method)
{
    const int64_t until = now_ms() + service_wait_ms;
    Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
    request.payload.data = (uint8_t *)"ping";
    request.payload.len = 4;
    rpc_call_opts_t opts = {.deadline_ms = deadline_ms, .principal = "echo-pipeline"};
    for (;;) {
        ProtobufCMessage *reply = NULL;
        rpc_status_t status;
        Paygate__V1__Code code =
            rpc_client_call(client, service, method, &request.base,
                            &paygate__v1__echo_reply__descriptor, &reply, &opts, &status);
        if (code == PAYGATE__V1__CODE__OK) {
            protobuf_c_message_free_unpacked(reply, NULL);
            return true;
        }
        if (code != PAYGATE__V1__CODE__UNAVAILABLE || now_ms() >= until) {
            print_failure(method, &status);
            return false;
        }
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000 * 1000}, NULL);
    }
}

/* Sends 'count' requests at once, then collects every reply. */
static bool caller_pipeline(rpc_client_t *client, const char *method, int count)
{
    uint64_t *ids = calloc((size_t)count, sizeof *ids);
    bool *answered = calloc((size_t)count, sizeof *answered);
    bool ok = ids != NULL && answered != NULL;
    rpc_call_opts_t opts = {.deadline_ms = deadline_ms, .principal = "echo-pipeline"};
    char text[payload_bytes_max];
    for (int i = 0; ok && i < count; i++) {
        Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
        int len = snprintf(text, sizeof text, "hello %d", i + 1);
        request.payload.data = (uint8_t *)text;
        request.payload.len = (size_t)len;
        uint8_t body[payload_bytes_max + 16];
        size_t body_len = protobuf_c_message_pack(&request.base, body);
        rpc_status_t status;
        if (rpc_client_send(client, service, method, body, body_len, &opts, &ids[i], &status) !=
            0) {
            print_failure(method, &status);
            ok = false;
        }
    }
    printf("sent %d requests to %s.%s\n", count, service, method);

    const int64_t until = now_ms() + deadline_ms + reply_margin_ms;
    for (int got = 0; ok && got < count;) {
        int64_t left = until - now_ms();
        uint64_t id = 0;
        rpc_status_t status;
        zmq_msg_t body;
        zmq_msg_init(&body);
        int rc = left > 0 ? rpc_client_recv(client, (int)left, &id, &body, &status) : 0;
        int i = 0;
        while (rc == 1 && i < count && (ids[i] != id || answered[i]))
            i++;
        if (rc <= 0) {
            fprintf(stderr, "echo_pipeline: %d of %d replies missing\n", count - got, count);
            ok = false;
        } else if (i == count) {
            fprintf(stderr, "echo_pipeline: a reply to no request of ours (%llu)\n",
                    (unsigned long long)id);
            ok = false;
        } else if (status.code != PAYGATE__V1__CODE__OK) {
            print_failure(method, &status);
            ok = false;
        } else {
            Paygate__V1__EchoReply *reply =
                paygate__v1__echo_reply__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
            snprintf(text, sizeof text, "HELLO %d", i + 1);
            ok = reply != NULL && reply->payload.len == strlen(text) &&
                 memcmp(reply->payload.data, text, reply->payload.len) == 0;
            if (ok)
                printf("reply %d: %.*s (from %s)\n", i + 1, (int)reply->payload.len,
                       (const char *)reply->payload.data, reply->instance_id);
            else
                fprintf(stderr, "echo_pipeline: reply %d is not \"%s\"\n", i + 1, text);
            if (reply != NULL)
                paygate__v1__echo_reply__free_unpacked(reply, NULL);
            answered[i] = true;
            got++;
        }
        zmq_msg_close(&body);
    }
    free(ids);
    free(answered);
    return ok;
}

static int usage(void)
{
    fprintf(stderr, "usage: echo_pipeline [--endpoint ENDPOINT] [--count 1..%d] [--method NAME]\n",
            count_max);
    return 2;
}

int main(int argc, char **argv)
{
    const char *endpoint = getenv("PAYGATE_BROKER_ENDPOINT");
    if (endpoint == NULL || *endpoint == '\0')
        endpoint = "tcp://127.0.0.1:55555";
    const char *method = "Upper";
    long count = count_default;
    for (int i = 1; i < argc; i += 2) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (value != NULL && strcmp(argv[i], "--endpoint") == 0)
            endpoint = value;
        else if (value != NULL && strcmp(argv[i], "--method") == 0)
            method = value;
        else if (value != NULL && strcmp(argv[i], "--count") == 0)
            count = strtol(value, &end, 10);
        else
            return usage();
        if (end != NULL && (*end != '\0' || end == value || count < 1 || count > count_max))
            return usage();
    }

    rpc_server_config_t config = {
        .endpoint = endpoint,
        .service = service,
        .methods = echo_methods,
        .method_count = sizeof echo_methods / sizeof echo_methods[0],
        .threads = 2,
    };
    rpc_server_t *server = rpc_server_new(&config);
    pthread_t worker;
    if (server == NULL || pthread_create(&worker, NULL, worker_main, server) != 0) {
        fprintf(stderr, "echo_pipeline: cannot start the worker\n");
        rpc_server_destroy(&server);
        return 1;
    }

    rpc_client_t *client = caller_connect(endpoint);
    bool ok = client != NULL && caller_wait_for_service(client, method) &&
              caller_pipeline(client, method, (int)count);
    rpc_client_destroy(&client);

    rpc_server_stop(server);
    pthread_join(worker, NULL);
    rpc_server_destroy(&server);
    if (worker_rc != 0) {
        fprintf(stderr, "echo_pipeline: the worker failed (see its log above)\n");
        ok = false;
    }
    if (ok)
        printf("all %ld replies matched\n", count);
    return ok ? 0 : 1;
}
