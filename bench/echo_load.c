/*
 * echo_load: the closed-loop Echo client of bench_broker_hop. See
 * echo_load.h for the contract.
 *
 * Outstanding calls are kept in a ring indexed by correlation id (lib/rpc
 * numbers a client's calls consecutively), which holds each call's send
 * time. The ring is much larger than the most calls in flight, so a slot
 * still in use when its turn comes again belongs to a call that was never
 * answered (counted as lost).
 */
#include "echo_load.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "echo.pb-c.h"
#include "rpc/rpc.h"
#include "wire/wire.h"

enum {
    load_ring_slots = 4096,  /* power of two, far above echo_load_in_flight_max */
    load_recv_step_ms = 100, /* longest wait between looks at the stop flag */
    load_probe_every_ms = 200,
    load_probe_deadline_ms = 500,
    load_call_deadline_ms = 5000,
};

typedef struct {
    uint64_t correlation_id;
    int64_t sent_ns;
    bool used;
} load_slot_t;

struct echo_load {
    rpc_client_t *client;
    const volatile sig_atomic_t *stopping;
    uint8_t *request_body; /* a packed EchoRequest */
    size_t request_len;
    size_t payload_bytes;
    load_slot_t ring[load_ring_slots];
    unsigned outstanding;
    int64_t *samples_ns; /* latencies of the current run */
    size_t sample_count;
    size_t sample_capacity;
};

static_assert((load_ring_slots & (load_ring_slots - 1)) == 0, "ring size is a power of two");
static_assert(load_ring_slots >= 4 * echo_load_in_flight_max, "ring far above in-flight");

/* Nanoseconds on the monotonic clock. */
static int64_t load_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

echo_load_t *echo_load_new(void *zmq_ctx, const char *endpoint, size_t payload_bytes,
                           const curve_identity_t *identity, const volatile sig_atomic_t *stopping)
{
    assert(payload_bytes <= echo_load_payload_bytes_max);
    echo_load_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->stopping = stopping;
    self->payload_bytes = payload_bytes;

    /* The same request every time: 'payload_bytes' of a repeating pattern. */
    uint8_t *payload = malloc(payload_bytes > 0 ? payload_bytes : 1);
    Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
    if (payload != NULL) {
        for (size_t i = 0; i < payload_bytes; i++)
            payload[i] = (uint8_t)('a' + i % 26);
        request.payload.data = payload;
        request.payload.len = payload_bytes;
        self->request_len = paygate__v1__echo_request__get_packed_size(&request);
        self->request_body = malloc(self->request_len);
    }
    if (self->request_body != NULL)
        paygate__v1__echo_request__pack(&request, self->request_body);
    free(payload);

    self->client = identity != NULL ? rpc_client_new_as(zmq_ctx, endpoint, identity)
                                    : rpc_client_new(zmq_ctx, endpoint);
    if (self->client == NULL || self->request_body == NULL) {
        echo_load_destroy(&self);
        return NULL;
    }
    return self;
}

void echo_load_destroy(echo_load_t **self)
{
    if (*self == NULL)
        return;
    rpc_client_destroy(&(*self)->client);
    free((*self)->request_body);
    free((*self)->samples_ns);
    free(*self);
    *self = NULL;
}

/* Sends one Echo call with 'deadline_ms' and notes its send time in the
 * ring. Returns 0, or -1 when the client could not send ('status' says
 * why). A call whose ring slot was still taken is counted in '*lost'. */
static int load_send(echo_load_t *self, uint32_t deadline_ms, uint64_t *lost, rpc_status_t *status)
{
    rpc_call_opts_t opts = {
        .deadline_ms = deadline_ms,
        .request_id = "bench-broker-hop", /* fixed: no random id per call */
        .principal = "bench",
    };
    uint64_t correlation_id = 0;
    int64_t sent_ns = load_now_ns();
    if (rpc_client_send(self->client, "echo", "Echo", self->request_body, self->request_len, &opts,
                        &correlation_id, status) != 0)
        return -1;
    load_slot_t *slot = &self->ring[correlation_id & (load_ring_slots - 1)];
    if (slot->used) {
        (*lost)++;
        self->outstanding--;
    }
    *slot = (load_slot_t){.correlation_id = correlation_id, .sent_ns = sent_ns, .used = true};
    self->outstanding++;
    return 0;
}

