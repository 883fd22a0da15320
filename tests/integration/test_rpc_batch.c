/*
 * Integration tests of lib/rpc's batches (proto/batch.proto): the real
 * paygate-broker and paygate-echo-worker processes on loopback TCP,
 * called with rpc_client_call_batch, and with hand-made "batch.<Method>"
 * bodies (rpc_client_call_raw) for what that function never sends.
 *
 * The echo worker's batchable methods answer what each call saw (its user
 * id, request id, whether it ran inside the batch's transaction, and the
 * how-manieth run of its thread it was); TxnLog reports the fake
 * transactions its batch_ops ran (ECHO_BATCH_OPS=1). One worker thread per
 * test, so that every call lands on the same state.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batch.pb-c.h"
#include "clock/clock.h"
#include "echo.pb-c.h"
#include "http_client.h"
#include "proc.h"
#include "rpc/rpc.h"

enum {
    env_max = 8,
    text_bytes_max = 512,
    call_deadline_ms = 5000,
    /* how long a started process gets to show up in discovery */
    start_wait_ms = 10000,
};

typedef struct {
    int port;
    char endpoint[64];
    char env_endpoint[96];
    proc_t broker;
    proc_t worker;
    rpc_client_t *client;
} fixture_t;

/* One batch of echo calls being built and made. */
typedef struct {
    Paygate__V1__EchoRequest requests[rpc_batch_items_max + 1];
    rpc_batch_item_t items[rpc_batch_items_max + 1];
    size_t count;
} echo_batch_t;

static int fixture_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->port = free_tcp_port();
    assert_true(f->port > 0);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", f->port);
    snprintf(f->env_endpoint, sizeof f->env_endpoint, "PAYGATE_BROKER_ENDPOINT=%s", f->endpoint);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture_t *f = *state;
    rpc_client_destroy(&f->client);
    proc_kill(&f->worker);
    proc_kill(&f->broker);
    free(f);
    return 0;
}

/* Starts the broker, one echo worker (one thread) with 'worker_env'
 * (NULL-ended, may be NULL) and a client; returns when the worker is in
 * discovery. Logs are named after 'test'. */
static void start_system(fixture_t *f, const char *test, const char *const worker_env[])
{
    char name[128];
    const char *broker_env[] = {f->env_endpoint, NULL};
    snprintf(name, sizeof name, "batch-%s-broker", test);
    assert_true(proc_start(&f->broker, name, PAYGATE_BROKER_BIN, broker_env));
    const char *env[env_max];
    size_t n = 0;
    env[n++] = f->env_endpoint;
    env[n++] = "ECHO_THREADS=1";
    for (size_t i = 0; worker_env != NULL && worker_env[i] != NULL && n < env_max - 1; i++)
        env[n++] = worker_env[i];
    env[n] = NULL;
    snprintf(name, sizeof name, "batch-%s-worker", test);
    assert_true(proc_start(&f->worker, name, PAYGATE_ECHO_WORKER_BIN, env));
    f->client = rpc_client_new(NULL, f->endpoint);
    assert_non_null(f->client);
    assert_true(discovery_wait(f->client, "echo", 1, start_wait_ms) >= 0);
}

/* Adds a call with 'payload', 'user_id' and 'request_id' (both may be
 * NULL) to 'b'. 'payload' must outlive the batch. */
static void batch_add(echo_batch_t *b, const char *payload, const char *user_id,
                      const char *request_id)
{
    assert_true(b->count < rpc_batch_items_max + 1);
    Paygate__V1__EchoRequest *request = &b->requests[b->count];
    paygate__v1__echo_request__init(request);
    request->payload.data = (uint8_t *)payload;
    request->payload.len = strlen(payload);
    b->items[b->count] =
        (rpc_batch_item_t){.request = &request->base, .user_id = user_id, .request_id = request_id};
    b->count++;
}

/* Calls echo.'method' with the batch (request id "req_batch", and an
 * opts user id that must not reach any call); returns the batch's code. */
