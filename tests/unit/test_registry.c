/*
 * test_registry: unit tests of broker/registry, the broker's routing rules.
 *
 * The registry does no I/O: every decision goes through a sink of three
 * callbacks, and time is the 'now' argument. Here the sink is a recorder
 * (fake_sink_t keeps every call in an array the tests assert on) and the
 * clock is a number the test moves forward. advance_to() moves it the way
 * the broker's loop does when no message arrives: it calls registry_tick()
 * at every time the registry asked to be woken, then at the target time.
 *
 * Peers are named by short strings used as their ZeroMQ identities
 * ("w1", "c1"). Each test states the rule it checks in its name; the
 * registry's contract is in broker/registry.h.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "broker.pb-c.h"
#include "log/log.h"
#include "registry.h"
#include "status.pb-c.h"

/* ---- the recording sink --------------------------------------------------- */

typedef enum { CALL_REQUEST, CALL_REPLY, CALL_COMMAND } call_kind_t;

typedef struct {
    call_kind_t kind;
    int64_t at;    /* the fake clock when it was called */
    char peer[64]; /* the worker (REQUEST, COMMAND) or client (REPLY) */
    bool failed;   /* the sink returned -1 */
    /* REQUEST */
    uint64_t broker_correlation;
    uint64_t client_correlation;
    uint32_t deadline_ms;
    char service[wire_service_bytes_max + 1];
    char method[wire_method_bytes_max + 1];
    /* REPLY: the client's correlation id */
    uint64_t correlation;
    /* COMMAND */
    Paygate__V1__Command command;
    /* REPLY and COMMAND */
    bool has_status;
    Paygate__V1__Code code;
    char reason[64];
    char message[256];
    /* REQUEST and REPLY */
    bool has_body;
    char body[64];
} call_t;

enum { calls_max = 4096 };

typedef struct {
    call_t calls[calls_max];
    size_t count;
    bool overflow;
    int64_t clock;                /* copied from the fixture before each call */
    const char *fail_requests_to; /* send_request to this peer returns -1 */
    const char *fail_commands_to; /* send_command to this peer returns -1 */
    bool move_bodies;             /* take the body of requests (as the broker does) */
} fake_sink_t;

static call_t *sink_record(fake_sink_t *s, call_kind_t kind, const uint8_t *peer, size_t peer_len)
{
    static call_t scratch;
    if (s->count == calls_max) {
        s->overflow = true; /* asserted by the tests' helpers; never longjmp from here */
        memset(&scratch, 0, sizeof scratch);
        return &scratch;
    }
    call_t *c = &s->calls[s->count++];
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->at = s->clock;
    size_t n = peer_len < sizeof c->peer - 1 ? peer_len : sizeof c->peer - 1;
    memcpy(c->peer, peer, n);
    return c;
}

static void copy_text(char *out, size_t out_size, const char *text)
{
    snprintf(out, out_size, "%s", text != NULL ? text : "");
}

static void copy_body(call_t *c, const zmq_msg_t *body)
{
    zmq_msg_t *msg = (zmq_msg_t *)body; /* zmq_msg_data/size take non-const */
    size_t n = zmq_msg_size(msg);
    if (n > sizeof c->body - 1)
        n = sizeof c->body - 1;
    memcpy(c->body, zmq_msg_data(msg), n);
    c->body[n] = '\0';
    c->has_body = true;
}

static void copy_status(call_t *c, const Paygate__V1__Status *status)
{
    if (status == NULL)
        return;
    c->has_status = true;
    c->code = status->code;
    copy_text(c->reason, sizeof c->reason, status->reason);
    copy_text(c->message, sizeof c->message, status->message);
}

static int sink_send_request(void *ctx, const worker_t *w, pending_t *p, uint32_t deadline_ms)
{
    fake_sink_t *s = ctx;
    call_t *c = sink_record(s, CALL_REQUEST, w->identity, w->identity_len);
    c->broker_correlation = p->broker_correlation;
    c->client_correlation = p->client_correlation;
    c->deadline_ms = deadline_ms;
    copy_text(c->service, sizeof c->service, p->header->service);
    copy_text(c->method, sizeof c->method, p->header->method);
    if (s->fail_requests_to != NULL && strcmp(c->peer, s->fail_requests_to) == 0) {
        c->failed = true;
        return -1;
    }
    if (p->has_body) {
        copy_body(c, &p->body);
        if (s->move_bodies) {
            zmq_msg_t taken;
            zmq_msg_init(&taken);
            zmq_msg_move(&taken, &p->body);
            zmq_msg_close(&taken);
        }
    }
    return 0;
}

static int sink_send_reply(void *ctx, const uint8_t *client, size_t client_len,
                           uint64_t correlation, const Paygate__V1__Status *status, zmq_msg_t *body)
{
    fake_sink_t *s = ctx;
    call_t *c = sink_record(s, CALL_REPLY, client, client_len);
    c->correlation = correlation;
    copy_status(c, status);
    if (body != NULL)
        copy_body(c, body);
    return 0;
}

static int sink_send_command(void *ctx, const uint8_t *identity, size_t identity_len,
                             Paygate__V1__Command command, const Paygate__V1__Status *status)
{
    fake_sink_t *s = ctx;
    call_t *c = sink_record(s, CALL_COMMAND, identity, identity_len);
    c->command = command;
    copy_status(c, status);
    if (s->fail_commands_to != NULL && strcmp(c->peer, s->fail_commands_to) == 0) {
        c->failed = true;
        return -1;
    }
    return 0;
}

/* ---- the fixture: a registry, its sink and the clock ---------------------- */

/* The registry sees a monotonic clock far from 0; tests speak in ms since
 * the start of the test. */
enum { epoch_ms = 7000000 };

typedef struct {
    fake_sink_t sink;
    registry_t *registry;
    int64_t clock; /* ms since the start of the test */
} fixture_t;

static int fixture_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture_t *f = *state;
    registry_destroy(&f->registry);
    free(f);
    return 0;
}

/* Creates the registry under test with 'config' (defaults when NULL). */
static fixture_t *start(void **state, const registry_config_t *config)
{
    fixture_t *f = *state;
    registry_config_t defaults = registry_config_default();
    registry_sink_t sink = {.ctx = &f->sink,
                            .send_request = sink_send_request,
                            .send_reply = sink_send_reply,
                            .send_command = sink_send_command};
    f->registry = registry_new(config != NULL ? config : &defaults, &sink);
    assert_non_null(f->registry);
    return f;
}

static int64_t now_of(fixture_t *f)
{
    f->sink.clock = f->clock;
    return epoch_ms + f->clock;
}

/* Moves the clock to 'to' (ms since start) as the broker's idle loop does:
 * a tick at the current time, then at each time the registry asks for,
 * and last at 'to' itself. */
static void advance_to(fixture_t *f, int64_t to)
{
    assert_true(to >= f->clock);
    for (;;) {
        int64_t next = registry_tick(f->registry, now_of(f)) - epoch_ms;
        if (f->clock == to)
            break;
        assert_true(next > f->clock); /* the registry never asks to be woken in the past */
        f->clock = next < to ? next : to;
    }
    assert_false(f->sink.overflow);
}

static const uint8_t *id(const char *peer)
{
    return (const uint8_t *)peer;
}

static void worker_ready(fixture_t *f, const char *worker, const char *service,
                         const char *instance, uint32_t max_in_flight, uint32_t heartbeat_ms)
{
    Paygate__V1__Ready ready = PAYGATE__V1__READY__INIT;
    ready.service = (char *)service;
    ready.instance_id = (char *)instance;
    ready.max_in_flight = max_in_flight;
    ready.heartbeat_interval_ms = heartbeat_ms;
    registry_worker_ready(f->registry, id(worker), strlen(worker), &ready, now_of(f));
}

static void worker_heartbeat(fixture_t *f, const char *worker)
{
    registry_worker_heartbeat(f->registry, id(worker), strlen(worker), now_of(f));
}

static void worker_disconnect(fixture_t *f, const char *worker)
{
    registry_worker_disconnect(f->registry, id(worker), strlen(worker), now_of(f));
}

/* A REQUEST header owned by the caller, as wire_decode returns it: packed
 * from a stack header and unpacked, so free_unpacked can free it. */
