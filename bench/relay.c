/*
 * bench_relay: the minimal relay, one broker hop with no logic at all.
 *
 *   bench_relay FRONTEND BACKEND
 *   e.g. bench_relay tcp://127.0.0.1:40001 tcp://127.0.0.1:40002
 *
 * It binds two ROUTER sockets: clients connect to FRONTEND (as DEALER),
 * one echo server connects to BACKEND (as DEALER) and says hello. Every
 * client message goes to that server and every server message back to the
 * client it names. It is the physical limit of one broker hop: the same
 * sockets, I/O threads and TCP round trips as paygate-broker, without
 * decoding anything, without a registry and without timers, so that the
 * benchmark can tell the cost of the hop from the cost of our broker's
 * logic.
 *
 * Frames (the payload frames are never looked at, only moved):
 *
 *   frontend in    [client_id] [frame 1] ... [frame n]
 *   backend out    [backend_id] [client_id] [frame 1] ... [frame n]
 *
 *   backend in     [backend_id] [client_id] [frame 1] ... [frame n]
 *   frontend out   [client_id] [frame 1] ... [frame n]
 *
 *   hello          [backend_id] ["HELLO"]      (one frame after the id)
 *
 * The last backend peer that said hello gets all the requests; client
 * messages that arrive before any hello are dropped (clients retry). The
 * relay must never parse, copy or hold a payload: frames are zmq_msg_t
 * moves from one socket to the other.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <zmq.h>

enum {
    relay_hwm = 100000,         /* the same queue limits as paygate-broker */
    relay_batch_max = 1024,     /* messages moved per socket per poll */
    relay_poll_timeout_ms = 100 /* how often the stop flag is looked at */
};

static volatile sig_atomic_t relay_stopping;

static void relay_on_signal(int signo)
{
    (void)signo;
    relay_stopping = 1;
}

typedef struct {
    void *frontend;
    void *backend;
    zmq_msg_t backend_id; /* the server that said hello; valid when 'has_backend' */
    bool has_backend;
    uint64_t forwarded;          /* client messages handed to the server */
    uint64_t returned;           /* server messages handed to clients */
    uint64_t dropped_no_backend; /* client messages before any hello */
} relay_t;

/* Receives and discards the rest of the multipart message after 'part'. */
static void relay_drain(void *socket, zmq_msg_t *part)
{
    while (zmq_msg_more(part)) {
        if (zmq_msg_recv(part, socket, 0) < 0)
            return;
    }
}

/* Moves 'part' and every frame that follows it on 'from' to 'to'; 'part'
 * is sent with ZMQ_SNDMORE when more frames follow. Returns 0 or -1. */
static int relay_move_rest(void *from, void *to, zmq_msg_t *part)
{
    for (;;) {
        int more = zmq_msg_more(part);
        if (zmq_msg_send(part, to, more ? ZMQ_SNDMORE : 0) < 0) {
            relay_drain(from, part);
            return -1;
        }
        if (!more)
            return 0;
        if (zmq_msg_recv(part, from, 0) < 0)
            return -1;
    }
}

/* Moves one client message, if one is waiting, to the backend. Returns 1
 * when a message was taken, 0 when none was waiting, -1 on error. */
static int relay_client_to_backend(relay_t *self, zmq_msg_t *part)
{
    if (zmq_msg_recv(part, self->frontend, ZMQ_DONTWAIT) < 0)
        return errno == EAGAIN ? 0 : -1;
    if (!self->has_backend) {
        relay_drain(self->frontend, part);
        self->dropped_no_backend++;
        return 1;
    }
    /* The routing frame for the backend ROUTER; zmq_msg_copy shares the
     * data (a routing id is small and stored inline anyway). */
    zmq_msg_t route;
    zmq_msg_init(&route);
    zmq_msg_copy(&route, &self->backend_id);
    if (zmq_msg_send(&route, self->backend, ZMQ_SNDMORE) < 0) {
        zmq_msg_close(&route);
        relay_drain(self->frontend, part);
        return 1;
    }
    /* 'part' is the client id: it goes on as the first payload frame. */
    if (relay_move_rest(self->frontend, self->backend, part) == 0)
        self->forwarded++;
    return 1;
}

