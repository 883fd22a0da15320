/*
 * Integration tests of the broker with real processes: the paygate-broker
 * binary and paygate-echo-worker processes on loopback TCP, and clients
 * using the RPC library or raw ZeroMQ sockets for hostile input.
 *
 * Each test starts its own broker on a free port with the settings it
 * needs, so tests are independent. Process logs are kept in
 * $PAYGATE_TEST_LOG_DIR, named after the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "clock/clock.h"
#include "log/log.h"
#include "echo.pb-c.h"
#include "proc.h"
#include "rpc/rpc.h"
#include "wire/wire.h"

enum { workers_max = 4, env_max = 16 };

typedef struct {
    const char *test;
    int port;
    char endpoint[64];
    char env_endpoint[96];
    proc_t broker;
    proc_t workers[workers_max];
    rpc_client_t *client;
    void *zmq_ctx; /* for raw sockets */
    void *raw[4];  /* raw sockets, closed by the teardown */
    int raw_count;
} fixture_t;

static int fixture_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->port = free_tcp_port();
    assert_true(f->port > 0);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", f->port);
    snprintf(f->env_endpoint, sizeof f->env_endpoint, "PAYGATE_BROKER_ENDPOINT=%s", f->endpoint);
    f->zmq_ctx = zmq_ctx_new();
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture_t *f = *state;
    rpc_client_destroy(&f->client);
    for (int i = 0; i < workers_max; i++)
        proc_kill(&f->workers[i]);
    proc_kill(&f->broker);
    for (int i = 0; i < f->raw_count; i++)
        zmq_close(f->raw[i]);
    zmq_ctx_term(f->zmq_ctx);
    free(f);
    return 0;
}

/* Builds "NAME=value" env lists: 'base' first, then 'extra' (NULL-ended). */
static void env_join(const char *out[env_max], const char *base, const char *const extra[])
{
    size_t n = 0;
    out[n++] = base;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < env_max - 1; i++)
        out[n++] = extra[i];
    out[n] = NULL;
}

/* Starts the broker with 'extra' settings and a client connected to it. */
static void start_broker(fixture_t *f, const char *test, const char *const extra[])
{
    f->test = test;
    const char *env[env_max];
    env_join(env, f->env_endpoint, extra);
    char name[128];
    snprintf(name, sizeof name, "%s-broker", test);
    assert_true(proc_start(&f->broker, name, PAYGATE_BROKER_BIN, env));
    if (f->client == NULL)
        f->client = rpc_client_new(NULL, f->endpoint);
    assert_non_null(f->client);
    /* ready when discovery answers */
    int64_t until = clock_now_ms() + 10000;
    while (discovery_count(f->client, "echo", 200) < 0)
        assert_true(clock_now_ms() < until);
}

/* Starts echo worker process 'i' with 'extra' settings. */
static void start_worker(fixture_t *f, int i, const char *const extra[])
{
    const char *env[env_max];
    env_join(env, f->env_endpoint, extra);
    char name[128];
    snprintf(name, sizeof name, "%s-worker%d", f->test, i);
    assert_true(proc_start(&f->workers[i], name, PAYGATE_ECHO_WORKER_BIN, env));
}

/* Calls echo.'method' with 'payload' and 'sleep'; returns the code and
 * copies the answering instance id into 'instance' (if not NULL). */
static Paygate__V1__Code echo_call(fixture_t *f, const char *service, const char *method,
                                   const char *payload, uint32_t sleep, uint32_t deadline_ms,
                                   rpc_status_t *status, char *instance, size_t instance_size)
{
    Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
    request.payload.data = (uint8_t *)payload;
    request.payload.len = strlen(payload);
    request.sleep_ms = sleep;
    ProtobufCMessage *reply = NULL;
    rpc_call_opts_t opts = {.deadline_ms = deadline_ms, .request_id = "req_test_1"};
    Paygate__V1__Code code =
        rpc_client_call(f->client, service, method, &request.base,
                        &paygate__v1__echo_reply__descriptor, &reply, &opts, status);
    if (code == PAYGATE__V1__CODE__OK) {
        Paygate__V1__EchoReply *echo = (Paygate__V1__EchoReply *)reply;
        assert_int_equal(echo->payload.len, strlen(payload));
        assert_memory_equal(echo->payload.data, payload, strlen(payload));
        if (instance != NULL)
            snprintf(instance, instance_size, "%s", echo->instance_id);
        protobuf_c_message_free_unpacked(reply, NULL);
    }
    return code;
}

