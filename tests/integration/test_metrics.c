/*
 * Metrics of the whole system, scraped during a real run: the gateway
 * (GET /metrics on its port), the broker (PAYGATE_BROKER_METRICS_PORT)
 * and every service (PAYGATE_METRICS_PORT), all as processes, with
 * PostgreSQL (a scratch database) and Redis.
 *
 * Every endpoint is scraped, then a known amount of traffic is driven:
 * register, login, a top-up, two orders, a payment that succeeds, one
 * refused for insufficient funds, and a request for an unknown path.
 * After the consumers caught up (the broker's lag back to 0), every
 * endpoint is scraped again and the counters must have moved exactly as
 * that traffic says: the gateway's requests by route template and status,
 * the payment service's payments by outcome, RPCs handled by method and
 * code in user, order and payment, events published by the outboxes,
 * appended by the broker and consumed by transaction and notification,
 * and the broker's routed requests equal to the requests all services
 * handled.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "clock/clock.h"
#include "http_client.h"
#include "proc.h"
#include "system.h"

static const char jwt_secret[] = "metrics-test-secret-0123456789abcdefghijklmnop";
static const char password[] = "Metrics-Passw0rd-5d1e";

enum { procs_max = system_processes, id_bytes = 64, catch_up_ms = 30000 };

enum {
    p_broker = system_broker,
    p_user = system_user,
    p_order = system_order,
    p_payment = system_payment,
    p_transaction = system_transaction,
    p_notification = system_notification,
    p_gateway = system_gateway
};

static struct {
    system_t *system;
    int metrics_ports[procs_max]; /* the gateway's is its HTTP port */
    int http_port;
} sys;

/* One scrape of every process: the text of each /metrics. */
typedef struct {
    char *text[procs_max];
} scrape_t;

/* Worker instances of each service in this run, as discovery and the
 * broker's metrics must count them. */
enum { service_threads = 3 };

/* ---- the system ----------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    static const char *const env[] = {"PAYGATE_BROKER_METRICS_INTERVAL_MS=100", NULL};
    system_config_t config = {.name = "metrics",
                              .jwt_secret = jwt_secret,
                              .metrics = true,
                              .env = env,
                              .threads = {[system_user] = service_threads,
                                          [system_order] = service_threads,
                                          [system_payment] = service_threads,
                                          [system_transaction] = service_threads,
                                          [system_notification] = service_threads}};
    sys.system = system_new(&config);
    if (sys.system == NULL)
        return -1;
    sys.http_port = system_gateway_port(sys.system);
    for (int i = 0; i < procs_max; i++)
        sys.metrics_ports[i] = system_metrics_port(sys.system, (system_process_t)i);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    system_destroy(&sys.system);
    return 0;
}

/* ---- scraping ------------------------------------------------------------- */

/* GET /metrics of process 'which': must be 200 in the text format. Returns
 * the text (malloc'd, starting with a newline so that every sample line
 * is preceded by one). */
static char *scrape_one(int which)
{
    http_response_t r;
    if (!http_request(&r, sys.metrics_ports[which], "GET", "/metrics", NULL, NULL))
        fail_msg("GET /metrics of %s: %s", system_process_name(which), r.error);
    if (r.status != 200)
        fail_msg("GET /metrics of %s: status %d", system_process_name(which), r.status);
    const char *type = http_header(&r, "Content-Type");
    if (type == NULL || strncmp(type, "text/plain; version=0.0.4", 25) != 0)
        fail_msg("GET /metrics of %s: Content-Type %s", system_process_name(which),
                 type ? type : "none");
    size_t len = r.body_len;
    char *text = malloc(len + 2);
    assert_non_null(text);
    text[0] = '\n';
    memcpy(text + 1, r.body ? r.body : "", len);
    text[len + 1] = '\0';
    http_response_free(&r);
    return text;
}

static void scrape_all(scrape_t *s)
{
    for (int i = 0; i < procs_max; i++)
        s->text[i] = scrape_one(i);
}

