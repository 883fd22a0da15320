/*
 * child: a process the benchmark starts, and stops again whatever happens.
 *
 * A child is started with fork/execve, with the benchmark's environment
 * plus the variables it is given, its stdout sent to our stderr (stdout is
 * for the results), and PR_SET_PDEATHSIG (SIGKILL) so that it dies with us
 * even if we are killed without a chance to clean up. A child must never outlive
 * the benchmark.
 */
#ifndef BENCH_CHILD_H
#define BENCH_CHILD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum {
    child_env_max = 8,          /* variables added to one child's environment */
    child_args_max = 4,         /* arguments after the program name */
    child_stop_grace_ms = 3000, /* SIGTERM, then SIGKILL after this long */
};

typedef struct {
    char name[32];   /* for messages: "broker", "relay", ... */
    pid_t pid;       /* 0 when not running */
    int exit_status; /* waitpid status once reaped */
} child_t;

/* Starts 'path' as child 'name' with the NULL-terminated 'args' (at most
 * child_args_max, not counting the program name) and the NULL-terminated
 * "KEY=VALUE" strings 'env' added to (or replacing in) our environment.
 * Call it before any thread exists (e.g. before zmq_ctx_new), so that the
 * fork is clean. Returns 0, or -1 after printing why. */
int child_start(child_t *self, const char *name, const char *path, const char *const *args,
                const char *const *env);

/* The broker child's own key, "PAYGATE_CURVE_CERT=<dir>/broker.cert_secret",
 * when the benchmark runs with certificates (PAYGATE_TEST_CERTS_DIR, as
 * `PAYGATE_BENCH_CURVE=1 ./dev bench` sets up); otherwise
 * "PAYGATE_BENCH_PLAINTEXT=1" (an entry that changes nothing: the broker
 * then inherits PAYGATE_INSECURE_PLAINTEXT). Other children inherit the benchmark's key. */
const char *child_broker_key_env(void);

/* True while the child runs; reaps it (and says so on stderr) once it has
 * exited. */
bool child_alive(child_t *self);

/* CPU time (user + system, all threads) the child has used so far, in
 * microseconds, at the kernel's clock-tick resolution (usually 10 ms).
 * -1 when it cannot be read. */
int64_t child_cpu_us(const child_t *self);

/* Stops the child: SIGTERM, wait up to child_stop_grace_ms, then SIGKILL.
 * Safe on a child that never started or has already stopped. */
void child_stop(child_t *self);

#endif
