/*
 * paygate-payment: pays orders from wallets (a saga over the user and
 * order services), idempotently and crash-safely, with refunds.
 *
 * The story: read the configuration, bring the "payments" schema up to
 * date, start the recovery loop (it finishes sagas that an earlier crash
 * left behind, then keeps watching), serve CreatePayment/Get/List and
 * CreateRefund on worker threads, and on SIGTERM drain and stop both.
 */
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock/clock.h"
#include "config/config.h"
#include "log/log.h"
#include "metrics/metrics_server.h"
#include "service/service.h"
#include "outbox/outbox.h"
#include "payment.pb-c.h"
#include "payment_migrations.h"
#include "payment_service.h"

/* Worker instances (threads, one database connection each) by default:
 * a thread drives one saga at a time and waits on its
 * calls to user and order, so threads are how many payments one process
 * has in flight (./dev bench payments: 2 -> 8 threads, 322 -> 429/s). */
enum { payment_threads_default = 8 };
/* Create takes batches (the gateway sends the payments it has queued as
 * one): payment_create_batch drives them together. */
static const rpc_batch_handler_t payment_batch_handlers[] = {{"Create", payment_create_batch}};
static const rpc_method_t payment_methods[] = {
    {"Create", &paygate__v1__create_payment_request__descriptor, &paygate__v1__payment__descriptor,
     payment_create, RPC_BATCH_HANDLER},
    {"Get", &paygate__v1__get_payment_request__descriptor, &paygate__v1__payment__descriptor,
     payment_get, RPC_BATCH_NONE},
    {"List", &paygate__v1__list_payments_request__descriptor,
     &paygate__v1__payment_list__descriptor, payment_list, RPC_BATCH_NONE},
    {"CreateRefund", &paygate__v1__create_refund_request__descriptor,
     &paygate__v1__refund__descriptor, refund_create, RPC_BATCH_NONE},
};

typedef struct {
    const char *pg_dsn;
    const char *broker_endpoint;
    void *zmq_ctx; /* for the threads' RPC clients */
    payment_settings_t settings;
    payment_metrics_t metrics;
    payment_gathers_t gathers; /* the worker threads' */
    atomic_int stopping;
} payment_app_t;

/* A thread's environment: its own database connection and RPC client. */
static payment_env_t *payment_env_new(payment_app_t *app)
{
    payment_env_t *env = calloc(1, sizeof *env);
    if (env == NULL)
        return NULL;
    env->settings = &app->settings;
    env->metrics = &app->metrics;
    env->pg = pg_conn_new(app->pg_dsn, "payments");
    env->rpc = rpc_client_new(app->zmq_ctx, app->broker_endpoint);
    if (env->pg == NULL || env->rpc == NULL) {
        pg_conn_destroy(&env->pg);
        rpc_client_destroy(&env->rpc);
        free(env);
        return NULL;
    }
    return env;
}

static void payment_env_destroy(void *state)
{
    payment_env_t *env = state;
    pg_conn_destroy(&env->pg);
    rpc_client_destroy(&env->rpc);
    free(env);
}

static void *payment_thread_init(unsigned index, void *app_state)
{
    (void)index;
    payment_app_t *app = app_state;
    payment_env_t *env = payment_env_new(app);
    if (env != NULL)
        env->gathers = &app->gathers;
    return env;
}

/* The recovery loop: a pass at once, then one every interval. */
static void *recovery_main(void *arg)
{
    payment_app_t *app = arg;
    payment_env_t *env = payment_env_new(app);
    if (env == NULL) {
        log_error("recovery: cannot start (database or broker client)");
        return NULL;
    }
    while (!atomic_load(&app->stopping)) {
        int driven = recovery_pass(env);
        if (driven > 0)
            log_info("recovery: drove %d payments and refunds", driven);
        int64_t until = clock_now_ms() + app->settings.recovery_interval_ms;
        while (!atomic_load(&app->stopping) && clock_now_ms() < until)
            usleep(50 * 1000);
    }
    payment_env_destroy(env);
    return NULL;
}