/* load_send for a measured call; says on stderr why a send failed. */
static int load_send_or_say(echo_load_t *self, uint64_t *lost)
{
    rpc_status_t status;
    if (load_send(self, load_call_deadline_ms, lost, &status) == 0)
        return 0;
    fprintf(stderr, "bench: cannot send: %s: %s\n", wire_code_name(status.code), status.message);
    return -1;
}

/* Takes the call 'correlation_id' out of the ring. Returns its send time,
 * or -1 when no outstanding call has that id. */
static int64_t load_take(echo_load_t *self, uint64_t correlation_id)
{
    load_slot_t *slot = &self->ring[correlation_id & (load_ring_slots - 1)];
    if (!slot->used || slot->correlation_id != correlation_id)
        return -1;
    slot->used = false;
    assert(self->outstanding > 0);
    self->outstanding--;
    return slot->sent_ns;
}

/* Forgets every outstanding call; returns how many there were. */
static unsigned load_forget_all(echo_load_t *self)
{
    unsigned forgotten = self->outstanding;
    memset(self->ring, 0, sizeof self->ring);
    self->outstanding = 0;
    return forgotten;
}

/* True when 'body' is an EchoReply carrying the payload we send. */
static bool load_reply_valid(const echo_load_t *self, zmq_msg_t *body)
{
    Paygate__V1__EchoReply *reply =
        paygate__v1__echo_reply__unpack(NULL, zmq_msg_size(body), zmq_msg_data(body));
    if (reply == NULL)
        return false;
    bool valid = reply->payload.len == self->payload_bytes;
    paygate__v1__echo_reply__free_unpacked(reply, NULL);
    return valid;
}

/* Keeps the latency 'ns' of a call done in the measured window. */
static void load_sample(echo_load_t *self, int64_t ns)
{
    if (self->sample_count == self->sample_capacity) {
        if (self->sample_capacity >= echo_load_samples_max)
            return; /* enough for any percentile; the count still counts */
        size_t capacity = self->sample_capacity ? self->sample_capacity * 2 : 64 * 1024;
        int64_t *grown = realloc(self->samples_ns, capacity * sizeof *grown);
        if (grown == NULL)
            return;
        self->samples_ns = grown;
        self->sample_capacity = capacity;
    }
    self->samples_ns[self->sample_count++] = ns;
}

