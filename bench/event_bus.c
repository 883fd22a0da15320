/*
 * bench_event_bus: our event bus against Redis Streams, at equal
 * durability, in the same run on the same machine.
 *
 *   paygate   P x rpc_client_publish --> paygate-broker (PAYGATE_BROKER_DATA_DIR,
 *             fdatasync before each acknowledgement, group commit per loop
 *             iteration) --> one lib/events consumer (max_in_flight 256, ACK each)
 *   redis     P x XADD --> redis-server (appendonly yes, appendfsync always:
 *             fsync before the replies of each event-loop iteration)
 *             --> one XREADGROUP COUNT 256 consumer (XACK each)
 *
 * Each publisher is its own connection and thread and waits for each
 * answer (only concurrency lets a server share one fsync among several
 * publishes). The load is the same code for both (bench/stream_load.c):
 * same payload, same consumer-side check that every acknowledged event
 * arrives, same clock. For each number of publishers (1 and 16 by
 * default) both systems run back to back, 'BENCH_REPEATS' times in
 * alternating order, and the median is reported: acknowledged publishes
 * per second, publish-to-consumer latency p50/p99, disk flushes, CPU.
 * Then the ratio paygate/redis of throughput against the target of the
 * issue (>= 1.0), and the fsync latency of the disk for context.
 *
 * The story: read the settings, make a temporary data directory, time
 * fdatasync there, start paygate-broker and redis-server on free
 * loopback ports with their data in it, wait until both answer, measure,
 * time fdatasync again, print the table (stdout, and Markdown to
 * bench/results/event_bus.md), stop both servers, remove the directory.
 *
 * Settings (environment):
 *   BENCH_SECONDS             measured seconds per run (3)
 *   BENCH_WARMUP_MS           unmeasured warm-up before each run (500)
 *   BENCH_REPEATS             runs per measurement, median reported (3)
 *   BENCH_PAYLOAD_BYTES       event payload (200)
 *   BENCH_PUBLISHERS          publisher counts, comma-separated ("1,16")
 *   BENCH_CONSUMER_IN_FLIGHT  the consumer's unacknowledged events (256)
 *   BENCH_NOISY_RETRIES       runs done again, in all, because other
 *                             programs were busy during them (6)
 *   BENCH_DATA_DIR            where the temporary directory goes ($TMPDIR
 *                             or /tmp): the disk measured
 *   BENCH_KEEP_DATA           1: leave the data directory for inspection (0)
 *   BENCH_RESULTS_DIR         where event_bus.md goes (bench/results)
 *   BENCH_BROKER_BIN, BENCH_REDIS_BIN  the servers (the build's broker,
 *                             /usr/bin/redis-server)
 *
 * Exit codes: 0 measured without errors (whether or not the target is
 * met: the table says so), 1 a process failed or events were lost or
 * publishes failed, 2 bad settings.
 */
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <zmq.h>

#include "child.h"
#include "config/config.h"
#include "log/log.h"
#include "machine.h"
#include "stream_load.h"
#include "stream_system.h"

enum {
    bench_repeats_max = 15,
    bench_levels_max = 4,           /* publisher counts in BENCH_PUBLISHERS */
    bench_ready_timeout_ms = 15000, /* for each server to answer after start */
    bench_fsync_probes = 50,        /* fdatasyncs timed before and after the runs */
    bench_path_bytes = 1024,
    /* Each paygate run publishes to a topic of its own, and the broker
     * opens at most 64 topics (bus_config_default().topics_max); keep a
     * few for margin. */
    bench_paygate_runs_max = 60,
    bench_endpoint_bytes = 64,
};

/* More CPU than this used by other programs during a run makes it noisy:
 * it is done again, up to BENCH_NOISY_RETRIES times in all. */
static const double background_cores_quiet_max = 0.10;

/* The target of the issue: at least Redis Streams' throughput. */
static const double target_throughput_min = 1.0;

typedef enum { SYSTEM_PAYGATE, SYSTEM_REDIS, system_count } bench_system_t;
typedef enum { CHILD_BROKER, CHILD_REDIS, child_count } bench_child_t;
/* The server process of each system. */
static const bench_child_t system_child[system_count] = {CHILD_BROKER, CHILD_REDIS};

typedef struct {
    int64_t seconds;
    int64_t warmup_ms;
    int64_t repeats;
    int64_t payload_bytes;
    unsigned levels[bench_levels_max]; /* publisher counts */
    size_t level_count;
    int64_t consumer_in_flight;
    int64_t noisy_retries;
    int64_t keep_data;
    const char *data_parent;
    const char *results_dir;
    const char *broker_bin;
    const char *redis_bin;
} bench_config_t;