static void scrape_free(scrape_t *s)
{
    for (int i = 0; i < procs_max; i++) {
        free(s->text[i]);
        s->text[i] = NULL;
    }
}

/* The value of the sample 'key' (the metric name and its labels exactly
 * as rendered, e.g. name{a="x"}) in 'text'; '*found' says whether there
 * is such a line. */
static double sample(const char *text, const char *key, bool *found)
{
    char needle[512];
    snprintf(needle, sizeof needle, "\n%s ", key);
    const char *at = strstr(text, needle);
    *found = at != NULL;
    return at != NULL ? strtod(at + strlen(needle), NULL) : 0;
}

/* The value of 'key' in process 'which' of 's', which must be present. */
static double must(const scrape_t *s, int which, const char *key)
{
    bool found;
    double value = sample(s->text[which], key, &found);
    if (!found)
        fail_msg("%s /metrics has no sample %s", system_process_name(which), key);
    return value;
}

/* The value of 'key', 0 when absent (a series not counted yet). */
static double maybe(const scrape_t *s, int which, const char *key)
{
    bool found;
    return sample(s->text[which], key, &found);
}

/* Asserts that 'key' of process 'which' moved by exactly 'delta' from
 * 'before' to 'after' (absent before counts as 0). */
static void assert_delta(const scrape_t *before, const scrape_t *after, int which, const char *key,
                         double delta)
{
    double was = maybe(before, which, key), now = must(after, which, key);
    if (now - was != delta)
        fail_msg("%s %s: %.0f -> %.0f, a change of %.0f, wanted %.0f", system_process_name(which),
                 key, was, now, now - was, delta);
}

/* The sum of every sample of family 'name' in process 'which' whose
 * label text contains 'labels_part' (NULL: every sample). */
static double family_sum(const scrape_t *s, int which, const char *name, const char *labels_part)
{
    double sum = 0;
    char needle[160];
    snprintf(needle, sizeof needle, "\n%s{", name);
    for (const char *at = strstr(s->text[which], needle); at != NULL; at = strstr(at + 1, needle)) {
        const char *end = strchr(at + 1, '\n');
        const char *close = strstr(at, "} ");
        if (close == NULL || (end != NULL && close > end))
            continue;
        size_t labels_len = (size_t)(close - at);
        char labels[512];
        snprintf(labels, sizeof labels, "%.*s", (int)labels_len, at);
        if (labels_part == NULL || strstr(labels, labels_part) != NULL)
            sum += strtod(close + 2, NULL);
    }
    return sum;
}

/* ---- the API -------------------------------------------------------------- */

static int api(http_response_t *r, const char *token, const char *method, const char *path,
               const char *key, const char *body)
{
    if (!http_api_request(r, sys.http_port, method, path, token, key, body, NULL))
        fail_msg("%s %s: %s", method, path, r->error);
    return r->status;
}

static void string_field(const http_response_t *r, const char *name, char *out, size_t size)
{
    const char *value = json_string_value(json_object_get(r->json, name));
    if (value == NULL)
        fail_msg("response has no string \"%s\": %s", name, r->body ? r->body : "");
    snprintf(out, size, "%s", value);
}

