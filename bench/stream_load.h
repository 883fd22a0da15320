/*
 * stream_load: the load of bench_event_bus, the same for every system.
 *
 * One run, against one stream_system_t, on a stream of its own:
 *
 *   consumer thread   one member of a new group, started first; hands
 *                     each event to stream_load, which notes it and
 *                     acknowledges it
 *   primer            one event published and waited for at the
 *                     consumer: the stream exists and the consumer is
 *                     subscribed before anything is timed
 *   P publishers      one thread and one connection each, publishing one
 *                     event after the other, each waiting for its durable
 *                     acknowledgement: warm-up, then the measured window
 *   drain             wait until every acknowledged event has reached the
 *                     consumer (at most stream_load_drain_ms), then stop
 *
 * Every event carries its sequence number in the run and the monotonic
 * time its publish started (same machine, same clock):
 *
 *   byte 0       4       8                16               24      payload_bytes
 *        +-------+-------+----------------+----------------+--- ... ---+
 *        | magic | run   | sequence       | started_ns     |  filler   |
 *        | u32   | u32   | u64            | i64            |  'a'..'z' |
 *        +-------+-------+----------------+----------------+--- ... ---+
 *
 * (host byte order: only this process reads it). A ledger of one byte
 * per sequence number for the publish's outcome and one for the times
 * it was delivered gives, after the run, the events acknowledged but
 * never delivered (missing) and those delivered more than once
 * (duplicates), so a system cannot look fast by losing events.
 *
 * What a run reports: acknowledged publishes per second in the window;
 * latency from publish start to the consumer's callback for the events
 * published in the window (p50, p99), and to the acknowledgement (p50:
 * one publisher's throughput is its inverse); errors (failed publishes, missing
 * deliveries, deliveries that are not ours); duplicates.
 */
#ifndef BENCH_STREAM_LOAD_H
#define BENCH_STREAM_LOAD_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stream_system.h"

enum {
    stream_load_publishers_max = 64,
    stream_load_header_bytes = 24, /* the smallest payload: magic .. started_ns */
    stream_load_payload_bytes_max = 64 * 1024,
    stream_load_events_max = 4 * 1024 * 1024, /* publishes per run (the ledger: 8 MiB) */
    stream_load_ready_timeout_ms = 15000,     /* primer published and consumed */
    stream_load_drain_ms = 10000,             /* for the acknowledged events still on their way */
};

typedef struct {
    const char *stream;     /* a new stream (topic) for this run */
    const char *group;      /* a new group for this run */
    uint32_t run_id;        /* in every payload: events of other runs are not ours */
    unsigned publishers;    /* 1..stream_load_publishers_max */
    size_t payload_bytes;   /* stream_load_header_bytes..stream_load_payload_bytes_max */
    unsigned max_in_flight; /* the consumer's unacknowledged events */
    int warmup_ms;
    int measure_ms;
} stream_load_config_t;

typedef struct {
    double events_per_s; /* publishes acknowledged in the measured window, per second */
    double p50_ms;       /* publish start -> consumer callback, events published in the window */
    double p99_ms;
    double ack_p50_ms; /* publish start -> acknowledgement, publishes started in the window */
    uint64_t acked;    /* publishes acknowledged in the whole run */
    uint64_t acked_in_window;   /* ... of which in the measured window */
    uint64_t publish_errors;    /* publishes not acknowledged (whole run) */
    uint64_t missing;           /* acknowledged but never delivered */
    uint64_t foreign;           /* deliveries that are not events of this run */
    uint64_t duplicates;        /* deliveries beyond the first of an event */
    uint64_t unacked_delivered; /* delivered although its publish failed (not an error) */
    uint64_t errors;            /* publish_errors + missing + foreign */
    bool capacity_reached;      /* stream_load_events_max publishes: the run ended early */
} stream_load_result_t;

typedef struct stream_load stream_load_t;

/* A load with its ledger and latency buffer (allocated once, reused by
 * every run). 'stopping' is polled: when it turns non-zero, a run ends
 * early with an error. NULL on error. */
stream_load_t *stream_load_new(const volatile sig_atomic_t *stopping);

/* Frees the load and sets '*self' to NULL. */
void stream_load_destroy(stream_load_t **self);

/* Runs the load of 'config' against 'system' (see the top of this file)
 * and fills 'result'. Returns 0 when the run was measured (look at
 * result->errors), -1 when it could not be (a connection or the consumer
 * failed, the primer never arrived, stop asked), after saying why. */
int stream_load_run(stream_load_t *self, stream_system_t *system,
                    const stream_load_config_t *config, stream_load_result_t *result);

#endif