static Paygate__V1__Header *request_header(uint64_t correlation, const char *service,
                                           const char *method, uint32_t deadline_ms)
{
    Paygate__V1__CallMeta meta = PAYGATE__V1__CALL_META__INIT;
    meta.request_id = (char *)"req-test";
    meta.deadline_ms = deadline_ms;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REQUEST;
    header.correlation_id = correlation;
    header.service = (char *)service;
    header.method = (char *)method;
    header.meta = &meta;
    uint8_t packed[512];
    assert_true(paygate__v1__header__get_packed_size(&header) <= sizeof packed);
    size_t n = paygate__v1__header__pack(&header, packed);
    Paygate__V1__Header *copy = paygate__v1__header__unpack(NULL, n, packed);
    assert_non_null(copy);
    return copy;
}

/* REQUEST from 'client' for 'service'.Echo; the body is "body-<correlation>". */
static void client_request(fixture_t *f, const char *client, uint64_t correlation,
                           const char *service, uint32_t deadline_ms)
{
    Paygate__V1__Header *header = request_header(correlation, service, "Echo", deadline_ms);
    char text[32];
    int n = snprintf(text, sizeof text, "body-%llu", (unsigned long long)correlation);
    zmq_msg_t body;
    assert_int_equal(zmq_msg_init_size(&body, (size_t)n), 0);
    memcpy(zmq_msg_data(&body), text, (size_t)n);
    registry_request(f->registry, id(client), strlen(client), header, &body, now_of(f));
    zmq_msg_close(&body); /* taken (left empty) or not, closing is right */
}

/* REPLY from 'worker' for 'broker_correlation'; 'status' may be NULL. */
static void worker_reply_status(fixture_t *f, const char *worker, uint64_t broker_correlation,
                                const Paygate__V1__Status *status, const char *body_text)
{
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REPLY;
    header.correlation_id = broker_correlation;
    header.status = (Paygate__V1__Status *)status;
    zmq_msg_t body;
    assert_int_equal(zmq_msg_init_size(&body, strlen(body_text)), 0);
    memcpy(zmq_msg_data(&body), body_text, strlen(body_text));
    registry_reply(f->registry, id(worker), strlen(worker), &header, &body, now_of(f));
    zmq_msg_close(&body); /* moved or not, ours to close */
}

static void worker_reply(fixture_t *f, const char *worker, uint64_t broker_correlation)
{
    worker_reply_status(f, worker, broker_correlation, NULL, "pong");
}

/* Number of calls of 'kind' to 'peer' (any peer when NULL). */
static size_t count_calls(const fixture_t *f, call_kind_t kind, const char *peer)
{
    size_t n = 0;
    for (size_t i = 0; i < f->sink.count; i++) {
        const call_t *c = &f->sink.calls[i];
        if (c->kind == kind && (peer == NULL || strcmp(c->peer, peer) == 0))
            n++;
    }
    return n;
}

static size_t count_commands(const fixture_t *f, const char *peer, Paygate__V1__Command command)
{
    size_t n = 0;
    for (size_t i = 0; i < f->sink.count; i++) {
        const call_t *c = &f->sink.calls[i];
        if (c->kind == CALL_COMMAND && c->command == command && strcmp(c->peer, peer) == 0)
            n++;
    }
    return n;
}

/* The last call of 'kind' to 'peer' (any when NULL); fails when none. */
static const call_t *last_call(const fixture_t *f, call_kind_t kind, const char *peer)
{
    for (size_t i = f->sink.count; i-- > 0;) {
        const call_t *c = &f->sink.calls[i];
        if (c->kind == kind && (peer == NULL || strcmp(c->peer, peer) == 0))
            return c;
    }
    fail_msg("no call of kind %d to %s", (int)kind, peer != NULL ? peer : "anyone");
    return NULL;
}

/* The last DISCONNECT to 'peer'; fails when none. */
static const call_t *last_disconnect(const fixture_t *f, const char *peer)
{
    for (size_t i = f->sink.count; i-- > 0;) {
        const call_t *c = &f->sink.calls[i];
        if (c->kind == CALL_COMMAND && c->command == PAYGATE__V1__COMMAND__DISCONNECT &&
            strcmp(c->peer, peer) == 0)
            return c;
    }
    fail_msg("no DISCONNECT to %s", peer);
    return NULL;
}

/* The last successful REQUEST that carried the client's 'correlation'. */
static const call_t *request_sent(const fixture_t *f, uint64_t correlation)
{
    for (size_t i = f->sink.count; i-- > 0;) {
        const call_t *c = &f->sink.calls[i];
        if (c->kind == CALL_REQUEST && !c->failed && c->client_correlation == correlation)
            return c;
    }
    fail_msg("request %llu was never sent to a worker", (unsigned long long)correlation);
    return NULL;
}

/* Number of REPLYs to 'client' with 'correlation'. */
static size_t answers_to(const fixture_t *f, const char *client, uint64_t correlation)
{
    size_t n = 0;
    for (size_t i = 0; i < f->sink.count; i++) {
        const call_t *c = &f->sink.calls[i];
        if (c->kind == CALL_REPLY && c->correlation == correlation && strcmp(c->peer, client) == 0)
            n++;
    }
    return n;
}

/* The one REPLY to 'client' for 'correlation'; fails unless exactly one. */
static const call_t *answer_to(const fixture_t *f, const char *client, uint64_t correlation)
{
    size_t n = answers_to(f, client, correlation);
    if (n != 1)
        fail_msg("%zu answers to %s for %llu, expected 1", n, client,
                 (unsigned long long)correlation);
    for (size_t i = 0; i < f->sink.count; i++) {
        const call_t *c = &f->sink.calls[i];
        if (c->kind == CALL_REPLY && c->correlation == correlation && strcmp(c->peer, client) == 0)
            return c;
    }
    return NULL;
}

static void assert_status(const call_t *c, Paygate__V1__Code code, const char *reason)
{
    assert_true(c->has_status);
    if (c->code != code)
        fail_msg("status %d (%s: %s), expected %d", (int)c->code, c->reason, c->message, (int)code);
    assert_string_equal(c->reason, reason);
    assert_true(c->message[0] != '\0'); /* a human message always comes along */
}

static const worker_t *worker(const fixture_t *f, const char *name)
{
    return registry_worker(f->registry, id(name), strlen(name));
}

/* ---- registration ---------------------------------------------------------- */

static void test_ready_registers(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 0, 0);
    assert_int_equal(registry_worker_count(f->registry), 1);
    const service_t *s = registry_service(f->registry, "echo");
    assert_non_null(s);
    assert_string_equal(s->name, "echo");
    assert_int_equal(s->worker_count, 1);
    const worker_t *w = worker(f, "w1");
    assert_non_null(w);
    assert_string_equal(w->instance_id, "echo-1");
    assert_int_equal(w->max_in_flight, 1);            /* 0 means 1 */
    assert_int_equal(w->heartbeat_interval_ms, 1000); /* 0 means the broker's */
    assert_int_equal(w->in_flight, 0);
    assert_ptr_equal(w->service, s);
    assert_int_equal(f->sink.count, 0); /* nothing to say to anyone */

    worker_ready(f, "w2", "echo", "echo-2", 3, 250);
    worker_ready(f, "w3", "ledger", "ledger-1", 1, 0);
    assert_int_equal(registry_worker_count(f->registry), 3);
    assert_int_equal(registry_service(f->registry, "echo")->worker_count, 2);
    assert_int_equal(registry_service(f->registry, "ledger")->worker_count, 1);
    assert_int_equal(worker(f, "w2")->max_in_flight, 3);
    assert_int_equal(worker(f, "w2")->heartbeat_interval_ms, 250);
    assert_null(registry_service(f->registry, "payments"));
    assert_null(worker(f, "w4"));
    assert_int_equal(f->sink.count, 0);
}

static void test_ready_reserved_service_name(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "broker.x", "evil-1", 1, 0);
    assert_int_equal(registry_worker_count(f->registry), 0);
    assert_null(worker(f, "w1"));
    assert_null(registry_service(f->registry, "broker.x"));
    assert_int_equal(f->sink.count, 1);
    const call_t *c = last_disconnect(f, "w1");
    assert_true(c->has_status);
    assert_int_equal(c->code, PAYGATE__V1__CODE__PERMISSION_DENIED);

    /* Only the "broker." prefix is reserved. */
    worker_ready(f, "w2", "brokerage", "b-1", 1, 0);
    assert_non_null(worker(f, "w2"));
}