/* The traffic whose effect the test checks: 8 requests to the gateway. */
static void drive_traffic(void)
{
    char body[256], token[1100], order_paid[id_bytes], order_unpaid[id_bytes];
    http_response_t r;
    snprintf(body, sizeof body,
             "{\"email\":\"m-%d@metrics.example\",\"password\":\"%s\",\"name\":\"Meera\"}",
             (int)getpid(), password);
    assert_int_equal(api(&r, NULL, "POST", "/v1/users", NULL, body), 201);
    http_response_free(&r);
    snprintf(body, sizeof body, "{\"email\":\"m-%d@metrics.example\",\"password\":\"%s\"}",
             (int)getpid(), password);
    assert_int_equal(api(&r, NULL, "POST", "/v1/auth/login", NULL, body), 200);
    string_field(&r, "access_token", token, sizeof token);
    http_response_free(&r);

    assert_int_equal(api(&r, token, "POST", "/v1/wallet/topups", "top-1", "{\"amount\":100000}"),
                     201);
    http_response_free(&r);
    assert_int_equal(api(&r, token, "POST", "/v1/orders", NULL, "{\"amount\":60000}"), 201);
    string_field(&r, "id", order_paid, sizeof order_paid);
    http_response_free(&r);
    assert_int_equal(api(&r, token, "POST", "/v1/orders", NULL, "{\"amount\":500000}"), 201);
    string_field(&r, "id", order_unpaid, sizeof order_unpaid);
    http_response_free(&r);

    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order_paid);
    assert_int_equal(api(&r, token, "POST", "/v1/payments", "pay-1", body), 201);
    http_response_free(&r);
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order_unpaid);
    assert_int_equal(api(&r, token, "POST", "/v1/payments", "pay-2", body), 402);
    const char *code = json_string_value(json_object_get(json_object_get(r.json, "error"), "code"));
    assert_non_null(code);
    assert_string_equal(code, "insufficient_funds");
    http_response_free(&r);

    assert_int_equal(api(&r, token, "GET", "/v1/no-such-thing", NULL, NULL), 404);
    http_response_free(&r);
}

/* True when 's' shows the bus caught up: the events the traffic made
 * (2 on "payments", 1 on "wallet") appended and consumed by both groups,
 * no lag, published by the outboxes, which are empty. */
static bool caught_up(const scrape_t *before, const scrape_t *s)
{
    static const char *const groups[] = {"transaction", "notification"};
    static const char *const topics[] = {"payments", "wallet"};
    static const double events[] = {2, 1};
    for (size_t t = 0; t < 2; t++) {
        char key[256];
        snprintf(key, sizeof key, "paygate_broker_events_appended_total{topic=\"%s\"}", topics[t]);
        if (maybe(s, p_broker, key) - maybe(before, p_broker, key) != events[t])
            return false;
        for (size_t g = 0; g < 2; g++) {
            snprintf(key, sizeof key,
                     "paygate_broker_consumer_lag_events{topic=\"%s\",group=\"%s\"}", topics[t],
                     groups[g]);
            bool found;
            if (sample(s->text[p_broker], key, &found) != 0 || !found)
                return false;
            int which = g == 0 ? p_transaction : p_notification;
            snprintf(key, sizeof key,
                     "paygate_events_consumed_total{topic=\"%s\",group=\"%s\",outcome=\"acked\"}",
                     topics[t], groups[g]);
            if (maybe(s, which, key) - maybe(before, which, key) != events[t])
                return false;
        }
    }
    /* the relays count a row after its commit, a moment after the broker
     * appended it */
    const char *payments = "paygate_outbox_published_total{outbox=\"payments\"}";
    const char *users = "paygate_outbox_published_total{outbox=\"users\"}";
    return maybe(s, p_payment, payments) - maybe(before, p_payment, payments) >= 2 &&
           maybe(s, p_user, users) - maybe(before, p_user, users) >= 1 &&
           maybe(s, p_payment, "paygate_outbox_backlog_events{outbox=\"payments\"}") == 0 &&
           maybe(s, p_user, "paygate_outbox_backlog_events{outbox=\"users\"}") == 0;
}

/* ---- the test ----------------------------------------------------------------- */

