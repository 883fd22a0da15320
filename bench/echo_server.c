/*
 * bench_echo_server: the echo service without a broker, for the direct and
 * the relay measurements of bench_broker_hop.
 *
 *   bench_echo_server bind ENDPOINT      direct: a ROUTER that clients
 *                                        connect to
 *   bench_echo_server connect ENDPOINT   relay: a DEALER that connects to
 *                                        bench_relay's backend and says
 *                                        hello
 *
 * Both ways it receives [client_id] "PGW1" Header body and answers
 * [client_id] "PGW1" Header(REPLY) body: a ROUTER gets the client id from
 * libzmq, and behind the relay the id is the first frame the relay hands
 * to our DEALER, so the same code serves both.
 *
 * Per request it does the work paygate-echo-worker does through lib/rpc
 * (worker_poll_once and worker_serve in lib/rpc/worker.c), so that the
 * three measurements differ only in the hop:
 *   - zmq_poll, then up to 64 messages received with ZMQ_DONTWAIT;
 *   - wire_recv: all frames, signature check, Header unpacked (malloc'd)
 *     and validated for its command, body frame moved out;
 *   - method looked up by name ("Echo"), deadline checked on the clock;
 *   - EchoRequest unpacked into a per-call arena (lib/arena), an EchoReply
 *     filled with the payload and the instance id, packed into a new frame;
 *   - wire_send of a REPLY header with the correlation id, status OK;
 *   - arena reset, header freed.
 * What it leaves out is what the broker protocol alone needs: READY and
 * heartbeats (a few messages a second, not per request). It must never be
 * used as a real service: it knows one method and trusts its caller.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "arena/arena.h"
#include "clock/clock.h"
#include "echo.pb-c.h"
#include "wire/wire.h"

enum {
    echo_poll_timeout_ms = 100, /* how often the stop flag is looked at */
    echo_batch_max = 64,        /* as lib/rpc's worker: messages per poll */
    echo_hwm = 100000,
    echo_arena_block_bytes = 64 * 1024,
    echo_message_bytes_max = 1024 * 1024,
    echo_deadline_default_ms = 5000,
};

#define ECHO_HELLO "HELLO"

static volatile sig_atomic_t echo_stopping;

static void echo_on_signal(int signo)
{
    (void)signo;
    echo_stopping = 1;
}

typedef struct {
    void *socket;
    arena_t *arena;
    char instance_id[64];
    uint64_t served;
    uint64_t refused; /* malformed messages or unknown methods */
} echo_server_t;

/* Sends a REPLY to 'client' for 'request' with a failure 'code' and
 * 'message', and no body. */
static void echo_reply_failure(echo_server_t *self, const wire_message_t *request,
                               Paygate__V1__Code code, const char *message)
{
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = code;
    status.message = (char *)message;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REPLY;
    header.correlation_id = request->header ? request->header->correlation_id : 0;
    header.status = &status;
    wire_send(self->socket, request->identity, request->identity_len, &header, NULL, 0);
    self->refused++;
}

/* Answers one well-formed REQUEST 'msg' (received at 'received_at_ms'). */
static void echo_serve(echo_server_t *self, wire_message_t *msg, int64_t received_at_ms)
{
    const Paygate__V1__Header *h = msg->header;
    if (h->command != PAYGATE__V1__COMMAND__REQUEST || strcmp(h->method, "Echo") != 0) {
        echo_reply_failure(self, msg, PAYGATE__V1__CODE__UNIMPLEMENTED,
                           "bench_echo_server has only Echo");
        return;
    }
    uint32_t deadline_ms =
        h->meta && h->meta->deadline_ms ? h->meta->deadline_ms : (uint32_t)echo_deadline_default_ms;
    if (clock_now_ms() >= received_at_ms + deadline_ms) {
        echo_reply_failure(self, msg, PAYGATE__V1__CODE__DEADLINE_EXCEEDED,
                           "deadline passed before the server started the request");
        return;
    }
    ProtobufCAllocator allocator = arena_protobuf_allocator(self->arena);
    const uint8_t *data = msg->has_body ? zmq_msg_data(&msg->body) : (const uint8_t *)"";
    size_t size = msg->has_body ? zmq_msg_size(&msg->body) : 0;
    Paygate__V1__EchoRequest *request = paygate__v1__echo_request__unpack(&allocator, size, data);
    Paygate__V1__EchoReply *reply = arena_alloc(self->arena, sizeof *reply);
    if (request == NULL || reply == NULL) {
        echo_reply_failure(self, msg, PAYGATE__V1__CODE__INVALID_ARGUMENT,
                           "request body is not a valid paygate.v1.EchoRequest");
        arena_reset(self->arena);
        return;
    }
    paygate__v1__echo_reply__init(reply);
    reply->payload = request->payload;
    reply->instance_id = self->instance_id;

    zmq_msg_t body;
    zmq_msg_init_size(&body, paygate__v1__echo_reply__get_packed_size(reply));
    paygate__v1__echo_reply__pack(reply, zmq_msg_data(&body));
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REPLY;
    header.correlation_id = h->correlation_id;
    if (wire_send(self->socket, msg->identity, msg->identity_len, &header, &body, 0) != 0)
        fprintf(stderr, "bench_echo_server: reply not sent: %s\n", zmq_strerror(errno));
    zmq_msg_close(&body);
    self->served++;
    arena_reset(self->arena);
}

