/*
 * outbox: events that leave a service exactly when its state changes.
 *
 * A service writes an event into its own `outbox` table in the same
 * database transaction (usually the same statement) as the state change
 * that causes it. The relay thread publishes unsent rows to the broker's
 * event bus, a key's events in id order (a pass sends its rows in waves,
 * at most one event of a key in a wave: relay.c), and marks each sent only
 * after the broker acknowledged it (after its fsync). A crash between commit and publish
 * loses nothing (the row stays unsent); a crash between publish and mark
 * publishes again, which the broker's dedup by event id makes harmless.
 *
 * The table (each service creates it in its schema by a migration):
 *
 *   outbox(id bigserial primary key, event_id text unique, topic text,
 *          key text, payload bytea, created_at timestamptz, sent_at timestamptz)
 */
#ifndef PAYGATE_OUTBOX_H
#define PAYGATE_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

enum {
    outbox_batch_max = 64,             /* rows per relay pass */
    outbox_backlog_interval_ms = 1000, /* how often the relay counts unsent rows */
    outbox_payload_bytes_max = 64 * 1024,
};

/* Writes the hex text of 'message' packed (for decode($n, 'hex') in SQL)
 * into a new malloc'd string, or NULL when it is over the limit. */
char *outbox_payload_hex(const ProtobufCMessage *message);

/* The current UTC time as RFC 3339 with milliseconds into 'out' (>= 32). */
void outbox_now_rfc3339(char *out, size_t out_size);

typedef struct outbox_relay outbox_relay_t;

typedef struct {
    const char *pg_dsn;
    const char *schema; /* the service's schema (holds `outbox`) */
    const char *broker_endpoint;
    uint32_t interval_ms; /* pause when there is nothing to send */
    uint32_t publish_deadline_ms;
    /* Where to count (paygate_outbox_published_total{outbox} and, counted
     * by the relay every outbox_backlog_interval_ms, the gauge
     * paygate_outbox_backlog_events{outbox}: rows not yet relayed; the
     * label is the schema); NULL: not counted. Must outlive the relay. */
    struct metrics *metrics;
} outbox_relay_config_t;

/* Starts the relay thread. NULL, after logging why, on failure. */
outbox_relay_t *outbox_relay_start(const outbox_relay_config_t *config);

/* Stops the thread (after its current pass), frees it, sets '*self' to NULL. */
void outbox_relay_stop(outbox_relay_t **self);

/* Rows waiting to be published (for tests and metrics), -1 on error. */
int64_t outbox_backlog(const char *pg_dsn, const char *schema);

#endif
