/*
 * render: a money event becomes a notification: its type, its sentence
 * for people, and its JSON form (the one published on Redis, kept in the
 * user's list and streamed by the gateway).
 *
 * Pure: no I/O, no clock, no globals. The same event always renders to
 * the same notification, byte for byte, so a redelivered event can never
 * produce a second, different notification.
 *
 * It must never trust the event: every id that ends up in a Redis key or
 * in a message is checked against a strict alphabet first.
 */
#ifndef PAYGATE_NOTIFICATION_RENDER_H
#define PAYGATE_NOTIFICATION_RENDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "events.pb-c.h"

enum {
    notification_id_bytes_max = 128,     /* event ids: "payment.succeeded:pay_..." */
    notification_user_id_bytes_max = 64, /* as lib/token: [A-Za-z0-9_-] */
    notification_ref_bytes_max = 64,     /* order and payment ids */
    notification_type_bytes_max = 32,
    notification_message_bytes_max = 256,
    notification_time_bytes_max = 40, /* RFC 3339 */
    notification_json_bytes_max = 2048,
};

/* One notification, with no pointers inside (copyable, stack-friendly). */
typedef struct {
    char id[notification_id_bytes_max + 1]; /* the event id it was made from */
    char user_id[notification_user_id_bytes_max + 1];
    char type[notification_type_bytes_max + 1]; /* "payment.succeeded", ... */
    char message[notification_message_bytes_max + 1];
    int64_t amount; /* paise */
    char order_id[notification_ref_bytes_max + 1];
    char payment_id[notification_ref_bytes_max + 1];
    char created_at[notification_time_bytes_max + 1];
} notification_t;

/* True when 'user_id' is 1..64 characters of [A-Za-z0-9_-] (the token
 * rule), so that it is safe inside a Redis key or channel name. */
bool notification_user_id_valid(const char *user_id);

/* Renders 'event' into '*out'. 'stored_at_ms' (Unix ms, when the bus
 * stored the event) gives created_at when the event has no occurred_at.
 * Returns false, with '*problem' set to a static reason, when the event
 * cannot be a notification (unknown type, bad ids, amount out of range,
 * another currency): retrying would not help, the caller drops it. */
bool notification_render(const Paygate__V1__MoneyEvent *event, int64_t stored_at_ms,
                         notification_t *out, const char **problem);

/* Writes 'n' as compact JSON, exactly the fields of paygate.v1.Notification
 * in field order: {"id","user_id","type","message","amount","order_id",
 * "payment_id","created_at"} (amount a JSON integer, absent ids ""), into
 * 'out' of 'out_size' bytes (notification_json_bytes_max + 1 suffices).
 * Returns the length, or -1 when it does not fit or memory ran out. */
long notification_to_json(const notification_t *n, char *out, size_t out_size);

/* Parses JSON made by notification_to_json ('text' of 'len' bytes) into
 * '*out'. False when it is not such an object (a field missing or of the
 * wrong type, or too long). */
bool notification_from_json(const char *text, size_t len, notification_t *out);

#endif
