/*
 * consumer: a consumer group member. See consumer.h.
 *
 *   connect -> SUBSCRIBE (each topic) -> DELIVER -> handler -> ACK
 *                   (the DELIVERs waiting, together: batch handler -> ACKs)
 *      ^                                  HEARTBEAT while idle
 *      |  broker silent for liveness x interval: close, back off, again
 *      +--  DISCONNECT (UNAVAILABLE): SUBSCRIBE again
 */
#include "consumer.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "clock/clock.h"
#include "curve/curve.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "wire/wire.h"

enum {
    consumer_poll_max_ms = 100,
    consumer_backoff_max_ms = 8000,
    consumer_message_bytes_max = 2 * 1024 * 1024,
    consumer_topics_max = 16,
};

struct events_consumer {
    events_consumer_config_t config;
    char endpoint[256];
    char group[wire_topic_bytes_max + 1];
    char topics[consumer_topics_max][wire_topic_bytes_max + 1];
    size_t topic_count;
    char consumer_id[wire_instance_bytes_max + 1];
    void *zmq_ctx;
    void *socket;
    int64_t last_recv_at;
    int64_t last_send_at;
    int64_t backoff_ms;
    atomic_int stopping;
    uint64_t handled;
    metrics_family_t *consumed; /* paygate_events_consumed_total, NULL: none */
};

events_consumer_t *events_consumer_new(const events_consumer_config_t *config)
{
    if (config->endpoint == NULL || (config->handler == NULL && config->batch_handler == NULL) ||
        config->topics == NULL || !wire_topic_name_valid(config->group)) {
        log_error("events: endpoint, handler, topics and a valid group are required");
        return NULL;
    }
    if (config->identity == NULL && curve_process_identity() == NULL)
        return NULL; /* no broker credentials: curve logged which */
    events_consumer_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    if (self->config.identity == NULL)
        self->config.identity = curve_process_identity();
    snprintf(self->endpoint, sizeof self->endpoint, "%s", config->endpoint);
    snprintf(self->group, sizeof self->group, "%s", config->group);
    const char *const consumed_labels[] = {"topic", "group", "outcome", NULL};
    self->consumed = metrics_counter_family(
        config->metrics, "paygate_events_consumed_total",
        "Events delivered to this process's consumers and answered: acked (handled) or nacked "
        "(delivered again later), by topic and group.",
        consumed_labels);
    for (size_t i = 0; config->topics[i] != NULL; i++) {
        if (i == consumer_topics_max || !wire_topic_name_valid(config->topics[i])) {
            log_error("events: topic '%s' is invalid or one too many", config->topics[i]);
            free(self);
            return NULL;
        }
        snprintf(self->topics[i], sizeof self->topics[i], "%s", config->topics[i]);
        self->topic_count++;
    }
    if (config->consumer_id != NULL && config->consumer_id[0] != '\0') {
        snprintf(self->consumer_id, sizeof self->consumer_id, "%s", config->consumer_id);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        snprintf(self->consumer_id, sizeof self->consumer_id, "%.48s-%.40s-%d", self->group, host,
                 (int)getpid());
    }
    events_consumer_config_t *c = &self->config;
    if (c->max_in_flight == 0)
        c->max_in_flight = 16;
    if (c->heartbeat_interval_ms == 0)
        c->heartbeat_interval_ms = 1000;
    if (c->heartbeat_liveness == 0)
        c->heartbeat_liveness = 3;
    return self;
}

void events_consumer_destroy(events_consumer_t **self)
{
    if (*self == NULL)
        return;
    free(*self);
    *self = NULL;
}

void events_consumer_stop(events_consumer_t *self)
{
    atomic_store(&self->stopping, 1);
}

static int consumer_send(events_consumer_t *self, const Paygate__V1__Header *header)
{
    int rc = wire_send(self->socket, NULL, 0, header, NULL, ZMQ_DONTWAIT);
    if (rc == 0)
        self->last_send_at = clock_now_ms();
    return rc;
}

/* SUBSCRIBE to every topic. */
static void consumer_subscribe(events_consumer_t *self)
{
    for (size_t i = 0; i < self->topic_count; i++) {
        Paygate__V1__Subscribe sub = PAYGATE__V1__SUBSCRIBE__INIT;
        sub.topic = self->topics[i];
        sub.group = self->group;
        sub.consumer_id = self->consumer_id;
        sub.max_in_flight = self->config.max_in_flight;
        sub.heartbeat_interval_ms = self->config.heartbeat_interval_ms;
        sub.start_at_end = self->config.start_at_end;
        Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
        header.command = PAYGATE__V1__COMMAND__SUBSCRIBE;
        header.subscribe = &sub;
        consumer_send(self, &header);
    }
}

