/*
 * Integration tests of payments and refunds through the public HTTP API:
 * the real paygate-broker, paygate-user, paygate-order, paygate-payment and
 * paygate-gateway processes on free loopback ports, against the test
 * PostgreSQL that ./dev test starts (PAYGATE_TEST_PG_DSN; without it the
 * test FAILS, it is never skipped).
 *
 * Every request goes through the gateway as a client sends it: JSON, a
 * Bearer token from POST /v1/auth/login, an Idempotency-Key header. The
 * database is read directly (libpq) only for what the API cannot show: the
 * ledger behind a balance, and the one-success-per-order rule. For every
 * wallet a test touches: balance == SUM(ledger.amount), and the ledger,
 * replayed in order, never goes below zero.
 *
 * Other tests share the database: every email and key carries this
 * process's pid and a counter, and each test has users of its own.
 * Process logs are kept in $PAYGATE_TEST_LOG_DIR as payments-*.log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "clock/clock.h"
#include "http_client.h"
#include "proc.h"
#include "system.h"
#include "db_assert.h"

/* The services' HS256 key (user signs, gateway verifies): 48 bytes. */
static const char jwt_secret[] = "payments-test-secret-0123456789abcdefghijklmnopq";
_Static_assert(sizeof jwt_secret - 1 == 48, "the test secret is 48 characters");
static const char password[] = "Pay-Passw0rd-3b8e1d";

enum {
    service_threads = 4,        /* user, order and payment worker instances each */
    gateway_threads = 8,        /* so that 20 concurrent payments really overlap */
    gateway_deadline_ms = 8000, /* below http_timeout_ms: a slow call is a 504, not a hang */
    ready_timeout_ms = 60000,
    id_bytes_max = 64,
    token_bytes_max = 2048,
    retry_attempts_max = 20, /* same-key retries of a payment answered 5xx */
    race_payments = 20,
    race_order_minor = 1000,
    race_wallet_minor = 12500,
    race_succeeded = race_wallet_minor / race_order_minor, /* 12 */
    page_orders = 25,
    page_payments = 12,
};

/* An account created by a test, logged in. */
typedef struct {
    char id[id_bytes_max + 1];
    char email[128];
    char token[token_bytes_max + 1];
} user_t;

static struct {
    system_t *system;
    const char *dsn; /* the system's scratch database */
    int http_port;
    PGconn *db;
    atomic_uint counter; /* unique emails and keys */
} g;

/* ---- HTTP helpers -------------------------------------------------------- */

/* A unique string "<what>-<pid>-<n>" in 'out' (thread-safe). */
static void unique(char *out, size_t size, const char *what)
{
    unsigned n = atomic_fetch_add(&g.counter, 1) + 1;
    snprintf(out, size, "%s-%d-%u", what, (int)getpid(), n);
}

/* One request to the gateway without failing the test: 'u' (or NULL) gives
 * the Bearer token, 'key' (or NULL) the Idempotency-Key, 'request_id' (or
 * NULL) the X-Request-Id, 'body' (or NULL) goes as application/json.
 * Returns false, with r->error set, when no complete response came. Safe
 * on any thread. */
static bool api_try(http_response_t *r, const user_t *u, const char *method, const char *path,
                    const char *key, const char *request_id, const char *body)
{
    char rid[100];
    snprintf(rid, sizeof rid, "X-Request-Id: %s", request_id ? request_id : "");
    const char *extra[] = {request_id ? rid : NULL, NULL};
    return http_api_request(r, g.http_port, method, path, u ? u->token : NULL, key, body, extra);
}

/* api_try that fails the test when no complete response came. Returns
 * the HTTP status. Main thread only. */
static int api(http_response_t *r, const user_t *u, const char *method, const char *path,
               const char *key, const char *body)
{
    if (!api_try(r, u, method, path, key, NULL, body))
        fail_msg("%s %s: %s", method, path, r->error);
    return r->status;
}

/* Fails unless 'r' has HTTP 'status' and a JSON body. */
static void expect_status(const http_response_t *r, int status)
{
    if (r->status != status || r->json == NULL)
        fail_msg("HTTP %d, expected %d with JSON: %s", r->status, status, r->body ? r->body : "");
}

/* Fails unless 'r' is an error 'status' with code 'code' and a message.
 * Returns the "error" object (owned by 'r'). */
static json_t *expect_error(const http_response_t *r, int status, const char *code)
{
    expect_status(r, status);
    json_t *error = json_object_get(r->json, "error");
    const char *got = json_string_value(json_object_get(error, "code"));
    if (got == NULL || strcmp(got, code) != 0)
        fail_msg("HTTP %d: expected error code %s: %s", r->status, code, r->body);
    const char *message = json_string_value(json_object_get(error, "message"));
    assert_true(message != NULL && message[0] != '\0');
    return error;
}

/* String member 'key' of 'object'; fails when missing or not a string. */
static const char *json_text(const json_t *object, const char *key)
{
    const char *value = json_string_value(json_object_get(object, key));
    if (value == NULL)
        fail_msg("no string \"%s\" in the response", key);
    return value != NULL ? value : ""; /* fail_msg does not return; the compiler cannot tell */
}

/* Integer member 'key' of 'object'; fails when missing or not an integer. */
static int64_t json_number(const json_t *object, const char *key)
{
    json_t *value = json_object_get(object, key);
    if (!json_is_integer(value))
        fail_msg("no integer \"%s\" in the response", key);
    return (int64_t)json_integer_value(value);
}

/* Fails unless 'text' is an RFC 3339 UTC time such as
 * 2026-01-02T03:04:05.678Z within 10 minutes of now. */
static void expect_recent_utc_time(const char *text)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int ms = 0;
    char zulu = 0;
    int n = sscanf(text, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms, &zulu);
    if (n != 8 || zulu != 'Z' || strlen(text) != 24)
        fail_msg("'%s' is not an RFC 3339 UTC time", text);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    long long skew = (long long)(timegm(&tm) - time(NULL));
    if (skew < -600 || skew > 600)
        fail_msg("'%s' is %lld s away from now", text, skew);
}

/* ---- the API, one call each ------------------------------------------------ */

