/*
 * bench_broker_hop: what one hop through paygate-broker costs.
 *
 * The echo service is measured three ways in the same run, with the same
 * client (bench/echo_load.c) and the same per-request work at the service:
 *
 *   direct   client DEALER --> bench_echo_server ROUTER
 *   relay    client DEALER --> bench_relay (ROUTER|ROUTER) --> bench_echo_server DEALER
 *   broker   client DEALER --> paygate-broker ROUTER --> paygate-echo-worker DEALER
 *
 * "relay" is one broker hop with no logic (the physical limit of a hop);
 * "broker" is our broker with the real worker. Each mode runs with 1 and
 * with 64 calls in flight, each measurement 'BENCH_REPEATS' times
 * (interleaved, so that a slow moment of the machine does not hit one mode
 * only), and the median is reported: requests per second, p50 and p99
 * latency, and the CPU time per call spent by the client, the hop and the
 * service. Then the ratios against the targets of the issue: the broker
 * keeps >= 80% of the relay's throughput and adds <= 25% to its p50. The
 * CPU used by other programs during the runs is measured too, and a run
 * on a machine that was not quiet says so.
 *
 * The story: read the settings, pick free loopback ports, start the five
 * processes, wait until each path answers (the broker: until the worker is
 * in discovery), measure, print the table (stdout, and Markdown to
 * bench/results/broker_hop.md), stop every process we started.
 *
 * Settings (environment):
 *   BENCH_SECONDS         measured seconds per run (3)
 *   BENCH_WARMUP_MS       unmeasured warm-up before each run (500)
 *   BENCH_REPEATS         runs per measurement, median reported (3)
 *   BENCH_PAYLOAD_BYTES   EchoRequest payload (64)
 *   BENCH_NOISY_RETRIES   runs done again, in all, because other programs
 *                         were busy during them (6)
 *   BENCH_RESULTS_DIR     where broker_hop.md goes (bench/results)
 *   BENCH_BROKER_BIN, BENCH_ECHO_WORKER_BIN, BENCH_RELAY_BIN,
 *   BENCH_ECHO_SERVER_BIN paths of the processes (the build's own)
 *
 * Exit codes: 0 measured without errors (whether or not the targets are
 * met: the table says so), 1 a process failed or some call failed, 2 bad
 * settings.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "child.h"
#include "config/config.h"
#include "echo_load.h"
#include "machine.h"
#include "log/log.h"
#include "rpc/rpc.h"

enum {
    bench_repeats_max = 15,
    bench_ready_timeout_ms = 15000, /* for each path to answer after start */
    bench_discovery_call_ms = 1000,
    bench_worker_max_in_flight = 64, /* READY max_in_flight of the real worker */
    bench_endpoint_bytes = 64,
};

/* More CPU than this used by other programs during a run makes it noisy
 * (on 2 cores, wakeup latency and throughput both move with it): such a
 * run is done again, up to BENCH_NOISY_RETRIES times in all. */
static const double background_cores_quiet_max = 0.10;

/* The targets of the issue: broker vs. relay. */
static const double target_throughput_min = 0.80;
static const double target_p50_max = 1.25;

typedef enum { MODE_DIRECT, MODE_RELAY, MODE_BROKER, mode_count } bench_mode_t;
static const char *const mode_names[mode_count] = {"direct", "relay", "broker"};

static const unsigned in_flight_levels[] = {1, 64};
enum { level_count = sizeof in_flight_levels / sizeof in_flight_levels[0] };

/* The processes, in start order (stopped in reverse). */
typedef enum {
    CHILD_DIRECT_SERVER,
    CHILD_RELAY,
    CHILD_RELAY_SERVER,
    CHILD_BROKER,
    CHILD_WORKER,
    child_count
} bench_child_t;

typedef struct {
    int64_t seconds;
    int64_t warmup_ms;
    int64_t repeats;
    int64_t payload_bytes;
    int64_t noisy_retries; /* runs done again because the machine was busy */
    const char *results_dir;
    const char *broker_bin;
    const char *worker_bin;
    const char *relay_bin;
    const char *server_bin;
} bench_config_t;

