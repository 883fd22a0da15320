/*
 * system: the whole paygate system for one integration test. See system.h.
 */
#include "system.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock/clock.h"
#include "http_client.h"
#include "scratch_db.h"

static const char *const process_names[system_processes] = {
    "broker", "user", "order", "payment", "transaction", "notification", "gateway"};
static const char *const process_bins[system_processes] = {
    PAYGATE_BROKER_BIN,      PAYGATE_USER_BIN,         PAYGATE_ORDER_BIN,  PAYGATE_PAYMENT_BIN,
    PAYGATE_TRANSACTION_BIN, PAYGATE_NOTIFICATION_BIN, PAYGATE_GATEWAY_BIN};

enum { entry_bytes = system_env_entry_bytes_max, dsn_bytes = 1024 };

struct _system_t {
    system_config_t config; /* the pointers in it are the test's */
    unsigned processes;
    int ready_timeout_ms;
    proc_t procs[system_processes];
    int broker_port;
    int gateway_port;
    int redis_port;
    int metrics_ports[system_processes];
    char endpoint[64];
    char dir[128];
    char base_dsn[dsn_bytes];
    char db_name[64];
    char dsn[dsn_bytes];
    bool db_made;
    /* The "KEY=VALUE" entries the system builds. */
    char env_endpoint[entry_bytes];
    char env_pg[entry_bytes];
    char env_redis_port[64];
    char env_jwt[entry_bytes];
    char env_bus[entry_bytes];
    char env_gateway_port[64];
    char env_required[entry_bytes];
    char env_metrics[system_processes][64];
    char env_threads[system_processes][64];
};

const char *system_process_name(system_process_t which)
{
    return which < system_processes ? process_names[which] : "?";
}

/* True when 'name' is [a-z0-9_]{1,system_name_bytes_max - 1}. */
static bool name_valid(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len >= system_name_bytes_max)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!islower((unsigned char)name[i]) && !isdigit((unsigned char)name[i]) && name[i] != '_')
            return false;
    }
    return true;
}

/* Appends the NULL-ended 'extra' to 'env' at '*n', keeping room for the
 * final NULL. Returns false when it does not fit. */
static bool env_append(const char **env, size_t *n, const char *const *extra)
{
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++) {
        if (*n + 1 >= system_env_max)
            return false;
        env[(*n)++] = extra[i];
    }
    return true;
}

size_t system_env(const system_t *self, system_process_t which, const char **env)
{
    static const char *const limits_off[] = {PROC_GATEWAY_RATE_LIMITS_OFF, NULL};
    size_t n = 0;
    env[n++] = self->env_endpoint;
    env[n++] = self->env_pg;
    env[n++] = self->env_redis_port;
    env[n++] = "PAYGATE_REDIS_HOST=127.0.0.1";
    env[n++] = self->env_jwt;
    env[n++] = self->env_bus;
    env[n++] = self->env_gateway_port;
    env[n++] = self->env_required;
    bool fits = true;
    if (which < system_processes) {
        if (self->env_metrics[which][0] != '\0')
            env[n++] = self->env_metrics[which];
        if (self->env_threads[which][0] != '\0')
            env[n++] = self->env_threads[which];
        if (self->config.rate_limits_off && which == system_gateway)
            fits &= env_append(env, &n, limits_off);
    }
    fits &= env_append(env, &n, self->config.env);
    if (which < system_processes)
        fits &= env_append(env, &n, self->config.process_env[which]);
    if (!fits)
        fprintf(stderr, "system: more than %d environment entries for %s; the rest dropped\n",
                system_env_max, system_process_name(which));
    env[n] = NULL;
    return n;
}

bool system_start_process(system_t *self, system_process_t which, const char *suffix)
{
    const char *env[system_env_max];
    system_env(self, which, env);
    char name[96];
    snprintf(name, sizeof name, "%s-%s%s", self->config.name, process_names[which],
             suffix ? suffix : "");
    if (!proc_start(&self->procs[which], name, process_bins[which], env)) {
        fprintf(stderr, "system: cannot start %s\n", name);
        return false;
    }
    return true;
}

/* Fills the entries every process gets. Returns false when the test's
 * environment lacks what it needs or a resource could not be had. */