static Paygate__V1__Code batch_call(fixture_t *f, const char *method, echo_batch_t *b,
                                    rpc_status_t *status)
{
    rpc_call_opts_t opts = {
        .deadline_ms = call_deadline_ms, .request_id = "req_batch", .user_id = "usr_not_theirs"};
    return rpc_client_call_batch(f->client, "echo", method, b->items, b->count,
                                 &paygate__v1__echo_reply__descriptor, &opts, status);
}

/* Frees the replies of 'b' (before it is called again). */
static void batch_free_replies(echo_batch_t *b)
{
    for (size_t i = 0; i < b->count; i++) {
        if (b->items[i].reply != NULL)
            protobuf_c_message_free_unpacked(b->items[i].reply, NULL);
        b->items[i].reply = NULL;
    }
}

/* Frees the replies of 'b' and empties it. */
static void batch_clear(echo_batch_t *b)
{
    batch_free_replies(b);
    b->count = 0;
}

/* Asserts that item 'i' of 'b' is OK and its payload is 'expected'. */
static void item_ok(const echo_batch_t *b, size_t i, const char *expected)
{
    const rpc_batch_item_t *item = &b->items[i];
    if (item->status.code != PAYGATE__V1__CODE__OK)
        fail_msg("item %zu: code %d (%s), want OK with '%s'", i, item->status.code,
                 item->status.message, expected);
    assert_non_null(item->reply);
    const Paygate__V1__EchoReply *reply = (const Paygate__V1__EchoReply *)item->reply;
    char text[text_bytes_max];
    snprintf(text, sizeof text, "%.*s", (int)reply->payload.len, (const char *)reply->payload.data);
    assert_string_equal(text, expected);
}

/* Calls echo.'method' singly with 'payload' (request id "req_solo", no
 * user); copies the reply's payload
 * into 'out' and returns the code. */
static Paygate__V1__Code single_call(fixture_t *f, const char *method, const char *payload,
                                     char out[text_bytes_max])
{
    Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
    request.payload.data = (uint8_t *)payload;
    request.payload.len = strlen(payload);
    ProtobufCMessage *reply = NULL;
    rpc_call_opts_t opts = {.deadline_ms = call_deadline_ms, .request_id = "req_solo"};
    rpc_status_t status;
    Paygate__V1__Code code =
        rpc_client_call(f->client, "echo", method, &request.base,
                        &paygate__v1__echo_reply__descriptor, &reply, &opts, &status);
    out[0] = '\0';
    if (code == PAYGATE__V1__CODE__OK) {
        const Paygate__V1__EchoReply *echo = (const Paygate__V1__EchoReply *)reply;
        snprintf(out, text_bytes_max, "%.*s", (int)echo->payload.len,
                 (const char *)echo->payload.data);
        protobuf_c_message_free_unpacked(reply, NULL);
    }
    return code;
}

/* The worker thread's fake-transaction counts (TxnLog), then 'command'
 * ("", "reset" or "failbegin") applied. */
static void txn_log(fixture_t *f, const char *command, char out[text_bytes_max])
{
    assert_int_equal(single_call(f, "TxnLog", command, out), PAYGATE__V1__CODE__OK);
}

/* Sends 'body' as a "batch."-method request (rpc_client_call_raw) whose
 * own user id is "usr_raw" (as rpc_client_call_batch would send the
 * calls' of pack_batch); on OK decodes the BatchReply into '*reply' (free
 * it). Returns the code. */
static Paygate__V1__Code raw_batch(fixture_t *f, const char *method, const uint8_t *body,
                                   size_t len, rpc_status_t *status,
                                   Paygate__V1__BatchReply **reply)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    rpc_call_opts_t opts = {
        .deadline_ms = call_deadline_ms, .request_id = "req_raw", .user_id = "usr_raw"};
    Paygate__V1__Code code =
        rpc_client_call_raw(f->client, "echo", method, body, len, &opts, &msg, status);
    if (reply != NULL) {
        *reply = NULL;
        if (code == PAYGATE__V1__CODE__OK) {
            *reply = paygate__v1__batch_reply__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
            assert_non_null(*reply);
        }
    }
    zmq_msg_close(&msg);
    return code;
}

