/*
 * gateway_metrics: the gateway's Prometheus metrics and GET /metrics.
 *
 *   paygate_gateway_requests_total{route,method,status}   counter
 *   paygate_gateway_request_duration_seconds{route,method} histogram
 *   paygate_gateway_in_flight_requests                      gauge
 *   paygate_gateway_rate_limited_total                      counter
 *   paygate_gateway_gathered_calls{route}                   histogram
 *   paygate_gateway_gather_wait_seconds{route}              histogram
 *
 * The last two are for the routes whose calls a caller thread gathers
 * (route_t.gather): the calls it made at once (one batch, or one call),
 * and how long each call waited for it after its request was read.
 *
 * 'route' is the route template ("/v1/orders/{id}"), one of the built-in
 * paths, "static" for the web app's files, or "unmatched" (404/405): never
 * the raw path, so that clients cannot grow the number of series. 'method'
 * is a standard HTTP method or "other". 'status' is the HTTP status sent
 * ("none" when the connection closed before a response was queued).
 * Notification streams count as in flight while they are open, and their
 * duration is how long they stayed open.
 *
 * Updates are lock-free (lib/metrics); this module must never block a
 * request.
 */
#ifndef PAYGATE_GATEWAY_METRICS_H
#define PAYGATE_GATEWAY_METRICS_H

#include <microhttpd.h>
#include <stdint.h>

#include "metrics/metrics.h"

#define GATEWAY_METRICS_PATH "/metrics"

typedef struct gateway_metrics gateway_metrics_t;

/* The gateway's families, registered and at zero. NULL on OOM. */
gateway_metrics_t *gateway_metrics_new(void);

/* Frees them and sets '*self' to NULL. */
void gateway_metrics_destroy(gateway_metrics_t **self);

/* The route label for a request: 'template' when a route of the table
 * matched, else 'url' when it is a built-in path, else "static" when
 * 'is_static', else "unmatched". The result is a constant or 'template'
 * (which outlives the request). */
const char *gateway_metrics_route_label(const char *template, const char *url, bool is_static);

/* A request began (in flight +1). */
void gateway_metrics_request_started(gateway_metrics_t *self);

/* A request ended (in flight -1): counts it under 'route' (from
 * gateway_metrics_route_label), 'method' and HTTP 'status' (0: none was
 * sent), with its duration 'elapsed_us'. */
void gateway_metrics_request_finished(gateway_metrics_t *self, const char *route,
                                      const char *method, unsigned status, int64_t elapsed_us);

/* A request refused by rate limiting: paygate_gateway_rate_limited_total
 * +1. Call it once per refused request, besides the 429 response (which
 * is counted in requests_total like any other). Thread-safe, lock-free. */
void gateway_metrics_rate_limited(gateway_metrics_t *self);

/* A route caller made 'calls' calls of route 'route' (its template) at
 * once; 'waits_us[i]' is how long call i waited for it (from being handed
 * over to being made). Thread-safe. */
void gateway_metrics_gathered(gateway_metrics_t *self, const char *route, size_t calls,
                              const int64_t *waits_us);

/* Answers GET /metrics: 200 with the text format (METRICS_CONTENT_TYPE),
 * 'request_id' in X-Request-Id. */
enum MHD_Result gateway_metrics_serve(gateway_metrics_t *self, struct MHD_Connection *connection,
                                      const char *request_id);

#endif