/* One run: the load's numbers and what it cost. */
typedef struct {
    stream_load_result_t load;
    double server_cpu_us_per_event; /* the broker or redis-server; -1: unknown */
    double client_cpu_us_per_event; /* this process: publishers and consumer; -1: unknown */
    double events_per_flush;        /* acknowledged events per disk flush; -1: unknown */
    double background_cores;        /* CPU used by other programs, in cores; -1: unknown */
} bench_run_t;

/* The median over the repeats of one (system, publishers) cell. */
typedef struct {
    double events_per_s;
    double p50_ms;
    double p99_ms;
    double ack_p50_ms;
    double events_per_flush;
    double server_cpu_us_per_event;
    double client_cpu_us_per_event;
    uint64_t errors;     /* summed over the repeats */
    uint64_t duplicates; /* summed over the repeats */
    unsigned noisy_runs; /* runs kept although other programs were busy */
} bench_cell_t;

typedef struct {
    bench_config_t config;
    char data_dir[bench_path_bytes]; /* ours, made by mkdtemp; "" until then */
    char broker_dir[bench_path_bytes + 16];
    char redis_dir[bench_path_bytes + 16];
    char fs_type[32];
    machine_fsync_t fsync_before;
    machine_fsync_t fsync_after;
    child_t children[child_count];
    char broker_endpoint[bench_endpoint_bytes];
    uint16_t redis_port;
    stream_system_t *systems[system_count];
    stream_load_t *load;
    uint32_t next_run_id;
    bench_run_t runs[system_count][bench_levels_max][bench_repeats_max];
    bench_cell_t cells[system_count][bench_levels_max];
    double background_cores_mean; /* over the runs kept; -1: unknown */
    double background_cores_max;
    unsigned runs_redone;
} bench_t;

static volatile sig_atomic_t bench_stopping;

static void bench_on_signal(int signo)
{
    (void)signo;
    bench_stopping = 1;
}

/* ---- settings ---------------------------------------------------------- */

/* Parses the comma-separated publisher counts of BENCH_PUBLISHERS into
 * 'c'. Returns false after saying why. */
static bool bench_levels_read(bench_config_t *c)
{
    const char *text = getenv("BENCH_PUBLISHERS");
    if (text == NULL || *text == '\0')
        text = "1,16";
    char copy[128];
    if (strlen(text) >= sizeof copy) {
        fprintf(stderr, "bench: BENCH_PUBLISHERS is too long\n");
        return false;
    }
    snprintf(copy, sizeof copy, "%s", text);
    c->level_count = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        int64_t publishers = 0;
        if (c->level_count == bench_levels_max ||
            !config_parse_int(item, 1, stream_load_publishers_max, &publishers)) {
            fprintf(stderr,
                    "bench: BENCH_PUBLISHERS must be 1 to %d counts of 1..%d, comma-separated "
                    "(got '%s')\n",
                    bench_levels_max, stream_load_publishers_max, text);
            return false;
        }
        c->levels[c->level_count++] = (unsigned)publishers;
    }
    return c->level_count > 0;
}

/* Reads the settings; false (after saying which) when one is invalid. */
static bool bench_config_read(bench_config_t *c)
{
    const char *tmp =
        getenv("TMPDIR") != NULL && getenv("TMPDIR")[0] != '\0' ? getenv("TMPDIR") : "/tmp";
    bool ok = config_int("BENCH_SECONDS", 3, 1, 600, &c->seconds);
    ok &= config_int("BENCH_WARMUP_MS", 500, 0, 60000, &c->warmup_ms);
    ok &= config_int("BENCH_REPEATS", 3, 1, bench_repeats_max, &c->repeats);
    ok &= config_int("BENCH_PAYLOAD_BYTES", 200, stream_load_header_bytes,
                     stream_load_payload_bytes_max, &c->payload_bytes);
    ok &= bench_levels_read(c);
    ok &= config_int("BENCH_CONSUMER_IN_FLIGHT", 256, 1, 65536, &c->consumer_in_flight);
    ok &= config_int("BENCH_NOISY_RETRIES", 6, 0, 100, &c->noisy_retries);
    ok &= config_int("BENCH_KEEP_DATA", 0, 0, 1, &c->keep_data);
    ok &= config_str("BENCH_DATA_DIR", tmp, 512, &c->data_parent);
    ok &= config_str("BENCH_RESULTS_DIR", BENCH_RESULTS_DIR, 1024, &c->results_dir);
    ok &= config_str("BENCH_BROKER_BIN", BENCH_BROKER_PATH, 1024, &c->broker_bin);
    ok &= config_str("BENCH_REDIS_BIN", "/usr/bin/redis-server", 1024, &c->redis_bin);
    if (ok && c->repeats * (int64_t)c->level_count + c->noisy_retries > bench_paygate_runs_max) {
        fprintf(stderr,
                "bench: BENCH_REPEATS x publisher counts + BENCH_NOISY_RETRIES must stay within "
                "%d (one broker topic per run)\n",
                bench_paygate_runs_max);
        ok = false;
    }
    return ok;
}

