/*
 * Integration tests of the order service: the real paygate-broker and
 * paygate-order processes on loopback TCP, against the test PostgreSQL
 * that ./dev test starts (PAYGATE_TEST_PG_DSN; without it the test fails,
 * it never skips).
 *
 * Calls go through lib/rpc as the gateway would make them: the caller's
 * user id in the call metadata and principal "gateway" for the public
 * methods, principal "payment" for the internal MarkPaid. Other tests use
 * the same database, so every user and payment id here carries this
 * process's pid, and each test has users of its own.
 *
 * One broker and one paygate-order (4 worker threads, so that concurrent
 * calls really run at once on separate database connections) serve the
 * whole group. Process logs are kept in $PAYGATE_TEST_LOG_DIR.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "order.pb-c.h"
#include "proc.h"
#include "rpc/rpc.h"

enum {
    order_threads = 4,
    order_amount_minor_max = 1000000000, /* the contract's ₹1,00,00,000 */
    race_callers = 10,
    race_rounds = 3,
    start_timeout_ms = 30000,
    call_deadline_ms = 10000,
    body_bytes_max = 4096,
};

typedef struct {
    const char *dsn;
    char endpoint[64];
    char env_endpoint[96];
    char env_dsn[1100];
    proc_t broker;
    proc_t order;
    rpc_client_t *client;
} fixture_t;

static fixture_t g;

/* "usr_test_<pid>_<suffix>" into 'out' (64 bytes): a user of this run. */
static void user_id(char out[64], const char *suffix)
{
    snprintf(out, 64, "usr_test_%d_%s", (int)getpid(), suffix);
}

/* "pay_test_<pid>_<suffix>" into 'out' (64 bytes): a payment of this run. */
static void payment_id(char out[64], const char *suffix)
{
    snprintf(out, 64, "pay_test_%d_%s", (int)getpid(), suffix);
}