/* Registers a new account (unique email from 'tag') and logs it in. */
static void user_new(user_t *u, const char *tag)
{
    memset(u, 0, sizeof *u);
    char local[96], body[512];
    unique(local, sizeof local, tag);
    snprintf(u->email, sizeof u->email, "%s@example.com", local);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\",\"name\":\"Payer\"}",
             u->email, password);
    http_response_t r;
    api(&r, NULL, "POST", "/v1/users", NULL, body);
    expect_status(&r, 201);
    snprintf(u->id, sizeof u->id, "%s", json_text(r.json, "id"));
    http_response_free(&r);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", u->email, password);
    api(&r, NULL, "POST", "/v1/auth/login", NULL, body);
    expect_status(&r, 200);
    snprintf(u->token, sizeof u->token, "%s", json_text(r.json, "access_token"));
    http_response_free(&r);
}

/* GET /v1/wallet as 'u'; returns the balance. */
static int64_t wallet_balance(const user_t *u)
{
    http_response_t r;
    api(&r, u, "GET", "/v1/wallet", NULL, NULL);
    expect_status(&r, 200);
    assert_string_equal(json_text(r.json, "user_id"), u->id);
    int64_t balance = json_number(r.json, "balance");
    http_response_free(&r);
    return balance;
}

/* Tops up 'u' by 'amount' with a new key; returns the new balance. */
static int64_t top_up(const user_t *u, int64_t amount)
{
    char key[64], body[64];
    unique(key, sizeof key, "topup");
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    api(&r, u, "POST", "/v1/wallet/topups", key, body);
    expect_status(&r, 201);
    assert_int_equal(json_number(r.json, "amount"), amount);
    int64_t balance = json_number(r.json, "balance");
    http_response_free(&r);
    return balance;
}

/* Creates an order of 'amount' for 'u'; its id goes to 'id'. */
static void order_new(const user_t *u, int64_t amount, char id[id_bytes_max + 1])
{
    char body[64];
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    api(&r, u, "POST", "/v1/orders", NULL, body);
    expect_status(&r, 201);
    assert_string_equal(json_text(r.json, "status"), "PENDING");
    assert_int_equal(json_number(r.json, "amount"), amount);
    snprintf(id, id_bytes_max + 1, "%s", json_text(r.json, "id"));
    http_response_free(&r);
}

/* GET /v1/orders/'id' as 'u' (200 expected); the caller frees 'r'. */
static void order_get(http_response_t *r, const user_t *u, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/orders/%s", id);
    api(r, u, "GET", path, NULL, NULL);
    expect_status(r, 200);
    assert_string_equal(json_text(r->json, "id"), id);
}

/* The status of order 'id' of 'u' ("PENDING", ...) into 'out'. */
static void order_status(const user_t *u, const char *id, char out[16])
{
    http_response_t r;
    order_get(&r, u, id);
    snprintf(out, 16, "%s", json_text(r.json, "status"));
    http_response_free(&r);
}

/* POST /v1/payments {order_id} as 'u' with Idempotency-Key 'key' (or
 * NULL). Returns the HTTP status; the caller frees 'r'. */
static int pay(http_response_t *r, const user_t *u, const char *order_id, const char *key)
{
    char body[128];
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order_id);
    return api(r, u, "POST", "/v1/payments", key, body);
}

/* Pays 'order_id' of 'u' with a new key, expecting 201 SUCCEEDED; the
 * payment id goes to 'id'. */
static void pay_ok(const user_t *u, const char *order_id, char id[id_bytes_max + 1])
{
    char key[64];
    unique(key, sizeof key, "pay");
    http_response_t r;
    pay(&r, u, order_id, key);
    expect_status(&r, 201);
    assert_string_equal(json_text(r.json, "status"), "SUCCEEDED");
    snprintf(id, id_bytes_max + 1, "%s", json_text(r.json, "id"));
    http_response_free(&r);
}

/* POST /v1/payments/'payment_id'/refunds as 'u' with 'body' and key. */
static int refund(http_response_t *r, const user_t *u, const char *payment_id, const char *key,
                  const char *body)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/payments/%s/refunds", payment_id);
    return api(r, u, "POST", path, key, body);
}

/* GET /v1/payments/'id' as 'u' (200 expected); the caller frees 'r'. */
static void payment_get(http_response_t *r, const user_t *u, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/payments/%s", id);
    api(r, u, "GET", path, NULL, NULL);
    expect_status(r, 200);
    assert_string_equal(json_text(r->json, "id"), id);
}

/* ---- the database -------------------------------------------------------- */

/* The single integer 'sql' returns for 'user_id'. */
static int64_t db_int(const char *sql, const char *user_id)
{
    const char *params[] = {user_id};
    return db_assert_int(g.db, sql, 1, params);
}

/* Checks that every COMPLETED order of 'user_id' has exactly one SUCCEEDED
 * payment, the one it names, and that every SUCCEEDED payment's order is
 * COMPLETED by it. */
