/*
 * broker: socket loop, message dispatch to the registry, the registry's
 * sink (how its decisions become frames), and the built-in services.
 */
#include "broker.h"

#include <czmq.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "batch.pb-c.h"
#include "broker_metrics.h"
#include "clock/clock.h"
#include "log/log.h"

enum {
    broker_hwm = 100000,
    broker_batch_max = 1024, /* messages handled between timer checks */
    logged_peers_max = 1024, /* peers remembered for log-once */
    broker_linger_ms = 1000, /* flush time for the last answers on exit */
    broker_drain_ms = 300,   /* answering and letting peers read, on exit */
    broker_gather_us = 150,  /* longest wait for returning publishers before a sync */
};

struct broker {
    broker_config_t config;
    char endpoint[256];
    char curve_cert[1024];
    char clients_dir[1024];
    void *zmq_ctx;
    auth_t *auth; /* NULL: plaintext, nobody is checked */
    void *socket;
    registry_t *registry;
    bus_t *bus;
    atomic_int stopping;
    int64_t started_at;
    uint64_t frames_malformed;
    uint64_t commands_unknown;
    uint64_t messages_oversized;
    uint64_t commands_denied;
    zhashx_t *logged_peers;    /* identity hex -> 1: peers already logged */
    broker_metrics_t *metrics; /* NULL: no metrics listener */
    int64_t metrics_next_at;   /* when the loop renders the next snapshot */
};

/* ---- the registry's sink: decisions become frames --------------------- */

static int sink_send_request(void *ctx, const worker_t *w, pending_t *p, uint32_t deadline_ms)
{
    broker_t *self = ctx;
    Paygate__V1__CallMeta meta = PAYGATE__V1__CALL_META__INIT;
    if (p->header->meta != NULL)
        meta = *p->header->meta;
    meta.deadline_ms = deadline_ms;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REQUEST;
    header.correlation_id = p->broker_correlation;
    header.service = p->header->service;
    header.method = p->header->method;
    header.meta = &meta;
    return wire_send(self->socket, w->identity, w->identity_len, &header,
                     p->has_body ? &p->body : NULL, ZMQ_DONTWAIT);
}

static int sink_send_reply(void *ctx, const uint8_t *client, size_t client_len,
                           uint64_t correlation, const Paygate__V1__Status *status, zmq_msg_t *body)
{
    broker_t *self = ctx;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REPLY;
    header.correlation_id = correlation;
    header.status = (Paygate__V1__Status *)status;
    return wire_send(self->socket, client, client_len, &header, body, ZMQ_DONTWAIT);
}

static int sink_send_command(void *ctx, const uint8_t *identity, size_t identity_len,
                             Paygate__V1__Command command, const Paygate__V1__Status *status)
{
    broker_t *self = ctx;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = command;
    header.status = (Paygate__V1__Status *)status;
    return wire_send(self->socket, identity, identity_len, &header, NULL, ZMQ_DONTWAIT);
}

/* The bus's sink: any frame to any peer. */
static int sink_send_frames(void *ctx, const uint8_t *identity, size_t identity_len,
                            const Paygate__V1__Header *header, zmq_msg_t *body)
{
    broker_t *self = ctx;
    return wire_send(self->socket, identity, identity_len, header, body, ZMQ_DONTWAIT);
}

/* ---- life cycle ------------------------------------------------------ */

