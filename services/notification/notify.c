/*
 * notify: from bus events to delivered notifications. See notify.h.
 *
 *   DELIVERs waiting -> decode MoneyEvents -> render -> store_deliver_many
 *   (their Lua scripts pipelined; each atomic)   |
 *        delivered, or seen before: ACK  <-------+------> no answer: that one
 *                                                         alone (store_deliver)
 *                                                         retried 100, 200,
 *                                                         400, 800 ms; then
 *                                                         NACK, and the rest
 *                                                         of the batch too
 *
 * A NACKed event comes back after the broker's NACK delay (1 s) and does
 * not count towards its dead-letter limit, so a Redis outage of any length
 * loses nothing: events wait in the bus and are retried until Redis is
 * back. Per-key order holds meanwhile (the bus holds a user's later
 * events while an earlier one is unacknowledged).
 *
 * Why the short in-handler budget (2 s, not the ack timeout): the
 * consumer runs the handler on its own thread and sends nothing while it
 * runs; the broker expires a consumer it has not heard from for liveness
 * x heartbeat interval (here 3 x 2 s), which would count the delivery
 * towards the dead-letter limit. A batch's pipelined scripts (one Redis
 * timeout, 1 s), then 2 s of retries for one of them (plus at most one
 * more timeout) stay below it: after one fails alone, the rest of the
 * batch are NACKed without trying.
 *
 * An event that can never become a notification (undecodable, unknown
 * type, bad ids) is logged and acknowledged: retrying cannot fix it.
 */
#include "notify.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock/clock.h"
#include "events.pb-c.h"
#include "events/consumer.h"
#include "log/log.h"
#include "render.h"
#include "store.h"

enum {
    notify_redis_timeout_ms = 1000,      /* connect and each command */
    notify_retry_first_ms = 100,         /* in-handler retries: 100, 200, 400, 800 ms */
    notify_event_budget_ms = 2000,       /* all attempts for one event */
    notify_refused_retry_ms = 5000,      /* the broker refused the subscription */
    notify_heartbeat_interval_ms = 2000, /* the consumer's; the broker expires after 3 */
    notify_max_in_flight = 16,
    notify_sleep_slice_ms = 20,
};

static const char *const notify_topics[] = {"payments", "wallet", NULL};

struct notifier {
    char broker_endpoint[256];
    char consumer_id[128];
    struct metrics *metrics;
    store_t *store; /* used by the notifier's thread only */
    pthread_mutex_t mutex;
    events_consumer_t *consumer; /* the running one, under 'mutex' */
    atomic_int stopping;
    uint64_t delivered, duplicates, dropped, refused;
};

notifier_t *notifier_new(const notifier_config_t *config)
{
    notifier_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    snprintf(self->broker_endpoint, sizeof self->broker_endpoint, "%s", config->broker_endpoint);
    self->metrics = config->metrics;
    if (config->consumer_id != NULL)
        snprintf(self->consumer_id, sizeof self->consumer_id, "%s", config->consumer_id);
    self->store = store_new(config->redis_host, config->redis_port, notify_redis_timeout_ms);
    if (self->store == NULL || pthread_mutex_init(&self->mutex, NULL) != 0) {
        store_destroy(&self->store);
        free(self);
        return NULL;
    }
    return self;
}

void notifier_destroy(notifier_t **self)
{
    if (*self == NULL)
        return;
    store_destroy(&(*self)->store);
    pthread_mutex_destroy(&(*self)->mutex);
    free(*self);
    *self = NULL;
}

void notifier_stop(notifier_t *self)
{
    atomic_store(&self->stopping, 1);
    pthread_mutex_lock(&self->mutex);
    if (self->consumer != NULL)
        events_consumer_stop(self->consumer);
    pthread_mutex_unlock(&self->mutex);
}

/* Sleeps 'ms', waking early on stop. False when stopping. */
static bool notify_sleep(notifier_t *self, int64_t ms)
{
    int64_t until = clock_now_ms() + ms;
    while (!atomic_load(&self->stopping) && clock_now_ms() < until)
        usleep(notify_sleep_slice_ms * 1000);
    return !atomic_load(&self->stopping);
}

