/*
 * The seed's whole flow, end to end, with every part real: HTTP gateway,
 * broker (with its event bus on disk), user, order, payment, transaction
 * and notification services as processes, PostgreSQL and Redis.
 *
 * A payment is recorded as a transaction ("₹1,000 paid for Order #...")
 * and the user gets "Your payment of ₹1,000 for Order #... is successful."
 * on the Redis channel, in GET /v1/notifications and on the SSE stream.
 * Then the consumers are SIGKILLed during a burst of payments: every
 * payment still appears exactly once in the history, and no notification
 * is lost or doubled.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "clock/clock.h"
#include "http_client.h"
#include "proc.h"
#include "system.h"

static const char jwt_secret[] = "event-flow-test-secret-0123456789abcdefghijklm";
static const char password[] = "Flow-Passw0rd-71c2";

enum { id_bytes = 64 };

static struct {
    system_t *system;
    int http_port;
    int redis_port;
    unsigned counter;
} sys;

typedef struct {
    char id[id_bytes];
    char token[1024];
    char auth[1100];
} user_t;

/* ---- the system ----------------------------------------------------------- */

/* Starts 'which' again after the test killed it, with the environment it
 * first had and a log of its own ("flow-<process>-again.log"). */
static void start_again(system_process_t which)
{
    assert_true(system_start_process(sys.system, which, "-again"));
}

static int group_setup(void **state)
{
    (void)state;
    static const char *const env[] = {
        "PAYGATE_PAYMENT_LEASE_MS=1500", "PAYGATE_PAYMENT_RECOVERY_INTERVAL_MS=300",
        "PAYGATE_BROKER_ACK_TIMEOUT_MS=3000", "PAYGATE_BROKER_NACK_DELAY_MS=200", NULL};
    system_config_t config = {
        .name = "flow", .jwt_secret = jwt_secret, .rate_limits_off = true, .env = env};
    sys.system = system_new(&config);
    if (sys.system == NULL)
        return -1;
    sys.http_port = system_gateway_port(sys.system);
    sys.redis_port = system_redis_port(sys.system);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    system_destroy(&sys.system);
    return 0;
}

/* ---- the API -------------------------------------------------------------- */

/* Calls the API; returns the status. 'body' may be NULL. */
static int api(http_response_t *r, const user_t *u, const char *method, const char *path,
               const char *key, const char *body)
{
    if (!http_api_request(r, sys.http_port, method, path, u ? u->token : NULL, key, body, NULL))
        fail_msg("%s %s: %s", method, path, r->error);
    return r->status;
}

static const char *field(const http_response_t *r, const char *name)
{
    const char *value = json_string_value(json_object_get(r->json, name));
    if (value == NULL)
        fail_msg("response has no string \"%s\": %s", name, r->body ? r->body : "");
    return value;
}

static void user_new(user_t *u, const char *tag)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"email\":\"%s-%d-%u@flow.example\",\"password\":\"%s\",\"name\":\"%s\"}", tag,
             (int)getpid(), sys.counter++, password, tag);
    http_response_t r;
    assert_int_equal(api(&r, NULL, "POST", "/v1/users", NULL, body), 201);
    snprintf(u->id, sizeof u->id, "%s", field(&r, "id"));
    json_t *login =
        json_pack("{s:s,s:s}", "email", json_string_value(json_object_get(r.json, "email")),
                  "password", password);
    http_response_free(&r);
    char *text = json_dumps(login, JSON_COMPACT);
    json_decref(login);
    assert_int_equal(api(&r, NULL, "POST", "/v1/auth/login", NULL, text), 200);
    free(text);
    snprintf(u->token, sizeof u->token, "%s", field(&r, "access_token"));
    snprintf(u->auth, sizeof u->auth, "Authorization: Bearer %s", u->token);
    http_response_free(&r);
}

static void top_up(const user_t *u, int64_t amount)
{
    char body[64], key[64];
    snprintf(body, sizeof body, "{\"amount\":%lld}", (long long)amount);
    snprintf(key, sizeof key, "top-%u", sys.counter++);
    http_response_t r;
    assert_int_equal(api(&r, u, "POST", "/v1/wallet/topups", key, body), 201);
    http_response_free(&r);
}