static bool system_prepare(system_t *self)
{
    const char *dsn = getenv("PAYGATE_TEST_PG_DSN");
    const char *redis = getenv("PAYGATE_TEST_REDIS_PORT");
    if (dsn == NULL || *dsn == '\0' || redis == NULL || *redis == '\0') {
        fprintf(stderr, "system: PAYGATE_TEST_PG_DSN and PAYGATE_TEST_REDIS_PORT must be set: run "
                        "the suite with ./dev test\n");
        return false;
    }
    self->redis_port = atoi(redis);
    self->broker_port = free_tcp_port();
    self->gateway_port = free_tcp_port();
    if (self->broker_port <= 0 || self->gateway_port <= 0 ||
        self->broker_port == self->gateway_port) {
        fprintf(stderr, "system: no free ports\n");
        return false;
    }
    snprintf(self->dir, sizeof self->dir, "/tmp/paygate-%s-XXXXXX", self->config.name);
    if (mkdtemp(self->dir) == NULL) {
        fprintf(stderr, "system: mkdtemp %s failed\n", self->dir);
        self->dir[0] = '\0';
        return false;
    }
    /* A database of our own: our services' outboxes must be ours alone. */
    snprintf(self->base_dsn, sizeof self->base_dsn, "%s", dsn);
    snprintf(self->db_name, sizeof self->db_name, "%s_%d", self->config.name, (int)getpid());
    if (!scratch_db_create(dsn, self->db_name, self->dsn, sizeof self->dsn))
        return false;
    self->db_made = true;

    snprintf(self->endpoint, sizeof self->endpoint, "tcp://127.0.0.1:%d", self->broker_port);
    snprintf(self->env_endpoint, sizeof self->env_endpoint, "PAYGATE_BROKER_ENDPOINT=%s",
             self->endpoint);
    snprintf(self->env_pg, sizeof self->env_pg, "PAYGATE_PG_DSN=%s", self->dsn);
    snprintf(self->env_redis_port, sizeof self->env_redis_port, "PAYGATE_REDIS_PORT=%d",
             self->redis_port);
    snprintf(self->env_jwt, sizeof self->env_jwt, "PAYGATE_JWT_SECRET=%s", self->config.jwt_secret);
    snprintf(self->env_bus, sizeof self->env_bus, "PAYGATE_BROKER_DATA_DIR=%s/bus", self->dir);
    snprintf(self->env_gateway_port, sizeof self->env_gateway_port, "PAYGATE_GATEWAY_PORT=%d",
             self->gateway_port);
    static const char required[] = "PAYGATE_GATEWAY_REQUIRED_SERVICES=";
    size_t len = (size_t)snprintf(self->env_required, sizeof self->env_required, "%s", required);
    for (int i = system_user; i <= system_notification; i++) {
        if (self->processes & SYSTEM_ONLY(i))
            len += (size_t)snprintf(self->env_required + len, sizeof self->env_required - len,
                                    "%s%s", len > sizeof required - 1 ? "," : "", process_names[i]);
    }
    for (int i = 0; i < system_processes; i++) {
        if (self->config.metrics) {
            self->metrics_ports[i] = i == system_gateway ? self->gateway_port : free_tcp_port();
            if (i != system_gateway)
                snprintf(self->env_metrics[i], sizeof self->env_metrics[i], "%s=%d",
                         i == system_broker ? "PAYGATE_BROKER_METRICS_PORT"
                                            : "PAYGATE_METRICS_PORT",
                         self->metrics_ports[i]);
        }
        if (self->config.threads[i] > 0) {
            char upper[32];
            size_t k = 0;
            for (; process_names[i][k] != '\0' && k + 1 < sizeof upper; k++)
                upper[k] = (char)toupper((unsigned char)process_names[i][k]);
            upper[k] = '\0';
            snprintf(self->env_threads[i], sizeof self->env_threads[i], "PAYGATE_%s_THREADS=%d",
                     upper, self->config.threads[i]);
        }
    }
    return true;
}

/* Waits until every service started with N threads has N instances
 * registered. */