static int group_setup(void **state)
{
    (void)state;
    int port = free_tcp_port();
    assert_true(port > 0);
    snprintf(g.endpoint, sizeof g.endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(g.env_endpoint, sizeof g.env_endpoint, "PAYGATE_BROKER_ENDPOINT=%s", g.endpoint);
    snprintf(g.env_dsn, sizeof g.env_dsn, "PAYGATE_PG_DSN=%s", g.dsn);
    const char *broker_env[] = {g.env_endpoint, NULL};
    assert_true(proc_start(&g.broker, "order-broker", PAYGATE_BROKER_BIN, broker_env));
    char threads[64];
    snprintf(threads, sizeof threads, "PAYGATE_ORDER_THREADS=%d", order_threads);
    const char *order_env[] = {g.env_endpoint, g.env_dsn, threads, "PAYGATE_LOG_LEVEL=info", NULL};
    assert_true(proc_start(&g.order, "order-service", PAYGATE_ORDER_BIN, order_env));
    g.client = rpc_client_new(NULL, g.endpoint);
    assert_non_null(g.client);
    /* Ready when every instance is registered (after its migration). */
    if (discovery_wait(g.client, "order", order_threads, start_timeout_ms) < 0)
        fail_msg("paygate-order did not register %d instances within %d ms; see %s", order_threads,
                 start_timeout_ms, g.order.log_path);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    rpc_client_destroy(&g.client);
    /* A clean drain and exit is part of the contract: check it. */
    bool order_clean = proc_stop(&g.order, 10000);
    bool broker_clean = proc_stop(&g.broker, 10000);
    if (!order_clean || !broker_clean) {
        fprintf(stderr, "test_order: paygate-order %s, broker %s on SIGTERM\n",
                order_clean ? "stopped" : "did NOT stop cleanly",
                broker_clean ? "stopped" : "did NOT stop cleanly");
        return -1;
    }
    return 0;
}

/* Calls order.'method' as 'user' (may be NULL) with 'principal' (may be
 * NULL). Returns the code; on OK '*reply' is the decoded reply (free with
 * protobuf_c_message_free_unpacked). 'status' gets the status. */
static Paygate__V1__Code call(const char *method, const ProtobufCMessage *request,
                              const ProtobufCMessageDescriptor *reply_desc,
                              ProtobufCMessage **reply, const char *user, const char *principal,
                              rpc_status_t *status)
{
    rpc_call_opts_t opts = {
        .deadline_ms = call_deadline_ms, .user_id = user, .principal = principal};
    *reply = NULL;
    return rpc_client_call(g.client, "order", method, request, reply_desc, reply, &opts, status);
}

/* Asserts that 'code'/'status' is the failure 'expected' with 'reason'. */
static void assert_failure(Paygate__V1__Code code, const rpc_status_t *status,
                           Paygate__V1__Code expected, const char *reason)
{
    if (code != expected || strcmp(status->reason, reason) != 0)
        fail_msg("expected %d/%s, got %d/%s (%s)", (int)expected, reason, (int)code, status->reason,
                 status->message);
}

/* Creates an order of 'amount' for 'user'; returns it (caller frees). */
static Paygate__V1__Order *create_order(const char *user, int64_t amount, const char *receipt,
                                        const char *description)
{
    Paygate__V1__CreateOrderRequest request = PAYGATE__V1__CREATE_ORDER_REQUEST__INIT;
    request.amount = amount;
    request.receipt = (char *)(receipt ? receipt : "");
    request.description = (char *)(description ? description : "");
    ProtobufCMessage *reply;
    rpc_status_t status;
    Paygate__V1__Code code = call("Create", &request.base, &paygate__v1__order__descriptor, &reply,
                                  user, "gateway", &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("Create answered %d/%s (%s)", (int)code, status.reason, status.message);
    return (Paygate__V1__Order *)reply;
}

/* Tries Create with 'request' as 'user'; returns the code (reply freed). */
static Paygate__V1__Code try_create(const Paygate__V1__CreateOrderRequest *request,
                                    const char *user, rpc_status_t *status)
{
    ProtobufCMessage *reply;
    Paygate__V1__Code code = call("Create", &request->base, &paygate__v1__order__descriptor, &reply,
                                  user, "gateway", status);
    if (reply != NULL)
        protobuf_c_message_free_unpacked(reply, NULL);
    return code;
}

/* Calls 'method' ("Get" or "Cancel") on order 'id' as 'user'. On OK the
 * order is returned (caller frees), otherwise NULL. */
static Paygate__V1__Order *by_id(const char *method, const char *id, const char *user,
                                 Paygate__V1__Code *code, rpc_status_t *status)
{
    ProtobufCMessage *reply;
    if (strcmp(method, "Get") == 0) {
        Paygate__V1__GetOrderRequest request = PAYGATE__V1__GET_ORDER_REQUEST__INIT;
        request.id = (char *)id;
        *code = call(method, &request.base, &paygate__v1__order__descriptor, &reply, user,
                     "gateway", status);
    } else {
        Paygate__V1__CancelOrderRequest request = PAYGATE__V1__CANCEL_ORDER_REQUEST__INIT;
        request.id = (char *)id;
        *code = call(method, &request.base, &paygate__v1__order__descriptor, &reply, user,
                     "gateway", status);
    }
    return (Paygate__V1__Order *)reply;
}

/* MarkPaid for 'order_id' of 'user' with 'payment' as 'principal'. */
static Paygate__V1__Order *mark_paid(const char *order_id, const char *payment, const char *user,
                                     const char *principal, Paygate__V1__Code *code,
                                     rpc_status_t *status)
{
    Paygate__V1__MarkPaidRequest request = PAYGATE__V1__MARK_PAID_REQUEST__INIT;
    request.order_id = (char *)order_id;
    request.payment_id = (char *)payment;
    request.user_id = (char *)user;
    ProtobufCMessage *reply;
    *code = call("MarkPaid", &request.base, &paygate__v1__order__descriptor, &reply, NULL,
                 principal, status);
    return (Paygate__V1__Order *)reply;
}

/* Lists 'user''s orders; returns the page (caller frees) or NULL. */
static Paygate__V1__OrderList *list_orders(const char *user, int32_t limit, const char *after,
                                           Paygate__V1__Code *code, rpc_status_t *status)
{
    Paygate__V1__ListOrdersRequest request = PAYGATE__V1__LIST_ORDERS_REQUEST__INIT;
    request.limit = limit;
    request.starting_after = (char *)(after ? after : "");
    ProtobufCMessage *reply;
    *code = call("List", &request.base, &paygate__v1__order_list__descriptor, &reply, user,
                 "gateway", status);
    return (Paygate__V1__OrderList *)reply;
}

/* True when 'text' looks like "2024-01-31T12:34:56.789Z". */
static bool rfc3339_utc(const char *text)
{
    return text != NULL && strlen(text) == 24 && text[4] == '-' && text[10] == 'T' &&
           text[19] == '.' && text[23] == 'Z';
}

/* ---- tests ----------------------------------------------------------- */

/* Create answers a PENDING order of the caller; Get gives it back. */
static void test_create_and_get(void **state)
{
    (void)state;
    char user[64];
    user_id(user, "create");
    Paygate__V1__Order *order = create_order(user, 50050, "rcpt_001", "Chai ☕ and samosa");
    assert_true(strncmp(order->id, "ord_", 4) == 0);
    assert_string_equal(order->user_id, user);
    assert_int_equal(order->amount, 50050);
    assert_string_equal(order->currency, "INR");
    assert_int_equal(order->status, PAYGATE__V1__ORDER_STATUS__PENDING);
    assert_string_equal(order->receipt, "rcpt_001");
    assert_string_equal(order->description, "Chai ☕ and samosa");
    assert_string_equal(order->payment_id, "");
    assert_true(rfc3339_utc(order->created_at));
    assert_true(rfc3339_utc(order->updated_at));

    Paygate__V1__Code code;
    rpc_status_t status;
    Paygate__V1__Order *got = by_id("Get", order->id, user, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_string_equal(got->id, order->id);
    assert_string_equal(got->user_id, user);
    assert_int_equal(got->amount, 50050);
    assert_int_equal(got->status, PAYGATE__V1__ORDER_STATUS__PENDING);
    assert_string_equal(got->receipt, order->receipt);
    assert_string_equal(got->description, order->description);
    assert_string_equal(got->created_at, order->created_at);
    assert_string_equal(got->updated_at, order->updated_at);
    protobuf_c_message_free_unpacked(&got->base, NULL);
    protobuf_c_message_free_unpacked(&order->base, NULL);

    /* "INR" explicitly, the largest amount, no receipt or description. */
    Paygate__V1__CreateOrderRequest request = PAYGATE__V1__CREATE_ORDER_REQUEST__INIT;
    request.amount = order_amount_minor_max;
    request.currency = (char *)"INR";
    ProtobufCMessage *reply;
    assert_int_equal(call("Create", &request.base, &paygate__v1__order__descriptor, &reply, user,
                          "gateway", &status),
                     PAYGATE__V1__CODE__OK);
    order = (Paygate__V1__Order *)reply;
    assert_int_equal(order->amount, order_amount_minor_max);
    assert_string_equal(order->currency, "INR");
    assert_string_equal(order->receipt, "");
    assert_string_equal(order->description, "");
    protobuf_c_message_free_unpacked(reply, NULL);

    /* The smallest amount: one paisa. */
    order = create_order(user, 1, NULL, NULL);
    assert_int_equal(order->amount, 1);
    protobuf_c_message_free_unpacked(&order->base, NULL);
}

/* Every invalid field is refused with its own reason; nothing without a
 * caller. */
static void test_create_validation(void **state)
{
    (void)state;
    char user[64];
    user_id(user, "validation");
    rpc_status_t status;
    Paygate__V1__CreateOrderRequest request = PAYGATE__V1__CREATE_ORDER_REQUEST__INIT;

    const int64_t bad_amounts[] = {0,         -1,       -100, order_amount_minor_max + INT64_C(1),
                                   INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof bad_amounts / sizeof bad_amounts[0]; i++) {
        request.amount = bad_amounts[i];
        assert_failure(try_create(&request, user, &status), &status,
                       PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_amount");
    }
    request.amount = 100;

    const char *bad_currencies[] = {"USD", "inr", "INR ", "EUR"};
    for (size_t i = 0; i < sizeof bad_currencies / sizeof bad_currencies[0]; i++) {
        request.currency = (char *)bad_currencies[i];
        assert_failure(try_create(&request, user, &status), &status,
                       PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_currency");
    }
    request.currency = (char *)"";

    char text[1200];
    memset(text, 'r', 41);
    text[41] = '\0';
    request.receipt = text;
    assert_failure(try_create(&request, user, &status), &status,
                   PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_receipt");
    text[40] = '\0'; /* 40 characters is the limit, and fine */
    assert_int_equal(try_create(&request, user, &status), PAYGATE__V1__CODE__OK);
    text[0] = '\0';
    for (int i = 0; i < 40; i++) /* 40 characters of two bytes each: fine */
        strcat(text, "é");
    assert_int_equal(try_create(&request, user, &status), PAYGATE__V1__CODE__OK);
    request.receipt = (char *)"line\nbreak";
    assert_failure(try_create(&request, user, &status), &status,
                   PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_receipt");
    request.receipt = (char *)"";

    memset(text, 'd', 256);
    text[256] = '\0';
    request.description = text;
    assert_failure(try_create(&request, user, &status), &status,
                   PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_description");
    text[255] = '\0';
    assert_int_equal(try_create(&request, user, &status), PAYGATE__V1__CODE__OK);
    text[0] = '\0';
    for (int i = 0; i < 255; i++) /* 255 characters of three bytes: fine */
        strcat(text, "₹");
    assert_int_equal(try_create(&request, user, &status), PAYGATE__V1__CODE__OK);
    strcat(text, "₹"); /* 256 */
    assert_failure(try_create(&request, user, &status), &status,
                   PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_description");
    const char *bad_descriptions[] = {
        "tab\there",
        "bell\a",
        "del\x7f",
        "\xff invalid",
        "cut \xe2\x82",
        "overlong \xc0\xaf",
        "surrogate \xed\xa0\x80",
        "c1 \xc2\x85",
    };
    for (size_t i = 0; i < sizeof bad_descriptions / sizeof bad_descriptions[0]; i++) {
        request.description = (char *)bad_descriptions[i];
        assert_failure(try_create(&request, user, &status), &status,
                       PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_description");
    }
    request.description = (char *)"";

    /* No caller: no owner. */
    assert_failure(try_create(&request, NULL, &status), &status, PAYGATE__V1__CODE__UNAUTHENTICATED,
                   "unauthenticated");

    /* None of the refused calls left an order behind: the 4 accepted
     * (receipt and description at their limits) are all there is. */
    Paygate__V1__Code code;
    Paygate__V1__OrderList *list = list_orders(user, 100, NULL, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    size_t orders = list->n_data;
    protobuf_c_message_free_unpacked(&list->base, NULL);
    assert_int_equal(orders, 4);
}

/* Another user's order is NOT_FOUND for Get, Cancel and MarkPaid, and
 * stays untouched; unknown and malformed ids are NOT_FOUND too. */
static void test_other_users_order_not_found(void **state)
{
    (void)state;
    char owner[64], other[64], payment[64];
    user_id(owner, "owner");
    user_id(other, "other");
    payment_id(payment, "other");
    Paygate__V1__Order *order = create_order(owner, 1000, "mine", NULL);
    Paygate__V1__Code code;
    rpc_status_t status;

    Paygate__V1__Order *got = by_id("Get", order->id, other, &code, &status);
    assert_null(got);
    assert_failure(code, &status, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    got = by_id("Cancel", order->id, other, &code, &status);
    assert_null(got);
    assert_failure(code, &status, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    got = mark_paid(order->id, payment, other, "payment", &code, &status);
    assert_null(got);
    assert_failure(code, &status, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");

    Paygate__V1__OrderList *list = list_orders(other, 10, NULL, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(list->n_data, 0);
    assert_false(list->has_more);
    protobuf_c_message_free_unpacked(&list->base, NULL);

    /* still the owner's, still PENDING */
    got = by_id("Get", order->id, owner, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(got->status, PAYGATE__V1__ORDER_STATUS__PENDING);
    assert_string_equal(got->updated_at, order->updated_at);
    protobuf_c_message_free_unpacked(&got->base, NULL);

    const char *unknown[] = {"ord_0000000000000000000000zz", "ord_",       "", "pay_x",
                             "ord_ZZZZZZZZZZZZZZZZZZZZZZZZ", "' OR 1=1 --"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        assert_null(by_id("Get", unknown[i], owner, &code, &status));
        assert_failure(code, &status, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
        assert_null(by_id("Cancel", unknown[i], owner, &code, &status));
        assert_failure(code, &status, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    }

    /* Without a caller nothing is answered. */
    assert_null(by_id("Get", order->id, NULL, &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated");
    assert_null(list_orders(NULL, 10, NULL, &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated");
    protobuf_c_message_free_unpacked(&order->base, NULL);
}

/* 5 orders, pages of 2: newest first, has_more true, true, false, every
 * order exactly once; other users' orders never appear. */
static void test_list_pagination(void **state)
{
    (void)state;
    char user[64], other[64];
    user_id(user, "pages");
    user_id(other, "pages_other");
    char ids[5][64];
    for (int i = 0; i < 5; i++) {
        char receipt[16];
        snprintf(receipt, sizeof receipt, "r%d", i);
        Paygate__V1__Order *order = create_order(user, 100 + i, receipt, NULL);
        snprintf(ids[i], sizeof ids[i], "%s", order->id);
        protobuf_c_message_free_unpacked(&order->base, NULL);
        /* interleave another user's orders */
        order = create_order(other, 7, NULL, NULL);
        protobuf_c_message_free_unpacked(&order->base, NULL);
    }

    const bool expect_more[] = {true, true, false};
    const size_t expect_count[] = {2, 2, 1};
    int next = 4; /* newest first: ids[4], ids[3], ... */
    char after[64] = "";
    for (int page = 0; page < 3; page++) {
        Paygate__V1__Code code;
        rpc_status_t status;
        Paygate__V1__OrderList *list = list_orders(user, 2, after, &code, &status);
        if (code != PAYGATE__V1__CODE__OK)
            fail_msg("page %d: %d/%s %s", page, (int)code, status.reason, status.message);
        assert_int_equal(list->n_data, expect_count[page]);
        assert_int_equal(list->has_more, expect_more[page]);
        for (size_t i = 0; i < list->n_data; i++, next--) {
            assert_string_equal(list->data[i]->id, ids[next]);
            assert_string_equal(list->data[i]->user_id, user);
            assert_int_equal(list->data[i]->amount, 100 + next);
            assert_int_equal(list->data[i]->status, PAYGATE__V1__ORDER_STATUS__PENDING);
        }
        snprintf(after, sizeof after, "%s", list->data[list->n_data - 1]->id);
        protobuf_c_message_free_unpacked(&list->base, NULL);
    }
    assert_int_equal(next, -1); /* all five, no gaps, no duplicates */

    /* after the oldest: an empty last page */
    Paygate__V1__Code code;
    rpc_status_t status;
    Paygate__V1__OrderList *list = list_orders(user, 2, ids[0], &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(list->n_data, 0);
    assert_false(list->has_more);
    protobuf_c_message_free_unpacked(&list->base, NULL);

    /* one page holding everything */
    list = list_orders(user, 5, NULL, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(list->n_data, 5);
    assert_false(list->has_more);
    protobuf_c_message_free_unpacked(&list->base, NULL);
    list = list_orders(user, 4, NULL, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(list->n_data, 4);
    assert_true(list->has_more);
    protobuf_c_message_free_unpacked(&list->base, NULL);
}

/* limit 0 means 10; limits outside 0..100 and unknown cursors are
 * refused. */
static void test_list_limits_and_cursors(void **state)
{
    (void)state;
    char user[64], other[64];
    user_id(user, "limits");
    user_id(other, "limits_other");
    for (int i = 0; i < 11; i++) {
        Paygate__V1__Order *order = create_order(user, 500, NULL, NULL);
        protobuf_c_message_free_unpacked(&order->base, NULL);
    }
    Paygate__V1__Code code;
    rpc_status_t status;
    Paygate__V1__OrderList *list = list_orders(user, 0, NULL, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(list->n_data, 10);
    assert_true(list->has_more);
    protobuf_c_message_free_unpacked(&list->base, NULL);

    list = list_orders(user, 100, NULL, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(list->n_data, 11);
    assert_false(list->has_more);
    protobuf_c_message_free_unpacked(&list->base, NULL);

    const int32_t bad_limits[] = {101, -1, 1000, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof bad_limits / sizeof bad_limits[0]; i++) {
        assert_null(list_orders(user, bad_limits[i], NULL, &code, &status));
        assert_failure(code, &status, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_limit");
    }

    /* cursors: unknown, malformed, and another user's order */
    Paygate__V1__Order *foreign = create_order(other, 500, NULL, NULL);
    const char *bad_cursors[] = {"ord_0000000000000000000000zz", "nope", "ord_", foreign->id};
    for (size_t i = 0; i < sizeof bad_cursors / sizeof bad_cursors[0]; i++) {
        assert_null(list_orders(user, 10, bad_cursors[i], &code, &status));
        assert_failure(code, &status, PAYGATE__V1__CODE__INVALID_ARGUMENT,
                       "invalid_starting_after");
    }
    protobuf_c_message_free_unpacked(&foreign->base, NULL);
}

/* Cancel: PENDING -> CANCELLED, and again answers the cancelled order. */
static void test_cancel_pending_twice(void **state)
{
    (void)state;
    char user[64];
    user_id(user, "cancel");
    Paygate__V1__Order *order = create_order(user, 2500, NULL, "to cancel");
    Paygate__V1__Code code;
    rpc_status_t status;
    Paygate__V1__Order *cancelled = by_id("Cancel", order->id, user, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_string_equal(cancelled->id, order->id);
    assert_int_equal(cancelled->status, PAYGATE__V1__ORDER_STATUS__CANCELLED);
    assert_string_equal(cancelled->payment_id, "");
    assert_int_equal(cancelled->amount, 2500);
    assert_string_equal(cancelled->created_at, order->created_at);
    assert_true(strcmp(cancelled->updated_at, order->created_at) >= 0);

    Paygate__V1__Order *again = by_id("Cancel", order->id, user, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(again->status, PAYGATE__V1__ORDER_STATUS__CANCELLED);
    assert_string_equal(again->updated_at, cancelled->updated_at); /* nothing changed */

    Paygate__V1__Order *got = by_id("Get", order->id, user, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(got->status, PAYGATE__V1__ORDER_STATUS__CANCELLED);
    protobuf_c_message_free_unpacked(&got->base, NULL);
    protobuf_c_message_free_unpacked(&again->base, NULL);
    protobuf_c_message_free_unpacked(&cancelled->base, NULL);
    protobuf_c_message_free_unpacked(&order->base, NULL);
}

/* MarkPaid: internal only; PENDING -> COMPLETED; the same payment again
 * answers the same order; another payment, or a cancelled order, is
 * order_not_payable; a payment completes one order only. */
static void test_mark_paid(void **state)
{
    (void)state;
    char user[64], pay1[64], pay2[64], pay3[64];
    user_id(user, "markpaid");
    payment_id(pay1, "mp1");
    payment_id(pay2, "mp2");
    payment_id(pay3, "mp3");
    Paygate__V1__Order *order = create_order(user, 99900, "inv-7", NULL);
    Paygate__V1__Code code;
    rpc_status_t status;

    assert_null(mark_paid(order->id, pay1, user, "gateway", &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__PERMISSION_DENIED, "internal_only");
    assert_null(mark_paid(order->id, "", user, "payment", &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_payment_id");
    assert_null(mark_paid(order->id, pay1, "", "payment", &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_user_id");
    assert_null(mark_paid("ord_0000000000000000000000zz", pay1, user, "payment", &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");

    Paygate__V1__Order *paid = mark_paid(order->id, pay1, user, "payment", &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_string_equal(paid->id, order->id);
    assert_int_equal(paid->status, PAYGATE__V1__ORDER_STATUS__COMPLETED);
    assert_string_equal(paid->payment_id, pay1);
    assert_int_equal(paid->amount, 99900);
    assert_string_equal(paid->receipt, "inv-7");

    Paygate__V1__Order *again = mark_paid(order->id, pay1, user, "payment", &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(again->status, PAYGATE__V1__ORDER_STATUS__COMPLETED);
    assert_string_equal(again->payment_id, pay1);
    assert_string_equal(again->updated_at, paid->updated_at);
    protobuf_c_message_free_unpacked(&again->base, NULL);

    assert_null(mark_paid(order->id, pay2, user, "payment", &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");

    Paygate__V1__Order *got = by_id("Get", order->id, user, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(got->status, PAYGATE__V1__ORDER_STATUS__COMPLETED);
    assert_string_equal(got->payment_id, pay1);
    protobuf_c_message_free_unpacked(&got->base, NULL);

    /* a cancelled order cannot be paid */
    Paygate__V1__Order *second = create_order(user, 100, NULL, NULL);
    Paygate__V1__Order *cancelled = by_id("Cancel", second->id, user, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    protobuf_c_message_free_unpacked(&cancelled->base, NULL);
    assert_null(mark_paid(second->id, pay3, user, "payment", &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");

    /* a payment that completed one order cannot complete another */
    Paygate__V1__Order *third = create_order(user, 100, NULL, NULL);
    assert_null(mark_paid(third->id, pay1, user, "payment", &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");
    got = by_id("Get", third->id, user, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(got->status, PAYGATE__V1__ORDER_STATUS__PENDING);
    protobuf_c_message_free_unpacked(&got->base, NULL);

    protobuf_c_message_free_unpacked(&third->base, NULL);
    protobuf_c_message_free_unpacked(&second->base, NULL);
    protobuf_c_message_free_unpacked(&paid->base, NULL);
    protobuf_c_message_free_unpacked(&order->base, NULL);
}

/* A completed order cannot be cancelled. */
static void test_cancel_completed_refused(void **state)
{
    (void)state;
    char user[64], payment[64];
    user_id(user, "cancel_completed");
    payment_id(payment, "cc");
    Paygate__V1__Order *order = create_order(user, 4200, NULL, NULL);
    Paygate__V1__Code code;
    rpc_status_t status;
    Paygate__V1__Order *paid = mark_paid(order->id, payment, user, "payment", &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_null(by_id("Cancel", order->id, user, &code, &status));
    assert_failure(code, &status, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_cancellable");
    Paygate__V1__Order *got = by_id("Get", order->id, user, &code, &status);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_int_equal(got->status, PAYGATE__V1__ORDER_STATUS__COMPLETED);
    assert_string_equal(got->payment_id, payment);
    protobuf_c_message_free_unpacked(&got->base, NULL);
    protobuf_c_message_free_unpacked(&paid->base, NULL);
    protobuf_c_message_free_unpacked(&order->base, NULL);
}

/* Sends MarkPaid without waiting; returns the correlation id. */
static uint64_t mark_paid_send(const char *order_id, const char *payment, const char *user)
{
    Paygate__V1__MarkPaidRequest request = PAYGATE__V1__MARK_PAID_REQUEST__INIT;
    request.order_id = (char *)order_id;
    request.payment_id = (char *)payment;
    request.user_id = (char *)user;
    uint8_t body[body_bytes_max];
    assert_true(paygate__v1__mark_paid_request__get_packed_size(&request) <= sizeof body);
    size_t len = paygate__v1__mark_paid_request__pack(&request, body);
    rpc_call_opts_t opts = {.deadline_ms = call_deadline_ms, .principal = "payment"};
    uint64_t id = 0;
    rpc_status_t status;
    assert_int_equal(rpc_client_send(g.client, "order", "MarkPaid", body, len, &opts, &id, &status),
                     0);
    return id;
}

/* Sends Cancel without waiting; returns the correlation id. */
static uint64_t cancel_send(const char *order_id, const char *user)
{
    Paygate__V1__CancelOrderRequest request = PAYGATE__V1__CANCEL_ORDER_REQUEST__INIT;
    request.id = (char *)order_id;
    uint8_t body[body_bytes_max];
    size_t len = paygate__v1__cancel_order_request__pack(&request, body);
    rpc_call_opts_t opts = {
        .deadline_ms = call_deadline_ms, .user_id = user, .principal = "gateway"};
    uint64_t id = 0;
    rpc_status_t status;
    assert_int_equal(rpc_client_send(g.client, "order", "Cancel", body, len, &opts, &id, &status),
                     0);
    return id;
}

/* 10 MarkPaid calls with different payment ids on one order at once:
 * exactly one wins, the others are order_not_payable, and the order
 * holds the winner's payment id. Several rounds. */
static void test_mark_paid_race_one_winner(void **state)
{
    (void)state;
    char user[64];
    user_id(user, "race");
    for (int round = 0; round < race_rounds; round++) {
        Paygate__V1__Order *order = create_order(user, 12345, NULL, NULL);
        char payments[race_callers][64];
        uint64_t sent[race_callers];
        for (int i = 0; i < race_callers; i++) {
            char suffix[32];
            snprintf(suffix, sizeof suffix, "race%d_%d", round, i);
            payment_id(payments[i], suffix);
            sent[i] = mark_paid_send(order->id, payments[i], user);
        }
        int ok = 0, not_payable = 0, winner = -1;
        for (int n = 0; n < race_callers; n++) {
            uint64_t got = 0;
            rpc_status_t status;
            zmq_msg_t body;
            zmq_msg_init(&body);
            assert_int_equal(
                rpc_client_recv(g.client, call_deadline_ms + 2000, &got, &body, &status), 1);
            int who = -1;
            for (int i = 0; i < race_callers; i++)
                who = sent[i] == got ? i : who;
            assert_true(who >= 0);
            if (status.code == PAYGATE__V1__CODE__OK) {
                Paygate__V1__Order *paid =
                    paygate__v1__order__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
                assert_non_null(paid);
                assert_int_equal(paid->status, PAYGATE__V1__ORDER_STATUS__COMPLETED);
                assert_string_equal(paid->payment_id, payments[who]);
                paygate__v1__order__free_unpacked(paid, NULL);
                ok++;
                winner = who;
            } else if (status.code == PAYGATE__V1__CODE__FAILED_PRECONDITION &&
                       strcmp(status.reason, "order_not_payable") == 0) {
                not_payable++;
            } else {
                fail_msg("racing MarkPaid answered %d/%s (%s)", (int)status.code, status.reason,
                         status.message);
            }
            zmq_msg_close(&body);
        }
        assert_int_equal(ok, 1);
        assert_int_equal(not_payable, race_callers - 1);
        Paygate__V1__Code code;
        rpc_status_t status;
        Paygate__V1__Order *got = by_id("Get", order->id, user, &code, &status);
        assert_int_equal(code, PAYGATE__V1__CODE__OK);
        assert_int_equal(got->status, PAYGATE__V1__ORDER_STATUS__COMPLETED);
        assert_string_equal(got->payment_id, payments[winner]);
        protobuf_c_message_free_unpacked(&got->base, NULL);
        protobuf_c_message_free_unpacked(&order->base, NULL);
    }
}

/* Cancel and MarkPaid racing on one order: exactly one of them takes
 * effect, and the loser's answer agrees with the final state. */
static void test_cancel_and_mark_paid_race(void **state)
{
    (void)state;
    char user[64];
    user_id(user, "cancel_race");
    for (int round = 0; round < race_rounds; round++) {
        Paygate__V1__Order *order = create_order(user, 777, NULL, NULL);
        char payment[64], suffix[32];
        snprintf(suffix, sizeof suffix, "cancel_race%d", round);
        payment_id(payment, suffix);
        uint64_t paid_id = mark_paid_send(order->id, payment, user);
        uint64_t cancel_id = cancel_send(order->id, user);
        Paygate__V1__Code paid_code = PAYGATE__V1__CODE__INTERNAL;
        Paygate__V1__Code cancel_code = PAYGATE__V1__CODE__INTERNAL;
        for (int n = 0; n < 2; n++) {
            uint64_t got = 0;
            rpc_status_t status;
            assert_int_equal(
                rpc_client_recv(g.client, call_deadline_ms + 2000, &got, NULL, &status), 1);
            if (got == paid_id)
                paid_code = status.code;
            else if (got == cancel_id)
                cancel_code = status.code;
            else
                fail_msg("unexpected reply %llu", (unsigned long long)got);
            assert_true(status.code == PAYGATE__V1__CODE__OK ||
                        strcmp(status.reason, "order_not_payable") == 0 ||
                        strcmp(status.reason, "order_not_cancellable") == 0);
        }
        assert_true((paid_code == PAYGATE__V1__CODE__OK) != (cancel_code == PAYGATE__V1__CODE__OK));
        Paygate__V1__Code code;
        rpc_status_t status;
        Paygate__V1__Order *got = by_id("Get", order->id, user, &code, &status);
        assert_int_equal(code, PAYGATE__V1__CODE__OK);
        assert_int_equal(got->status, paid_code == PAYGATE__V1__CODE__OK
                                          ? PAYGATE__V1__ORDER_STATUS__COMPLETED
                                          : PAYGATE__V1__ORDER_STATUS__CANCELLED);
        protobuf_c_message_free_unpacked(&got->base, NULL);
        protobuf_c_message_free_unpacked(&order->base, NULL);
    }
}

/* A bad setting, or no database, stops paygate-order at start-up. */
static void test_bad_config_refused(void **state)
{
    (void)state;
    proc_t p;
    const char *env[] = {g.env_endpoint, g.env_dsn, "PAYGATE_ORDER_THREADS=lots", NULL};
    assert_true(proc_start(&p, "order-badconfig", PAYGATE_ORDER_BIN, env));
    assert_true(proc_wait(&p, 10000));
    assert_true(WIFEXITED(p.exit_status) && WEXITSTATUS(p.exit_status) == 2);

    const char *no_dsn[] = {g.env_endpoint, "PAYGATE_PG_DSN=", NULL};
    assert_true(proc_start(&p, "order-nodsn", PAYGATE_ORDER_BIN, no_dsn));
    assert_true(proc_wait(&p, 10000));
    assert_true(WIFEXITED(p.exit_status) && WEXITSTATUS(p.exit_status) == 2);
}

int main(void)
{
    g.dsn = getenv("PAYGATE_TEST_PG_DSN");
    if (g.dsn == NULL || *g.dsn == '\0') {
        fprintf(stderr, "test_order: FAIL: PAYGATE_TEST_PG_DSN is not set. These tests need the "
                        "test PostgreSQL: run them with ./dev test (e.g. ./dev test -R order).\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_get),
        cmocka_unit_test(test_create_validation),
        cmocka_unit_test(test_other_users_order_not_found),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_list_limits_and_cursors),
        cmocka_unit_test(test_cancel_pending_twice),
        cmocka_unit_test(test_mark_paid),
        cmocka_unit_test(test_cancel_completed_refused),
        cmocka_unit_test(test_mark_paid_race_one_winner),
        cmocka_unit_test(test_cancel_and_mark_paid_race),
        cmocka_unit_test(test_bad_config_refused),
    };
    return cmocka_run_group_tests_name("order integration", tests, group_setup, group_teardown);
}
