/*
 * paygate-transaction: the history of money movements, as the broker
 * service "transaction".
 *
 * The story: read the configuration, bring the "transactions" schema up
 * to date, start the recorder (a member of consumer group "transaction"
 * on topics "payments" and "wallet", in a thread of its own with its own
 * database connection), serve Get/List on worker threads, and on
 * SIGTERM/SIGINT drain the workers, stop the recorder (an event it has
 * not acknowledged is delivered again: recording is idempotent), exit.
 *
 * If the recorder stops for good (the broker refuses the subscription,
 * e.g. it runs without an event bus), the whole process stops with an
 * error: a history service that silently records nothing is worse than
 * one that is visibly down.
 */
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "events/consumer.h"
#include "log/log.h"
#include "metrics/metrics_server.h"
#include "service/service.h"
#include "transaction.pb-c.h"
#include "transaction_migrations.h"
#include "transaction_service.h"
#include "wire/wire.h"

/* Worker instances (threads, one database connection each) by default:
 * it serves history reads; its event consumer has a thread
 * of its own. */
enum { transaction_threads_default = 2 };
static const rpc_method_t transaction_methods[] = {
    {"Get", &paygate__v1__get_transaction_request__descriptor,
     &paygate__v1__transaction__descriptor, transaction_get, RPC_BATCH_NONE},
    {"List", &paygate__v1__list_transactions_request__descriptor,
     &paygate__v1__transaction_list__descriptor, transaction_list, RPC_BATCH_NONE},
};

/* The topics whose money events the recorder consumes. */
static const char *const transaction_topics[] = {"payments", "wallet", NULL};

typedef struct {
    const char *pg_dsn;
    rpc_server_t *server;        /* stopped when the recorder fails */
    events_consumer_t *consumer; /* the recorder's membership of the group */
    atomic_int recorder_failed;
} transaction_app_t;

/* Gives worker thread 'index' its own (lazily connecting) database
 * connection. NULL stops the start-up. */
static void *transaction_thread_init(unsigned index, void *app_state)
{
    (void)index;
    transaction_app_t *app = app_state;
    transaction_thread_t *thread = calloc(1, sizeof *thread);
    if (thread == NULL)
        return NULL;
    thread->pg = pg_conn_new(app->pg_dsn, "transactions");
    if (thread->pg == NULL) {
        free(thread);
        return NULL;
    }
    return thread;
}

/* Closes what transaction_thread_init opened. */
static void transaction_thread_fini(void *thread_state)
{
    transaction_thread_t *thread = thread_state;
    pg_conn_destroy(&thread->pg);
    free(thread);
}

/* The recorder's thread: consumes until events_consumer_stop(). A fatal
 * end stops the RPC server too, so that the process exits with an error. */
static void *recorder_main(void *arg)
{
    transaction_app_t *app = arg;
    if (events_consumer_run(app->consumer) != 0) {
        log_error("transaction: the recorder stopped for good; stopping the service");
        atomic_store(&app->recorder_failed, 1);
        rpc_server_stop(app->server);
    }
    return NULL;
}