/* Moves one server message, if one is waiting, to its client; records a
 * hello. Returns 1 when a message was taken, 0 when none, -1 on error. */
static int relay_backend_to_client(relay_t *self, zmq_msg_t *part)
{
    zmq_msg_t peer;
    zmq_msg_init(&peer);
    if (zmq_msg_recv(&peer, self->backend, ZMQ_DONTWAIT) < 0) {
        int saved = errno;
        zmq_msg_close(&peer);
        return saved == EAGAIN ? 0 : -1;
    }
    if (!zmq_msg_more(&peer)) {
        zmq_msg_close(&peer); /* an empty message: nothing to route */
        return 1;
    }
    if (zmq_msg_recv(part, self->backend, 0) < 0) {
        zmq_msg_close(&peer);
        return -1;
    }
    if (!zmq_msg_more(part)) {
        /* One frame after the id: a hello. The sender is the backend now. */
        if (self->has_backend) {
            zmq_msg_close(&self->backend_id);
            fprintf(stderr, "bench_relay: a new backend said hello; it replaces the old one\n");
        }
        zmq_msg_init(&self->backend_id);
        zmq_msg_move(&self->backend_id, &peer);
        self->has_backend = true;
        return 1;
    }
    zmq_msg_close(&peer);
    /* 'part' is the client id: the frontend ROUTER routes by it. */
    if (relay_move_rest(self->backend, self->frontend, part) == 0)
        self->returned++;
    return 1;
}

/* Opens a ROUTER socket bound to 'endpoint'. NULL after printing why. */
static void *relay_bind(void *ctx, const char *endpoint)
{
    void *socket = zmq_socket(ctx, ZMQ_ROUTER);
    if (socket == NULL)
        return NULL;
    int zero = 0, hwm = relay_hwm;
    zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_bind(socket, endpoint) != 0) {
        fprintf(stderr, "bench_relay: cannot bind %s: %s\n", endpoint, zmq_strerror(errno));
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

/* Serves until SIGTERM/SIGINT. Returns 0, or -1 on a socket failure. */
static int relay_run(relay_t *self)
{
    zmq_msg_t part;
    zmq_msg_init(&part);
    int result = 0;
    while (!relay_stopping) {
        zmq_pollitem_t items[] = {{.socket = self->frontend, .events = ZMQ_POLLIN},
                                  {.socket = self->backend, .events = ZMQ_POLLIN}};
        int ready = zmq_poll(items, 2, relay_poll_timeout_ms);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            result = -1;
            break;
        }
        /* Replies first: they free a client to send its next request. */
        for (int i = 0; (items[1].revents & ZMQ_POLLIN) && i < relay_batch_max; i++) {
            int rc = relay_backend_to_client(self, &part);
            if (rc <= 0)
                break;
        }
        for (int i = 0; (items[0].revents & ZMQ_POLLIN) && i < relay_batch_max; i++) {
            int rc = relay_client_to_backend(self, &part);
            if (rc <= 0)
                break;
        }
    }
    zmq_msg_close(&part);
    return result;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fputs("usage: bench_relay FRONTEND BACKEND\n"
              "Binds two ROUTER sockets and relays frames between clients (FRONTEND)\n"
              "and the one echo server that said hello on BACKEND. See bench/README.md.\n",
              argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = relay_on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    relay_t relay = {0};
    void *ctx = zmq_ctx_new();
    relay.frontend = ctx ? relay_bind(ctx, argv[1]) : NULL;
    relay.backend = relay.frontend ? relay_bind(ctx, argv[2]) : NULL;
    int rc = relay.backend != NULL ? relay_run(&relay) : -1;

    fprintf(stderr,
            "bench_relay: stopped: %llu forwarded, %llu returned, %llu dropped (no backend)\n",
            (unsigned long long)relay.forwarded, (unsigned long long)relay.returned,
            (unsigned long long)relay.dropped_no_backend);
    if (relay.has_backend)
        zmq_msg_close(&relay.backend_id);
    if (relay.frontend != NULL)
        zmq_close(relay.frontend);
    if (relay.backend != NULL)
        zmq_close(relay.backend);
    if (ctx != NULL)
        zmq_ctx_term(ctx);
    return rc == 0 ? 0 : 1;
}