static void test_counters_move_as_the_traffic_says(void **state)
{
    (void)state;
    /* the consumer groups exist (both consumers subscribed) before we start */
    int64_t until = clock_now_ms() + catch_up_ms;
    scrape_t before;
    for (;;) {
        scrape_all(&before);
        bool found_t, found_n;
        sample(before.text[p_broker],
               "paygate_broker_consumers{topic=\"payments\",group=\"transaction\"}", &found_t);
        sample(before.text[p_broker],
               "paygate_broker_consumers{topic=\"payments\",group=\"notification\"}", &found_n);
        if (found_t && found_n)
            break;
        if (clock_now_ms() > until)
            fail_msg("the consumer groups never appeared in the broker's metrics");
        scrape_free(&before);
        sleep_ms(100);
    }

    drive_traffic();

    scrape_t after;
    until = clock_now_ms() + catch_up_ms;
    for (;;) {
        scrape_all(&after);
        if (caught_up(&before, &after))
            break;
        if (clock_now_ms() > until) {
            fprintf(stderr, "---- broker metrics at the timeout:%s\n", after.text[p_broker]);
            fail_msg("the bus did not catch up within %d ms (see the broker's metrics above)",
                     (int)catch_up_ms);
        }
        scrape_free(&after);
        sleep_ms(100);
    }

    /* gateway: by route template, method and status */
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_requests_total{route=\"/v1/users\",method=\"POST\",status="
                 "\"201\"}",
                 1);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_requests_total{route=\"/v1/auth/login\",method=\"POST\","
                 "status=\"200\"}",
                 1);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_requests_total{route=\"/v1/wallet/topups\",method=\"POST\","
                 "status=\"201\"}",
                 1);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_requests_total{route=\"/v1/orders\",method=\"POST\",status="
                 "\"201\"}",
                 2);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_requests_total{route=\"/v1/payments\",method=\"POST\","
                 "status=\"201\"}",
                 1);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_requests_total{route=\"/v1/payments\",method=\"POST\","
                 "status=\"402\"}",
                 1);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_requests_total{route=\"unmatched\",method=\"GET\",status="
                 "\"404\"}",
                 1);
    /* the two payments, one after the other: each made alone by the
     * route's caller (and so no batch in the payment service, below) */
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_gathered_calls_count{route=\"/v1/payments\"}", 2);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_gathered_calls_sum{route=\"/v1/payments\"}", 2);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_gather_wait_seconds_count{route=\"/v1/payments\"}", 2);
    /* the raw path never becomes a label */
    assert_null(strstr(after.text[p_gateway], "no-such-thing"));
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_request_duration_seconds_count{route=\"/v1/payments\","
                 "method=\"POST\"}",
                 2);
    assert_delta(&before, &after, p_gateway,
                 "paygate_gateway_request_duration_seconds_bucket{route=\"/v1/payments\","
                 "method=\"POST\",le=\"+Inf\"}",
                 2);
    /* every request but the scrapes (which count under /metrics) is
     * accounted for: the 8 of the traffic */
    double all_before =
        family_sum(&before, p_gateway, "paygate_gateway_requests_total", NULL) -
        family_sum(&before, p_gateway, "paygate_gateway_requests_total", "route=\"/metrics\"");
    double all_after =
        family_sum(&after, p_gateway, "paygate_gateway_requests_total", NULL) -
        family_sum(&after, p_gateway, "paygate_gateway_requests_total", "route=\"/metrics\"");
    assert_true(all_after - all_before == 8);
    /* the scrape itself is the one request in flight */
    assert_true(must(&after, p_gateway, "paygate_gateway_in_flight_requests") == 1);
    assert_true(must(&after, p_gateway, "paygate_gateway_rate_limited_total") == 0);

    /* payment: one succeeded, one failed; its RPCs by code */
    assert_delta(&before, &after, p_payment,
                 "paygate_payment_payments_total{outcome=\"succeeded\"}", 1);
    assert_delta(&before, &after, p_payment, "paygate_payment_payments_total{outcome=\"failed\"}",
                 1);
    assert_delta(&before, &after, p_payment, "paygate_payment_refunds_total{outcome=\"succeeded\"}",
                 0);
    assert_delta(&before, &after, p_payment, "paygate_payment_batch_calls_count", 0);
    assert_delta(&before, &after, p_payment,
                 "paygate_payment_batch_step_seconds_count{step=\"debit\"}", 0);
    assert_delta(&before, &after, p_payment,
                 "paygate_rpc_handled_total{service=\"payment\",method=\"Create\",code=\"OK\"}", 1);
    assert_delta(&before, &after, p_payment,
                 "paygate_rpc_handled_total{service=\"payment\",method=\"Create\",code=\"FAILED_"
                 "PRECONDITION\"}",
                 1);
    assert_delta(&before, &after, p_payment, "paygate_outbox_published_total{outbox=\"payments\"}",
                 2);

    /* user: register, login, top-up from the gateway; two debits from the
     * payment saga, one refused */
    assert_delta(&before, &after, p_user,
                 "paygate_rpc_handled_total{service=\"user\",method=\"Register\",code=\"OK\"}", 1);
    assert_delta(&before, &after, p_user,
                 "paygate_rpc_handled_total{service=\"user\",method=\"Login\",code=\"OK\"}", 1);
    assert_delta(&before, &after, p_user,
                 "paygate_rpc_handled_total{service=\"user\",method=\"TopUp\",code=\"OK\"}", 1);
    assert_delta(&before, &after, p_user,
                 "paygate_rpc_handled_total{service=\"user\",method=\"Debit\",code=\"OK\"}", 1);
    assert_delta(&before, &after, p_user,
                 "paygate_rpc_handled_total{service=\"user\",method=\"Debit\",code=\"FAILED_"
                 "PRECONDITION\"}",
                 1);
    assert_delta(&before, &after, p_user, "paygate_outbox_published_total{outbox=\"users\"}", 1);

    /* order: two creates, one order completed */
    assert_delta(&before, &after, p_order,
                 "paygate_rpc_handled_total{service=\"order\",method=\"Create\",code=\"OK\"}", 2);
    assert_delta(&before, &after, p_order,
                 "paygate_rpc_handled_total{service=\"order\",method=\"MarkPaid\",code=\"OK\"}", 1);

    /* broker: every request it routed was handled by a service, and the
     * gateway's 7 service calls are among them */
    double handled = 0;
    for (int i = p_user; i <= p_notification; i++)
        handled += family_sum(&after, i, "paygate_rpc_handled_total", NULL) -
                   family_sum(&before, i, "paygate_rpc_handled_total", NULL);
    double routed = must(&after, p_broker, "paygate_broker_requests_routed_total") -
                    must(&before, p_broker, "paygate_broker_requests_routed_total");
    fprintf(stderr, "broker routed %.0f requests, the services handled %.0f\n", routed, handled);
    assert_true(routed >= 7);
    assert_true(routed == handled);
    assert_delta(&before, &after, p_broker, "paygate_broker_requests_expired_total", 0);
    assert_delta(&before, &after, p_broker,
                 "paygate_broker_requests_failed_total{reason=\"unavailable\"}", 0);
    static const char *const services[] = {"user", "order", "payment", "transaction",
                                           "notification"};
    for (size_t i = 0; i < 5; i++) {
        char key[128];
        snprintf(key, sizeof key, "paygate_broker_workers{service=\"%s\"}", services[i]);
        assert_true(must(&after, p_broker, key) == service_threads); /* PAYGATE_<NAME>_THREADS */
        snprintf(key, sizeof key, "paygate_broker_queued_requests{service=\"%s\"}", services[i]);
        assert_true(must(&after, p_broker, key) == 0);
    }
    /* (events appended, consumed and lag 0 were checked by caught_up) */

    scrape_free(&before);
    scrape_free(&after);
}

/* The listeners of the broker and the services answer only GET /metrics. */
static void test_listener_paths(void **state)
{
    (void)state;
    http_response_t r;
    assert_true(http_request(&r, sys.metrics_ports[p_order], "GET", "/", NULL, NULL));
    assert_int_equal(r.status, 404);
    http_response_free(&r);
    assert_true(http_request(&r, sys.metrics_ports[p_broker], "POST", "/metrics", NULL, "x"));
    assert_int_equal(r.status, 405);
    assert_non_null(http_header(&r, "Allow"));
    http_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counters_move_as_the_traffic_says),
        cmocka_unit_test(test_listener_paths),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
