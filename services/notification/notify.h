/*
 * notify: the notification service's consumer of the event bus (group
 * "notification", topics "payments" and "wallet"). Each money event
 * becomes one notification for its user, delivered exactly once through
 * the store (see store.h), then acknowledged.
 *
 * It must never acknowledge an event it has not delivered (or found
 * delivered before), and never deliver one twice. While Redis is down it
 * refuses events (NACK) after a short bounded retry, so they wait in the
 * bus and come back until Redis is.
 */
#ifndef PAYGATE_NOTIFICATION_NOTIFY_H
#define PAYGATE_NOTIFICATION_NOTIFY_H

#include <stdint.h>

typedef struct {
    const char *broker_endpoint;
    const char *redis_host;
    uint16_t redis_port;
    const char *consumer_id; /* NULL: "notification-<host>-<pid>" */
    struct metrics *metrics; /* counts consumed events (lib/events); may be NULL */
} notifier_config_t;

typedef struct notifier notifier_t;

/* Checks and copies 'config'. Does no I/O. NULL on OOM. */
notifier_t *notifier_new(const notifier_config_t *config);

/* Consumes until notifier_stop(); subscribes again after a refusal by
 * the broker (e.g. no event bus yet). Run it on its own thread. */
void notifier_run(notifier_t *self);

/* Asks notifier_run to return (soon: within one Redis timeout). Any
 * thread. */
void notifier_stop(notifier_t *self);

/* Frees a notifier that is not running and sets '*self' to NULL. */
void notifier_destroy(notifier_t **self);

#endif