/* Delivers 'n' (as 'json'), retrying with backoff within the event's
 * budget. True when it is delivered now or was before. */
static bool notify_deliver(notifier_t *self, const notification_t *n, const char *json,
                           const events_delivery_t *delivery)
{
    int64_t started = clock_now_ms();
    int64_t backoff = notify_retry_first_ms;
    for (;;) {
        store_result_t result = store_deliver(self->store, n->id, n->user_id, json);
        if (result == STORE_OK) {
            self->delivered++;
            log_debug("notify: %s -> %s (%s offset %" PRIu64 ")", n->id, n->user_id,
                      delivery->topic, delivery->offset);
            return true;
        }
        if (result == STORE_DUPLICATE) {
            self->duplicates++;
            log_debug("notify: %s was delivered before (delivery %" PRIu32 ")", n->id,
                      delivery->delivery_count);
            return true;
        }
        if (clock_now_ms() - started + backoff > notify_event_budget_ms ||
            !notify_sleep(self, backoff))
            return false;
        backoff *= 2;
    }
}

/* A delivery on its way: rendered, to be stored. */
typedef struct {
    Paygate__V1__MoneyEvent *event; /* NULL: not a MoneyEvent (freed by notify_handle_batch) */
    notification_t n;
    char json[notification_json_bytes_max + 1];
    bool deliver;     /* to store: 'n' and 'json' are set */
    bool acknowledge; /* otherwise: the answer */
} notify_item_t;

/* Decodes and renders 'delivery' into '*item': to deliver, or answered
 * (dropped, stopping, no JSON). Logs as the event's request. */
static void notify_prepare(notifier_t *self, const events_delivery_t *delivery, notify_item_t *item)
{
    item->deliver = false;
    item->acknowledge = true;
    item->event = NULL;
    if (atomic_load(&self->stopping)) {
        item->acknowledge = false; /* stopping: NACK, another member (or we, later) takes it */
        return;
    }
    Paygate__V1__MoneyEvent *event = item->event =
        paygate__v1__money_event__unpack(NULL, delivery->payload_len, delivery->payload);
    if (event == NULL) {
        self->dropped++;
        log_error("notify: %s offset %" PRIu64 " (%s) is not a MoneyEvent; dropped",
                  delivery->topic, delivery->offset, delivery->event_id);
        return;
    }
    log_set_request_id(event->request_id); /* the request that caused the event */
    /* The bus id and the event's own id are the same by contract; the
     * event's wins when both are set. */
    Paygate__V1__MoneyEvent view = *event;
    if (view.event_id == NULL || view.event_id[0] == '\0')
        view.event_id = (char *)delivery->event_id;
    else if (strcmp(view.event_id, delivery->event_id) != 0)
        log_warn("notify: bus event id %s carries MoneyEvent %s", delivery->event_id,
                 view.event_id);
    const char *problem = NULL;
    if (!notification_render(&view, delivery->timestamp_ms, &item->n, &problem)) {
        self->dropped++;
        log_error("notify: %s offset %" PRIu64 " (%s) cannot be notified: %s; dropped",
                  delivery->topic, delivery->offset, delivery->event_id, problem);
    } else if (notification_to_json(&item->n, item->json, sizeof item->json) < 0) {
        log_error("notify: %s: cannot build its JSON; left for redelivery", item->n.id);
        item->acknowledge = false;
    } else {
        item->deliver = true;
    }
    log_set_request_id(NULL);
}

/* The consumer's batch handler: the notifications of the events waiting
 * are stored together (store_deliver_many: one round trip to Redis);
 * one whose answer did not come goes again alone, with retries
 * (notify_deliver). acknowledge[i]: event i is notified (now or before)
 * or can never be. */
