/*
 * The gateway under abuse (issue 7): rate limits, size and time limits,
 * security headers, and the OWASP API checks (broken object-level
 * authorization, mass assignment, bad tokens), against the whole system
 * as real processes: broker (with its event bus), user, order, payment,
 * transaction and notification services, a scratch database of its own on
 * the test PostgreSQL (PAYGATE_TEST_PG_DSN) and the test Redis
 * (PAYGATE_TEST_REDIS_PORT). Without them the test FAILS, never skips.
 *
 * Two gateways share the broker:
 *   open    rate limits off (as every other test runs): authorization,
 *           bodies, strings, tokens, headers; the web app as static files
 *   strict  tiny rate limits (bursts of 2..10; one token a second for
 *           the fast classes, one in 5 or 10 s for login, register and
 *           payments, whose requests take longer than a second under
 *           sanitizers), 4 connections per address, a 2 s timeout, one
 *           trusted proxy hop (X-Forwarded-For)
 * Each rate-limit test speaks from loopback addresses of its own
 * (127.0.0.x, via http_client_set_source), so its buckets are its own.
 * No timing is asserted beyond the limits' logic: a burst of N passes, the
 * next is 429, and after waiting Retry-After seconds a request passes.
 *
 * Process logs: $PAYGATE_TEST_LOG_DIR/gwsec-*.log.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <sodium.h>

#include "clock/clock.h"
#include "http_client.h"
#include "jwt_craft.h"
#include "proc.h"
#include "system.h"

static const char jwt_secret[] = "gwsec-test-secret-0123456789abcdefghijklmnopqrs";
static const char password[] = "Gwsec-Passw0rd-5d21";

enum {
    id_bytes = 64,
    token_bytes_max = 2048,
    env_max = 32,
    ready_timeout_ms = 60000,
    wait_ms = 20000, /* for events to reach history, notifications, streams */
    /* the strict gateway's limits (see strict_start) */
    strict_address_burst = 10,
    strict_user_burst = 5,
    strict_register_burst = 2,
    strict_login_address_burst = 4,
    strict_login_email_burst = 2,
    strict_payment_burst = 2,
    strict_connections_per_address = 4,
    strict_timeout_s = 2,
    attempts_max = 40, /* requests sent to find a limit's end */
};

static struct {
    system_t *system; /* its gateway is the open one: rate limits off, serving web/ */
    proc_t strict;    /* a second gateway with tight limits, started here */
    int open_port, strict_port;
    unsigned counter;
} g;

typedef struct {
    char id[id_bytes];
    char email[128];
    char token[token_bytes_max];
} user_t;

/* ---- the system ----------------------------------------------------------- */

/* Starts the second gateway, with the environment every process shares
 * and tight limits (the later entry of a key wins over the shared one). */
static bool strict_start(void)
{
    static const char *const strict[] = {
        "PAYGATE_GATEWAY_RATE_ADDRESS_PER_MIN=60",
        "PAYGATE_GATEWAY_RATE_ADDRESS_BURST=10",
        "PAYGATE_GATEWAY_RATE_USER_PER_MIN=60",
        "PAYGATE_GATEWAY_RATE_USER_BURST=5",
        "PAYGATE_GATEWAY_RATE_REGISTER_ADDRESS_PER_MIN=6",
        "PAYGATE_GATEWAY_RATE_REGISTER_ADDRESS_BURST=2",
        "PAYGATE_GATEWAY_RATE_LOGIN_ADDRESS_PER_MIN=12",
        "PAYGATE_GATEWAY_RATE_LOGIN_ADDRESS_BURST=4",
        "PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_PER_MIN=12",
        "PAYGATE_GATEWAY_RATE_LOGIN_EMAIL_BURST=2",
        "PAYGATE_GATEWAY_RATE_PAYMENT_USER_PER_MIN=12",
        "PAYGATE_GATEWAY_RATE_PAYMENT_USER_BURST=2",
        "PAYGATE_GATEWAY_CONNECTIONS_PER_ADDRESS_MAX=4",
        "PAYGATE_GATEWAY_TIMEOUT_S=2",
        "PAYGATE_GATEWAY_FORWARDED_HOPS=1",
    };
    const char *env[env_max + system_env_max];
    size_t n = system_env(g.system, system_processes, env);
    for (size_t i = 0; i < sizeof strict / sizeof strict[0]; i++)
        env[n++] = strict[i];
    char port[64];
    snprintf(port, sizeof port, "PAYGATE_GATEWAY_PORT=%d", g.strict_port);
    env[n++] = port;
    env[n] = NULL;
    return proc_start(&g.strict, "gwsec-gateway-strict", PAYGATE_GATEWAY_BIN, env);
}

static int group_setup(void **state)
{
    (void)state;
    if (sodium_init() < 0)
        return -1;
    char static_dir[600];
    snprintf(static_dir, sizeof static_dir, "PAYGATE_GATEWAY_STATIC_DIR=%s", PAYGATE_WEB_DIR);
    const char *open_env[] = {static_dir, NULL};
    system_config_t config = {.name = "gwsec",
                              .jwt_secret = jwt_secret,
                              .rate_limits_off = true,
                              .ready_timeout_ms = ready_timeout_ms,
                              .process_env = {[system_gateway] = open_env}};
    g.system = system_new(&config);
    if (g.system == NULL)
        return -1;
    g.open_port = system_gateway_port(g.system);
    g.strict_port = free_tcp_port();
    if (g.strict_port <= 0 || g.strict_port == g.open_port || !strict_start() ||
        !system_wait_ready(g.system, g.strict_port)) {
        fprintf(stderr, "test_gateway_security: FAIL: the strict gateway did not start; see %s\n",
                g.strict.log_path);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    http_client_set_source(NULL);
    int unclean = 0;
    if (g.strict.pid > 0 && !proc_stop(&g.strict, system_stop_timeout_ms)) {
        fprintf(stderr, "test_gateway_security: %s did not stop cleanly (0x%x); see %s\n",
                g.strict.name, g.strict.exit_status, g.strict.log_path);
        unclean++;
    }
    if (!system_stop(g.system))
        unclean++;
    system_destroy(&g.system);
    return unclean == 0 ? 0 : -1;
}

/* ---- HTTP ------------------------------------------------------------------ */

/* One request to the gateway on 'port' from loopback address 'source'
 * (NULL: any): 'u' (or NULL) gives the Bearer token, 'key' (or NULL) the
 * Idempotency-Key, 'body' (or NULL) goes as application/json, 'extra' (or
 * NULL) is one more whole header. Fails the test when no response came.
 * Returns the status. */
static int call_from(http_response_t *r, int port, const char *source, const char *method,
                     const char *path, const user_t *u, const char *key, const char *body,
                     const char *extra)
{
    const char *extras[] = {extra, NULL};
    assert_true(http_client_set_source(source));
    bool ok = http_api_request(r, port, method, path, u ? u->token : NULL, key, body, extras);
    http_client_set_source(NULL);
    if (!ok)
        fail_msg("%s %s (port %d, from %s): %s", method, path, port, source ? source : "any",
                 r->error);
    return r->status;
}

/* call_from() on the open gateway from any address. */
static int call(http_response_t *r, const char *method, const char *path, const user_t *u,
                const char *key, const char *body)
{
    return call_from(r, g.open_port, NULL, method, path, u, key, body, NULL);
}

/* Fails unless 'r' carries the headers every response of ours carries. */
static void expect_security_headers(const http_response_t *r)
{
    static const char *const exact[][2] = {
        {"X-Content-Type-Options", "nosniff"},
        {"X-Frame-Options", "DENY"},
        {"Referrer-Policy", "no-referrer"},
    };
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        const char *value = http_header(r, exact[i][0]);
        if (value == NULL || strcmp(value, exact[i][1]) != 0)
            fail_msg("HTTP %d: header %s is '%s', expected '%s'", r->status, exact[i][0],
                     value ? value : "(none)", exact[i][1]);
    }
    const char *csp = http_header(r, "Content-Security-Policy");
    if (csp == NULL || strstr(csp, "frame-ancestors 'none'") == NULL)
        fail_msg("HTTP %d: no Content-Security-Policy with frame-ancestors 'none'", r->status);
    const char *rid = http_header(r, "X-Request-Id");
    if (rid == NULL || rid[0] == '\0')
        fail_msg("HTTP %d: no X-Request-Id", r->status);
}

