/*
 * bus: the broker's durable event bus (our Kafka): topics stored in event
 * logs, publishes acknowledged after fsync, consumer groups with committed
 * offsets, redelivery, dead letters, per-key order.
 *
 * Guarantees (see broker/README.md, "Event bus"):
 *  - a PUBLISH is answered OK only after its record is fsynced; all the
 *    publishes of one loop iteration share one fsync per topic;
 *  - an event id seen in the topic's dedup window is acknowledged again
 *    (with the first offset) and not stored twice;
 *  - each event goes to one consumer of each group, only once durable;
 *    an event not acknowledged within ack_timeout_ms, or whose consumer
 *    dies, is delivered again; after max_deliveries it is appended to
 *    "<topic>.dlq" and logged;
 *  - events with the same (non-empty) key reach a group in order: one is
 *    not delivered while an earlier one with that key is unacknowledged;
 *  - a group's committed offset (everything before it is acknowledged) is
 *    persisted; a new group replays retained history unless it asks to
 *    start at the end.
 * Memory is bounded by the limits below whatever the backlog: a group
 * holds at most group_window events in its window; payloads stay on disk.
 *
 * Like the registry it does no socket I/O itself: frames go out through
 * the sink. Single-threaded.
 */
#ifndef PAYGATE_BUS_H
#define PAYGATE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "broker.pb-c.h"

typedef struct {
    const char *data_dir; /* where topics live; NULL or "": bus disabled */
    uint64_t segment_bytes_max;
    int64_t retention_ms;
    uint64_t retention_bytes; /* per topic */
    uint32_t ack_timeout_ms;
    uint32_t max_deliveries;
    uint32_t nack_delay_ms; /* redelivery delay after a NACK */
    uint32_t dedup_window;  /* event ids remembered per topic */
    uint32_t group_window;  /* events a group holds between committed and read */
    uint32_t topics_max;
    uint32_t groups_max;            /* per topic */
    uint32_t consumers_max;         /* subscriptions, all topics */
    uint32_t heartbeat_interval_ms; /* default for consumers */
    uint32_t heartbeat_liveness;
} bus_config_t;

/* Defaults documented in broker/README.md (data_dir NULL). */
bus_config_t bus_config_default(void);

typedef struct {
    void *ctx;
    /* Sends 'header' (+ 'body' when not NULL, moved) to peer 'identity'.
     * Returns 0, or -1 when the peer is gone. */
    int (*send)(void *ctx, const uint8_t *identity, size_t identity_len,
                const Paygate__V1__Header *header, zmq_msg_t *body);
} bus_sink_t;

typedef struct bus bus_t;

/* Opens every topic found in config->data_dir (recovering its log and
 * loading its groups' offsets) and locks the directory against a second
 * broker. NULL, after logging why, on failure. With no data_dir, a bus
 * that refuses every bus command. */
bus_t *bus_new(const bus_config_t *config, const bus_sink_t *sink);

/* Persists group offsets, closes the logs, sets '*self' to NULL. */
void bus_destroy(bus_t **self);

/* True when the bus has a data directory. */
bool bus_enabled(const bus_t *self);

/* PUBLISH from 'identity' (header->event, body = payload): appended now,
 * answered at the next bus_flush. */
void bus_publish(bus_t *self, const uint8_t *identity, size_t identity_len,
                 const Paygate__V1__Header *header, zmq_msg_t *body, int64_t now);

/* SUBSCRIBE from 'identity'. */
void bus_subscribe(bus_t *self, const uint8_t *identity, size_t identity_len,
                   const Paygate__V1__Subscribe *subscribe, int64_t now);

/* ACK from 'identity'. */
void bus_ack(bus_t *self, const uint8_t *identity, size_t identity_len,
             const Paygate__V1__Event *event, int64_t now);

/* NACK from 'identity': the consumer cannot handle the event now; it is
 * delivered again after nack_delay_ms and the attempt does not count
 * towards max_deliveries. */
void bus_nack(bus_t *self, const uint8_t *identity, size_t identity_len,
              const Paygate__V1__Event *event, int64_t now);

/* HEARTBEAT / DISCONNECT from 'identity': true when it is a consumer (the
 * registry handles the others). */
bool bus_peer_heartbeat(bus_t *self, const uint8_t *identity, size_t identity_len, int64_t now);
bool bus_peer_disconnect(bus_t *self, const uint8_t *identity, size_t identity_len, int64_t now);

/* After a batch of messages, and whenever bus_sync_fd is readable: takes
 * the sync thread's finished fsyncs, makes the topics written to since
 * durable, answers the publishes and makes the deliveries that became
 * possible. 'input_waiting' says whether the caller has more messages to
 * handle right away: if not, and the sync thread is idle, the fsyncs run
 * here (the loop waits for the disk, which saves two thread wake-ups per
 * batch); otherwise they go to the sync thread and this never waits for a
 * disk. */
void bus_flush(bus_t *self, bool input_waiting, int64_t now);

/* True when it is worth waiting a little for more publishes before the
 * next bus_flush syncs: the sync thread is idle, some publishes wait for a
 * sync, and fewer of them arrived since the last answers than the last
 * answers counted (publishers that publish one event after the other come
 * back after their answer, so one fsync can cover them all). */
bool bus_expects_publishes(const bus_t *self);

/* bus_flush until nothing is left to sync or to answer (waits for the
 * disk): for shutdown. */
void bus_flush_all(bus_t *self, int64_t now);

/* A descriptor that becomes readable when the sync thread finished a
 * batch (poll it with the broker's socket and call bus_flush), or -1 when
 * the bus is disabled. */
int bus_sync_fd(const bus_t *self);

/* Timers: redelivery, consumer expiry and heartbeats, offset persistence,
 * retention. Returns the time of the next timer. */
int64_t bus_tick(bus_t *self, int64_t now);

/* Fills 'reply->topics' for discovery; returns memory to free with
 * bus_list_free. */
void *bus_list(bus_t *self, Paygate__V1__ListServicesReply *reply);
void bus_list_free(void *memory);

#endif
