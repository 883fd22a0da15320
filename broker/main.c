/*
 * paygate-broker: routes requests between clients and service workers
 * over one ZeroMQ ROUTER endpoint; service discovery by heartbeat.
 *
 * The story: read the configuration (environment), bind, serve until
 * SIGTERM/SIGINT, answer what is still waiting, exit.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "broker.h"
#include "config/config.h"
#include "log/log.h"

static broker_t *running_broker;

static void on_stop_signal(int signo)
{
    (void)signo;
    if (running_broker != NULL)
        broker_stop(running_broker);
}

static void usage(void)
{
    fputs("usage: paygate-broker\n"
          "Routes paygate RPCs between clients and services. Configured by environment:\n"
          "  PAYGATE_BROKER_ENDPOINT             bind endpoint (tcp://127.0.0.1:55555)\n"
          "  PAYGATE_CURVE_CERT                  the broker's secret certificate (CURVE)\n"
          "  PAYGATE_CURVE_CLIENTS_DIR           client certificates (*.cert) admitted\n"
          "  PAYGATE_INSECURE_PLAINTEXT          1: no certificate, no authentication (tests)\n"
          "  PAYGATE_BROKER_HEARTBEAT_MS         default worker heartbeat interval (1000)\n"
          "  PAYGATE_BROKER_HEARTBEAT_LIVENESS   missed intervals before expiry (3)\n"
          "  PAYGATE_BROKER_QUEUE_MAX            waiting requests per service (1000)\n"
          "  PAYGATE_BROKER_UNAVAILABLE_GRACE_MS wait for a worker before UNAVAILABLE (2000)\n"
          "  PAYGATE_BROKER_DEADLINE_DEFAULT_MS  deadline of requests without one (5000)\n"
          "  PAYGATE_BROKER_DEADLINE_MAX_MS      longest deadline accepted (60000)\n"
          "  PAYGATE_BROKER_MESSAGE_BYTES_MAX    largest message accepted (1048576)\n"
          "  PAYGATE_BROKER_WORKERS_MAX          registered instances, all services (1024)\n"
          "  PAYGATE_BROKER_SERVICES_MAX         distinct services (256)\n"
          "  PAYGATE_BROKER_REQUESTS_MAX         waiting + in-flight requests (100000)\n"
          "  PAYGATE_BROKER_DATA_DIR             event bus data; unset: no event bus\n"
          "  PAYGATE_BROKER_SEGMENT_BYTES        event log segment size (67108864)\n"
          "  PAYGATE_BROKER_RETENTION_MS         keep events this long (604800000)\n"
          "  PAYGATE_BROKER_RETENTION_BYTES      keep at most this much per topic (1073741824)\n"
          "  PAYGATE_BROKER_ACK_TIMEOUT_MS       redeliver unacknowledged events after (30000)\n"
          "  PAYGATE_BROKER_MAX_DELIVERIES       then dead-letter to <topic>.dlq (10)\n"
          "  PAYGATE_BROKER_DEDUP_WINDOW         event ids remembered per topic (10000)\n"
          "  PAYGATE_BROKER_GROUP_WINDOW         events a group holds ahead (256)\n"
          "  PAYGATE_BROKER_NACK_DELAY_MS        redelivery delay after a NACK (1000)\n"
          "  PAYGATE_BROKER_METRICS_PORT         Prometheus /metrics port; 0/unset: none\n"
          "  PAYGATE_BROKER_METRICS_INTERVAL_MS  how often metrics are refreshed (1000)\n"
          "  PAYGATE_METRICS_BIND                address of the metrics port (127.0.0.1)\n"
          "  PAYGATE_LOG_LEVEL                   debug, info, warn, error (info)\n"
          "  PAYGATE_LOG_FORMAT                  json (one object per line) or text (json)\n",
          stdout);
}

/* Reads the authentication settings: a certificate and a directory of
 * client certificates, or the explicit insecure setting (with a loud
 * warning). Neither is an error: the broker does not start open by
 * accident. */
static bool broker_curve_config_read(broker_config_t *config)
{
    int64_t insecure = 0;
    bool ok = config_str("PAYGATE_CURVE_CERT", NULL, 1023, &config->curve_cert);
    ok &= config_str("PAYGATE_CURVE_CLIENTS_DIR", NULL, 1023, &config->clients_dir);
    ok &= config_int("PAYGATE_INSECURE_PLAINTEXT", 0, 0, 1, &insecure);
    if (!ok)
        return false;
    if (config->curve_cert != NULL) {
        if (config->clients_dir == NULL) {
            log_error("config: PAYGATE_CURVE_CLIENTS_DIR (the client certificates the broker "
                      "admits) is required with PAYGATE_CURVE_CERT");
            return false;
        }
        return true;
    }
    if (insecure == 1) {
        log_warn("**************************************************************************");
        log_warn("INSECURE: PAYGATE_INSECURE_PLAINTEXT=1: the broker runs in PLAINTEXT and");
        log_warn("authenticates NOBODY: any peer that reaches the endpoint may register any");
        log_warn("service, call as anyone and publish anything. Use it only for tests.");
        log_warn("**************************************************************************");
        return true;
    }
    log_error("config: no broker certificate: set PAYGATE_CURVE_CERT (the broker's secret "
              "certificate, made by paygate-certs) and PAYGATE_CURVE_CLIENTS_DIR; or, for "
              "tests only, PAYGATE_INSECURE_PLAINTEXT=1");
    return false;
}