/* Fails unless 'r' is an error 'status' with code 'code', a message, the
 * request id and the security headers (API errors: Cache-Control
 * no-store). Returns the "error" object (owned by 'r'). */
static json_t *expect_error(const http_response_t *r, int status, const char *code)
{
    json_t *error = json_object_get(r->json, "error");
    const char *got = json_string_value(json_object_get(error, "code"));
    if (r->status != status || got == NULL || strcmp(got, code) != 0)
        fail_msg("HTTP %d, expected %d %s: %s", r->status, status, code, r->body ? r->body : "");
    const char *message = json_string_value(json_object_get(error, "message"));
    assert_true(message != NULL && message[0] != '\0');
    assert_non_null(json_string_value(json_object_get(error, "request_id")));
    expect_security_headers(r);
    const char *cache = http_header(r, "Cache-Control");
    if (cache == NULL || strcmp(cache, "no-store") != 0)
        fail_msg("HTTP %d: Cache-Control '%s', expected no-store", r->status,
                 cache ? cache : "(none)");
    return error;
}

/* expect_error() for a 400 naming 'field' in error.field. */
static void expect_bad_field(const http_response_t *r, const char *field)
{
    json_t *error = expect_error(r, 400, "invalid_argument");
    const char *got = json_string_value(json_object_get(error, "field"));
    if (got == NULL || strcmp(got, field) != 0)
        fail_msg("400 names field '%s', expected '%s': %s", got ? got : "(none)", field, r->body);
}

/* String member 'key' of the response body. */
static const char *text_of(const http_response_t *r, const char *key)
{
    const char *value = json_string_value(json_object_get(r->json, key));
    if (value == NULL)
        fail_msg("HTTP %d: no string \"%s\": %s", r->status, key, r->body ? r->body : "");
    return value != NULL ? value : "";
}

static int64_t number_of(const http_response_t *r, const char *key)
{
    json_t *value = json_object_get(r->json, key);
    if (!json_is_integer(value))
        fail_msg("HTTP %d: no integer \"%s\": %s", r->status, key, r->body ? r->body : "");
    return (int64_t)json_integer_value(value);
}

/* A unique string "<what>-<pid>-<n>". */
static void unique(char *out, size_t size, const char *what)
{
    snprintf(out, size, "%s-%d-%u", what, (int)getpid(), ++g.counter);
}

/* ---- the API, on the open gateway ------------------------------------------------ */

/* Registers 'u' with a unique email from 'tag' (not logged in). */
static void user_register(user_t *u, const char *tag)
{
    memset(u, 0, sizeof *u);
    char local[96], body[512];
    unique(local, sizeof local, tag);
    snprintf(u->email, sizeof u->email, "%s@gwsec.example", local);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\",\"name\":\"%s\"}", u->email,
             password, tag);
    http_response_t r;
    if (call(&r, "POST", "/v1/users", NULL, NULL, body) != 201)
        fail_msg("register: HTTP %d: %s", r.status, r.body);
    snprintf(u->id, sizeof u->id, "%s", text_of(&r, "id"));
    http_response_free(&r);
}

/* Registers and logs in 'u'. */
static void user_new(user_t *u, const char *tag)
{
    user_register(u, tag);
    char body[512];
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", u->email, password);
    http_response_t r;
    if (call(&r, "POST", "/v1/auth/login", NULL, NULL, body) != 200)
        fail_msg("login: HTTP %d: %s", r.status, r.body);
    snprintf(u->token, sizeof u->token, "%s", text_of(&r, "access_token"));
    http_response_free(&r);
}

static int64_t balance_of(const user_t *u)
{
    http_response_t r;
    assert_int_equal(call(&r, "GET", "/v1/wallet", u, NULL, NULL), 200);
    int64_t balance = number_of(&r, "balance");
    http_response_free(&r);
    return balance;
}

static void top_up(const user_t *u, int64_t amount)
{
    char key[64], body[64];
    unique(key, sizeof key, "top");
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    assert_int_equal(call(&r, "POST", "/v1/wallet/topups", u, key, body), 201);
    http_response_free(&r);
}

static void order_new(const user_t *u, int64_t amount, char id[id_bytes])
{
    char body[64];
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    assert_int_equal(call(&r, "POST", "/v1/orders", u, NULL, body), 201);
    snprintf(id, id_bytes, "%s", text_of(&r, "id"));
    http_response_free(&r);
}

/* The status of order 'id' of 'u' ("PENDING", ...) into 'out'. */
static void order_status(const user_t *u, const char *id, char out[16])
{
    char path[160];
    snprintf(path, sizeof path, "/v1/orders/%s", id);
    http_response_t r;
    assert_int_equal(call(&r, "GET", path, u, NULL, NULL), 200);
    snprintf(out, 16, "%s", text_of(&r, "status"));
    http_response_free(&r);
}

/* Pays 'order' of 'u' with a new key on the open gateway; 201 expected. */
static void pay_ok(const user_t *u, const char *order, char payment[id_bytes])
{
    char key[64], body[128];
    unique(key, sizeof key, "pay");
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order);
    http_response_t r;
    if (call(&r, "POST", "/v1/payments", u, key, body) != 201)
        fail_msg("pay: HTTP %d: %s", r.status, r.body);
    snprintf(payment, id_bytes, "%s", text_of(&r, "id"));
    http_response_free(&r);
}

/* Polls GET 'path' as 'u' until its "data" array has an item whose
 * 'member' is 'value'; returns that response (the caller frees it). */
static void wait_listed(http_response_t *r, const user_t *u, const char *path, const char *member,
                        const char *value)
{
    int64_t until = clock_now_ms() + wait_ms;
    for (;;) {
        assert_int_equal(call(r, "GET", path, u, NULL, NULL), 200);
        size_t i;
        json_t *item;
        json_array_foreach(json_object_get(r->json, "data"), i, item)
        {
            const char *got = json_string_value(json_object_get(item, member));
            if (got != NULL && strcmp(got, value) == 0)
                return;
        }
        if (clock_now_ms() > until)
            fail_msg("%s never listed %s = %s: %s", path, member, value, r->body);
        http_response_free(r);
        sleep_ms(200);
    }
}

/* ---- tokens -------------------------------------------------------------------- */

/* A token made by hand (tests/support/jwt_craft.h) into 'out'; fails the
 * test when it does not fit. */
static void craft_token(char *out, size_t out_size, const char *header, const char *payload,
                        const char *key)
{
    assert_true(jwt_craft(out, out_size, header, payload, key));
}

/* ---- tests: rate limits (strict gateway) ----------------------------------------- */

/* Sends GET 'path' as 'u' (or nobody) from 'source' with 'extra' until a
 * 429 comes; fails unless it comes within attempts_max requests and after
 * at least 'burst' passed. Returns the Retry-After seconds; checks the 429
 * names 'limit' and carries every header a 429 promises. */
