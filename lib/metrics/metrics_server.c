/*
 * metrics_server: GET /metrics on a libmicrohttpd thread. See
 * metrics_server.h.
 */
#include "metrics_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "log/log.h"

struct metrics_server {
    struct MHD_Daemon *daemon;
    metrics_render_fn render;
    void *ctx;
};

bool metrics_server_config_read(const char *port_variable, metrics_server_config_t *out)
{
    int64_t port;
    bool ok = config_int(port_variable, 0, 0, 65535, &port);
    ok &= config_str("PAYGATE_METRICS_BIND", "127.0.0.1", 64, &out->bind_address);
    if (!ok)
        return false;
    struct in_addr addr;
    if (inet_pton(AF_INET, out->bind_address, &addr) != 1) {
        log_error("config: PAYGATE_METRICS_BIND: '%s' is not an IPv4 address", out->bind_address);
        return false;
    }
    out->port = (uint16_t)port;
    return true;
}

/* Answers 'status' with a short plain text 'body'. */
static enum MHD_Result respond_text(struct MHD_Connection *connection, unsigned status,
                                    const char *body, const char *allow)
{
    struct MHD_Response *response =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (response == NULL)
        return MHD_NO;
    MHD_add_response_header(response, "Content-Type", "text/plain; charset=utf-8");
    if (allow != NULL)
        MHD_add_response_header(response, "Allow", allow);
    enum MHD_Result result = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return result;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    metrics_server_t *self = cls;
    if (*con_cls == NULL) { /* the head: wait for the (ignored) body */
        *con_cls = self;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        *upload_data_size = 0; /* a body is read and dropped */
        return MHD_YES;
    }
    if (strcmp(url, "/metrics") != 0)
        return respond_text(connection, 404, "not found: the metrics are at /metrics\n", NULL);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return respond_text(connection, 405, "method not allowed\n", "GET, HEAD");
    metrics_text_t text;
    metrics_text_init(&text);
    self->render(self->ctx, &text);
    if (text.failed || text.data == NULL) {
        metrics_text_free(&text);
        return respond_text(connection, 500, "out of memory\n", NULL);
    }
    struct MHD_Response *response =
        MHD_create_response_from_buffer(text.len, text.data, MHD_RESPMEM_MUST_FREE);
    if (response == NULL) {
        metrics_text_free(&text);
        return MHD_NO;
    }
    MHD_add_response_header(response, "Content-Type", METRICS_CONTENT_TYPE);
    MHD_add_response_header(response, "Cache-Control", "no-store");
    enum MHD_Result result = MHD_queue_response(connection, 200, response);
    MHD_destroy_response(response);
    return result;
}

metrics_server_t *metrics_server_start(const metrics_server_config_t *config,
                                       metrics_render_fn render, void *ctx, bool *off)
{
    if (off != NULL)
        *off = config->port == 0;
    if (config->port == 0)
        return NULL;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(config->port);
    if (inet_pton(AF_INET, config->bind_address, &addr.sin_addr) != 1) {
        log_error("metrics: bind address '%s' is not an IPv4 address", config->bind_address);
        return NULL;
    }
    metrics_server_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->render = render;
    self->ctx = ctx;
    /* The listener thread inherits this mask: stop signals go to the
     * process's own threads, whose handlers expect them. */
    sigset_t stop_signals, previous;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, &previous);
    self->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG, config->port, NULL,
        NULL, on_request, self, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)metrics_server_connections_max, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)metrics_server_timeout_s, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_END);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (self->daemon == NULL) {
        log_error("metrics: cannot listen on %s:%u: %s", config->bind_address,
                  (unsigned)config->port, strerror(errno));
        free(self);
        return NULL;
    }
    log_info("metrics: serving http://%s:%u/metrics", config->bind_address, (unsigned)config->port);
    return self;
}

void metrics_server_stop(metrics_server_t **self_p)
{
    metrics_server_t *self = *self_p;
    if (self == NULL)
        return;
    MHD_stop_daemon(self->daemon);
    free(self);
    *self_p = NULL;
}

void metrics_server_render_registry(void *ctx, metrics_text_t *text)
{
    metrics_render(ctx, text);
}

bool metrics_server_start_from_env(const char *port_variable, metrics_t *metrics,
                                   metrics_server_t **out)
{
    *out = NULL;
    metrics_server_config_t config;
    if (!metrics_server_config_read(port_variable, &config))
        return false;
    bool off = false;
    *out = metrics_server_start(&config, metrics_server_render_registry, metrics, &off);
    return *out != NULL || off;
}