static bool system_wait_instances(system_t *self)
{
    rpc_client_t *rpc = rpc_client_new(NULL, self->endpoint);
    if (rpc == NULL) {
        fprintf(stderr, "system: no RPC client for %s\n", self->endpoint);
        return false;
    }
    bool ok = true;
    for (int i = system_user; ok && i <= system_notification; i++) {
        int want = self->config.threads[i];
        if (want <= 0 || !(self->processes & SYSTEM_ONLY(i)))
            continue;
        if (discovery_wait(rpc, process_names[i], want, self->ready_timeout_ms) < 0) {
            fprintf(stderr, "system: %s did not register %d instances; see %s\n", process_names[i],
                    want, self->procs[i].log_path);
            ok = false;
        }
    }
    rpc_client_destroy(&rpc);
    return ok;
}

system_t *system_new(const system_config_t *config)
{
    if (config == NULL || !name_valid(config->name) || config->jwt_secret == NULL) {
        fprintf(stderr,
                "system: a config with a name ([a-z0-9_]{1,%d}) and a JWT secret is "
                "needed\n",
                system_name_bytes_max - 1);
        return NULL;
    }
    system_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    self->processes = (config->processes ? config->processes : SYSTEM_ALL) & SYSTEM_ALL;
    self->processes |= SYSTEM_ONLY(system_broker);
    self->ready_timeout_ms =
        config->ready_timeout_ms > 0 ? config->ready_timeout_ms : system_ready_timeout_ms;
    bool ok = system_prepare(self);
    for (int i = 0; ok && i < system_processes; i++) {
        if (self->processes & SYSTEM_ONLY(i))
            ok = system_start_process(self, (system_process_t)i, NULL);
    }
    if (ok && (self->processes & SYSTEM_ONLY(system_gateway)))
        ok = system_wait_ready(self, self->gateway_port);
    if (ok)
        ok = system_wait_instances(self);
    if (!ok)
        system_destroy(&self);
    return self;
}

bool system_stop(system_t *self)
{
    bool clean = true;
    for (int i = system_processes - 1; i >= 0; i--) {
        proc_t *p = &self->procs[i];
        if (p->pid > 0 && !proc_stop(p, system_stop_timeout_ms)) {
            fprintf(stderr, "system: %s did not stop cleanly on SIGTERM (status 0x%x); see %s\n",
                    p->name, (unsigned)p->exit_status, p->log_path);
            clean = false;
        }
    }
    return clean;
}

void system_destroy(system_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    system_t *self = *self_p;
    system_stop(self);
    if (self->db_made)
        scratch_db_drop(self->base_dsn, self->db_name);
    if (self->dir[0] != '\0') {
        char command[256];
        snprintf(command, sizeof command, "rm -rf '%s'", self->dir);
        if (system(command) != 0)
            fprintf(stderr, "system: could not remove %s\n", self->dir);
    }
    free(self);
    *self_p = NULL;
}

bool system_wait_ready(system_t *self, int port)
{
    int64_t until = clock_now_ms() + self->ready_timeout_ms;
    int status = 0;
    for (;;) {
        for (int i = 0; i < system_processes; i++) {
            proc_t *p = &self->procs[i];
            if (p->pid > 0 && proc_wait(p, 0)) {
                fprintf(stderr, "system: %s exited during start-up (status 0x%x); see %s\n",
                        p->name, (unsigned)p->exit_status, p->log_path);
                return false;
            }
        }
        http_response_t r;
        bool answered = http_request(&r, port, "GET", "/readyz", NULL, NULL);
        status = r.status;
        http_response_free(&r);
        if (answered && status == 200)
            return true;
        if (clock_now_ms() > until) {
            fprintf(stderr,
                    "system: /readyz on port %d not 200 within %d ms (last: %d); see "
                    "%s-*.log in $PAYGATE_TEST_LOG_DIR\n",
                    port, self->ready_timeout_ms, status, self->config.name);
            return false;
        }
        sleep_ms(100);
    }
}

proc_t *system_process(system_t *self, system_process_t which)
{
    return &self->procs[which];
}

int system_gateway_port(const system_t *self)
{
    return self->gateway_port;
}

int system_metrics_port(const system_t *self, system_process_t which)
{
    return self->metrics_ports[which];
}

const char *system_broker_endpoint(const system_t *self)
{
    return self->endpoint;
}

const char *system_pg_dsn(const system_t *self)
{
    return self->dsn;
}

int system_redis_port(const system_t *self)
{
    return self->redis_port;
}

const char *system_dir(const system_t *self)
{
    return self->dir;
}