/* READY as key 'key' (the broker's authenticated key name). */
static bool worker_ready_as(fixture_t *f, const char *worker, const char *service,
                            const char *instance, const char *key)
{
    Paygate__V1__Ready ready = PAYGATE__V1__READY__INIT;
    ready.service = (char *)service;
    ready.instance_id = (char *)instance;
    ready.max_in_flight = 1;
    return registry_worker_ready_as(f->registry, id(worker), strlen(worker), &ready, key,
                                    now_of(f));
}

/* A live instance id stays with its key; the same key may replace it. */
static void test_instance_id_kept_by_its_key(void **state)
{
    fixture_t *f = start(state, NULL);
    assert_true(worker_ready_as(f, "w1", "payment", "payment-a-0", "payment"));
    assert_false(worker_ready_as(f, "w2", "payment", "payment-a-0", "intruder"));
    assert_non_null(worker(f, "w1"));
    assert_null(worker(f, "w2"));
    const call_t *c = last_disconnect(f, "w2");
    assert_non_null(c);
    assert_status(c, PAYGATE__V1__CODE__PERMISSION_DENIED, "instance_id_taken");
    assert_int_equal(registry_stats(f->registry)->registrations_refused, 1);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT), 0); /* untouched */

    /* A reconnected instance (same key, new connection) takes it over. */
    assert_true(worker_ready_as(f, "w3", "payment", "payment-a-0", "payment"));
    assert_null(worker(f, "w1"));
    assert_non_null(worker(f, "w3"));
    assert_int_equal(registry_worker_count(f->registry), 1);
}

static void test_workers_max_refuses_ready(void **state)
{
    registry_config_t config = registry_config_default();
    config.workers_max = 2;
    fixture_t *f = start(state, &config);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    worker_ready(f, "w2", "echo", "echo-2", 1, 0);
    worker_ready(f, "w3", "echo", "echo-3", 1, 0);
    assert_int_equal(registry_worker_count(f->registry), 2);
    assert_null(worker(f, "w3"));
    const call_t *c = last_disconnect(f, "w3");
    assert_int_equal(c->code, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED);
    /* Re-registering an existing peer at the limit is still allowed. */
    worker_ready(f, "w2", "echo", "echo-2", 1, 0);
    assert_non_null(worker(f, "w2"));
    assert_int_equal(registry_worker_count(f->registry), 2);
}

/* ---- dispatch and replies -------------------------------------------------- */

static void test_request_dispatched_at_once(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    advance_to(f, 100);
    client_request(f, "c1", 7, "echo", 1500);
    assert_int_equal(count_calls(f, CALL_REQUEST, NULL), 1);
    const call_t *sent = last_call(f, CALL_REQUEST, "w1");
    assert_int_equal(sent->client_correlation, 7);
    assert_int_equal(sent->deadline_ms, 1500);
    assert_int_equal(sent->at, 100);
    assert_string_equal(sent->service, "echo");
    assert_string_equal(sent->method, "Echo");
    assert_true(sent->has_body);
    assert_string_equal(sent->body, "body-7");
    assert_int_equal(registry_request_count(f->registry), 1);
    assert_int_equal(worker(f, "w1")->in_flight, 1);
    assert_int_equal(registry_stats(f->registry)->requests_routed, 1);
    assert_int_equal(count_calls(f, CALL_REPLY, NULL), 0);

    /* The worker is full: the next one waits, with the default deadline,
     * and when it goes out later the worker is told the time left. */
    client_request(f, "c2", 8, "echo", 0);
    assert_int_equal(count_calls(f, CALL_REQUEST, NULL), 1);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 1);
    assert_int_equal(registry_request_count(f->registry), 2);
    advance_to(f, 400);
    worker_reply(f, "w1", sent->broker_correlation);
    const call_t *later = request_sent(f, 8);
    assert_string_equal(later->peer, "w1");
    assert_int_equal(later->at, 400);
    assert_int_equal(later->deadline_ms, registry_config_default().deadline_default_ms - 300);
    assert_string_equal(later->body, "body-8");
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 0);
}

static void test_reply_forwarded_to_client(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 2, 0);
    client_request(f, "c1", 7, "echo", 1000);
    client_request(f, "c2", 7, "echo", 1000); /* same id, other client */
    assert_int_equal(count_calls(f, CALL_REQUEST, "w1"), 2);
    uint64_t to_c1 = f->sink.calls[0].broker_correlation;
    uint64_t to_c2 = f->sink.calls[1].broker_correlation;
    assert_int_not_equal(to_c1, to_c2); /* the broker's ids towards workers differ */

    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__NOT_FOUND;
    status.reason = (char *)"payment_not_found";
    status.message = (char *)"no payment pay_123";
    advance_to(f, 20);
    worker_reply_status(f, "w1", to_c1, &status, "{\"id\":\"pay_123\"}");
    const call_t *answer = answer_to(f, "c1", 7);
    assert_status(answer, PAYGATE__V1__CODE__NOT_FOUND, "payment_not_found");
    assert_string_equal(answer->message, "no payment pay_123");
    assert_true(answer->has_body);
    assert_string_equal(answer->body, "{\"id\":\"pay_123\"}");
    assert_int_equal(answers_to(f, "c2", 7), 0);
    assert_int_equal(registry_request_count(f->registry), 1);
    assert_int_equal(worker(f, "w1")->in_flight, 1);

    /* A REPLY without a status is forwarded as OK (no status). */
    worker_reply(f, "w1", to_c2);
    answer = answer_to(f, "c2", 7);
    assert_false(answer->has_status);
    assert_string_equal(answer->body, "pong");
    assert_int_equal(registry_request_count(f->registry), 0);
    assert_int_equal(worker(f, "w1")->in_flight, 0);
    assert_int_equal(worker(f, "w1")->requests_done, 2);
    assert_int_equal(answers_to(f, "c1", 7), 1);
}

/* The broker's sink moves the body out in send_request; the registry must
 * cope with an emptied message (ASan checks the rest). */
static void test_sink_moving_bodies(void **state)
{
    fixture_t *f = start(state, NULL);
    f->sink.move_bodies = true;
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 1000);
    client_request(f, "c1", 2, "echo", 1000);
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    worker_reply(f, "w1", request_sent(f, 2)->broker_correlation);
    assert_string_equal(request_sent(f, 2)->body, "body-2");
    assert_int_equal(answers_to(f, "c1", 1), 1);
    assert_int_equal(answers_to(f, "c1", 2), 1);
    assert_int_equal(registry_request_count(f->registry), 0);
}

static void test_least_recently_used_order(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    worker_ready(f, "w2", "echo", "echo-2", 1, 0);
    worker_ready(f, "w3", "echo", "echo-3", 1, 0);
    client_request(f, "c1", 1, "echo", 5000);
    client_request(f, "c1", 2, "echo", 5000);
    client_request(f, "c1", 3, "echo", 5000);
    assert_string_equal(request_sent(f, 1)->peer, "w1");
    assert_string_equal(request_sent(f, 2)->peer, "w2");
    assert_string_equal(request_sent(f, 3)->peer, "w3");

    /* They finish in the order w3, w1, w2: that is the order of the next
     * round. */
    advance_to(f, 10);
    worker_reply(f, "w3", request_sent(f, 3)->broker_correlation);
    advance_to(f, 20);
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    advance_to(f, 30);
    worker_reply(f, "w2", request_sent(f, 2)->broker_correlation);
    client_request(f, "c1", 4, "echo", 5000);
    client_request(f, "c1", 5, "echo", 5000);
    client_request(f, "c1", 6, "echo", 5000);
    assert_string_equal(request_sent(f, 4)->peer, "w3");
    assert_string_equal(request_sent(f, 5)->peer, "w1");
    assert_string_equal(request_sent(f, 6)->peer, "w2");

    /* All busy: two wait; they go to whoever replies first. */
    client_request(f, "c1", 7, "echo", 5000);
    client_request(f, "c1", 8, "echo", 5000);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 2);
    worker_reply(f, "w2", request_sent(f, 6)->broker_correlation);
    assert_string_equal(request_sent(f, 7)->peer, "w2");
    worker_reply(f, "w3", request_sent(f, 4)->broker_correlation);
    assert_string_equal(request_sent(f, 8)->peer, "w3");
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 0);
    assert_int_equal(count_calls(f, CALL_REQUEST, NULL), 8);
}

