/*
 * stream_load: publishers, one consumer, and the ledger that checks every
 * acknowledged event arrives. See stream_load.h for the contract and the
 * payload layout.
 *
 * Who writes what during a run (so that no lock is needed):
 *   - publisher threads: a sequence number each from an atomic counter,
 *     then outcome[sequence] (one byte, only that thread's sequence
 *     numbers) and their own counters;
 *   - the consumer thread: delivered[sequence], the latency samples, the
 *     foreign count, and the atomic count of events seen at least once;
 *   - the main thread reads the ledger only after joining both kinds.
 */
#include "stream_load.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "machine.h"

enum {
    load_magic = 0x31425645,    /* "EVB1" in a little-endian u32 */
    load_failure_pause_ms = 10, /* after a failed publish: no hot loop of errors */
    load_wait_step_ms = 5,      /* polling for the primer and the drain */
    load_event_id_bytes = 48,
};

static const uint64_t load_primer_sequence = UINT64_MAX;

typedef enum { OUTCOME_NONE = 0, OUTCOME_ACKED, OUTCOME_FAILED } load_outcome_t;

/* The payload header; see the diagram in stream_load.h. */
typedef struct {
    uint32_t magic;
    uint32_t run_id;
    uint64_t sequence;
    int64_t started_ns;
} load_header_t;

static_assert(sizeof(load_header_t) == stream_load_header_bytes, "header layout");

struct stream_load {
    const volatile sig_atomic_t *stopping;
    uint8_t *outcome;        /* [stream_load_events_max], load_outcome_t */
    uint8_t *delivered;      /* [stream_load_events_max], deliveries, saturating at 255 */
    int64_t *samples_ns;     /* [stream_load_events_max], latencies of the window's events */
    int64_t *ack_samples_ns; /* [stream_load_events_max], publish durations in the window */

    /* The current run. */
    const stream_load_config_t *config;
    atomic_uint_fast64_t next_sequence;
    atomic_bool capacity_reached;
    atomic_llong measure_from_ns; /* set before the publishers start; read by the consumer */
    atomic_llong measure_until_ns;
    atomic_bool primer_seen;
    atomic_uint_fast64_t delivered_once; /* events of this run delivered at least once */
    atomic_size_t ack_sample_count;      /* publishers take slots of ack_samples_ns */
    size_t sample_count;                 /* consumer thread only */
    uint64_t foreign;                    /* consumer thread only */
    uint64_t duplicate_primers;          /* consumer thread only; counted as duplicates */
};

/* One publisher thread. */
typedef struct {
    stream_load_t *load;
    stream_system_t *system;
    stream_publisher_t *publisher;
    pthread_t thread;
    bool started;
    uint64_t acked;
    uint64_t acked_in_window;
    uint64_t errors;
} load_publisher_t;

/* The consumer thread. */
typedef struct {
    stream_system_t *system;
    stream_consumer_t *consumer;
    pthread_t thread;
    bool started;
    atomic_bool ended; /* consumer_run returned */
    int rc;
} load_consumer_t;

stream_load_t *stream_load_new(const volatile sig_atomic_t *stopping)
{
    stream_load_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->stopping = stopping;
    self->outcome = malloc(stream_load_events_max);
    self->delivered = malloc(stream_load_events_max);
    self->samples_ns = malloc(stream_load_events_max * sizeof *self->samples_ns);
    self->ack_samples_ns = malloc(stream_load_events_max * sizeof *self->ack_samples_ns);
    if (self->outcome == NULL || self->delivered == NULL || self->samples_ns == NULL ||
        self->ack_samples_ns == NULL)
        stream_load_destroy(&self);
    return self;
}

void stream_load_destroy(stream_load_t **self)
{
    if (*self == NULL)
        return;
    free((*self)->outcome);
    free((*self)->delivered);
    free((*self)->samples_ns);
    free((*self)->ack_samples_ns);
    free(*self);
    *self = NULL;
}