/* Packs a BatchRequest of 'count' items: each an EchoRequest with
 * payload "p<i>", except that item 'junk_at' (if < count) has a body that
 * is not an EchoRequest, and every item has request id 'request_id'.
 * Returns the packed size (into 'out', malloc'ed). */
static size_t pack_batch(size_t count, size_t junk_at, const char *request_id, uint8_t **out)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
    Paygate__V1__BatchItem *items = calloc(count + 1, sizeof *items);
    Paygate__V1__BatchItem **ptrs = calloc(count + 1, sizeof *ptrs);
    uint8_t(*bodies)[32] = calloc(count + 1, sizeof *bodies);
    assert_true(items != NULL && ptrs != NULL && bodies != NULL);
    for (size_t i = 0; i < count; i++) {
        paygate__v1__batch_item__init(&items[i]);
        char payload[24];
        snprintf(payload, sizeof payload, "p%zu", i);
        Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
        request.payload.data = (uint8_t *)payload;
        request.payload.len = strlen(payload);
        if (i == junk_at) {
            items[i].body.data = (uint8_t *)junk;
            items[i].body.len = sizeof junk;
        } else {
            items[i].body.len = paygate__v1__echo_request__pack(&request, bodies[i]);
            items[i].body.data = bodies[i];
        }
        items[i].user_id = (char *)"usr_raw";
        items[i].request_id = (char *)request_id;
        ptrs[i] = &items[i];
    }
    Paygate__V1__BatchRequest batch = PAYGATE__V1__BATCH_REQUEST__INIT;
    batch.n_items = count;
    batch.items = ptrs;
    size_t size = paygate__v1__batch_request__get_packed_size(&batch);
    *out = malloc(size > 0 ? size : 1);
    assert_non_null(*out);
    paygate__v1__batch_request__pack(&batch, *out);
    free(items);
    free(ptrs);
    free(bodies);
    return size;
}

/* ---- tests ----------------------------------------------------------- */

/* Each call of a batch gets its own reply and status, in order, and acts
 * for its own user and request id (the batch's when it has none); the
 * call options' user id reaches none of them. A failing call among OK
 * ones fails alone. */
static void test_items_answered_in_order(void **state)
{
    fixture_t *f = *state;
    start_system(f, "order", NULL);
    static echo_batch_t b;
    batch_add(&b, "a", "usr_1", "req_item_1");
    batch_add(&b, "b", "usr_2", "req_item_2");
    batch_add(&b, "fail", "usr_3", "req_item_3");
    batch_add(&b, "d", NULL, "req_item_4");
    batch_add(&b, "e", "usr_5", NULL);
    rpc_status_t status;
    assert_int_equal(batch_call(f, "Each", &b, &status), PAYGATE__V1__CODE__OK);
    assert_int_equal(status.code, PAYGATE__V1__CODE__OK);
    item_ok(&b, 0, "usr_1|req_item_1|a");
    item_ok(&b, 1, "usr_2|req_item_2|b");
    assert_int_equal(b.items[2].status.code, PAYGATE__V1__CODE__FAILED_PRECONDITION);
    assert_null(b.items[2].reply);
    assert_string_equal(b.items[2].status.reason, "echo_failed");
    assert_string_equal(b.items[2].status.message, "asked to fail (request req_item_3)");
    item_ok(&b, 3, "|req_item_4|d");
    item_ok(&b, 4, "usr_5|req_batch|e");
    batch_clear(&b);

    /* The largest batch there may be, each call still its own. */
    static char payloads[rpc_batch_items_max][24], users[rpc_batch_items_max][32];
    for (size_t i = 0; i < rpc_batch_items_max; i++) {
        snprintf(payloads[i], sizeof payloads[i], "n%zu", i);
        snprintf(users[i], sizeof users[i], "usr_%zu", i);
        batch_add(&b, payloads[i], users[i], NULL);
    }
    assert_int_equal(batch_call(f, "Each", &b, &status), PAYGATE__V1__CODE__OK);
    for (size_t i = 0; i < rpc_batch_items_max; i++) {
        char expected[64];
        snprintf(expected, sizeof expected, "usr_%zu|req_batch|n%zu", i, i);
        item_ok(&b, i, expected);
    }
    batch_clear(&b);
}