/* Sends echo.Sleep without waiting; returns the correlation id. */
static uint64_t sleep_send(fixture_t *f, uint32_t sleep, uint32_t deadline_ms)
{
    Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
    request.sleep_ms = sleep;
    uint8_t buffer[64];
    size_t len = paygate__v1__echo_request__pack(&request, buffer);
    rpc_call_opts_t opts = {.deadline_ms = deadline_ms};
    uint64_t id = 0;
    rpc_status_t status;
    assert_int_equal(rpc_client_send(f->client, "echo", "Sleep", buffer, len, &opts, &id, &status),
                     0);
    return id;
}

/* Waits for the reply to 'id' (others are an error); returns its code. */
static Paygate__V1__Code reply_wait(fixture_t *f, uint64_t id, int timeout_ms, rpc_status_t *status)
{
    uint64_t got = 0;
    int rc = rpc_client_recv(f->client, timeout_ms, &got, NULL, status);
    assert_int_equal(rc, 1);
    assert_true(got == id);
    return status->code;
}

/* A raw DEALER socket connected to the broker. */
static void *raw_socket(fixture_t *f)
{
    void *s = zmq_socket(f->zmq_ctx, ZMQ_DEALER);
    int zero = 0, timeout = 5000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    assert_int_equal(zmq_connect(s, f->endpoint), 0);
    assert_true(f->raw_count < 4);
    f->raw[f->raw_count++] = s;
    return s;
}

/* Sends READY for 'service'/'instance' on a raw socket. */
static void raw_ready(void *s, const char *service, const char *instance, uint32_t heartbeat_ms)
{
    Paygate__V1__Ready ready = PAYGATE__V1__READY__INIT;
    ready.service = (char *)service;
    ready.instance_id = (char *)instance;
    ready.heartbeat_interval_ms = heartbeat_ms;
    ready.max_in_flight = 1;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__READY;
    header.ready = &ready;
    assert_int_equal(wire_send(s, NULL, 0, &header, NULL, 0), 0);
}

/* Counts the lines of 'path' that contain 'needle' and (unless NULL)
 * 'also'. */
static int log_count(const char *path, const char *needle, const char *also)
{
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return -1;
    char line[8192];
    int count = 0;
    while (fgets(line, sizeof line, file) != NULL)
        count += strstr(line, needle) != NULL && (also == NULL || strstr(line, also) != NULL);
    fclose(file);
    return count;
}

/* ---- tests ----------------------------------------------------------- */

/* A worker process with two threads is two instances in discovery, with
 * the ids and a fresh heartbeat. */
static void test_registration_shows_in_discovery(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "registration", NULL);
    start_worker(f, 0, (const char *[]){"ECHO_THREADS=2", "ECHO_INSTANCE=echo-reg", NULL});
    assert_true(discovery_wait(f->client, "echo", 2, 10000) >= 0);

    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    ProtobufCMessage *msg = NULL;
    assert_int_equal(rpc_client_call(f->client, "broker.services", "List", &request.base,
                                     &paygate__v1__list_services_reply__descriptor, &msg, NULL,
                                     NULL),
                     PAYGATE__V1__CODE__OK);
    Paygate__V1__ListServicesReply *reply = (Paygate__V1__ListServicesReply *)msg;
    assert_int_equal(reply->n_services, 1);
    assert_string_equal(reply->services[0]->name, "echo");
    assert_int_equal(reply->services[0]->n_instances, 2);
    bool seen[2] = {false, false};
    for (size_t i = 0; i < 2; i++) {
        const Paygate__V1__InstanceInfo *inst = reply->services[0]->instances[i];
        if (strcmp(inst->instance_id, "echo-reg-0") == 0)
            seen[0] = true;
        if (strcmp(inst->instance_id, "echo-reg-1") == 0)
            seen[1] = true;
        assert_true(inst->heartbeat_age_ms < 3 * 1000);
        assert_int_equal(inst->max_in_flight, 4);
        assert_int_equal(inst->heartbeat_interval_ms, 1000);
    }
    assert_true(seen[0] && seen[1]);
    protobuf_c_message_free_unpacked(msg, NULL);
}