static int64_t spend(const char *source, const char *method, const char *path, const user_t *u,
                     const char *body, const char *extra, int burst, const char *limit)
{
    for (int i = 0; i < attempts_max; i++) {
        http_response_t r;
        call_from(&r, g.strict_port, source, method, path, u, NULL, body, extra);
        if (r.status == 429) {
            if (i < burst)
                fail_msg("%s %s from %s: 429 after %d requests, burst is %d", method, path, source,
                         i, burst);
            json_t *error = expect_error(&r, 429, "rate_limited");
            assert_string_equal(json_string_value(json_object_get(error, "limit")), limit);
            const char *retry = http_header(&r, "Retry-After");
            assert_non_null(retry);
            char *end = NULL;
            long long seconds = strtoll(retry, &end, 10);
            if (*end != '\0' || seconds < 1 || seconds > 60)
                fail_msg("Retry-After '%s' is not whole seconds in 1..60", retry);
            char burst_text[16];
            snprintf(burst_text, sizeof burst_text, "%d", burst);
            const char *limit_header = http_header(&r, "RateLimit-Limit");
            assert_non_null(limit_header);
            assert_string_equal(limit_header, burst_text);
            assert_string_equal(http_header(&r, "RateLimit-Remaining"), "0");
            assert_string_equal(http_header(&r, "RateLimit-Reset"), retry);
            http_response_free(&r);
            return seconds;
        }
        http_response_free(&r);
    }
    fail_msg("%s %s from %s: no 429 within %d requests", method, path, source, attempts_max);
    return 0;
}

/* Expects one request to pass the limits (any status but 429). */
static void expect_not_limited(const char *source, const char *method, const char *path,
                               const user_t *u, const char *body, const char *extra)
{
    http_response_t r;
    call_from(&r, g.strict_port, source, method, path, u, NULL, body, extra);
    if (r.status == 429)
        fail_msg("%s %s from %s: limited: %s", method, path, source, r.body);
    http_response_free(&r);
}

/* Per client address: a burst passes, then 429 with Retry-After; another
 * address is not affected; the probes never are; after Retry-After
 * seconds the address passes again. */
static void test_rate_limit_per_address(void **state)
{
    (void)state;
    int64_t retry = spend("127.0.0.11", "GET", "/v1/nothing", NULL, NULL, NULL,
                          strict_address_burst, "address");
    expect_not_limited("127.0.0.12", "GET", "/v1/nothing", NULL, NULL, NULL);
    http_response_t r;
    call_from(&r, g.strict_port, "127.0.0.11", "GET", "/healthz", NULL, NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    http_response_free(&r);
    sleep_ms((int)retry * 1000);
    call_from(&r, g.strict_port, "127.0.0.11", "GET", "/v1/nothing", NULL, NULL, NULL, NULL);
    expect_error(&r, 404, "not_found");
    http_response_free(&r);
}

/* Behind one trusted proxy the client is the right-most X-Forwarded-For
 * entry: its limit is its own (not the proxy's), and an address the
 * client prepends itself does not get it a fresh bucket. */
static void test_rate_limit_forwarded_for(void **state)
{
    (void)state;
    const char *client = "X-Forwarded-For: 198.51.100.7";
    spend("127.0.0.13", "GET", "/v1/nothing", NULL, NULL, client, strict_address_burst, "address");
    http_response_t r;
    call_from(&r, g.strict_port, "127.0.0.13", "GET", "/v1/nothing", NULL, NULL, NULL,
              "X-Forwarded-For: 203.0.113.9, 198.51.100.7");
    expect_error(&r, 429, "rate_limited");
    http_response_free(&r);
    /* the same proxy for another client; and the proxy itself */
    expect_not_limited("127.0.0.13", "GET", "/v1/nothing", NULL, NULL,
                       "X-Forwarded-For: 198.51.100.8");
    expect_not_limited("127.0.0.13", "GET", "/v1/nothing", NULL, NULL, NULL);
}

/* Per user: a user's burst spent, another user from the same address
 * still passes; after Retry-After the first passes again. */
static void test_rate_limit_per_user(void **state)
{
    (void)state;
    user_t u, v;
    user_new(&u, "rl-user");
    user_new(&v, "rl-user-other");
    int64_t retry =
        spend("127.0.0.21", "GET", "/v1/wallet", &u, NULL, NULL, strict_user_burst, "user");
    http_response_t r;
    call_from(&r, g.strict_port, "127.0.0.21", "GET", "/v1/wallet", &v, NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    http_response_free(&r);
    /* the SSE stream counts too, and is refused the same way */
    call_from(&r, g.strict_port, "127.0.0.22", "GET", "/v1/notifications/stream", &u, NULL, NULL,
              NULL);
    expect_error(&r, 429, "rate_limited");
    http_response_free(&r);
    sleep_ms((int)retry * 1000);
    call_from(&r, g.strict_port, "127.0.0.21", "GET", "/v1/wallet", &u, NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(text_of(&r, "user_id"), u.id);
    http_response_free(&r);
}

/* Login: per email, from any address and in any letter case (credential
 * stuffing spreads over addresses), and per address over many emails.
 * After Retry-After the right password logs in. */
static void test_rate_limit_login(void **state)
{
    (void)state;
    user_t u;
    user_register(&u, "rl-login");
    char wrong[512], right[512], upper[512];
    snprintf(wrong, sizeof wrong, "{\"email\":\"%s\",\"password\":\"not-the-password\"}", u.email);
    snprintf(right, sizeof right, "{\"email\":\"%s\",\"password\":\"%s\"}", u.email, password);
    char email_upper[128];
    snprintf(email_upper, sizeof email_upper, "%s", u.email);
    for (char *c = email_upper; *c; c++)
        *c = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
    snprintf(upper, sizeof upper, "{\"email\":\" %s\",\"password\":\"%s\"}", email_upper, password);

    for (int i = 0; i < strict_login_email_burst; i++) {
        http_response_t r;
        call_from(&r, g.strict_port, "127.0.0.31", "POST", "/v1/auth/login", NULL, NULL, wrong,
                  NULL);
        expect_error(&r, 401, "invalid_credentials");
        http_response_free(&r);
    }
    http_response_t r;
    call_from(&r, g.strict_port, "127.0.0.31", "POST", "/v1/auth/login", NULL, NULL, right, NULL);
    json_t *error = expect_error(&r, 429, "rate_limited");
    assert_string_equal(json_string_value(json_object_get(error, "limit")), "login_email");
    assert_null(json_object_get(r.json, "access_token"));
    int64_t retry = strtoll(http_header(&r, "Retry-After"), NULL, 10);
    http_response_free(&r);
    /* another address, another case: the same email's bucket */
    call_from(&r, g.strict_port, "127.0.0.32", "POST", "/v1/auth/login", NULL, NULL, upper, NULL);
    error = expect_error(&r, 429, "rate_limited");
    assert_string_equal(json_string_value(json_object_get(error, "limit")), "login_email");
    http_response_free(&r);
    /* another email from the first address: not this email's limit */
    char other[256];
    snprintf(other, sizeof other,
             "{\"email\":\"nobody-%d@gwsec.example\",\"password\":\"not-the-password\"}",
             (int)getpid());
    call_from(&r, g.strict_port, "127.0.0.31", "POST", "/v1/auth/login", NULL, NULL, other, NULL);
    expect_error(&r, 401, "invalid_credentials");
    http_response_free(&r);

    sleep_ms((int)retry * 1000);
    call_from(&r, g.strict_port, "127.0.0.33", "POST", "/v1/auth/login", NULL, NULL, right, NULL);
    if (r.status != 200)
        fail_msg("login after Retry-After: HTTP %d: %s", r.status, r.body);
    assert_non_null(json_string_value(json_object_get(r.json, "access_token")));
    http_response_free(&r);

    /* per address: many emails from one address */
    for (int i = 0; i < attempts_max; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"email\":\"spray-%d-%d@gwsec.example\",\"password\":\"not-the-password\"}",
                 (int)getpid(), i);
        call_from(&r, g.strict_port, "127.0.0.34", "POST", "/v1/auth/login", NULL, NULL, body,
                  NULL);
        if (r.status == 429) {
            assert_true(i >= strict_login_address_burst);
            error = expect_error(&r, 429, "rate_limited");
            assert_string_equal(json_string_value(json_object_get(error, "limit")),
                                "login_address");
            http_response_free(&r);
            return;
        }
        expect_error(&r, 401, "invalid_credentials");
        http_response_free(&r);
    }
    fail_msg("no login_address limit within %d logins", attempts_max);
}

/* Register per address: the burst creates accounts, the next is 429 and
 * creates none. */
static void test_rate_limit_register(void **state)
{
    (void)state;
    char email[128], body[512];
    for (int i = 0; i < attempts_max; i++) {
        unique(email, sizeof email, "rl-register");
        strcat(email, "@gwsec.example");
        snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\",\"name\":\"R\"}", email,
                 password);
        http_response_t r;
        call_from(&r, g.strict_port, "127.0.0.41", "POST", "/v1/users", NULL, NULL, body, NULL);
        if (r.status == 429) {
            assert_true(i >= strict_register_burst);
            json_t *error = expect_error(&r, 429, "rate_limited");
            assert_string_equal(json_string_value(json_object_get(error, "limit")),
                                "register_address");
            http_response_free(&r);
            /* not created: the same email registers fine elsewhere */
            call(&r, "POST", "/v1/users", NULL, NULL, body);
            assert_int_equal(r.status, 201);
            http_response_free(&r);
            return;
        }
        assert_int_equal(r.status, 201);
        http_response_free(&r);
    }
    fail_msg("no register_address limit within %d sign-ups", attempts_max);
}

/* Payment creation per user: the burst pays, the next order is 429 and
 * stays PENDING with the money untouched; after Retry-After the same key
 * pays it. */
static void test_rate_limit_payments(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "rl-pay");
    top_up(&u, 100000);
    char orders[attempts_max][id_bytes];
    int paid = 0;
    for (int i = 0; i < attempts_max; i++) {
        order_new(&u, 1000, orders[i]);
        char key[64], body[128];
        unique(key, sizeof key, "rl-pay");
        snprintf(body, sizeof body, "{\"order_id\":\"%.63s\"}", orders[i]);
        http_response_t r;
        call_from(&r, g.strict_port, "127.0.0.51", "POST", "/v1/payments", &u, key, body, NULL);
        if (r.status == 201) {
            paid++;
            http_response_free(&r);
            continue;
        }
        assert_true(paid >= strict_payment_burst);
        json_t *error = expect_error(&r, 429, "rate_limited");
        assert_string_equal(json_string_value(json_object_get(error, "limit")), "payment_user");
        int64_t retry = strtoll(http_header(&r, "Retry-After"), NULL, 10);
        http_response_free(&r);
        char status[16];
        order_status(&u, orders[i], status);
        assert_string_equal(status, "PENDING");
        assert_int_equal(balance_of(&u), 100000 - paid * 1000);
        /* reads are not payment creations */
        expect_not_limited("127.0.0.52", "GET", "/v1/payments", &u, NULL, NULL);
        sleep_ms((int)retry * 1000);
        call_from(&r, g.strict_port, "127.0.0.51", "POST", "/v1/payments", &u, key, body, NULL);
        if (r.status != 201)
            fail_msg("payment after Retry-After: HTTP %d: %s", r.status, r.body);
        http_response_free(&r);
        order_status(&u, orders[i], status);
        assert_string_equal(status, "COMPLETED");
        assert_int_equal(balance_of(&u), 100000 - (paid + 1) * 1000);
        return;
    }
    fail_msg("no payment_user limit within %d payments", attempts_max);
}