static void test_max_in_flight_respected(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 2, 0);
    client_request(f, "c1", 1, "echo", 5000);
    client_request(f, "c1", 2, "echo", 5000);
    client_request(f, "c1", 3, "echo", 5000);
    assert_int_equal(count_calls(f, CALL_REQUEST, "w1"), 2);
    assert_int_equal(worker(f, "w1")->in_flight, 2);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 1);
    assert_int_equal(registry_request_count(f->registry), 3);

    advance_to(f, 50);
    assert_int_equal(count_calls(f, CALL_REQUEST, "w1"), 2); /* time alone changes nothing */
    worker_reply(f, "w1", request_sent(f, 2)->broker_correlation);
    assert_int_equal(count_calls(f, CALL_REQUEST, "w1"), 3);
    assert_int_equal(request_sent(f, 3)->at, 50);
    assert_int_equal(worker(f, "w1")->in_flight, 2);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 0);
    assert_int_equal(registry_request_count(f->registry), 2);
}

static void test_queue_full(void **state)
{
    registry_config_t config = registry_config_default();
    config.queue_max = 2;
    fixture_t *f = start(state, &config);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 5000); /* in flight */
    client_request(f, "c1", 2, "echo", 5000); /* waits */
    client_request(f, "c1", 3, "echo", 5000); /* waits */
    assert_int_equal(count_calls(f, CALL_REPLY, NULL), 0);
    client_request(f, "c2", 4, "echo", 5000); /* one too many */
    assert_status(answer_to(f, "c2", 4), PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "queue_full");
    assert_int_equal(registry_stats(f->registry)->requests_rejected_full, 1);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 2);
    assert_int_equal(registry_request_count(f->registry), 3);

    /* A freed place is usable again. */
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    client_request(f, "c2", 5, "echo", 5000);
    assert_int_equal(answers_to(f, "c2", 5), 0);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 2);
}

static void test_requests_max_broker_busy(void **state)
{
    registry_config_t config = registry_config_default();
    config.requests_max = 3;
    fixture_t *f = start(state, &config);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 5000);   /* in flight */
    client_request(f, "c1", 2, "echo", 5000);   /* waits */
    client_request(f, "c1", 3, "ledger", 5000); /* waits, no worker */
    client_request(f, "c1", 4, "ledger", 5000);
    assert_status(answer_to(f, "c1", 4), PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "broker_busy");
    client_request(f, "c1", 5, "echo", 5000);
    assert_status(answer_to(f, "c1", 5), PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "broker_busy");
    assert_int_equal(registry_request_count(f->registry), 3);
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    assert_int_equal(registry_request_count(f->registry), 2);
    client_request(f, "c1", 6, "echo", 5000);
    assert_int_equal(answers_to(f, "c1", 6), 0);
    assert_int_equal(registry_request_count(f->registry), 3);
}

static void test_deadline_over_max_refused(void **state)
{
    registry_config_t config = registry_config_default();
    config.deadline_max_ms = 10000;
    fixture_t *f = start(state, &config);
    worker_ready(f, "w1", "echo", "echo-1", 2, 0);
    client_request(f, "c1", 1, "echo", 10001);
    assert_status(answer_to(f, "c1", 1), PAYGATE__V1__CODE__INVALID_ARGUMENT, "deadline_too_long");
    assert_int_equal(count_calls(f, CALL_REQUEST, NULL), 0);
    assert_int_equal(registry_request_count(f->registry), 0);
    client_request(f, "c1", 2, "echo", 10000); /* the maximum itself is fine */
    assert_int_equal(answers_to(f, "c1", 2), 0);
    assert_int_equal(request_sent(f, 2)->deadline_ms, 10000);
}

/* registry.h: registry_request "takes ownership [...] of 'body' (when not
 * NULL; the caller's message is left empty)". That must hold on every
 * path, also when the request is refused at once: a caller that trusts the
 * contract and does not close the body would leak it. */
static void test_request_takes_body_on_every_path(void **state)
{
    registry_config_t config = registry_config_default();
    config.deadline_max_ms = 10000;
    config.requests_max = 2;
    config.queue_max = 1;
    fixture_t *f = start(state, &config);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    static const struct {
        uint32_t deadline_ms;
        const char *path;
    } cases[] = {
        {1000, "dispatched"},
        {1000, "queued"},
        {20000, "deadline_too_long"},
        {1000, "broker_busy"},
    };
    int not_taken = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Paygate__V1__Header *header = request_header(100 + i, "echo", "Echo", cases[i].deadline_ms);
        zmq_msg_t body;
        assert_int_equal(zmq_msg_init_size(&body, 100), 0); /* over zmq's inline size */
        memset(zmq_msg_data(&body), 'b', 100);
        registry_request(f->registry, id("c1"), 2, header, &body, now_of(f));
        size_t left = zmq_msg_size(&body);
        zmq_msg_close(&body);
        if (left != 0) {
            print_error("%s: the caller's body still holds %zu bytes\n", cases[i].path, left);
            not_taken++;
        }
    }
    assert_int_equal(answers_to(f, "c1", 102), 1); /* the refusals did happen */
    assert_int_equal(answers_to(f, "c1", 103), 1);
    assert_int_equal(not_taken, 0);
}

/* ---- deadlines ------------------------------------------------------------- */

static void test_deadline_while_queued(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 10000); /* keeps w1 busy */
    advance_to(f, 100);
    client_request(f, "c2", 2, "echo", 300); /* waits until 400 at most */
    advance_to(f, 399);
    assert_int_equal(answers_to(f, "c2", 2), 0);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 1);
    advance_to(f, 400);
    const call_t *answer = answer_to(f, "c2", 2);
    assert_status(answer, PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded");
    assert_int_equal(answer->at, 400);
    assert_int_equal(registry_stats(f->registry)->requests_expired, 1);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 0);
    assert_int_equal(registry_request_count(f->registry), 1);

    /* When w1 is free again the expired request is not sent. */
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    assert_int_equal(count_calls(f, CALL_REQUEST, NULL), 1);
    assert_int_equal(answers_to(f, "c2", 2), 1);
}

static void test_deadline_while_in_flight(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    advance_to(f, 10);
    client_request(f, "c1", 1, "echo", 500);
    uint64_t correlation = request_sent(f, 1)->broker_correlation;
    advance_to(f, 509);
    assert_int_equal(answers_to(f, "c1", 1), 0);
    advance_to(f, 510);
    const call_t *answer = answer_to(f, "c1", 1);
    assert_status(answer, PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded");
    assert_int_equal(answer->at, 510);
    assert_int_equal(registry_stats(f->registry)->requests_expired, 1);
    /* The worker still holds it: its slot stays taken. */
    assert_int_equal(worker(f, "w1")->in_flight, 1);

    advance_to(f, 700);
    worker_reply(f, "w1", correlation);
    assert_int_equal(answers_to(f, "c1", 1), 1); /* not forwarded */
    assert_int_equal(registry_stats(f->registry)->replies_late, 1);
    assert_int_equal(registry_request_count(f->registry), 0);
    assert_int_equal(worker(f, "w1")->in_flight, 0);
    /* And the worker takes new work at once. */
    client_request(f, "c1", 2, "echo", 500);
    assert_string_equal(request_sent(f, 2)->peer, "w1");
}

/* A worker that never answers gets its slot back after orphan_timeout_ms. */
static void test_orphan_slot_released(void **state)
{
    registry_config_t config = registry_config_default();
    config.orphan_timeout_ms = 1000;
    fixture_t *f = start(state, &config);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 500);
    client_request(f, "c1", 2, "echo", 5000); /* waits for w1's slot */
    for (int64_t t = 250; t < 1500; t += 250) {
        advance_to(f, t);
        worker_heartbeat(f, "w1");
    }
    assert_status(answer_to(f, "c1", 1), PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded");
    assert_int_equal(worker(f, "w1")->in_flight, 1);
    assert_int_equal(count_calls(f, CALL_REQUEST, NULL), 1);
    advance_to(f, 1500);
    assert_int_equal(count_calls(f, CALL_REQUEST, NULL), 2);
    assert_int_equal(request_sent(f, 2)->at, 1500);
    assert_int_equal(worker(f, "w1")->in_flight, 1);
    assert_int_equal(registry_request_count(f->registry), 1);
    assert_int_equal(answers_to(f, "c1", 1), 1);
}

/* ---- no worker ------------------------------------------------------------- */

static void test_no_worker_unavailable_after_grace(void **state)
{
    fixture_t *f = start(state, NULL); /* grace 2000 ms, deadline 5000 ms */
    advance_to(f, 100);
    client_request(f, "c1", 1, "echo", 0);
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 1);
    advance_to(f, 2099);
    assert_int_equal(answers_to(f, "c1", 1), 0);
    advance_to(f, 2100);
    const call_t *answer = answer_to(f, "c1", 1);
    assert_status(answer, PAYGATE__V1__CODE__UNAVAILABLE, "no_worker");
    assert_int_equal(answer->at, 2100);
    assert_int_equal(registry_stats(f->registry)->requests_unavailable, 1);
    assert_int_equal(registry_request_count(f->registry), 0);
    /* The empty service is forgotten. */
    advance_to(f, 2300);
    assert_null(registry_service(f->registry, "echo"));
}

