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
#include "gateway.h"
#include "log/log.h"
#include "token/token.h"

static volatile sig_atomic_t stop_requested;

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
          "  PAYGATE_GATEWAY_THREADS            HTTP worker threads (4)\n"
          "  PAYGATE_GATEWAY_BODY_BYTES_MAX     largest request body (65536)\n"
          "  PAYGATE_GATEWAY_HEADER_BYTES_MAX   memory for a request's head (32768)\n"
          "  PAYGATE_GATEWAY_CONNECTIONS_MAX    open connections (1024)\n"
          "  PAYGATE_GATEWAY_TIMEOUT_S          idle or slow connection timeout (30)\n"
          "  PAYGATE_GATEWAY_DEADLINE_MS        deadline of each call to a service (5000)\n"
          "  PAYGATE_GATEWAY_REQUIRED_SERVICES  services /readyz waits for "
          "(user,order,payment)\n"
          "  PAYGATE_BROKER_ENDPOINT            broker (tcp://127.0.0.1:55555)\n"
          "  PAYGATE_REDIS_HOST                 Redis for notification streams (127.0.0.1)\n"
          "  PAYGATE_REDIS_PORT                 its port (6379)\n"
          "  PAYGATE_GATEWAY_STREAMS_MAX        open notification streams (256)\n"
          "  PAYGATE_GATEWAY_STATIC_DIR         the web app, served at / (unset: none)\n"
          "  PAYGATE_GATEWAY_OPENAPI_FILE       served at /openapi.yaml (unset: 404)\n"
          "  PAYGATE_JWT_SECRET, PAYGATE_JWT_KID, PAYGATE_JWT_ISSUER, PAYGATE_JWT_AUDIENCE,\n"
          "  PAYGATE_JWT_PREVIOUS_SECRET, PAYGATE_JWT_PREVIOUS_KID   see README\n"
          "  PAYGATE_LOG_LEVEL                  debug, info, warn, error (info)\n",
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
    int64_t port, threads, body_max, header_max, connections, timeout_s, deadline_ms;
    bool ok = config_str("PAYGATE_GATEWAY_BIND", "127.0.0.1", 64, &config.bind_address);
    ok &= config_int("PAYGATE_GATEWAY_PORT", 8080, 1, 65535, &port);
    ok &= config_int("PAYGATE_GATEWAY_THREADS", 4, 1, 256, &threads);
    ok &= config_int("PAYGATE_GATEWAY_BODY_BYTES_MAX", 65536, 256, 16 * 1024 * 1024, &body_max);
    ok &= config_int("PAYGATE_GATEWAY_HEADER_BYTES_MAX", 32768, 4096, 1024 * 1024, &header_max);
    ok &= config_int("PAYGATE_GATEWAY_CONNECTIONS_MAX", 1024, 1, 100000, &connections);
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
