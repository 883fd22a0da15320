/*
 * consumer: receiving events from the broker's event bus as a member of a
 * consumer group (see broker/README.md, "Event bus").
 *
 * One consumer is one socket and one thread: it subscribes its group to
 * each topic, calls the handler for every delivered event, and
 * acknowledges the event when the handler returns true (NACK when it
 * returns false). An event that is not acknowledged is delivered again
 * (to this or another member), so handlers must be idempotent: the event id
 * identifies an event across redeliveries. The consumer heartbeats, and
 * after a broker restart or silence it reconnects and subscribes again.
 */
#ifndef PAYGATE_EVENTS_CONSUMER_H
#define PAYGATE_EVENTS_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "curve/curve.h"

typedef struct {
    const char *topic;
    const char *group;
    const char *event_id;
    const char *key;
    uint64_t offset;
    int64_t timestamp_ms; /* when the broker stored it (Unix ms) */
    uint32_t delivery_count;
    const uint8_t *payload;
    size_t payload_len;
} events_delivery_t;

/* Handles one event; returns true to acknowledge it, false to refuse it
 * for now (a dependency is down): the consumer sends NACK and the broker
 * delivers it again after its NACK delay, without counting the attempt
 * towards its dead-letter limit. An event that can never be handled
 * (malformed) should be logged and acknowledged. A consumer that crashes
 * or hangs on an event makes it count: after the broker's maximum
 * deliveries it goes to the dead-letter topic. */
typedef bool (*events_handler_fn)(const events_delivery_t *event, void *state);

/* Handles 'count' (1..events_batch_max) events at once: sets
 * 'acknowledge[i]' as events_handler_fn answers for event i. The events
 * are those the broker had delivered by the time the consumer looked
 * (while the batch before was being handled, say): never two with the
 * same non-empty key, since the broker holds a key's next event back
 * until the one before is acknowledged. Each is acknowledged (or refused)
 * on its own, so a handler may still answer event by event. */
typedef void (*events_batch_handler_fn)(const events_delivery_t *events, size_t count,
                                        bool *acknowledge, void *state);

enum { events_batch_max = 64 };

typedef struct {
    const char *endpoint;           /* broker */
    const char *group;              /* consumer group name */
    const char *const *topics;      /* NULL-ended */
    const char *consumer_id;        /* NULL: "<group>-<host>-<pid>" */
    uint32_t max_in_flight;         /* unacknowledged events at once; 0: 16 */
    uint32_t heartbeat_interval_ms; /* 0: 1000 */
    uint32_t heartbeat_liveness;    /* 0: 3 */
    bool start_at_end;              /* a new group skips history */
    events_handler_fn handler;
    /* When set, events already waiting are handed over together through
     * it (up to max_in_flight and events_batch_max); 'handler' is then
     * not called and may be NULL. */
    events_batch_handler_fn batch_handler;
    void *state;
    /* Where to count events (paygate_events_consumed_total{topic,group,
     * outcome}); NULL: not counted. Must outlive the consumer. */
    struct metrics *metrics;
    /* CURVE identity towards the broker; NULL: the process's
     * (curve_process_identity). */
    const curve_identity_t *identity;
} events_consumer_config_t;

typedef struct events_consumer events_consumer_t;

/* Checks 'config'; NULL, after logging why, when it is invalid. */
events_consumer_t *events_consumer_new(const events_consumer_config_t *config);

/* Consumes until events_consumer_stop() (or a permanent refusal by the
 * broker). Returns 0 on a clean stop, -1 on a fatal error. */
int events_consumer_run(events_consumer_t *self);

/* Asks a running consumer to stop. Async-signal-safe. */
void events_consumer_stop(events_consumer_t *self);

/* Frees the consumer and sets '*self' to NULL. */
void events_consumer_destroy(events_consumer_t **self);

#endif