/* ---- the data directory -------------------------------------------------- */

/* Makes our temporary directory, with broker/ and redis/ in it, and times
 * fdatasync there. Returns 0 or -1 after saying why. */
static int bench_data_dir_make(bench_t *self)
{
    char template[bench_path_bytes];
    snprintf(template, sizeof template, "%s/bench_event_bus.XXXXXX", self->config.data_parent);
    if (mkdtemp(template) == NULL) {
        fprintf(stderr, "bench: cannot make a directory in %s: %s\n", self->config.data_parent,
                strerror(errno));
        return -1;
    }
    snprintf(self->data_dir, sizeof self->data_dir, "%s", template);
    snprintf(self->broker_dir, sizeof self->broker_dir, "%s/broker", self->data_dir);
    snprintf(self->redis_dir, sizeof self->redis_dir, "%s/redis", self->data_dir);
    if (mkdir(self->broker_dir, 0700) != 0 || mkdir(self->redis_dir, 0700) != 0) {
        fprintf(stderr, "bench: cannot make directories in %s: %s\n", self->data_dir,
                strerror(errno));
        return -1;
    }
    machine_fs_type(self->data_dir, self->fs_type, sizeof self->fs_type);
    if (strcmp(self->fs_type, "tmpfs") == 0)
        fprintf(stderr,
                "bench: WARNING: %s is on tmpfs, where fsync costs nothing; set "
                "BENCH_DATA_DIR to a directory on a real disk\n",
                self->data_dir);
    return machine_fsync_probe(self->data_dir, bench_fsync_probes, &self->fsync_before);
}

