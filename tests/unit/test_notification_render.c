/*
 * Unit tests of the notification service's pure part
 * (services/notification/render.c): the four sentences, rupee formatting
 * in them, refusal of events that cannot be notified, and the JSON form
 * (exact bytes, and back).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "render.h"

/* A valid event of 'type' for 'amount' paise. */
static Paygate__V1__MoneyEvent event_of(Paygate__V1__MoneyEventType type, int64_t amount)
{
    Paygate__V1__MoneyEvent e = PAYGATE__V1__MONEY_EVENT__INIT;
    e.event_id = "payment.succeeded:pay_1";
    e.type = type;
    e.user_id = "usr_1";
    e.amount = amount;
    e.currency = "INR";
    e.order_id = "123";
    e.payment_id = "pay_1";
    e.occurred_at = "2024-05-01T10:00:00.000Z";
    return e;
}

static notification_t render_ok(const Paygate__V1__MoneyEvent *e)
{
    notification_t n;
    const char *problem = "unset";
    assert_true(notification_render(e, 0, &n, &problem));
    assert_null(problem);
    return n;
}

static void test_payment_succeeded(void **state)
{
    (void)state;
    Paygate__V1__MoneyEvent e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, 50000);
    notification_t n = render_ok(&e);
    assert_string_equal(n.message, "Your payment of ₹500 for Order #123 is successful.");
    assert_string_equal(n.type, "payment.succeeded");
    assert_string_equal(n.id, "payment.succeeded:pay_1");
    assert_string_equal(n.order_id, "123");
    assert_string_equal(n.payment_id, "pay_1");
    assert_int_equal(n.amount, 50000);

    e.amount = 50050; /* paise shown when not zero */
    n = render_ok(&e);
    assert_string_equal(n.message, "Your payment of ₹500.50 for Order #123 is successful.");
    e.amount = 10000000; /* Indian grouping */
    n = render_ok(&e);
    assert_string_equal(n.message, "Your payment of ₹1,00,000 for Order #123 is successful.");
}

static void test_payment_failed_reasons(void **state)
{
    (void)state;
    Paygate__V1__MoneyEvent e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_FAILED, 50000);
    e.failure_code = "insufficient_funds";
    notification_t n = render_ok(&e);
    assert_string_equal(n.message,
                        "Your payment of ₹500 for Order #123 failed: insufficient balance.");
    assert_string_equal(n.type, "payment.failed");
    e.failure_code = "order_not_payable";
    n = render_ok(&e);
    assert_string_equal(
        n.message, "Your payment of ₹500 for Order #123 failed: the order can no longer be paid.");
    e.failure_code = "internal_error"; /* never shown as a code */
    n = render_ok(&e);
    assert_string_equal(n.message,
                        "Your payment of ₹500 for Order #123 failed: it could not be completed.");
    e.failure_code = "";
    n = render_ok(&e);
    assert_string_equal(n.message,
                        "Your payment of ₹500 for Order #123 failed: it could not be completed.");
}

static void test_refund_and_topup(void **state)
{
    (void)state;
    Paygate__V1__MoneyEvent e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__REFUND_SUCCEEDED, 20000);
    e.event_id = "refund.succeeded:ref_1";
    e.refund_id = "ref_1";
    notification_t n = render_ok(&e);
    assert_string_equal(n.message, "₹200 has been refunded to your wallet for Order #123.");
    assert_string_equal(n.type, "refund.succeeded");
    assert_string_equal(n.payment_id, "pay_1");

    e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED, 200000);
    e.event_id = "topup.succeeded:top_1";
    e.order_id = "";
    e.payment_id = "";
    e.topup_id = "top_1";
    n = render_ok(&e);
    assert_string_equal(n.message, "₹2,000 has been added to your wallet.");
    assert_string_equal(n.type, "topup.succeeded");
    assert_string_equal(n.order_id, "");
    assert_string_equal(n.payment_id, "");
}

static void test_created_at_falls_back_to_the_bus_time(void **state)
{
    (void)state;
    Paygate__V1__MoneyEvent e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED, 100);
    e.occurred_at = "";
    notification_t n;
    const char *problem;
    assert_true(notification_render(&e, INT64_C(1714557600123), &n, &problem));
    assert_string_equal(n.created_at, "2024-05-01T10:00:00.123Z");
    assert_string_equal(n.message, "₹1 has been added to your wallet.");
}

