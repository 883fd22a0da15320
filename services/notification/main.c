/*
 * paygate-notification: tells users what happened to their money, as the
 * broker service "notification".
 *
 * The story: read the configuration, start the notifier (a consumer of the
 * event bus in group "notification" on its own thread: each money event
 * becomes one message, published on the user's Redis channel and kept in
 * their latest 50), serve List on worker threads (each with its own Redis
 * connection), and on SIGTERM drain, stop the notifier, exit.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "log/log.h"
#include "metrics/metrics_server.h"
#include "notification.pb-c.h"
#include "notification_service.h"
#include "notify.h"
#include "rpc/rpc.h"

enum {
    redis_timeout_ms = 1000, /* connect and each command, per RPC thread */
};

static const rpc_method_t notification_methods[] = {
    {"List", &paygate__v1__list_notifications_request__descriptor,
     &paygate__v1__notification_list__descriptor, notification_list, RPC_BATCH_NONE},
};

typedef struct {
    const char *redis_host;
    uint16_t redis_port;
} notification_app_t;

/* Gives worker thread 'index' its own (lazily connecting) Redis store. */
static void *notification_thread_init(unsigned index, void *app_state)
{
    (void)index;
    notification_app_t *app = app_state;
    notification_thread_t *thread = calloc(1, sizeof *thread);
    if (thread == NULL)
        return NULL;
    thread->store = store_new(app->redis_host, app->redis_port, redis_timeout_ms);
    if (thread->store == NULL) {
        free(thread);
        return NULL;
    }
    return thread;
}

/* Closes what notification_thread_init opened. */
static void notification_thread_fini(void *thread_state)
{
    notification_thread_t *thread = thread_state;
    store_destroy(&thread->store);
    free(thread);
}

static void *notifier_main(void *notifier)
{
    notifier_run(notifier);
    return NULL;
}

static void usage(void)
{
    fputs("usage: paygate-notification\n"
          "The notification service: turns money events into messages for users (Redis\n"
          "channel notifications:user:<id>, latest 50 kept) and lists them.\n"
          "Configured by environment:\n"
          "  PAYGATE_BROKER_ENDPOINT       broker (tcp://127.0.0.1:55555)\n"
          "  PAYGATE_CURVE_CERT            this process's secret certificate (CURVE)\n"
          "  PAYGATE_BROKER_CERT           the broker's public certificate, or\n"
          "  PAYGATE_BROKER_PUBLIC_KEY     the broker's public key (40 Z85 characters)\n"
          "  PAYGATE_INSECURE_PLAINTEXT    1: no CURVE, no certificate (tests only)\n"
          "  PAYGATE_REDIS_HOST            Redis host (127.0.0.1)\n"
          "  PAYGATE_REDIS_PORT            Redis port (6379)\n"
          "  PAYGATE_NOTIFICATION_THREADS  worker instances in this process (2)\n"
          "  PAYGATE_INSTANCE_ID           instance id prefix (notification-<host>-<pid>)\n"
          "  PAYGATE_METRICS_PORT          Prometheus /metrics port; 0/unset: none\n"
          "  PAYGATE_METRICS_BIND          address of the metrics port (127.0.0.1)\n"
          "  PAYGATE_LOG_LEVEL             debug, info, warn, error (info)\n"
          "  PAYGATE_LOG_FORMAT            json (one object per line) or text (json)\n",
          stdout);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        usage();
        return strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? 0 : 2;
    }
    if (!log_init("notification"))
        return 2;
    const char *endpoint, *instance;
    int64_t threads, redis_port;
    notification_app_t app;
    bool ok = config_str("PAYGATE_BROKER_ENDPOINT", "tcp://127.0.0.1:55555", 255, &endpoint);
    ok &= config_str("PAYGATE_REDIS_HOST", "127.0.0.1", 255, &app.redis_host);
    ok &= config_int("PAYGATE_REDIS_PORT", 6379, 1, 65535, &redis_port);
    ok &= config_str("PAYGATE_INSTANCE_ID", NULL, 100, &instance);
    ok &= config_int("PAYGATE_NOTIFICATION_THREADS", 2, 1, 64, &threads);
    if (!ok)
        return 2;
    app.redis_port = (uint16_t)redis_port;
    metrics_t *metrics = metrics_new();
    metrics_server_t *metrics_server = NULL;
    if (metrics == NULL ||
        !metrics_server_start_from_env("PAYGATE_METRICS_PORT", metrics, &metrics_server))
        return 1;

    /* The notifier first: events flow even before List is served. */
    char consumer_id[128];
    if (instance != NULL)
        snprintf(consumer_id, sizeof consumer_id, "%s-events", instance);
    notifier_config_t notifier_config = {
        .broker_endpoint = endpoint,
        .redis_host = app.redis_host,
        .redis_port = app.redis_port,
        .consumer_id = instance != NULL ? consumer_id : NULL,
        .metrics = metrics,
    };
    notifier_t *notifier = notifier_new(&notifier_config);
    pthread_t notifier_thread;
    if (notifier == NULL || pthread_create(&notifier_thread, NULL, notifier_main, notifier) != 0) {
        log_error("notification: cannot start the notifier");
        notifier_destroy(&notifier);
        return 1;
    }
    log_info("notification: Redis %s:%u, broker %s", app.redis_host, (unsigned)app.redis_port,
             endpoint);

    rpc_server_config_t server_config = {
        .endpoint = endpoint,
        .service = "notification",
        .instance = instance,
        .methods = notification_methods,
        .method_count = sizeof notification_methods / sizeof notification_methods[0],
        .threads = (unsigned)threads,
        .thread_init = notification_thread_init,
        .thread_fini = notification_thread_fini,
        .app = &app,
        .metrics = metrics,
    };
    rpc_server_t *server = rpc_server_new(&server_config);
    int rc = -1;
    if (server != NULL) {
        rpc_server_stop_on_signals(server);
        rc = rpc_server_run(server);
        rpc_server_destroy(&server);
    }
    notifier_stop(notifier);
    pthread_join(notifier_thread, NULL);
    notifier_destroy(&notifier);
    metrics_server_stop(&metrics_server);
    metrics_destroy(&metrics);
    log_info("notification: stopped");
    return rc == 0 ? 0 : 1;
}