static int bench_remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if ((type == FTW_DP ? rmdir(path) : unlink(path)) != 0)
        fprintf(stderr, "bench: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

/* Removes our temporary directory (the servers must have stopped), unless
 * BENCH_KEEP_DATA asks to keep it. */
static void bench_data_dir_remove(bench_t *self)
{
    if (self->data_dir[0] == '\0')
        return;
    if (self->config.keep_data) {
        fprintf(stderr, "bench: data left in %s\n", self->data_dir);
        return;
    }
    nftw(self->data_dir, bench_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the servers --------------------------------------------------------- */

/* Writes redis.conf into the redis directory: durability as the issue
 * asks (every write fsynced before its reply), no snapshots, no AOF
 * rewrites (a forked rewrite in the middle of a run would measure the
 * rewrite: our bus has no compaction either), loopback only. Returns 0
 * or -1 after saying why. */
static int bench_redis_conf_write(const bench_t *self, char *path, size_t size)
{
    snprintf(path, size, "%s/redis.conf", self->redis_dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f,
            "bind 127.0.0.1\n"
            "port %u\n"
            "dir \"%s\"\n"
            "daemonize no\n"
            "save \"\"\n"
            "appendonly yes\n"
            "appendfsync always\n"
            "auto-aof-rewrite-percentage 0\n"
            "loglevel warning\n"
            "logfile \"\"\n",
            self->redis_port, self->redis_dir);
    return fclose(f) == 0 ? 0 : -1;
}

/* Starts paygate-broker and redis-server on free ports, their data in our
 * directory. Returns 0, or -1 after saying why (whatever started is
 * stopped by bench_stop_children). */
static int bench_start_children(bench_t *self)
{
    const bench_config_t *c = &self->config;
    uint16_t ports[2];
    if (machine_pick_ports(ports, 2) != 0)
        return -1;
    snprintf(self->broker_endpoint, sizeof self->broker_endpoint, "tcp://127.0.0.1:%u", ports[0]);
    self->redis_port = ports[1];

    char endpoint_env[bench_endpoint_bytes + 32], data_env[sizeof self->broker_dir + 32];
    snprintf(endpoint_env, sizeof endpoint_env, "PAYGATE_BROKER_ENDPOINT=%s",
             self->broker_endpoint);
    snprintf(data_env, sizeof data_env, "PAYGATE_BROKER_DATA_DIR=%s", self->broker_dir);
    const char *broker_envs[] = {endpoint_env, data_env, child_broker_key_env(), NULL};
    char conf[sizeof self->redis_dir + 16];
    if (bench_redis_conf_write(self, conf, sizeof conf) != 0)
        return -1;
    const char *redis_args[] = {conf, NULL};

    if (child_start(&self->children[CHILD_BROKER], "broker", c->broker_bin, NULL, broker_envs) !=
            0 ||
        child_start(&self->children[CHILD_REDIS], "redis-server", c->redis_bin, redis_args, NULL) !=
            0)
        return -1;
    return 0;
}

/* True when both servers still run; says which one died otherwise. */
static bool bench_children_alive(bench_t *self)
{
    bool alive = true;
    for (int i = 0; i < child_count; i++) {
        if (!child_alive(&self->children[i]))
            alive = false;
    }
    return alive;
}

static void bench_stop_children(bench_t *self)
{
    for (int i = child_count - 1; i >= 0; i--)
        child_stop(&self->children[i]);
}

/* Makes the two systems and waits until each server answers. Returns 0
 * or -1 after saying why. */
static int bench_connect(bench_t *self)
{
    self->systems[SYSTEM_PAYGATE] = stream_paygate_new(self->broker_endpoint);
    self->systems[SYSTEM_REDIS] = stream_redis_new(self->redis_port);
    self->load = stream_load_new(&bench_stopping);
    if (self->systems[SYSTEM_PAYGATE] == NULL || self->systems[SYSTEM_REDIS] == NULL ||
        self->load == NULL)
        return -1;
    for (int s = 0; s < system_count; s++) {
        int64_t give_up = machine_now_ns() + (int64_t)bench_ready_timeout_ms * 1000000;
        for (;;) {
            if (bench_stopping || !bench_children_alive(self))
                return -1;
            if (self->systems[s]->ready(self->systems[s]))
                break;
            if (machine_now_ns() > give_up) {
                fprintf(stderr, "bench: %s did not answer within %d ms\n", self->systems[s]->name,
                        bench_ready_timeout_ms);
                return -1;
            }
            struct timespec pause = {.tv_nsec = 50 * 1000000L};
            nanosleep(&pause, NULL);
        }
    }
    return 0;
}

/* ---- measuring ----------------------------------------------------------- */

/* CPU microseconds used so far by us and both servers; -1 when unknown. */
static int64_t bench_ours_cpu_us(bench_t *self)
{
    int64_t total = machine_self_cpu_us();
    for (int i = 0; i < child_count && total >= 0; i++) {
        int64_t used = child_cpu_us(&self->children[i]);
        total = used >= 0 ? total + used : -1;
    }
    return total;
}

/* 'numerator' / 'denominator' when both are known (>= 0) and the
 * denominator is not 0; -1 otherwise. */
static double bench_per(int64_t numerator, int64_t denominator)
{
    return numerator >= 0 && denominator > 0 ? (double)numerator / (double)denominator : -1.0;
}

/* Runs one measurement of 'system' with 'publishers' into 'run', with
 * what it cost. Returns 0 or -1. */
static int bench_run_once(bench_t *self, bench_system_t system, unsigned publishers,
                          bench_run_t *run)
{
    const bench_config_t *c = &self->config;
    uint32_t run_id = ++self->next_run_id;
    char stream[stream_name_bytes_max + 1];
    snprintf(stream, sizeof stream, "bench.evb.%s.%u", self->systems[system]->name, run_id);
    stream_load_config_t load_config = {
        .stream = stream,
        .group = "bench",
        .run_id = run_id,
        .publishers = publishers,
        .payload_bytes = (size_t)c->payload_bytes,
        .max_in_flight = (unsigned)c->consumer_in_flight,
        .warmup_ms = (int)c->warmup_ms,
        .measure_ms = (int)c->seconds * 1000,
    };
    child_t *server = &self->children[system_child[system]];
    int64_t server_before = child_cpu_us(server), client_before = machine_self_cpu_us();
    int64_t flushes_before = machine_disk_flushes(self->data_dir);
    int64_t busy_before = machine_busy_us(), ours_before = bench_ours_cpu_us(self);
    int64_t start_ns = machine_now_ns();
    int rc = stream_load_run(self->load, self->systems[system], &load_config, &run->load);
    int64_t wall_us = (machine_now_ns() - start_ns) / 1000;
    int64_t busy_after = machine_busy_us(), ours_after = bench_ours_cpu_us(self);
    int64_t flushes_after = machine_disk_flushes(self->data_dir);
    int64_t server_after = child_cpu_us(server), client_after = machine_self_cpu_us();
    if (rc != 0)
        return -1;

    int64_t acked = (int64_t)run->load.acked;
    run->server_cpu_us_per_event = bench_per(
        server_before >= 0 && server_after >= 0 ? server_after - server_before : -1, acked);
    run->client_cpu_us_per_event = bench_per(
        client_before >= 0 && client_after >= 0 ? client_after - client_before : -1, acked);
    run->events_per_flush = bench_per(
        acked, flushes_before >= 0 && flushes_after >= 0 ? flushes_after - flushes_before : -1);
    run->background_cores = -1.0;
    if (busy_before >= 0 && busy_after >= 0 && ours_before >= 0 && ours_after >= 0 && wall_us > 0) {
        int64_t others = (busy_after - busy_before) - (ours_after - ours_before);
        run->background_cores = others > 0 ? (double)others / (double)wall_us : 0.0;
    }
    return 0;
}

/* Writes 'value' with 'decimals' to 'out', or "-" when unknown (< 0). */
static void bench_format(double value, int decimals, char *out, size_t size)
{
    if (value < 0.0)
        snprintf(out, size, "-");
    else
        snprintf(out, size, "%.*f", decimals, value);
}

/* Runs repeat 'repeat' of 'system' at publisher level 'level' into 'run',
 * again while other programs were busy during it and the retry budget
 * lasts. Says each attempt on stderr. Returns 0 or -1. */
static int bench_run_quiet(bench_t *self, bench_system_t system, size_t level, size_t repeat,
                           bench_run_t *run)
{
    /* Failures in runs done again still count. */
    uint64_t errors_redone = 0, duplicates_redone = 0;
    for (;;) {
        if (bench_run_once(self, system, self->config.levels[level], run) != 0 ||
            !bench_children_alive(self))
            return -1;
        const stream_load_result_t *r = &run->load;
        char flush[16], server[16], client[16];
        bench_format(run->events_per_flush, 1, flush, sizeof flush);
        bench_format(run->server_cpu_us_per_event, 1, server, sizeof server);
        bench_format(run->client_cpu_us_per_event, 1, client, sizeof client);
        fprintf(stderr,
                "bench: run %zu/%lld %-7s publishers %2u: %7.0f events/s  p50 %6.2f ms  "
                "p99 %6.2f ms  ack p50 %6.2f ms  events/flush %s  CPU us/event: server %s "
                "client %s  "
                "other programs %.2f cores  errors %llu (publish %llu, missing %llu, "
                "foreign %llu)  duplicates %llu%s\n",
                repeat + 1, (long long)self->config.repeats, self->systems[system]->name,
                self->config.levels[level], r->events_per_s, r->p50_ms, r->p99_ms, r->ack_p50_ms,
                flush, server, client, run->background_cores, (unsigned long long)r->errors,
                (unsigned long long)r->publish_errors, (unsigned long long)r->missing,
                (unsigned long long)r->foreign, (unsigned long long)r->duplicates,
                r->capacity_reached ? "  (event limit reached: the run ended early)" : "");
        if (run->background_cores <= background_cores_quiet_max ||
            self->runs_redone >= (unsigned)self->config.noisy_retries) {
            run->load.errors += errors_redone;
            run->load.duplicates += duplicates_redone;
            return 0;
        }
        errors_redone += r->errors;
        duplicates_redone += r->duplicates;
        self->runs_redone++;
        fprintf(stderr, "bench: other programs were busy during that run; running it again\n");
    }
}

static int bench_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of 'count' values (sorted in place); -1 when one of them is
 * unknown (< 0). */
static double bench_median(double *values, size_t count)
{
    qsort(values, count, sizeof *values, bench_compare_double);
    if (values[0] < 0.0)
        return -1.0;
    return count % 2 ? values[count / 2] : (values[count / 2 - 1] + values[count / 2]) / 2.0;
}

/* Runs every (repeat, publishers, system) measurement and fills the
 * cells. Returns 0, or -1 when a run could not complete. */
static int bench_measure(bench_t *self)
{
    const bench_config_t *c = &self->config;
    size_t repeats = (size_t)c->repeats;
    size_t total_runs = repeats * c->level_count * system_count;
    self->background_cores_mean = 0.0;
    self->background_cores_max = 0.0;
    /* Both systems back to back, in turned-around order on every repeat,
     * so that a drift of the machine (or of the disk) favours neither. */
    for (size_t r = 0; r < repeats; r++) {
        for (size_t l = 0; l < c->level_count; l++) {
            for (int k = 0; k < system_count; k++) {
                int s = r % 2 == 0 ? k : system_count - 1 - k;
                bench_run_t *run = &self->runs[s][l][r];
                if (bench_run_quiet(self, (bench_system_t)s, l, r, run) != 0)
                    return -1;
                if (run->background_cores > background_cores_quiet_max)
                    self->cells[s][l].noisy_runs++;
                if (self->background_cores_mean < 0.0 || run->background_cores < 0.0) {
                    self->background_cores_mean = -1.0;
                } else {
                    self->background_cores_mean += run->background_cores / (double)total_runs;
                    if (run->background_cores > self->background_cores_max)
                        self->background_cores_max = run->background_cores;
                }
            }
        }
    }
    for (int s = 0; s < system_count; s++) {
        for (size_t l = 0; l < c->level_count; l++) {
            double rate[bench_repeats_max], p50[bench_repeats_max], p99[bench_repeats_max],
                ack[bench_repeats_max];
            double flush[bench_repeats_max], server[bench_repeats_max], client[bench_repeats_max];
            bench_cell_t *cell = &self->cells[s][l];
            for (size_t r = 0; r < repeats; r++) {
                const bench_run_t *run = &self->runs[s][l][r];
                rate[r] = run->load.events_per_s;
                p50[r] = run->load.p50_ms;
                p99[r] = run->load.p99_ms;
                ack[r] = run->load.ack_p50_ms;
                flush[r] = run->events_per_flush;
                server[r] = run->server_cpu_us_per_event;
                client[r] = run->client_cpu_us_per_event;
                cell->errors += run->load.errors;
                cell->duplicates += run->load.duplicates;
            }
            cell->events_per_s = bench_median(rate, repeats);
            cell->p50_ms = bench_median(p50, repeats);
            cell->p99_ms = bench_median(p99, repeats);
            cell->ack_p50_ms = bench_median(ack, repeats);
            cell->events_per_flush = bench_median(flush, repeats);
            cell->server_cpu_us_per_event = bench_median(server, repeats);
            cell->client_cpu_us_per_event = bench_median(client, repeats);
        }
    }
    return 0;
}

/* ---- reporting ----------------------------------------------------------- */

static bool bench_had_errors(const bench_t *self)
{
    for (int s = 0; s < system_count; s++) {
        for (size_t l = 0; l < self->config.level_count; l++) {
            if (self->cells[s][l].errors > 0)
                return true;
        }
    }
    return false;
}

/* 'numerator' / 'denominator', or 0 when the denominator is not positive. */
static double bench_ratio(double numerator, double denominator)
{
    return denominator > 0.0 ? numerator / denominator : 0.0;
}

/* Prints the settings line that heads the results. */
static void bench_report_settings(const bench_t *self, FILE *out)
{
    const bench_config_t *c = &self->config;
    fprintf(out,
            "%lld-byte payloads, consumer max in flight %lld; each cell the median of %lld runs "
            "of %lld s (after %lld ms warm-up); %ld cores\n",
            (long long)c->payload_bytes, (long long)c->consumer_in_flight, (long long)c->repeats,
            (long long)c->seconds, (long long)c->warmup_ms, sysconf(_SC_NPROCESSORS_ONLN));
}

/* Prints the fsync latency measured before and after the runs. */
static void bench_report_fsync(const bench_t *self, FILE *out, bool markdown)
{
    const machine_fsync_t *b = &self->fsync_before, *a = &self->fsync_after;
    fprintf(out,
            "%sDisk:%s fdatasync of a 4 KiB append in the data directory (%s): median %.3f ms "
            "(min %.3f, max %.3f) over %u before the runs",
            markdown ? "**" : "", markdown ? "**" : "", self->fs_type, b->median_ms, b->min_ms,
            b->max_ms, b->count);
    if (a->count > 0)
        fprintf(out, ", median %.3f ms (min %.3f, max %.3f) after", a->median_ms, a->min_ms,
                a->max_ms);
    if (b->median_ms > 0.0)
        fprintf(out,
                ". One publisher waiting for one fsync per event can do at most about %.0f "
                "events/s.\n",
                1000.0 / b->median_ms);
    else
        fputs(".\n", out);
}

/* Writes the results table to 'out', as plain text or as Markdown. */
static void bench_report(const bench_t *self, FILE *out, bool markdown)
{
    const bench_config_t *c = &self->config;
    if (markdown)
        fputs("| system | publishers | events/s | p50 ms | p99 ms | ack p50 ms | events/flush | "
              "CPU us/event: server | client | errors | duplicates |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
              out);
    else
        fprintf(out, "%-8s %10s %9s %8s %8s %10s %12s %10s %9s %7s %10s\n", "system", "publishers",
                "events/s", "p50 ms", "p99 ms", "ack p50 ms", "events/flush", "server us",
                "client us", "errors", "duplicates");
    for (size_t l = 0; l < c->level_count; l++) {
        for (int s = 0; s < system_count; s++) {
            const bench_cell_t *cell = &self->cells[s][l];
            const char *flag = cell->errors > 0       ? (markdown ? " **ERRORS**" : "  <- ERRORS")
                               : cell->noisy_runs > 0 ? (markdown ? " (noisy)" : "  (noisy)")
                                                      : "";
            char flush[16], server[16], client[16];
            bench_format(cell->events_per_flush, 1, flush, sizeof flush);
            bench_format(cell->server_cpu_us_per_event, 1, server, sizeof server);
            bench_format(cell->client_cpu_us_per_event, 1, client, sizeof client);
            if (markdown)
                fprintf(
                    out, "| %s | %u | %.0f | %.2f | %.2f | %.2f | %s | %s | %s | %llu | %llu%s |\n",
                    self->systems[s]->name, c->levels[l], cell->events_per_s, cell->p50_ms,
                    cell->p99_ms, cell->ack_p50_ms, flush, server, client,
                    (unsigned long long)cell->errors, (unsigned long long)cell->duplicates, flag);
            else
                fprintf(out, "%-8s %10u %9.0f %8.2f %8.2f %10.2f %12s %10s %9s %7llu %10llu%s\n",
                        self->systems[s]->name, c->levels[l], cell->events_per_s, cell->p50_ms,
                        cell->p99_ms, cell->ack_p50_ms, flush, server, client,
                        (unsigned long long)cell->errors, (unsigned long long)cell->duplicates,
                        flag);
        }
    }

    /* The ratios, one column per publisher count. */
    if (markdown) {
        fputs("\n| ratio |", out);
        for (size_t l = 0; l < c->level_count; l++)
            fprintf(out, " %u publisher%s |", c->levels[l], c->levels[l] == 1 ? "" : "s");
        fputs(" target |\n| --- |", out);
        for (size_t l = 0; l < c->level_count; l++)
            fputs(" ---: |", out);
        fputs(" --- |\n", out);
    } else {
        fprintf(out, "\n%-28s", "ratio");
        for (size_t l = 0; l < c->level_count; l++) {
            char head[32];
            snprintf(head, sizeof head, "%u publisher%s", c->levels[l],
                     c->levels[l] == 1 ? "" : "s");
            fprintf(out, " %14s", head);
        }
        fputs("  target\n", out);
    }
    struct {
        const char *name;
        enum { THROUGHPUT, P50, SERVER_CPU } metric;
        double target; /* 0: for information only; else the ratio must be >= target */
    } rows[] = {
        {"paygate/redis throughput", THROUGHPUT, target_throughput_min},
        {"paygate/redis p50 latency", P50, 0.0},
        {"paygate/redis server CPU", SERVER_CPU, 0.0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        bool met = true;
        if (markdown)
            fprintf(out, "| %s |", rows[i].name);
        else
            fprintf(out, "%-28s", rows[i].name);
        for (size_t l = 0; l < c->level_count; l++) {
            const bench_cell_t *ours = &self->cells[SYSTEM_PAYGATE][l];
            const bench_cell_t *redis = &self->cells[SYSTEM_REDIS][l];
            double ratio =
                rows[i].metric == THROUGHPUT ? bench_ratio(ours->events_per_s, redis->events_per_s)
                : rows[i].metric == P50
                    ? bench_ratio(ours->p50_ms, redis->p50_ms)
                    : bench_ratio(ours->server_cpu_us_per_event, redis->server_cpu_us_per_event);
            if (rows[i].target > 0.0)
                met &= ratio >= rows[i].target;
            fprintf(out, markdown ? " %.2f |" : " %14.2f", ratio);
        }
        char target[64] = "(for information)";
        if (rows[i].target > 0.0)
            snprintf(target, sizeof target, ">= %.2f: %s", rows[i].target,
                     met ? "met" : (markdown ? "**MISSED**" : "MISSED"));
        fprintf(out, markdown ? " %s |\n" : "  %s\n", target);
    }

    fputc('\n', out);
    bench_report_fsync(self, out, markdown);
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
        fprintf(out,
                "\n%sWARNING: publishes failed or acknowledged events were not delivered; the "
                "numbers above are not valid.%s\n",
                markdown ? "**" : "", markdown ? "**" : "");
}

/* Writes the Markdown report to <results_dir>/event_bus.md. Returns 0
 * or -1 after saying why. */
static int bench_write_markdown(const bench_t *self)
{
    FILE *out = machine_report_open(self->config.results_dir, "event_bus.md");
    if (out == NULL)
        return -1;
    machine_facts_t facts;
    machine_facts(&facts);

    fputs("# Event bus: paygate-broker vs. Redis Streams, fsync before every acknowledgement\n\n"
          "Written by `bench_event_bus` (see bench/README.md); do not edit by hand.\n\n",
          out);
    fprintf(out,
            "- when: %s\n- machine: %s, kernel %s, libzmq %d.%d.%d, hiredis %d.%d.%d, "
            "redis-server from %s\n- setup: ",
            facts.when, facts.cpu, facts.kernel, facts.zmq_major, facts.zmq_minor, facts.zmq_patch,
            HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH, self->config.redis_bin);
    bench_report_settings(self, out);
    fputs("- paygate: the real `paygate-broker` with `PAYGATE_BROKER_DATA_DIR` (fdatasync before "
          "each PUBLISH is answered, one per loop iteration), publishers with "
          "`rpc_client_publish`, one `lib/events` consumer\n"
          "- redis: `redis-server` with `appendonly yes`, `appendfsync always`, `save \"\"`, "
          "publishers with `XADD`, one consumer with `XREADGROUP ... COUNT <max in flight>` and "
          "one `XACK` per event\n"
          "- each publisher is its own connection and thread and waits for each answer; "
          "events/s counts acknowledged publishes; latency is publish start to the consumer's "
          "handler\n\n",
          out);
    bench_report(self, out, true);
    int rc = fclose(out) == 0 ? 0 : -1;
    if (rc == 0)
        fprintf(stderr, "bench: wrote %s/event_bus.md\n", self->config.results_dir);
    return rc;
}

/* ---- the story ----------------------------------------------------------- */

static const char usage[] =
    "usage: bench_event_bus\n"
    "Measures publish-to-consume throughput and latency of paygate-broker's event\n"
    "bus and of Redis Streams, both fsyncing before every acknowledgement; prints\n"
    "the table and writes bench/results/event_bus.md.\n"
    "Settings by environment: BENCH_SECONDS (3), BENCH_WARMUP_MS (500),\n"
    "BENCH_REPEATS (3), BENCH_PAYLOAD_BYTES (200), BENCH_PUBLISHERS (1,16),\n"
    "BENCH_CONSUMER_IN_FLIGHT (256), BENCH_NOISY_RETRIES (6), BENCH_DATA_DIR,\n"
    "BENCH_KEEP_DATA (0), BENCH_RESULTS_DIR, BENCH_BROKER_BIN, BENCH_REDIS_BIN.\n"
    "See bench/README.md.\n";

int main(int argc, char **argv)
{
    if (argc > 1) {
        bool help = strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0;
        fputs(usage, help ? stdout : stderr);
        return help ? 0 : 2;
    }
    /* We and the servers log warnings and errors only, unless told. */
    setenv("PAYGATE_LOG_LEVEL", "warn", 0);
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
    int rc = bench_data_dir_make(&bench);
    if (rc == 0)
        rc = bench_start_children(&bench);
    if (rc == 0)
        rc = bench_connect(&bench);
    if (rc == 0) {
        const bench_config_t *c = &bench.config;
        fprintf(stderr,
                "bench: both servers answer; data in %s (%s), fdatasync median %.3f ms; "
                "measuring (about %lld s)\n",
                bench.data_dir, bench.fs_type, bench.fsync_before.median_ms,
                (long long)(c->repeats * (long long)c->level_count * system_count *
                            (c->seconds * 1000 + c->warmup_ms + 500) / 1000));
        rc = bench_measure(&bench);
    }
    if (rc == 0)
        rc = machine_fsync_probe(bench.data_dir, bench_fsync_probes, &bench.fsync_after);
    if (rc == 0) {
        printf("\nevent bus: ");
        bench_report_settings(&bench, stdout);
        putchar('\n');
        bench_report(&bench, stdout, false);
        fflush(stdout);
        if (bench_write_markdown(&bench) != 0 || bench_had_errors(&bench))
            rc = -1;
    } else {
        fprintf(stderr, "bench: %s\n", bench_stopping ? "stopped by a signal" : "failed");
    }

    stream_load_destroy(&bench.load);
    for (int s = 0; s < system_count; s++) {
        if (bench.systems[s] != NULL)
            bench.systems[s]->destroy(&bench.systems[s]);
    }
    bench_stop_children(&bench);
    bench_data_dir_remove(&bench);
    return rc == 0 ? 0 : 1;
}