/* SIGKILL: the worker leaves discovery within 3 heartbeat intervals
 * (the test allows one more interval for scheduling noise). */
static void test_killed_worker_leaves_discovery(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "killed", (const char *[]){"PAYGATE_BROKER_HEARTBEAT_MS=500", NULL});
    start_worker(f, 0, (const char *[]){"ECHO_HEARTBEAT_MS=500", NULL});
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    proc_kill(&f->workers[0]);
    int took = discovery_wait(f->client, "echo", 0, 5000);
    assert_true(took >= 0);
    assert_true(took <= 4 * 500);
}

/* A worker whose connection stays open but who never heartbeats is
 * expired after liveness (3) x its interval. */
static void test_silent_worker_expires(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "silent", NULL);
    void *s = raw_socket(f);
    raw_ready(s, "quiet", "quiet-1", 300);
    assert_true(discovery_wait(f->client, "quiet", 1, 5000) >= 0);
    int took = discovery_wait(f->client, "quiet", 0, 5000);
    assert_true(took >= 0);
    assert_true(took <= 4 * 300);
    Paygate__V1__BrokerStats stats;
    assert_true(discovery_stats(f->client, &stats));
    assert_int_equal(stats.workers_expired, 1);
}

/* Two worker processes share the requests of one client. */
static void test_two_instances_share_load(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "share", NULL);
    start_worker(f, 0, (const char *[]){"ECHO_INSTANCE=alpha", "ECHO_MAX_IN_FLIGHT=1", NULL});
    start_worker(f, 1, (const char *[]){"ECHO_INSTANCE=beta", "ECHO_MAX_IN_FLIGHT=1", NULL});
    assert_true(discovery_wait(f->client, "echo", 2, 10000) >= 0);
    int alpha = 0, beta = 0;
    for (int i = 0; i < 100; i++) {
        char instance[160] = "";
        rpc_status_t status;
        assert_int_equal(
            echo_call(f, "echo", "Echo", "ping", 0, 2000, &status, instance, sizeof instance),
            PAYGATE__V1__CODE__OK);
        alpha += strncmp(instance, "alpha-", 6) == 0;
        beta += strncmp(instance, "beta-", 5) == 0;
    }
    assert_int_equal(alpha + beta, 100);
    /* least recently used: sequential calls alternate */
    assert_true(alpha >= 40 && beta >= 40);
}

/* A deadline that passes while the worker runs the request is answered
 * DEADLINE_EXCEEDED by the broker, not after the worker finishes. */
static void test_deadline_in_flight(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "deadline", NULL);
    start_worker(f, 0, NULL);
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    rpc_status_t status;
    int64_t start = clock_now_ms();
    assert_int_equal(echo_call(f, "echo", "Sleep", "", 3000, 300, &status, NULL, 0),
                     PAYGATE__V1__CODE__DEADLINE_EXCEEDED);
    assert_string_equal(status.reason, "deadline_exceeded");
    assert_true(clock_now_ms() - start < 3000); /* not the worker's late answer */
    /* the broker's verdict is logged with the request's id (before it answers) */
    assert_int_equal(log_count(f->broker.log_path, "\"request_id\":\"req_test_1\"",
                               "\"reason\":\"deadline_exceeded\""),
                     1);
}