static void load_sleep_ms(long ms)
{
    struct timespec pause = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

/* Writes the header of event 'sequence', whose publish started at
 * 'started_ns', over the first bytes of 'payload' (the filler after it
 * stays as it is). */
static void load_payload_write(const stream_load_config_t *config, uint8_t *payload,
                               uint64_t sequence, int64_t started_ns)
{
    load_header_t header = {.magic = load_magic,
                            .run_id = config->run_id,
                            .sequence = sequence,
                            .started_ns = started_ns};
    memcpy(payload, &header, sizeof header);
}

/* ---- the consumer side -------------------------------------------------- */

/* The stream_event_fn: notes one delivery in the ledger. Always
 * acknowledges (an event that is not ours would come back forever). */
static bool load_on_event(const uint8_t *payload, size_t payload_len, void *state)
{
    stream_load_t *self = state;
    int64_t now = machine_now_ns();
    load_header_t header;
    if (payload_len != self->config->payload_bytes) {
        self->foreign++;
        return true;
    }
    memcpy(&header, payload, sizeof header);
    if (header.magic != load_magic || header.run_id != self->config->run_id) {
        self->foreign++;
        return true;
    }
    if (header.sequence == load_primer_sequence) {
        if (atomic_exchange(&self->primer_seen, true))
            self->duplicate_primers++;
        return true;
    }
    if (header.sequence >= stream_load_events_max) {
        self->foreign++;
        return true;
    }
    uint8_t *count = &self->delivered[header.sequence];
    if (*count == 0)
        atomic_fetch_add(&self->delivered_once, 1);
    if (*count < UINT8_MAX)
        (*count)++;
    if (*count == 1 && header.started_ns >= atomic_load(&self->measure_from_ns) &&
        header.started_ns < atomic_load(&self->measure_until_ns) &&
        self->sample_count < stream_load_events_max)
        self->samples_ns[self->sample_count++] = now - header.started_ns;
    return true;
}

static void *load_consumer_main(void *arg)
{
    load_consumer_t *c = arg;
    c->rc = c->system->consumer_run(c->consumer);
    atomic_store(&c->ended, true);
    return NULL;
}

/* ---- the publisher side ------------------------------------------------- */

static void *load_publisher_main(void *arg)
{
    load_publisher_t *p = arg;
    stream_load_t *self = p->load;
    const stream_load_config_t *config = self->config;
    uint8_t payload[stream_load_payload_bytes_max];
    for (size_t i = 0; i < config->payload_bytes; i++)
        payload[i] = (uint8_t)('a' + i % 26);
    int64_t measure_from = atomic_load(&self->measure_from_ns);
    int64_t measure_until = atomic_load(&self->measure_until_ns);
    bool said_error = false;

    while (!*self->stopping) {
        int64_t started = machine_now_ns();
        if (started >= measure_until)
            break;
        uint64_t sequence = atomic_fetch_add(&self->next_sequence, 1);
        if (sequence >= stream_load_events_max) {
            atomic_store(&self->capacity_reached, true);
            break;
        }
        char event_id[load_event_id_bytes];
        snprintf(event_id, sizeof event_id, "r%u-%llu", config->run_id,
                 (unsigned long long)sequence);
        load_payload_write(config, payload, sequence, started);
        char error[stream_error_bytes_max] = "";
        int rc = p->system->publish(p->publisher, event_id, payload, config->payload_bytes, error);
        int64_t done = machine_now_ns();
        if (rc == 0) {
            self->outcome[sequence] = OUTCOME_ACKED;
            p->acked++;
            if (done >= measure_from && done < measure_until)
                p->acked_in_window++;
            if (started >= measure_from) {
                size_t slot = atomic_fetch_add(&self->ack_sample_count, 1);
                if (slot < stream_load_events_max)
                    self->ack_samples_ns[slot] = done - started;
            }
        } else {
            self->outcome[sequence] = OUTCOME_FAILED;
            p->errors++;
            if (!said_error)
                fprintf(stderr, "bench: %s: first failed publish of a publisher: %s\n",
                        p->system->name, error);
            said_error = true;
            load_sleep_ms(load_failure_pause_ms);
        }
    }
    return NULL;
}

/* ---- a run -------------------------------------------------------------- */

static int load_compare_ns(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The 'fraction' percentile (nearest rank) of the 'count' sorted
 * 'samples', in ms; 0 without samples. */
static double load_percentile_ms(const int64_t *samples, size_t count, double fraction)
{
    if (count == 0)
        return 0.0;
    size_t rank = (size_t)(fraction * (double)count + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > count)
        rank = count;
    return (double)samples[rank - 1] / 1e6;
}

/* Publishes the primer with 'publisher' and waits until the consumer
 * has it. Returns 0, or -1 after saying why. */
static int load_prime(stream_load_t *self, stream_system_t *system, stream_publisher_t *publisher,
                      load_consumer_t *consumer)
{
    const stream_load_config_t *config = self->config;
    uint8_t payload[stream_load_payload_bytes_max];
    memset(payload, 'p', config->payload_bytes);
    load_payload_write(config, payload, load_primer_sequence, machine_now_ns());
    char event_id[load_event_id_bytes], error[stream_error_bytes_max] = "";
    snprintf(event_id, sizeof event_id, "r%u-primer", config->run_id);
    if (system->publish(publisher, event_id, payload, config->payload_bytes, error) != 0) {
        fprintf(stderr, "bench: %s: the primer was not published: %s\n", system->name, error);
        return -1;
    }
    int64_t give_up = machine_now_ns() + (int64_t)stream_load_ready_timeout_ms * 1000000;
    while (!atomic_load(&self->primer_seen)) {
        if (*self->stopping || atomic_load(&consumer->ended))
            return -1;
        if (machine_now_ns() > give_up) {
            fprintf(stderr, "bench: %s: the consumer did not get the primer within %d ms\n",
                    system->name, stream_load_ready_timeout_ms);
            return -1;
        }
        load_sleep_ms(load_wait_step_ms);
    }
    return 0;
}

/* Waits until the consumer has every event acknowledged to the
 * publishers, at most stream_load_drain_ms. */
static void load_drain(stream_load_t *self, uint64_t acked, const load_consumer_t *consumer)
{
    int64_t give_up = machine_now_ns() + (int64_t)stream_load_drain_ms * 1000000;
    while (atomic_load(&self->delivered_once) < acked && !*self->stopping &&
           !atomic_load(&consumer->ended) && machine_now_ns() < give_up)
        load_sleep_ms(load_wait_step_ms);
}

/* Counts what the ledger says about the run into 'result'. */
static void load_reckon(stream_load_t *self, stream_load_result_t *result)
{
    uint64_t used = atomic_load(&self->next_sequence);
    if (used > stream_load_events_max)
        used = stream_load_events_max;
    for (uint64_t s = 0; s < used; s++) {
        uint8_t delivered = self->delivered[s];
        if (self->outcome[s] == OUTCOME_ACKED && delivered == 0)
            result->missing++;
        if (self->outcome[s] != OUTCOME_ACKED && delivered > 0)
            result->unacked_delivered++;
        if (delivered > 1)
            result->duplicates += delivered - 1u;
    }
    result->duplicates += self->duplicate_primers;
    result->foreign = self->foreign;
    result->capacity_reached = atomic_load(&self->capacity_reached);
}

int stream_load_run(stream_load_t *self, stream_system_t *system,
                    const stream_load_config_t *config, stream_load_result_t *result)
{
    assert(config->publishers >= 1 && config->publishers <= stream_load_publishers_max);
    assert(config->payload_bytes >= stream_load_header_bytes &&
           config->payload_bytes <= stream_load_payload_bytes_max);
    memset(result, 0, sizeof *result);
    memset(self->outcome, 0, stream_load_events_max);
    memset(self->delivered, 0, stream_load_events_max);
    self->config = config;
    self->sample_count = 0;
    self->foreign = 0;
    self->duplicate_primers = 0;
    atomic_store(&self->next_sequence, 0);
    atomic_store(&self->capacity_reached, false);
    atomic_store(&self->primer_seen, false);
    atomic_store(&self->delivered_once, 0);
    atomic_store(&self->ack_sample_count, 0);
    atomic_store(&self->measure_from_ns, INT64_MAX); /* no samples before the window is set */
    atomic_store(&self->measure_until_ns, INT64_MAX);

    int rc = 0;
    load_consumer_t consumer = {.system = system};
    load_publisher_t publishers[stream_load_publishers_max];
    memset(publishers, 0, sizeof publishers);

    /* The consumer first, so that it is subscribed before the primer. */
    consumer.consumer = system->consumer_new(system, config->stream, config->group,
                                             config->max_in_flight, load_on_event, self);
    if (consumer.consumer == NULL)
        rc = -1;
    if (rc == 0 && pthread_create(&consumer.thread, NULL, load_consumer_main, &consumer) != 0) {
        fprintf(stderr, "bench: cannot start the consumer thread\n");
        rc = -1;
    }
    consumer.started = rc == 0;
    for (unsigned i = 0; rc == 0 && i < config->publishers; i++) {
        publishers[i] = (load_publisher_t){.load = self, .system = system};
        publishers[i].publisher = system->publisher_new(system, config->stream);
        if (publishers[i].publisher == NULL)
            rc = -1;
    }
    if (rc == 0)
        rc = load_prime(self, system, publishers[0].publisher, &consumer);

    /* The publishers, with the window fixed before the first one runs. */
    int64_t start = machine_now_ns();
    atomic_store(&self->measure_from_ns, start + (int64_t)config->warmup_ms * 1000000);
    atomic_store(&self->measure_until_ns,
                 start + ((int64_t)config->warmup_ms + config->measure_ms) * 1000000);
    for (unsigned i = 0; rc == 0 && i < config->publishers; i++) {
        if (pthread_create(&publishers[i].thread, NULL, load_publisher_main, &publishers[i]) != 0) {
            fprintf(stderr, "bench: cannot start a publisher thread\n");
            rc = -1;
            break;
        }
        publishers[i].started = true;
    }
    uint64_t acked = 0;
    for (unsigned i = 0; i < config->publishers; i++) {
        if (publishers[i].started)
            pthread_join(publishers[i].thread, NULL);
        acked += publishers[i].acked;
        result->acked_in_window += publishers[i].acked_in_window;
        result->publish_errors += publishers[i].errors;
        system->publisher_destroy(&publishers[i].publisher);
    }
    result->acked = acked;

    if (rc == 0)
        load_drain(self, acked, &consumer);
    if (consumer.started) {
        system->consumer_stop(consumer.consumer);
        pthread_join(consumer.thread, NULL);
        if (consumer.rc != 0)
            rc = -1;
    }
    system->consumer_destroy(&consumer.consumer);
    system->stream_drop(system, config->stream);
    if (*self->stopping)
        rc = -1;

    load_reckon(self, result);
    result->errors = result->publish_errors + result->missing + result->foreign;
    size_t ack_count = atomic_load(&self->ack_sample_count);
    if (ack_count > stream_load_events_max)
        ack_count = stream_load_events_max;
    qsort(self->samples_ns, self->sample_count, sizeof *self->samples_ns, load_compare_ns);
    qsort(self->ack_samples_ns, ack_count, sizeof *self->ack_samples_ns, load_compare_ns);
    result->events_per_s = config->measure_ms > 0 ? (double)result->acked_in_window * 1000.0 /
                                                        (double)config->measure_ms
                                                  : 0.0;
    result->p50_ms = load_percentile_ms(self->samples_ns, self->sample_count, 0.50);
    result->p99_ms = load_percentile_ms(self->samples_ns, self->sample_count, 0.99);
    result->ack_p50_ms = load_percentile_ms(self->ack_samples_ns, ack_count, 0.50);
    return rc;
}