static void db_orders_check(const char *user_id)
{
    static const char completed_sql[] =
        "SELECT o.id, o.payment_id,"
        " (SELECT count(*) FROM payments.payments p WHERE p.order_id = o.id"
        "   AND p.status = 'SUCCEEDED'),"
        " (SELECT count(*) FROM payments.payments p WHERE p.order_id = o.id"
        "   AND p.status = 'SUCCEEDED' AND p.id = o.payment_id)"
        " FROM orders.orders o WHERE o.user_id = $1 AND o.status = 'COMPLETED'";
    static const char orphan_sql[] =
        "SELECT p.id FROM payments.payments p LEFT JOIN orders.orders o ON o.id = p.order_id"
        " WHERE p.user_id = $1 AND p.status = 'SUCCEEDED'"
        " AND (o.status IS DISTINCT FROM 'COMPLETED' OR o.payment_id IS DISTINCT FROM p.id)";
    const char *params[] = {user_id};
    PGresult *res = db_assert_rows(g.db, completed_sql, 1, params);
    for (int i = 0; i < PQntuples(res); i++) {
        if (strcmp(PQgetvalue(res, i, 2), "1") != 0 || strcmp(PQgetvalue(res, i, 3), "1") != 0) {
            char order[80];
            snprintf(order, sizeof order, "%s", PQgetvalue(res, i, 0));
            PQclear(res);
            fail_msg("COMPLETED order %s does not have exactly one SUCCEEDED payment, its own",
                     order);
        }
    }
    PQclear(res);
    res = db_assert_rows(g.db, orphan_sql, 1, params);
    int orphans = PQntuples(res);
    if (orphans > 0) {
        char payment[80];
        snprintf(payment, sizeof payment, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
        fail_msg("SUCCEEDED payment %s did not complete its order", payment);
    }
    PQclear(res);
}

/* ---- processes ------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    char deadline[64];
    snprintf(deadline, sizeof deadline, "PAYGATE_GATEWAY_DEADLINE_MS=%d", gateway_deadline_ms);
    const char *gateway_env[] = {deadline, NULL};
    /* Ready when the gateway says so (broker up, user, order and payment
     * registered, each after its migration) and every instance registered,
     * so concurrent payments really run at once. */
    system_config_t config = {
        .name = "payments",
        .processes = SYSTEM_ONLY(system_user) | SYSTEM_ONLY(system_order) |
                     SYSTEM_ONLY(system_payment) | SYSTEM_ONLY(system_gateway),
        .jwt_secret = jwt_secret,
        .rate_limits_off = true,
        .threads = {[system_user] = service_threads,
                    [system_order] = service_threads,
                    [system_payment] = service_threads,
                    [system_gateway] = gateway_threads},
        .ready_timeout_ms = ready_timeout_ms,
        .process_env = {[system_gateway] = gateway_env},
    };
    g.system = system_new(&config);
    if (g.system == NULL)
        return -1;
    g.http_port = system_gateway_port(g.system);
    g.dsn = system_pg_dsn(g.system);

    g.db = PQconnectdb(g.dsn);
    if (PQstatus(g.db) != CONNECTION_OK)
        fail_msg("cannot connect to the test database: %s", PQerrorMessage(g.db));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    PQfinish(g.db);
    g.db = NULL;
    /* Draining on SIGTERM and exiting 0 (no leak under ASan) is part of
     * every process's contract: check it. */
    bool clean = system_stop(g.system);
    system_destroy(&g.system);
    return clean ? 0 : -1;
}

/* ---- tests: the sample flow ------------------------------------------------ */

/* The README's story: register, log in, top up ₹2000, create a ₹1000
 * order, pay it. The payment comes back 201 SUCCEEDED with every field,
 * the order is COMPLETED by it, and the wallet lost exactly ₹1000. */
static void test_sample_flow(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "sample");
    assert_int_equal(wallet_balance(&u), 0);
    assert_int_equal(top_up(&u, 200000), 200000);
    char order[id_bytes_max + 1], key[64];
    order_new(&u, 100000, order);
    unique(key, sizeof key, "pay");

    http_response_t r;
    assert_int_equal(pay(&r, &u, order, key), 201);
    expect_status(&r, 201);
    const char *id = json_text(r.json, "id");
    assert_true(strncmp(id, "pay_", 4) == 0);
    assert_string_equal(json_text(r.json, "order_id"), order);
    assert_string_equal(json_text(r.json, "user_id"), u.id);
    assert_int_equal(json_number(r.json, "amount"), 100000);
    assert_string_equal(json_text(r.json, "currency"), "INR");
    assert_string_equal(json_text(r.json, "status"), "SUCCEEDED");
    assert_int_equal(json_number(r.json, "amount_refunded"), 0);
    assert_string_equal(json_text(r.json, "failure_code"), "");
    expect_recent_utc_time(json_text(r.json, "created_at"));
    char payment[id_bytes_max + 1];
    snprintf(payment, sizeof payment, "%s", id);
    http_response_free(&r);

    order_get(&r, &u, order);
    assert_string_equal(json_text(r.json, "status"), "COMPLETED");
    assert_string_equal(json_text(r.json, "payment_id"), payment);
    http_response_free(&r);

    payment_get(&r, &u, payment);
    assert_string_equal(json_text(r.json, "status"), "SUCCEEDED");
    assert_int_equal(json_number(r.json, "amount"), 100000);
    http_response_free(&r);

    assert_int_equal(wallet_balance(&u), 100000);
    assert_int_equal(db_assert_wallet(g.db, u.id), 100000);
    db_orders_check(u.id);
}

/* ---- tests: failures ------------------------------------------------------- */

/* A short wallet: 402 insufficient_funds naming the (FAILED) payment, no
 * money moved, the order still PENDING. After a top-up a NEW key pays it;
 * the OLD key keeps answering the first 402, word for word. */
static void test_insufficient_funds_then_new_key(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "short");
    top_up(&u, 5000);
    char order[id_bytes_max + 1], old_key[64], new_key[64];
    order_new(&u, 10000, order);
    unique(old_key, sizeof old_key, "pay");
    unique(new_key, sizeof new_key, "pay");

    http_response_t first;
    pay(&first, &u, order, old_key);
    json_t *error = expect_error(&first, 402, "insufficient_funds");
    const char *failed_id = json_text(error, "payment_id");
    assert_true(strncmp(failed_id, "pay_", 4) == 0);
    char status[16];
    order_status(&u, order, status);
    assert_string_equal(status, "PENDING");
    assert_int_equal(wallet_balance(&u), 5000);
    http_response_t r;
    payment_get(&r, &u, failed_id);
    assert_string_equal(json_text(r.json, "status"), "FAILED");
    assert_string_equal(json_text(r.json, "failure_code"), "insufficient_funds");
    http_response_free(&r);

    top_up(&u, 10000);
    assert_int_equal(pay(&r, &u, order, new_key), 201);
    assert_string_equal(json_text(r.json, "status"), "SUCCEEDED");
    assert_string_not_equal(json_text(r.json, "id"), failed_id);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 5000);

    /* The old key replays its recorded outcome, even though the order is
     * paid now. Only request_id (per request) may differ. */
    pay(&r, &u, order, old_key);
    expect_error(&r, 402, "insufficient_funds");
    json_object_del(json_object_get(first.json, "error"), "request_id");
    json_object_del(json_object_get(r.json, "error"), "request_id");
    if (!json_equal(first.json, r.json))
        fail_msg("replayed 402 differs: first %s, replay %s", first.body, r.body);
    http_response_free(&r);
    http_response_free(&first);
    assert_int_equal(wallet_balance(&u), 5000);
    assert_int_equal(db_assert_wallet(g.db, u.id), 5000);
    db_orders_check(u.id);
}

/* Only a PENDING order can be paid: a COMPLETED one (new key) and a
 * CANCELLED one answer 409 order_not_payable, and no money moves. */
