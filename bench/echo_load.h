/*
 * echo_load: a closed-loop load of Echo calls with a fixed number in flight,
 * and the latency of each call.
 *
 * It is the client of all three measurements of bench_broker_hop, so that
 * they differ only in what sits between the client and the echo service:
 * one lib/rpc client (a DEALER socket) sends the real protocol, "PGW1" +
 * Header(REQUEST, service "echo", method "Echo", correlation id, meta) +
 * an EchoRequest body, with rpc_client_send, and collects the replies in
 * any order with rpc_client_recv. Each reply that arrives sends the next
 * request, so exactly 'in_flight' requests are outstanding all the time.
 *
 * A call counts as done when its REPLY has status OK and its body is an
 * EchoReply with the payload sent. Anything else (a status, a bad body, a
 * reply that matches no request, a request never answered) is an error,
 * and a run with errors is not a valid measurement.
 */
#ifndef BENCH_ECHO_LOAD_H
#define BENCH_ECHO_LOAD_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "curve/curve.h"

enum {
    echo_load_in_flight_max = 1024,
    echo_load_payload_bytes_max = 64 * 1024,
    echo_load_samples_max = 8 * 1024 * 1024, /* latencies kept per run (64 MiB) */
    echo_load_drain_ms = 3000,               /* wait for the last replies of a run */
};

/* One run's numbers. */
typedef struct {
    double requests_per_s; /* calls done in the measured window, per second */
    double p50_us;         /* latency percentiles of those calls */
    double p99_us;
    uint64_t done;   /* calls done (status OK) in the measured window */
    uint64_t calls;  /* calls done in the whole run, warm-up and drain included */
    uint64_t errors; /* in the whole run, warm-up and drain included */
    uint64_t lost;   /* of 'errors': requests never answered */
} echo_load_result_t;

typedef struct echo_load echo_load_t;

/* A load client for the echo service behind 'endpoint', sending payloads
 * of 'payload_bytes'. 'identity' is its CURVE identity (an insecure one
 * for the plaintext references; NULL: the process's, from the
 * environment). 'stopping' is polled between replies: when it turns
 * non-zero, waits and runs end early with an error. NULL on error. */
echo_load_t *echo_load_new(void *zmq_ctx, const char *endpoint, size_t payload_bytes,
                           const curve_identity_t *identity, const volatile sig_atomic_t *stopping);

/* Closes the client and sets '*self' to NULL. */
void echo_load_destroy(echo_load_t **self);

/* Sends probe calls until one is answered OK, for at most 'timeout_ms',
 * then lets the other probes' replies arrive and drops them. Returns 0
 * when the echo service answered, -1 otherwise. */
int echo_load_wait_ready(echo_load_t *self, int timeout_ms);

/* Runs the closed loop with 'in_flight' calls outstanding: 'warmup_ms'
 * unmeasured, then 'measure_ms' measured, then waits (at most
 * echo_load_drain_ms) for the calls still out. Fills 'result'. Returns 0,
 * or -1 when the run could not go on (socket error, stop asked). */
int echo_load_run(echo_load_t *self, unsigned in_flight, int warmup_ms, int measure_ms,
                  echo_load_result_t *result);

#endif