static void test_no_worker_short_deadline_wins(void **state)
{
    fixture_t *f = start(state, NULL);
    client_request(f, "c1", 1, "echo", 700); /* before the 2000 ms grace */
    advance_to(f, 699);
    assert_int_equal(answers_to(f, "c1", 1), 0);
    advance_to(f, 700);
    assert_status(answer_to(f, "c1", 1), PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded");
}

static void test_worker_within_grace_gets_request(void **state)
{
    fixture_t *f = start(state, NULL);
    client_request(f, "c1", 1, "echo", 4000);
    client_request(f, "c1", 2, "echo", 4000);
    advance_to(f, 1500);
    assert_int_equal(count_calls(f, CALL_REQUEST, NULL), 0);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    const call_t *sent = request_sent(f, 1);
    assert_string_equal(sent->peer, "w1");
    assert_int_equal(sent->deadline_ms, 2500);
    /* The second still waits for w1, past the grace, until its deadline. */
    advance_to(f, 3999);
    assert_int_equal(answers_to(f, "c1", 1), 0);
    assert_int_equal(answers_to(f, "c1", 2), 0);
    worker_reply(f, "w1", sent->broker_correlation);
    assert_int_equal(answers_to(f, "c1", 1), 1);
    assert_int_equal(request_sent(f, 2)->deadline_ms, 1);
}

/* ---- liveness -------------------------------------------------------------- */

/* An idle worker silent for liveness x interval expires. A worker holding
 * requests does not: its thread may be busy in a handler and cannot
 * heartbeat (its connection is watched by the probes and by ZMTP
 * heartbeats instead), and what it holds is bounded by the requests'
 * deadlines. Once its slots are released it is idle, and the silence rule
 * expires it. */
static void test_worker_expiry(void **state)
{
    fixture_t *f = start(state, NULL); /* 1000 ms x 3; orphan timeout 30 s */
    worker_ready(f, "w1", "echo", "echo-1", 2, 0);
    client_request(f, "c1", 1, "echo", 5000);
    client_request(f, "c1", 2, "echo", 5000);
    worker_ready(f, "w2", "echo", "echo-2", 1, 0);
    client_request(f, "c1", 3, "echo", 60000);
    worker_ready(f, "w3", "echo", "echo-3", 1, 0); /* idle */
    assert_int_equal(worker(f, "w1")->in_flight, 2);
    assert_int_equal(worker(f, "w2")->in_flight, 1);
    assert_int_equal(worker(f, "w3")->in_flight, 0);
    /* w2 keeps talking; w1 (busy) and w3 (idle) fall silent. */
    for (int64_t t = 500; t <= 3000; t += 500) {
        advance_to(f, t);
        worker_heartbeat(f, "w2");
    }
    assert_non_null(worker(f, "w3")); /* exactly 3000 ms of silence is allowed */
    assert_int_equal(registry_stats(f->registry)->workers_expired, 0);
    advance_to(f, 3100);
    assert_null(worker(f, "w3"));
    assert_non_null(worker(f, "w1")); /* busy: not expired for silence */
    assert_int_equal(registry_stats(f->registry)->workers_expired, 1);
    assert_int_equal(answers_to(f, "c1", 1), 0);
    const call_t *bye = last_disconnect(f, "w3");
    assert_int_equal(bye->code, PAYGATE__V1__CODE__UNAVAILABLE);
    assert_true(bye->at > 3000 && bye->at <= 3100);

    /* Its requests' deadlines pass: the clients hear it from the broker. */
    for (int64_t t = 3500; t <= 5000; t += 500) {
        advance_to(f, t);
        worker_heartbeat(f, "w2");
    }
    assert_status(answer_to(f, "c1", 1), PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded");
    assert_status(answer_to(f, "c1", 2), PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded");
    assert_non_null(worker(f, "w1")); /* still holds the slots until the orphan timeout */

    /* The slots are released 30 s after the deadlines; idle and silent,
     * w1 then expires. w2 (alive, busy) stays throughout. */
    for (int64_t t = 5500; t <= 35000; t += 500) {
        advance_to(f, t);
        worker_heartbeat(f, "w2");
    }
    advance_to(f, 35100);
    assert_null(worker(f, "w1"));
    assert_non_null(worker(f, "w2"));
    assert_int_equal(registry_worker_count(f->registry), 1);
    assert_int_equal(registry_stats(f->registry)->workers_expired, 2);
    bye = last_disconnect(f, "w1");
    assert_int_equal(bye->code, PAYGATE__V1__CODE__UNAVAILABLE);
    assert_int_equal(answers_to(f, "c1", 3), 0);
    assert_int_equal(registry_request_count(f->registry), 1);
    /* A late REPLY from the expired worker goes nowhere. */
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    assert_int_equal(answers_to(f, "c1", 1), 1);
}

static void test_worker_custom_interval_expiry(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 200); /* 600 ms of silence allowed */
    advance_to(f, 600);
    assert_non_null(worker(f, "w1"));
    advance_to(f, 700);
    assert_null(worker(f, "w1"));
    assert_int_equal(registry_stats(f->registry)->workers_expired, 1);
}

static void test_heartbeats_to_idle_workers(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);   /* every 1000 ms */
    worker_ready(f, "w2", "echo", "echo-2", 1, 400); /* every 400 ms */
    advance_to(f, 399);
    assert_int_equal(count_commands(f, "w2", PAYGATE__V1__COMMAND__HEARTBEAT), 0);
    advance_to(f, 400);
    assert_int_equal(count_commands(f, "w2", PAYGATE__V1__COMMAND__HEARTBEAT), 1);
    assert_int_equal(last_call(f, CALL_COMMAND, "w2")->at, 400);
    advance_to(f, 999);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__HEARTBEAT), 0);
    advance_to(f, 1000);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__HEARTBEAT), 1);
    const call_t *hb = last_call(f, CALL_COMMAND, "w1");
    assert_int_equal(hb->command, PAYGATE__V1__COMMAND__HEARTBEAT);
    assert_int_equal(hb->at, 1000);
    assert_false(hb->has_status);
    for (int64_t t = 1100; t <= 1900; t += 100) { /* both stay alive */
        advance_to(f, t);
        worker_heartbeat(f, "w1");
        worker_heartbeat(f, "w2");
    }

    /* Anything sent counts: a REQUEST at 1900 delays w1's next HEARTBEAT
     * from 2000 to 2900. */
    client_request(f, "c1", 1, "echo", 5000);
    assert_string_equal(request_sent(f, 1)->peer, "w1");
    advance_to(f, 1950);
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    advance_to(f, 2100);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__HEARTBEAT), 1);
    assert_int_equal(count_commands(f, "w2", PAYGATE__V1__COMMAND__HEARTBEAT), 5);
    worker_heartbeat(f, "w1");
    advance_to(f, 2899);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__HEARTBEAT), 1);
    advance_to(f, 2900);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__HEARTBEAT), 2);
}

static void test_heartbeat_refreshes_worker(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    for (int64_t t = 900; t <= 10000; t += 900) {
        advance_to(f, t);
        worker_heartbeat(f, "w1");
        assert_int_equal(worker(f, "w1")->last_seen_at, epoch_ms + t);
    }
    advance_to(f, 12000);
    assert_non_null(worker(f, "w1"));
    assert_int_equal(registry_stats(f->registry)->workers_expired, 0);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT), 0);
}

