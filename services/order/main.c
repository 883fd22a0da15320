/*
 * paygate-order: orders, as the broker service "order".
 *
 * The story: read the configuration, bring the "orders" schema up to date,
 * start one worker thread per configured instance (each with its own
 * database connection), serve until SIGTERM/SIGINT, drain, exit.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/service.h"
#include "log/log.h"
#include "metrics/metrics_server.h"
#include "order.pb-c.h"
#include "order_service.h"
#include "pg/pg.h"
#include "rpc/rpc.h"

extern const pg_migration_t order_migrations[];
extern const size_t order_migrations_count;

/* Worker instances (threads, one database connection each) by default:
 * the payment service's threads call Get and MarkPaid. */
enum { order_threads_default = 4 };
static const rpc_batch_handler_t order_batch_handlers[] = {{"Get", order_get_batch},
                                                           {"MarkPaid", order_mark_paid_batch}};
static const rpc_method_t order_methods[] = {
    {"Create", &paygate__v1__create_order_request__descriptor, &paygate__v1__order__descriptor,
     order_create, RPC_BATCH_NONE},
    {"Get", &paygate__v1__get_order_request__descriptor, &paygate__v1__order__descriptor, order_get,
     RPC_BATCH_HANDLER},
    {"List", &paygate__v1__list_orders_request__descriptor, &paygate__v1__order_list__descriptor,
     order_list, RPC_BATCH_NONE},
    {"Cancel", &paygate__v1__cancel_order_request__descriptor, &paygate__v1__order__descriptor,
     order_cancel, RPC_BATCH_NONE},
    {"MarkPaid", &paygate__v1__mark_paid_request__descriptor, &paygate__v1__order__descriptor,
     order_mark_paid, RPC_BATCH_HANDLER},
};

typedef struct {
    const char *pg_dsn;
} order_app_t;

/* Gives worker thread 'index' its own (lazily connecting) database
 * connection. NULL stops the start-up. */
static void *order_thread_init(unsigned index, void *app_state)
{
    (void)index;
    order_app_t *app = app_state;
    order_thread_t *thread = calloc(1, sizeof *thread);
    if (thread == NULL)
        return NULL;
    thread->pg = pg_conn_new(app->pg_dsn, "orders");
    if (thread->pg == NULL) {
        free(thread);
        return NULL;
    }
    return thread;
}

/* Closes what order_thread_init opened. */
static void order_thread_fini(void *thread_state)
{
    order_thread_t *thread = thread_state;
    pg_conn_destroy(&thread->pg);
    free(thread);
}

static void usage(void)
{
    fputs("usage: paygate-order\n"
          "The order service: create, get, list and cancel orders; complete them for a payment.\n"
          "Configured by environment:\n"
          "  PAYGATE_BROKER_ENDPOINT     broker (tcp://127.0.0.1:55555)\n"
          "  PAYGATE_CURVE_CERT          this process's secret certificate (CURVE)\n"
          "  PAYGATE_BROKER_CERT         the broker's public certificate, or\n"
          "  PAYGATE_BROKER_PUBLIC_KEY   the broker's public key (40 Z85 characters)\n"
          "  PAYGATE_INSECURE_PLAINTEXT  1: no CURVE, no certificate (tests only)\n"
          "  PAYGATE_PG_DSN              PostgreSQL connection string (required)\n"
          "  PAYGATE_ORDER_THREADS       worker instances in this process (4)\n"
          "  PAYGATE_ORDER_MAX_IN_FLIGHT requests an instance may hold (4)\n"
          "  PAYGATE_INSTANCE_ID         instance id prefix (order-<host>-<pid>)\n"
          "  PAYGATE_METRICS_PORT         Prometheus /metrics port; 0/unset: none\n"
          "  PAYGATE_METRICS_BIND         address of the metrics port (127.0.0.1)\n"
          "  PAYGATE_LOG_LEVEL           debug, info, warn, error (info)\n"
          "  PAYGATE_LOG_FORMAT          json (one object per line) or text (json)\n",
          stdout);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        usage();
        return strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? 0 : 2;
    }
    /* sodium: the random bits of order ids (lib/id) */
    if (!log_init("order") || sodium_init() < 0)
        return 2;
    service_config_t config;
    if (!service_config_read("order", true, order_threads_default, &config))
        return 2;
    if (!service_migrate(config.pg_dsn, "orders", order_migrations, order_migrations_count))
        return 1;
    metrics_t *metrics = metrics_new();
    metrics_server_t *metrics_server = NULL;
    if (metrics == NULL ||
        !metrics_server_start_from_env("PAYGATE_METRICS_PORT", metrics, &metrics_server))
        return 1;

    order_app_t app = {.pg_dsn = config.pg_dsn};
    rpc_server_config_t server_config = {
        .endpoint = config.broker_endpoint,
        .service = "order",
        .instance = config.instance,
        .methods = order_methods,
        .method_count = sizeof order_methods / sizeof order_methods[0],
        .threads = config.threads,
        .max_in_flight = config.max_in_flight,
        .thread_init = order_thread_init,
        .thread_fini = order_thread_fini,
        .app = &app,
        .metrics = metrics,
        .batch_handlers = order_batch_handlers,
        .batch_handler_count = sizeof order_batch_handlers / sizeof order_batch_handlers[0],
    };
    rpc_server_t *server = rpc_server_new(&server_config);
    if (server == NULL)
        return 2;
    rpc_server_stop_on_signals(server);
    int rc = rpc_server_run(server);
    rpc_server_destroy(&server);
    metrics_server_stop(&metrics_server);
    metrics_destroy(&metrics);
    log_info("order: stopped");
    return rc == 0 ? 0 : 1;
}