/* "batch.X" is served only for methods marked batchable: an unmarked or
 * unknown method is UNIMPLEMENTED, for the batch and every call in it. */
static void test_unbatchable_method_unimplemented(void **state)
{
    fixture_t *f = *state;
    start_system(f, "unimpl", NULL);
    static echo_batch_t b;
    batch_add(&b, "a", "usr_1", NULL);
    batch_add(&b, "b", "usr_2", NULL);
    rpc_status_t status;
    assert_int_equal(batch_call(f, "Echo", &b, &status), PAYGATE__V1__CODE__UNIMPLEMENTED);
    assert_non_null(strstr(status.message, "batch.Echo"));
    for (size_t i = 0; i < b.count; i++) {
        assert_int_equal(b.items[i].status.code, PAYGATE__V1__CODE__UNIMPLEMENTED);
        assert_null(b.items[i].reply);
    }
    assert_int_equal(batch_call(f, "Nope", &b, &status), PAYGATE__V1__CODE__UNIMPLEMENTED);
    assert_int_equal(b.items[1].status.code, PAYGATE__V1__CODE__UNIMPLEMENTED);
    batch_clear(&b);
    /* the worker still serves single calls */
    char text[text_bytes_max];
    assert_int_equal(single_call(f, "Echo", "alive", text), PAYGATE__V1__CODE__OK);
    assert_string_equal(text, "alive");
}

/* 0 calls and more than rpc_batch_items_max are refused by the client
 * (without a broker to send them to) and, sent by hand, by the worker;
 * so is a body that is not a BatchRequest, and a call's request id that a
 * single call could not carry. Calls with user ids on a batch without one
 * are PERMISSION_DENIED (the broker could not check them). */