static void test_order_not_payable(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "notpayable");
    top_up(&u, 50000);
    char completed[id_bytes_max + 1], cancelled[id_bytes_max + 1], payment[id_bytes_max + 1];
    order_new(&u, 10000, completed);
    pay_ok(&u, completed, payment);
    order_new(&u, 10000, cancelled);
    http_response_t r;
    char path[128], key[64];
    snprintf(path, sizeof path, "/v1/orders/%s/cancel", cancelled);
    api(&r, &u, "POST", path, NULL, "{}");
    expect_status(&r, 200);
    assert_string_equal(json_text(r.json, "status"), "CANCELLED");
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 40000);

    const char *orders[] = {completed, cancelled};
    for (size_t i = 0; i < 2; i++) {
        unique(key, sizeof key, "pay");
        pay(&r, &u, orders[i], key);
        json_t *error = expect_error(&r, 409, "order_not_payable");
        assert_true(strncmp(json_text(error, "payment_id"), "pay_", 4) == 0);
        http_response_free(&r);
    }
    assert_int_equal(wallet_balance(&u), 40000);
    order_get(&r, &u, completed);
    assert_string_equal(json_text(r.json, "payment_id"), payment);
    http_response_free(&r);
    char status[16];
    order_status(&u, cancelled, status);
    assert_string_equal(status, "CANCELLED");
    assert_int_equal(db_assert_wallet(g.db, u.id), 40000);
    db_orders_check(u.id);
}

/* Another user's order, payment or refund is invisible: paying it, reading
 * or cancelling it, reading or refunding the payment all answer 404, and
 * nothing changes for the owner. */
static void test_other_users_things_not_found(void **state)
{
    (void)state;
    user_t owner, other;
    user_new(&owner, "owner");
    user_new(&other, "other");
    top_up(&owner, 30000);
    top_up(&other, 30000);
    char pending[id_bytes_max + 1], paid[id_bytes_max + 1], payment[id_bytes_max + 1];
    char path[128], key[64];
    order_new(&owner, 10000, pending);
    order_new(&owner, 10000, paid);
    pay_ok(&owner, paid, payment);

    http_response_t r;
    unique(key, sizeof key, "pay");
    pay(&r, &other, pending, key);
    expect_error(&r, 404, "order_not_found");
    http_response_free(&r);

    snprintf(path, sizeof path, "/v1/orders/%s", pending);
    api(&r, &other, "GET", path, NULL, NULL);
    expect_error(&r, 404, "order_not_found");
    http_response_free(&r);
    snprintf(path, sizeof path, "/v1/orders/%s/cancel", pending);
    api(&r, &other, "POST", path, NULL, "{}");
    expect_error(&r, 404, "order_not_found");
    http_response_free(&r);

    snprintf(path, sizeof path, "/v1/payments/%s", payment);
    api(&r, &other, "GET", path, NULL, NULL);
    expect_error(&r, 404, "payment_not_found");
    http_response_free(&r);
    unique(key, sizeof key, "refund");
    refund(&r, &other, payment, key, "{}");
    expect_error(&r, 404, "payment_not_found");
    http_response_free(&r);

    /* Nothing moved, nothing changed. */
    char status[16];
    order_status(&owner, pending, status);
    assert_string_equal(status, "PENDING");
    payment_get(&r, &owner, payment);
    assert_int_equal(json_number(r.json, "amount_refunded"), 0);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&owner), 20000);
    assert_int_equal(wallet_balance(&other), 30000);
    assert_int_equal(db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", other.id),
                     0);
}

/* ---- tests: idempotency ------------------------------------------------------ */

/* The same key gives the first response, byte for byte (same payment id,
 * 201), and one debit; the key with another order is 409
 * idempotency_key_reused (that order stays unpaid); no key is 400. */
static void test_idempotent_replay(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "replay");
    top_up(&u, 50000);
    char order[id_bytes_max + 1], second[id_bytes_max + 1], key[64];
    order_new(&u, 12345, order);
    order_new(&u, 1000, second);
    unique(key, sizeof key, "pay");

    http_response_t first, r;
    assert_int_equal(pay(&first, &u, order, key), 201);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pay(&r, &u, order, key), 201);
        if (r.body_len != first.body_len || memcmp(r.body, first.body, r.body_len) != 0)
            fail_msg("replay differs: first %s, replay %s", first.body, r.body);
        http_response_free(&r);
    }
    assert_int_equal(wallet_balance(&u), 50000 - 12345);

    pay(&r, &u, second, key);
    expect_error(&r, 409, "idempotency_key_reused");
    http_response_free(&r);
    char status[16];
    order_status(&u, second, status);
    assert_string_equal(status, "PENDING");

    pay(&r, &u, second, NULL);
    expect_error(&r, 400, "idempotency_key_required");
    http_response_free(&r);
    order_status(&u, second, status);
    assert_string_equal(status, "PENDING");

    assert_int_equal(wallet_balance(&u), 50000 - 12345);
    assert_int_equal(db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", u.id), 1);
    assert_int_equal(db_assert_wallet(g.db, u.id), 50000 - 12345);
    db_orders_check(u.id);
    http_response_free(&first);
}

/* ---- tests: refunds ------------------------------------------------------------ */

/* Partial refunds add up on the payment; one over what is left is 409
 * refund_exceeds_payment; {} refunds the rest; a replayed key gives the
 * same refund and credits once; the wallet rises by exactly the refunds. */
