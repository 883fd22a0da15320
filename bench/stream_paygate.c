/*
 * stream_paygate: our broker's event bus as a stream_system_t (see
 * stream_system.h), through the clients the services use:
 *
 *   publisher   one lib/rpc client (a DEALER) per publisher, publishing
 *               with rpc_client_publish: PUBLISH, then wait for the REPLY
 *               the broker sends after the fsync of the group commit
 *   consumer    one lib/events consumer (its own socket, context and
 *               thread), acknowledging each event after the callback
 *
 * Events are keyless, so the bus's per-key ordering never holds one back.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "events/consumer.h"
#include "rpc/rpc.h"
#include "stream_system.h"

enum { paygate_probe_deadline_ms = 500 };

typedef struct {
    stream_system_t base; /* first: a stream_system_t * is a paygate_system_t * */
    char endpoint[256];
    void *zmq_ctx; /* shared by the publishers (each has its own socket) */
} paygate_system_t;

struct stream_publisher {
    rpc_client_t *client;
    char topic[stream_name_bytes_max + 1];
};

struct stream_consumer {
    events_consumer_t *consumer;
    stream_event_fn on_event;
    void *state;
    char topic[stream_name_bytes_max + 1];
    char group[stream_name_bytes_max + 1];
    char consumer_id[stream_name_bytes_max + 16];
    const char *topics[2]; /* { topic, NULL } for the consumer's config */
};

/* True when the broker answers a discovery call. */
static bool paygate_ready(stream_system_t *base)
{
    paygate_system_t *self = (paygate_system_t *)base;
    rpc_client_t *client = rpc_client_new(self->zmq_ctx, self->endpoint);
    if (client == NULL)
        return false;
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    rpc_call_opts_t opts = {.deadline_ms = paygate_probe_deadline_ms, .principal = "bench"};
    ProtobufCMessage *reply = NULL;
    Paygate__V1__Code code =
        rpc_client_call(client, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &reply, &opts, NULL);
    if (reply != NULL)
        protobuf_c_message_free_unpacked(reply, NULL);
    rpc_client_destroy(&client);
    return code == PAYGATE__V1__CODE__OK;
}

static stream_publisher_t *paygate_publisher_new(stream_system_t *base, const char *stream)
{
    paygate_system_t *self = (paygate_system_t *)base;
    stream_publisher_t *publisher = calloc(1, sizeof *publisher);
    if (publisher == NULL)
        return NULL;
    snprintf(publisher->topic, sizeof publisher->topic, "%s", stream);
    publisher->client = rpc_client_new(self->zmq_ctx, self->endpoint);
    if (publisher->client == NULL) {
        fprintf(stderr, "bench: paygate: cannot create a client for %s\n", self->endpoint);
        free(publisher);
        return NULL;
    }
    return publisher;
}

static int paygate_publish(stream_publisher_t *publisher, const char *event_id, const void *payload,
                           size_t payload_len, char error[stream_error_bytes_max])
{
    uint64_t offset = 0;
    bool duplicate = false;
    rpc_status_t status;
    Paygate__V1__Code code =
        rpc_client_publish(publisher->client, publisher->topic, event_id, NULL, payload,
                           payload_len, stream_publish_deadline_ms, &offset, &duplicate, &status);
    if (code != PAYGATE__V1__CODE__OK) {
        snprintf(error, stream_error_bytes_max, "publish answered %d (%.24s): %.100s", (int)code,
                 status.reason, status.message);
        return -1;
    }
    if (duplicate) {
        /* Every event id is new: a duplicate means the bus mixed them up. */
        snprintf(error, stream_error_bytes_max, "event %s acknowledged as a duplicate", event_id);
        return -1;
    }
    return 0;
}

static void paygate_publisher_destroy(stream_publisher_t **publisher)
{
    if (*publisher == NULL)
        return;
    rpc_client_destroy(&(*publisher)->client);
    free(*publisher);
    *publisher = NULL;
}

/* The lib/events handler: hands the payload to the load's callback. */
static bool paygate_on_delivery(const events_delivery_t *event, void *state)
{
    stream_consumer_t *consumer = state;
    return consumer->on_event(event->payload, event->payload_len, consumer->state);
}

static stream_consumer_t *paygate_consumer_new(stream_system_t *base, const char *stream,
                                               const char *group, unsigned max_in_flight,
                                               stream_event_fn on_event, void *state)
{
    paygate_system_t *self = (paygate_system_t *)base;
    stream_consumer_t *consumer = calloc(1, sizeof *consumer);
    if (consumer == NULL)
        return NULL;
    consumer->on_event = on_event;
    consumer->state = state;
    snprintf(consumer->topic, sizeof consumer->topic, "%s", stream);
    snprintf(consumer->group, sizeof consumer->group, "%s", group);
    snprintf(consumer->consumer_id, sizeof consumer->consumer_id, "%s-consumer", stream);
    consumer->topics[0] = consumer->topic;
    consumer->topics[1] = NULL;
    events_consumer_config_t config = {
        .endpoint = self->endpoint,
        .group = consumer->group,
        .topics = consumer->topics,
        .consumer_id = consumer->consumer_id,
        .max_in_flight = max_in_flight,
        .handler = paygate_on_delivery,
        .state = consumer,
    };
    consumer->consumer = events_consumer_new(&config);
    if (consumer->consumer == NULL) {
        fprintf(stderr, "bench: paygate: cannot create a consumer of %s\n", stream);
        free(consumer);
        return NULL;
    }
    return consumer;
}

static int paygate_consumer_run(stream_consumer_t *consumer)
{
    int rc = events_consumer_run(consumer->consumer);
    if (rc != 0)
        fprintf(stderr, "bench: paygate: the consumer of %s failed (see the log above)\n",
                consumer->topic);
    return rc;
}

static void paygate_consumer_stop(stream_consumer_t *consumer)
{
    events_consumer_stop(consumer->consumer);
}

static void paygate_consumer_destroy(stream_consumer_t **consumer)
{
    if (*consumer == NULL)
        return;
    events_consumer_destroy(&(*consumer)->consumer);
    free(*consumer);
    *consumer = NULL;
}

/* The bus has no call to delete a topic: it stays until retention. */
static void paygate_stream_drop(stream_system_t *base, const char *stream)
{
    (void)base;
    (void)stream;
}

static void paygate_destroy(stream_system_t **base)
{
    if (*base == NULL)
        return;
    paygate_system_t *self = (paygate_system_t *)*base;
    if (self->zmq_ctx != NULL)
        zmq_ctx_term(self->zmq_ctx);
    free(self);
    *base = NULL;
}

stream_system_t *stream_paygate_new(const char *endpoint)
{
    paygate_system_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->base = (stream_system_t){
        .name = "paygate",
        .ready = paygate_ready,
        .publisher_new = paygate_publisher_new,
        .publish = paygate_publish,
        .publisher_destroy = paygate_publisher_destroy,
        .consumer_new = paygate_consumer_new,
        .consumer_run = paygate_consumer_run,
        .consumer_stop = paygate_consumer_stop,
        .consumer_destroy = paygate_consumer_destroy,
        .stream_drop = paygate_stream_drop,
        .destroy = paygate_destroy,
    };
    snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    self->zmq_ctx = zmq_ctx_new();
    if (self->zmq_ctx == NULL) {
        free(self);
        return NULL;
    }
    return &self->base;
}