static void usage(void)
{
    fputs("usage: paygate-payment\n"
          "The payment service: pays orders from wallets, refunds. Configured by environment:\n"
          "  PAYGATE_BROKER_ENDPOINT               broker (tcp://127.0.0.1:55555)\n"
          "  PAYGATE_CURVE_CERT                    this process's secret certificate (CURVE)\n"
          "  PAYGATE_BROKER_CERT                   the broker's public certificate, or\n"
          "  PAYGATE_BROKER_PUBLIC_KEY             the broker's public key (40 Z85 characters)\n"
          "  PAYGATE_INSECURE_PLAINTEXT            1: no CURVE, no certificate (tests only)\n"
          "  PAYGATE_PG_DSN                        PostgreSQL connection string (required)\n"
          "  PAYGATE_PAYMENT_THREADS               worker instances in this process (8)\n"
          "  PAYGATE_PAYMENT_MAX_IN_FLIGHT         requests an instance may hold (4)\n"
          "  PAYGATE_PAYMENT_LEASE_MS              a saga driver's lease (10000)\n"
          "  PAYGATE_PAYMENT_CALL_DEADLINE_MS      deadline of each call to user/order (2000)\n"
          "  PAYGATE_PAYMENT_RECOVERY_INTERVAL_MS  pause between recovery passes (1000)\n"
          "  PAYGATE_PAYMENT_CLOCK_SKEW_MS         margin before taking over an expired lease "
          "(1000)\n"
          "  PAYGATE_INSTANCE_ID                   instance id prefix (payment-<host>-<pid>)\n"
          "  PAYGATE_METRICS_PORT                  Prometheus /metrics port; 0/unset: none\n"
          "  PAYGATE_METRICS_BIND                  address of the metrics port (127.0.0.1)\n"
          "  PAYGATE_LOG_LEVEL                     debug, info, warn, error (info)\n"
          "  PAYGATE_LOG_FORMAT                    json (one object per line) or text (json)\n",
          stdout);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        usage();
        return strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? 0 : 2;
    }
    if (!log_init("payment") || sodium_init() < 0)
        return 2;
    payment_app_t app;
    memset(&app, 0, sizeof app);
    service_config_t config;
    if (!service_config_read("payment", true, payment_threads_default, &config))
        return 2;
    app.broker_endpoint = config.broker_endpoint;
    app.pg_dsn = config.pg_dsn;
    int64_t lease_ms, call_deadline_ms, recovery_ms, skew_ms;
    bool ok = config_int("PAYGATE_PAYMENT_LEASE_MS", 10000, 100, 600000, &lease_ms);
    ok &= config_int("PAYGATE_PAYMENT_CALL_DEADLINE_MS", 2000, 10, 60000, &call_deadline_ms);
    ok &= config_int("PAYGATE_PAYMENT_RECOVERY_INTERVAL_MS", 1000, 10, 600000, &recovery_ms);
    ok &= config_int("PAYGATE_PAYMENT_CLOCK_SKEW_MS", 1000, 0, 60000, &skew_ms);
    if (!ok)
        return 2;
    app.settings.lease_ms = (uint32_t)lease_ms;
    app.settings.call_deadline_ms = (uint32_t)call_deadline_ms;
    app.settings.recovery_interval_ms = (uint32_t)recovery_ms;
    app.settings.clock_skew_ms = (uint32_t)skew_ms;

    if (!service_migrate(app.pg_dsn, "payments", payment_migrations, payment_migrations_count))
        return 1;
    metrics_t *metrics = metrics_new();
    metrics_server_t *metrics_server = NULL;
    if (metrics == NULL ||
        !metrics_server_start_from_env("PAYGATE_METRICS_PORT", metrics, &metrics_server))
        return 1;
    payment_metrics_init(&app.metrics, metrics);
    payment_gathers_init(&app.gathers, app.settings.call_deadline_ms, &payment_insert_statement,
                         &saga_finish_statement, metrics);

    app.zmq_ctx = zmq_ctx_new();
    pthread_t recovery;
    if (app.zmq_ctx == NULL || pthread_create(&recovery, NULL, recovery_main, &app) != 0) {
        log_error("payment: cannot start the recovery loop");
        return 1;
    }
    outbox_relay_config_t relay_config = {.pg_dsn = app.pg_dsn,
                                          .schema = "payments",
                                          .broker_endpoint = app.broker_endpoint,
                                          /* no listener: no backlog count(*) each second */
                                          .metrics = metrics_server != NULL ? metrics : NULL};
    outbox_relay_t *relay = outbox_relay_start(&relay_config);
    if (relay == NULL) {
        log_error("payment: cannot start the outbox relay");
        return 1;
    }
    rpc_server_config_t server_config = {
        .endpoint = app.broker_endpoint,
        .service = "payment",
        .instance = config.instance,
        .methods = payment_methods,
        .method_count = sizeof payment_methods / sizeof payment_methods[0],
        .threads = config.threads,
        .max_in_flight = config.max_in_flight,
        .thread_init = payment_thread_init,
        .thread_fini = payment_env_destroy,
        .app = &app,
        .metrics = metrics,
        .batch_handlers = payment_batch_handlers,
        .batch_handler_count = sizeof payment_batch_handlers / sizeof payment_batch_handlers[0],
    };
    rpc_server_t *server = rpc_server_new(&server_config);
    int rc = -1;
    if (server != NULL) {
        rpc_server_stop_on_signals(server);
        rc = rpc_server_run(server);
        rpc_server_destroy(&server);
    }
    atomic_store(&app.stopping, 1);
    pthread_join(recovery, NULL);
    outbox_relay_stop(&relay);
    metrics_server_stop(&metrics_server);
    metrics_destroy(&metrics);
    zmq_ctx_term(app.zmq_ctx);
    log_info("payment: stopped");
    return rc == 0 ? 0 : 1;
}