static void order_new(const user_t *u, int64_t amount, char id[id_bytes])
{
    char body[64];
    snprintf(body, sizeof body, "{\"amount\":%lld}", (long long)amount);
    http_response_t r;
    assert_int_equal(api(&r, u, "POST", "/v1/orders", NULL, body), 201);
    snprintf(id, id_bytes, "%s", field(&r, "id"));
    http_response_free(&r);
}

/* Pays 'order' with key 'key', retrying 5xx and broken connections with
 * the same key as a real client would. Returns the final status and the
 * payment id. */
static int pay(const user_t *u, const char *order, const char *key, char payment[id_bytes])
{
    char body[128];
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order);
    int64_t until = clock_now_ms() + 30000;
    for (;;) {
        http_response_t r;
        const char *headers[] = {u->auth, "Content-Type: application/json", NULL, NULL};
        char key_header[128];
        snprintf(key_header, sizeof key_header, "Idempotency-Key: %s", key);
        headers[2] = key_header;
        bool ok = http_request(&r, sys.http_port, "POST", "/v1/payments", headers, body);
        int status = r.status;
        if (ok && status == 201)
            snprintf(payment, id_bytes, "%s", field(&r, "id"));
        http_response_free(&r);
        if (ok && status < 500 && status != 409)
            return status;
        if (clock_now_ms() > until)
            return status;
        sleep_ms(200);
    }
}

/* ---- Redis ---------------------------------------------------------------- */

static redisContext *redis_subscribe(const char *user_id)
{
    struct timeval timeout = {.tv_sec = 15};
    redisContext *redis = redisConnectWithTimeout("127.0.0.1", sys.redis_port, timeout);
    assert_non_null(redis);
    assert_int_equal(redis->err, 0);
    redisSetTimeout(redis, timeout);
    redisReply *reply = redisCommand(redis, "SUBSCRIBE notifications:user:%s", user_id);
    assert_non_null(reply);
    freeReplyObject(reply);
    return redis;
}

/* The next message on the subscription, parsed (caller json_decref's). */
static json_t *redis_next(redisContext *redis)
{
    redisReply *reply = NULL;
    if (redisGetReply(redis, (void **)&reply) != REDIS_OK || reply == NULL)
        fail_msg("no message on the Redis channel within 15 s");
    assert_int_equal(reply->type, REDIS_REPLY_ARRAY);
    assert_int_equal(reply->elements, 3);
    json_error_t error;
    json_t *json = json_loads(reply->element[2]->str, 0, &error);
    freeReplyObject(reply);
    assert_non_null(json);
    return json;
}

/* ---- tests ---------------------------------------------------------------- */

/* Polls GET 'path' until 'count' items of 'data' match 'type' (or any when
 * NULL); returns the response (caller frees). */
static void wait_list(http_response_t *r, const user_t *u, const char *path, const char *key,
                      const char *value, size_t count)
{
    int64_t until = clock_now_ms() + 30000;
    for (;;) {
        assert_int_equal(api(r, u, "GET", path, NULL, NULL), 200);
        json_t *data = json_object_get(r->json, "data");
        size_t matched = 0, i;
        json_t *item;
        json_array_foreach(data, i, item)
        {
            const char *v = json_string_value(json_object_get(item, key));
            if (value == NULL || (v != NULL && strcmp(v, value) == 0))
                matched++;
        }
        if (matched >= count)
            return;
        http_response_free(r);
        if (clock_now_ms() > until)
            fail_msg("%s: only %zu of %zu %s=%s after 30 s", path, matched, count, key,
                     value ? value : "*");
        sleep_ms(200);
    }
}

/* The seed's flow: the payment is in the history and the user is told, on
 * the Redis channel, in the list, with the exact message. */