static void test_refunds(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "refund");
    top_up(&u, 100000);
    char order[id_bytes_max + 1], payment[id_bytes_max + 1];
    order_new(&u, 100000, order);
    pay_ok(&u, order, payment);
    assert_int_equal(wallet_balance(&u), 0);

    http_response_t r;
    char first_key[64], key[64], first_id[id_bytes_max + 1];
    unique(first_key, sizeof first_key, "refund");
    assert_int_equal(refund(&r, &u, payment, first_key, "{\"amount\":30000}"), 201);
    expect_status(&r, 201);
    assert_true(strncmp(json_text(r.json, "id"), "ref_", 4) == 0);
    assert_string_equal(json_text(r.json, "payment_id"), payment);
    assert_int_equal(json_number(r.json, "amount"), 30000);
    assert_string_equal(json_text(r.json, "status"), "SUCCEEDED");
    expect_recent_utc_time(json_text(r.json, "created_at"));
    snprintf(first_id, sizeof first_id, "%s", json_text(r.json, "id"));
    http_response_free(&r);
    payment_get(&r, &u, payment);
    assert_int_equal(json_number(r.json, "amount_refunded"), 30000);
    assert_string_equal(json_text(r.json, "status"), "SUCCEEDED");
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 30000);

    unique(key, sizeof key, "refund");
    assert_int_equal(refund(&r, &u, payment, key, "{\"amount\":20000}"), 201);
    assert_int_equal(json_number(r.json, "amount"), 20000);
    http_response_free(&r);
    payment_get(&r, &u, payment);
    assert_int_equal(json_number(r.json, "amount_refunded"), 50000);
    http_response_free(&r);

    unique(key, sizeof key, "refund");
    refund(&r, &u, payment, key, "{\"amount\":50001}");
    expect_error(&r, 409, "refund_exceeds_payment");
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 50000);

    unique(key, sizeof key, "refund");
    assert_int_equal(refund(&r, &u, payment, key, "{}"), 201);
    assert_int_equal(json_number(r.json, "amount"), 50000);
    assert_string_equal(json_text(r.json, "status"), "SUCCEEDED");
    http_response_free(&r);
    payment_get(&r, &u, payment);
    assert_int_equal(json_number(r.json, "amount_refunded"), 100000);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 100000);

    /* Nothing is left: even {} is refused. */
    unique(key, sizeof key, "refund");
    refund(&r, &u, payment, key, "{}");
    expect_error(&r, 409, "refund_exceeds_payment");
    http_response_free(&r);

    /* The first key again: the first refund, not a second credit. */
    assert_int_equal(refund(&r, &u, payment, first_key, "{\"amount\":30000}"), 201);
    assert_string_equal(json_text(r.json, "id"), first_id);
    assert_int_equal(json_number(r.json, "amount"), 30000);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 100000);
    assert_int_equal(db_assert_wallet(g.db, u.id), 100000);
    assert_int_equal(db_int("SELECT count(*) FROM payments.refunds WHERE user_id = $1", u.id), 3);
    assert_int_equal(db_int("SELECT COALESCE(SUM(amount), 0) FROM users.ledger WHERE user_id = $1"
                            " AND kind = 'CREDIT'",
                            u.id),
                     100000);
}

/* A FAILED payment cannot be refunded: 409 payment_not_refundable. */
static void test_refund_of_failed_payment_refused(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "refundfail");
    top_up(&u, 1000);
    char order[id_bytes_max + 1], key[64], failed[id_bytes_max + 1];
    order_new(&u, 5000, order);
    unique(key, sizeof key, "pay");
    http_response_t r;
    pay(&r, &u, order, key);
    json_t *error = expect_error(&r, 402, "insufficient_funds");
    snprintf(failed, sizeof failed, "%s", json_text(error, "payment_id"));
    http_response_free(&r);
    unique(key, sizeof key, "refund");
    refund(&r, &u, failed, key, "{}");
    expect_error(&r, 409, "payment_not_refundable");
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 1000);
    assert_int_equal(db_assert_wallet(g.db, u.id), 1000);
}

/* ---- tests: lists ------------------------------------------------------------ */

/* Pages through GET 'base' (?limit='limit') as 'u' until has_more is
 * false; the ids go to 'ids' (up to 'max'). Returns how many. Every page
 * but the last is full. */
static size_t list_all(const user_t *u, const char *base, int limit, char ids[][id_bytes_max + 1],
                       size_t max)
{
    size_t count = 0;
    char after[id_bytes_max + 1] = "";
    for (int page = 0; page < 100; page++) {
        char path[256];
        if (after[0] == '\0')
            snprintf(path, sizeof path, "%s?limit=%d", base, limit);
        else
            snprintf(path, sizeof path, "%s?limit=%d&starting_after=%s", base, limit, after);
        http_response_t r;
        api(&r, u, "GET", path, NULL, NULL);
        expect_status(&r, 200);
        json_t *data = json_object_get(r.json, "data");
        assert_true(json_is_array(data));
        json_t *more = json_object_get(r.json, "has_more");
        assert_true(json_is_boolean(more));
        size_t n = json_array_size(data);
        if (json_is_true(more))
            assert_int_equal(n, limit);
        assert_true(n <= (size_t)limit);
        for (size_t i = 0; i < n; i++) {
            json_t *item = json_array_get(data, i);
            assert_string_equal(json_text(item, "user_id"), u->id);
            assert_true(count < max);
            snprintf(ids[count++], id_bytes_max + 1, "%s", json_text(item, "id"));
        }
        if (n > 0)
            snprintf(after, sizeof after, "%s", ids[count - 1]);
        bool last = !json_is_true(more);
        http_response_free(&r);
        if (last)
            return count;
    }
    fail_msg("%s: more than 100 pages", base);
    return count;
}

/* Fails unless 'got' is exactly 'want' in reverse (newest first). */
static void expect_newest_first(char got[][id_bytes_max + 1], size_t got_n,
                                char want[][id_bytes_max + 1], size_t want_n)
{
    assert_int_equal(got_n, want_n);
    for (size_t i = 0; i < want_n; i++)
        assert_string_equal(got[i], want[want_n - 1 - i]);
}

/* GET /'base' as 'u' with 'query'; fails unless 400 invalid_argument-ish
 * 'code' naming 'field' (NULL: no field check). */
static void expect_bad_query(const user_t *u, const char *base, const char *query, const char *code,
                             const char *field)
{
    char path[256];
    snprintf(path, sizeof path, "%s?%s", base, query);
    http_response_t r;
    api(&r, u, "GET", path, NULL, NULL);
    json_t *error = expect_error(&r, 400, code);
    if (field != NULL)
        assert_string_equal(json_text(error, "field"), field);
    http_response_free(&r);
}

/* Orders and payments list newest first in pages: limit/starting_after/
 * has_more visit every item once; limit=0 is the default 10; limit=101,
 * an unknown parameter and another user's cursor are 400. */
