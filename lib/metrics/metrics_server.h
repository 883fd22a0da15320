/*
 * metrics_server: a tiny HTTP listener that answers GET /metrics with the
 * text a render callback writes, for processes that have no HTTP server
 * of their own (the broker, the services).
 *
 * It runs one libmicrohttpd thread, accepts at most
 * metrics_server_connections_max connections, times idle ones out, and
 * answers anything but GET /metrics with 404 (405 for another method). It
 * must never touch the process's own state except through the callback,
 * which runs on the listener's thread: the callback must be thread-safe
 * (metrics_render is; the broker copies a snapshot under a mutex).
 *
 * Off unless a port is configured: metrics_server_config_read() reads
 * the port variable (0 or unset: off) and PAYGATE_METRICS_BIND (the IPv4
 * address, default 127.0.0.1).
 */
#ifndef PAYGATE_METRICS_SERVER_H
#define PAYGATE_METRICS_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "metrics.h"

enum {
    metrics_server_connections_max = 16,
    metrics_server_timeout_s = 10,
};

typedef struct {
    const char *bind_address; /* IPv4 */
    uint16_t port;            /* 0: no listener */
} metrics_server_config_t;

/* Reads the listener's port from variable 'port_variable' (0..65535,
 * unset: 0 = off) and its address from PAYGATE_METRICS_BIND. Returns
 * false after logging a bad value. */
bool metrics_server_config_read(const char *port_variable, metrics_server_config_t *out);

/* Appends the current metrics to 'text'; called on the listener thread
 * for each scrape. */
typedef void (*metrics_render_fn)(void *ctx, metrics_text_t *text);

typedef struct metrics_server metrics_server_t;

/* Starts listening on 'config'. Returns NULL, after logging why, when the
 * address cannot be bound. A config with port 0 is not an error: the
 * result is NULL without a log line, and *off is set (off may be NULL). */
metrics_server_t *metrics_server_start(const metrics_server_config_t *config,
                                       metrics_render_fn render, void *ctx, bool *off);

/* Stops the listener thread, frees it, sets '*self' to NULL (NULL: nothing). */
void metrics_server_stop(metrics_server_t **self);

/* For a process whose metrics all live in 'metrics': reads the port from
 * 'port_variable' and the address from PAYGATE_METRICS_BIND, and starts
 * a listener rendering 'metrics' into '*out' (NULL when the port is 0).
 * Returns false, after logging, on a bad setting or when it cannot
 * listen. */
bool metrics_server_start_from_env(const char *port_variable, metrics_t *metrics,
                                   metrics_server_t **out);

/* Renders 'ctx' (a metrics_t) as metrics_render does: the callback for a
 * process whose metrics all live in one metrics_t. */
void metrics_server_render_registry(void *ctx, metrics_text_t *text);

#endif