/* A deadline that passes while the request waits for a free worker. */
static void test_deadline_while_queued(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "queued", NULL);
    start_worker(f, 0, (const char *[]){"ECHO_MAX_IN_FLIGHT=1", NULL});
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    uint64_t busy = sleep_send(f, 1500, 5000);
    rpc_status_t status;
    uint64_t waiting = sleep_send(f, 0, 300);
    assert_int_equal(reply_wait(f, waiting, 3000, &status), PAYGATE__V1__CODE__DEADLINE_EXCEEDED);
    assert_non_null(strstr(status.message, "waiting"));
    assert_int_equal(reply_wait(f, busy, 5000, &status), PAYGATE__V1__CODE__OK);
}

/* A worker killed with a request in flight: the client hears UNAVAILABLE
 * long before its deadline. */
static void test_worker_death_in_flight(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "death", NULL);
    start_worker(f, 0, NULL);
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    /* no id in the call's options: the client sends this thread's */
    log_set_request_id("req_death_1");
    uint64_t id = sleep_send(f, 20000, 30000);
    log_set_request_id(NULL);
    sleep_ms(300);
    proc_kill(&f->workers[0]);
    rpc_status_t status;
    assert_int_equal(reply_wait(f, id, 10000, &status), PAYGATE__V1__CODE__UNAVAILABLE);
    assert_string_equal(status.reason, "worker_lost");
    assert_int_equal(log_count(f->broker.log_path, "\"request_id\":\"req_death_1\"",
                               "\"reason\":\"worker_lost\""),
                     1);
}

/* A handler that runs longer than liveness x heartbeat interval (its
 * thread cannot heartbeat meanwhile) keeps its worker: the answer arrives,
 * and the worker is never expired, because its connection stays up (its
 * I/O thread answers the broker's ZMTP pings). A frozen worker (SIGSTOP)
 * holding a request loses its connection to those pings, and the client
 * hears worker_lost long before its deadline. */
static void test_long_handler_keeps_worker(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "long", (const char *[]){"PAYGATE_BROKER_HEARTBEAT_MS=200", NULL});
    start_worker(f, 0, (const char *[]){"ECHO_HEARTBEAT_MS=200", NULL});
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    rpc_status_t status;
    /* 1500 ms: over twice the 600 ms of silence that expires an idle worker */
    assert_int_equal(echo_call(f, "echo", "Sleep", "", 1500, 5000, &status, NULL, 0),
                     PAYGATE__V1__CODE__OK);
    Paygate__V1__BrokerStats stats;
    assert_true(discovery_stats(f->client, &stats));
    assert_int_equal(stats.workers_expired, 0);
    assert_int_equal(discovery_count(f->client, "echo", 2000), 1);

    uint64_t id = sleep_send(f, 20000, 30000);
    sleep_ms(300);
    proc_signal(&f->workers[0], SIGSTOP);
    int64_t start = clock_now_ms();
    assert_int_equal(reply_wait(f, id, 15000, &status), PAYGATE__V1__CODE__UNAVAILABLE);
    assert_string_equal(status.reason, "worker_lost");
    assert_true(clock_now_ms() - start < 15000); /* the broker's verdict, not the deadline */
    proc_signal(&f->workers[0], SIGCONT);
}

/* The broker is SIGKILLed and restarted on the same port: the worker
 * rejoins by itself and requests flow again. */
static void test_broker_restart_rejoined(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "restart", NULL);
    start_worker(f, 0, (const char *[]){"ECHO_HEARTBEAT_MS=200", NULL});
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    proc_kill(&f->broker);
    start_broker(f, "restart2", NULL);
    assert_true(discovery_wait(f->client, "echo", 1, 15000) >= 0);
    rpc_status_t status;
    assert_int_equal(echo_call(f, "echo", "Echo", "again", 0, 2000, &status, NULL, 0),
                     PAYGATE__V1__CODE__OK);
}

/* Sends 'count' raw frames as one multipart message. */
static void raw_send(void *s, const void *const frames[], const size_t sizes[], size_t count)
{
    for (size_t i = 0; i < count; i++)
        assert_true(zmq_send(s, frames[i], sizes[i], i + 1 < count ? ZMQ_SNDMORE : 0) >= 0);
}