static void refused(const Paygate__V1__MoneyEvent *e)
{
    notification_t n;
    const char *problem = NULL;
    assert_false(notification_render(e, 0, &n, &problem));
    assert_non_null(problem);
}

static void test_refuses_what_cannot_be_notified(void **state)
{
    (void)state;
    Paygate__V1__MoneyEvent e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, 500);
    e.type = PAYGATE__V1__MONEY_EVENT_TYPE__MONEY_EVENT_TYPE_UNSPECIFIED;
    refused(&e);
    e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, 0);
    refused(&e);
    e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, -500);
    refused(&e);
    e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, 500);
    e.user_id = "usr_1:latest"; /* would reach into another key */
    refused(&e);
    e.user_id = "";
    refused(&e);
    e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, 500);
    e.event_id = "";
    refused(&e);
    e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, 500);
    e.order_id = "";
    refused(&e);
    e.order_id = "ord 1";
    refused(&e);
    e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, 500);
    e.currency = "USD";
    refused(&e);
    assert_true(notification_user_id_valid("usr_5fq3m8k2c1x9h7d4b6n0p2r4"));
    assert_false(notification_user_id_valid("usr_1\n"));
}

static void test_json_fields_exactly(void **state)
{
    (void)state;
    Paygate__V1__MoneyEvent e =
        event_of(PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED, 10000000);
    notification_t n = render_ok(&e);
    char json[notification_json_bytes_max + 1];
    long len = notification_to_json(&n, json, sizeof json);
    const char *expected =
        "{\"id\":\"payment.succeeded:pay_1\",\"user_id\":\"usr_1\",\"type\":\"payment.succeeded\","
        "\"message\":\"Your payment of ₹1,00,000 for Order #123 is successful.\","
        "\"amount\":10000000,\"order_id\":\"123\",\"payment_id\":\"pay_1\","
        "\"created_at\":\"2024-05-01T10:00:00.000Z\"}";
    assert_string_equal(json, expected);
    assert_int_equal(len, (long)strlen(expected));

    notification_t back;
    assert_true(notification_from_json(json, (size_t)len, &back));
    assert_memory_equal(&back, &n, sizeof n);

    char small[32];
    assert_int_equal(notification_to_json(&n, small, sizeof small), -1);
}

static void test_json_round_trip_topup_and_rejects(void **state)
{
    (void)state;
    Paygate__V1__MoneyEvent e = event_of(PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED, 50050);
    e.order_id = "";
    e.payment_id = "";
    notification_t n = render_ok(&e);
    char json[notification_json_bytes_max + 1];
    long len = notification_to_json(&n, json, sizeof json);
    assert_true(len > 0);
    assert_non_null(strstr(json, "\"message\":\"₹500.50 has been added to your wallet.\""));
    assert_non_null(strstr(json, "\"order_id\":\"\",\"payment_id\":\"\""));
    notification_t back;
    assert_true(notification_from_json(json, (size_t)len, &back));
    assert_memory_equal(&back, &n, sizeof n);

    const char *bad[] = {
        "",
        "[]",
        "{}",
        "not json",
        "{\"id\":\"a\",\"user_id\":\"u\",\"type\":\"t\",\"message\":\"m\",\"amount\":\"1\","
        "\"order_id\":\"\",\"payment_id\":\"\",\"created_at\":\"\"}",
        "{\"id\":\"a\",\"user_id\":\"u\",\"type\":\"t\",\"message\":\"m\",\"amount\":1,"
        "\"order_id\":\"\",\"payment_id\":\"\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(notification_from_json(bad[i], strlen(bad[i]), &back));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_payment_succeeded),
        cmocka_unit_test(test_payment_failed_reasons),
        cmocka_unit_test(test_refund_and_topup),
        cmocka_unit_test(test_created_at_falls_back_to_the_bus_time),
        cmocka_unit_test(test_refuses_what_cannot_be_notified),
        cmocka_unit_test(test_json_fields_exactly),
        cmocka_unit_test(test_json_round_trip_topup_and_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