broker_t *broker_new(const broker_config_t *config)
{
    broker_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    snprintf(self->endpoint, sizeof self->endpoint, "%s", config->endpoint);
    self->config.endpoint = self->endpoint;
    snprintf(self->curve_cert, sizeof self->curve_cert, "%s",
             config->curve_cert ? config->curve_cert : "");
    snprintf(self->clients_dir, sizeof self->clients_dir, "%s",
             config->clients_dir ? config->clients_dir : "");
    self->started_at = clock_now_ms();
    self->logged_peers = zhashx_new();
    registry_sink_t sink = {.ctx = self,
                            .send_request = sink_send_request,
                            .send_reply = sink_send_reply,
                            .send_command = sink_send_command};
    self->registry = registry_new(&config->registry, &sink);
    bus_sink_t bus_sink = {.ctx = self, .send = sink_send_frames};
    self->bus = bus_new(&config->bus, &bus_sink);
    if (self->bus == NULL) {
        broker_destroy(&self);
        return NULL;
    }
    self->zmq_ctx = zmq_ctx_new();
    self->socket = self->zmq_ctx ? zmq_socket(self->zmq_ctx, ZMQ_ROUTER) : NULL;
    if (self->registry == NULL || self->socket == NULL || self->logged_peers == NULL) {
        log_error("broker: out of memory or ZeroMQ failure at start-up");
        broker_destroy(&self);
        return NULL;
    }
    int one = 1, zero = 0, hwm = broker_hwm;
    /* Slightly above our own limit so that we see (and answer) oversized
     * requests; libzmq drops peers that go far beyond. */
    int64_t maxmsg = (int64_t)config->message_bytes_max + wire_header_bytes_max + 64;
    zmq_setsockopt(self->socket, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(self->socket, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(self->socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->socket, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    /* ZMTP heartbeats: libzmq's I/O threads ping every connection and
     * drop one whose peer process answers nothing (frozen, or its host
     * gone) within the liveness window. A worker's I/O thread answers
     * while its handler thread is busy, so a long handler keeps its
     * connection; the registry then relies on the connection (and on the
     * deadlines of what the worker holds) rather than on the worker's own
     * heartbeats, which a busy thread cannot send. */
    int ping_ivl = (int)config->registry.heartbeat_interval_ms;
    int ping_timeout =
        (int)(config->registry.heartbeat_interval_ms * config->registry.heartbeat_liveness);
    zmq_setsockopt(self->socket, ZMQ_HEARTBEAT_IVL, &ping_ivl, sizeof ping_ivl);
    zmq_setsockopt(self->socket, ZMQ_HEARTBEAT_TIMEOUT, &ping_timeout, sizeof ping_timeout);
    /* The ZAP handler must be bound before the endpoint: a CURVE server
     * without one admits every key. */
    if (self->curve_cert[0] != '\0') {
        self->auth = auth_new(self->zmq_ctx, self->curve_cert, self->clients_dir);
        if (self->auth == NULL || auth_server_apply(self->auth, self->socket) != 0) {
            log_error("broker: cannot set up CURVE authentication; not starting");
            broker_destroy(&self);
            return NULL;
        }
    }
    if (zmq_bind(self->socket, self->endpoint) != 0) {
        log_error("broker: cannot bind %s: %s", self->endpoint, zmq_strerror(errno));
        broker_destroy(&self);
        return NULL;
    }
    bool metrics_failed = false;
    self->metrics = broker_metrics_start(&config->metrics, &metrics_failed);
    if (metrics_failed) {
        broker_destroy(&self);
        return NULL;
    }
    return self;
}

void broker_destroy(broker_t **self_p)
{
    broker_t *self = *self_p;
    if (self == NULL)
        return;
    broker_metrics_stop(&self->metrics);
    registry_destroy(&self->registry);
    bus_destroy(&self->bus);
    if (self->socket != NULL) {
        /* Give the answers sent at shutdown a moment to leave. */
        int linger = broker_linger_ms;
        zmq_setsockopt(self->socket, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(self->socket);
    }
    auth_destroy(&self->auth);
    if (self->zmq_ctx != NULL)
        zmq_ctx_term(self->zmq_ctx);
    zhashx_destroy(&self->logged_peers);
    free(self);
    *self_p = NULL;
}

void broker_stop(broker_t *self)
{
    atomic_store(&self->stopping, 1);
}

/* ---- bad input ------------------------------------------------------- */

/* Logs a problem with a peer's message the first time that peer has one;
 * later problems of that peer are only counted. */
static void broker_log_bad_peer(broker_t *self, const wire_message_t *msg, const char *detail)
{
    char key[2 * wire_identity_bytes_max + 1];
    wire_identity_hex(msg->identity, msg->identity_len, key);
    if (zhashx_lookup(self->logged_peers, key) != NULL)
        return;
    if (zhashx_size(self->logged_peers) >= logged_peers_max) {
        log_warn("broker: %d peers sent bad messages; forgetting them, logging anew",
                 logged_peers_max);
        zhashx_purge(self->logged_peers);
    }
    zhashx_insert(self->logged_peers, key, (void *)1);
    log_warn("broker: bad message from peer %s (%zu bytes): %s (further ones only counted)", key,
             msg->bytes, detail);
}

/* Counts and logs a message that failed decoding; answers it when it is
 * a request whose correlation id we could read. */
static void broker_reject(broker_t *self, wire_message_t *msg, int error, const char *detail)
{
    switch (error) {
    case WIRE_ERR_TOO_BIG:
        self->messages_oversized++;
        break;
    case WIRE_ERR_COMMAND:
        self->commands_unknown++;
        break;
    default:
        self->frames_malformed++;
        break;
    }
    broker_log_bad_peer(self, msg, detail);
    /* Whatever expects a REPLY gets one, even when it is malformed. */
    if (msg->header == NULL || (msg->header->command != PAYGATE__V1__COMMAND__REQUEST &&
                                msg->header->command != PAYGATE__V1__COMMAND__PUBLISH))
        return;
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    char text[256];
    if (error == WIRE_ERR_TOO_BIG) {
        status.code = PAYGATE__V1__CODE__RESOURCE_EXHAUSTED;
        status.reason = (char *)"message_too_big";
        snprintf(text, sizeof text, "message of %zu bytes is over the broker's maximum of %zu",
                 msg->bytes, self->config.message_bytes_max);
    } else {
        status.code = PAYGATE__V1__CODE__INVALID_ARGUMENT;
        status.reason = (char *)"malformed_request";
        snprintf(text, sizeof text, "%s", detail);
    }
    status.message = text;
    sink_send_reply(self, msg->identity, msg->identity_len, msg->header->correlation_id, &status,
                    NULL);
}

/* ---- built-in services ------------------------------------------------ */

/* Fills 'reply' as discovery answers it: services and instances (only
 * 'filter' when set), the broker's counters and the event bus's topics.
 * Returns false on OOM; else '*registry_memory' and '*bus_memory' are to
 * be freed with registry_list_free and bus_list_free. */
static bool broker_fill_list(broker_t *self, const char *filter, int64_t now,
                             Paygate__V1__ListServicesReply *reply, void **registry_memory,
                             void **bus_memory)
{
    *registry_memory = registry_list(self->registry, filter, now, reply);
    if (*registry_memory == NULL)
        return false;
    reply->stats->frames_malformed = self->frames_malformed;
    reply->stats->commands_unknown = self->commands_unknown;
    reply->stats->messages_oversized = self->messages_oversized;
    reply->stats->uptime_ms = (uint64_t)(now - self->started_at);
    reply->stats->peers_refused = self->auth ? auth_peers_refused(self->auth) : 0;
    reply->stats->commands_denied =
        self->commands_denied + registry_stats(self->registry)->registrations_refused;
    *bus_memory = bus_list(self->bus, reply);
    return true;
}

/* Renders a metrics snapshot when one is due (broker_metrics.h). */
static void broker_metrics_tick(broker_t *self, int64_t now)
{
    if (self->metrics == NULL || now < self->metrics_next_at)
        return;
    self->metrics_next_at = now + self->config.metrics_interval_ms;
    Paygate__V1__ListServicesReply reply = PAYGATE__V1__LIST_SERVICES_REPLY__INIT;
    void *registry_memory = NULL, *bus_memory = NULL;
    if (!broker_fill_list(self, NULL, now, &reply, &registry_memory, &bus_memory))
        return;
    broker_metrics_publish(self->metrics, &reply);
    registry_list_free(registry_memory);
    bus_list_free(bus_memory);
}

/* broker.services/List: the live services, instances and broker stats. */
static void broker_list_services(broker_t *self, wire_message_t *msg, int64_t now)
{
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    const Paygate__V1__Header *h = msg->header;
    Paygate__V1__ListServicesRequest *request = paygate__v1__list_services_request__unpack(
        NULL, msg->has_body ? zmq_msg_size(&msg->body) : 0,
        msg->has_body ? zmq_msg_data(&msg->body) : (void *)"");
    if (request == NULL) {
        status.code = PAYGATE__V1__CODE__INVALID_ARGUMENT;
        status.message = (char *)"body is not a valid paygate.v1.ListServicesRequest";
        sink_send_reply(self, msg->identity, msg->identity_len, h->correlation_id, &status, NULL);
        return;
    }
    Paygate__V1__ListServicesReply reply = PAYGATE__V1__LIST_SERVICES_REPLY__INIT;
    void *memory = NULL, *topics_memory = NULL;
    bool filled = broker_fill_list(self, request->service, now, &reply, &memory, &topics_memory);
    paygate__v1__list_services_request__free_unpacked(request, NULL);
    if (!filled) {
        status.code = PAYGATE__V1__CODE__INTERNAL;
        status.message = (char *)"out of memory";
        sink_send_reply(self, msg->identity, msg->identity_len, h->correlation_id, &status, NULL);
        return;
    }
    zmq_msg_t body;
    zmq_msg_init_size(&body, paygate__v1__list_services_reply__get_packed_size(&reply));
    paygate__v1__list_services_reply__pack(&reply, zmq_msg_data(&body));
    registry_list_free(memory);
    bus_list_free(topics_memory);
    sink_send_reply(self, msg->identity, msg->identity_len, h->correlation_id, NULL, &body);
    zmq_msg_close(&body);
}

/* A REQUEST for a broker.* service. */
static void broker_builtin(broker_t *self, wire_message_t *msg, int64_t now)
{
    const Paygate__V1__Header *h = msg->header;
    if (strcmp(h->service, "broker.services") == 0 && strcmp(h->method, "List") == 0) {
        broker_list_services(self, msg, now);
        return;
    }
    char text[192];
    snprintf(text, sizeof text, "the broker has no %s.%s", h->service, h->method);
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__UNIMPLEMENTED;
    status.message = text;
    sink_send_reply(self, msg->identity, msg->identity_len, h->correlation_id, &status, NULL);
}

/* ---- authorization (only with CURVE; see auth.h) ------------------------ */

/* Counts and logs (once per peer) a refused command and tells the peer: a REPLY for
 * what expects one (REQUEST, PUBLISH), a DISCONNECT for registrations
 * (READY, SUBSCRIBE), which makes the peer stop. */
static void broker_deny(broker_t *self, const wire_message_t *msg, const char *reason,
                        const char *text)
{
    self->commands_denied++;
    /* Logged once per peer (as bad messages are): a misconfigured client
     * repeating a refused call must not flood the log; the counter has
     * them all. */
    char key[2 * wire_identity_bytes_max + 8];
    memcpy(key, "denied:", 7);
    wire_identity_hex(msg->identity, msg->identity_len, key + 7);
    if (zhashx_lookup(self->logged_peers, key) == NULL) {
        if (zhashx_size(self->logged_peers) >= logged_peers_max)
            zhashx_purge(self->logged_peers);
        zhashx_insert(self->logged_peers, key, (void *)1);
        log_warn("broker: denied to peer %s (key '%s'): %s (further denials to it only counted)",
                 key + 7, msg->user_id, text);
    }
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__PERMISSION_DENIED;
    status.reason = (char *)reason;
    status.message = (char *)text;
    Paygate__V1__Command command = msg->header->command;
    if (command == PAYGATE__V1__COMMAND__REQUEST || command == PAYGATE__V1__COMMAND__PUBLISH)
        sink_send_reply(self, msg->identity, msg->identity_len, msg->header->correlation_id,
                        &status, NULL);
    else
        sink_send_command(self, msg->identity, msg->identity_len, PAYGATE__V1__COMMAND__DISCONNECT,
                          &status);
}

/* Writes the key's name as the REQUEST's principal when it claims none.
 * False on out of memory. The header's memory is protobuf-c's default
 * allocator's (malloc), which free_unpacked releases. */
static bool broker_stamp_principal(Paygate__V1__Header *h, const char *name)
{
    if (h->meta == NULL) {
        h->meta = malloc(sizeof *h->meta);
        if (h->meta == NULL)
            return false;
        paygate__v1__call_meta__init(h->meta);
    }
    if (h->meta->caller == NULL) {
        h->meta->caller = malloc(sizeof *h->meta->caller);
        if (h->meta->caller == NULL)
            return false;
        paygate__v1__caller__init(h->meta->caller);
    }
    char *copy = strdup(name);
    if (copy == NULL)
        return false;
    h->meta->caller->principal = copy; /* was the shared empty default */
    return true;
}

/* Whether REQUEST 'msg' for "batch.<Method>" (proto/batch.proto) carries
 * an end user's id in one of its calls. A batch carries each call's user
 * in its body, not in the header's caller, and the worker acts for it as
 * it acts for caller.user_id, so rule 3 (broker/README.md) applies to
 * each. A body that is not a BatchRequest carries none: the worker
 * refuses it before running any call. */
static bool broker_batch_carries_user(wire_message_t *msg)
{
    if (!msg->has_body)
        return false;
    Paygate__V1__BatchRequest *batch = paygate__v1__batch_request__unpack(
        NULL, zmq_msg_size(&msg->body), zmq_msg_data(&msg->body));
    if (batch == NULL)
        return false;
    bool carries = false;
    for (size_t i = 0; i < batch->n_items && !carries; i++)
        carries = batch->items[i]->user_id != NULL && batch->items[i]->user_id[0] != '\0';
    paygate__v1__batch_request__free_unpacked(batch, NULL);
    return carries;
}

/* Checks a message against the rights of the key that sent it. Returns
 * true when it may go on; otherwise it was answered (broker_deny). */
static bool broker_authorize(broker_t *self, wire_message_t *msg)
{
    const auth_key_t *key = auth_key_find(self->auth, msg->user_id);
    Paygate__V1__Header *h = msg->header;
    char text[512];
    if (key == NULL) { /* cannot happen: ZAP admitted the connection */
        broker_deny(self, msg, "unknown_key", "the connection's key is not known");
        return false;
    }
    const char *name = auth_key_name(key);
    switch (h->command) {
    case PAYGATE__V1__COMMAND__READY:
        if (auth_may_register(key, h->ready->service))
            return true;
        snprintf(text, sizeof text, "key '%s' may not register service '%s'", name,
                 h->ready->service);
        broker_deny(self, msg, "service_not_allowed", text);
        return false;
    case PAYGATE__V1__COMMAND__PUBLISH:
        if (auth_may_publish(key, h->event->topic))
            return true;
        snprintf(text, sizeof text, "key '%s' may not publish to topic '%s'", name,
                 h->event->topic);
        broker_deny(self, msg, "topic_not_allowed", text);
        return false;
    case PAYGATE__V1__COMMAND__SUBSCRIBE:
        if (auth_may_consume(key, h->subscribe->topic, h->subscribe->group))
            return true;
        snprintf(text, sizeof text, "key '%s' may not consume topic '%s' in group '%s'", name,
                 h->subscribe->topic, h->subscribe->group);
        broker_deny(self, msg, "topic_not_allowed", text);
        return false;
    case PAYGATE__V1__COMMAND__REQUEST: {
        /* The broker's own read-only services (discovery) reach no
         * worker: any admitted key may ask, whatever it claims (probes
         * run paygatectl with the pod's own key). */
        if (strncmp(h->service, "broker.", 7) == 0)
            return true;
        const Paygate__V1__Caller *caller = h->meta ? h->meta->caller : NULL;
        const char *principal = caller && caller->principal ? caller->principal : "";
        const char *user_id = caller && caller->user_id ? caller->user_id : "";
        /* (a batch's body is read only for keys that may not act for
         * users: the gateway's and payment's batches pass unread) */
        if (!auth_may_act_for_users(key) &&
            (*user_id != '\0' ||
             (strncmp(h->method, "batch.", 6) == 0 && broker_batch_carries_user(msg)))) {
            snprintf(text, sizeof text, "key '%s' may not call on behalf of a user", name);
            broker_deny(self, msg, "user_identity_not_allowed", text);
            return false;
        }
        if (*principal != '\0' && !auth_may_claim(key, principal)) {
            snprintf(text, sizeof text, "key '%s' may not call as principal '%s'", name, principal);
            broker_deny(self, msg, "principal_not_allowed", text);
            return false;
        }
        if (*principal == '\0' && !broker_stamp_principal(h, name)) {
            broker_deny(self, msg, "broker_busy", "out of memory");
            return false;
        }
        return true;
    }
    default:
        return true; /* HEARTBEAT, DISCONNECT, ACK, NACK, REPLY: checked by peer identity */
    }
}

/* ---- the loop -------------------------------------------------------- */

/* Routes one well-formed message. */
static void broker_handle(broker_t *self, wire_message_t *msg, int64_t now)
{
    Paygate__V1__Header *h = msg->header;
    if (self->auth != NULL && !broker_authorize(self, msg))
        return;
    switch (h->command) {
    case PAYGATE__V1__COMMAND__READY:
        registry_worker_ready_as(self->registry, msg->identity, msg->identity_len, h->ready,
                                 msg->user_id, now);
        break;
    case PAYGATE__V1__COMMAND__HEARTBEAT:
        if (!bus_peer_heartbeat(self->bus, msg->identity, msg->identity_len, now))
            registry_worker_heartbeat(self->registry, msg->identity, msg->identity_len, now);
        break;
    case PAYGATE__V1__COMMAND__DISCONNECT:
        if (!bus_peer_disconnect(self->bus, msg->identity, msg->identity_len, now))
            registry_worker_disconnect(self->registry, msg->identity, msg->identity_len, now);
        break;
    case PAYGATE__V1__COMMAND__PUBLISH:
        bus_publish(self->bus, msg->identity, msg->identity_len, h,
                    msg->has_body ? &msg->body : NULL, now);
        break;
    case PAYGATE__V1__COMMAND__SUBSCRIBE:
        bus_subscribe(self->bus, msg->identity, msg->identity_len, h->subscribe, now);
        break;
    case PAYGATE__V1__COMMAND__ACK:
        bus_ack(self->bus, msg->identity, msg->identity_len, h->event, now);
        break;
    case PAYGATE__V1__COMMAND__NACK:
        bus_nack(self->bus, msg->identity, msg->identity_len, h->event, now);
        break;
    case PAYGATE__V1__COMMAND__REPLY:
        registry_reply(self->registry, msg->identity, msg->identity_len, h,
                       msg->has_body ? &msg->body : NULL, now);
        break;
    case PAYGATE__V1__COMMAND__REQUEST:
        if (strncmp(h->service, "broker.", 7) == 0) {
            broker_builtin(self, msg, now);
            break;
        }
        msg->header = NULL; /* the registry owns it now */
        registry_request(self->registry, msg->identity, msg->identity_len, h,
                         msg->has_body ? &msg->body : NULL, now);
        break;
    default:
        break; /* wire_decode admits only the commands above */
    }
}

/* After the registry answered everything it held: for a short while,
 * answer what still arrives (or was already queued in the socket) with
 * UNAVAILABLE/broker_stopping, and let peers read those answers before the
 * connections close (a client socket with ZMQ_IMMEDIATE drops unread
 * messages when its connection goes). Nothing is left unanswered. */
static void broker_drain(broker_t *self)
{
    int64_t until = clock_now_ms() + broker_drain_ms;
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__UNAVAILABLE;
    status.reason = (char *)"broker_stopping";
    status.message = (char *)"broker is shutting down";
    for (int64_t now = clock_now_ms(); now < until; now = clock_now_ms()) {
        zmq_pollitem_t item = {.socket = self->socket, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, (long)(until - now)) <= 0)
            continue;
        wire_message_t msg;
        const char *detail = NULL;
        int rc = wire_recv(self->socket, true, self->config.message_bytes_max, ZMQ_DONTWAIT, &msg,
                           &detail);
        if (rc == WIRE_OK && (msg.header->command == PAYGATE__V1__COMMAND__REQUEST ||
                              msg.header->command == PAYGATE__V1__COMMAND__PUBLISH))
            sink_send_reply(self, msg.identity, msg.identity_len, msg.header->correlation_id,
                            &status, NULL);
        wire_message_clear(&msg);
    }
}

/* Reads and handles the messages waiting on the socket, at most
 * broker_batch_max. Returns true when it stopped with input still waiting
 * (the batch limit, or EINTR), false when the socket was drained. */
static bool broker_read_batch(broker_t *self)
{
    for (int i = 0; i < broker_batch_max; i++) {
        wire_message_t msg;
        const char *detail = NULL;
        int rc = wire_recv(self->socket, true, self->config.message_bytes_max, ZMQ_DONTWAIT, &msg,
                           &detail);
        if (rc < 0) {
            bool drained = errno == EAGAIN;
            wire_message_clear(&msg);
            return !drained; /* EINTR: back to the stop check */
        }
        int64_t now = clock_now_ms();
        if (rc == WIRE_OK)
            broker_handle(self, &msg, now);
        else
            broker_reject(self, &msg, rc, detail);
        wire_message_clear(&msg);
    }
    return true;
}

/* Waits until the socket has a message or the monotonic clock reaches
 * 'until_us'. True when there is a message. (zmq_poll counts whole
 * milliseconds; this waits in microseconds, on the socket's ZMQ_FD, which
 * signals every change of ZMQ_EVENTS.) */
static bool broker_wait_input(broker_t *self, int64_t until_us)
{
    int fd = -1;
    size_t fd_size = sizeof fd;
    if (zmq_getsockopt(self->socket, ZMQ_FD, &fd, &fd_size) != 0)
        return false;
    for (;;) {
        uint32_t events = 0;
        size_t events_size = sizeof events;
        if (zmq_getsockopt(self->socket, ZMQ_EVENTS, &events, &events_size) != 0)
            return false;
        if (events & ZMQ_POLLIN)
            return true;
        int64_t left_us = until_us - clock_now_us();
        if (left_us <= 0)
            return false;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        struct timespec left = {.tv_sec = 0, .tv_nsec = (long)left_us * 1000};
        if (ppoll(&pfd, 1, &left, NULL) < 0 && errno != EINTR)
            return false;
    }
}

int broker_run(broker_t *self)
{
    log_info("broker: serving on %s", self->endpoint);
    while (!atomic_load(&self->stopping)) {
        int64_t now = clock_now_ms();
        int64_t next = registry_tick(self->registry, now);
        int64_t bus_next = bus_tick(self->bus, now);
        if (bus_next < next)
            next = bus_next;
        broker_metrics_tick(self, now);
        if (self->metrics != NULL && self->metrics_next_at < next)
            next = self->metrics_next_at;
        /* The socket; the bus's sync thread's wake-up fd (it only wakes
         * the loop: bus_flush below collects what became durable); the
         * ZAP handler's socket when peers are authenticated. */
        zmq_pollitem_t items[3] = {{.socket = self->socket, .events = ZMQ_POLLIN}};
        int count = 1, zap_index = -1;
        if (bus_sync_fd(self->bus) >= 0)
            items[count++] = (zmq_pollitem_t){.fd = bus_sync_fd(self->bus), .events = ZMQ_POLLIN};
        if (self->auth != NULL) {
            zap_index = count;
            items[count++] =
                (zmq_pollitem_t){.socket = auth_zap_socket(self->auth), .events = ZMQ_POLLIN};
        }
        long timeout = (long)(next - now);
        int ready = zmq_poll(items, count, timeout < 0 ? 0 : timeout);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            log_error("broker: poll failed: %s", zmq_strerror(errno));
            break;
        }
        /* Handshakes first: a connecting peer waits for its answer. */
        if (zap_index >= 0 && (items[zap_index].revents & ZMQ_POLLIN))
            auth_zap_serve(self->auth);
        bool input_waiting = false; /* the batch stopped before the socket was empty */
        if (items[0].revents & ZMQ_POLLIN)
            input_waiting = broker_read_batch(self);
        /* Gathering: when the last sync answered more publishers than have
         * published again since, the others are most likely on their way
         * (each waits for its answer before it publishes again): wait a
         * little for them (at most broker_gather_us, and only while the
         * socket stays quiet), so that one fsync covers them all instead
         * of this one covering the first few and the next the rest. */
        int64_t gather_until_us = 0;
        while (!input_waiting && bus_expects_publishes(self->bus)) {
            if (gather_until_us == 0)
                gather_until_us = clock_now_us() + broker_gather_us;
            if (!broker_wait_input(self, gather_until_us))
                break;
            input_waiting = broker_read_batch(self);
        }
        /* Group commit: each topic is fsynced once for everything appended
         * in this batch (or, on the sync thread, while its previous fsync
         * ran); the publishes are answered (and the deliveries made) once
         * their events are durable. With the socket drained the loop
         * fsyncs itself; with input waiting the sync thread does, and the
         * loop goes on routing (bus_flush). */
        bus_flush(self->bus, input_waiting, clock_now_ms());
    }
    log_info("broker: stopping; answering waiting requests");
    bus_flush_all(self->bus, clock_now_ms());
    registry_shutdown(self->registry, "broker is shutting down");
    broker_drain(self);
    return 0;
}
