/*
 * store: the notification service's Redis. Each thread owns one store
 * (one hiredis connection, never shared): the consumer thread delivers
 * notifications with it, each RPC worker thread reads lists with it.
 *
 * Keys (the channel is the contract with the gateway, see
 * proto/notification.proto):
 *   notification:seen:<event id>          "1", expires after 7 days
 *   notifications:user:<user id>:latest   list of JSON, newest first, <= 50
 *   notifications:user:<user id>          Pub/Sub channel of the JSON
 *
 * A store connects on first use and again after any connection error,
 * with connect and command timeouts; it never blocks longer than those.
 * It never retries by itself: the caller decides (see notify.c).
 */
#ifndef PAYGATE_NOTIFICATION_STORE_H
#define PAYGATE_NOTIFICATION_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    store_latest_max = 50,            /* notifications kept per user */
    store_seen_ttl_s = 7 * 24 * 3600, /* how long an event id is remembered */
    store_key_bytes_max = 256,
};

typedef enum {
    STORE_OK,          /* done */
    STORE_DUPLICATE,   /* deliver: the event id was seen before; nothing done */
    STORE_UNAVAILABLE, /* Redis did not answer or answered an error */
} store_result_t;

typedef struct store store_t;

/* A store for Redis at 'host':'port' with 'timeout_ms' for connecting and
 * for each command. Does no I/O. NULL on OOM. */
store_t *store_new(const char *host, uint16_t port, uint32_t timeout_ms);

/* Closes the connection, frees the store, sets '*self' to NULL. */
void store_destroy(store_t **self);

/* True when Redis answers PING. */
bool store_ping(store_t *self);

/* Delivers notification 'id' for 'user_id' ('json' is its JSON), exactly
 * once per id, in one Lua script that Redis runs atomically: when
 * notification:seen:<id> did not exist, the JSON is pushed on the user's
 * list, the list trimmed to the latest 50, the seen key set (with its
 * expiry), and the JSON published on the user's channel; otherwise
 * nothing happens. So a redelivered event, or a retry after a lost reply,
 * notifies once; a script that fails (the list key of another type)
 * changes nothing, so its retry still notifies. Returns STORE_OK,
 * STORE_DUPLICATE or STORE_UNAVAILABLE. */
store_result_t store_deliver(store_t *self, const char *id, const char *user_id, const char *json);

/* One notification for store_deliver_many. */
typedef struct {
    const char *id;
    const char *user_id;
    const char *json;
} store_delivery_t;

/* Delivers each of 'count' notifications as store_deliver does, their
 * scripts sent together and their answers read after (one round trip to
 * Redis for all), and sets 'results[i]'. A notification whose answer did
 * not come (Redis gone or slow mid-way) is STORE_UNAVAILABLE, delivered
 * or not: sending it again notifies once, as for store_deliver. */
void store_deliver_many(store_t *self, const store_delivery_t *deliveries, size_t count,
                        store_result_t *results);

/* Called by store_latest for each stored JSON, newest first. */
typedef void (*store_each_fn)(const char *json, size_t len, void *state);

/* Reads the latest 'limit' (1..50) notifications of 'user_id' and calls
 * 'each' for each. Returns STORE_OK or STORE_UNAVAILABLE (then 'each' was
 * not called). */
store_result_t store_latest(store_t *self, const char *user_id, int limit, store_each_fn each,
                            void *state);

#endif
