/*
 * gateway_metrics: counting requests and serving /metrics. See
 * gateway_metrics.h.
 */
#include "gateway_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"

/* Request latency buckets, in seconds: 1 ms to 10 s. */
static const double latency_bounds_s[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25,  0.5,    1,     2.5,  5,     10};

/* The paths gateway.c and static_files.c answer outside the routes table;
 * each is its own route label. */
static const char *const builtin_paths[] = {
    "/healthz", "/readyz", GATEWAY_METRICS_PATH, "/openapi.yaml", SSE_STREAM_PATH,
};

/* Methods that keep their name as a label; any other is "other". */
static const char *const known_methods[] = {"GET",    "POST",    "PUT",  "PATCH",
                                            "DELETE", "OPTIONS", "HEAD", "TRACE"};

struct gateway_metrics {
    metrics_t *metrics;
    metrics_family_t *requests;
    metrics_family_t *duration;
    metrics_family_t *gathered_calls;
    metrics_family_t *gather_wait;
    metrics_series_t *in_flight;
    metrics_series_t *rate_limited;
};

gateway_metrics_t *gateway_metrics_new(void)
{
    gateway_metrics_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->metrics = metrics_new();
    const char *const request_labels[] = {"route", "method", "status", NULL};
    const char *const duration_labels[] = {"route", "method", NULL};
    self->requests = metrics_counter_family(self->metrics, "paygate_gateway_requests_total",
                                            "HTTP requests answered, by route template, method "
                                            "and status.",
                                            request_labels);
    self->duration = metrics_histogram_family(
        self->metrics, "paygate_gateway_request_duration_seconds",
        "Time from a request's head to its end (for notification streams: how long they stayed "
        "open), by route template and method.",
        duration_labels, latency_bounds_s, sizeof latency_bounds_s / sizeof latency_bounds_s[0]);
    self->in_flight = metrics_series(
        metrics_gauge_family(self->metrics, "paygate_gateway_in_flight_requests",
                             "Requests begun and not yet ended (open notification streams "
                             "included).",
                             NULL),
        NULL);
    self->rate_limited = metrics_series(
        metrics_counter_family(self->metrics, "paygate_gateway_rate_limited_total",
                               "Requests refused with 429 by the gateway's rate limiting.", NULL),
        NULL);
    static const double call_bounds[] = {1, 2, 4, 8, 16, 32, 64};
    const char *const route_labels[] = {"route", NULL};
    self->gathered_calls = metrics_histogram_family(
        self->metrics, "paygate_gateway_gathered_calls",
        "Calls a route's caller made at once (one batch, or one call), by route template.",
        route_labels, call_bounds, sizeof call_bounds / sizeof call_bounds[0]);
    self->gather_wait = metrics_histogram_family(
        self->metrics, "paygate_gateway_gather_wait_seconds",
        "How long a gathered call waited for its route's caller, by route template.", route_labels,
        latency_bounds_s, sizeof latency_bounds_s / sizeof latency_bounds_s[0]);
    if (self->requests == NULL || self->duration == NULL || self->in_flight == NULL ||
        self->rate_limited == NULL || self->gathered_calls == NULL || self->gather_wait == NULL) {
        gateway_metrics_destroy(&self);
        return NULL;
    }
    return self;
}

void gateway_metrics_destroy(gateway_metrics_t **self_p)
{
    gateway_metrics_t *self = *self_p;
    if (self == NULL)
        return;
    metrics_destroy(&self->metrics);
    free(self);
    *self_p = NULL;
}

const char *gateway_metrics_route_label(const char *template, const char *url, bool is_static)
{
    if (template != NULL)
        return template;
    for (size_t i = 0; i < sizeof builtin_paths / sizeof builtin_paths[0]; i++) {
        if (strcmp(url, builtin_paths[i]) == 0)
            return builtin_paths[i];
    }
    return is_static ? "static" : "unmatched";
}

/* 'method' when it is a known method, else "other". */
static const char *method_label(const char *method)
{
    for (size_t i = 0; i < sizeof known_methods / sizeof known_methods[0]; i++) {
        if (strcmp(method, known_methods[i]) == 0)
            return known_methods[i];
    }
    return "other";
}

void gateway_metrics_request_started(gateway_metrics_t *self)
{
    metrics_gauge_add(self->in_flight, 1);
}

void gateway_metrics_request_finished(gateway_metrics_t *self, const char *route,
                                      const char *method, unsigned status, int64_t elapsed_us)
{
    metrics_gauge_add(self->in_flight, -1);
    char status_text[16] = "none";
    if (status >= 100 && status <= 599)
        snprintf(status_text, sizeof status_text, "%u", status);
    const char *method_text = method_label(method);
    const char *const request_values[] = {route, method_text, status_text};
    metrics_counter_add(metrics_series(self->requests, request_values), 1);
    const char *const duration_values[] = {route, method_text};
    metrics_histogram_observe(metrics_series(self->duration, duration_values),
                              (double)(elapsed_us < 0 ? 0 : elapsed_us) / 1e6);
}

void gateway_metrics_gathered(gateway_metrics_t *self, const char *route, size_t calls,
                              const int64_t *waits_us)
{
    const char *const values[] = {route};
    metrics_histogram_observe(metrics_series(self->gathered_calls, values), (double)calls);
    metrics_series_t *wait = metrics_series(self->gather_wait, values);
    for (size_t i = 0; i < calls; i++)
        metrics_histogram_observe(wait, (double)(waits_us[i] < 0 ? 0 : waits_us[i]) / 1e6);
}

void gateway_metrics_rate_limited(gateway_metrics_t *self)
{
    if (self != NULL)
        metrics_counter_add(self->rate_limited, 1);
}

enum MHD_Result gateway_metrics_serve(gateway_metrics_t *self, struct MHD_Connection *connection,
                                      const char *request_id)
{
    metrics_text_t text;
    metrics_text_init(&text);
    metrics_render(self->metrics, &text);
    if (text.failed || text.data == NULL) {
        metrics_text_free(&text);
        return MHD_NO;
    }
    struct MHD_Response *response =
        MHD_create_response_from_buffer(text.len, text.data, MHD_RESPMEM_MUST_FREE);
    if (response == NULL) {
        metrics_text_free(&text);
        return MHD_NO;
    }
    MHD_add_response_header(response, "Content-Type", METRICS_CONTENT_TYPE);
    MHD_add_response_header(response, "X-Request-Id", request_id);
    MHD_add_response_header(response, "Cache-Control", "no-store");
    MHD_add_response_header(response, "X-Content-Type-Options", "nosniff");
    enum MHD_Result result = MHD_queue_response(connection, 200, response);
    MHD_destroy_response(response);
    return result;
}