/* Whose CPU time is counted, per call: the client (this process), the
 * hop (relay or broker; none when direct) and the echo service. */
typedef enum { ROLE_CLIENT, ROLE_HOP, ROLE_SERVICE, role_count } bench_role_t;

/* One run: the load's numbers and the CPU each role spent per call. */
typedef struct {
    echo_load_result_t load;
    double cpu_us_per_call[role_count]; /* -1: not measured */
    double background_cores;            /* CPU used by other programs, in cores; -1: unknown */
} bench_run_t;

/* The median over the repeats of one (mode, in-flight) cell. */
typedef struct {
    double requests_per_s;
    double p50_us;
    double p99_us;
    double cpu_us_per_call[role_count];
    uint64_t errors;     /* summed over the repeats */
    unsigned noisy_runs; /* runs kept although other programs were busy */
} bench_cell_t;

typedef struct {
    bench_config_t config;
    child_t children[child_count];
    char endpoint[mode_count][bench_endpoint_bytes]; /* where the client connects */
    char relay_backend[bench_endpoint_bytes];
    void *zmq_ctx;
    echo_load_t *load[mode_count];
    bench_run_t runs[mode_count][level_count][bench_repeats_max];
    bench_cell_t cells[mode_count][level_count];
    double background_cores_mean; /* over the runs kept; -1: unknown */
    double background_cores_max;
    unsigned runs_redone; /* runs done again because the machine was busy */
} bench_t;

static volatile sig_atomic_t bench_stopping;

static void bench_on_signal(int signo)
{
    (void)signo;
    bench_stopping = 1;
}

/* ---- settings ---------------------------------------------------------- */

/* Reads the settings; false (after logging which) when one is invalid. */
static bool bench_config_read(bench_config_t *c)
{
    bool ok = config_int("BENCH_SECONDS", 3, 1, 600, &c->seconds);
    ok &= config_int("BENCH_WARMUP_MS", 500, 0, 60000, &c->warmup_ms);
    ok &= config_int("BENCH_REPEATS", 3, 1, bench_repeats_max, &c->repeats);
    ok &= config_int("BENCH_PAYLOAD_BYTES", 64, 0, echo_load_payload_bytes_max, &c->payload_bytes);
    ok &= config_int("BENCH_NOISY_RETRIES", 6, 0, 100, &c->noisy_retries);
    ok &= config_str("BENCH_RESULTS_DIR", BENCH_RESULTS_DIR, 1024, &c->results_dir);
    ok &= config_str("BENCH_BROKER_BIN", BENCH_BROKER_PATH, 1024, &c->broker_bin);
    ok &= config_str("BENCH_ECHO_WORKER_BIN", BENCH_ECHO_WORKER_PATH, 1024, &c->worker_bin);
    ok &= config_str("BENCH_RELAY_BIN", BENCH_RELAY_PATH, 1024, &c->relay_bin);
    ok &= config_str("BENCH_ECHO_SERVER_BIN", BENCH_ECHO_SERVER_PATH, 1024, &c->server_bin);
    return ok;
}

/* ---- the processes ------------------------------------------------------ */

/* Starts the five processes on free ports. Returns 0, or -1 after saying
 * why (whatever started is stopped by bench_stop_children). */