static void notify_handle_batch(const events_delivery_t *deliveries, size_t count,
                                bool *acknowledge, void *state)
{
    notifier_t *self = state;
    notify_item_t *items = calloc(count, sizeof *items);
    store_delivery_t *batch = calloc(count, sizeof *batch);
    store_result_t *results = calloc(count, sizeof *results);
    size_t *index = calloc(count, sizeof *index);
    if (items == NULL || batch == NULL || results == NULL || index == NULL) {
        for (size_t i = 0; i < count; i++)
            acknowledge[i] = false; /* out of memory: delivered again later */
        free(items), free(batch), free(results), free(index);
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        notify_prepare(self, &deliveries[i], &items[i]);
        acknowledge[i] = items[i].acknowledge;
        if (items[i].deliver) {
            batch[n] = (store_delivery_t){items[i].n.id, items[i].n.user_id, items[i].json};
            index[n++] = i;
        }
    }
    if (n > 0)
        store_deliver_many(self->store, batch, n, results);
    bool redis_down = false; /* one went alone and failed: the rest wait for redelivery */
    for (size_t k = 0; k < n; k++) {
        size_t i = index[k];
        const notify_item_t *item = &items[i];
        log_set_request_id(item->event->request_id);
        if (results[k] == STORE_OK) {
            self->delivered++;
            log_debug("notify: %s -> %s (%s offset %" PRIu64 ")", item->n.id, item->n.user_id,
                      deliveries[i].topic, deliveries[i].offset);
        } else if (results[k] == STORE_DUPLICATE) {
            self->duplicates++;
            log_debug("notify: %s was delivered before (delivery %" PRIu32 ")", item->n.id,
                      deliveries[i].delivery_count);
        } else if (redis_down || !notify_deliver(self, &item->n, item->json, &deliveries[i])) {
            redis_down = true;
            self->refused++;
            log_debug("notify: %s not delivered (Redis unavailable); NACK", item->n.id);
            acknowledge[i] = false;
        }
        log_set_request_id(NULL);
    }
    for (size_t i = 0; i < count; i++)
        if (items[i].event != NULL)
            paygate__v1__money_event__free_unpacked(items[i].event, NULL);
    free(items), free(batch), free(results), free(index);
}

/* One consumer's life: subscribe, consume until stopped or refused.
 * Returns events_consumer_run's result, or -1 when the consumer could not
 * be made. */
static int notify_consume(notifier_t *self)
{
    events_consumer_config_t config = {
        .endpoint = self->broker_endpoint,
        .group = "notification",
        .topics = notify_topics,
        .consumer_id = self->consumer_id[0] ? self->consumer_id : NULL,
        .max_in_flight = notify_max_in_flight,
        .heartbeat_interval_ms = notify_heartbeat_interval_ms,
        .start_at_end = false, /* a new group notifies the retained history once */
        .batch_handler = notify_handle_batch,
        .state = self,
        .metrics = self->metrics,
    };
    pthread_mutex_lock(&self->mutex);
    if (!atomic_load(&self->stopping))
        self->consumer = events_consumer_new(&config);
    events_consumer_t *consumer = self->consumer;
    pthread_mutex_unlock(&self->mutex);
    if (consumer == NULL)
        return atomic_load(&self->stopping) ? 0 : -1;
    int rc = events_consumer_run(consumer);
    pthread_mutex_lock(&self->mutex);
    events_consumer_destroy(&self->consumer);
    pthread_mutex_unlock(&self->mutex);
    return rc;
}

void notifier_run(notifier_t *self)
{
    while (!atomic_load(&self->stopping)) {
        if (notify_consume(self) == 0)
            continue; /* stopped */
        /* e.g. a broker without an event bus: the List RPC still serves */
        log_error("notify: cannot consume the event bus; trying again in %d ms",
                  notify_refused_retry_ms);
        if (!notify_sleep(self, notify_refused_retry_ms))
            break;
    }
    log_info("notify: stopped; %" PRIu64 " delivered, %" PRIu64 " duplicates, %" PRIu64
             " dropped, %" PRIu64 " refused while Redis was unavailable",
             self->delivered, self->duplicates, self->dropped, self->refused);
}