static void consumer_close(events_consumer_t *self)
{
    if (self->socket != NULL) {
        int zero = 0;
        zmq_setsockopt(self->socket, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(self->socket);
        self->socket = NULL;
    }
}

static int consumer_connect(events_consumer_t *self)
{
    self->socket = zmq_socket(self->zmq_ctx, ZMQ_DEALER);
    if (self->socket == NULL)
        return -1;
    int linger = 500, ivl = 100, ivl_max = 1000;
    int64_t maxmsg = consumer_message_bytes_max;
    zmq_setsockopt(self->socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(self->socket, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(self->socket, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    zmq_setsockopt(self->socket, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (curve_client_apply(self->config.identity, self->socket) != 0 ||
        zmq_connect(self->socket, self->endpoint) != 0) {
        log_error("events %s: cannot connect to %s: %s", self->consumer_id, self->endpoint,
                  zmq_strerror(errno));
        return -1;
    }
    self->last_recv_at = clock_now_ms();
    consumer_subscribe(self);
    return 0;
}

/* The delivery a DELIVER message carries (pointing into 'msg'). */
static events_delivery_t consumer_delivery(const events_consumer_t *self, const wire_message_t *msg)
{
    const Paygate__V1__Event *e = msg->header->event;
    return (events_delivery_t){
        .topic = e->topic,
        .group = e->group ? e->group : self->group,
        .event_id = e->event_id,
        .key = e->key ? e->key : "",
        .offset = e->offset,
        .timestamp_ms = e->timestamp_ms,
        .delivery_count = e->delivery_count,
        .payload = msg->has_body ? zmq_msg_data((zmq_msg_t *)&msg->body) : (const uint8_t *)"",
        .payload_len = msg->has_body ? zmq_msg_size((zmq_msg_t *)&msg->body) : 0,
    };
}

/* Sends ACK for 'delivery' when 'handled', else NACK. */
static void consumer_answer(events_consumer_t *self, const events_delivery_t *delivery,
                            bool handled)
{
    Paygate__V1__Event ack_event = PAYGATE__V1__EVENT__INIT;
    ack_event.topic = (char *)delivery->topic;
    ack_event.group = (char *)delivery->group;
    ack_event.offset = delivery->offset;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    /* NACK: "not now" (redelivered after the broker's delay, and not
     * counted towards its dead-letter limit) */
    header.command = handled ? PAYGATE__V1__COMMAND__ACK : PAYGATE__V1__COMMAND__NACK;
    header.event = &ack_event;
    /* counted before the answer leaves: whoever sees the broker's lag
     * fall also sees the count */
    const char *const values[] = {delivery->topic, self->group, handled ? "acked" : "nacked"};
    metrics_counter_add(metrics_series(self->consumed, values), 1);
    if (consumer_send(self, &header) != 0)
        log_warn("events %s: %s of %s offset %llu not sent: %s", self->consumer_id,
                 handled ? "ACK" : "NACK", delivery->topic, (unsigned long long)delivery->offset,
                 zmq_strerror(errno));
    if (handled)
        self->handled++;
}

/* Runs the handler (or the batch handler, once for all) for the
 * 'count' DELIVERs in 'msgs', answers each, and clears them. */
static void consumer_deliver(events_consumer_t *self, wire_message_t *msgs, size_t count)
{
    if (count == 0)
        return;
    events_delivery_t deliveries[events_batch_max];
    bool handled[events_batch_max] = {0};
    for (size_t i = 0; i < count; i++)
        deliveries[i] = consumer_delivery(self, &msgs[i]);
    if (self->config.batch_handler != NULL) {
        self->config.batch_handler(deliveries, count, handled, self->config.state);
    } else {
        for (size_t i = 0; i < count; i++)
            handled[i] = self->config.handler(&deliveries[i], self->config.state);
    }
    for (size_t i = 0; i < count; i++) {
        consumer_answer(self, &deliveries[i], handled[i]);
        wire_message_clear(&msgs[i]);
    }
}

/* Handles what the broker sent. Returns false on a permanent refusal. */
static bool consumer_handle(events_consumer_t *self, const wire_message_t *msg)
{
    const Paygate__V1__Header *h = msg->header;
    switch (h->command) {
    case PAYGATE__V1__COMMAND__HEARTBEAT:
        return true;
    case PAYGATE__V1__COMMAND__DISCONNECT: {
        Paygate__V1__Code code = h->status ? h->status->code : PAYGATE__V1__CODE__OK;
        const char *why = h->status && h->status->message ? h->status->message : "";
        if (code == PAYGATE__V1__CODE__UNIMPLEMENTED ||
            code == PAYGATE__V1__CODE__PERMISSION_DENIED ||
            code == PAYGATE__V1__CODE__INVALID_ARGUMENT) {
            log_error("events %s: broker refused the subscription: %s", self->consumer_id, why);
            return false;
        }
        if (code == PAYGATE__V1__CODE__RESOURCE_EXHAUSTED) {
            log_warn("events %s: broker is full (%s); backing off", self->consumer_id, why);
            self->last_recv_at = 0; /* reconnect after a backoff */
            return true;
        }
        log_info("events %s: broker asked to subscribe again (%s)", self->consumer_id, why);
        consumer_subscribe(self);
        return true;
    }
    default:
        return true;
    }
}

int events_consumer_run(events_consumer_t *self)
{
    const events_consumer_config_t *c = &self->config;
    self->zmq_ctx = zmq_ctx_new();
    if (self->zmq_ctx == NULL || consumer_connect(self) != 0) {
        consumer_close(self);
        if (self->zmq_ctx != NULL)
            zmq_ctx_term(self->zmq_ctx);
        return -1;
    }
    log_info("events %s: consuming %zu topics as group %s", self->consumer_id, self->topic_count,
             self->group);
    int64_t silence_max_ms = (int64_t)c->heartbeat_interval_ms * c->heartbeat_liveness;
    int result = 0;
    while (!atomic_load(&self->stopping)) {
        int64_t now = clock_now_ms();
        if (now - self->last_recv_at > silence_max_ms) {
            self->backoff_ms =
                self->backoff_ms == 0 ? c->heartbeat_interval_ms / 4 + 1 : self->backoff_ms * 2;
            if (self->backoff_ms > consumer_backoff_max_ms)
                self->backoff_ms = consumer_backoff_max_ms;
            log_warn("events %s: broker silent; reconnecting in %lld ms", self->consumer_id,
                     (long long)self->backoff_ms);
            consumer_close(self);
            int64_t until = clock_now_ms() + self->backoff_ms;
            while (!atomic_load(&self->stopping) && clock_now_ms() < until)
                usleep(20 * 1000);
            if (atomic_load(&self->stopping))
                break;
            if (consumer_connect(self) != 0) {
                result = -1;
                break;
            }
            continue;
        }
        if (now - self->last_send_at >= c->heartbeat_interval_ms) {
            Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
            header.command = PAYGATE__V1__COMMAND__HEARTBEAT;
            consumer_send(self, &header);
        }
        zmq_pollitem_t item = {.socket = self->socket, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, consumer_poll_max_ms) <= 0)
            continue;
        /* What is waiting: DELIVERs are kept and handled together (up to
         * the batch's size), anything else is handled in its turn, after
         * the DELIVERs that came before it. */
        bool fatal = false;
        wire_message_t batch[events_batch_max];
        size_t batched = 0, batch_max = c->max_in_flight < events_batch_max ? c->max_in_flight
                                                                            : events_batch_max;
        for (int i = 0; i < 64 && !fatal; i++) {
            wire_message_t *msg = &batch[batched];
            const char *detail = NULL;
            int rc = wire_recv(self->socket, false, consumer_message_bytes_max, ZMQ_DONTWAIT, msg,
                               &detail);
            if (rc < 0) {
                wire_message_clear(msg);
                break;
            }
            self->last_recv_at = clock_now_ms();
            self->backoff_ms = 0;
            if (rc == WIRE_OK && msg->header->command == PAYGATE__V1__COMMAND__DELIVER) {
                if (++batched == batch_max) {
                    consumer_deliver(self, batch, batched);
                    batched = 0;
                }
                continue;
            }
            consumer_deliver(self, batch, batched); /* clears slots before 'msg' */
            batched = 0;
            if (rc == WIRE_OK)
                fatal = !consumer_handle(self, msg);
            else
                log_warn("events %s: malformed message from broker: %s", self->consumer_id, detail);
            wire_message_clear(msg);
        }
        consumer_deliver(self, batch, batched);
        if (fatal) {
            result = -1;
            break;
        }
    }
    if (self->socket != NULL && result == 0) {
        Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
        header.command = PAYGATE__V1__COMMAND__DISCONNECT;
        consumer_send(self, &header);
    }
    consumer_close(self);
    zmq_ctx_term(self->zmq_ctx);
    self->zmq_ctx = NULL;
    log_info("events %s: stopped after %llu events", self->consumer_id,
             (unsigned long long)self->handled);
    return result;
}
