/*
 * paygate-gateway: the HTTP front door. JSON in, protobuf RPCs through the
 * broker, JSON out; access tokens checked at the edge.
 *
 * The story: read the configuration, load the token keys, listen, serve
 * until SIGTERM/SIGINT, finish the requests in progress, exit.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "curve/curve.h"
#include "gateway.h"
#include "log/log.h"
#include "token/token.h"

static volatile sig_atomic_t stop_requested;

/* The rate limits (ratelimit.h) and their production defaults: generous
 * for people, tight for guessing passwords and scripted sign-ups. A
 * *_PER_MIN of 0 turns that limit off. */
static const struct {
    ratelimit_class_t class;
    const char *per_min_name;
    const char *burst_name;
    int64_t per_min;
    int64_t burst;
} rate_settings[] = {
    {RATELIMIT_ADDRESS, "PAYGATE_GATEWAY_RATE_ADDRESS_PER_MIN",
     "PAYGATE_GATEWAY_RATE_ADDRESS_BURST", 6000, 300},
    {RATELIMIT_USER, "PAYGATE_GATEWAY_RATE_USER_PER_MIN", "PAYGATE_GATEWAY_RATE_USER_BURST", 1200,
     100},
    {RATELIMIT_REGISTER_ADDRESS, "PAYGATE_GATEWAY_RATE_REGISTER_ADDRESS_PER_MIN",
     "PAYGATE_GATEWAY_RATE_REGISTER_ADDRESS_BURST", 10, 5},
    {RATELIMIT_LOGIN_ADDRESS, "PAYGATE_GATEWAY_RATE_LOGIN_ADDRESS_PER_MIN",
     "PAYGATE_GATEWAY_RATE_LOGIN_ADDRESS_BURST", 30, 10},
    {RATELIMIT_LOGIN_EMAIL, "PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_PER_MIN",
     "PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_BURST", 2, 5},
    {RATELIMIT_PAYMENT_USER, "PAYGATE_GATEWAY_RATE_PAYMENT_USER_PER_MIN",
     "PAYGATE_GATEWAY_RATE_PAYMENT_USER_BURST", 60, 10},
};
_Static_assert(sizeof rate_settings / sizeof rate_settings[0] == RATELIMIT_CLASS_COUNT,
               "one setting per rate limit class");

static void on_stop_signal(int signo)
{
    (void)signo;
    stop_requested = 1;
}