static void test_seed_flow(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "asha");
    redisContext *redis = redis_subscribe(u.id);
    top_up(&u, 200000);
    json_t *topup = redis_next(redis);
    assert_string_equal(json_string_value(json_object_get(topup, "message")),
                        "₹2,000 has been added to your wallet.");
    json_decref(topup);

    char order[id_bytes], payment[id_bytes] = "";
    order_new(&u, 100000, order);
    assert_int_equal(pay(&u, order, "seed-pay", payment), 201);

    json_t *note = redis_next(redis);
    char message[256], expected[256];
    snprintf(message, sizeof message, "Your payment of ₹1,000 for Order #%s is successful.", order);
    assert_string_equal(json_string_value(json_object_get(note, "message")), message);
    assert_string_equal(json_string_value(json_object_get(note, "user_id")), u.id);
    assert_string_equal(json_string_value(json_object_get(note, "type")), "payment.succeeded");
    assert_string_equal(json_string_value(json_object_get(note, "order_id")), order);
    assert_string_equal(json_string_value(json_object_get(note, "payment_id")), payment);
    assert_int_equal(json_integer_value(json_object_get(note, "amount")), 100000);
    assert_non_null(json_string_value(json_object_get(note, "id")));
    assert_non_null(json_string_value(json_object_get(note, "created_at")));
    json_decref(note);
    redisFree(redis);

    http_response_t r;
    wait_list(&r, &u, "/v1/transactions", "type", "PAYMENT", 1);
    json_t *first = json_array_get(json_object_get(r.json, "data"), 0);
    snprintf(expected, sizeof expected, "₹1,000 paid for Order #%s", order);
    assert_string_equal(json_string_value(json_object_get(first, "description")), expected);
    assert_string_equal(json_string_value(json_object_get(first, "payment_id")), payment);
    assert_int_equal(json_integer_value(json_object_get(first, "amount")), 100000);
    json_t *second = json_array_get(json_object_get(r.json, "data"), 1);
    assert_string_equal(json_string_value(json_object_get(second, "type")), "TOPUP");
    assert_string_equal(json_string_value(json_object_get(second, "description")),
                        "₹2,000 added to wallet");
    char txn_path[128];
    snprintf(txn_path, sizeof txn_path, "/v1/transactions/%s",
             json_string_value(json_object_get(first, "id")));
    http_response_free(&r);
    assert_int_equal(api(&r, &u, "GET", txn_path, NULL, NULL), 200);
    assert_string_equal(field(&r, "payment_id"), payment);
    http_response_free(&r);

    /* another user sees nothing of it */
    user_t other;
    user_new(&other, "ravi");
    assert_int_equal(api(&r, &other, "GET", txn_path, NULL, NULL), 404);
    http_response_free(&r);
    assert_int_equal(api(&r, &other, "GET", "/v1/transactions", NULL, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
    http_response_free(&r);

    /* the list: newest first, the payment then the top-up */
    wait_list(&r, &u, "/v1/notifications", "type", "payment.succeeded", 1);
    json_t *notes = json_object_get(r.json, "data");
    assert_int_equal(json_array_size(notes), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(notes, 0), "message")),
                        message);
    assert_string_equal(json_string_value(json_object_get(json_array_get(notes, 1), "type")),
                        "topup.succeeded");
    http_response_free(&r);
}

/* Reads from the SSE socket until 'needle' appears or 15 s pass. */
static bool sse_wait_for(int fd, const char *needle, char *buffer, size_t size)
{
    size_t used = strlen(buffer);
    int64_t until = clock_now_ms() + 15000;
    while (strstr(buffer, needle) == NULL) {
        if (clock_now_ms() > until || used + 1 >= size)
            return false;
        ssize_t n = recv(fd, buffer + used, size - used - 1, 0);
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR)))
            return false;
        if (n > 0) {
            used += (size_t)n;
            buffer[used] = '\0';
        }
    }
    return true;
}

/* The SSE stream: the notification arrives live on an open stream, and a
 * stream without a token is refused. */