static void test_list_pagination(void **state)
{
    (void)state;
    user_t u, other;
    user_new(&u, "pages");
    user_new(&other, "pages-other");
    top_up(&u, 100000);
    static char orders[page_orders][id_bytes_max + 1], payments[page_payments][id_bytes_max + 1];
    static char got[page_orders + 5][id_bytes_max + 1];
    for (int i = 0; i < page_orders; i++)
        order_new(&u, 100 + i, orders[i]);
    for (int i = 0; i < page_payments; i++)
        pay_ok(&u, orders[i], payments[i]);
    char other_order[id_bytes_max + 1], other_payment[id_bytes_max + 1];
    top_up(&other, 1000);
    order_new(&other, 500, other_order);
    pay_ok(&other, other_order, other_payment);

    static const int limits[] = {1, 7, 10, 25, 100};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        size_t n = list_all(&u, "/v1/orders", limits[i], got, page_orders + 5);
        expect_newest_first(got, n, orders, page_orders);
        n = list_all(&u, "/v1/payments", limits[i], got, page_orders + 5);
        expect_newest_first(got, n, payments, page_payments);
    }

    /* limit=0 means the default page of 10. */
    const char *bases[] = {"/v1/orders", "/v1/payments"};
    for (size_t b = 0; b < 2; b++) {
        char path[128];
        snprintf(path, sizeof path, "%s?limit=0", bases[b]);
        http_response_t r;
        api(&r, &u, "GET", path, NULL, NULL);
        expect_status(&r, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 10);
        assert_true(json_is_true(json_object_get(r.json, "has_more")));
        http_response_free(&r);

        expect_bad_query(&u, bases[b], "limit=101", "invalid_limit", NULL);
        expect_bad_query(&u, bases[b], "limit=-1", "invalid_limit", NULL);
        expect_bad_query(&u, bases[b], "page=2", "invalid_argument", "page");
        expect_bad_query(&u, bases[b], "limit=5&user_id=x", "invalid_argument", "user_id");
    }
    char query[128];
    snprintf(query, sizeof query, "starting_after=%s", other_order);
    expect_bad_query(&u, "/v1/orders", query, "invalid_starting_after", NULL);
    snprintf(query, sizeof query, "starting_after=%s", other_payment);
    expect_bad_query(&u, "/v1/payments", query, "invalid_starting_after", NULL);

    /* The oldest item as cursor: an empty last page. */
    for (size_t b = 0; b < 2; b++) {
        char path[160];
        snprintf(path, sizeof path, "%s?starting_after=%s", bases[b],
                 b == 0 ? orders[0] : payments[0]);
        http_response_t r;
        api(&r, &u, "GET", path, NULL, NULL);
        expect_status(&r, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
        assert_true(json_is_false(json_object_get(r.json, "has_more")));
        http_response_free(&r);
    }
}

/* ---- tests: mass assignment -------------------------------------------------- */

/* A client cannot set what the server owns: POST /v1/orders with
 * "user_id", "status", "payment_id" or "id" is 400 naming the field, and
 * creates nothing. */
static void test_order_mass_assignment_refused(void **state)
{
    (void)state;
    user_t u, victim;
    user_new(&u, "mass");
    user_new(&victim, "mass-victim");
    const char *fields[][2] = {{"user_id", victim.id},
                               {"status", "COMPLETED"},
                               {"payment_id", "pay_forged"},
                               {"id", "ord_forged"}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"amount\":1000,\"%s\":\"%s\"}", fields[i][0], fields[i][1]);
        http_response_t r;
        api(&r, &u, "POST", "/v1/orders", NULL, body);
        json_t *error = expect_error(&r, 400, "invalid_argument");
        assert_string_equal(json_text(error, "field"), fields[i][0]);
        http_response_free(&r);
    }
    assert_int_equal(db_int("SELECT count(*) FROM orders.orders WHERE user_id = $1", u.id), 0);
    assert_int_equal(db_int("SELECT count(*) FROM orders.orders WHERE user_id = $1", victim.id), 0);
}

/* ---- tests: concurrency ------------------------------------------------------- */

typedef struct {
    const user_t *user;
    char order[id_bytes_max + 1];
    char key[64];
    int status; /* final HTTP status; 0 when none came */
    char code[64];
    char payment[id_bytes_max + 1];
    char payment_status[16];
    int attempts;
    pthread_barrier_t *start;
} race_job_t;

/* Pays job->order with job->key once all threads are ready, retrying the
 * same key on a 5xx or a lost connection (as a real client would). */
static void *race_thread(void *arg)
{
    race_job_t *job = arg;
    char body[128];
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", job->order);
    pthread_barrier_wait(job->start);
    for (job->attempts = 1; job->attempts <= retry_attempts_max; job->attempts++) {
        http_response_t r;
        bool answered = api_try(&r, job->user, "POST", "/v1/payments", job->key, NULL, body);
        if (answered && r.status < 500 && r.json != NULL) {
            job->status = r.status;
            json_t *error = json_object_get(r.json, "error");
            const char *code = json_string_value(json_object_get(error, "code"));
            const char *id = error ? json_string_value(json_object_get(error, "payment_id"))
                                   : json_string_value(json_object_get(r.json, "id"));
            const char *status = json_string_value(json_object_get(r.json, "status"));
            snprintf(job->code, sizeof job->code, "%s", code ? code : "");
            snprintf(job->payment, sizeof job->payment, "%s", id ? id : "");
            snprintf(job->payment_status, sizeof job->payment_status, "%s", status ? status : "");
            bool in_progress = code != NULL && strcmp(code, "idempotency_in_progress") == 0;
            http_response_free(&r);
            if (!in_progress)
                return NULL;
        } else {
            http_response_free(&r);
        }
        sleep_ms(200);
    }
    job->status = 0;
    return NULL;
}

/* 20 orders of ₹10 paid at once from a ₹125 wallet: exactly 12 succeed
 * (201) and 8 are insufficient_funds (402); the balance ends at ₹5 and
 * never went below zero; balance + payments == top-ups; every COMPLETED
 * order has exactly one SUCCEEDED payment; balance == SUM(ledger). */
