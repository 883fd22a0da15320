/*
 * proc: real processes for integration tests.
 *
 * Starts our binaries as child processes with extra environment, their
 * output in a log file under the build tree, and stops them by signal.
 * Also: a free loopback port, and discovery queries against a broker.
 */
#ifndef PAYGATE_TEST_PROC_H
#define PAYGATE_TEST_PROC_H

#include <stdbool.h>
#include <sys/types.h>

#include "rpc/rpc.h"

/* The gateway's rate limits off, as "KEY=VALUE" strings for a gateway's
 * environment array, for tests whose subject is not the limits: they run
 * many clients and accounts from 127.0.0.1, far beyond the production
 * defaults. tests/integration/test_gateway_security.c tests the limits. */
#define PROC_GATEWAY_RATE_LIMITS_OFF                                                               \
    "PAYGATE_GATEWAY_RATE_ADDRESS_PER_MIN=0", "PAYGATE_GATEWAY_RATE_USER_PER_MIN=0",               \
        "PAYGATE_GATEWAY_RATE_REGISTER_ADDRESS_PER_MIN=0",                                         \
        "PAYGATE_GATEWAY_RATE_LOGIN_ADDRESS_PER_MIN=0",                                            \
        "PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_PER_MIN=0",                                              \
        "PAYGATE_GATEWAY_RATE_PAYMENT_USER_PER_MIN=0"

typedef struct {
    pid_t pid; /* 0 when not running */
    char name[64];
    char log_path[512];
    int exit_status; /* waitpid status once reaped */
} proc_t;

/* Starts 'path' as 'name' with 'env' ("KEY=VALUE" strings, NULL-ended)
 * added to this process's environment. When the test runs with test
 * certificates (PAYGATE_TEST_CERTS_DIR, see tests/support/make_test_certs.sh)
 * a binary named paygate-NAME gets PAYGATE_CURVE_CERT=<dir>/NAME.cert_secret
 * when that file exists ('env' may still override it). Output goes to a log file named
 * after 'name' in $PAYGATE_TEST_LOG_DIR (default: the current directory),
 * truncated first.
 * Returns false when fork/exec setup failed. */
bool proc_start(proc_t *p, const char *name, const char *path, const char *const env[]);

/* As proc_start, with command-line arguments 'args' (NULL-ended, may be
 * NULL) after the program name: for servers that are configured by
 * arguments (a test's own redis-server). */
bool proc_start_args(proc_t *p, const char *name, const char *path, const char *const args[],
                     const char *const env[]);

/* Sends 'signo'. */
void proc_signal(proc_t *p, int signo);

/* Waits up to 'timeout_ms' for the process to exit. Returns true when it
 * has (status in p->exit_status). */
bool proc_wait(proc_t *p, int timeout_ms);

/* SIGKILLs the process (if running) and reaps it. */
void proc_kill(proc_t *p);

/* SIGTERM, wait up to 'timeout_ms', then SIGKILL. Returns true when it
 * exited by itself with status 0. */
bool proc_stop(proc_t *p, int timeout_ms);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int free_tcp_port(void);

/* Instances of 'service' the broker lists, or -1 when it does not answer
 * within 'deadline_ms'. */
int discovery_count(rpc_client_t *client, const char *service, int deadline_ms);

/* Polls discovery until 'service' has exactly 'count' instances, for up to
 * 'timeout_ms'. Returns the milliseconds it took, or -1 on timeout. */
int discovery_wait(rpc_client_t *client, const char *service, int count, int timeout_ms);

/* The broker's counters, or false when it does not answer. */
bool discovery_stats(rpc_client_t *client, Paygate__V1__BrokerStats *stats);

/* Sleeps 'ms' milliseconds. */
void sleep_ms(int ms);

#endif
