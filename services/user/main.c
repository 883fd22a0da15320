/*
 * paygate-user: accounts, login and wallets, as the broker service "user".
 *
 * The story: read the configuration, bring the "users" schema up to date,
 * start the outbox relay (top-up events to the event bus), start one
 * worker thread per configured instance (each with its own database
 * connection), serve until SIGTERM/SIGINT, drain, stop the relay, exit.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "log/log.h"
#include "metrics/metrics_server.h"
#include "service/service.h"
#include "outbox/outbox.h"
#include "pgrpc/pgrpc.h"
#include "pg/pg.h"
#include "rpc/rpc.h"
#include "token/token.h"
#include "user.pb-c.h"
#include "user_migrations.h"
#include "user_service.h"

/* Worker instances (threads, one database connection each) by default:
 * logins (Argon2id) and wallet movements wait on the CPU and
 * on commits; the payment service's threads call Debit/Credit. */
enum { user_threads_default = 4 };
static const rpc_batch_handler_t user_batch_handlers[] = {{"GetWallet", wallet_get_batch},
                                                          {"Debit", wallet_debit_batch}};
static const rpc_method_t user_methods[] = {
    {"Register", &paygate__v1__register_request__descriptor, &paygate__v1__user__descriptor,
     user_register, RPC_BATCH_NONE},
    {"Login", &paygate__v1__login_request__descriptor, &paygate__v1__login_reply__descriptor,
     user_login, RPC_BATCH_NONE},
    {"GetWallet", &paygate__v1__get_wallet_request__descriptor, &paygate__v1__wallet__descriptor,
     wallet_get, RPC_BATCH_HANDLER},
    {"TopUp", &paygate__v1__top_up_request__descriptor, &paygate__v1__top_up__descriptor,
     wallet_top_up, RPC_BATCH_NONE},
    {"Debit", &paygate__v1__wallet_movement_request__descriptor,
     &paygate__v1__wallet_movement__descriptor, wallet_debit, RPC_BATCH_HANDLER},
    {"Credit", &paygate__v1__wallet_movement_request__descriptor,
     &paygate__v1__wallet_movement__descriptor, wallet_credit, RPC_BATCH_TRANSACTION},
};

typedef struct {
    const char *pg_dsn;
    const token_keyring_t *keys;
} user_app_t;

static void *user_thread_init(unsigned index, void *app_state)
{
    (void)index;
    user_app_t *app = app_state;
    user_thread_t *thread = calloc(1, sizeof *thread);
    if (thread == NULL)
        return NULL;
    thread->keys = app->keys;
    thread->pg = pg_conn_new(app->pg_dsn, "users");
    if (thread->pg == NULL) {
        free(thread);
        return NULL;
    }
    return thread;
}

static void user_thread_fini(void *thread_state)
{
    user_thread_t *thread = thread_state;
    pg_conn_destroy(&thread->pg);
    free(thread);
}

static void usage(void)
{
    fputs("usage: paygate-user\n"
          "The user service: register, login (JWT), wallet, top-ups, debits, credits.\n"
          "Configured by environment:\n"
          "  PAYGATE_BROKER_ENDPOINT    broker (tcp://127.0.0.1:55555)\n"
          "  PAYGATE_CURVE_CERT         this process's secret certificate (CURVE)\n"
          "  PAYGATE_BROKER_CERT        the broker's public certificate, or\n"
          "  PAYGATE_BROKER_PUBLIC_KEY  the broker's public key (40 Z85 characters)\n"
          "  PAYGATE_INSECURE_PLAINTEXT 1: no CURVE, no certificate (tests only)\n"
          "  PAYGATE_PG_DSN             PostgreSQL connection string (required)\n"
          "  PAYGATE_USER_THREADS       worker instances in this process (4)\n"
          "  PAYGATE_USER_MAX_IN_FLIGHT requests an instance may hold (4)\n"
          "  PAYGATE_INSTANCE_ID        instance id prefix (user-<host>-<pid>)\n"
          "  PAYGATE_JWT_SECRET         HS256 key, at least 32 bytes (required)\n"
          "  PAYGATE_JWT_KID, PAYGATE_JWT_ISSUER, PAYGATE_JWT_AUDIENCE, PAYGATE_JWT_TTL_S,\n"
          "  PAYGATE_JWT_PREVIOUS_SECRET, PAYGATE_JWT_PREVIOUS_KID   see README\n"
          "  PAYGATE_METRICS_PORT        Prometheus /metrics port; 0/unset: none\n"
          "  PAYGATE_METRICS_BIND        address of the metrics port (127.0.0.1)\n"
          "  PAYGATE_LOG_LEVEL          debug, info, warn, error (info)\n"
          "  PAYGATE_LOG_FORMAT         json (one object per line) or text (json)\n",
          stdout);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        usage();
        return strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? 0 : 2;
    }
    if (!log_init("user") || sodium_init() < 0)
        return 2;
    service_config_t config;
    if (!service_config_read("user", true, user_threads_default, &config))
        return 2;
    const char *endpoint = config.broker_endpoint, *pg_dsn = config.pg_dsn;
    token_keyring_t *keys = token_keyring_from_env();
    if (keys == NULL)
        return 2;

    /* Schema first: no instance serves before the tables are right. */
    if (!service_migrate(pg_dsn, "users", user_migrations, user_migrations_count)) {
        token_keyring_destroy(&keys);
        return 1;
    }

    metrics_t *metrics = metrics_new();
    metrics_server_t *metrics_server = NULL;
    if (metrics == NULL ||
        !metrics_server_start_from_env("PAYGATE_METRICS_PORT", metrics, &metrics_server)) {
        token_keyring_destroy(&keys);
        return 1;
    }
    /* No /metrics listener, no outbox metrics: the backlog is a count(*)
     * the relay would run every second for nobody. */
    outbox_relay_config_t relay_config = {.pg_dsn = pg_dsn,
                                          .schema = "users",
                                          .broker_endpoint = endpoint,
                                          .metrics = metrics_server != NULL ? metrics : NULL};
    outbox_relay_t *relay = outbox_relay_start(&relay_config);
    if (relay == NULL) {
        token_keyring_destroy(&keys);
        return 1;
    }
    user_app_t app = {.pg_dsn = pg_dsn, .keys = keys};
    rpc_server_config_t server_config = {
        .endpoint = endpoint,
        .service = "user",
        .instance = config.instance,
        .methods = user_methods,
        .method_count = sizeof user_methods / sizeof user_methods[0],
        .threads = config.threads,
        .max_in_flight = config.max_in_flight,
        .thread_init = user_thread_init,
        .thread_fini = user_thread_fini,
        .app = &app,
        .metrics = metrics,
        .batch_ops = &pgrpc_batch_ops, /* user_thread_t begins with its pg_conn_t * */
        .batch_handlers = user_batch_handlers,
        .batch_handler_count = sizeof user_batch_handlers / sizeof user_batch_handlers[0],
    };
    rpc_server_t *server = rpc_server_new(&server_config);
    if (server == NULL) {
        outbox_relay_stop(&relay);
        token_keyring_destroy(&keys);
        return 2;
    }
    rpc_server_stop_on_signals(server);
    int rc = rpc_server_run(server);
    rpc_server_destroy(&server);
    outbox_relay_stop(&relay);
    metrics_server_stop(&metrics_server);
    metrics_destroy(&metrics);
    token_keyring_destroy(&keys);
    log_info("user: stopped");
    return rc == 0 ? 0 : 1;
}