static void test_concurrent_payments_one_wallet(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "race");
    top_up(&u, 10000);
    top_up(&u, race_wallet_minor - 10000);
    static race_job_t jobs[race_payments];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, race_payments);
    for (int i = 0; i < race_payments; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].user = &u;
        jobs[i].start = &start;
        order_new(&u, race_order_minor, jobs[i].order);
        unique(jobs[i].key, sizeof jobs[i].key, "race");
    }
    pthread_t threads[race_payments];
    for (int i = 0; i < race_payments; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, race_thread, &jobs[i]), 0);
    for (int i = 0; i < race_payments; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);

    int succeeded = 0, insufficient = 0;
    for (int i = 0; i < race_payments; i++) {
        race_job_t *job = &jobs[i];
        char status[16];
        order_status(&u, job->order, status);
        if (job->status == 201 && strcmp(job->payment_status, "SUCCEEDED") == 0) {
            succeeded++;
            assert_string_equal(status, "COMPLETED");
        } else if (job->status == 402 && strcmp(job->code, "insufficient_funds") == 0) {
            insufficient++;
            assert_string_equal(status, "PENDING");
            assert_true(strncmp(job->payment, "pay_", 4) == 0);
        } else {
            fail_msg("payment %d answered HTTP %d %s after %d attempts", i, job->status, job->code,
                     job->attempts);
        }
    }
    assert_int_equal(succeeded, race_succeeded);
    assert_int_equal(insufficient, race_payments - race_succeeded);
    int64_t left = race_wallet_minor - (int64_t)race_succeeded * race_order_minor;
    assert_int_equal(wallet_balance(&u), left);

    /* The database agrees, and the ledger never went negative. */
    assert_int_equal(db_assert_wallet(g.db, u.id), left);
    int64_t paid = db_int("SELECT COALESCE(SUM(amount), 0) FROM payments.payments"
                          " WHERE user_id = $1 AND status = 'SUCCEEDED'",
                          u.id);
    int64_t topups =
        db_int("SELECT COALESCE(SUM(amount), 0) FROM users.topups WHERE user_id = $1", u.id);
    assert_int_equal(topups, race_wallet_minor);
    assert_int_equal(left + paid, topups);
    assert_int_equal(db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1"
                            " AND status = 'FAILED' AND failure_code = 'insufficient_funds'",
                            u.id),
                     race_payments - race_succeeded);
    assert_int_equal(db_int("SELECT count(*) FROM orders.orders WHERE user_id = $1"
                            " AND status = 'COMPLETED'",
                            u.id),
                     race_succeeded);
    assert_int_equal(db_int("SELECT count(*) FROM users.ledger WHERE user_id = $1"
                            " AND kind = 'DEBIT'",
                            u.id),
                     race_succeeded);
    db_orders_check(u.id);
}

/* One request of a burst: sent by its own thread once all are ready. */
typedef struct {
    const user_t *user;
    const char *path;
    char key[64];
    const char *body;
    pthread_barrier_t *start;
    bool answered;
    int status;
    char code[64];
    char id[id_bytes_max + 1]; /* body "id", or the error's "payment_id" */
} burst_job_t;

static void *burst_thread(void *arg)
{
    burst_job_t *job = arg;
    pthread_barrier_wait(job->start);
    http_response_t r;
    job->answered = api_try(&r, job->user, "POST", job->path, job->key, NULL, job->body);
    job->status = r.status;
    json_t *error = json_object_get(r.json, "error");
    const char *code = json_string_value(json_object_get(error, "code"));
    const char *id = error ? json_string_value(json_object_get(error, "payment_id"))
                           : json_string_value(json_object_get(r.json, "id"));
    snprintf(job->code, sizeof job->code, "%s", code ? code : "");
    snprintf(job->id, sizeof job->id, "%s", id ? id : "");
    http_response_free(&r);
    return NULL;
}

/* Sends 'n' jobs at once and waits for all; fails when one got no answer
 * or a 5xx (nothing here is down). */
static void burst_run(burst_job_t *jobs, int n)
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n);
    pthread_t threads[32];
    assert_true(n <= 32);
    for (int i = 0; i < n; i++) {
        jobs[i].start = &start;
        assert_int_equal(pthread_create(&threads[i], NULL, burst_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < n; i++) {
        if (!jobs[i].answered || jobs[i].status >= 500)
            fail_msg("request %d of the burst: HTTP %d %s", i, jobs[i].status, jobs[i].code);
    }
}

/* A double click: 8 requests with ONE key for one order at once. Each
 * answer is the payment (201, always the same id) or 409
 * idempotency_in_progress; one payment, one debit. */
static void test_concurrent_same_key_pays_once(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "samekey");
    top_up(&u, 10000);
    char order[id_bytes_max + 1], key[64], body[128];
    order_new(&u, 3000, order);
    unique(key, sizeof key, "pay");
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order);
    burst_job_t jobs[8];
    for (int i = 0; i < 8; i++) {
        jobs[i] = (burst_job_t){.user = &u, .path = "/v1/payments", .body = body};
        snprintf(jobs[i].key, sizeof jobs[i].key, "%s", key);
    }
    burst_run(jobs, 8);
    char paid[id_bytes_max + 1] = "";
    for (int i = 0; i < 8; i++) {
        if (jobs[i].status == 201) {
            if (paid[0] == '\0')
                snprintf(paid, sizeof paid, "%s", jobs[i].id);
            assert_string_equal(jobs[i].id, paid);
        } else if (jobs[i].status != 409 || strcmp(jobs[i].code, "idempotency_in_progress") != 0) {
            fail_msg("same-key request %d answered %d %s", i, jobs[i].status, jobs[i].code);
        }
    }
    /* Once settled, the key answers the payment. */
    http_response_t r;
    assert_int_equal(pay(&r, &u, order, key), 201);
    if (paid[0] != '\0')
        assert_string_equal(json_text(r.json, "id"), paid);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 7000);
    assert_int_equal(db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", u.id), 1);
    assert_int_equal(
        db_int("SELECT count(*) FROM users.ledger WHERE user_id = $1 AND kind = 'DEBIT'", u.id), 1);
    assert_int_equal(db_assert_wallet(g.db, u.id), 7000);
    db_orders_check(u.id);
}

/* A double payment: 8 requests with DIFFERENT keys for one order at once.
 * Exactly one is 201; the others are 409 order_not_payable (each naming
 * its payment); whoever was debited on the way is credited back, so the
 * wallet pays the order once. */
