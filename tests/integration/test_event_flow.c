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
 * is lost or doubled. Last, the transaction service's recorder is handed
 * batches of money events (published at once while it was stopped): one
 * that commits (with a malformed payload, a PAYMENT_FAILED and an event
 * recorded before) and one that cannot (a payment recorded before under
 * another event id) and goes event by event: one row per movement, all
 * acknowledged.
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
#include <libpq-fe.h>

#include "clock/clock.h"
#include "events.pb-c.h"
#include "http_client.h"
#include "proc.h"
#include "rpc/rpc.h"
#include "system.h"
#include "wire/wire.h"

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

/* ---- the recorder's batches ------------------------------------------------ */

enum {
    batch_count = 12,        /* events published at once */
    batch_malformed = 5,     /* not a MoneyEvent */
    batch_again = 4,         /* the first event again, under another bus id */
    batch_repeat = 7,        /* the first payment again, under another event id */
    batch_failed = 10,       /* PAYMENT_FAILED: moves no money */
    batch_wait_ms = 30000,   /* for the recorder to catch up */
    money_payload_max = 512, /* a packed MoneyEvent of this test */
};

/* One MoneyEvent of the test (its strings are its own). */
typedef struct {
    char bus_id[id_bytes]; /* the bus's event id; "": event_id */
    char event_id[id_bytes];
    Paygate__V1__MoneyEventType type;
    char user[id_bytes];
    int64_t amount;
    char order[id_bytes];
    char payment[id_bytes];
    char refund[id_bytes];
    char topup[id_bytes];
    uint8_t payload[money_payload_max];
    size_t payload_len;
    bool moves; /* must have a row of its own afterwards */
} money_t;

/* Packs 'm' into m->payload. */
static void money_pack(money_t *m)
{
    Paygate__V1__MoneyEvent e = PAYGATE__V1__MONEY_EVENT__INIT;
    e.event_id = m->event_id;
    e.type = m->type;
    e.user_id = m->user;
    e.amount = m->amount;
    e.currency = (char *)"INR";
    e.order_id = m->order;
    e.payment_id = m->payment;
    e.refund_id = m->refund;
    e.topup_id = m->topup;
    e.occurred_at = (char *)"2026-11-27T10:00:00.000Z";
    e.request_id = (char *)"";
    m->payload_len = paygate__v1__money_event__get_packed_size(&e);
    assert_true(m->payload_len <= sizeof m->payload);
    paygate__v1__money_event__pack(&e, m->payload);
}

/* Event 'i' of a batch of run 'tag': a top-up, a payment or a refund by
 * i % 3, each of its own user. */
static void money_new(money_t *m, const char *tag, int i)
{
    memset(m, 0, sizeof *m);
    snprintf(m->event_id, id_bytes, "evt_%s_%d", tag, i);
    snprintf(m->user, id_bytes, "usr_%s_%d", tag, i);
    m->amount = 1000 + i;
    m->moves = true;
    if (i % 3 == 0) {
        m->type = PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED;
        snprintf(m->topup, id_bytes, "top_%s_%d", tag, i);
        return;
    }
    snprintf(m->order, id_bytes, "ord_%s_%d", tag, i);
    snprintf(m->payment, id_bytes, "pay_%s_%d", tag, i);
    m->type = PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED;
    if (i % 3 == 2) {
        m->type = PAYGATE__V1__MONEY_EVENT_TYPE__REFUND_SUCCEEDED;
        snprintf(m->refund, id_bytes, "ref_%s_%d", tag, i);
    }
}

/* The first column of the first row of 'sql' with text parameter $1 =
 * 'param', as a number. */