static int load_compare_ns(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The 'fraction' percentile (nearest rank) of the sorted samples, in us. */
static double load_percentile_us(const echo_load_t *self, double fraction)
{
    if (self->sample_count == 0)
        return 0.0;
    size_t rank = (size_t)(fraction * (double)self->sample_count + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > self->sample_count)
        rank = self->sample_count;
    return (double)self->samples_ns[rank - 1] / 1000.0;
}

int echo_load_wait_ready(echo_load_t *self, int timeout_ms)
{
    int64_t start = load_now_ns();
    int64_t give_up = start + (int64_t)timeout_ms * 1000000;
    int64_t next_probe = start;
    uint64_t ignored = 0;
    bool ready = false;
    while (!ready && !*self->stopping && load_now_ns() < give_up) {
        rpc_status_t status;
        if (load_now_ns() >= next_probe) {
            /* Not connected yet: the send waits (at most the probe's
             * deadline) and fails; the next probe tries again. */
            load_send(self, load_probe_deadline_ms, &ignored, &status);
            next_probe = load_now_ns() + (int64_t)load_probe_every_ms * 1000000;
        }
        uint64_t correlation_id = 0;
        zmq_msg_t body;
        zmq_msg_init(&body);
        int rc = rpc_client_recv(self->client, 20, &correlation_id, &body, &status);
        if (rc < 0) {
            zmq_msg_close(&body);
            break;
        }
        if (rc == 1)
            ready = status.code == PAYGATE__V1__CODE__OK && load_reply_valid(self, &body);
        zmq_msg_close(&body);
    }
    /* Let the other probes' replies come in, so that no run sees them. */
    int64_t drain_until = load_now_ns() + (int64_t)(ready ? 300 : 0) * 1000000;
    while (ready && load_now_ns() < drain_until) {
        uint64_t correlation_id = 0;
        rpc_status_t status;
        if (rpc_client_recv(self->client, 50, &correlation_id, NULL, &status) < 0)
            break;
    }
    load_forget_all(self);
    return ready ? 0 : -1;
}

int echo_load_run(echo_load_t *self, unsigned in_flight, int warmup_ms, int measure_ms,
                  echo_load_result_t *result)
{
    assert(in_flight >= 1 && in_flight <= echo_load_in_flight_max);
    assert(self->outstanding == 0);
    memset(result, 0, sizeof *result);
    self->sample_count = 0;
    int64_t start_ns = load_now_ns();
    int64_t measure_from = start_ns + (int64_t)warmup_ms * 1000000;
    int64_t measure_until = measure_from + (int64_t)measure_ms * 1000000;
    int rc_run = 0;
    zmq_msg_t body;
    zmq_msg_init(&body);

    for (unsigned i = 0; i < in_flight && rc_run == 0; i++)
        rc_run = load_send_or_say(self, &result->lost);

    /* The loop: each reply sends the next call, until the window closes. */
    int64_t drain_until = 0;
    while (rc_run == 0) {
        int64_t now = load_now_ns();
        bool draining = now >= measure_until;
        if (draining && drain_until == 0)
            drain_until = now + (int64_t)echo_load_drain_ms * 1000000;
        if (draining && (self->outstanding == 0 || now >= drain_until))
            break;
        if (*self->stopping) {
            rc_run = -1;
            break;
        }
        int64_t until = draining ? drain_until : measure_until;
        int64_t wait_ms = (until - now) / 1000000 + 1;
        if (wait_ms > load_recv_step_ms)
            wait_ms = load_recv_step_ms;
        uint64_t correlation_id = 0;
        rpc_status_t status;
        int rc = rpc_client_recv(self->client, (int)wait_ms, &correlation_id, &body, &status);
        if (rc < 0) {
            fprintf(stderr, "bench: receive failed: %s\n", zmq_strerror(zmq_errno()));
            rc_run = -1;
            break;
        }
        if (rc == 0)
            continue;
        int64_t done_ns = load_now_ns();
        int64_t sent_ns = load_take(self, correlation_id);
        bool ok =
            sent_ns >= 0 && status.code == PAYGATE__V1__CODE__OK && load_reply_valid(self, &body);
        if (!ok) {
            if (result->errors == 0)
                fprintf(stderr, "bench: first error: %s\n",
                        sent_ns < 0                            ? "a reply that matches no call"
                        : status.code != PAYGATE__V1__CODE__OK ? status.message
                                                               : "bad reply body");
            result->errors++;
        } else {
            result->calls++;
            if (done_ns >= measure_from && done_ns < measure_until) {
                result->done++;
                load_sample(self, done_ns - sent_ns);
            }
        }
        /* A reply that matches no call freed no slot: sending for it
         * would put more than 'in_flight' calls out. */
        if (done_ns < measure_until && sent_ns >= 0)
            rc_run = load_send_or_say(self, &result->lost);
    }
    zmq_msg_close(&body);
    result->lost += load_forget_all(self);
    result->errors += result->lost;

    if (self->sample_count > 1)
        qsort(self->samples_ns, self->sample_count, sizeof *self->samples_ns, load_compare_ns);
    result->requests_per_s = (double)result->done * 1000.0 / (double)measure_ms;
    result->p50_us = load_percentile_us(self, 0.50);
    result->p99_us = load_percentile_us(self, 0.99);
    return rc_run;
}