static void test_concurrent_payments_one_order(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "oneorder");
    top_up(&u, 30000);
    char order[id_bytes_max + 1], body[128];
    order_new(&u, 3000, order);
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order);
    burst_job_t jobs[8];
    for (int i = 0; i < 8; i++) {
        jobs[i] = (burst_job_t){.user = &u, .path = "/v1/payments", .body = body};
        unique(jobs[i].key, sizeof jobs[i].key, "pay");
    }
    burst_run(jobs, 8);
    int succeeded = 0;
    char winner[id_bytes_max + 1] = "";
    for (int i = 0; i < 8; i++) {
        if (jobs[i].status == 201) {
            succeeded++;
            snprintf(winner, sizeof winner, "%s", jobs[i].id);
        } else if (jobs[i].status != 409 || strcmp(jobs[i].code, "order_not_payable") != 0 ||
                   strncmp(jobs[i].id, "pay_", 4) != 0) {
            fail_msg("payment %d answered %d %s", i, jobs[i].status, jobs[i].code);
        }
    }
    assert_int_equal(succeeded, 1);
    http_response_t r;
    order_get(&r, &u, order);
    assert_string_equal(json_text(r.json, "status"), "COMPLETED");
    assert_string_equal(json_text(r.json, "payment_id"), winner);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 27000);
    assert_int_equal(db_assert_wallet(g.db, u.id), 27000);
    /* Every debit of a loser has its compensation. */
    assert_int_equal(db_int("SELECT count(*) FROM users.ledger d JOIN payments.payments p"
                            " ON p.id = d.reference WHERE d.user_id = $1 AND d.kind = 'DEBIT'"
                            " AND p.status = 'FAILED' AND NOT EXISTS (SELECT 1 FROM users.ledger c"
                            "  WHERE c.user_id = d.user_id AND c.kind = 'CREDIT'"
                            "  AND c.reference = d.reference AND c.amount = -d.amount)",
                            u.id),
                     0);
    db_orders_check(u.id);
}

/* 10 refunds of 30% each of one payment at once: exactly 3 succeed, 7 are
 * 409 refund_exceeds_payment, and the wallet gets exactly 90% back. */
static void test_concurrent_refunds_never_exceed(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "refundrace");
    top_up(&u, 10000);
    char order[id_bytes_max + 1], payment[id_bytes_max + 1], path[128];
    order_new(&u, 10000, order);
    pay_ok(&u, order, payment);
    snprintf(path, sizeof path, "/v1/payments/%s/refunds", payment);
    burst_job_t jobs[10];
    for (int i = 0; i < 10; i++) {
        jobs[i] = (burst_job_t){.user = &u, .path = path, .body = "{\"amount\":3000}"};
        unique(jobs[i].key, sizeof jobs[i].key, "refund");
    }
    burst_run(jobs, 10);
    int refunded = 0;
    for (int i = 0; i < 10; i++) {
        if (jobs[i].status == 201)
            refunded++;
        else if (jobs[i].status != 409 || strcmp(jobs[i].code, "refund_exceeds_payment") != 0)
            fail_msg("refund %d answered %d %s", i, jobs[i].status, jobs[i].code);
    }
    assert_int_equal(refunded, 3);
    http_response_t r;
    payment_get(&r, &u, payment);
    assert_int_equal(json_number(r.json, "amount_refunded"), 9000);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 9000);
    assert_int_equal(db_assert_wallet(g.db, u.id), 9000);
}

/* A double click on "refund all": 8 full refunds with ONE key at once.
 * Each answer is that one refund (201, always the same id) or 409
 * idempotency_in_progress, never refund_exceeds_payment (the refund did
 * happen under this key); one refund, one credit. (The bank test found
 * the requests that lost the race answering refund_exceeds_payment.) */
static void test_concurrent_same_key_refunds_once(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "refundkey");
    top_up(&u, 10000);
    char order[id_bytes_max + 1], payment[id_bytes_max + 1], path[128], key[64];
    order_new(&u, 4000, order);
    pay_ok(&u, order, payment);
    snprintf(path, sizeof path, "/v1/payments/%s/refunds", payment);
    unique(key, sizeof key, "refund");
    burst_job_t jobs[8];
    for (int i = 0; i < 8; i++) {
        jobs[i] = (burst_job_t){.user = &u, .path = path, .body = "{}"};
        snprintf(jobs[i].key, sizeof jobs[i].key, "%s", key);
    }
    burst_run(jobs, 8);
    char refunded[id_bytes_max + 1] = "";
    for (int i = 0; i < 8; i++) {
        if (jobs[i].status == 201) {
            if (refunded[0] == '\0')
                snprintf(refunded, sizeof refunded, "%s", jobs[i].id);
            assert_string_equal(jobs[i].id, refunded);
        } else if (jobs[i].status != 409 || strcmp(jobs[i].code, "idempotency_in_progress") != 0) {
            fail_msg("same-key refund %d answered %d %s", i, jobs[i].status, jobs[i].code);
        }
    }
    /* Once settled, the key answers the refund. */
    http_response_t r;
    assert_int_equal(refund(&r, &u, payment, key, "{}"), 201);
    if (refunded[0] != '\0')
        assert_string_equal(json_text(r.json, "id"), refunded);
    assert_int_equal(json_number(r.json, "amount"), 4000);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 10000);
    assert_int_equal(db_int("SELECT count(*) FROM payments.refunds WHERE user_id = $1", u.id), 1);
    assert_int_equal(
        db_int("SELECT count(*) FROM users.ledger WHERE user_id = $1 AND kind = 'CREDIT'", u.id),
        1);
    assert_int_equal(db_assert_wallet(g.db, u.id), 10000);
}

int main(void)
{
    const char *dsn = getenv("PAYGATE_TEST_PG_DSN");
    if (dsn == NULL || *dsn == '\0') {
        fprintf(stderr,
                "test_payments: FAIL: PAYGATE_TEST_PG_DSN is not set. These tests need the "
                "test PostgreSQL: run them with ./dev test (e.g. ./dev test -R payment).\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sample_flow),
        cmocka_unit_test(test_insufficient_funds_then_new_key),
        cmocka_unit_test(test_order_not_payable),
        cmocka_unit_test(test_other_users_things_not_found),
        cmocka_unit_test(test_idempotent_replay),
        cmocka_unit_test(test_refunds),
        cmocka_unit_test(test_refund_of_failed_payment_refused),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_order_mass_assignment_refused),
        cmocka_unit_test(test_concurrent_payments_one_wallet),
        cmocka_unit_test(test_concurrent_same_key_pays_once),
        cmocka_unit_test(test_concurrent_payments_one_order),
        cmocka_unit_test(test_concurrent_refunds_never_exceed),
        cmocka_unit_test(test_concurrent_same_key_refunds_once),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
