/*
 * Integration tests of the broker's authentication (CURVE + ZAP) and of
 * the rights each key's certificate gives (broker/auth.h): the real
 * paygate-broker and paygate-echo-worker, certificates made by the real
 * paygate-certs, and clients with one key each (lib/rpc, or raw DEALER
 * sockets for registrations and subscriptions).
 *
 * One broker serves every test (started by the group setup with its own
 * certificate directory and event bus). A key outside that directory
 * stands for a stranger.
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

#include "batch.pb-c.h"
#include "clock/clock.h"
#include "curve/curve.h"
#include "echo.pb-c.h"
#include "proc.h"
#include "rpc/rpc.h"
#include "wire/wire.h"

enum {
    silence_wait_ms = 1500, /* how long a refused peer is watched for an answer */
    raw_max = 16,
};

static struct {
    char dir[512];      /* certificates of this test's broker */
    char stranger[512]; /* a key the broker does not know */
    char endpoint[64];
    char env_endpoint[96];
    char env_cert[600];
    char env_clients[600];
    char env_data[600];
    proc_t broker;
    proc_t worker;
    void *zmq_ctx;
    void *raw[raw_max];
    int raw_count;
    rpc_client_t *admin; /* the "test" key: discovery */
} g;

/* Runs 'command' through the shell; asserts it succeeded. */
static void run(const char *command)
{
    int rc = system(command);
    assert_true(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
}

/* The identity of key 'name' of this test's directory. */
static curve_identity_t identity_of(const char *name)
{
    char cert[600], broker[600];
    snprintf(cert, sizeof cert, "%s/%s.cert_secret", g.dir, name);
    snprintf(broker, sizeof broker, "%s/broker.cert", g.dir);
    curve_identity_t id;
    assert_true(curve_identity_load(cert, NULL, broker, &id));
    return id;
}

/* A raw DEALER socket to the broker with 'id' (NULL: plaintext). */
static void *raw_socket(const curve_identity_t *id)
{
    void *s = zmq_socket(g.zmq_ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (id != NULL)
        assert_int_equal(curve_client_apply(id, s), 0);
    assert_int_equal(zmq_connect(s, g.endpoint), 0);
    assert_true(g.raw_count < raw_max);
    g.raw[g.raw_count++] = s;
    return s;
}

static void raw_send_header(void *s, Paygate__V1__Header *header)
{
    assert_int_equal(wire_send(s, NULL, 0, header, NULL, 0), 0);
}

static void raw_ready(void *s, const char *service, const char *instance)
{
    Paygate__V1__Ready ready = PAYGATE__V1__READY__INIT;
    ready.service = (char *)service;
    ready.instance_id = (char *)instance;
    ready.heartbeat_interval_ms = 1000;
    ready.max_in_flight = 1;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__READY;
    header.ready = &ready;
    raw_send_header(s, &header);
}

static void raw_subscribe(void *s, const char *topic, const char *group)
{
    Paygate__V1__Subscribe sub = PAYGATE__V1__SUBSCRIBE__INIT;
    sub.topic = (char *)topic;
    sub.group = (char *)group;
    sub.consumer_id = (char *)"auth-test";
    sub.max_in_flight = 4;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__SUBSCRIBE;
    header.subscribe = &sub;
    raw_send_header(s, &header);
}

/* Waits up to 'timeout_ms' for a message other than HEARTBEAT on 's';
 * true with it in 'msg' (to clear), false when none came. */
static bool raw_recv(void *s, int timeout_ms, wire_message_t *msg)
{
    int64_t until = clock_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = until - clock_now_ms();
        zmq_pollitem_t item = {.socket = s, .events = ZMQ_POLLIN};
        if (left <= 0 || zmq_poll(&item, 1, (long)left) <= 0)
            return false;
        const char *detail = NULL;
        int rc = wire_recv(s, false, 1 << 20, ZMQ_DONTWAIT, msg, &detail);
        assert_int_equal(rc, WIRE_OK);
        if (msg->header->command != PAYGATE__V1__COMMAND__HEARTBEAT)
            return true;
        wire_message_clear(msg);
    }
}

/* Expects a DISCONNECT with PERMISSION_DENIED and 'reason' on 's'. */
static void expect_refusal(void *s, const char *reason)
{
    wire_message_t msg;
    assert_true(raw_recv(s, 5000, &msg));
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__DISCONNECT);
    assert_non_null(msg.header->status);
    assert_int_equal(msg.header->status->code, PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_string_equal(msg.header->status->reason, reason);
    wire_message_clear(&msg);
}

/* Calls echo.'method' with client 'c' as 'user_id'/'principal' (may be
 * NULL); on OK copies the reply's payload into 'payload'. */
static Paygate__V1__Code echo_call(rpc_client_t *c, const char *method, const char *user_id,
                                   const char *principal, rpc_status_t *status, char *payload,
                                   size_t size)
{
    Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
    request.payload.data = (uint8_t *)"hi";
    request.payload.len = 2;
    ProtobufCMessage *reply = NULL;
    rpc_call_opts_t opts = {.deadline_ms = 3000, .user_id = user_id, .principal = principal};
    Paygate__V1__Code code =
        rpc_client_call(c, "echo", method, &request.base, &paygate__v1__echo_reply__descriptor,
                        &reply, &opts, status);
    if (code == PAYGATE__V1__CODE__OK) {
        Paygate__V1__EchoReply *echo = (Paygate__V1__EchoReply *)reply;
        if (payload != NULL)
            snprintf(payload, size, "%.*s", (int)echo->payload.len, (char *)echo->payload.data);
        protobuf_c_message_free_unpacked(reply, NULL);
    }
    return code;
}

static rpc_client_t *client_as(const char *name)
{
    curve_identity_t id = identity_of(name);
    rpc_client_t *c = rpc_client_new_as(NULL, g.endpoint, &id);
    assert_non_null(c);
    return c;
}

/* ---- setup ------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    const char *logs = getenv("PAYGATE_TEST_LOG_DIR");
    snprintf(g.dir, sizeof g.dir, "%s/auth-certs", logs && *logs ? logs : ".");
    snprintf(g.stranger, sizeof g.stranger, "%s/auth-stranger", logs && *logs ? logs : ".");
    char command[2048];
    snprintf(command, sizeof command, "rm -rf '%s' '%s' '%s-bus'", g.dir, g.stranger, g.dir);
    run(command);
    snprintf(command, sizeof command, "'%s' '%s' >/dev/null", PAYGATE_CERTS_BIN, g.dir);
    run(command);
    snprintf(command, sizeof command,
             "'%s' '%s' echo role=service services=echo >/dev/null && "
             "'%s' '%s' test role=operator 'services=*' 'principals=*' act_for_users=true "
             ">/dev/null",
             PAYGATE_CERTS_BIN, g.dir, PAYGATE_CERTS_BIN, g.dir);
    run(command);
    /* A stranger: a valid key pair, made the same way, never admitted. */
    snprintf(command, sizeof command, "'%s' '%s' echo role=service services=echo >/dev/null",
             PAYGATE_CERTS_BIN, g.stranger);
    run(command);

    int port = free_tcp_port();
    assert_true(port > 0);
    snprintf(g.endpoint, sizeof g.endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(g.env_endpoint, sizeof g.env_endpoint, "PAYGATE_BROKER_ENDPOINT=%s", g.endpoint);
    snprintf(g.env_cert, sizeof g.env_cert, "PAYGATE_CURVE_CERT=%s/broker.cert_secret", g.dir);
    snprintf(g.env_clients, sizeof g.env_clients, "PAYGATE_CURVE_CLIENTS_DIR=%s/clients", g.dir);
    snprintf(g.env_data, sizeof g.env_data, "PAYGATE_BROKER_DATA_DIR=%s-bus", g.dir);
    const char *broker_env[] = {g.env_endpoint, g.env_cert, g.env_clients, g.env_data, NULL};
    assert_true(proc_start(&g.broker, "auth-broker", PAYGATE_BROKER_BIN, broker_env));

    static char worker_cert[600], worker_broker[600];
    snprintf(worker_cert, sizeof worker_cert, "PAYGATE_CURVE_CERT=%s/echo.cert_secret", g.dir);
    snprintf(worker_broker, sizeof worker_broker, "PAYGATE_BROKER_CERT=%s/broker.cert", g.dir);
    const char *worker_env[] = {g.env_endpoint, worker_cert, worker_broker,
                                "ECHO_INSTANCE=echo-auth", NULL};
    assert_true(proc_start(&g.worker, "auth-echo", PAYGATE_ECHO_WORKER_BIN, worker_env));

    g.zmq_ctx = zmq_ctx_new();
    g.admin = client_as("test");
    assert_true(discovery_wait(g.admin, "echo", 1, 20000) >= 0);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    rpc_client_destroy(&g.admin);
    for (int i = 0; i < g.raw_count; i++)
        zmq_close(g.raw[i]);
    zmq_ctx_term(g.zmq_ctx);
    proc_stop(&g.worker, 5000);
    proc_stop(&g.broker, 5000);
    return 0;
}

/* ---- tests ------------------------------------------------------------- */

/* The happy path: the echo key registered (setup), the gateway calls for a
 * user, and the worker sees the gateway's principal and the user. A key
 * that claims no principal gets its own name written by the broker. */
static void test_happy_path(void **state)
{
    (void)state;
    rpc_client_t *gateway = client_as("gateway");
    rpc_status_t status;
    char payload[256];
    assert_int_equal(
        echo_call(gateway, "Caller", "usr_asha", "gateway", &status, payload, sizeof payload),
        PAYGATE__V1__CODE__OK);
    assert_string_equal(payload, "gateway|usr_asha");
    assert_int_equal(echo_call(gateway, "Caller", NULL, NULL, &status, payload, sizeof payload),
                     PAYGATE__V1__CODE__OK);
    assert_string_equal(payload, "gateway|");
    rpc_client_destroy(&gateway);

    rpc_client_t *payment = client_as("payment");
    assert_int_equal(echo_call(payment, "Caller", NULL, NULL, &status, payload, sizeof payload),
                     PAYGATE__V1__CODE__OK);
    assert_string_equal(payload, "payment|");
    rpc_client_destroy(&payment);
}

/* A key the broker does not know gets no READY through and no call. */
static void test_unknown_key_refused(void **state)
{
    (void)state;
    Paygate__V1__BrokerStats before = PAYGATE__V1__BROKER_STATS__INIT;
    assert_true(discovery_stats(g.admin, &before));
    char cert[600], broker[600];
    snprintf(cert, sizeof cert, "%s/echo.cert_secret", g.stranger);
    snprintf(broker, sizeof broker, "%s/broker.cert", g.dir);
    curve_identity_t stranger;
    assert_true(curve_identity_load(cert, NULL, broker, &stranger));

    void *s = raw_socket(&stranger);
    raw_ready(s, "echo", "echo-stranger-0");
    wire_message_t msg;
    assert_false(raw_recv(s, silence_wait_ms, &msg));

    rpc_client_t *c = rpc_client_new_as(NULL, g.endpoint, &stranger);
    assert_non_null(c);
    rpc_status_t status;
    Paygate__V1__Code code = echo_call(c, "Echo", NULL, NULL, &status, NULL, 0);
    assert_int_not_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(code, PAYGATE__V1__CODE__UNAVAILABLE); /* never connected */
    rpc_client_destroy(&c);

    assert_int_equal(discovery_count(g.admin, "echo", 3000), 1);
    Paygate__V1__BrokerStats after = PAYGATE__V1__BROKER_STATS__INIT;
    assert_true(discovery_stats(g.admin, &after));
    assert_true(after.peers_refused > before.peers_refused);
}

/* A peer without CURVE at all is not heard. */
static void test_plaintext_peer_refused(void **state)
{
    (void)state;
    void *s = raw_socket(NULL);
    raw_ready(s, "echo", "echo-plain-0");
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REQUEST;
    header.correlation_id = 7;
    header.service = (char *)"broker.services";
    header.method = (char *)"List";
    raw_send_header(s, &header);
    wire_message_t msg;
    assert_false(raw_recv(s, silence_wait_ms, &msg));
    assert_int_equal(discovery_count(g.admin, "echo", 3000), 1);
}

/* The payment key may register "payment" only; the gateway key nothing. */
static void test_register_only_own_services(void **state)
{
    (void)state;
    curve_identity_t payment = identity_of("payment");
    void *s = raw_socket(&payment);
    raw_ready(s, "user", "user-impostor-0");
    expect_refusal(s, "service_not_allowed");
    assert_int_equal(discovery_count(g.admin, "user", 3000), 0);

    curve_identity_t gateway = identity_of("gateway");
    void *t = raw_socket(&gateway);
    raw_ready(t, "echo", "echo-gateway-0");
    expect_refusal(t, "service_not_allowed");
    void *u = raw_socket(&gateway);
    raw_ready(u, "gateway", "gateway-0");
    expect_refusal(u, "service_not_allowed");
    assert_int_equal(discovery_count(g.admin, "echo", 3000), 1);
    assert_int_equal(discovery_count(g.admin, "gateway", 3000), 0);

    /* The payment key may register its own service. */
    void *v = raw_socket(&payment);
    raw_ready(v, "payment", "payment-auth-0");
    assert_true(discovery_wait(g.admin, "payment", 1, 5000) >= 0);
}

/* A service key calls as itself: no end user, no other principal. */
static void test_service_key_cannot_claim_a_user(void **state)
{
    (void)state;
    rpc_client_t *order = client_as("order");
    rpc_status_t status;
    assert_int_equal(echo_call(order, "Caller", "usr_victim", NULL, &status, NULL, 0),
                     PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_string_equal(status.reason, "user_identity_not_allowed");
    assert_int_equal(echo_call(order, "Caller", NULL, "gateway", &status, NULL, 0),
                     PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_string_equal(status.reason, "principal_not_allowed");
    assert_int_equal(echo_call(order, "Caller", "usr_victim", "gateway", &status, NULL, 0),
                     PAYGATE__V1__CODE__PERMISSION_DENIED);
    char payload[256];
    assert_int_equal(echo_call(order, "Caller", NULL, "order", &status, payload, sizeof payload),
                     PAYGATE__V1__CODE__OK);
    assert_string_equal(payload, "order|");
    rpc_client_destroy(&order);

    /* The gateway may carry users, but not claim another principal. */
    rpc_client_t *gateway = client_as("gateway");
    assert_int_equal(echo_call(gateway, "Caller", "usr_asha", "payment", &status, NULL, 0),
                     PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_string_equal(status.reason, "principal_not_allowed");
    rpc_client_destroy(&gateway);
}

/* Calls echo.Each as a batch of two with client 'c', for users 'user_a'
 * and 'user_b' (may be NULL); on OK copies the calls' payloads
 * ("<user>|<request id>|<payload>") into 'a' and 'b'. */
static Paygate__V1__Code each_batch(rpc_client_t *c, const char *user_a, const char *user_b,
                                    rpc_status_t *status, char a[256], char b[256])
{
    Paygate__V1__EchoRequest requests[2] = {PAYGATE__V1__ECHO_REQUEST__INIT,
                                            PAYGATE__V1__ECHO_REQUEST__INIT};
    requests[0].payload.data = (uint8_t *)"a";
    requests[0].payload.len = 1;
    requests[1].payload.data = (uint8_t *)"b";
    requests[1].payload.len = 1;
    rpc_batch_item_t items[2] = {
        {.request = &requests[0].base, .user_id = user_a, .request_id = "req_ba"},
        {.request = &requests[1].base, .user_id = user_b, .request_id = "req_bb"},
    };
    rpc_call_opts_t opts = {.deadline_ms = 3000};
    Paygate__V1__Code code = rpc_client_call_batch(
        c, "echo", "Each", items, 2, &paygate__v1__echo_reply__descriptor, &opts, status);
    char *out[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        out[i][0] = '\0';
        if (items[i].reply == NULL)
            continue;
        const Paygate__V1__EchoReply *echo = (const Paygate__V1__EchoReply *)items[i].reply;
        snprintf(out[i], 256, "%.*s", (int)echo->payload.len, (const char *)echo->payload.data);
        protobuf_c_message_free_unpacked(items[i].reply, NULL);
    }
    return code;
}

/* The user ids of a batch's calls ride in its body, where the broker
 * cannot see them: the batch carries one in its own caller, so that the
 * act_for_users rule still holds, and a worker refuses a batch whose calls
 * carry user ids when the batch itself carries none. */
static void test_batch_user_ids_need_act_for_users(void **state)
{
    (void)state;
    rpc_status_t status;
    char a[256], b[256];
    rpc_client_t *order = client_as("order");
    assert_int_equal(each_batch(order, NULL, "usr_victim", &status, a, b),
                     PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_string_equal(status.reason, "user_identity_not_allowed");
    assert_string_equal(b, "");
    /* without users, a service key may batch */
    assert_int_equal(each_batch(order, NULL, NULL, &status, a, b), PAYGATE__V1__CODE__OK);
    assert_string_equal(a, "|req_ba|a");
    assert_string_equal(b, "|req_bb|b");

    /* Made by hand: user ids in the calls, none on the batch. */
    Paygate__V1__EchoRequest request = PAYGATE__V1__ECHO_REQUEST__INIT;
    uint8_t body[16];
    Paygate__V1__BatchItem item = PAYGATE__V1__BATCH_ITEM__INIT;
    item.body.data = body;
    item.body.len = paygate__v1__echo_request__pack(&request, body);
    item.user_id = (char *)"usr_victim";
    Paygate__V1__BatchItem *items[] = {&item};
    Paygate__V1__BatchRequest batch = PAYGATE__V1__BATCH_REQUEST__INIT;
    batch.n_items = 1;
    batch.items = items;
    uint8_t packed[64];
    assert_true(paygate__v1__batch_request__get_packed_size(&batch) <= sizeof packed);
    size_t len = paygate__v1__batch_request__pack(&batch, packed);
    zmq_msg_t reply;
    zmq_msg_init(&reply);
    rpc_call_opts_t opts = {.deadline_ms = 3000};
    assert_int_equal(
        rpc_client_call_raw(order, "echo", "batch.Each", packed, len, &opts, &reply, &status),
        PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_non_null(strstr(status.message, "user"));
    zmq_msg_close(&reply);
    rpc_client_destroy(&order);

    /* The gateway may carry users: each call acts for its own. */
    rpc_client_t *gateway = client_as("gateway");
    assert_int_equal(each_batch(gateway, "usr_asha", "usr_ravi", &status, a, b),
                     PAYGATE__V1__CODE__OK);
    assert_string_equal(a, "usr_asha|req_ba|a");
    assert_string_equal(b, "usr_ravi|req_bb|b");
    assert_int_equal(each_batch(gateway, NULL, "usr_ravi", &status, a, b), PAYGATE__V1__CODE__OK);
    assert_string_equal(a, "|req_ba|a");
    assert_string_equal(b, "usr_ravi|req_bb|b");
    rpc_client_destroy(&gateway);
}

/* A live instance id stays with its key: another key's READY for it is
 * refused and the instance keeps serving. */
static void test_second_key_cannot_take_over(void **state)
{
    (void)state;
    curve_identity_t test = identity_of("test"); /* may register any service */
    void *s = raw_socket(&test);
    raw_ready(s, "echo", "echo-auth-0");
    expect_refusal(s, "instance_id_taken");
    assert_int_equal(discovery_count(g.admin, "echo", 3000), 1);
    rpc_status_t status;
    char payload[256];
    rpc_client_t *gateway = client_as("gateway");
    assert_int_equal(echo_call(gateway, "Caller", NULL, NULL, &status, payload, sizeof payload),
                     PAYGATE__V1__CODE__OK);
    rpc_client_destroy(&gateway);

    /* The same key under a new connection (a restarted instance) may. */
    curve_identity_t echo = identity_of("echo");
    void *t = raw_socket(&echo);
    raw_ready(t, "echo", "echo-auth-0");
    wire_message_t msg;
    if (raw_recv(t, silence_wait_ms, &msg)) { /* e.g. replaced again by the real worker */
        assert_true(msg.header->status == NULL ||
                    msg.header->status->code != PAYGATE__V1__CODE__PERMISSION_DENIED);
        wire_message_clear(&msg);
    }
    assert_int_equal(discovery_count(g.admin, "echo", 3000), 1);
}

/* Publish and consume only the topics (and groups) in the certificate. */
static void test_bus_topics_per_key(void **state)
{
    (void)state;
    rpc_client_t *payment = client_as("payment");
    rpc_status_t status;
    uint64_t offset = 0;
    bool duplicate = false;
    assert_int_equal(rpc_client_publish(payment, "wallet", "evt-auth-1", "k", "x", 1, 5000, &offset,
                                        &duplicate, &status),
                     PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_string_equal(status.reason, "topic_not_allowed");
    assert_int_equal(rpc_client_publish(payment, "payments", "evt-auth-2", "k", "x", 1, 5000,
                                        &offset, &duplicate, &status),
                     PAYGATE__V1__CODE__OK);
    rpc_client_destroy(&payment);

    curve_identity_t transaction = identity_of("transaction");
    void *a = raw_socket(&transaction);
    raw_subscribe(a, "orders", "transaction");
    expect_refusal(a, "topic_not_allowed");
    void *b = raw_socket(&transaction);
    raw_subscribe(b, "payments", "notification"); /* another service's group */
    expect_refusal(b, "topic_not_allowed");
    void *c = raw_socket(&transaction);
    raw_subscribe(c, "payments", "transaction");
    wire_message_t msg;
    assert_true(raw_recv(c, 5000, &msg));
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__DELIVER);
    assert_string_equal(msg.header->event->event_id, "evt-auth-2");
    wire_message_clear(&msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_happy_path),
        cmocka_unit_test(test_unknown_key_refused),
        cmocka_unit_test(test_plaintext_peer_refused),
        cmocka_unit_test(test_register_only_own_services),
        cmocka_unit_test(test_service_key_cannot_claim_a_user),
        cmocka_unit_test(test_batch_user_ids_need_act_for_users),
        cmocka_unit_test(test_second_key_cannot_take_over),
        cmocka_unit_test(test_bus_topics_per_key),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
