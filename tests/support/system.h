/*
 * system: the whole paygate system, started for one integration test.
 *
 * A test says which processes it wants (broker, the five services, the
 * HTTP gateway) and what is special about its run (threads, extra
 * environment per process, the JWT secret, metrics ports, the rate
 * limits off); system_new() then gives it, synchronously, a running
 * system of its own: free loopback ports for the broker and the gateway,
 * a scratch database (tests/support/scratch_db.h) so that no other test's
 * outbox relay publishes to this broker, a temporary directory for the
 * broker's event bus, Redis of ./dev test, CURVE keys per process (via
 * proc_start, tests/support/proc.h), a log file per process named
 * "<name>-<process>.log" in $PAYGATE_TEST_LOG_DIR, and it waits until the
 * gateway's /readyz answers 200 and every service started with N threads
 * has N instances registered.
 *
 * It must never decide what a test checks: it starts and stops, and
 * reports what went wrong on stderr; the assertions stay in the tests.
 */
#ifndef PAYGATE_TEST_SYSTEM_H
#define PAYGATE_TEST_SYSTEM_H

#include <stdbool.h>
#include <stddef.h>

#include "proc.h"

/* The processes, in start order (stopped in reverse). */
typedef enum {
    system_broker,
    system_user,
    system_order,
    system_payment,
    system_transaction,
    system_notification,
    system_gateway,
    system_processes /* how many there are */
} system_process_t;

/* A set of processes for system_config_t.processes: SYSTEM_ONLY(system_user) | ... */
#define SYSTEM_ONLY(process) (1u << (process))
#define SYSTEM_ALL           ((1u << system_processes) - 1u)

enum {
    system_ready_timeout_ms = 30000,   /* start-up until ready, unless config says */
    system_stop_timeout_ms = 15000,    /* SIGTERM until SIGKILL, per process */
    system_env_max = 64,               /* environment entries of one process */
    system_extra_env_max = 40,         /* entries a test may add to one process */
    system_name_bytes_max = 24,        /* config.name */
    system_env_entry_bytes_max = 1200, /* one "KEY=VALUE" the system builds */
};

typedef struct {
    /* Names the run: log files "<name>-<process>.log", the scratch database
     * "<name>_<pid>" and the directory /tmp/paygate-<name>-XXXXXX. Required;
     * [a-z0-9_]{1,23}. */
    const char *name;
    /* Which processes run (SYSTEM_ONLY bits); 0 means all seven. The
     * broker always runs. The gateway, when it runs, requires exactly the
     * services that run (PAYGATE_GATEWAY_REQUIRED_SERVICES). */
    unsigned processes;
    /* PAYGATE_JWT_SECRET of every process. Required. */
    const char *jwt_secret;
    /* Gateway rate limits off (PROC_GATEWAY_RATE_LIMITS_OFF). */
    bool rate_limits_off;
    /* A free port for each process's Prometheus listener (the broker's
     * PAYGATE_BROKER_METRICS_PORT, the services' PAYGATE_METRICS_PORT);
     * the gateway serves /metrics on its HTTP port. */
    bool metrics;
    /* PAYGATE_<PROCESS>_THREADS when > 0; for a service, start-up also
     * waits until that many instances are registered. */
    int threads[system_processes];
    /* How long start-up may take until ready; 0 means
     * system_ready_timeout_ms. */
    int ready_timeout_ms;
    /* Extra "KEY=VALUE" entries (NULL-ended, may be NULL) for every
     * process, then for one process; later entries win. */
    const char *const *env;
    const char *const *process_env[system_processes];
} system_config_t;

typedef struct _system_t system_t;

/* Starts the system 'config' describes and waits until it is ready
 * (config.ready_timeout_ms). Needs PAYGATE_TEST_PG_DSN and
 * PAYGATE_TEST_REDIS_PORT (./dev test sets them). Returns NULL, having
 * said why on stderr and stopped whatever it started, on failure. */
system_t *system_new(const system_config_t *config);

/* Stops every process still running (SIGTERM, reverse start order),
 * drops the scratch database, removes the directory, frees the system and
 * sets '*self_p' to NULL. Safe on a NULL '*self_p'. */
void system_destroy(system_t **self_p);

/* Stops every process still running, gateway first, with SIGTERM and up
 * to system_stop_timeout_ms each (then SIGKILL). Returns true when every
 * one of them exited by itself with status 0 (draining and exiting 0,
 * with no leak under ASan, is part of each process's contract); names the
 * others and their logs on stderr. A system with nothing running is
 * clean. */
bool system_stop(system_t *self);

/* The process 'which' (its pid is 0 when it does not run). */
proc_t *system_process(system_t *self, system_process_t which);

/* Starts 'which' again (after the test killed or stopped it) with the
 * environment it first had; its log file is "<name>-<process><suffix>.log"
 * ('suffix' may be NULL: the first log is truncated). Does not wait for
 * it to be ready. Returns false when it could not be started. */
bool system_start_process(system_t *self, system_process_t which, const char *suffix);

/* Fills 'env' (room for system_env_max entries) with the environment
 * process 'which' gets, NULL-ended, for a test that starts a process of
 * its own alongside (another gateway, a restarted victim); 'which' ==
 * system_processes gives what every process shares (the broker endpoint,
 * the database, Redis, the JWT secret, the bus, the gateway port and its
 * required services, config.env) without any process's own entries. A
 * test adds its own after these: the later entry of a key wins. The
 * strings belong to the system. Returns the number of entries before the
 * NULL. */
size_t system_env(const system_t *self, system_process_t which, const char **env);

/* Waits until GET /readyz on 'port' answers 200, failing early when any
 * process of the system exited. Returns false, saying why on stderr, when
 * it did not within the config's ready_timeout_ms. */
bool system_wait_ready(system_t *self, int port);

/* The gateway's HTTP port (also its /metrics). */
int system_gateway_port(const system_t *self);

/* The Prometheus port of 'which' when config.metrics (the gateway's is
 * its HTTP port), else 0. */
int system_metrics_port(const system_t *self, system_process_t which);

/* "tcp://127.0.0.1:<port>" of the broker. */
const char *system_broker_endpoint(const system_t *self);

/* The libpq DSN of the scratch database the services use. */
const char *system_pg_dsn(const system_t *self);

/* The Redis port the services use. */
int system_redis_port(const system_t *self);

/* The run's directory (the broker's event bus is in "<dir>/bus"). */
const char *system_dir(const system_t *self);

/* The short name of 'which' ("broker", "user", ..., "gateway"). */
const char *system_process_name(system_process_t which);

#endif