static void test_sse_stream(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "sse");
    top_up(&u, 50000);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)sys.http_port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    struct timeval timeout = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    char request[1400];
    int len = snprintf(request, sizeof request,
                       "GET /v1/notifications/stream HTTP/1.1\r\nHost: x\r\n%s\r\n"
                       "Accept: text/event-stream\r\n\r\n",
                       u.auth);
    assert_true(send(fd, request, (size_t)len, 0) == len);
    static char buffer[65536];
    buffer[0] = '\0';
    assert_true(sse_wait_for(fd, "\r\n\r\n", buffer, sizeof buffer));
    assert_non_null(strstr(buffer, " 200 "));
    assert_non_null(strstr(buffer, "text/event-stream"));

    char order[id_bytes], payment[id_bytes] = "";
    order_new(&u, 25050, order);
    assert_int_equal(pay(&u, order, "sse-pay", payment), 201);
    char expected[256];
    snprintf(expected, sizeof expected, "Your payment of ₹250.50 for Order #%s is successful.",
             order);
    assert_true(sse_wait_for(fd, expected, buffer, sizeof buffer));
    assert_non_null(strstr(buffer, "data: "));
    close(fd);

    http_response_t r;
    assert_int_equal(api(&r, NULL, "GET", "/v1/notifications/stream", NULL, NULL), 401);
    http_response_free(&r);
}

typedef struct {
    user_t *user;
    int first;
    int count;
    char (*payments)[id_bytes];
    int *statuses;
} burst_t;

static void *burst_main(void *arg)
{
    burst_t *b = arg;
    for (int i = b->first; i < b->first + b->count; i++) {
        char order[id_bytes], key[64];
        order_new(b->user, 1000 + i, order);
        snprintf(key, sizeof key, "burst-%d-%d", (int)getpid(), i);
        b->statuses[i] = pay(b->user, order, key, b->payments[i]);
    }
    return NULL;
}

/* Transaction and notification are SIGKILLed and restarted during a burst
 * of payments: afterwards every payment is in the history exactly once,
 * and every payment has exactly one notification. */
static void test_consumers_killed_during_burst(void **state)
{
    (void)state;
    enum { payments_total = 24 };
    user_t u;
    user_new(&u, "burst");
    top_up(&u, 1000000);
    char payments[payments_total][id_bytes];
    int statuses[payments_total];
    memset(payments, 0, sizeof payments);
    burst_t halves[2] = {
        {.user = &u,
         .first = 0,
         .count = payments_total / 2,
         .payments = payments,
         .statuses = statuses},
        {.user = &u,
         .first = payments_total / 2,
         .count = payments_total / 2,
         .payments = payments,
         .statuses = statuses},
    };
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, burst_main, &halves[i]), 0);
    sleep_ms(700);
    proc_kill(system_process(sys.system, system_transaction));
    sleep_ms(500);
    proc_kill(system_process(sys.system, system_notification));
    sleep_ms(1500);
    start_again(system_transaction);
    sleep_ms(700);
    start_again(system_notification);
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < payments_total; i++) {
        assert_int_equal(statuses[i], 201);
        assert_true(payments[i][0] != '\0');
    }

    /* every payment exactly once in the history */
    http_response_t r;
    wait_list(&r, &u, "/v1/transactions?limit=100", "type", "PAYMENT", payments_total);
    json_t *data = json_object_get(r.json, "data");
    for (int i = 0; i < payments_total; i++) {
        size_t seen = 0, k;
        json_t *item;
        json_array_foreach(data, k, item)
        {
            const char *id = json_string_value(json_object_get(item, "payment_id"));
            const char *type = json_string_value(json_object_get(item, "type"));
            if (id != NULL && strcmp(id, payments[i]) == 0 && strcmp(type, "PAYMENT") == 0)
                seen++;
        }
        if (seen != 1)
            fail_msg("payment %s appears %zu times in the history", payments[i], seen);
    }
    http_response_free(&r);

    /* every payment notified exactly once (the list keeps the latest 50) */
    wait_list(&r, &u, "/v1/notifications?limit=50", "type", "payment.succeeded", payments_total);
    data = json_object_get(r.json, "data");
    for (int i = 0; i < payments_total; i++) {
        size_t seen = 0, k;
        json_t *item;
        json_array_foreach(data, k, item)
        {
            const char *id = json_string_value(json_object_get(item, "payment_id"));
            if (id != NULL && strcmp(id, payments[i]) == 0)
                seen++;
        }
        if (seen != 1)
            fail_msg("payment %s has %zu notifications", payments[i], seen);
    }
    http_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_flow),
        cmocka_unit_test(test_sse_stream),
        cmocka_unit_test(test_consumers_killed_during_burst),
    };
    return cmocka_run_group_tests_name("event flow", tests, group_setup, group_teardown);
}