static void test_heartbeat_from_unknown_identity(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_heartbeat(f, "ghost");
    assert_int_equal(f->sink.count, 1);
    const call_t *c = last_disconnect(f, "ghost");
    assert_true(c->has_status);
    assert_int_equal(c->code, PAYGATE__V1__CODE__UNAVAILABLE);
    assert_int_equal(registry_worker_count(f->registry), 0);
    assert_null(worker(f, "ghost"));
}

static void test_heartbeat_send_failure_removes_worker(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    worker_ready(f, "w2", "echo", "echo-2", 1, 0);
    client_request(f, "c1", 1, "echo", 20000);
    f->sink.fail_commands_to = "w1"; /* its connection is gone */
    advance_to(f, 400);              /* in flight: probed every 251 ms */
    assert_null(worker(f, "w1"));
    assert_non_null(worker(f, "w2"));
    assert_status(answer_to(f, "c1", 1), PAYGATE__V1__CODE__UNAVAILABLE, "worker_lost");
    assert_true(registry_stats(f->registry)->sends_failed >= 1);
    assert_int_equal(registry_stats(f->registry)->workers_expired, 0);
}

/* ---- re-registration ------------------------------------------------------- */

static void test_ready_again_same_identity(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 2, 0);
    client_request(f, "c1", 1, "echo", 5000);
    client_request(f, "c1", 2, "echo", 5000);
    uint64_t old = request_sent(f, 1)->broker_correlation;
    advance_to(f, 100);
    /* The worker restarted behind the same identity: its requests are lost. */
    worker_ready(f, "w1", "echo", "echo-1b", 4, 0);
    assert_status(answer_to(f, "c1", 1), PAYGATE__V1__CODE__UNAVAILABLE, "worker_lost");
    assert_status(answer_to(f, "c1", 2), PAYGATE__V1__CODE__UNAVAILABLE, "worker_lost");
    assert_int_equal(registry_worker_count(f->registry), 1);
    assert_int_equal(registry_request_count(f->registry), 0);
    const worker_t *w = worker(f, "w1");
    assert_non_null(w);
    assert_string_equal(w->instance_id, "echo-1b");
    assert_int_equal(w->max_in_flight, 4);
    assert_int_equal(w->in_flight, 0);
    assert_int_equal(registry_service(f->registry, "echo")->worker_count, 1);
    /* The new registration must not be told to go away. */
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT), 0);
    /* A reply for the old request is late. */
    worker_reply(f, "w1", old);
    assert_int_equal(answers_to(f, "c1", 1), 1);
    assert_int_equal(registry_stats(f->registry)->replies_late, 1);
    /* It serves again. */
    client_request(f, "c1", 3, "echo", 5000);
    assert_string_equal(request_sent(f, 3)->peer, "w1");
}

static void test_same_instance_id_replaces_worker(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 5000);
    worker_ready(f, "w2", "echo", "echo-1", 1, 0); /* reconnected, new identity */
    assert_null(worker(f, "w1"));
    assert_non_null(worker(f, "w2"));
    assert_int_equal(registry_worker_count(f->registry), 1);
    assert_int_equal(registry_service(f->registry, "echo")->worker_count, 1);
    assert_int_equal(last_disconnect(f, "w1")->code, PAYGATE__V1__CODE__UNAVAILABLE);
    assert_status(answer_to(f, "c1", 1), PAYGATE__V1__CODE__UNAVAILABLE, "worker_lost");
    /* The same instance id under another service is another instance. */
    worker_ready(f, "w3", "ledger", "echo-1", 1, 0);
    assert_non_null(worker(f, "w2"));
    assert_non_null(worker(f, "w3"));
    assert_int_equal(registry_worker_count(f->registry), 2);
}

/* ---- DISCONNECT from a worker ---------------------------------------------- */

static void test_disconnect_drains_then_removes(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 4, 0);
    client_request(f, "c1", 1, "echo", 5000);
    advance_to(f, 100);
    worker_disconnect(f, "w1");
    assert_non_null(worker(f, "w1")); /* still holds a request */
    assert_true(worker(f, "w1")->draining);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT), 0);

    /* No new work for it, although it has room for three more. */
    client_request(f, "c1", 2, "echo", 5000);
    assert_int_equal(count_calls(f, CALL_REQUEST, "w1"), 1);
    worker_ready(f, "w2", "echo", "echo-2", 1, 0);
    assert_string_equal(request_sent(f, 2)->peer, "w2");

    /* Its last reply is forwarded, then it is removed and told so. */
    advance_to(f, 200);
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    const call_t *answer = answer_to(f, "c1", 1);
    assert_false(answer->has_status);
    assert_string_equal(answer->body, "pong");
    assert_null(worker(f, "w1"));
    const call_t *bye = last_disconnect(f, "w1");
    assert_int_equal(bye->at, 200);
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT), 1);
    assert_int_equal(registry_worker_count(f->registry), 1);
    assert_int_equal(registry_stats(f->registry)->workers_expired, 0);
}

static void test_disconnect_idle_worker_and_unknown_peer(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    worker_disconnect(f, "w1");
    assert_null(worker(f, "w1"));
    assert_int_equal(count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT), 1);
    assert_int_equal(registry_worker_count(f->registry), 0);
    /* A peer we do not know gets its confirmation too. */
    worker_disconnect(f, "stranger");
    assert_int_equal(count_commands(f, "stranger", PAYGATE__V1__COMMAND__DISCONNECT), 1);
}

/* The last worker drains: waiting requests get the grace period, then
 * UNAVAILABLE, rather than waiting for their deadline. */
static void test_disconnect_last_worker_queued_requests(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 30000);
    client_request(f, "c1", 2, "echo", 30000); /* waits */
    advance_to(f, 1000);
    worker_disconnect(f, "w1");
    for (int64_t t = 1500; t < 3000; t += 500) {
        advance_to(f, t);
        worker_heartbeat(f, "w1");
    }
    advance_to(f, 2999);
    assert_int_equal(answers_to(f, "c1", 2), 0);
    advance_to(f, 3000);
    assert_status(answer_to(f, "c1", 2), PAYGATE__V1__CODE__UNAVAILABLE, "no_worker");
    assert_int_equal(answers_to(f, "c1", 1), 0);
}

/* A draining worker whose last request was abandoned (deadline, then the
 * orphan timeout) has nothing left in flight: like after its last REPLY,
 * it must be removed and told DISCONNECT (registry.h: "removed (and told
 * so) once its in-flight requests are answered"). */
static void test_draining_worker_removed_after_orphan_release(void **state)
{
    registry_config_t config = registry_config_default();
    config.orphan_timeout_ms = 1000;
    fixture_t *f = start(state, &config);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 500);
    worker_disconnect(f, "w1");
    for (int64_t t = 250; t <= 2000; t += 250) {
        advance_to(f, t);
        worker_heartbeat(f, "w1"); /* alive, still draining */
    }
    assert_status(answer_to(f, "c1", 1), PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded");
    assert_int_equal(registry_request_count(f->registry), 0); /* slot released at 1500 */
    const worker_t *w = worker(f, "w1");
    if (w != NULL)
        fail_msg("w1 still registered at 2000 ms (draining %d, in flight %u), "
                 "DISCONNECTs sent: %zu",
                 (int)w->draining, w->in_flight,
                 count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT));
    /* one DISCONNECT confirms the removal; the heartbeats that follow
     * from the (now unknown) peer each get one asking it to register */
    assert_true(count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT) >= 1);
}

/* ---- replies that match nothing ------------------------------------------- */