static long long db_number(PGconn *db, const char *sql, const char *param)
{
    const char *params[] = {param};
    PGresult *r = PQexecParams(db, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        fail_msg("%s: %s", sql, PQerrorMessage(db));
    long long value = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return value;
}

static const char row_sql[] = "SELECT count(*) FROM transactions.transactions WHERE event_id = $1";

/* Group "transaction" of topic "payments", from broker.services/List. */
typedef struct {
    bool found;
    uint64_t end_offset;
    uint64_t committed;
    uint64_t lag;
    uint32_t in_flight;
    uint64_t redelivered;
    uint64_t dead_lettered;
} recorder_group_t;

static recorder_group_t recorder_group(rpc_client_t *rpc)
{
    recorder_group_t out = {0};
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    ProtobufCMessage *msg = NULL;
    rpc_call_opts_t opts = {.deadline_ms = 2000};
    rpc_status_t status;
    Paygate__V1__Code code =
        rpc_client_call(rpc, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &msg, &opts, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("broker.services/List: %s %s", wire_code_name(code), status.message);
    Paygate__V1__ListServicesReply *reply = (Paygate__V1__ListServicesReply *)msg;
    for (size_t i = 0; i < reply->n_topics; i++) {
        const Paygate__V1__TopicInfo *t = reply->topics[i];
        if (strcmp(t->name, "payments") != 0)
            continue;
        for (size_t k = 0; k < t->n_groups; k++) {
            const Paygate__V1__GroupInfo *g = t->groups[k];
            if (strcmp(g->name, "transaction") != 0)
                continue;
            out = (recorder_group_t){.found = true,
                                     .end_offset = t->end_offset,
                                     .committed = g->committed_offset,
                                     .lag = g->lag,
                                     .in_flight = g->in_flight,
                                     .redelivered = g->redelivered,
                                     .dead_lettered = g->dead_lettered};
        }
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    return out;
}

/* Counts the lines of 'path' that contain 'text'. */
static int log_lines(const char *path, const char *text)
{
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return -1;
    static char line[65536];
    int count = 0;
    while (fgets(line, sizeof line, file) != NULL)
        count += strstr(line, text) != NULL;
    fclose(file);
    return count;
}

/* Stops the transaction service, publishes 'batch' to "payments" in one
 * rpc_client_publish_many (so that its recorder is handed them together
 * when it starts again), starts it again (log "flow-transaction<suffix>"),
 * and waits until its group has acknowledged everything: committed at the
 * end, nothing in flight, and neither refused (NACK, counted as
 * redelivered) nor dead-lettered. */
static void recorder_feed(rpc_client_t *rpc, money_t *batch, size_t count, const char *suffix)
{
    assert_true(count <= batch_count);
    assert_true(proc_stop(system_process(sys.system, system_transaction), 15000));
    recorder_group_t before = recorder_group(rpc);
    assert_true(before.found);
    rpc_publish_item_t items[batch_count];
    for (size_t i = 0; i < count; i++)
        items[i] = (rpc_publish_item_t){.topic = "payments",
                                        .event_id = batch[i].bus_id[0] ? batch[i].bus_id
                                                                       : batch[i].event_id,
                                        .key = batch[i].user,
                                        .payload = batch[i].payload,
                                        .payload_len = batch[i].payload_len};
    assert_int_equal(rpc_client_publish_many(rpc, items, count, 5000), count);
    for (size_t i = 0; i < count; i++)
        assert_false(items[i].duplicate);

    assert_true(system_start_process(sys.system, system_transaction, suffix));
    recorder_group_t after = {0};
    int64_t until = clock_now_ms() + batch_wait_ms;
    for (;;) {
        after = recorder_group(rpc);
        if (after.found && after.end_offset == before.end_offset + count && after.lag == 0 &&
            after.in_flight == 0)
            break;
        if (clock_now_ms() > until)
            fail_msg("group transaction: end %llu (was %llu), lag %llu, %u in flight after %d ms",
                     (unsigned long long)after.end_offset, (unsigned long long)before.end_offset,
                     (unsigned long long)after.lag, after.in_flight, batch_wait_ms);
        sleep_ms(100);
    }
    assert_int_equal(after.committed, after.end_offset);
    assert_int_equal(after.redelivered, before.redelivered);
    assert_int_equal(after.dead_lettered, before.dead_lettered);
}

/* Asserts one row per moving event of 'batch' (its type, user and
 * amount) and none for the others. */
static void recorder_assert_rows(PGconn *db, const money_t *batch, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const money_t *m = &batch[i];
        long long rows = db_number(db, row_sql, m->bus_id[0] ? m->bus_id : m->event_id);
        if (rows != (m->moves ? 1 : 0))
            fail_msg("event %zu (%s): %lld rows", i, m->event_id, rows);
        if (!m->moves)
            continue;
        const char *type = m->type == PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED    ? "TOPUP"
                           : m->type == PAYGATE__V1__MONEY_EVENT_TYPE__REFUND_SUCCEEDED ? "REFUND"
                                                                                        : "PAYMENT";
        const char *params[] = {m->event_id, m->user, type};
        char amount[32];
        snprintf(amount, sizeof amount, "%lld", (long long)m->amount);
        PGresult *r =
            PQexecParams(db,
                         "SELECT amount FROM transactions.transactions WHERE event_id = $1"
                         " AND user_id = $2 AND type = $3",
                         3, NULL, params, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        if (PQntuples(r) != 1)
            fail_msg("event %zu (%s): no %s row for %s", i, m->event_id, type, m->user);
        assert_string_equal(PQgetvalue(r, 0, 0), amount);
        PQclear(r);
    }
}

/* The recorder is handed money events together (published at once while
 * the transaction service is stopped):
 *   1. top-ups, payments and refunds with a payload that is not a
 *      MoneyEvent, a PAYMENT_FAILED, and a recorded event again under
 *      another bus id: the batch commits (no "did not commit"), one row per
 *      movement, none for the others;
 *   2. the same kinds with the payment of a recorded event under another
 *      event id (transactions_payment_once): the batch's transaction
 *      cannot commit and each event goes alone; one row per movement, the
 *      payment still its first row only.
 * Each time the group acknowledges everything, without a refusal. */
static void test_recorder_batches(void **state)
{
    (void)state;
    rpc_client_t *rpc = rpc_client_new(NULL, system_broker_endpoint(sys.system));
    assert_non_null(rpc);
    PGconn *db = PQconnectdb(system_pg_dsn(sys.system));
    if (PQstatus(db) != CONNECTION_OK)
        fail_msg("cannot connect to the test database: %s", PQerrorMessage(db));
    char tag[32], run[40];
    snprintf(tag, sizeof tag, "rb%dx%u", (int)getpid(), sys.counter++);

    /* the first payment, recorded alone */
    static money_t first, batch[batch_count];
    snprintf(run, sizeof run, "%s_first", tag);
    money_new(&first, run, 1);
    money_pack(&first);
    rpc_status_t status;
    assert_int_equal(rpc_client_publish(rpc, "payments", first.event_id, first.user, first.payload,
                                        first.payload_len, 5000, NULL, NULL, &status),
                     PAYGATE__V1__CODE__OK);
    int64_t until = clock_now_ms() + batch_wait_ms;
    while (db_number(db, row_sql, first.event_id) != 1) {
        if (clock_now_ms() > until)
            fail_msg("event %s not recorded within %d ms", first.event_id, batch_wait_ms);
        sleep_ms(100);
    }

    for (int round = 1; round <= 2; round++) {
        snprintf(run, sizeof run, "%s_b%d", tag, round);
        for (int i = 0; i < batch_count; i++) {
            money_t *m = &batch[i];
            money_new(m, run, i);
            if (i == batch_failed) {
                m->type = PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_FAILED;
                m->moves = false;
            } else if (round == 1 && i == batch_again) { /* the first event again */
                *m = first;
                snprintf(m->bus_id, id_bytes, "evt_%s_%d", run, i);
                m->moves = false;
            } else if (round == 2 && i == batch_repeat) { /* the first payment again */
                snprintf(m->user, id_bytes, "%s", first.user);
                m->type = first.type;
                m->amount = first.amount;
                snprintf(m->order, id_bytes, "%s", first.order);
                snprintf(m->payment, id_bytes, "%s", first.payment);
                m->refund[0] = m->topup[0] = '\0';
                m->moves = false;
            }
            money_pack(m);
            if (i == batch_malformed) { /* a varint that never ends */
                memset(m->payload, 0xff, 16);
                m->payload_len = 16;
                assert_null(paygate__v1__money_event__unpack(NULL, m->payload_len, m->payload));
                m->moves = false;
            }
        }
        char suffix[16];
        snprintf(suffix, sizeof suffix, "-batch%d", round);
        recorder_feed(rpc, batch, batch_count, suffix);
        recorder_assert_rows(db, batch, batch_count);

        const char *log = system_process(sys.system, system_transaction)->log_path;
        assert_int_equal(log_lines(log, "is not a MoneyEvent"), 1);
        if (round == 1) {
            assert_int_equal(log_lines(log, "did not commit"), 0);
            assert_int_equal(log_lines(log, "was recorded before as"), 1);
        } else {
            /* the batch's transaction failed on the repeated payment;
             * each went alone, and the single path told of the repeat */
            assert_true(log_lines(log, "did not commit") >= 1);
            assert_int_equal(log_lines(log, "already recorded under another event id"), 1);
        }
    }
    /* the first payment: its one row, nothing else of it */
    assert_int_equal(db_number(db, row_sql, first.event_id), 1);
    assert_int_equal(
        db_number(db,
                  "SELECT count(*) FROM transactions.transactions WHERE payment_id = $1"
                  " AND type = 'PAYMENT'",
                  first.payment),
        1);
    char like[48];
    snprintf(like, sizeof like, "%%%s%%", tag);
    assert_int_equal(
        db_number(db, "SELECT count(*) FROM transactions.transactions WHERE event_id LIKE $1",
                  like),
        1 + (batch_count - 3) * 2);
    PQfinish(db);
    rpc_client_destroy(&rpc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_flow),
        cmocka_unit_test(test_sse_stream),
        cmocka_unit_test(test_consumers_killed_during_burst),
        cmocka_unit_test(test_recorder_batches),
    };
    return cmocka_run_group_tests_name("event flow", tests, group_setup, group_teardown);
}