/* Reads every setting; false (after logging which) when one is invalid. */
static bool broker_config_read(broker_config_t *config)
{
    registry_config_t *r = &config->registry;
    *r = registry_config_default();
    int64_t v[10], bytes_max;
    bool ok =
        config_str("PAYGATE_BROKER_ENDPOINT", "tcp://127.0.0.1:55555", 255, &config->endpoint);
    ok &= config_int("PAYGATE_BROKER_HEARTBEAT_MS", r->heartbeat_interval_ms, 50, 60000, &v[0]);
    ok &= config_int("PAYGATE_BROKER_HEARTBEAT_LIVENESS", r->heartbeat_liveness, 2, 20, &v[1]);
    ok &= config_int("PAYGATE_BROKER_QUEUE_MAX", r->queue_max, 1, 1000000, &v[2]);
    ok &=
        config_int("PAYGATE_BROKER_UNAVAILABLE_GRACE_MS", r->unavailable_grace_ms, 0, 60000, &v[3]);
    ok &=
        config_int("PAYGATE_BROKER_DEADLINE_DEFAULT_MS", r->deadline_default_ms, 1, 3600000, &v[4]);
    ok &= config_int("PAYGATE_BROKER_DEADLINE_MAX_MS", r->deadline_max_ms, 1, 3600000, &v[5]);
    ok &= config_int("PAYGATE_BROKER_WORKERS_MAX", r->workers_max, 1, 100000, &v[6]);
    ok &= config_int("PAYGATE_BROKER_SERVICES_MAX", r->services_max, 1, 10000, &v[7]);
    ok &= config_int("PAYGATE_BROKER_REQUESTS_MAX", r->requests_max, 1, 10000000, &v[8]);
    ok &= config_int("PAYGATE_BROKER_MESSAGE_BYTES_MAX", 1024 * 1024, 1024, 64 * 1024 * 1024,
                     &bytes_max);
    ok &= broker_curve_config_read(config);
    if (!ok)
        return false;
    r->heartbeat_interval_ms = (uint32_t)v[0];
    r->heartbeat_liveness = (uint32_t)v[1];
    r->queue_max = (uint32_t)v[2];
    r->unavailable_grace_ms = (uint32_t)v[3];
    r->deadline_default_ms = (uint32_t)v[4];
    r->deadline_max_ms = (uint32_t)v[5];
    r->workers_max = (uint32_t)v[6];
    r->services_max = (uint32_t)v[7];
    r->requests_max = (uint32_t)v[8];
    config->message_bytes_max = (size_t)bytes_max;
    bus_config_t *b = &config->bus;
    *b = bus_config_default();
    int64_t w[8];
    ok = config_str("PAYGATE_BROKER_DATA_DIR", NULL, 1024, &b->data_dir);
    ok &= config_int("PAYGATE_BROKER_SEGMENT_BYTES", (int64_t)b->segment_bytes_max, 4096,
                     INT64_C(1) << 34, &w[0]);
    ok &= config_int("PAYGATE_BROKER_RETENTION_MS", b->retention_ms, 0, INT64_C(1) << 45, &w[1]);
    ok &= config_int("PAYGATE_BROKER_RETENTION_BYTES", (int64_t)b->retention_bytes, 0,
                     INT64_C(1) << 50, &w[2]);
    ok &= config_int("PAYGATE_BROKER_ACK_TIMEOUT_MS", b->ack_timeout_ms, 10, 3600000, &w[3]);
    ok &= config_int("PAYGATE_BROKER_MAX_DELIVERIES", b->max_deliveries, 1, 1000, &w[4]);
    ok &= config_int("PAYGATE_BROKER_DEDUP_WINDOW", b->dedup_window, 0, 10000000, &w[5]);
    ok &= config_int("PAYGATE_BROKER_GROUP_WINDOW", b->group_window, 1, 65536, &w[6]);
    ok &= config_int("PAYGATE_BROKER_NACK_DELAY_MS", b->nack_delay_ms, 0, 3600000, &w[7]);
    if (!ok)
        return false;
    b->segment_bytes_max = (uint64_t)w[0];
    b->retention_ms = w[1];
    b->retention_bytes = (uint64_t)w[2];
    b->ack_timeout_ms = (uint32_t)w[3];
    b->max_deliveries = (uint32_t)w[4];
    b->dedup_window = (uint32_t)w[5];
    b->group_window = (uint32_t)w[6];
    b->nack_delay_ms = (uint32_t)w[7];
    int64_t metrics_interval_ms;
    ok = metrics_server_config_read("PAYGATE_BROKER_METRICS_PORT", &config->metrics);
    ok &= config_int("PAYGATE_BROKER_METRICS_INTERVAL_MS", 1000, 10, 60000, &metrics_interval_ms);
    if (!ok)
        return false;
    config->metrics_interval_ms = (uint32_t)metrics_interval_ms;
    b->heartbeat_interval_ms = r->heartbeat_interval_ms;
    b->heartbeat_liveness = r->heartbeat_liveness;
    if (r->deadline_default_ms > r->deadline_max_ms) {
        log_error("config: PAYGATE_BROKER_DEADLINE_DEFAULT_MS is over "
                  "PAYGATE_BROKER_DEADLINE_MAX_MS");
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        usage();
        return strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? 0 : 2;
    }
    if (!log_init("broker"))
        return 2;
    broker_config_t config;
    if (!broker_config_read(&config))
        return 2;

    broker_t *broker = broker_new(&config);
    if (broker == NULL)
        return 1;
    running_broker = broker;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);

    broker_run(broker);

    running_broker = NULL;
    broker_destroy(&broker);
    log_info("broker: stopped");
    return 0;
}