static void test_forged_or_misdirected_reply_dropped(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    worker_ready(f, "w2", "echo", "echo-2", 1, 0);
    client_request(f, "c1", 1, "echo", 5000);
    client_request(f, "c2", 2, "echo", 5000);
    uint64_t to_w1 = request_sent(f, 1)->broker_correlation;
    assert_string_equal(request_sent(f, 1)->peer, "w1");

    worker_reply(f, "w2", to_w1); /* w2 answers w1's request */
    worker_reply(f, "intruder", to_w1);
    worker_reply(f, "w", to_w1);                        /* a prefix of "w1" */
    worker_reply(f, "w1", to_w1 + ((uint64_t)1 << 32)); /* right slot, wrong generation */
    worker_reply(f, "w1", to_w1 ^ 0xffff);              /* a slot that was never used */
    worker_reply(f, "w1", 0xdeadbeefcafef00du);
    worker_reply(f, "w1", 0);
    assert_int_equal(count_calls(f, CALL_REPLY, NULL), 0);
    assert_int_equal(registry_stats(f->registry)->replies_late, 7);
    assert_int_equal(registry_request_count(f->registry), 2);
    assert_int_equal(worker(f, "w1")->in_flight, 1);
    assert_int_equal(worker(f, "w2")->in_flight, 1);

    worker_reply(f, "w1", to_w1);
    assert_int_equal(answers_to(f, "c1", 1), 1);
    /* The same reply twice: the second is late, not a second answer. */
    worker_reply(f, "w1", to_w1);
    assert_int_equal(answers_to(f, "c1", 1), 1);
    assert_int_equal(registry_stats(f->registry)->replies_late, 8);
    assert_int_equal(registry_request_count(f->registry), 1);
}

/* A reused slot gets a new id: a reply for the old one does not match. */
static void test_reused_slot_rejects_old_correlation(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 5000);
    uint64_t first = request_sent(f, 1)->broker_correlation;
    worker_reply(f, "w1", first);
    client_request(f, "c1", 2, "echo", 5000);
    uint64_t second = request_sent(f, 2)->broker_correlation;
    assert_int_not_equal(first, second);
    worker_reply(f, "w1", first);
    assert_int_equal(answers_to(f, "c1", 2), 0);
    assert_int_equal(registry_stats(f->registry)->replies_late, 1);
    worker_reply(f, "w1", second);
    assert_int_equal(answers_to(f, "c1", 2), 1);
}

/* ---- sink failures --------------------------------------------------------- */

static void test_send_failure_routes_to_next_worker(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "wA", "echo", "echo-a", 1, 0);
    worker_ready(f, "wB", "echo", "echo-b", 1, 0);
    f->sink.fail_requests_to = "wA";
    client_request(f, "c1", 1, "echo", 5000);
    assert_int_equal(count_calls(f, CALL_REQUEST, "wA"), 1); /* tried first */
    assert_true(last_call(f, CALL_REQUEST, "wA")->failed);
    const call_t *sent = request_sent(f, 1);
    assert_string_equal(sent->peer, "wB");
    assert_string_equal(sent->body, "body-1"); /* the body survived the failed try */
    assert_null(worker(f, "wA"));
    assert_int_equal(registry_worker_count(f->registry), 1);
    assert_int_equal(registry_stats(f->registry)->sends_failed, 1);
    assert_int_equal(registry_stats(f->registry)->requests_routed, 1);
    assert_int_equal(count_calls(f, CALL_REPLY, NULL), 0);
    worker_reply(f, "wB", sent->broker_correlation);
    assert_int_equal(answers_to(f, "c1", 1), 1);
}

/* The only worker is gone when it would get the next waiting request: the
 * request is back in the queue with no worker left, so it must get the
 * same grace period as any waiting request whose last worker went away
 * (UNAVAILABLE "no_worker" 2000 ms later), not wait for its deadline. */
static void test_send_failure_on_queued_request_last_worker(void **state)
{
    fixture_t *f = start(state, NULL); /* grace 2000 ms */
    worker_ready(f, "wA", "echo", "echo-a", 1, 0);
    client_request(f, "c1", 1, "echo", 10000);
    client_request(f, "c1", 2, "echo", 10000); /* waits for wA */
    advance_to(f, 100);
    f->sink.fail_requests_to = "wA";
    worker_reply(f, "wA", request_sent(f, 1)->broker_correlation);
    assert_int_equal(answers_to(f, "c1", 1), 1);
    assert_null(worker(f, "wA"));
    assert_int_equal(registry_service(f->registry, "echo")->queue_len, 1);
    advance_to(f, 2100);
    if (answers_to(f, "c1", 2) == 0) {
        advance_to(f, 10100); /* see what happens instead */
        const call_t *late = answer_to(f, "c1", 2);
        fail_msg("no answer 2000 ms after the last worker was lost; answered at %lld ms "
                 "with %s/%s",
                 (long long)late->at, late->has_status ? wire_code_name(late->code) : "OK",
                 late->reason);
    }
    assert_status(answer_to(f, "c1", 2), PAYGATE__V1__CODE__UNAVAILABLE, "no_worker");
}

/* ---- discovery and shutdown ------------------------------------------------ */

static const Paygate__V1__ServiceInfo *find_service_info(const Paygate__V1__ListServicesReply *r,
                                                         const char *name)
{
    for (size_t i = 0; i < r->n_services; i++)
        if (strcmp(r->services[i]->name, name) == 0)
            return r->services[i];
    return NULL;
}

static const Paygate__V1__InstanceInfo *find_instance(const Paygate__V1__ServiceInfo *s,
                                                      const char *instance)
{
    for (size_t i = 0; i < s->n_instances; i++)
        if (strcmp(s->instances[i]->instance_id, instance) == 0)
            return s->instances[i];
    return NULL;
}

static void test_registry_list(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 2, 0);
    worker_ready(f, "w2", "echo", "echo-2", 1, 500);
    worker_ready(f, "w3", "ledger", "ledger-1", 1, 0);
    client_request(f, "c1", 1, "echo", 5000);
    client_request(f, "c1", 2, "echo", 5000);
    client_request(f, "c1", 3, "echo", 5000);
    client_request(f, "c1", 4, "echo", 5000); /* waits */
    advance_to(f, 300);
    worker_heartbeat(f, "w3");
    worker_reply(f, "w2", request_sent(f, 2)->broker_correlation);
    advance_to(f, 400);

    Paygate__V1__ListServicesReply reply = PAYGATE__V1__LIST_SERVICES_REPLY__INIT;
    void *memory = registry_list(f->registry, NULL, now_of(f), &reply);
    assert_non_null(memory);
    assert_int_equal(reply.n_services, 2);
    const Paygate__V1__ServiceInfo *echo = find_service_info(&reply, "echo");
    const Paygate__V1__ServiceInfo *ledger = find_service_info(&reply, "ledger");
    assert_non_null(echo);
    assert_non_null(ledger);
    assert_int_equal(echo->n_instances, 2);
    assert_int_equal(echo->queue_depth, 0);
    const Paygate__V1__InstanceInfo *i1 = find_instance(echo, "echo-1");
    const Paygate__V1__InstanceInfo *i2 = find_instance(echo, "echo-2");
    assert_non_null(i1);
    assert_non_null(i2);
    assert_int_equal(i1->in_flight, 2);
    assert_int_equal(i1->max_in_flight, 2);
    assert_int_equal(i1->requests_done, 0);
    assert_int_equal(i1->heartbeat_age_ms, 400);
    assert_int_equal(i1->registered_age_ms, 400);
    assert_int_equal(i1->heartbeat_interval_ms, 1000);
    assert_int_equal(i2->in_flight, 1); /* request 4 went to w2 */
    assert_int_equal(i2->requests_done, 1);
    assert_int_equal(i2->heartbeat_age_ms, 100);
    assert_int_equal(i2->heartbeat_interval_ms, 500);
    assert_int_equal(ledger->n_instances, 1);
    assert_int_equal(ledger->instances[0]->heartbeat_age_ms, 100);
    assert_non_null(reply.stats);
    assert_int_equal(reply.stats->requests_routed, 4);
    registry_list_free(memory);

    /* A filter, and a queue depth. */
    client_request(f, "c1", 5, "echo", 5000);
    Paygate__V1__ListServicesReply only = PAYGATE__V1__LIST_SERVICES_REPLY__INIT;
    memory = registry_list(f->registry, "echo", now_of(f), &only);
    assert_non_null(memory);
    assert_int_equal(only.n_services, 1);
    assert_string_equal(only.services[0]->name, "echo");
    assert_int_equal(only.services[0]->queue_depth, 1);
    registry_list_free(memory);

    Paygate__V1__ListServicesReply none = PAYGATE__V1__LIST_SERVICES_REPLY__INIT;
    memory = registry_list(f->registry, "payments", now_of(f), &none);
    assert_non_null(memory);
    assert_int_equal(none.n_services, 0);
    registry_list_free(memory);

    /* The reply packs (the broker sends it as a body). */
    Paygate__V1__ListServicesReply all = PAYGATE__V1__LIST_SERVICES_REPLY__INIT;
    memory = registry_list(f->registry, "", now_of(f), &all);
    assert_int_equal(all.n_services, 2);
    size_t size = paygate__v1__list_services_reply__get_packed_size(&all);
    uint8_t *packed = malloc(size);
    assert_non_null(packed);
    assert_int_equal(paygate__v1__list_services_reply__pack(&all, packed), size);
    Paygate__V1__ListServicesReply *back =
        paygate__v1__list_services_reply__unpack(NULL, size, packed);
    assert_non_null(back);
    assert_int_equal(back->n_services, 2);
    paygate__v1__list_services_reply__free_unpacked(back, NULL);
    free(packed);
    registry_list_free(memory);
}

