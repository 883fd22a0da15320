/*
 * gateway: the HTTP server (libmicrohttpd) that turns JSON requests into
 * RPCs through the broker and the replies back into JSON.
 *
 * It checks access tokens at the edge, puts the caller's user id and the
 * request id into the call metadata, bounds everything it reads (body,
 * headers, connections, time), limits how often each client address and
 * each user may call (ratelimit.h: 429 with Retry-After), and answers
 * every failure with
 * {"error": {"code", "message", "request_id"}}. It never passes internal
 * error text to clients.
 */
#ifndef PAYGATE_GATEWAY_H
#define PAYGATE_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

#include "ratelimit.h"
#include "token/token.h"

typedef struct {
    const char *bind_address; /* IPv4 address to listen on */
    uint16_t port;
    const char *broker_endpoint;
    unsigned threads;        /* libmicrohttpd thread pool */
    size_t body_bytes_max;   /* larger bodies: 413 */
    size_t header_bytes_max; /* per-connection memory for the request head */
    unsigned connections_max;
    unsigned connections_per_address_max; /* from one client address; 0 = no limit */
    unsigned timeout_s;            /* idle/slow client timeout; also the most a body may take */
    uint32_t deadline_ms;          /* per request, towards the broker */
    const char *required_services; /* comma-separated, checked by /readyz */
    const token_keyring_t *keys;
    const char *redis_host; /* notification streams (sse.h) subscribe there */
    uint16_t redis_port;
    unsigned streams_max;     /* open notification streams; beyond: 503 */
    const char *static_dir;   /* the web app's files (static_files.h); "" = none */
    const char *openapi_file; /* served at GET /openapi.yaml; "" = 404 */
    ratelimit_config_t rate;  /* rate limits per class */
    unsigned forwarded_hops;  /* trusted proxies appending to X-Forwarded-For; 0 = none */
} gateway_config_t;

typedef struct gateway gateway_t;

/* Starts listening and serving on its own threads. NULL, after logging
 * why, when the port cannot be bound. */
gateway_t *gateway_new(const gateway_config_t *config);

/* Stops accepting new connections, answers the requests in progress
 * (within the call deadline plus a second; each answer closes its
 * connection), then closes the rest, frees everything and sets '*self'
 * to NULL. */
void gateway_destroy(gateway_t **self);

/* Requests answered 429 by the gateway's own rate limits so far (the
 * paygate_gateway_rate_limited_total counter). Thread-safe. */
uint64_t gateway_rate_limited_total(const gateway_t *self);

#endif