static int bench_start_children(bench_t *self)
{
    const bench_config_t *c = &self->config;
    uint16_t ports[4];
    if (machine_pick_ports(ports, 4) != 0)
        return -1;
    char direct[bench_endpoint_bytes], broker_env[bench_endpoint_bytes + 32];
    snprintf(direct, sizeof direct, "tcp://127.0.0.1:%u", ports[0]);
    snprintf(self->endpoint[MODE_DIRECT], bench_endpoint_bytes, "%s", direct);
    snprintf(self->endpoint[MODE_RELAY], bench_endpoint_bytes, "tcp://127.0.0.1:%u", ports[1]);
    snprintf(self->relay_backend, sizeof self->relay_backend, "tcp://127.0.0.1:%u", ports[2]);
    snprintf(self->endpoint[MODE_BROKER], bench_endpoint_bytes, "tcp://127.0.0.1:%u", ports[3]);
    snprintf(broker_env, sizeof broker_env, "PAYGATE_BROKER_ENDPOINT=%s",
             self->endpoint[MODE_BROKER]);

    /* Children log warnings and errors only, unless told otherwise. */
    const char *quiet = getenv("PAYGATE_LOG_LEVEL") == NULL ? "PAYGATE_LOG_LEVEL=warn" : NULL;
    char max_in_flight[64];
    snprintf(max_in_flight, sizeof max_in_flight, "ECHO_MAX_IN_FLIGHT=%d",
             bench_worker_max_in_flight);

    const char *direct_args[] = {"bind", self->endpoint[MODE_DIRECT], NULL};
    const char *relay_args[] = {self->endpoint[MODE_RELAY], self->relay_backend, NULL};
    const char *relay_server_args[] = {"connect", self->relay_backend, NULL};
    const char *broker_envs[] = {broker_env, child_broker_key_env(), quiet, NULL};
    const char *worker_envs[] = {broker_env, "ECHO_THREADS=1", max_in_flight, quiet, NULL};

    if (child_start(&self->children[CHILD_DIRECT_SERVER], "echo server (direct)", c->server_bin,
                    direct_args, NULL) != 0 ||
        child_start(&self->children[CHILD_RELAY], "relay", c->relay_bin, relay_args, NULL) != 0 ||
        child_start(&self->children[CHILD_RELAY_SERVER], "echo server (relay)", c->server_bin,
                    relay_server_args, NULL) != 0 ||
        child_start(&self->children[CHILD_BROKER], "broker", c->broker_bin, NULL, broker_envs) !=
            0 ||
        child_start(&self->children[CHILD_WORKER], "echo worker", c->worker_bin, NULL,
                    worker_envs) != 0)
        return -1;
    return 0;
}

/* True when every process still runs; says which one died otherwise. */
static bool bench_children_alive(bench_t *self)
{
    bool alive = true;
    for (int i = 0; i < child_count; i++) {
        if (!child_alive(&self->children[i]))
            alive = false;
    }
    return alive;
}

/* Stops every process we started, the worker before its broker. */
static void bench_stop_children(bench_t *self)
{
    for (int i = child_count - 1; i >= 0; i--)
        child_stop(&self->children[i]);
}

/* ---- readiness ---------------------------------------------------------- */

/* True when the broker's discovery lists an "echo" instance. */
static bool bench_broker_has_worker(rpc_client_t *client)
{
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    request.service = (char *)"echo";
    rpc_call_opts_t opts = {.deadline_ms = bench_discovery_call_ms, .principal = "bench"};
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code =
        rpc_client_call(client, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &reply, &opts, &status);
    if (code != PAYGATE__V1__CODE__OK)
        return false;
    const Paygate__V1__ListServicesReply *list = (const Paygate__V1__ListServicesReply *)reply;
    bool found = false;
    for (size_t i = 0; i < list->n_services && !found; i++)
        found = strcmp(list->services[i]->name, "echo") == 0 && list->services[i]->n_instances > 0;
    protobuf_c_message_free_unpacked(reply, NULL);
    return found;
}

