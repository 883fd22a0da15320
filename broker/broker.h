/*
 * broker: the ROUTER socket, the loop around the registry, and the
 * broker's own services (discovery).
 *
 * It owns one socket bound to the configured endpoint. Every message is
 * decoded by lib/wire; bad ones are counted and logged once per peer and
 * never stop the loop. Routing decisions are the registry's.
 */
#ifndef PAYGATE_BROKER_H
#define PAYGATE_BROKER_H

#include <stddef.h>

#include "bus.h"
#include "metrics/metrics_server.h"
#include "registry.h"

typedef struct {
    const char *endpoint;     /* where to bind, e.g. tcp://127.0.0.1:55555 */
    const char *curve_cert;   /* the broker's secret certificate; NULL: plaintext */
    const char *clients_dir;  /* client certificates (*.cert) admitted */
    size_t message_bytes_max; /* larger messages are refused */
    registry_config_t registry;
    bus_config_t bus;
    metrics_server_config_t metrics; /* port 0: no metrics listener */
    uint32_t metrics_interval_ms;    /* how often the loop renders a snapshot */
} broker_config_t;

typedef struct broker broker_t;

/* Opens the event bus's data, loads the keys (CURVE, when 'curve_cert'
 * is set: see auth.h), binds a new broker, starts its metrics listener
 * when a port is configured (broker_metrics.h). NULL, after logging why,
 * when the data or a certificate cannot be read or an address cannot be
 * bound. Without 'curve_cert' anyone who reaches the endpoint may do
 * anything: the caller decides whether that is allowed. */
broker_t *broker_new(const broker_config_t *config);

/* Serves until broker_stop(); then answers whatever is still waiting with
 * UNAVAILABLE. Returns 0. */
int broker_run(broker_t *self);

/* Asks a running broker to stop. Async-signal-safe. */
void broker_stop(broker_t *self);

/* Closes the socket, frees everything and sets '*self' to NULL. */
void broker_destroy(broker_t **self);

#endif