/* Garbage of every kind from one peer: the broker answers what it can,
 * counts the rest, logs that peer once, and keeps serving. */
static void test_garbage_frames_survived(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "garbage", (const char *[]){"PAYGATE_BROKER_MESSAGE_BYTES_MAX=4096", NULL});
    start_worker(f, 0, NULL);
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    void *s = raw_socket(f);

    raw_send(s, (const void *[]){"hello"}, (size_t[]){5}, 1);
    raw_send(s, (const void *[]){"XXXX", "y"}, (size_t[]){4, 1}, 2);
    raw_send(s, (const void *[]){"PGW1", "\xff\xff\xff\xff\xff"}, (size_t[]){4, 5}, 2);
    raw_send(s, (const void *[]){"PGW1", "a", "b", "c", "d", "e"}, (size_t[]){4, 1, 1, 1, 1, 1}, 6);
    uint8_t header_bytes[256];
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = 99;
    size_t n = paygate__v1__header__pack(&header, header_bytes);
    raw_send(s, (const void *[]){"PGW1", header_bytes}, (size_t[]){4, n}, 2);

    /* A request with a bad service name is answered INVALID_ARGUMENT. */
    header.command = PAYGATE__V1__COMMAND__REQUEST;
    header.correlation_id = 42;
    header.service = (char *)"Bad Name!";
    header.method = (char *)"Echo";
    assert_int_equal(wire_send(s, NULL, 0, &header, NULL, 0), 0);
    wire_message_t msg;
    const char *detail = NULL;
    assert_int_equal(wire_recv(s, false, 1 << 20, 0, &msg, &detail), WIRE_OK);
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__REPLY);
    assert_true(msg.header->correlation_id == 42);
    assert_int_equal(msg.header->status->code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
    wire_message_clear(&msg);

    /* An oversized request is answered RESOURCE_EXHAUSTED. */
    header.correlation_id = 43;
    header.service = (char *)"echo";
    zmq_msg_t body;
    zmq_msg_init_size(&body, 10000);
    memset(zmq_msg_data(&body), 'x', 10000);
    assert_int_equal(wire_send(s, NULL, 0, &header, &body, 0), 0);
    zmq_msg_close(&body);
    assert_int_equal(wire_recv(s, false, 1 << 20, 0, &msg, &detail), WIRE_OK);
    assert_true(msg.header->correlation_id == 43);
    assert_int_equal(msg.header->status->code, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED);
    assert_string_equal(msg.header->status->reason, "message_too_big");
    wire_message_clear(&msg);

    /* Still serving. */
    rpc_status_t status;
    assert_int_equal(echo_call(f, "echo", "Echo", "alive", 0, 2000, &status, NULL, 0),
                     PAYGATE__V1__CODE__OK);
    Paygate__V1__BrokerStats stats;
    assert_true(discovery_stats(f->client, &stats));
    assert_int_equal(stats.frames_malformed, 5);
    assert_int_equal(stats.commands_unknown, 1);
    assert_int_equal(stats.messages_oversized, 1);
    assert_true(proc_wait(&f->broker, 0) == false); /* still running */
    assert_int_equal(log_count(f->broker.log_path, "bad message from peer", NULL), 1);
}

/* No worker: UNAVAILABLE after the grace period, not at once and not at
 * the deadline. */
static void test_no_worker_unavailable(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "noworker", (const char *[]){"PAYGATE_BROKER_UNAVAILABLE_GRACE_MS=300", NULL});
    rpc_status_t status;
    int64_t start = clock_now_ms();
    assert_int_equal(echo_call(f, "nobody", "Echo", "x", 0, 20000, &status, NULL, 0),
                     PAYGATE__V1__CODE__UNAVAILABLE);
    assert_string_equal(status.reason, "no_worker");
    assert_true(clock_now_ms() - start < 20000);
}