/* Waits until the broker lists the worker in discovery. Returns 0 or -1. */
static int bench_wait_broker(bench_t *self)
{
    rpc_client_t *client = rpc_client_new(self->zmq_ctx, self->endpoint[MODE_BROKER]);
    if (client == NULL)
        return -1;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    bool found = false;
    for (;;) {
        if (bench_stopping || !bench_children_alive(self))
            break;
        found = bench_broker_has_worker(client);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long waited_ms =
            (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (found || waited_ms > bench_ready_timeout_ms)
            break;
        struct timespec pause = {.tv_nsec = 50 * 1000000L};
        nanosleep(&pause, NULL);
    }
    rpc_client_destroy(&client);
    if (!found && !bench_stopping && bench_children_alive(self))
        fprintf(stderr, "bench: the broker at %s did not list an echo worker within %d ms\n",
                self->endpoint[MODE_BROKER], bench_ready_timeout_ms);
    return found ? 0 : -1;
}

/* Connects the three load clients and waits until each path answers an
 * Echo call. Returns 0 or -1. */
static int bench_connect(bench_t *self)
{
    if (bench_wait_broker(self) != 0)
        return -1;
    /* The direct and relay references speak plaintext; the broker path
     * uses the process's identity (CURVE with PAYGATE_BENCH_CURVE=1). */
    static const curve_identity_t plaintext = {.insecure = true};
    for (int m = 0; m < mode_count; m++) {
        self->load[m] =
            echo_load_new(self->zmq_ctx, self->endpoint[m], (size_t)self->config.payload_bytes,
                          m == MODE_BROKER ? NULL : &plaintext, &bench_stopping);
        if (self->load[m] == NULL)
            return -1;
        if (echo_load_wait_ready(self->load[m], bench_ready_timeout_ms) != 0) {
            if (bench_children_alive(self) && !bench_stopping) /* else it said who died */
                fprintf(stderr, "bench: no Echo answer through %s (%s) within %d ms\n",
                        mode_names[m], self->endpoint[m], bench_ready_timeout_ms);
            return -1;
        }
    }
    return 0;
}

/* ---- measuring -------------------------------------------------------- */

static int bench_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The process of 'role' in 'mode', or NULL (the client is us; direct
 * has no hop). */
static child_t *bench_role_child(bench_t *self, bench_mode_t mode, bench_role_t role)
{
    static const int hop[mode_count] = {-1, CHILD_RELAY, CHILD_BROKER};
    static const int service[mode_count] = {CHILD_DIRECT_SERVER, CHILD_RELAY_SERVER, CHILD_WORKER};
    int index = role == ROLE_HOP ? hop[mode] : role == ROLE_SERVICE ? service[mode] : -1;
    return index >= 0 ? &self->children[index] : NULL;
}

/* CPU microseconds used so far by 'role' in 'mode' (-1: none or unknown). */
static int64_t bench_role_cpu_us(bench_t *self, bench_mode_t mode, bench_role_t role)
{
    if (role == ROLE_CLIENT)
        return machine_self_cpu_us();
    child_t *child = bench_role_child(self, mode, role);
    return child != NULL ? child_cpu_us(child) : -1;
}

/* CPU microseconds used so far by this process and all its children
 * (busy or idle ones); -1 when one cannot be read. */
static int64_t bench_ours_cpu_us(bench_t *self)
{
    int64_t total = machine_self_cpu_us();
    for (int i = 0; i < child_count && total >= 0; i++) {
        int64_t used = child_cpu_us(&self->children[i]);
        total = used >= 0 ? total + used : -1;
    }
    return total;
}

/* Runs one measurement of 'mode' with 'in_flight' calls into 'run',
 * with the CPU time each role and other programs used meanwhile.
 * Returns 0 or -1. */
static int bench_run_once(bench_t *self, bench_mode_t mode, unsigned in_flight, bench_run_t *run)
{
    const bench_config_t *c = &self->config;
    int64_t cpu_before[role_count];
    for (int r = 0; r < role_count; r++)
        cpu_before[r] = bench_role_cpu_us(self, mode, (bench_role_t)r);
    int64_t busy_before = machine_busy_us(), ours_before = bench_ours_cpu_us(self);
    int64_t start_ns = machine_now_ns();
    if (echo_load_run(self->load[mode], in_flight, (int)c->warmup_ms, (int)c->seconds * 1000,
                      &run->load) != 0)
        return -1;
    int64_t wall_us = (machine_now_ns() - start_ns) / 1000;
    int64_t busy_after = machine_busy_us(), ours_after = bench_ours_cpu_us(self);
    for (int r = 0; r < role_count; r++) {
        int64_t after = bench_role_cpu_us(self, mode, (bench_role_t)r);
        bool known = cpu_before[r] >= 0 && after >= 0 && run->load.calls > 0;
        run->cpu_us_per_call[r] =
            known ? (double)(after - cpu_before[r]) / (double)run->load.calls : -1.0;
    }
    run->background_cores = -1.0;
    if (busy_before >= 0 && busy_after >= 0 && ours_before >= 0 && ours_after >= 0 && wall_us > 0) {
        int64_t others = (busy_after - busy_before) - (ours_after - ours_before);
        run->background_cores = others > 0 ? (double)others / (double)wall_us : 0.0;
    }
    return 0;
}

/* The median of 'count' values (sorted in place); the mean of the middle
 * two for an even count. */
static double bench_median(double *values, size_t count)
{
    qsort(values, count, sizeof *values, bench_compare_double);
    return count % 2 ? values[count / 2] : (values[count / 2 - 1] + values[count / 2]) / 2.0;
}

/* Writes CPU microseconds 'us' to 'out' with one decimal, or "-" when
 * not measured (negative). */
static void bench_format_cpu(double us, char *out, size_t size)
{
    if (us < 0.0)
        snprintf(out, size, "-");
    else
        snprintf(out, size, "%.1f", us);
}

/* Runs repeat 'repeat' of 'mode' at in-flight level 'level' into 'run',
 * and runs it again while other programs were busy during it and the
 * retry budget lasts. Says each attempt on stderr. Returns 0 or -1. */
static int bench_run_quiet(bench_t *self, bench_mode_t mode, int level, size_t repeat,
                           bench_run_t *run)
{
    uint64_t errors_redone = 0; /* calls that failed in runs done again still count */
    for (;;) {
        if (bench_run_once(self, mode, in_flight_levels[level], run) != 0 ||
            !bench_children_alive(self))
            return -1;
        char cpu[role_count][16];
        for (int role = 0; role < role_count; role++)
            bench_format_cpu(run->cpu_us_per_call[role], cpu[role], sizeof cpu[role]);
        fprintf(stderr,
                "bench: run %zu/%lld %-6s in flight %2u: %7.0f req/s  p50 %6.1f us  "
                "p99 %6.1f us  CPU us/call: client %s hop %s service %s  "
                "other programs %.2f cores  errors %llu\n",
                repeat + 1, (long long)self->config.repeats, mode_names[mode],
                in_flight_levels[level], run->load.requests_per_s, run->load.p50_us,
                run->load.p99_us, cpu[ROLE_CLIENT], cpu[ROLE_HOP], cpu[ROLE_SERVICE],
                run->background_cores, (unsigned long long)run->load.errors);
        if (run->background_cores <= background_cores_quiet_max ||
            self->runs_redone >= (unsigned)self->config.noisy_retries) {
            run->load.errors += errors_redone;
            return 0;
        }
        errors_redone += run->load.errors;
        self->runs_redone++;
        fprintf(stderr, "bench: other programs were busy during that run; running it again\n");
    }
}

/* Runs every (repeat, mode, in-flight) measurement and fills the cells.
 * Returns 0, or -1 when a run could not complete. */
static int bench_measure(bench_t *self)
{
    const bench_config_t *c = &self->config;
    size_t repeats = (size_t)c->repeats;
    /* The modes compared run back to back, and their order turns around
     * on every repeat, so that a drift of the machine favours none. */
    self->background_cores_mean = 0.0;
    self->background_cores_max = 0.0;
    self->runs_redone = 0;
    for (size_t r = 0; r < repeats; r++) {
        for (int l = 0; l < level_count; l++) {
            for (int k = 0; k < mode_count; k++) {
                int m = r % 2 == 0 ? k : mode_count - 1 - k;
                bench_run_t *run = &self->runs[m][l][r];
                if (bench_run_quiet(self, (bench_mode_t)m, l, r, run) != 0)
                    return -1;
                if (run->background_cores > background_cores_quiet_max)
                    self->cells[m][l].noisy_runs++;
                if (self->background_cores_mean < 0.0 || run->background_cores < 0.0) {
                    self->background_cores_mean = -1.0;
                } else {
                    self->background_cores_mean +=
                        run->background_cores / (double)(repeats * mode_count * level_count);
                    if (run->background_cores > self->background_cores_max)
                        self->background_cores_max = run->background_cores;
                }
            }
        }
    }
    for (int m = 0; m < mode_count; m++) {
        for (int l = 0; l < level_count; l++) {
            double rps[bench_repeats_max], p50[bench_repeats_max], p99[bench_repeats_max];
            double cpu[role_count][bench_repeats_max];
            bench_cell_t *cell = &self->cells[m][l];
            for (size_t r = 0; r < repeats; r++) {
                const bench_run_t *run = &self->runs[m][l][r];
                rps[r] = run->load.requests_per_s;
                p50[r] = run->load.p50_us;
                p99[r] = run->load.p99_us;
                for (int role = 0; role < role_count; role++)
                    cpu[role][r] = run->cpu_us_per_call[role];
                cell->errors += run->load.errors;
            }
            cell->requests_per_s = bench_median(rps, repeats);
            cell->p50_us = bench_median(p50, repeats);
            cell->p99_us = bench_median(p99, repeats);
            for (int role = 0; role < role_count; role++)
                cell->cpu_us_per_call[role] = bench_median(cpu[role], repeats);
        }
    }
    return 0;
}

/* ---- reporting -------------------------------------------------------- */

/* 'numerator' / 'denominator', or 0 when the denominator is 0. */
static double bench_ratio(double numerator, double denominator)
{
    return denominator > 0.0 ? numerator / denominator : 0.0;
}

/* True when some cell of 'self' had errors. */
static bool bench_had_errors(const bench_t *self)
{
    for (int m = 0; m < mode_count; m++) {
        for (int l = 0; l < level_count; l++) {
            if (self->cells[m][l].errors > 0)
                return true;
        }
    }
    return false;
}

/* Writes the results table to 'out', as plain text or as Markdown. */
static void bench_report(const bench_t *self, FILE *out, bool markdown)
{
    if (markdown) {
        fputs("| mode | in flight | req/s | p50 us | p99 us | CPU us/call: client | hop | "
              "service | errors |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
              out);
    } else {
        fprintf(out, "%50s%s\n", "", "-- CPU us per call --");
        fprintf(out, "%-8s %9s %10s %9s %9s %8s %8s %8s %7s\n", "mode", "in-flight", "req/s",
                "p50 us", "p99 us", "client", "hop", "service", "errors");
    }
    for (int l = 0; l < level_count; l++) {
        for (int m = 0; m < mode_count; m++) {
            const bench_cell_t *cell = &self->cells[m][l];
            const char *flag = cell->errors > 0       ? (markdown ? " **ERRORS**" : "  <- ERRORS")
                               : cell->noisy_runs > 0 ? (markdown ? " (noisy)" : "  (noisy)")
                                                      : "";
            char cpu[role_count][16];
            for (int r = 0; r < role_count; r++)
                bench_format_cpu(cell->cpu_us_per_call[r], cpu[r], sizeof cpu[r]);
            if (markdown)
                fprintf(out, "| %s | %u | %.0f | %.1f | %.1f | %s | %s | %s | %llu%s |\n",
                        mode_names[m], in_flight_levels[l], cell->requests_per_s, cell->p50_us,
                        cell->p99_us, cpu[ROLE_CLIENT], cpu[ROLE_HOP], cpu[ROLE_SERVICE],
                        (unsigned long long)cell->errors, flag);
            else
                fprintf(out, "%-8s %9u %10.0f %9.1f %9.1f %8s %8s %8s %7llu%s\n", mode_names[m],
                        in_flight_levels[l], cell->requests_per_s, cell->p50_us, cell->p99_us,
                        cpu[ROLE_CLIENT], cpu[ROLE_HOP], cpu[ROLE_SERVICE],
                        (unsigned long long)cell->errors, flag);
        }
    }

    fputs(markdown ? "\n| ratio | in flight 1 | in flight 64 | target |\n"
                     "| --- | ---: | ---: | --- |\n"
                   : "\nratio                           in-flight 1  in-flight 64  target\n",
          out);
    struct {
        const char *name;
        bench_mode_t top, bottom;
        enum { THROUGHPUT, P50, HOP_CPU } metric;
        double target; /* 0: for information only */
        bool at_least; /* the ratio must be >= target, else <= */
    } rows[] = {
        {"relay/direct throughput", MODE_RELAY, MODE_DIRECT, THROUGHPUT, 0.0, false},
        {"broker/direct throughput", MODE_BROKER, MODE_DIRECT, THROUGHPUT, 0.0, false},
        {"broker/relay throughput", MODE_BROKER, MODE_RELAY, THROUGHPUT, target_throughput_min,
         true},
        {"broker/relay p50 latency", MODE_BROKER, MODE_RELAY, P50, target_p50_max, false},
        {"broker/relay hop CPU per call", MODE_BROKER, MODE_RELAY, HOP_CPU, 0.0, false},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        double ratio[level_count] = {0};
        bool met = true;
        for (int l = 0; l < level_count; l++) {
            const bench_cell_t *top = &self->cells[rows[i].top][l];
            const bench_cell_t *bottom = &self->cells[rows[i].bottom][l];
            switch (rows[i].metric) {
            case THROUGHPUT:
                ratio[l] = bench_ratio(top->requests_per_s, bottom->requests_per_s);
                break;
            case P50:
                ratio[l] = bench_ratio(top->p50_us, bottom->p50_us);
                break;
            case HOP_CPU:
                ratio[l] =
                    bench_ratio(top->cpu_us_per_call[ROLE_HOP], bottom->cpu_us_per_call[ROLE_HOP]);
                break;
            }
            if (rows[i].target > 0.0)
                met &= rows[i].at_least ? ratio[l] >= rows[i].target : ratio[l] <= rows[i].target;
        }
        char target[64] = "(for information)";
        if (rows[i].target > 0.0)
            snprintf(target, sizeof target, "%s %.2f: %s",
                     rows[i].at_least ? ">=" : "<=", rows[i].target,
                     met ? "met" : (markdown ? "**MISSED**" : "MISSED"));
        if (markdown)
            fprintf(out, "| %s | %.2f | %.2f | %s |\n", rows[i].name, ratio[0], ratio[1], target);
        else
            fprintf(out, "%-31s %11.2f  %12.2f  %s\n", rows[i].name, ratio[0], ratio[1], target);
    }
    if (self->background_cores_mean >= 0.0) {
        bool quiet = self->background_cores_max <= background_cores_quiet_max;
        fprintf(out,
                "\nOther programs used %.2f cores on average during the runs kept (at most "
                "%.2f); %u runs were done again because they were busy.%s\n",
                self->background_cores_mean, self->background_cores_max, self->runs_redone,
                quiet ? ""
                      : " Cells marked (noisy) include runs on a busy machine: repeat the "
                        "benchmark on a quiet one.");
    }
    if (bench_had_errors(self))
        fprintf(out, "\n%sWARNING: some calls failed; the numbers above are not valid.%s\n",
                markdown ? "**" : "", markdown ? "**" : "");
}

/* Prints the settings line that heads the results. */
static void bench_report_settings(const bench_t *self, FILE *out)
{
    const bench_config_t *c = &self->config;
    fprintf(out,
            "echo, %lld-byte payload; each cell the median of %lld runs of %lld s "
            "(after %lld ms warm-up); %ld cores\n",
            (long long)c->payload_bytes, (long long)c->repeats, (long long)c->seconds,
            (long long)c->warmup_ms, sysconf(_SC_NPROCESSORS_ONLN));
}

/* Writes the Markdown report to <results_dir>/broker_hop.md. Returns 0
 * or -1 after saying why. */
static int bench_write_markdown(const bench_t *self)
{
    FILE *out = machine_report_open(self->config.results_dir, "broker_hop.md");
    if (out == NULL)
        return -1;
    machine_facts_t facts;
    machine_facts(&facts);

    fputs("# Broker hop: direct vs. minimal relay vs. paygate-broker\n\n"
          "Written by `bench_broker_hop` (see bench/README.md); do not edit by hand.\n\n",
          out);
    fprintf(out, "- when: %s\n- machine: %s, kernel %s, libzmq %d.%d.%d\n- setup: ", facts.when,
            facts.cpu, facts.kernel, facts.zmq_major, facts.zmq_minor, facts.zmq_patch);
    bench_report_settings(self, out);
    fputs("- client, relay or broker, and echo service are separate processes on the same "
          "machine; the broker case uses the real `paygate-broker` and `paygate-echo-worker` "
          "(1 thread, max_in_flight 64)\n\n",
          out);
    bench_report(self, out, true);
    int rc = fclose(out) == 0 ? 0 : -1;
    if (rc == 0)
        fprintf(stderr, "bench: wrote %s/broker_hop.md\n", self->config.results_dir);
    return rc;
}

/* ---- the story -------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc > 1) {
        fputs("usage: bench_broker_hop\n"
              "Measures the echo service direct, through a minimal relay and through\n"
              "paygate-broker; prints the table and writes bench/results/broker_hop.md.\n"
              "Settings by environment: BENCH_SECONDS (3), BENCH_WARMUP_MS (500),\n"
              "BENCH_REPEATS (3), BENCH_PAYLOAD_BYTES (64), BENCH_NOISY_RETRIES (6),\n"
              "BENCH_RESULTS_DIR, BENCH_BROKER_BIN, BENCH_ECHO_WORKER_BIN, BENCH_RELAY_BIN,\n"
              "BENCH_ECHO_SERVER_BIN. See bench/README.md.\n",
              strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? stdout : stderr);
        return strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ? 0 : 2;
    }
    if (!log_init_interactive("bench"))
        return 2;
    static bench_t bench; /* large (every run's result): not on the stack */
    if (!bench_config_read(&bench.config))
        return 2;

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = bench_on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Processes first, while we have no threads: fork is clean then. */
    int rc = bench_start_children(&bench);
    if (rc == 0) {
        bench.zmq_ctx = zmq_ctx_new();
        rc = bench.zmq_ctx != NULL ? bench_connect(&bench) : -1;
    }
    if (rc == 0) {
        fprintf(stderr, "bench: all three paths answer; measuring (about %lld s)\n",
                (long long)(bench.config.repeats * mode_count * level_count *
                            (bench.config.seconds * 1000 + bench.config.warmup_ms) / 1000));
        rc = bench_measure(&bench);
    }
    if (rc == 0) {
        printf("\nbroker hop: ");
        bench_report_settings(&bench, stdout);
        putchar('\n');
        bench_report(&bench, stdout, false);
        fflush(stdout);
        if (bench_write_markdown(&bench) != 0 || bench_had_errors(&bench))
            rc = -1;
    } else {
        fprintf(stderr, "bench: %s\n", bench_stopping ? "stopped by a signal" : "failed");
    }

    for (int m = 0; m < mode_count; m++)
        echo_load_destroy(&bench.load[m]);
    if (bench.zmq_ctx != NULL)
        zmq_ctx_term(bench.zmq_ctx);
    bench_stop_children(&bench);
    return rc == 0 ? 0 : 1;
}