static void test_malformed_batches_invalid(void **state)
{
    fixture_t *f = *state;
    static echo_batch_t b;
    for (size_t i = 0; i < rpc_batch_items_max + 1; i++)
        batch_add(&b, "x", "usr_1", NULL);
    /* No broker yet: a request that left would end UNAVAILABLE or at the
     * deadline, not INVALID_ARGUMENT. */
    f->client = rpc_client_new(NULL, f->endpoint);
    assert_non_null(f->client);
    rpc_status_t status;
    int64_t start = clock_now_ms();
    assert_int_equal(rpc_client_call_batch(f->client, "echo", "Each", b.items,
                                           rpc_batch_items_max + 1,
                                           &paygate__v1__echo_reply__descriptor, NULL, &status),
                     PAYGATE__V1__CODE__INVALID_ARGUMENT);
    for (size_t i = 0; i < rpc_batch_items_max + 1; i++) {
        assert_int_equal(b.items[i].status.code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
        assert_null(b.items[i].reply);
    }
    assert_int_equal(rpc_client_call_batch(f->client, "echo", "Each", b.items, 0,
                                           &paygate__v1__echo_reply__descriptor, NULL, &status),
                     PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_int_equal(status.code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_non_null(strstr(status.message, "1..64 calls, not 0"));
    /* a method name that "batch." makes longer than a method name may be */
    const char long_name[] = "M123456789012345678901234567890123456789012345678901234567890";
    assert_int_equal(rpc_client_call_batch(f->client, "echo", long_name, b.items, 1,
                                           &paygate__v1__echo_reply__descriptor, NULL, &status),
                     PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_non_null(strstr(status.message, "too long"));
    assert_int_equal(b.items[0].status.code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_true(clock_now_ms() - start < call_deadline_ms);
    batch_clear(&b);
    rpc_client_destroy(&f->client);

    start_system(f, "malformed", NULL);
    uint8_t *body = NULL;
    size_t len = pack_batch(rpc_batch_items_max + 1, SIZE_MAX, "req_x", &body);
    assert_int_equal(raw_batch(f, "batch.Each", body, len, &status, NULL),
                     PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_non_null(strstr(status.message, "BatchRequest"));
    free(body);
    /* 0 calls: the empty body */
    assert_int_equal(raw_batch(f, "batch.Each", NULL, 0, &status, NULL),
                     PAYGATE__V1__CODE__INVALID_ARGUMENT);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
    assert_int_equal(raw_batch(f, "batch.Each", junk, sizeof junk, &status, NULL),
                     PAYGATE__V1__CODE__INVALID_ARGUMENT);
    /* a request id with a space in it */
    len = pack_batch(2, SIZE_MAX, "req bad", &body);
    assert_int_equal(raw_batch(f, "batch.Each", body, len, &status, NULL),
                     PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_non_null(strstr(status.message, "request_id"));
    free(body);
    /* user ids in the calls, none on the batch (which the broker checks) */
    len = pack_batch(2, SIZE_MAX, "req_x", &body);
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    rpc_call_opts_t opts = {.deadline_ms = call_deadline_ms};
    assert_int_equal(
        rpc_client_call_raw(f->client, "echo", "batch.Each", body, len, &opts, &msg, &status),
        PAYGATE__V1__CODE__PERMISSION_DENIED);
    zmq_msg_close(&msg);
    free(body);
    /* the largest valid one passes the same way */
    len = pack_batch(rpc_batch_items_max, SIZE_MAX, "req_x", &body);
    Paygate__V1__BatchReply *reply = NULL;
    assert_int_equal(raw_batch(f, "batch.Each", body, len, &status, &reply), PAYGATE__V1__CODE__OK);
    assert_int_equal(reply->n_results, rpc_batch_items_max);
    paygate__v1__batch_reply__free_unpacked(reply, NULL);
    free(body);
}

/* A call whose body is not the method's request fails alone
 * (INVALID_ARGUMENT); the others are answered. */
static void test_item_body_invalid_fails_alone(void **state)
{
    fixture_t *f = *state;
    start_system(f, "itembody", NULL);
    uint8_t *body = NULL;
    size_t len = pack_batch(3, 1, "req_x", &body);
    rpc_status_t status;
    Paygate__V1__BatchReply *reply = NULL;
    assert_int_equal(raw_batch(f, "batch.Each", body, len, &status, &reply), PAYGATE__V1__CODE__OK);
    free(body);
    assert_int_equal(reply->n_results, 3);
    for (size_t i = 0; i < 3; i += 2) {
        assert_null(reply->results[i]->status); /* OK */
        Paygate__V1__EchoReply *echo = paygate__v1__echo_reply__unpack(
            NULL, reply->results[i]->body.len, reply->results[i]->body.data);
        assert_non_null(echo);
        char expected[32], got[64];
        snprintf(expected, sizeof expected, "usr_raw|req_x|p%zu", i);
        snprintf(got, sizeof got, "%.*s", (int)echo->payload.len, (const char *)echo->payload.data);
        assert_string_equal(got, expected);
        paygate__v1__echo_reply__free_unpacked(echo, NULL);
    }
    assert_non_null(reply->results[1]->status);
    assert_int_equal(reply->results[1]->status->code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_int_equal(reply->results[1]->body.len, 0);
    paygate__v1__batch_reply__free_unpacked(reply, NULL);
}

/* RPC_BATCH_TRANSACTION with batch_ops: the calls run inside one
 * transaction, committed once for the batch. */
static void test_transaction_commits_once(void **state)
{
    fixture_t *f = *state;
    start_system(f, "txn_commit", (const char *[]){"ECHO_BATCH_OPS=1", NULL});
    char log[text_bytes_max];
    static echo_batch_t b;
    batch_add(&b, "a", "usr_1", "req_t1");
    batch_add(&b, "b", "usr_2", "req_t2");
    batch_add(&b, "c", "usr_3", "req_t3");
    rpc_status_t status;
    assert_int_equal(batch_call(f, "Txn", &b, &status), PAYGATE__V1__CODE__OK);
    item_ok(&b, 0, "a|usr_1|req_t1|txn=1|run=1");
    item_ok(&b, 1, "b|usr_2|req_t2|txn=1|run=2");
    item_ok(&b, 2, "c|usr_3|req_t3|txn=1|run=3");
    batch_clear(&b);
    txn_log(f, "", log);
    assert_string_equal(log, "begin=1 commit=1 refused=0 rollback=0 runs=3 open=0");

    /* a single call of the same method runs outside any transaction */
    char text[text_bytes_max];
    assert_int_equal(single_call(f, "Txn", "solo", text), PAYGATE__V1__CODE__OK);
    assert_string_equal(text, "solo||req_solo|txn=0|run=4");
    txn_log(f, "", log);
    assert_string_equal(log, "begin=1 commit=1 refused=0 rollback=0 runs=4 open=0");
}

/* A transaction that cannot commit is rolled back and every call runs
 * again on its own, outside a transaction; the answers are those of the
 * second runs. Three ways: a call fails a statement (the first run stops
 * there), the commit fails, the transaction cannot begin. */
static void test_transaction_failure_reruns_singly(void **state)
{
    fixture_t *f = *state;
    start_system(f, "txn_fail", (const char *[]){"ECHO_BATCH_OPS=1", NULL});
    char log[text_bytes_max];
    static echo_batch_t b;
    rpc_status_t status;

    batch_add(&b, "a", "usr_1", "req_s1");
    batch_add(&b, "spoil", "usr_2", "req_s2");
    batch_add(&b, "c", "usr_3", "req_s3");
    assert_int_equal(batch_call(f, "Txn", &b, &status), PAYGATE__V1__CODE__OK);
    /* runs 1 and 2 were the transaction's (rolled back after "spoil") */
    item_ok(&b, 0, "a|usr_1|req_s1|txn=0|run=3");
    item_ok(&b, 1, "spoil|usr_2|req_s2|txn=0|run=4");
    item_ok(&b, 2, "c|usr_3|req_s3|txn=0|run=5");
    batch_clear(&b);
    txn_log(f, "reset", log);
    assert_string_equal(log, "begin=1 commit=0 refused=0 rollback=1 runs=5 open=0");

    batch_add(&b, "a", "usr_1", "req_n1");
    batch_add(&b, "nocommit", "usr_2", "req_n2");
    batch_add(&b, "c", "usr_3", "req_n3");
    assert_int_equal(batch_call(f, "Txn", &b, &status), PAYGATE__V1__CODE__OK);
    item_ok(&b, 0, "a|usr_1|req_n1|txn=0|run=4");
    item_ok(&b, 1, "nocommit|usr_2|req_n2|txn=0|run=5");
    item_ok(&b, 2, "c|usr_3|req_n3|txn=0|run=6");
    batch_clear(&b);
    /* a refused commit is followed by a rollback (rpc_batch_ops_t: a
     * commit that failed may leave the transaction open) */
    txn_log(f, "reset", log);
    assert_string_equal(log, "begin=1 commit=0 refused=1 rollback=1 runs=6 open=0");

    txn_log(f, "failbegin", log);
    assert_string_equal(log, "begin=0 commit=0 refused=0 rollback=0 runs=0 open=0");
    batch_add(&b, "a", "usr_1", "req_b1");
    batch_add(&b, "b", "usr_2", "req_b2");
    assert_int_equal(batch_call(f, "Txn", &b, &status), PAYGATE__V1__CODE__OK);
    item_ok(&b, 0, "a|usr_1|req_b1|txn=0|run=1");
    item_ok(&b, 1, "b|usr_2|req_b2|txn=0|run=2");
    batch_clear(&b);
    txn_log(f, "", log);
    assert_string_equal(log, "begin=1 commit=0 refused=0 rollback=0 runs=2 open=0");

    /* and the next batch has its transaction again */
    batch_add(&b, "d", "usr_4", "req_d1");
    assert_int_equal(batch_call(f, "Txn", &b, &status), PAYGATE__V1__CODE__OK);
    item_ok(&b, 0, "d|usr_4|req_d1|txn=1|run=3");
    batch_clear(&b);
}

/* Without batch_ops, an RPC_BATCH_TRANSACTION method's batch runs call by
 * call (as RPC_BATCH_EACH), no transaction begun. */
static void test_transaction_without_ops_runs_each(void **state)
{
    fixture_t *f = *state;
    start_system(f, "txn_noops", NULL);
    static echo_batch_t b;
    batch_add(&b, "a", "usr_1", "req_e1");
    batch_add(&b, "spoil", "usr_2", "req_e2");
    rpc_status_t status;
    assert_int_equal(batch_call(f, "Txn", &b, &status), PAYGATE__V1__CODE__OK);
    item_ok(&b, 0, "a|usr_1|req_e1|txn=0|run=1");
    item_ok(&b, 1, "spoil|usr_2|req_e2|txn=0|run=2");
    batch_clear(&b);
    char log[text_bytes_max];
    txn_log(f, "", log);
    assert_string_equal(log, "begin=0 commit=0 refused=0 rollback=0 runs=2 open=0");
}

/* RPC_BATCH_HANDLER: the method's batch code gets the calls whose bodies
 * decoded, each with its own user and request id, and answers what it
 * can; the handler answers the rest one by one; the replies come back in
 * the calls' order. Without batch code, the handler answers every call. */
static void test_batch_code_answers_what_it_can(void **state)
{
    fixture_t *f = *state;
    start_system(f, "handler", NULL);
    static echo_batch_t b;
    batch_add(&b, "a", "usr_1", "req_h1");
    batch_add(&b, "single", "usr_2", "req_h2");
    batch_add(&b, "bulkfail", "usr_3", "req_h3");
    batch_add(&b, "d", NULL, NULL);
    rpc_status_t status;
    assert_int_equal(batch_call(f, "Bulk", &b, &status), PAYGATE__V1__CODE__OK);
    item_ok(&b, 0, "bulk|usr_1|req_h1|a|1/4");
    item_ok(&b, 1, "single|usr_2|req_h2|single");
    assert_int_equal(b.items[2].status.code, PAYGATE__V1__CODE__FAILED_PRECONDITION);
    assert_string_equal(b.items[2].status.reason, "bulk_failed");
    assert_string_equal(b.items[2].status.message, "failed in the batch code (request req_h3)");
    assert_null(b.items[2].reply);
    item_ok(&b, 3, "bulk||req_batch|d|4/4");
    batch_free_replies(&b);
    assert_int_equal(batch_call(f, "BulkPlain", &b, &status), PAYGATE__V1__CODE__OK);
    item_ok(&b, 0, "single|usr_1|req_h1|a");
    item_ok(&b, 2, "single|usr_3|req_h3|bulkfail");
    batch_clear(&b);

    /* A call whose body does not decode never reaches the batch code. */
    uint8_t *body = NULL;
    size_t len = pack_batch(3, 0, "req_x", &body);
    Paygate__V1__BatchReply *reply = NULL;
    assert_int_equal(raw_batch(f, "batch.Bulk", body, len, &status, &reply), PAYGATE__V1__CODE__OK);
    free(body);
    assert_int_equal(reply->n_results, 3);
    assert_non_null(reply->results[0]->status);
    assert_int_equal(reply->results[0]->status->code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
    for (size_t i = 1; i < 3; i++) {
        assert_null(reply->results[i]->status);
        Paygate__V1__EchoReply *echo = paygate__v1__echo_reply__unpack(
            NULL, reply->results[i]->body.len, reply->results[i]->body.data);
        assert_non_null(echo);
        char expected[64], got[128];
        snprintf(expected, sizeof expected, "bulk|usr_raw|req_x|p%zu|%zu/2", i, i);
        snprintf(got, sizeof got, "%.*s", (int)echo->payload.len, (const char *)echo->payload.data);
        assert_string_equal(got, expected);
        paygate__v1__echo_reply__free_unpacked(echo, NULL);
    }
    paygate__v1__batch_reply__free_unpacked(reply, NULL);

    /* singly, the handler */
    char text[text_bytes_max];
    assert_int_equal(single_call(f, "Bulk", "x", text), PAYGATE__V1__CODE__OK);
    assert_string_equal(text, "single||req_solo|x");
}

/* Fails unless the worker's /metrics text 'body' has the
 * sample paygate_rpc_handled_total of echo.'method' with 'code' at
 * 'expected' ("absent": no such sample). */
static void handled_is(const char *body, const char *method, const char *code, const char *expected)
{
    char key[256];
    snprintf(key, sizeof key,
             "\npaygate_rpc_handled_total{service=\"echo\",method=\"%s\",code=\"%s\"} ", method,
             code);
    const char *at = strstr(body, key);
    if (strcmp(expected, "absent") == 0) {
        if (at != NULL)
            fail_msg("/metrics has %s", key + 1);
        return;
    }
    if (at == NULL)
        fail_msg("/metrics has no %s", key + 1);
    char value[32];
    snprintf(value, sizeof value, "%.*s", (int)strcspn(at + strlen(key), "\n"), at + strlen(key));
    if (strcmp(value, expected) != 0)
        fail_msg("%s is %s, want %s", key + 1, value, expected);
}

/* Each call of a batch counts in paygate_rpc_handled_total as one of its
 * method, with its own code; a transactional batch that ran twice counts
 * its calls once (the answers sent). */
static void test_calls_counted_as_method(void **state)
{
    fixture_t *f = *state;
    int port = free_tcp_port();
    assert_true(port > 0);
    char env_port[64];
    snprintf(env_port, sizeof env_port, "PAYGATE_METRICS_PORT=%d", port);
    start_system(f, "metrics", (const char *[]){"ECHO_BATCH_OPS=1", env_port, NULL});
    static echo_batch_t b;
    rpc_status_t status;
    batch_add(&b, "a", "usr_1", NULL);
    batch_add(&b, "fail", "usr_2", NULL);
    batch_add(&b, "c", "usr_3", NULL);
    assert_int_equal(batch_call(f, "Each", &b, &status), PAYGATE__V1__CODE__OK);
    batch_clear(&b);
    batch_add(&b, "a", "usr_1", NULL);
    batch_add(&b, "spoil", "usr_2", NULL); /* first run stopped here: runs 2 + 2 */
    assert_int_equal(batch_call(f, "Txn", &b, &status), PAYGATE__V1__CODE__OK);
    batch_clear(&b);

    http_response_t r;
    if (!http_request(&r, port, "GET", "/metrics", NULL, NULL))
        fail_msg("GET /metrics: %s", r.error);
    assert_int_equal(r.status, 200);
    assert_non_null(r.body);
    handled_is(r.body, "Each", "OK", "2");
    handled_is(r.body, "Each", "FAILED_PRECONDITION", "1");
    handled_is(r.body, "Txn", "OK", "2");
    handled_is(r.body, "Txn", "INTERNAL", "absent");
    assert_null(strstr(r.body, "method=\"batch."));
    http_response_free(&r);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_items_answered_in_order),           T(test_unbatchable_method_unimplemented),
        T(test_malformed_batches_invalid),         T(test_item_body_invalid_fails_alone),
        T(test_transaction_commits_once),          T(test_transaction_failure_reruns_singly),
        T(test_transaction_without_ops_runs_each), T(test_batch_code_answers_what_it_can),
        T(test_calls_counted_as_method),
    };
    return cmocka_run_group_tests_name("rpc batch integration", tests, NULL, NULL);
}