/* A worker that registers within the grace period gets the request. */
static void test_worker_within_grace(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "grace", (const char *[]){"PAYGATE_BROKER_UNAVAILABLE_GRACE_MS=8000", NULL});
    uint64_t id = sleep_send(f, 0, 10000);
    start_worker(f, 0, NULL);
    rpc_status_t status;
    assert_int_equal(reply_wait(f, id, 12000, &status), PAYGATE__V1__CODE__OK);
}

/* A full queue refuses with RESOURCE_EXHAUSTED; what was accepted is
 * still served. */
static void test_queue_full(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "queuefull", (const char *[]){"PAYGATE_BROKER_QUEUE_MAX=2", NULL});
    start_worker(f, 0, (const char *[]){"ECHO_MAX_IN_FLIGHT=1", NULL});
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    uint64_t ids[4];
    for (int i = 0; i < 4; i++)
        ids[i] = sleep_send(f, 300, 10000);
    int ok = 0, full = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t got = 0;
        rpc_status_t status;
        assert_int_equal(rpc_client_recv(f->client, 10000, &got, NULL, &status), 1);
        if (status.code == PAYGATE__V1__CODE__OK)
            ok++;
        if (status.code == PAYGATE__V1__CODE__RESOURCE_EXHAUSTED) {
            full++;
            assert_string_equal(status.reason, "queue_full");
            assert_true(got == ids[3]);
        }
    }
    assert_int_equal(ok, 3);
    assert_int_equal(full, 1);
}

/* Names under broker. cannot be registered. */
static void test_reserved_names_refused(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "reserved", NULL);
    void *s = raw_socket(f);
    raw_ready(s, "broker.evil", "evil-1", 1000);
    wire_message_t msg;
    const char *detail = NULL;
    assert_int_equal(wire_recv(s, false, 1 << 20, 0, &msg, &detail), WIRE_OK);
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__DISCONNECT);
    assert_int_equal(msg.header->status->code, PAYGATE__V1__CODE__PERMISSION_DENIED);
    wire_message_clear(&msg);
    assert_int_equal(discovery_count(f->client, "broker.evil", 1000), 0);
}

/* SIGTERM to the broker: requests in flight are answered UNAVAILABLE and
 * the broker exits 0. */
static void test_broker_sigterm(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "brokerterm", NULL);
    start_worker(f, 0, NULL);
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    uint64_t id = sleep_send(f, 5000, 10000);
    sleep_ms(200);
    proc_signal(&f->broker, SIGTERM);
    rpc_status_t status;
    assert_int_equal(reply_wait(f, id, 5000, &status), PAYGATE__V1__CODE__UNAVAILABLE);
    assert_string_equal(status.reason, "broker_stopping");
    assert_true(proc_wait(&f->broker, 5000));
    assert_true(WIFEXITED(f->broker.exit_status) && WEXITSTATUS(f->broker.exit_status) == 0);
}

/* SIGTERM to a worker: it finishes the request it holds, leaves
 * discovery and exits 0. */
static void test_worker_sigterm_drains(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "workerterm", NULL);
    start_worker(f, 0, NULL);
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    uint64_t id = sleep_send(f, 800, 10000);
    sleep_ms(200);
    proc_signal(&f->workers[0], SIGTERM);
    rpc_status_t status;
    assert_int_equal(reply_wait(f, id, 5000, &status), PAYGATE__V1__CODE__OK);
    assert_true(proc_wait(&f->workers[0], 5000));
    assert_true(WIFEXITED(f->workers[0].exit_status) &&
                WEXITSTATUS(f->workers[0].exit_status) == 0);
    assert_int_equal(discovery_count(f->client, "echo", 1000), 0);
}

/* Statuses from the worker side: unknown method, bad body, a handler's
 * failure with reason, details and the request id. */
