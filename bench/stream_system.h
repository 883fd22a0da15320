/*
 * stream_system: one durable event stream, as bench_event_bus drives it.
 *
 * The benchmark runs the same load (stream_load.c) against two systems,
 * our broker's event bus (stream_paygate.c) and Redis Streams
 * (stream_redis.c), through this table of operations:
 *
 *   publisher   one connection; publishes one event and waits for the
 *               system's answer, which comes only once the event is on
 *               disk (fsync). Never batches or pipelines publishes: the
 *               only batching allowed is what the server does across
 *               connections (group commit).
 *   consumer    one member of one consumer group; hands every event to a
 *               callback on the consumer's own thread, and acknowledges it
 *               to the system when the callback returns true.
 *
 * Each implementation uses the system's own client library the way an
 * application would. A system never starts or stops the server process:
 * bench/event_bus.c does that.
 *
 * Threads: publishers and consumers are not thread-safe; each is used by
 * one thread at a time (it may be created on another). consumer_stop may
 * be called from any thread while consumer_run runs.
 */
#ifndef BENCH_STREAM_SYSTEM_H
#define BENCH_STREAM_SYSTEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    stream_name_bytes_max = 48,   /* stream (topic) and group names */
    stream_error_bytes_max = 160, /* one error message */
    stream_publish_deadline_ms = 10000,
};

/* Called on the consumer's thread for each delivered event; returns true
 * to acknowledge it. */
typedef bool (*stream_event_fn)(const uint8_t *payload, size_t payload_len, void *state);

typedef struct stream_publisher stream_publisher_t;
typedef struct stream_consumer stream_consumer_t;
typedef struct stream_system stream_system_t;

struct stream_system {
    const char *name; /* "paygate", "redis": the table's first column */

    /* True when the server answers (one probe, at most ~500 ms). */
    bool (*ready)(stream_system_t *self);

    /* A new publisher connection for stream 'stream'; NULL after saying
     * why. */
    stream_publisher_t *(*publisher_new)(stream_system_t *self, const char *stream);

    /* Publishes 'payload' with the unique 'event_id' and waits up to
     * stream_publish_deadline_ms for the durable acknowledgement. Returns
     * 0 when acknowledged, or -1 with the reason in 'error'. */
    int (*publish)(stream_publisher_t *publisher, const char *event_id, const void *payload,
                   size_t payload_len, char error[stream_error_bytes_max]);

    /* Closes the publisher and sets '*publisher' to NULL. */
    void (*publisher_destroy)(stream_publisher_t **publisher);

    /* A consumer of 'stream' in the new group 'group', which starts at the
     * beginning of the stream and allows 'max_in_flight' unacknowledged
     * events. NULL after saying why. */
    stream_consumer_t *(*consumer_new)(stream_system_t *self, const char *stream, const char *group,
                                       unsigned max_in_flight, stream_event_fn on_event,
                                       void *state);

    /* Consumes until consumer_stop. Returns 0 on a clean stop, -1 after
     * saying why on a fatal error. */
    int (*consumer_run)(stream_consumer_t *consumer);

    /* Asks a running consumer to stop (any thread). */
    void (*consumer_stop)(stream_consumer_t *consumer);

    /* Frees a consumer that is not running and sets '*consumer' to NULL. */
    void (*consumer_destroy)(stream_consumer_t **consumer);

    /* Frees the space a finished run's stream takes, where the system can
     * (Redis: DEL, so memory stays flat over the runs; our bus keeps
     * topics until retention). */
    void (*stream_drop)(stream_system_t *self, const char *stream);

    /* Closes the system and sets '*self' to NULL. */
    void (*destroy)(stream_system_t **self);
};

/* Our broker's event bus at 'endpoint' (rpc_client_publish and
 * lib/events). NULL on error. */
stream_system_t *stream_paygate_new(const char *endpoint);

/* Redis Streams at 127.0.0.1:'port' (XADD, XREADGROUP, XACK through
 * hiredis). NULL on error. */
stream_system_t *stream_redis_new(uint16_t port);

#endif