/* Waits up to echo_poll_timeout_ms for requests and answers those queued. */
static void echo_poll_once(echo_server_t *self)
{
    zmq_pollitem_t item = {.socket = self->socket, .events = ZMQ_POLLIN};
    if (zmq_poll(&item, 1, echo_poll_timeout_ms) <= 0)
        return;
    for (int i = 0; i < echo_batch_max; i++) {
        wire_message_t msg;
        const char *detail = NULL;
        int rc = wire_recv(self->socket, true, echo_message_bytes_max, ZMQ_DONTWAIT, &msg, &detail);
        if (rc < 0) {
            wire_message_clear(&msg);
            break;
        }
        if (rc == WIRE_OK)
            echo_serve(self, &msg, clock_now_ms());
        else
            echo_reply_failure(self, &msg, PAYGATE__V1__CODE__INVALID_ARGUMENT, detail);
        wire_message_clear(&msg);
    }
}

/* Opens the socket for 'mode' ("bind" or "connect") at 'endpoint'. NULL
 * after printing why. */
static void *echo_open(void *ctx, const char *mode, const char *endpoint)
{
    bool bind = strcmp(mode, "bind") == 0;
    void *socket = zmq_socket(ctx, bind ? ZMQ_ROUTER : ZMQ_DEALER);
    if (socket == NULL)
        return NULL;
    int zero = 0, hwm = echo_hwm;
    zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    int rc = bind ? zmq_bind(socket, endpoint) : zmq_connect(socket, endpoint);
    if (rc != 0) {
        fprintf(stderr, "bench_echo_server: cannot %s %s: %s\n", mode, endpoint,
                zmq_strerror(errno));
        zmq_close(socket);
        return NULL;
    }
    /* Behind the relay: say hello (queued until the connection is up). */
    if (!bind && zmq_send(socket, ECHO_HELLO, strlen(ECHO_HELLO), 0) < 0) {
        fprintf(stderr, "bench_echo_server: cannot say hello: %s\n", zmq_strerror(errno));
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

int main(int argc, char **argv)
{
    bool valid = argc == 3 && (strcmp(argv[1], "bind") == 0 || strcmp(argv[1], "connect") == 0);
    if (!valid) {
        fputs("usage: bench_echo_server bind|connect ENDPOINT\n"
              "The echo service without a broker: 'bind' a ROUTER for direct clients,\n"
              "or 'connect' a DEALER to bench_relay's backend. See bench/README.md.\n",
              stderr);
        return 2;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = echo_on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    echo_server_t server = {0};
    snprintf(server.instance_id, sizeof server.instance_id, "bench-echo-%d", (int)getpid());
    server.arena = arena_new(echo_arena_block_bytes);
    void *ctx = zmq_ctx_new();
    server.socket = ctx && server.arena ? echo_open(ctx, argv[1], argv[2]) : NULL;
    if (server.socket != NULL) {
        while (!echo_stopping)
            echo_poll_once(&server);
    }
    fprintf(stderr, "bench_echo_server: stopped after %llu requests (%llu refused)\n",
            (unsigned long long)server.served, (unsigned long long)server.refused);
    if (server.socket != NULL)
        zmq_close(server.socket);
    if (ctx != NULL)
        zmq_ctx_term(ctx);
    arena_destroy(&server.arena);
    return server.socket != NULL ? 0 : 1;
}