static void test_worker_statuses(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "statuses", NULL);
    start_worker(f, 0, (const char *[]){"ECHO_INSTANCE=stat", NULL});
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    rpc_status_t status;
    assert_int_equal(echo_call(f, "echo", "Nope", "x", 0, 2000, &status, NULL, 0),
                     PAYGATE__V1__CODE__UNIMPLEMENTED);
    assert_int_equal(echo_call(f, "echo", "Fail", "x", 0, 2000, &status, NULL, 0),
                     PAYGATE__V1__CODE__FAILED_PRECONDITION);
    assert_string_equal(status.reason, "echo_failed");
    assert_non_null(strstr(status.message, "req_test_1"));
    assert_string_equal(rpc_status_detail(&status, "instance_id"), "stat-0");

    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
    zmq_msg_t body;
    zmq_msg_init(&body);
    assert_int_equal(
        rpc_client_call_raw(f->client, "echo", "Echo", junk, sizeof junk, NULL, &body, &status),
        PAYGATE__V1__CODE__INVALID_ARGUMENT);
    zmq_msg_close(&body);
    assert_int_equal(echo_call(f, "broker.services", "Nope", "x", 0, 2000, &status, NULL, 0),
                     PAYGATE__V1__CODE__UNIMPLEMENTED);
}

/* max_in_flight from READY is respected: two held, the rest wait. */
static void test_max_in_flight_respected(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "inflight", NULL);
    start_worker(f, 0, (const char *[]){"ECHO_MAX_IN_FLIGHT=2", NULL});
    assert_true(discovery_wait(f->client, "echo", 1, 10000) >= 0);
    for (int i = 0; i < 5; i++)
        sleep_send(f, 600, 10000);
    sleep_ms(200);
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    request.service = (char *)"echo";
    ProtobufCMessage *msg = NULL;
    /* a second client: the first one has replies pending */
    rpc_client_t *other = rpc_client_new(NULL, f->endpoint);
    assert_int_equal(rpc_client_call(other, "broker.services", "List", &request.base,
                                     &paygate__v1__list_services_reply__descriptor, &msg, NULL,
                                     NULL),
                     PAYGATE__V1__CODE__OK);
    Paygate__V1__ListServicesReply *reply = (Paygate__V1__ListServicesReply *)msg;
    assert_int_equal(reply->n_services, 1);
    assert_int_equal(reply->services[0]->instances[0]->in_flight, 2);
    assert_int_equal(reply->services[0]->queue_depth, 3);
    protobuf_c_message_free_unpacked(msg, NULL);
    rpc_client_destroy(&other);
    for (int i = 0; i < 5; i++) {
        uint64_t got;
        rpc_status_t status;
        assert_int_equal(rpc_client_recv(f->client, 10000, &got, NULL, &status), 1);
        assert_int_equal(status.code, PAYGATE__V1__CODE__OK);
    }
}

/* A bad setting stops the broker at start-up with a message naming it. */
static void test_bad_config_refused(void **state)
{
    fixture_t *f = *state;
    proc_t p;
    const char *env[] = {"PAYGATE_BROKER_QUEUE_MAX=lots", NULL};
    assert_true(proc_start(&p, "badconfig-broker", PAYGATE_BROKER_BIN, env));
    assert_true(proc_wait(&p, 5000));
    assert_true(WIFEXITED(p.exit_status) && WEXITSTATUS(p.exit_status) == 2);
    assert_true(log_count(p.log_path, "PAYGATE_BROKER_QUEUE_MAX='lots' is invalid", NULL) >= 1);
    (void)f;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_registration_shows_in_discovery),
        T(test_killed_worker_leaves_discovery),
        T(test_silent_worker_expires),
        T(test_two_instances_share_load),
        T(test_deadline_in_flight),
        T(test_deadline_while_queued),
        T(test_worker_death_in_flight),
        T(test_long_handler_keeps_worker),
        T(test_broker_restart_rejoined),
        T(test_garbage_frames_survived),
        T(test_no_worker_unavailable),
        T(test_worker_within_grace),
        T(test_queue_full),
        T(test_reserved_names_refused),
        T(test_broker_sigterm),
        T(test_worker_sigterm_drains),
        T(test_worker_statuses),
        T(test_max_in_flight_respected),
        T(test_bad_config_refused),
    };
    return cmocka_run_group_tests_name("broker integration", tests, NULL, NULL);
}