static void usage(void)
{
    fputs("usage: paygate-transaction\n"
          "The transaction service: records payments, refunds and top-ups from the event bus\n"
          "(group \"transaction\", topics \"payments\" and \"wallet\") and serves their history.\n"
          "Configured by environment:\n"
          "  PAYGATE_BROKER_ENDPOINT            broker (tcp://127.0.0.1:55555)\n"
          "  PAYGATE_CURVE_CERT                 this process's secret certificate (CURVE)\n"
          "  PAYGATE_BROKER_CERT                the broker's public certificate, or\n"
          "  PAYGATE_BROKER_PUBLIC_KEY          the broker's public key (40 Z85 characters)\n"
          "  PAYGATE_INSECURE_PLAINTEXT         1: no CURVE, no certificate (tests only)\n"
          "  PAYGATE_PG_DSN                     PostgreSQL connection string (required)\n"
          "  PAYGATE_TRANSACTION_THREADS        worker instances in this process (2)\n"
          "  PAYGATE_TRANSACTION_MAX_IN_FLIGHT  requests an instance may hold (4)\n"
          "  PAYGATE_INSTANCE_ID                instance id prefix (transaction-<host>-<pid>);\n"
          "                                     the recorder's consumer id is <prefix>-recorder\n"
          "  PAYGATE_METRICS_PORT                Prometheus /metrics port; 0/unset: none\n"
          "  PAYGATE_METRICS_BIND                address of the metrics port (127.0.0.1)\n"
          "  PAYGATE_LOG_LEVEL                  debug, info, warn, error (info)\n"
          "  PAYGATE_LOG_FORMAT                 json (one object per line) or text (json)\n",
          stdout);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        usage();
        return strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? 0 : 2;
    }
    /* sodium: the random bits of transaction ids (lib/id) */
    if (!log_init("transaction") || sodium_init() < 0)
        return 2;
    service_config_t config;
    if (!service_config_read("transaction", true, transaction_threads_default, &config))
        return 2;
    const char *endpoint = config.broker_endpoint, *pg_dsn = config.pg_dsn;

    /* Schema first: nothing records or serves before the tables are right. */
    if (!service_migrate(pg_dsn, "transactions", transaction_migrations,
                         transaction_migrations_count)) {
        return 1;
    }
    metrics_t *metrics = metrics_new();
    metrics_server_t *metrics_server = NULL;
    if (metrics == NULL ||
        !metrics_server_start_from_env("PAYGATE_METRICS_PORT", metrics, &metrics_server))
        return 1;

    transaction_app_t app = {.pg_dsn = pg_dsn};
    rpc_server_config_t server_config = {
        .endpoint = endpoint,
        .service = "transaction",
        .instance = config.instance,
        .methods = transaction_methods,
        .method_count = sizeof transaction_methods / sizeof transaction_methods[0],
        .threads = config.threads,
        .max_in_flight = config.max_in_flight,
        .thread_init = transaction_thread_init,
        .thread_fini = transaction_thread_fini,
        .app = &app,
        .metrics = metrics,
    };
    app.server = rpc_server_new(&server_config);
    if (app.server == NULL)
        return 2;
    rpc_server_stop_on_signals(app.server);

    /* The recorder: one consumer (socket and thread) with its own
     * database connection. A new group replays the topics' retained
     * history, so movements made before this service first ran are
     * recorded too. */
    char consumer_id[wire_instance_bytes_max + 1];
    if (config.instance != NULL)
        snprintf(consumer_id, sizeof consumer_id, "%s-recorder", config.instance);
    recorder_t *recorder = recorder_new(pg_dsn);
    events_consumer_config_t consumer_config = {
        .endpoint = endpoint,
        .group = "transaction",
        .topics = transaction_topics,
        .consumer_id = config.instance != NULL ? consumer_id : NULL,
        .max_in_flight = transaction_events_in_flight_max,
        .start_at_end = false,
        .batch_handler = recorder_on_events,
        .state = recorder,
        .metrics = metrics,
    };
    app.consumer = recorder != NULL ? events_consumer_new(&consumer_config) : NULL;
    pthread_t recorder_thread;
    if (app.consumer == NULL || pthread_create(&recorder_thread, NULL, recorder_main, &app) != 0) {
        log_error("transaction: cannot start the recorder");
        events_consumer_destroy(&app.consumer);
        recorder_destroy(&recorder);
        rpc_server_destroy(&app.server);
        return 1;
    }

    int rc = rpc_server_run(app.server);
    events_consumer_stop(app.consumer);
    pthread_join(recorder_thread, NULL);
    events_consumer_destroy(&app.consumer);
    recorder_destroy(&recorder);
    rpc_server_destroy(&app.server);
    metrics_server_stop(&metrics_server);
    metrics_destroy(&metrics);
    bool failed = rc != 0 || atomic_load(&app.recorder_failed);
    log_info("transaction: stopped%s", failed ? " after a failure" : "");
    return failed ? 1 : 0;
}