static void usage(void)
{
    fputs("usage: paygate-gateway\n"
          "The HTTP gateway. Configured by environment:\n"
          "  PAYGATE_GATEWAY_BIND               IPv4 address to listen on (127.0.0.1)\n"
          "  PAYGATE_GATEWAY_PORT               port (8080)\n"
          "  PAYGATE_GATEWAY_THREADS            HTTP worker threads (16)\n"
          "  PAYGATE_GATEWAY_BODY_BYTES_MAX     largest request body (65536)\n"
          "  PAYGATE_GATEWAY_HEADER_BYTES_MAX   memory for a request's head (8192)\n"
          "  PAYGATE_GATEWAY_CONNECTIONS_MAX    open connections (1024)\n"
          "  PAYGATE_GATEWAY_CONNECTIONS_PER_ADDRESS_MAX  from one client address (128; 0: any)\n"
          "  PAYGATE_GATEWAY_TIMEOUT_S          idle or slow connection timeout (30)\n"
          "  PAYGATE_GATEWAY_DEADLINE_MS        deadline of each call to a service (5000)\n"
          "  PAYGATE_GATEWAY_REQUIRED_SERVICES  services /readyz waits for "
          "(user,order,payment)\n"
          "  PAYGATE_BROKER_ENDPOINT            broker (tcp://127.0.0.1:55555)\n"
          "  PAYGATE_CURVE_CERT                 this process's secret certificate (CURVE)\n"
          "  PAYGATE_BROKER_CERT                the broker's public certificate, or\n"
          "  PAYGATE_BROKER_PUBLIC_KEY          the broker's public key (40 Z85 characters)\n"
          "  PAYGATE_INSECURE_PLAINTEXT         1: no CURVE, no certificate (tests only)\n"
          "  PAYGATE_REDIS_HOST                 Redis for notification streams (127.0.0.1)\n"
          "  PAYGATE_REDIS_PORT                 its port (6379)\n"
          "  PAYGATE_GATEWAY_STREAMS_MAX        open notification streams (256)\n"
          "  PAYGATE_GATEWAY_STATIC_DIR         the web app, served at / (unset: none)\n"
          "  PAYGATE_GATEWAY_OPENAPI_FILE       served at /openapi.yaml (unset: 404)\n"
          "  PAYGATE_GATEWAY_RATE_<CLASS>_PER_MIN, PAYGATE_GATEWAY_RATE_<CLASS>_BURST\n"
          "      token buckets, CLASS = ADDRESS (6000, 300), USER (1200, 100),\n"
          "      REGISTER_ADDRESS (10, 5), LOGIN_ADDRESS (30, 10), LOGIN_EMAIL (2, 5),\n"
          "      PAYMENT_USER (60, 10); a rate of 0 turns that limit off\n"
          "  PAYGATE_GATEWAY_RATE_TABLE_ENTRIES buckets kept in memory (65536)\n"
          "  PAYGATE_GATEWAY_FORWARDED_HOPS     trusted proxies adding to X-Forwarded-For (0)\n"
          "  PAYGATE_JWT_SECRET, PAYGATE_JWT_KID, PAYGATE_JWT_ISSUER, PAYGATE_JWT_AUDIENCE,\n"
          "  PAYGATE_JWT_PREVIOUS_SECRET, PAYGATE_JWT_PREVIOUS_KID   see README\n"
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
    if (!log_init("gateway"))
        return 2;
    gateway_config_t config;
    memset(&config, 0, sizeof config);
    int64_t port, threads, body_max, header_max, connections, timeout_s, deadline_ms;
    bool ok = config_str("PAYGATE_GATEWAY_BIND", "127.0.0.1", 64, &config.bind_address);
    ok &= config_int("PAYGATE_GATEWAY_PORT", 8080, 1, 65535, &port);
    ok &= config_int("PAYGATE_GATEWAY_THREADS", 16, 1, 256, &threads);
    ok &= config_int("PAYGATE_GATEWAY_BODY_BYTES_MAX", 65536, 256, 16 * 1024 * 1024, &body_max);
    ok &= config_int("PAYGATE_GATEWAY_HEADER_BYTES_MAX", 8192, 4096, 1024 * 1024, &header_max);
    ok &= config_int("PAYGATE_GATEWAY_CONNECTIONS_MAX", 1024, 1, 100000, &connections);
    int64_t per_address, table_entries, forwarded_hops;
    ok &= config_int("PAYGATE_GATEWAY_CONNECTIONS_PER_ADDRESS_MAX", 128, 0, 100000, &per_address);
    for (size_t i = 0; i < sizeof rate_settings / sizeof rate_settings[0]; i++) {
        ratelimit_rule_t *rule = &config.rate.rules[rate_settings[i].class];
        ok &= config_int(rate_settings[i].per_min_name, rate_settings[i].per_min, 0,
                         ratelimit_per_min_max, &rule->per_min);
        ok &= config_int(rate_settings[i].burst_name, rate_settings[i].burst, 1,
                         ratelimit_burst_max, &rule->burst);
    }
    ok &= config_int("PAYGATE_GATEWAY_RATE_TABLE_ENTRIES", 65536, ratelimit_entries_min,
                     ratelimit_entries_max, &table_entries);
    ok &= config_int("PAYGATE_GATEWAY_FORWARDED_HOPS", 0, 0, 8, &forwarded_hops);
    ok &= config_int("PAYGATE_GATEWAY_TIMEOUT_S", 30, 1, 3600, &timeout_s);
    ok &= config_int("PAYGATE_GATEWAY_DEADLINE_MS", 5000, 10, 60000, &deadline_ms);
    ok &= config_str("PAYGATE_GATEWAY_REQUIRED_SERVICES", "user,order,payment", 255,
                     &config.required_services);
    ok &= config_str("PAYGATE_BROKER_ENDPOINT", "tcp://127.0.0.1:55555", 255,
                     &config.broker_endpoint);
    int64_t redis_port, streams_max;
    ok &= config_str("PAYGATE_REDIS_HOST", "127.0.0.1", 255, &config.redis_host);
    ok &= config_int("PAYGATE_REDIS_PORT", 6379, 1, 65535, &redis_port);
    ok &= config_int("PAYGATE_GATEWAY_STREAMS_MAX", 256, 1, 65536, &streams_max);
    ok &= config_str("PAYGATE_GATEWAY_STATIC_DIR", "", 1024, &config.static_dir);
    ok &= config_str("PAYGATE_GATEWAY_OPENAPI_FILE", "", 1024, &config.openapi_file);
    /* Every call goes through the broker with this identity: refuse to
     * start without one rather than fail each request. */
    ok &= curve_process_identity() != NULL;
    if (!ok)
        return 2;
    struct stat dir_stat;
    if (config.static_dir[0] != '\0' &&
        (stat(config.static_dir, &dir_stat) != 0 || !S_ISDIR(dir_stat.st_mode))) {
        log_error("PAYGATE_GATEWAY_STATIC_DIR: '%s' is not a directory", config.static_dir);
        return 2;
    }
    if (config.static_dir[0] != '\0')
        log_info("gateway: serving the web app from %s", config.static_dir);
    /* Not fatal: the document may be written after the gateway starts. */
    if (config.openapi_file[0] != '\0' && access(config.openapi_file, R_OK) != 0)
        log_warn("PAYGATE_GATEWAY_OPENAPI_FILE: '%s' cannot be read (yet); /openapi.yaml "
                 "answers 404 until it can",
                 config.openapi_file);
    config.port = (uint16_t)port;
    config.threads = (unsigned)threads;
    config.body_bytes_max = (size_t)body_max;
    config.header_bytes_max = (size_t)header_max;
    config.connections_max = (unsigned)connections;
    config.connections_per_address_max = (unsigned)per_address;
    config.rate.entries_max = (size_t)table_entries;
    config.forwarded_hops = (unsigned)forwarded_hops;
    config.timeout_s = (unsigned)timeout_s;
    config.deadline_ms = (uint32_t)deadline_ms;
    config.redis_port = (uint16_t)redis_port;
    config.streams_max = (unsigned)streams_max;
    token_keyring_t *keys = token_keyring_from_env();
    if (keys == NULL)
        return 2;
    config.keys = keys;

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);

    gateway_t *gateway = gateway_new(&config);
    if (gateway == NULL) {
        token_keyring_destroy(&keys);
        return 1;
    }
    while (!stop_requested)
        pause();
    log_info("gateway: stopping");
    gateway_destroy(&gateway);
    token_keyring_destroy(&keys);
    log_info("gateway: stopped");
    return 0;
}