/* A socket connected from 'source' to the strict gateway, or -1. */
static int connect_from(const char *source)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in from = {.sin_family = AF_INET};
    inet_pton(AF_INET, source, &from.sin_addr);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.strict_port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval timeout = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    if (bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Waits up to 'timeout_ms' for the server to close 'fd' (EOF or reset),
 * reading and dropping what it sends. True when it closed. */
static bool closed_by_server(int fd, int timeout_ms)
{
    int64_t until = clock_now_ms() + timeout_ms;
    char buffer[4096];
    while (clock_now_ms() < until) {
        ssize_t n = recv(fd, buffer, sizeof buffer, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return true;
    }
    return false;
}

/* At most 4 connections from one address: the 5th is closed without an
 * answer, another address is served meanwhile, and once the 4 close the
 * address is served again. */
static void test_connections_per_address(void **state)
{
    (void)state;
    int held[strict_connections_per_address];
    for (int i = 0; i < strict_connections_per_address; i++) {
        held[i] = connect_from("127.0.0.61");
        assert_true(held[i] >= 0);
    }
    sleep_ms(300); /* the gateway has accepted them */
    int extra = connect_from("127.0.0.61");
    assert_true(extra >= 0); /* the kernel accepts; the gateway closes it */
    static const char probe[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    (void)send(extra, probe, sizeof probe - 1, MSG_NOSIGNAL);
    char buffer[256];
    ssize_t n = recv(extra, buffer, sizeof buffer, 0);
    if (n > 0)
        fail_msg("the 5th connection from one address was answered");
    close(extra);
    http_response_t r;
    call_from(&r, g.strict_port, "127.0.0.62", "GET", "/healthz", NULL, NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    http_response_free(&r);
    for (int i = 0; i < strict_connections_per_address; i++)
        close(held[i]);
    int64_t until = clock_now_ms() + 10000;
    for (;;) {
        assert_true(http_client_set_source("127.0.0.61"));
        bool ok = http_request(&r, g.strict_port, "GET", "/healthz", NULL, NULL);
        http_client_set_source(NULL);
        int status = r.status;
        http_response_free(&r);
        if (ok && status == 200)
            break;
        if (clock_now_ms() > until)
            fail_msg("127.0.0.61 not served again after closing its connections");
        sleep_ms(200);
    }
}

/* Slow clients (timeout 2 s): a head that never completes is closed;
 * a body dripped a byte every 300 ms (never idle, so the idle timeout
 * alone would wait forever) is cut once it has taken longer than the
 * timeout, long before it is complete. */
static void test_slow_clients_closed(void **state)
{
    (void)state;
    int fd = connect_from("127.0.0.71");
    assert_true(fd >= 0);
    static const char partial[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
    assert_true(send(fd, partial, sizeof partial - 1, MSG_NOSIGNAL) > 0);
    if (!closed_by_server(fd, 15000))
        fail_msg("a head left incomplete was not closed within 15 s (timeout %d s)",
                 strict_timeout_s);
    close(fd);

    fd = connect_from("127.0.0.72");
    assert_true(fd >= 0);
    static const char head[] = "POST /v1/users HTTP/1.1\r\nHost: x\r\n"
                               "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    assert_true(send(fd, head, sizeof head - 1, MSG_NOSIGNAL) > 0);
    struct timeval quick = {.tv_usec = 300 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &quick, sizeof quick);
    int sent = 0;
    bool closed = false;
    for (; sent < 100 && !closed; sent++) {
        if (send(fd, " ", 1, MSG_NOSIGNAL) != 1) {
            closed = true;
            break;
        }
        char buffer[512];
        ssize_t n = recv(fd, buffer, sizeof buffer, 0); /* waits up to 300 ms */
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            closed = true;
    }
    close(fd);
    if (!closed)
        fail_msg("a body dripped for %d bytes was never cut", sent);
    assert_true(sent < 100);
    /* and the gateway serves on */
    http_response_t r;
    call_from(&r, g.strict_port, "127.0.0.73", "GET", "/healthz", NULL, NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    http_response_free(&r);
}

/* ---- tests: size and string limits (open gateway) ------------------------------ */

/* Bodies over 64 KiB are 413, heads over 8 KiB 431 (5000 bytes pass),
 * and each string has its bound with a precise 400; JSON nested 5000
 * deep is a 400, not a crash; the gateway serves on. */
static void test_size_and_string_limits(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "limits");
    http_response_t r;

    size_t big = 70 * 1024;
    char *body = malloc(big + 64);
    assert_non_null(body);
    int n = snprintf(body, 64, "{\"amount\":1000,\"description\":\"");
    memset(body + n, 'd', big);
    strcpy(body + n + big, "\"}");
    call(&r, "POST", "/v1/orders", &u, NULL, body);
    expect_error(&r, 413, "body_too_large");
    http_response_free(&r);

    /* nesting: within the size limit, far beyond any sane depth */
    size_t depth = 5000;
    memset(body, '[', depth);
    memset(body + depth, ']', depth);
    body[2 * depth] = '\0';
    call(&r, "POST", "/v1/orders", &u, NULL, body);
    expect_error(&r, 400, "invalid_json");
    http_response_free(&r);
    free(body);

    /* heads: 5000 bytes fit the default 8 KiB, 10000 and 40000 do not */
    const size_t head_sizes[] = {5000, 10000, 40000};
    const int head_statuses[] = {200, 431, 431};
    for (size_t i = 0; i < 3; i++) {
        size_t head_bytes = head_sizes[i];
        char *head = malloc(head_bytes + 128);
        assert_non_null(head);
        n = snprintf(head, 128, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
        memset(head + n, 'h', head_bytes);
        memcpy(head + n + head_bytes, "\r\n\r\n", 4);
        bool answered = http_raw(&r, g.open_port, head, (size_t)n + head_bytes + 4);
        free(head);
        assert_true(answered);
        if (r.status != head_statuses[i])
            fail_msg("a head of %zu bytes: HTTP %d, expected %d", head_bytes, r.status,
                     head_statuses[i]);
        http_response_free(&r);
    }

    char long_text[400];
    memset(long_text, 'x', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    char request[1024];
    static const struct {
        const char *path;
        const char *before; /* the body is before + 'length' x + after */
        int length;
        const char *after;
        const char *code;
    } strings[] = {
        {"/v1/users", "{\"email\":\"", 250,
         "@x.example\",\"password\":\"Long-Passw0rd\",\"name\":\"N\"}", "invalid_email"},
        {"/v1/users", "{\"email\":\"n@x.example\",\"password\":\"", 129, "\",\"name\":\"N\"}",
         "invalid_password"},
        {"/v1/users", "{\"email\":\"n@x.example\",\"password\":\"Long-Passw0rd\",\"name\":\"", 101,
         "\"}", "invalid_name"},
        {"/v1/orders", "{\"amount\":1000,\"description\":\"", 256, "\"}", "invalid_description"},
        {"/v1/orders", "{\"amount\":1000,\"receipt\":\"", 41, "\"}", "invalid_receipt"},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        snprintf(request, sizeof request, "%s%.*s%s", strings[i].before, strings[i].length,
                 long_text, strings[i].after);
        call(&r, "POST", strings[i].path, strcmp(strings[i].path, "/v1/orders") == 0 ? &u : NULL,
             NULL, request);
        expect_error(&r, 400, strings[i].code);
        http_response_free(&r);
    }
    /* and one character less is fine (the bound is where it is said to be) */
    snprintf(request, sizeof request, "{\"amount\":1000,\"description\":\"%.*s\"}", 255, long_text);
    call(&r, "POST", "/v1/orders", &u, NULL, request);
    assert_int_equal(r.status, 201);
    http_response_free(&r);

    /* an Idempotency-Key of 256 characters */
    char key[300];
    memset(key, 'k', 256);
    key[256] = '\0';
    call(&r, "POST", "/v1/wallet/topups", &u, key, "{\"amount\":100}");
    expect_error(&r, 400, "idempotency_key_required");
    http_response_free(&r);
    assert_int_equal(balance_of(&u), 0);

    /* a path id of 200 characters: no such resource */
    char path[400];
    snprintf(path, sizeof path, "/v1/orders/%.*s", 200, long_text);
    call(&r, "GET", path, &u, NULL, NULL);
    expect_error(&r, 404, "not_found");
    http_response_free(&r);

    /* pagination: limit beyond the maximum, negative, not a number,
     * over int32; a cursor of 300 characters */
    static const char *const bad_pages[][2] = {
        {"/v1/orders?limit=101", "invalid_limit"},
        {"/v1/payments?limit=101", "invalid_limit"},
        {"/v1/transactions?limit=101", "invalid_limit"},
        {"/v1/notifications?limit=51", "invalid_limit"},
        {"/v1/orders?limit=-1", "invalid_limit"},
        {"/v1/orders?limit=abc", "invalid_argument"},
        {"/v1/orders?limit=4294967297", "invalid_argument"},
        {"/v1/transactions?limit=99999999999999999999", "invalid_argument"},
    };
    for (size_t i = 0; i < sizeof bad_pages / sizeof bad_pages[0]; i++) {
        call(&r, "GET", bad_pages[i][0], &u, NULL, NULL);
        if (r.status != 400)
            fail_msg("GET %s: HTTP %d, expected 400: %s", bad_pages[i][0], r.status, r.body);
        expect_error(&r, 400, bad_pages[i][1]);
        http_response_free(&r);
    }
    static const char *const lists[] = {"/v1/orders", "/v1/payments", "/v1/transactions"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s?starting_after=%.*s", lists[i], 300, long_text);
        call(&r, "GET", path, &u, NULL, NULL);
        expect_error(&r, 400, "invalid_starting_after");
        http_response_free(&r);
    }
    call(&r, "GET", "/v1/orders?limit=100", &u, NULL, NULL);
    assert_int_equal(r.status, 200);
    http_response_free(&r);
    assert_true(proc_wait(system_process(g.system, system_gateway), 0) == false);
}

/* Every kind of response carries the security headers: API success and
 * errors (400, 401, 404, 405, 413 above, 415), probes, the web app's
 * files (with the app's CSP) and a missing file. */
static void test_security_headers_everywhere(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "headers");
    http_response_t r;
    call(&r, "GET", "/v1/wallet", &u, NULL, NULL);
    assert_int_equal(r.status, 200);
    expect_security_headers(&r);
    assert_string_equal(http_header(&r, "Cache-Control"), "no-store");
    http_response_free(&r);
    call(&r, "GET", "/healthz", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    expect_security_headers(&r);
    http_response_free(&r);
    call(&r, "GET", "/v1/wallet", NULL, NULL, NULL);
    expect_error(&r, 401, "unauthenticated");
    http_response_free(&r);
    call(&r, "GET", "/v1/nope", NULL, NULL, NULL);
    expect_error(&r, 404, "not_found");
    http_response_free(&r);
    call(&r, "DELETE", "/v1/orders", &u, NULL, NULL);
    expect_error(&r, 405, "method_not_allowed");
    http_response_free(&r);
    call(&r, "POST", "/v1/orders", &u, NULL, "{\"amount\":");
    expect_error(&r, 400, "invalid_json");
    http_response_free(&r);
    const char *headers[] = {"Content-Type: text/plain", NULL};
    assert_true(http_request(&r, g.open_port, "POST", "/v1/users", headers, "{}"));
    expect_error(&r, 415, "unsupported_media_type");
    http_response_free(&r);

    call(&r, "GET", "/", NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    expect_security_headers(&r);
    assert_non_null(strstr(http_header(&r, "Content-Security-Policy"), "script-src 'self'"));
    http_response_free(&r);
    call(&r, "GET", "/missing.html", NULL, NULL, NULL);
    expect_error(&r, 404, "not_found");
    http_response_free(&r);
}

/* ---- tests: object-level authorization (open gateway) ------------------------ */

/* Opens the SSE stream of 'u' on the open gateway; returns the socket
 * once the 200 head has arrived ('buffer' holds what was read). */
static int stream_open(const user_t *u, char *buffer, size_t size);

/* Reads from 'fd' into 'buffer' until 'needle' appears or 'timeout_ms'. */
static bool stream_wait_for(int fd, const char *needle, char *buffer, size_t size, int timeout_ms)
{
    size_t used = strlen(buffer);
    int64_t until = clock_now_ms() + timeout_ms;
    while (strstr(buffer, needle) == NULL) {
        if (clock_now_ms() > until || used + 1 >= size)
            return false;
        ssize_t n = recv(fd, buffer + used, size - used - 1, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return false;
        if (n > 0) {
            used += (size_t)n;
            buffer[used] = '\0';
        }
    }
    return true;
}

static int stream_open(const user_t *u, char *buffer, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.open_port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&to, sizeof to), 0);
    struct timeval timeout = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    char request[token_bytes_max + 200];
    int len = snprintf(request, sizeof request,
                       "GET /v1/notifications/stream HTTP/1.1\r\nHost: x\r\n"
                       "Authorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n",
                       u->token);
    assert_true(send(fd, request, (size_t)len, MSG_NOSIGNAL) == len);
    buffer[0] = '\0';
    assert_true(stream_wait_for(fd, "retry:", buffer, size, 10000));
    assert_non_null(strstr(buffer, " 200 "));
    return fd;
}

/* User B can read, pay, cancel or refund nothing of A's: every attempt
 * is 404 exactly as for an id that does not exist (not 403: no oracle),
 * lists and cursors show nothing of A's, B's notification stream never
 * carries A's events; and afterwards A's orders, payment, wallet and
 * history are exactly as they were. */
static void test_bola_other_users_objects(void **state)
{
    (void)state;
    user_t a, b;
    user_new(&a, "bola-a");
    user_new(&b, "bola-b");
    top_up(&a, 50000);
    top_up(&b, 50000);
    char pending[id_bytes], paid[id_bytes], payment[id_bytes];
    order_new(&a, 10000, pending);
    order_new(&a, 20000, paid);
    pay_ok(&a, paid, payment);
    http_response_t r;
    wait_listed(&r, &a, "/v1/transactions", "payment_id", payment);
    char transaction[id_bytes] = "";
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(r.json, "data"), i, item)
    {
        const char *p = json_string_value(json_object_get(item, "payment_id"));
        if (p != NULL && strcmp(p, payment) == 0)
            snprintf(transaction, sizeof transaction, "%s",
                     json_string_value(json_object_get(item, "id")));
    }
    http_response_free(&r);
    assert_true(transaction[0] != '\0');
    wait_listed(&r, &a, "/v1/notifications", "payment_id", payment);
    http_response_free(&r);

    char path[200], key[64], body[200];
    static char a_buffer[65536], b_buffer[65536];
    int a_stream = stream_open(&a, a_buffer, sizeof a_buffer);
    int b_stream = stream_open(&b, b_buffer, sizeof b_buffer);

    /* reads */
    snprintf(path, sizeof path, "/v1/orders/%s", pending);
    call(&r, "GET", path, &b, NULL, NULL);
    expect_error(&r, 404, "order_not_found");
    http_response_free(&r);
    snprintf(path, sizeof path, "/v1/payments/%s", payment);
    call(&r, "GET", path, &b, NULL, NULL);
    expect_error(&r, 404, "payment_not_found");
    http_response_free(&r);
    snprintf(path, sizeof path, "/v1/transactions/%s", transaction);
    call(&r, "GET", path, &b, NULL, NULL);
    expect_error(&r, 404, "transaction_not_found");
    http_response_free(&r);
    /* the same answer as for ids that exist nowhere */
    call(&r, "GET", "/v1/orders/ord_000000000000000000000000", &b, NULL, NULL);
    expect_error(&r, 404, "order_not_found");
    http_response_free(&r);

    /* writes */
    snprintf(path, sizeof path, "/v1/orders/%s/cancel", pending);
    call(&r, "POST", path, &b, NULL, "{}");
    expect_error(&r, 404, "order_not_found");
    http_response_free(&r);
    unique(key, sizeof key, "bola-pay");
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", pending);
    call(&r, "POST", "/v1/payments", &b, key, body);
    expect_error(&r, 404, "order_not_found");
    http_response_free(&r);
    unique(key, sizeof key, "bola-refund");
    snprintf(path, sizeof path, "/v1/payments/%s/refunds", payment);
    call(&r, "POST", path, &b, key, "{\"amount\":100}");
    expect_error(&r, 404, "payment_not_found");
    http_response_free(&r);

    /* lists and cursors: nothing of A's */
    static const char *const lists[] = {"/v1/orders", "/v1/payments", "/v1/transactions",
                                        "/v1/notifications"};
    for (size_t k = 0; k < sizeof lists / sizeof lists[0]; k++) {
        call(&r, "GET", lists[k], &b, NULL, NULL);
        assert_int_equal(r.status, 200);
        if (r.body != NULL && (strstr(r.body, a.id) != NULL || strstr(r.body, pending) != NULL ||
                               strstr(r.body, payment) != NULL))
            fail_msg("B's %s shows A's objects: %s", lists[k], r.body);
        http_response_free(&r);
    }
    static const char *const cursors[][2] = {{"/v1/orders", "pending"},
                                             {"/v1/payments", "payment"},
                                             {"/v1/transactions", "transaction"}};
    for (size_t k = 0; k < 3; k++) {
        const char *id = strcmp(cursors[k][1], "pending") == 0   ? pending
                         : strcmp(cursors[k][1], "payment") == 0 ? payment
                                                                 : transaction;
        snprintf(path, sizeof path, "%s?starting_after=%s", cursors[k][0], id);
        call(&r, "GET", path, &b, NULL, NULL);
        expect_error(&r, 400, "invalid_starting_after");
        http_response_free(&r);
    }

    /* the streams: A's next payment reaches A's stream only; B's own
     * top-up then reaches B's (so B's stream was live all along) */
    char second[id_bytes], second_payment[id_bytes];
    order_new(&a, 5000, second);
    pay_ok(&a, second, second_payment);
    if (!stream_wait_for(a_stream, second_payment, a_buffer, sizeof a_buffer, wait_ms))
        fail_msg("A's stream never showed A's payment %s", second_payment);
    top_up(&b, 1234);
    if (!stream_wait_for(b_stream, "topup.succeeded", b_buffer, sizeof b_buffer, wait_ms))
        fail_msg("B's stream never showed B's top-up");
    close(a_stream);
    close(b_stream);
    if (strstr(b_buffer, second_payment) != NULL || strstr(b_buffer, a.id) != NULL ||
        strstr(b_buffer, second) != NULL)
        fail_msg("B's stream carried A's event: %s", b_buffer);

    /* nothing of A's changed */
    char status[16];
    order_status(&a, pending, status);
    assert_string_equal(status, "PENDING");
    order_status(&a, paid, status);
    assert_string_equal(status, "COMPLETED");
    snprintf(path, sizeof path, "/v1/payments/%s", payment);
    call(&r, "GET", path, &a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(text_of(&r, "status"), "SUCCEEDED");
    assert_int_equal(number_of(&r, "amount_refunded"), 0);
    http_response_free(&r);
    assert_int_equal(balance_of(&a), 50000 - 20000 - 5000);
    assert_int_equal(balance_of(&b), 50000 + 1234);
    call(&r, "GET", "/v1/payments", &b, NULL, NULL);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
    http_response_free(&r);
}

/* ---- tests: mass assignment (open gateway) ------------------------------------ */

/* Bodies that try to set what the server owns (user_id, status, balance,
 * ids, amounts the server computes) or any unknown field are 400 naming
 * the field, on every writing route, and nothing is applied. */
static void test_mass_assignment_refused(void **state)
{
    (void)state;
    user_t u, victim;
    user_new(&u, "mass");
    user_new(&victim, "mass-victim");
    top_up(&u, 20000);
    char order[id_bytes], paid[id_bytes], payment[id_bytes];
    order_new(&u, 3000, order);
    order_new(&u, 4000, paid);
    pay_ok(&u, paid, payment);
    int64_t balance = balance_of(&u);
    assert_int_equal(balance, 16000);

    char email[128], body[600], path[200], key[64];
    unique(email, sizeof email, "mass-new");
    strcat(email, "@gwsec.example");
    static const char *const register_fields[][2] = {
        {"user_id", "\"usr_forged\""},
        {"balance", "100000000"},
        {"id", "\"usr_forged\""},
        {"is_admin", "true"},
        {"created_at", "\"2000-01-01T00:00:00.000Z\""},
    };
    http_response_t r;
    for (size_t i = 0; i < sizeof register_fields / sizeof register_fields[0]; i++) {
        snprintf(body, sizeof body,
                 "{\"email\":\"%s\",\"password\":\"%s\",\"name\":\"M\",\"%s\":%s}", email, password,
                 register_fields[i][0], register_fields[i][1]);
        call(&r, "POST", "/v1/users", NULL, NULL, body);
        expect_bad_field(&r, register_fields[i][0]);
        http_response_free(&r);
    }
    /* no account was made by any of them */
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", email, password);
    call(&r, "POST", "/v1/auth/login", NULL, NULL, body);
    expect_error(&r, 401, "invalid_credentials");
    http_response_free(&r);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\",\"user_id\":\"%s\"}",
             u.email, password, victim.id);
    call(&r, "POST", "/v1/auth/login", NULL, NULL, body);
    expect_bad_field(&r, "user_id");
    http_response_free(&r);

    char victim_id[id_bytes + 2];
    snprintf(victim_id, sizeof victim_id, "\"%s\"", victim.id);
    const char *const topup_fields[][2] = {
        {"balance", "99999999"}, {"user_id", victim_id}, {"currency", "\"USD\""}};
    for (size_t i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"amount\":100,\"%s\":%s}", topup_fields[i][0],
                 topup_fields[i][1]);
        unique(key, sizeof key, "mass-top");
        call(&r, "POST", "/v1/wallet/topups", &u, key, body);
        expect_bad_field(&r, topup_fields[i][0]);
        http_response_free(&r);
    }

    static const char *const order_fields[][2] = {
        {"status", "\"COMPLETED\""},         {"user_id", "\"victim\""},
        {"payment_id", "\"pay_x\""},         {"amount_paid", "1"},
        {"metadata", "{\"user_id\":\"x\"}"}, {"Amount", "5"},
    };
    for (size_t i = 0; i < sizeof order_fields / sizeof order_fields[0]; i++) {
        snprintf(body, sizeof body, "{\"amount\":1000,\"%s\":%s}", order_fields[i][0],
                 order_fields[i][1]);
        call(&r, "POST", "/v1/orders", &u, NULL, body);
        expect_bad_field(&r, order_fields[i][0]);
        http_response_free(&r);
    }
    call(&r, "POST", "/v1/orders", &u, NULL, "{\"amount\":1000,\"amount\":1}");
    expect_error(&r, 400, "invalid_json"); /* a duplicate key is not "the last one wins" */
    http_response_free(&r);

    snprintf(path, sizeof path, "/v1/orders/%s/cancel", order);
    call(&r, "POST", path, &u, NULL, "{\"status\":\"COMPLETED\"}");
    expect_bad_field(&r, "status");
    http_response_free(&r);

    static const char *const payment_fields[][2] = {
        {"status", "\"SUCCEEDED\""}, {"amount", "1"}, {"user_id", "\"victim\""}};
    for (size_t i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"order_id\":\"%s\",\"%s\":%s}", order, payment_fields[i][0],
                 payment_fields[i][1]);
        unique(key, sizeof key, "mass-pay");
        call(&r, "POST", "/v1/payments", &u, key, body);
        expect_bad_field(&r, payment_fields[i][0]);
        http_response_free(&r);
    }

    snprintf(path, sizeof path, "/v1/payments/%s/refunds", payment);
    static const char *const refund_fields[][2] = {
        {"status", "\"SUCCEEDED\""}, {"user_id", "\"victim\""}, {"amount_refunded", "0"}};
    for (size_t i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"amount\":100,\"%s\":%s}", refund_fields[i][0],
                 refund_fields[i][1]);
        unique(key, sizeof key, "mass-refund");
        call(&r, "POST", path, &u, key, body);
        expect_bad_field(&r, refund_fields[i][0]);
        http_response_free(&r);
    }

    snprintf(path, sizeof path, "/v1/orders?user_id=%s", victim.id);
    call(&r, "GET", path, &u, NULL, NULL);
    expect_bad_field(&r, "user_id");
    http_response_free(&r);

    /* nothing applied */
    assert_int_equal(balance_of(&u), balance);
    assert_int_equal(balance_of(&victim), 0);
    char status[16];
    order_status(&u, order, status);
    assert_string_equal(status, "PENDING");
    call(&r, "GET", "/v1/orders", &u, NULL, NULL);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 2);
    http_response_free(&r);
    call(&r, "GET", "/v1/orders", &victim, NULL, NULL);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
    http_response_free(&r);
    snprintf(path, sizeof path, "/v1/payments/%s", payment);
    call(&r, "GET", path, &u, NULL, NULL);
    assert_int_equal(number_of(&r, "amount_refunded"), 0);
    http_response_free(&r);
    call(&r, "GET", "/v1/payments", &u, NULL, NULL);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 1);
    http_response_free(&r);
}

/* ---- tests: tokens (open gateway) ----------------------------------------------- */

/* Fails unless 'path' with 'authorization' (a whole header, or NULL) is
 * 401 unauthenticated with WWW-Authenticate: Bearer. */
static void expect_refused(const char *method, const char *path, const char *authorization,
                           const char *what)
{
    const char *headers[] = {authorization, NULL};
    http_response_t r;
    if (!http_request(&r, g.open_port, method, path, authorization ? headers : NULL, NULL))
        fail_msg("%s: %s", what, r.error);
    if (r.status != 401)
        fail_msg("%s: HTTP %d, expected 401: %s", what, r.status, r.body ? r.body : "");
    expect_error(&r, 401, "unauthenticated");
    const char *challenge = http_header(&r, "WWW-Authenticate");
    if (challenge == NULL || strncmp(challenge, "Bearer", 6) != 0)
        fail_msg("%s: no WWW-Authenticate: Bearer", what);
    http_response_free(&r);
}

/* Every way a token can be wrong is 401 unauthenticated, on an ordinary
 * route and on the stream; a token crafted the same way with every claim
 * right is 200, so each refusal is about the one thing changed. */
static void test_bad_tokens_refused(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "tokens");
    int64_t now = (int64_t)time(NULL);
    static const char hs256[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}";
    char payload[512], token[token_bytes_max], header[token_bytes_max + 64];
#define CLAIMS(iss, aud, iat, nbf_part, exp)                                                       \
    snprintf(payload, sizeof payload,                                                              \
             "{\"sub\":\"%s\",\"iss\":\"%s\",\"aud\":\"%s\",\"iat\":%" PRId64                      \
             "%s,\"exp\":%" PRId64 ",\"jti\":\"gwsectestjti\"}",                                   \
             u.id, iss, aud, (int64_t)(iat), nbf_part, (int64_t)(exp))

    CLAIMS("paygate", "paygate-api", now, "", now + 600);
    craft_token(token, sizeof token, hs256, payload, jwt_secret);
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    http_response_t r;
    const char *ok_headers[] = {header, NULL};
    assert_true(http_request(&r, g.open_port, "GET", "/v1/wallet", ok_headers, NULL));
    assert_int_equal(r.status, 200);
    assert_string_equal(text_of(&r, "user_id"), u.id);
    http_response_free(&r);

    static const char *const paths[][2] = {
        {"GET", "/v1/wallet"}, {"GET", "/v1/orders"}, {"GET", "/v1/notifications/stream"}};
    struct {
        const char *what;
        char header[token_bytes_max + 64];
    } cases[24];
    size_t n = 0;
#define ADD_TOKEN(description, head, key)                                                          \
    do {                                                                                           \
        craft_token(token, sizeof token, head, payload, key);                                      \
        cases[n].what = description;                                                               \
        snprintf(cases[n].header, sizeof cases[n].header, "Authorization: Bearer %s", token);      \
        n++;                                                                                       \
    } while (0)

    CLAIMS("paygate", "paygate-api", now - 1000, "", now - 100);
    ADD_TOKEN("expired", hs256, jwt_secret);
    char nbf[64];
    snprintf(nbf, sizeof nbf, ",\"nbf\":%" PRId64, now + 600);
    CLAIMS("paygate", "paygate-api", now, nbf, now + 900);
    ADD_TOKEN("not yet valid (nbf in 10 min)", hs256, jwt_secret);
    CLAIMS("paygate", "paygate-api", now + 600, "", now + 900);
    ADD_TOKEN("issued in the future (iat in 10 min)", hs256, jwt_secret);
    CLAIMS("someone-else", "paygate-api", now, "", now + 600);
    ADD_TOKEN("wrong issuer", hs256, jwt_secret);
    CLAIMS("paygate", "other-api", now, "", now + 600);
    ADD_TOKEN("wrong audience", hs256, jwt_secret);
    CLAIMS("paygate", "paygate-api", now, "", now + 600);
    ADD_TOKEN("alg none", "{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"k1\"}", NULL);
    ADD_TOKEN("alg None with a MAC", "{\"alg\":\"None\",\"typ\":\"JWT\",\"kid\":\"k1\"}",
              jwt_secret);
    ADD_TOKEN("RS256 header, HMAC with the secret (HS/RS confusion)",
              "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}", jwt_secret);
    ADD_TOKEN("RS256 header, HMAC keyed by a public key (HS/RS confusion)",
              "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}",
              "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
              "-----END PUBLIC KEY-----\n");
    ADD_TOKEN("HS512 header", "{\"alg\":\"HS512\",\"typ\":\"JWT\",\"kid\":\"k1\"}", jwt_secret);
    ADD_TOKEN("hs256 in lower case", "{\"alg\":\"hs256\",\"typ\":\"JWT\",\"kid\":\"k1\"}",
              jwt_secret);
    ADD_TOKEN("unknown kid", "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k9\"}", jwt_secret);
    ADD_TOKEN("no kid", "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", jwt_secret);
    ADD_TOKEN("signed with another secret", hs256, "another-secret-0123456789abcdefghijklmnop");
    /* tampered: u's real token with B's subject in the payload */
    {
        char forged[token_bytes_max] = "";
        const char *dot1 = strchr(u.token, '.');
        const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
        assert_non_null(dot2);
        memcpy(forged, u.token, (size_t)(dot1 - u.token) + 1);
        forged[dot1 - u.token + 1] = '\0';
        snprintf(payload, sizeof payload,
                 "{\"sub\":\"usr_someoneelse\",\"iss\":\"paygate\",\"aud\":\"paygate-api\","
                 "\"iat\":%" PRId64 ",\"exp\":%" PRId64 ",\"jti\":\"x\"}",
                 now, now + 600);
        assert_true(jwt_b64url_append(forged, sizeof forged, payload, strlen(payload)));
        strcat(forged, dot2);
        cases[n].what = "tampered payload";
        snprintf(cases[n].header, sizeof cases[n].header, "Authorization: Bearer %s", forged);
        n++;
        /* and one flipped signature character */
        snprintf(forged, sizeof forged, "%s", u.token);
        size_t len = strlen(forged);
        forged[len - 2] = forged[len - 2] == 'A' ? 'B' : 'A';
        cases[n].what = "signature changed";
        snprintf(cases[n].header, sizeof cases[n].header, "Authorization: Bearer %s", forged);
        n++;
    }
    static const char *const garbled[][2] = {
        {"empty Bearer", "Authorization: Bearer"},
        {"garbage", "Authorization: Bearer !!!not-a-token!!!"},
        {"two segments", "Authorization: Bearer abc.def"},
        {"Basic scheme", "Authorization: Basic dXNlcjpwYXNzd29yZA=="},
    };
    for (size_t i = 0; i < sizeof garbled / sizeof garbled[0]; i++) {
        cases[n].what = garbled[i][0];
        snprintf(cases[n].header, sizeof cases[n].header, "%s", garbled[i][1]);
        n++;
    }
    assert_true(n <= sizeof cases / sizeof cases[0]);

    for (size_t p = 0; p < sizeof paths / sizeof paths[0]; p++) {
        expect_refused(paths[p][0], paths[p][1], NULL, "no Authorization");
        for (size_t i = 0; i < n; i++) {
            char what[200];
            snprintf(what, sizeof what, "%s %s: %s", paths[p][0], paths[p][1], cases[i].what);
            expect_refused(paths[p][0], paths[p][1], cases[i].header, what);
        }
    }
#undef ADD_TOKEN
#undef CLAIMS
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_limit_per_address),
        cmocka_unit_test(test_rate_limit_forwarded_for),
        cmocka_unit_test(test_rate_limit_per_user),
        cmocka_unit_test(test_rate_limit_login),
        cmocka_unit_test(test_rate_limit_register),
        cmocka_unit_test(test_rate_limit_payments),
        cmocka_unit_test(test_connections_per_address),
        cmocka_unit_test(test_slow_clients_closed),
        cmocka_unit_test(test_size_and_string_limits),
        cmocka_unit_test(test_security_headers_everywhere),
        cmocka_unit_test(test_bola_other_users_objects),
        cmocka_unit_test(test_mass_assignment_refused),
        cmocka_unit_test(test_bad_tokens_refused),
    };
    return cmocka_run_group_tests_name("gateway security", tests, group_setup, group_teardown);
}