static void test_shutdown_answers_every_pending(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    client_request(f, "c1", 1, "echo", 5000);   /* in flight */
    client_request(f, "c2", 2, "echo", 5000);   /* waits for w1 */
    client_request(f, "c3", 3, "ledger", 5000); /* waits, no worker */
    registry_shutdown(f->registry, "broker is shutting down");
    for (uint64_t k = 1; k <= 3; k++) {
        char client[4];
        snprintf(client, sizeof client, "c%u", (unsigned)k);
        const call_t *answer = answer_to(f, client, k);
        assert_true(answer->has_status);
        assert_int_equal(answer->code, PAYGATE__V1__CODE__UNAVAILABLE);
        assert_string_equal(answer->message, "broker is shutting down");
    }
    assert_int_equal(count_calls(f, CALL_REPLY, NULL), 3);
    assert_int_equal(registry_stats(f->registry)->requests_unavailable, 3);
    /* A worker's reply after that is not a second answer. */
    worker_reply(f, "w1", request_sent(f, 1)->broker_correlation);
    assert_int_equal(answers_to(f, "c1", 1), 1);
}

static void test_shutdown_disconnects_workers(void **state)
{
    fixture_t *f = start(state, NULL);
    worker_ready(f, "w1", "echo", "echo-1", 1, 0);
    worker_ready(f, "w2", "ledger", "ledger-1", 1, 0);
    client_request(f, "c1", 1, "echo", 5000);
    registry_shutdown(f->registry, "broker is shutting down");
    assert_int_equal(answers_to(f, "c1", 1), 1);
    /* registry.h: "...and tells every worker DISCONNECT". */
    if (count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT) != 1)
        fail_msg("registry_shutdown sent %zu DISCONNECT to w1 (expected 1); sink calls: %zu",
                 count_commands(f, "w1", PAYGATE__V1__COMMAND__DISCONNECT), f->sink.count);
    assert_int_equal(count_commands(f, "w2", PAYGATE__V1__COMMAND__DISCONNECT), 1);
}

/* ---- a seeded simulation: every request ends in exactly one answer -------- */

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* Random READY, HEARTBEAT, DISCONNECT, REQUEST, REPLY and time steps over
 * three services and six worker identities, with send failures. Afterwards
 * every worker answers what it holds and time runs past every deadline and
 * orphan timeout: then each request must have had exactly one answer, and
 * the registry must hold nothing. */
static void test_simulation_one_answer_per_request(void **state)
{
    registry_config_t config = registry_config_default();
    config.queue_max = 8;
    config.requests_max = 40;
    config.orphan_timeout_ms = 2000;
    config.deadline_max_ms = 8000;
    fixture_t *f = start(state, &config);
    static const char *const services[] = {"echo", "ledger", "fx"};
    static const char *const workers[] = {"w0", "w1", "w2", "w3", "w4", "w5"};
    enum { workers_n = 6, steps = 6000, requests_max = 4000 };
    uint64_t seed = 0x2545f4914f6cdd1du;
    uint64_t next_correlation = 1;

    for (int step = 0; step < steps && next_correlation < requests_max; step++) {
        uint64_t r = xorshift64(&seed);
        const char *w = workers[r % workers_n];
        const char *service = services[(r >> 8) % 3];
        switch ((r >> 16) % 10) {
        case 0: {
            char instance[16];
            snprintf(instance, sizeof instance, "i-%u", (unsigned)((r >> 24) % 8));
            worker_ready(f, w, service, instance, (uint32_t)((r >> 32) % 3), 0);
            break;
        }
        case 1:
            worker_heartbeat(f, w);
            break;
        case 2:
            if ((r >> 24) % 4 == 0)
                worker_disconnect(f, w);
            else
                worker_heartbeat(f, w);
            break;
        case 3:
        case 4:
        case 5:
            client_request(f, "c", next_correlation++, service,
                           (uint32_t)((r >> 24) % 9000)); /* some over the maximum */
            break;
        case 6:
        case 7: {
            /* The worker answers one of the requests sent to it. */
            size_t pick = (size_t)((r >> 24) % 16);
            for (size_t i = f->sink.count; i-- > 0;) {
                const call_t *c = &f->sink.calls[i];
                if (c->kind == CALL_REQUEST && !c->failed && strcmp(c->peer, w) == 0 &&
                    pick-- == 0) {
                    worker_reply(f, w, c->broker_correlation);
                    break;
                }
            }
            break;
        }
        case 8:
            f->sink.fail_requests_to = (r >> 24) % 5 == 0 ? w : NULL;
            break;
        default:
            advance_to(f, f->clock + (int64_t)((r >> 24) % 700));
            break;
        }
        assert_false(f->sink.overflow);
        if (f->sink.count > calls_max - 200)
            break; /* keep room for the end */
    }

    /* Wind down: workers answer everything they hold, then time passes. */
    f->sink.fail_requests_to = NULL;
    for (size_t i = 0; i < f->sink.count; i++) {
        const call_t *c = &f->sink.calls[i];
        if (c->kind == CALL_REQUEST && !c->failed)
            worker_reply(f, c->peer, c->broker_correlation);
    }
    advance_to(f, f->clock + 20000);
    assert_false(f->sink.overflow);
    assert_int_equal(registry_request_count(f->registry), 0);
    for (uint64_t k = 1; k < next_correlation; k++) {
        size_t n = answers_to(f, "c", k);
        if (n != 1)
            fail_msg("request %llu got %zu answers", (unsigned long long)k, n);
    }
}

int main(void)
{
    setenv("PAYGATE_LOG_LEVEL", "error", 0); /* the registry logs every (re)registration */
    log_init("test_registry");
#define T(name) cmocka_unit_test_setup_teardown(name, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        T(test_ready_registers),
        T(test_ready_reserved_service_name),
        T(test_instance_id_kept_by_its_key),
        T(test_workers_max_refuses_ready),
        T(test_request_dispatched_at_once),
        T(test_reply_forwarded_to_client),
        T(test_sink_moving_bodies),
        T(test_least_recently_used_order),
        T(test_max_in_flight_respected),
        T(test_queue_full),
        T(test_requests_max_broker_busy),
        T(test_deadline_over_max_refused),
        T(test_request_takes_body_on_every_path),
        T(test_deadline_while_queued),
        T(test_deadline_while_in_flight),
        T(test_orphan_slot_released),
        T(test_no_worker_unavailable_after_grace),
        T(test_no_worker_short_deadline_wins),
        T(test_worker_within_grace_gets_request),
        T(test_worker_expiry),
        T(test_worker_custom_interval_expiry),
        T(test_heartbeats_to_idle_workers),
        T(test_heartbeat_refreshes_worker),
        T(test_heartbeat_from_unknown_identity),
        T(test_heartbeat_send_failure_removes_worker),
        T(test_ready_again_same_identity),
        T(test_same_instance_id_replaces_worker),
        T(test_disconnect_drains_then_removes),
        T(test_disconnect_idle_worker_and_unknown_peer),
        T(test_disconnect_last_worker_queued_requests),
        T(test_draining_worker_removed_after_orphan_release),
        T(test_forged_or_misdirected_reply_dropped),
        T(test_reused_slot_rejects_old_correlation),
        T(test_send_failure_routes_to_next_worker),
        T(test_send_failure_on_queued_request_last_worker),
        T(test_registry_list),
        T(test_shutdown_answers_every_pending),
        T(test_shutdown_disconnects_workers),
        T(test_simulation_one_answer_per_request),
    };
#undef T
    return cmocka_run_group_tests_name("registry", tests, NULL, NULL);
}
