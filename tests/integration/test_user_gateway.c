/*
 * Integration tests of the user service behind the HTTP gateway, with
 * real processes: paygate-broker, paygate-user (2 worker threads) and
 * paygate-gateway on free loopback ports, against the test PostgreSQL that
 * ./dev test starts (PAYGATE_TEST_PG_DSN; without it the test FAILS, it is
 * never skipped).
 *
 * The HTTP API is driven with tests/support/http_client (one connection
 * per request, raw bytes for malformed input). The internal Debit/Credit
 * RPCs, which have no HTTP route, are called through lib/rpc directly.
 * Balances are checked against the database itself: for every wallet the
 * tests touch, balance == SUM(ledger.amount).
 *
 * One test stops and restarts PostgreSQL (pg_ctl as 'postgres'); it always
 * starts it again, even when an assertion fails half-way (its teardown and
 * the group teardown both check). ctest runs this file alone (RUN_SERIAL)
 * for that reason. Other tests share the database: every email is unique
 * (pid and a counter) and nothing is ever dropped.
 *
 * Process logs are kept in $PAYGATE_TEST_LOG_DIR as user_gateway-*.log; the
 * last test checks that they hold no password, secret or token.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <sodium.h>

#include "clock/clock.h"
#include "http_client.h"
#include "jwt_craft.h"
#include "proc.h"
#include "system.h"
#include "rpc/rpc.h"
#include "token/token.h"
#include "user.pb-c.h"

/* The services' HS256 key: 48 characters, like a real deployment's. */
static const char jwt_secret[] = "ugw-test-secret-0123456789abcdefghijklmnopqrstuv";
_Static_assert(sizeof jwt_secret - 1 == 48, "the test secret is 48 characters");
/* Another key of the right shape: tokens signed with it must be refused. */
static const char other_secret[] = "ugw-other-secret-0123456789abcdefghijklmnopqrstu";
/* Every account's password, and a wrong one; the logs must hold neither. */
static const char password[] = "Ugw-Passw0rd-7f3c9e1a";
static const char wrong_password[] = "Ugw-Wrong-Passw0rd-41d2";

enum {
    body_bytes_max = 16384,           /* PAYGATE_GATEWAY_BODY_BYTES_MAX of the gateway under test */
    ready_timeout_ms = 60000,         /* processes up and /readyz 200 */
    unavailable_answer_ms_max = 4000, /* 503 while PostgreSQL is down (connect timeout 2 s) */
    topup_amount_max = 10000000,
    concurrent_topups = 50,
    concurrent_debits = 20,
    wallets_max = 256,
    pg_ctl_wait_s = 60,
};

/* An account created by a test, logged in. */
typedef struct {
    char id[TOKEN_USER_ID_SIZE];
    char email[128];
    char token[TOKEN_BYTES_MAX + 1];
} user_t;

static struct {
    system_t *system;
    const char *dsn; /* the system's scratch database */
    int http_port;
    proc_t *broker, *user, *gateway; /* the system's */
    rpc_client_t *rpc;
    token_keyring_t *keys; /* the services' key: issues tokens to test with */
    unsigned counter;      /* for unique emails, keys and references */
    char wallets[wallets_max][TOKEN_USER_ID_SIZE]; /* every wallet a test touched */
    size_t wallet_count;
    char a_token[TOKEN_BYTES_MAX + 1]; /* one real access token, must not be logged */
} g;

/* ---- HTTP helpers ------------------------------------------------------ */

/* One request to the gateway: 'body' (or NULL) as application/json,
 * 'token' (or NULL) as a Bearer token, plus 'extra' headers (NULL-ended,
 * or NULL). Fails the test when no complete response came. */
static void call(http_response_t *r, const char *method, const char *path, const char *token,
                 const char *body, const char *const extra[])
{
    if (!http_api_request(r, g.http_port, method, path, token, NULL, body, extra))
        fail_msg("%s %s: %s", method, path, r->error);
}

/* Fails unless 'r' has HTTP 'status', an X-Request-Id and a JSON body. */
static void expect_status(const http_response_t *r, int status)
{
    if (r->status != status)
        fail_msg("HTTP %d, expected %d: %s", r->status, status, r->body ? r->body : "");
    const char *request_id = http_header(r, "X-Request-Id");
    if (request_id == NULL || request_id[0] == '\0')
        fail_msg("HTTP %d without X-Request-Id", r->status);
    if (r->json == NULL)
        fail_msg("HTTP %d: body is not JSON: %s", r->status, r->body ? r->body : "");
}

/* Fails unless 'r' is an error 'status' with body {"error": {"code": 'code',
 * "message": non-empty, "request_id": the X-Request-Id header}}. Returns
 * the "error" object (owned by 'r'). */
static json_t *expect_error(const http_response_t *r, int status, const char *code)
{
    expect_status(r, status);
    json_t *error = json_object_get(r->json, "error");
    if (!json_is_object(error))
        fail_msg("HTTP %d without an \"error\" object: %s", r->status, r->body);
    const char *got = json_string_value(json_object_get(error, "code"));
    if (got == NULL || strcmp(got, code) != 0)
        fail_msg("error code %s, expected %s: %s", got ? got : "(none)", code, r->body);
    const char *message = json_string_value(json_object_get(error, "message"));
    assert_non_null(message);
    assert_true(message[0] != '\0');
    const char *request_id = json_string_value(json_object_get(error, "request_id"));
    assert_non_null(request_id);
    assert_string_equal(request_id, http_header(r, "X-Request-Id"));
    return error;
}

/* String member 'key' of 'object'; fails when missing or not a string. */
static const char *json_text(const json_t *object, const char *key)
{
    const char *value = json_string_value(json_object_get(object, key));
    if (value == NULL)
        fail_msg("no string \"%s\" in the response", key);
    return value;
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
    if (n != 8 || zulu != 'Z' || strlen(text) != 24 || text[4] != '-' || text[10] != 'T')
        fail_msg("'%s' is not an RFC 3339 UTC time", text);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t when = timegm(&tm);
    long long skew = (long long)(when - time(NULL));
    if (skew < -600 || skew > 600)
        fail_msg("'%s' is %lld s away from now", text, skew);
}

/* A unique string "<what>-<pid>-<n>" in 'out'. */
static void unique(char *out, size_t size, const char *what)
{
    snprintf(out, size, "%s-%d-%u", what, (int)getpid(), ++g.counter);
}

/* Remembers wallet 'user_id' for the ledger checks. */
static void wallet_touched(const char *user_id)
{
    assert_true(g.wallet_count < wallets_max);
    snprintf(g.wallets[g.wallet_count++], TOKEN_USER_ID_SIZE, "%s", user_id);
}

/* POST /v1/users with 'email', 'pass' and 'name' (JSON-escaped here). */
static void register_raw(http_response_t *r, const char *email, const char *pass, const char *name)
{
    json_t *body = json_pack("{s:s, s:s, s:s}", "email", email, "password", pass, "name", name);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    call(r, "POST", "/v1/users", NULL, text, NULL);
    free(text);
}

/* POST /v1/auth/login with 'email' and 'pass'. */
static void login_raw(http_response_t *r, const char *email, const char *pass)
{
    json_t *body = json_pack("{s:s, s:s}", "email", email, "password", pass);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    call(r, "POST", "/v1/auth/login", NULL, text, NULL);
    free(text);
}

/* Registers a new account (unique email from 'tag') and logs it in. */
static void user_new(user_t *u, const char *tag)
{
    memset(u, 0, sizeof *u);
    char local[96];
    unique(local, sizeof local, tag);
    snprintf(u->email, sizeof u->email, "%s@example.com", local);
    http_response_t r;
    register_raw(&r, u->email, password, "Test User");
    expect_status(&r, 201);
    snprintf(u->id, sizeof u->id, "%s", json_text(r.json, "id"));
    http_response_free(&r);
    login_raw(&r, u->email, password);
    expect_status(&r, 200);
    snprintf(u->token, sizeof u->token, "%s", json_text(r.json, "access_token"));
    http_response_free(&r);
    wallet_touched(u->id);
}

/* GET /v1/wallet as 'u'; returns the balance. */
static int64_t wallet_balance(const user_t *u)
{
    http_response_t r;
    call(&r, "GET", "/v1/wallet", u->token, NULL, NULL);
    expect_status(&r, 200);
    assert_string_equal(json_text(r.json, "user_id"), u->id);
    int64_t balance = json_number(r.json, "balance");
    http_response_free(&r);
    return balance;
}

/* POST /v1/wallet/topups as 'u' with 'body' and Idempotency-Key 'key'
 * (NULL: no such header). */
static void topup_raw(http_response_t *r, const user_t *u, const char *key, const char *body)
{
    char header[400];
    snprintf(header, sizeof header, "Idempotency-Key: %s", key ? key : "");
    const char *extra[] = {key ? header : NULL, NULL};
    call(r, "POST", "/v1/wallet/topups", u->token, body, extra);
}

/* Tops 'u' up by 'amount' with a fresh key; returns the new balance. */
static int64_t topup_ok(const user_t *u, int64_t amount)
{
    char key[64], body[64];
    unique(key, sizeof key, "key");
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    topup_raw(&r, u, key, body);
    expect_status(&r, 201);
    assert_int_equal(json_number(r.json, "amount"), amount);
    int64_t balance = json_number(r.json, "balance");
    http_response_free(&r);
    return balance;
}

/* ---- tokens ------------------------------------------------------------ */

/* A token made by hand (tests/support/jwt_craft.h) into 'out'; fails the
 * test when it does not fit. */
static void craft_token(char *out, size_t out_size, const char *header, const char *payload,
                        const char *secret)
{
    assert_true(jwt_craft(out, out_size, header, payload, secret));
}

/* A payload with every claim the services expect, for 'sub', issued at
 * 'iat' and expiring at 'exp'. */
static void claims(char *out, size_t size, const char *sub, int64_t iat, int64_t exp)
{
    snprintf(out, size,
             "{\"sub\":\"%s\",\"iss\":\"paygate\",\"aud\":\"paygate-api\",\"iat\":%" PRId64
             ",\"exp\":%" PRId64 ",\"jti\":\"ugwtestjti\"}",
             sub, iat, exp);
}

/* Fails unless GET /v1/wallet with 'authorization' (a whole header, or
 * NULL for none) is 401 unauthenticated with WWW-Authenticate: Bearer. */
static void expect_wallet_refused(const char *authorization, const char *what)
{
    const char *extra[] = {authorization, NULL};
    http_response_t r;
    call(&r, "GET", "/v1/wallet", NULL, NULL, extra);
    if (r.status != 401)
        fail_msg("%s: HTTP %d, expected 401: %s", what, r.status, r.body);
    expect_error(&r, 401, "unauthenticated");
    const char *challenge = http_header(&r, "WWW-Authenticate");
    if (challenge == NULL || strncmp(challenge, "Bearer", 6) != 0)
        fail_msg("%s: no WWW-Authenticate: Bearer", what);
    http_response_free(&r);
}

/* ---- the database ------------------------------------------------------ */

/* A connection to the test database; fails the test when it cannot. */
static PGconn *db_connect(void)
{
    PGconn *conn = PQconnectdb(g.dsn);
    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("cannot connect to %s: %s", g.dsn, PQerrorMessage(conn));
    return conn;
}

/* Checks wallet 'user_id' in the database: balance == SUM(ledger.amount),
 * the latest ledger row's balance_after is the balance, no ledger row is
 * negative, and the top-ups table adds up to the TOPUP ledger rows.
 * Returns the balance. */
static int64_t db_wallet_check(PGconn *conn, const char *user_id)
{
    static const char sql[] =
        "SELECT w.balance,"
        " (SELECT COALESCE(SUM(amount), 0) FROM users.ledger l WHERE l.user_id = w.user_id),"
        " (SELECT count(*) FROM users.ledger l WHERE l.user_id = w.user_id"
        "   AND l.balance_after < 0),"
        " (SELECT COALESCE(MAX(balance_after) FILTER (WHERE id = (SELECT MAX(id)"
        "   FROM users.ledger m WHERE m.user_id = w.user_id)), 0) FROM users.ledger l"
        "   WHERE l.user_id = w.user_id),"
        " (SELECT COALESCE(SUM(amount), 0) FROM users.topups t WHERE t.user_id = w.user_id),"
        " (SELECT COALESCE(SUM(amount), 0) FROM users.ledger l WHERE l.user_id = w.user_id"
        "   AND l.kind = 'TOPUP')"
        " FROM users.wallets w WHERE w.user_id = $1";
    const char *params[] = {user_id};
    PGresult *res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("wallet query: %s", PQerrorMessage(conn));
    if (PQntuples(res) != 1)
        fail_msg("no wallet row for %s", user_id);
    int64_t balance = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t ledger_sum = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    int64_t negative_rows = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    int64_t last_after = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    int64_t topups_sum = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
    int64_t topup_rows_sum = strtoll(PQgetvalue(res, 0, 5), NULL, 10);
    PQclear(res);
    if (balance != ledger_sum)
        fail_msg("wallet %s: balance %" PRId64 " but the ledger sums to %" PRId64, user_id, balance,
                 ledger_sum);
    if (balance != last_after)
        fail_msg("wallet %s: balance %" PRId64 " but the latest ledger row says %" PRId64, user_id,
                 balance, last_after);
    assert_int_equal(negative_rows, 0);
    assert_true(balance >= 0);
    assert_int_equal(topups_sum, topup_rows_sum);
    return balance;
}

/* ---- PostgreSQL control ------------------------------------------------ */

/* $'name', or a test failure naming it. */
static const char *env_required(const char *name)
{
    const char *value = getenv(name);
    if (value == NULL || value[0] == '\0')
        fail_msg("%s is not set (./dev test sets it)", name);
    return value;
}

/* Runs "runuser -u postgres -- 'argv'..." from "/" without our open
 * descriptors (the server it may start must not hold them) and with its
 * output discarded. Returns the exit status, or -1. */
static int run_as_postgres(const char *const argv[])
{
    const char *args[20] = {"runuser", "-u", "postgres", "--"};
    size_t n = 4;
    for (size_t i = 0; argv[i] != NULL && n < 19; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (chdir("/") != 0 || freopen("/dev/null", "w", stdout) == NULL)
            _exit(127);
        close_range(3, ~0U, 0);
        execvp(args[0], (char *const *)args);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* pg_ctl 'action' on the test server, with "-D <data>" and 'more'. */
static int pg_ctl(const char *action, const char *const more[])
{
    char pg_ctl_path[600], wait_s[16];
    snprintf(pg_ctl_path, sizeof pg_ctl_path, "%s/pg_ctl", env_required("PAYGATE_PG_BIN"));
    snprintf(wait_s, sizeof wait_s, "%d", pg_ctl_wait_s);
    const char *argv[16] = {pg_ctl_path, "-D", env_required("PAYGATE_TEST_PG_DATA"), "-t", wait_s};
    size_t n = 5;
    for (size_t i = 0; more != NULL && more[i] != NULL && n < 14; i++)
        argv[n++] = more[i];
    argv[n++] = action;
    argv[n] = NULL;
    return run_as_postgres(argv);
}

static bool pg_running(void)
{
    return pg_ctl("status", NULL) == 0;
}

static bool pg_stop(void)
{
    return pg_ctl("stop", (const char *[]){"-m", "fast", "-w", NULL}) == 0;
}

static bool pg_start(void)
{
    return pg_ctl("start",
                  (const char *[]){"-l", env_required("PAYGATE_TEST_PG_LOG"), "-w", NULL}) == 0;
}

/* Starts PostgreSQL again if a test left it down; never fails. */
static void pg_ensure_running(void)
{
    const char *data = getenv("PAYGATE_TEST_PG_DATA");
    if (data == NULL || getenv("PAYGATE_PG_BIN") == NULL || getenv("PAYGATE_TEST_PG_LOG") == NULL)
        return;
    if (!pg_running()) {
        fprintf(stderr, "test_user_gateway: starting PostgreSQL left down by a failed test\n");
        if (!pg_start())
            fprintf(stderr, "test_user_gateway: could not start PostgreSQL in %s\n", data);
    }
}

/* ---- processes --------------------------------------------------------- */

/* True while 'p' runs (not exited, not a zombie we have not reaped). */
static bool proc_running(proc_t *p)
{
    if (p->pid <= 0)
        return false;
    pid_t r = waitpid(p->pid, &p->exit_status, WNOHANG);
    if (r == p->pid) {
        p->pid = 0;
        return false;
    }
    return true;
}

/* Fails the test, naming the log, if 'p' is not running. */
static void expect_running(proc_t *p)
{
    if (!proc_running(p))
        fail_msg("%s is not running (wait status 0x%x); see %s", p->name, (unsigned)p->exit_status,
                 p->log_path);
}

/* Counts the occurrences of 'needle' in the file at 'path' (-1: unreadable). */
static long file_count(const char *path, const char *needle)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return -1;
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    assert_non_null(text);
    size_t got = fread(text, 1, (size_t)size, file);
    fclose(file);
    text[got] = '\0';
    long count = 0;
    for (const char *p = text; (p = memmem(p, (size_t)(text + got - p), needle, strlen(needle)));
         p++)
        count++;
    free(text);
    return count;
}

static int group_setup(void **state)
{
    (void)state;
    g.keys = token_keyring_new("k1", jwt_secret, strlen(jwt_secret), "paygate", "paygate-api",
                               TOKEN_TTL_S_DEFAULT);
    assert_non_null(g.keys);
    char body_max[64];
    snprintf(body_max, sizeof body_max, "PAYGATE_GATEWAY_BODY_BYTES_MAX=%d", body_bytes_max);
    const char *gateway_env[] = {"PAYGATE_GATEWAY_BIND=127.0.0.1", body_max, NULL};
    /* Only the user service runs here: /readyz waits for it alone. Ready
     * when the gateway says so and both user instances are registered, so
     * load really spreads over two. */
    system_config_t config = {
        .name = "user_gateway",
        .processes = SYSTEM_ONLY(system_user) | SYSTEM_ONLY(system_gateway),
        .jwt_secret = jwt_secret,
        .rate_limits_off = true,
        .threads = {[system_user] = 2},
        .ready_timeout_ms = ready_timeout_ms,
        .process_env = {[system_gateway] = gateway_env},
    };
    g.system = system_new(&config);
    if (g.system == NULL)
        return -1;
    g.dsn = system_pg_dsn(g.system);
    g.http_port = system_gateway_port(g.system);
    g.broker = system_process(g.system, system_broker);
    g.user = system_process(g.system, system_user);
    g.gateway = system_process(g.system, system_gateway);
    g.rpc = rpc_client_new(NULL, system_broker_endpoint(g.system));
    assert_non_null(g.rpc);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pg_ensure_running();
    rpc_client_destroy(&g.rpc);
    proc_kill(g.gateway);
    proc_kill(g.user);
    proc_kill(g.broker);
    system_destroy(&g.system);
    token_keyring_destroy(&g.keys);
    return 0;
}

/* ---- tests: probes and request ids --------------------------------------- */

/* /healthz and /readyz answer 200 with JSON and an X-Request-Id. */
static void test_probes(void **state)
{
    (void)state;
    http_response_t r;
    call(&r, "GET", "/healthz", NULL, NULL, NULL);
    expect_status(&r, 200);
    assert_string_equal(json_text(r.json, "status"), "ok");
    assert_string_equal(http_header(&r, "Content-Type"), "application/json");
    http_response_free(&r);
    call(&r, "GET", "/readyz", NULL, NULL, NULL);
    expect_status(&r, 200);
    assert_string_equal(json_text(r.json, "status"), "ready");
    http_response_free(&r);
}

/* A sane X-Request-Id is echoed (in the header and the error body); a
 * missing or insane one is replaced by a generated, distinct id. */
static void test_request_id_echoed_or_generated(void **state)
{
    (void)state;
    char given[64], header[96];
    unique(given, sizeof given, "rid");
    snprintf(header, sizeof header, "X-Request-Id: %s", given);
    const char *extra[] = {header, NULL};
    http_response_t r;
    call(&r, "GET", "/healthz", NULL, NULL, extra);
    expect_status(&r, 200);
    assert_string_equal(http_header(&r, "X-Request-Id"), given);
    http_response_free(&r);

    call(&r, "GET", "/v1/nothing-here", NULL, NULL, extra);
    json_t *error = expect_error(&r, 404, "not_found");
    assert_string_equal(json_text(error, "request_id"), given);
    http_response_free(&r);

    /* generated ids: present, and not the same twice */
    char first[128];
    call(&r, "GET", "/healthz", NULL, NULL, NULL);
    expect_status(&r, 200);
    snprintf(first, sizeof first, "%s", http_header(&r, "X-Request-Id"));
    http_response_free(&r);
    call(&r, "GET", "/healthz", NULL, NULL, NULL);
    expect_status(&r, 200);
    assert_string_not_equal(http_header(&r, "X-Request-Id"), first);
    http_response_free(&r);

    /* not a token (a space) and too long (65 characters): replaced */
    char too_long[128];
    memset(too_long, 'r', 65);
    too_long[65] = '\0';
    const char *insane[] = {"has space", too_long};
    for (size_t i = 0; i < 2; i++) {
        snprintf(header, sizeof header, "X-Request-Id: %s", insane[i]);
        call(&r, "GET", "/healthz", NULL, NULL, extra);
        expect_status(&r, 200);
        const char *got = http_header(&r, "X-Request-Id");
        assert_string_not_equal(got, insane[i]);
        assert_true(strlen(got) > 0 && strlen(got) <= 64 && strchr(got, ' ') == NULL);
        http_response_free(&r);
    }
}

/* Unknown routes are 404, known paths with the wrong method 405 + Allow,
 * and the internal Debit/Credit have no HTTP route at all. */
static void test_unknown_route_and_wrong_method(void **state)
{
    (void)state;
    static const char *const not_found[][2] = {
        {"GET", "/v1/nope"},           {"GET", "/v1/wallet/"},         {"GET", "/"},
        {"POST", "/v1/wallet/debits"}, {"POST", "/v1/wallet/credits"}, {"GET", "/v1/users/x"},
    };
    http_response_t r;
    for (size_t i = 0; i < sizeof not_found / sizeof not_found[0]; i++) {
        call(&r, not_found[i][0], not_found[i][1], NULL, NULL, NULL);
        expect_error(&r, 404, "not_found");
        http_response_free(&r);
    }
    static const char *const wrong[][3] = {
        {"DELETE", "/v1/wallet", "GET"},
        {"GET", "/v1/users", "POST"},
        {"PUT", "/v1/wallet/topups", "POST"},
        {"GET", "/v1/auth/login", "POST"},
    };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        call(&r, wrong[i][0], wrong[i][1], NULL, NULL, NULL);
        expect_error(&r, 405, "method_not_allowed");
        const char *allow = http_header(&r, "Allow");
        if (allow == NULL || strcmp(allow, wrong[i][2]) != 0)
            fail_msg("%s %s: Allow '%s', expected '%s'", wrong[i][0], wrong[i][1],
                     allow ? allow : "(none)", wrong[i][2]);
        http_response_free(&r);
    }
}

/* Malformed HTTP (garbage, an unknown version, a bad Content-Length) and
 * an oversized head are refused at once with 400/505/400/431, and the
 * gateway keeps serving. (These answers come from libmicrohttpd itself:
 * they carry no X-Request-Id and no JSON body, so only the status is
 * checked here.) */
static void test_malformed_http_refused(void **state)
{
    (void)state;
    static const struct {
        const char *request;
        int status;
    } cases[] = {
        {"THIS IS NOT HTTP\r\n\r\n", 400},
        {"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505},
        {"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400},
    };
    http_response_t r;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!http_raw(&r, g.http_port, cases[i].request, strlen(cases[i].request)))
            fail_msg("case %zu: %s", i, r.error);
        if (r.status != cases[i].status)
            fail_msg("case %zu: HTTP %d, expected %d", i, r.status, cases[i].status);
        http_response_free(&r);
    }

    /* a 40 KB header, over the gateway's 8 KB for a request head */
    size_t big = 40000;
    char *head = malloc(big + 128);
    assert_non_null(head);
    int n = snprintf(head, 128, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(head + n, 'a', big);
    memcpy(head + n + big, "\r\n\r\n", 4);
    bool answered = http_raw(&r, g.http_port, head, (size_t)n + big + 4);
    free(head);
    if (!answered)
        fail_msg("oversized head: %s", r.error);
    if (r.status != 431)
        fail_msg("oversized head: HTTP %d, expected 431", r.status);
    assert_true(r.elapsed_ms < 5000);
    http_response_free(&r);

    call(&r, "GET", "/healthz", NULL, NULL, NULL);
    expect_status(&r, 200);
    http_response_free(&r);
    expect_running(g.gateway);
}

/* ---- tests: accounts ----------------------------------------------------- */

/* Register answers 201 with exactly {id, email (lower case), name,
 * created_at (RFC 3339 UTC)}, never the password or its hash. */
static void test_register_creates_account(void **state)
{
    (void)state;
    char local[96], email[128], mixed[160];
    unique(local, sizeof local, "ugw-Reg");
    snprintf(email, sizeof email, "%s@example.com", local);
    snprintf(mixed, sizeof mixed, "  %s@Example.COM ", local);
    for (char *c = mixed; *c; c++) /* the whole local part in upper case */
        if (*c == '@')
            break;
        else if (*c >= 'a' && *c <= 'z')
            *c = (char)(*c - 'a' + 'A');
    char lower[128];
    snprintf(lower, sizeof lower, "%s", email);
    for (char *c = lower; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');

    http_response_t r;
    register_raw(&r, mixed, password, "  Asha Rao ");
    expect_status(&r, 201);
    assert_int_equal(json_object_size(r.json), 4);
    const char *id = json_text(r.json, "id");
    assert_true(strncmp(id, "usr_", 4) == 0 && strlen(id) > 8);
    assert_string_equal(json_text(r.json, "email"), lower);
    assert_string_equal(json_text(r.json, "name"), "Asha Rao");
    expect_recent_utc_time(json_text(r.json, "created_at"));
    assert_null(strstr(r.body, password));
    assert_null(strstr(r.body, "argon2"));
    wallet_touched(id);
    http_response_free(&r);
}

/* The same email again, also in another case, is 409 email_taken, and
 * does not replace the first account's password. */
static void test_register_duplicate_email(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-dup");
    http_response_t r;
    register_raw(&r, u.email, "another-Passw0rd", "Someone Else");
    expect_error(&r, 409, "email_taken");
    http_response_free(&r);
    char upper[128];
    snprintf(upper, sizeof upper, "%s", u.email);
    for (char *c = upper; *c; c++)
        if (*c >= 'a' && *c <= 'z')
            *c = (char)(*c - 'a' + 'A');
    register_raw(&r, upper, "another-Passw0rd", "Someone Else");
    expect_error(&r, 409, "email_taken");
    http_response_free(&r);
    login_raw(&r, u.email, "another-Passw0rd");
    expect_error(&r, 401, "invalid_credentials");
    http_response_free(&r);
    login_raw(&r, u.email, password);
    expect_status(&r, 200);
    http_response_free(&r);
}

/* Bad emails, passwords of 7 and 129 characters and empty names are 400
 * with a specific code, create nothing; 8 and 128 characters are fine. */
static void test_register_validation(void **state)
{
    (void)state;
    char local[96], email[128], pw129[130], pw128[129];
    memset(pw129, 'p', 129);
    pw129[129] = '\0';
    memset(pw128, 'q', 128);
    pw128[128] = '\0';
    static const char *const bad_emails[] = {"not-an-email",      "",           "two@@example.com",
                                             "a@b@example.com",   "no-domain@", "@example.com",
                                             "sp ace@example.com"};
    http_response_t r;
    for (size_t i = 0; i < sizeof bad_emails / sizeof bad_emails[0]; i++) {
        register_raw(&r, bad_emails[i], password, "Name");
        expect_error(&r, 400, "invalid_email");
        http_response_free(&r);
    }
    struct {
        const char *pass;
        const char *name;
        const char *code;
    } cases[] = {
        {"Short7!", "Name", "invalid_password"}, /* 7 characters */
        {pw129, "Name", "invalid_password"},     {"", "Name", "invalid_password"},
        {password, "", "invalid_name"},          {password, "    ", "invalid_name"},
    };
    PGconn *db = db_connect();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unique(local, sizeof local, "ugw-invalid");
        snprintf(email, sizeof email, "%s@example.com", local);
        register_raw(&r, email, cases[i].pass, cases[i].name);
        expect_error(&r, 400, cases[i].code);
        http_response_free(&r);
        const char *params[] = {email};
        PGresult *res = PQexecParams(db, "SELECT count(*) FROM users.accounts WHERE email = $1", 1,
                                     NULL, params, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
        assert_string_equal(PQgetvalue(res, 0, 0), "0");
        PQclear(res);
    }
    PQfinish(db);

    /* wrong JSON types and fields that are not the caller's to set */
    call(&r, "POST", "/v1/users", NULL, "{\"email\":5,\"password\":\"x\",\"name\":\"n\"}", NULL);
    assert_string_equal(json_text(expect_error(&r, 400, "invalid_argument"), "field"), "email");
    http_response_free(&r);
    call(&r, "POST", "/v1/users", NULL,
         "{\"email\":\"x@example.com\",\"password\":\"Passw0rd-long\",\"name\":\"n\","
         "\"id\":\"usr_admin\"}",
         NULL);
    assert_string_equal(json_text(expect_error(&r, 400, "invalid_argument"), "field"), "id");
    http_response_free(&r);

    /* the boundaries themselves are accepted */
    const char *fine[] = {"Eight8!!", pw128};
    for (size_t i = 0; i < 2; i++) {
        unique(local, sizeof local, "ugw-edge");
        snprintf(email, sizeof email, "%s@example.com", local);
        register_raw(&r, email, fine[i], "N");
        expect_status(&r, 201);
        wallet_touched(json_text(r.json, "id"));
        http_response_free(&r);
        login_raw(&r, email, fine[i]);
        expect_status(&r, 200);
        http_response_free(&r);
    }
}

/* Login answers a Bearer token that expires in 900 s, is not cacheable,
 * and whose subject is the account (checked with the services' key); the
 * email is normalised at login too. */
static void test_login_issues_token(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-login");
    char upper[160];
    snprintf(upper, sizeof upper, " %s ", u.email);
    for (char *c = upper; *c; c++)
        if (*c >= 'a' && *c <= 'z')
            *c = (char)(*c - 'a' + 'A');
    http_response_t r;
    login_raw(&r, upper, password);
    expect_status(&r, 200);
    assert_int_equal(json_object_size(r.json), 3);
    assert_string_equal(json_text(r.json, "token_type"), "Bearer");
    assert_int_equal(json_number(r.json, "expires_in"), 900);
    assert_string_equal(http_header(&r, "Cache-Control"), "no-store");
    const char *token = json_text(r.json, "access_token");
    char subject[TOKEN_USER_ID_SIZE];
    assert_int_equal(token_verify(g.keys, token, (int64_t)time(NULL), subject, sizeof subject),
                     TOKEN_OK);
    assert_string_equal(subject, u.id);
    snprintf(g.a_token, sizeof g.a_token, "%s", token);
    http_response_free(&r);
}

/* A wrong password and an unknown email get the very same 401
 * invalid_credentials (code and message), so accounts cannot be probed. */
static void test_login_failures_indistinguishable(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-probe");
    char unknown[128], local[96];
    unique(local, sizeof local, "ugw-nobody");
    snprintf(unknown, sizeof unknown, "%s@example.com", local);
    http_response_t wrong, nobody, malformed, empty;
    login_raw(&wrong, u.email, wrong_password);
    login_raw(&nobody, unknown, wrong_password);
    login_raw(&malformed, "not-an-email", wrong_password);
    login_raw(&empty, u.email, "");
    json_t *e1 = expect_error(&wrong, 401, "invalid_credentials");
    json_t *e2 = expect_error(&nobody, 401, "invalid_credentials");
    json_t *e3 = expect_error(&malformed, 401, "invalid_credentials");
    json_t *e4 = expect_error(&empty, 401, "invalid_credentials");
    assert_string_equal(json_text(e1, "message"), json_text(e2, "message"));
    assert_string_equal(json_text(e1, "message"), json_text(e3, "message"));
    assert_string_equal(json_text(e1, "message"), json_text(e4, "message"));
    assert_int_equal(json_object_size(e1), json_object_size(e2));
    assert_null(json_object_get(wrong.json, "access_token"));
    http_response_free(&wrong);
    http_response_free(&nobody);
    http_response_free(&malformed);
    http_response_free(&empty);
}

/* ---- tests: wallet and tokens -------------------------------------------- */

/* A new account's wallet is exactly {user_id, balance: 0, currency: "INR"}. */
static void test_wallet_starts_empty(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-wallet");
    http_response_t r;
    call(&r, "GET", "/v1/wallet", u.token, NULL, NULL);
    expect_status(&r, 200);
    assert_int_equal(json_object_size(r.json), 3);
    assert_string_equal(json_text(r.json, "user_id"), u.id);
    assert_int_equal(json_number(r.json, "balance"), 0);
    assert_string_equal(json_text(r.json, "currency"), "INR");
    http_response_free(&r);
}

/* No token, garbage, another scheme, another key, an expired token,
 * alg "none" and a tampered payload are all 401 unauthenticated with
 * WWW-Authenticate; a hand-crafted token signed with the real key works,
 * which shows the refusals are about the one thing changed. */
static void test_wallet_rejects_bad_tokens(void **state)
{
    (void)state;
    user_t u, other;
    user_new(&u, "ugw-tok");
    user_new(&other, "ugw-tok-other");
    int64_t now = (int64_t)time(NULL);
    char payload[512], token[TOKEN_BYTES_MAX + 1], header[TOKEN_BYTES_MAX + 64];
    static const char hs256[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}";

    /* the positive control: crafted like the services do, with their key */
    claims(payload, sizeof payload, u.id, now, now + 600);
    craft_token(token, sizeof token, hs256, payload, jwt_secret);
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    http_response_t r;
    call(&r, "GET", "/v1/wallet", NULL, NULL, (const char *[]){header, NULL});
    expect_status(&r, 200);
    assert_string_equal(json_text(r.json, "user_id"), u.id);
    http_response_free(&r);

    expect_wallet_refused(NULL, "no Authorization");
    expect_wallet_refused("Authorization: Bearer", "empty Bearer");
    expect_wallet_refused("Authorization: Bearer garbage", "garbage");
    expect_wallet_refused("Authorization: Bearer a.b.c", "three garbage segments");
    expect_wallet_refused("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Basic scheme");
    snprintf(header, sizeof header, "Authorization: Token %s", u.token);
    expect_wallet_refused(header, "real token, wrong scheme");

    craft_token(token, sizeof token, hs256, payload, other_secret);
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    expect_wallet_refused(header, "signed with another secret");

    token_keyring_t *other_keys =
        token_keyring_new("k1", other_secret, strlen(other_secret), "paygate", "paygate-api", 900);
    assert_non_null(other_keys);
    assert_true(token_issue(other_keys, u.id, now, token, sizeof token));
    token_keyring_destroy(&other_keys);
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    expect_wallet_refused(header, "issued by another keyring");

    assert_true(token_issue(g.keys, u.id, now - 3600, token, sizeof token));
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    expect_wallet_refused(header, "expired an hour ago (token_issue)");
    claims(payload, sizeof payload, u.id, now - 1000, now - 100);
    craft_token(token, sizeof token, hs256, payload, jwt_secret);
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    expect_wallet_refused(header, "expired (crafted)");

    claims(payload, sizeof payload, u.id, now, now + 600);
    craft_token(token, sizeof token, "{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"k1\"}", payload,
                NULL);
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    expect_wallet_refused(header, "alg none, no signature");
    craft_token(token, sizeof token, "{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, NULL);
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    expect_wallet_refused(header, "alg none, no kid");
    craft_token(token, sizeof token, "{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"k1\"}", payload,
                jwt_secret);
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    expect_wallet_refused(header, "alg none with a signature");

    /* u's real token with other's id in the payload: the MAC no longer fits */
    char tampered[TOKEN_BYTES_MAX + 1];
    snprintf(tampered, sizeof tampered, "%s", u.token);
    char *dot1 = strchr(tampered, '.'), *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    assert_non_null(dot2);
    claims(payload, sizeof payload, other.id, now, now + 600);
    char forged[TOKEN_BYTES_MAX + 1] = "";
    memcpy(forged, tampered, (size_t)(dot1 - tampered) + 1);
    forged[dot1 - tampered + 1] = '\0';
    assert_true(jwt_b64url_append(forged, sizeof forged, payload, strlen(payload)));
    strcat(forged, dot2);
    snprintf(header, sizeof header, "Authorization: Bearer %s", forged);
    expect_wallet_refused(header, "payload swapped for another user");

    /* a properly signed token for a user that does not exist reads no one's wallet */
    claims(payload, sizeof payload, "usr_doesnotexist", now, now + 600);
    craft_token(token, sizeof token, hs256, payload, jwt_secret);
    call(&r, "GET", "/v1/wallet", token, NULL, NULL);
    expect_error(&r, 404, "wallet_not_found");
    http_response_free(&r);
}

/* ---- tests: top-ups ------------------------------------------------------ */

/* A top-up is 201 {id, amount, balance, currency, created_at}; the same
 * key again answers the identical body and credits once; keys belong to
 * one user (another user's same key is a new top-up). */
static void test_topup_idempotent(void **state)
{
    (void)state;
    user_t u, v;
    user_new(&u, "ugw-topup");
    user_new(&v, "ugw-topup-v");
    char key[64];
    unique(key, sizeof key, "key");
    http_response_t first, again;
    topup_raw(&first, &u, key, "{\"amount\":12345}");
    expect_status(&first, 201);
    assert_int_equal(json_object_size(first.json), 5);
    assert_true(strncmp(json_text(first.json, "id"), "top_", 4) == 0);
    assert_int_equal(json_number(first.json, "amount"), 12345);
    assert_int_equal(json_number(first.json, "balance"), 12345);
    assert_string_equal(json_text(first.json, "currency"), "INR");
    expect_recent_utc_time(json_text(first.json, "created_at"));

    for (int i = 0; i < 3; i++) {
        topup_raw(&again, &u, key, "{\"amount\":12345}");
        expect_status(&again, 201);
        if (!json_equal(first.json, again.json))
            fail_msg("replay differs: %s vs %s", first.body, again.body);
        http_response_free(&again);
    }
    assert_int_equal(wallet_balance(&u), 12345);

    /* the same key for another user: that user's own first top-up */
    topup_raw(&again, &v, key, "{\"amount\":500}");
    expect_status(&again, 201);
    assert_string_not_equal(json_text(again.json, "id"), json_text(first.json, "id"));
    assert_int_equal(json_number(again.json, "balance"), 500);
    http_response_free(&again);
    assert_int_equal(wallet_balance(&u), 12345);
    assert_int_equal(wallet_balance(&v), 500);

    /* a new key adds up */
    assert_int_equal(topup_ok(&u, 655), 13000);
    assert_int_equal(wallet_balance(&u), 13000);
    http_response_free(&first);
}

/* The same key with another amount is 409 idempotency_key_reused and
 * changes nothing. */
static void test_topup_key_reused_other_amount(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-reuse");
    char key[64];
    unique(key, sizeof key, "key");
    http_response_t r;
    topup_raw(&r, &u, key, "{\"amount\":1000}");
    expect_status(&r, 201);
    http_response_free(&r);
    topup_raw(&r, &u, key, "{\"amount\":2000}");
    expect_error(&r, 409, "idempotency_key_reused");
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 1000);
}

/* The Idempotency-Key header is required: missing, empty, with a space or
 * over 255 characters is 400 idempotency_key_required; 255 is fine. */
static void test_topup_requires_idempotency_key(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-nokey");
    http_response_t r;
    topup_raw(&r, &u, NULL, "{\"amount\":100}");
    expect_error(&r, 400, "idempotency_key_required");
    http_response_free(&r);
    char long_key[300];
    memset(long_key, 'k', 256);
    long_key[256] = '\0';
    const char *bad[] = {"", "has space", long_key};
    for (size_t i = 0; i < 3; i++) {
        topup_raw(&r, &u, bad[i], "{\"amount\":100}");
        expect_error(&r, 400, "idempotency_key_required");
        http_response_free(&r);
    }
    assert_int_equal(wallet_balance(&u), 0);
    long_key[255] = '\0';
    long_key[0] = (char)('a' + (g.counter % 26));
    topup_raw(&r, &u, long_key, "{\"amount\":100}");
    expect_status(&r, 201);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 100);
}

/* Amounts 0, -5, null, 10000001 (invalid_amount) and 1.5, "100", true,
 * 1e3 (not an integer) are 400 and credit nothing; 10000000 is fine. */
static void test_topup_rejects_bad_amounts(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-amount");
    static const char *const out_of_range[] = {"{\"amount\":0}", "{\"amount\":-5}",
                                               "{\"amount\":null}", "{}", "{\"amount\":10000001}"};
    static const char *const not_integer[] = {"{\"amount\":1.5}", "{\"amount\":\"100\"}",
                                              "{\"amount\":true}", "{\"amount\":1e3}",
                                              "{\"amount\":100.0}"};
    http_response_t r;
    char key[64];
    for (size_t i = 0; i < sizeof out_of_range / sizeof out_of_range[0]; i++) {
        unique(key, sizeof key, "key");
        topup_raw(&r, &u, key, out_of_range[i]);
        if (r.status != 400)
            fail_msg("%s: HTTP %d: %s", out_of_range[i], r.status, r.body);
        expect_error(&r, 400, "invalid_amount");
        http_response_free(&r);
    }
    for (size_t i = 0; i < sizeof not_integer / sizeof not_integer[0]; i++) {
        unique(key, sizeof key, "key");
        topup_raw(&r, &u, key, not_integer[i]);
        if (r.status != 400)
            fail_msg("%s: HTTP %d: %s", not_integer[i], r.status, r.body);
        json_t *error = expect_error(&r, 400, "invalid_argument");
        assert_string_equal(json_text(error, "field"), "amount");
        http_response_free(&r);
    }
    assert_int_equal(wallet_balance(&u), 0);
    assert_int_equal(topup_ok(&u, topup_amount_max), topup_amount_max);
}

/* Fields the caller may not set (user_id, balance, currency, id, and
 * idempotency_key, which only the header carries) are 400 naming the
 * field, and credit nothing. */
static void test_topup_rejects_unknown_fields(void **state)
{
    (void)state;
    user_t u, victim;
    user_new(&u, "ugw-mass");
    user_new(&victim, "ugw-victim");
    char bodies[5][160];
    snprintf(bodies[0], sizeof bodies[0], "{\"amount\":100,\"user_id\":\"%s\"}", victim.id);
    snprintf(bodies[1], sizeof bodies[1], "{\"amount\":100,\"balance\":99999999}");
    snprintf(bodies[2], sizeof bodies[2], "{\"amount\":100,\"currency\":\"USD\"}");
    snprintf(bodies[3], sizeof bodies[3], "{\"amount\":100,\"id\":\"top_mine\"}");
    snprintf(bodies[4], sizeof bodies[4], "{\"amount\":100,\"idempotency_key\":\"k\"}");
    static const char *const fields[] = {"user_id", "balance", "currency", "id", "idempotency_key"};
    http_response_t r;
    char key[64];
    for (size_t i = 0; i < 5; i++) {
        unique(key, sizeof key, "key");
        topup_raw(&r, &u, key, bodies[i]);
        json_t *error = expect_error(&r, 400, "invalid_argument");
        assert_string_equal(json_text(error, "field"), fields[i]);
        assert_non_null(strstr(json_text(error, "message"), fields[i]));
        http_response_free(&r);
    }
    /* nor through the query string */
    char path[160];
    snprintf(path, sizeof path, "/v1/wallet?user_id=%s", victim.id);
    call(&r, "GET", path, u.token, NULL, NULL);
    assert_string_equal(json_text(expect_error(&r, 400, "invalid_argument"), "field"), "user_id");
    http_response_free(&r);
    unique(key, sizeof key, "key");
    char header[96];
    snprintf(header, sizeof header, "Idempotency-Key: %s", key);
    call(&r, "POST", "/v1/wallet/topups?amount=5000", u.token, "{\"amount\":100}",
         (const char *[]){header, NULL});
    assert_string_equal(json_text(expect_error(&r, 400, "invalid_argument"), "field"), "amount");
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 0);
    assert_int_equal(wallet_balance(&victim), 0);
}

/* Bodies that are not one JSON object are 400 invalid_json, a wrong
 * Content-Type is 415, a body over the limit 413; a body of exactly the
 * limit and "application/json; charset=utf-8" are accepted. */
static void test_topup_rejects_bad_bodies(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-body");
    static const char *const not_json[] = {"{amount: 100}", "[{\"amount\":100}]", "\"100\"",
                                           "{\"amount\":100,\"amount\":200}", "{\"amount\":100"};
    http_response_t r;
    char key[64];
    for (size_t i = 0; i < sizeof not_json / sizeof not_json[0]; i++) {
        unique(key, sizeof key, "key");
        topup_raw(&r, &u, key, not_json[i]);
        expect_error(&r, 400, "invalid_json");
        http_response_free(&r);
    }

    char auth[TOKEN_BYTES_MAX + 32], key_header[96];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", u.token);
    static const char *const types[] = {"Content-Type: text/plain",
                                        "Content-Type: application/jsonx",
                                        "Content-Type: application/x-www-form-urlencoded", NULL};
    for (size_t i = 0; i < 4; i++) { /* the last: no Content-Type at all */
        unique(key, sizeof key, "key");
        snprintf(key_header, sizeof key_header, "Idempotency-Key: %s", key);
        const char *headers[] = {auth, key_header, types[i], NULL};
        if (!http_request(&r, g.http_port, "POST", "/v1/wallet/topups", headers,
                          "{\"amount\":100}"))
            fail_msg("%s", r.error);
        expect_error(&r, 415, "unsupported_media_type");
        http_response_free(&r);
    }

    char *big = malloc(body_bytes_max + 2);
    assert_non_null(big);
    memset(big, ' ', body_bytes_max + 1);
    memcpy(big, "{\"amount\":100}", 14);
    big[body_bytes_max + 1] = '\0'; /* one byte over */
    unique(key, sizeof key, "key");
    topup_raw(&r, &u, key, big);
    expect_error(&r, 413, "body_too_large");
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 0);

    big[body_bytes_max] = '\0'; /* exactly the limit: valid JSON padded with spaces */
    topup_raw(&r, &u, key, big);
    expect_status(&r, 201);
    http_response_free(&r);
    free(big);

    unique(key, sizeof key, "key");
    snprintf(key_header, sizeof key_header, "Idempotency-Key: %s", key);
    const char *headers[] = {auth, key_header, "Content-Type: application/json; charset=utf-8",
                             NULL};
    assert_true(
        http_request(&r, g.http_port, "POST", "/v1/wallet/topups", headers, "{\"amount\":1}"));
    expect_status(&r, 201);
    http_response_free(&r);
    assert_int_equal(wallet_balance(&u), 101);

    /* GET /v1/wallet takes no body */
    call(&r, "GET", "/v1/wallet", u.token, "{\"user_id\":\"x\"}", NULL);
    expect_error(&r, 400, "invalid_argument");
    http_response_free(&r);
}

typedef struct {
    const user_t *user;
    char key[64];
    int64_t amount;
    int status;
    int64_t balance;
    char id[64]; /* the top-up's id */
    char error[256];
} topup_job_t;

static void *topup_thread(void *arg)
{
    topup_job_t *job = arg;
    char auth[TOKEN_BYTES_MAX + 32], key_header[96], body[64];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", job->user->token);
    snprintf(key_header, sizeof key_header, "Idempotency-Key: %s", job->key);
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", job->amount);
    const char *headers[] = {auth, key_header, "Content-Type: application/json", NULL};
    http_response_t r;
    if (!http_request(&r, g.http_port, "POST", "/v1/wallet/topups", headers, body)) {
        snprintf(job->error, sizeof job->error, "%s", r.error);
        return NULL;
    }
    job->status = r.status;
    json_t *balance = json_object_get(r.json, "balance");
    job->balance = json_is_integer(balance) ? (int64_t)json_integer_value(balance) : -1;
    const char *id = json_string_value(json_object_get(r.json, "id"));
    snprintf(job->id, sizeof job->id, "%s", id ? id : "");
    if (r.status != 201)
        snprintf(job->error, sizeof job->error, "%s", r.body ? r.body : "");
    http_response_free(&r);
    return NULL;
}

/* 50 concurrent top-ups with distinct keys for one wallet are all 201,
 * each sees its own balance, and the final balance is exactly the sum
 * (and equals the sum of its ledger). */
static void test_concurrent_topups_add_up(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-concurrent");
    static topup_job_t jobs[concurrent_topups];
    pthread_t threads[concurrent_topups];
    int64_t total = 0;
    for (int i = 0; i < concurrent_topups; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].user = &u;
        jobs[i].amount = 100 + i;
        total += jobs[i].amount;
        unique(jobs[i].key, sizeof jobs[i].key, "ckey");
    }
    for (int i = 0; i < concurrent_topups; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, topup_thread, &jobs[i]), 0);
    for (int i = 0; i < concurrent_topups; i++)
        pthread_join(threads[i], NULL);
    int64_t highest = 0;
    for (int i = 0; i < concurrent_topups; i++) {
        if (jobs[i].status != 201)
            fail_msg("top-up %d: HTTP %d: %s", i, jobs[i].status, jobs[i].error);
        assert_true(jobs[i].balance >= jobs[i].amount && jobs[i].balance <= total);
        for (int j = 0; j < i; j++) /* each top-up saw a distinct balance */
            assert_true(jobs[j].balance != jobs[i].balance);
        if (jobs[i].balance > highest)
            highest = jobs[i].balance;
    }
    assert_int_equal(highest, total);
    assert_int_equal(wallet_balance(&u), total);
    PGconn *db = db_connect();
    assert_int_equal(db_wallet_check(db, u.id), total);
    PQfinish(db);
}

/* 10 concurrent top-ups with the SAME key are all 201 with one identical
 * body, and the wallet is credited exactly once. */
static void test_concurrent_same_key_credits_once(void **state)
{
    (void)state;
    enum { racers = 10 };
    user_t u;
    user_new(&u, "ugw-samekey");
    static topup_job_t jobs[racers];
    pthread_t threads[racers];
    char key[64];
    unique(key, sizeof key, "samekey");
    for (int i = 0; i < racers; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].user = &u;
        jobs[i].amount = 4321;
        snprintf(jobs[i].key, sizeof jobs[i].key, "%s", key);
    }
    for (int i = 0; i < racers; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, topup_thread, &jobs[i]), 0);
    for (int i = 0; i < racers; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < racers; i++) {
        if (jobs[i].status != 201)
            fail_msg("racer %d: HTTP %d: %s", i, jobs[i].status, jobs[i].error);
        assert_int_equal(jobs[i].balance, 4321);
        assert_string_equal(jobs[i].id, jobs[0].id);
    }
    assert_int_equal(wallet_balance(&u), 4321);
    PGconn *db = db_connect();
    assert_int_equal(db_wallet_check(db, u.id), 4321);
    PQfinish(db);
}

/* ---- tests: internal Debit / Credit over RPC ---------------------------- */

/* Calls user.'method' (Debit or Credit) as 'principal'. On OK, '*reply'
 * is the movement (free with protobuf_c_message_free_unpacked). */
static Paygate__V1__Code move(const char *method, const char *principal, const char *user_id,
                              int64_t amount, const char *reference,
                              Paygate__V1__WalletMovement **reply, rpc_status_t *status)
{
    Paygate__V1__WalletMovementRequest request = PAYGATE__V1__WALLET_MOVEMENT_REQUEST__INIT;
    request.user_id = (char *)user_id;
    request.amount = amount;
    request.reference = (char *)reference;
    rpc_call_opts_t opts = {.deadline_ms = 10000, .principal = principal};
    ProtobufCMessage *msg = NULL;
    Paygate__V1__Code code =
        rpc_client_call(g.rpc, "user", method, &request.base,
                        &paygate__v1__wallet_movement__descriptor, &msg, &opts, status);
    if (reply != NULL)
        *reply = (Paygate__V1__WalletMovement *)msg;
    else if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    return code;
}

/* Fails unless 'method' of 'amount' with 'reference' answers 'code' and
 * 'reason'. */
static void expect_move_fails(const char *method, const char *principal, const char *user_id,
                              int64_t amount, const char *reference, Paygate__V1__Code code,
                              const char *reason)
{
    rpc_status_t status;
    Paygate__V1__Code got = move(method, principal, user_id, amount, reference, NULL, &status);
    if (got != code || strcmp(status.reason, reason) != 0)
        fail_msg("%s %" PRId64 " (%s): %d/%s (%s), expected %d/%s", method, amount, reference,
                 (int)got, status.reason, status.message, (int)code, reason);
}

/* Debit refuses an overdraft (insufficient_funds, nothing changed, the
 * reference still usable); a repeated reference changes nothing and says
 * replayed; the same reference with another amount is reference_reused;
 * the gateway's principal is refused; an unknown wallet is not found. */
static void test_debit_credit_rules(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-debit");
    assert_int_equal(topup_ok(&u, 1000), 1000);
    char ref[64], ref_short[64];
    unique(ref, sizeof ref, "pay");
    unique(ref_short, sizeof ref_short, "pay");

    rpc_status_t status;
    assert_int_equal(move("Debit", "payment", u.id, 5000, ref_short, NULL, &status),
                     PAYGATE__V1__CODE__FAILED_PRECONDITION);
    assert_string_equal(status.reason, "insufficient_funds");
    assert_non_null(rpc_status_detail(&status, "balance"));
    assert_string_equal(rpc_status_detail(&status, "balance"), "1000");
    assert_int_equal(wallet_balance(&u), 1000);

    Paygate__V1__WalletMovement *first = NULL, *again = NULL;
    assert_int_equal(move("Debit", "payment", u.id, 250, ref, &first, &status),
                     PAYGATE__V1__CODE__OK);
    assert_false(first->replayed);
    assert_string_equal(first->kind, "DEBIT");
    assert_int_equal(first->amount, 250);
    assert_int_equal(first->balance_after, 750);
    assert_string_equal(first->reference, ref);
    assert_string_equal(first->user_id, u.id);
    assert_true(first->ledger_id > 0);
    expect_recent_utc_time(first->created_at);

    assert_int_equal(move("Debit", "payment", u.id, 250, ref, &again, &status),
                     PAYGATE__V1__CODE__OK);
    assert_true(again->replayed);
    assert_int_equal(again->ledger_id, first->ledger_id);
    assert_int_equal(again->balance_after, 750);
    assert_string_equal(again->created_at, first->created_at);
    protobuf_c_message_free_unpacked(&again->base, NULL);
    protobuf_c_message_free_unpacked(&first->base, NULL);
    assert_int_equal(wallet_balance(&u), 750);

    expect_move_fails("Debit", "payment", u.id, 300, ref, PAYGATE__V1__CODE__ALREADY_EXISTS,
                      "reference_reused");
    assert_int_equal(wallet_balance(&u), 750);

    /* the refused overdraft left no trace: its reference works now */
    assert_int_equal(move("Debit", "payment", u.id, 50, ref_short, NULL, &status),
                     PAYGATE__V1__CODE__OK);
    assert_int_equal(wallet_balance(&u), 700);

    /* a credit (a refund) may carry the payment's reference; once */
    Paygate__V1__WalletMovement *credit = NULL;
    assert_int_equal(move("Credit", "payment", u.id, 250, ref, &credit, &status),
                     PAYGATE__V1__CODE__OK);
    assert_string_equal(credit->kind, "CREDIT");
    assert_false(credit->replayed);
    assert_int_equal(credit->balance_after, 950);
    protobuf_c_message_free_unpacked(&credit->base, NULL);
    assert_int_equal(move("Credit", "payment", u.id, 250, ref, &credit, &status),
                     PAYGATE__V1__CODE__OK);
    assert_true(credit->replayed);
    protobuf_c_message_free_unpacked(&credit->base, NULL);
    expect_move_fails("Credit", "payment", u.id, 999, ref, PAYGATE__V1__CODE__ALREADY_EXISTS,
                      "reference_reused");
    assert_int_equal(wallet_balance(&u), 950);

    /* the gateway may never move money */
    char ref_gw[64];
    unique(ref_gw, sizeof ref_gw, "pay");
    expect_move_fails("Debit", "gateway", u.id, 10, ref_gw, PAYGATE__V1__CODE__PERMISSION_DENIED,
                      "internal_only");
    expect_move_fails("Credit", "gateway", u.id, 10, ref_gw, PAYGATE__V1__CODE__PERMISSION_DENIED,
                      "internal_only");
    assert_int_equal(wallet_balance(&u), 950);

    /* invalid input and unknown wallets */
    expect_move_fails("Debit", "payment", u.id, 0, ref_gw, PAYGATE__V1__CODE__INVALID_ARGUMENT,
                      "invalid_amount");
    expect_move_fails("Debit", "payment", u.id, -10, ref_gw, PAYGATE__V1__CODE__INVALID_ARGUMENT,
                      "invalid_amount");
    expect_move_fails("Debit", "payment", u.id, 10, "", PAYGATE__V1__CODE__INVALID_ARGUMENT,
                      "invalid_reference");
    expect_move_fails("Debit", "payment", "usr_doesnotexist", 10, ref_gw,
                      PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found");
    expect_move_fails("Credit", "payment", "usr_doesnotexist", 10, ref_gw,
                      PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found");
    assert_int_equal(wallet_balance(&u), 950);
    PGconn *db = db_connect();
    assert_int_equal(db_wallet_check(db, u.id), 950);
    PQfinish(db);
}

/* 20 concurrent debits of 300 against 1000: exactly 3 succeed, the rest
 * are insufficient_funds, the balance ends at 100 and is never negative. */
static void test_concurrent_debits_never_overdraw(void **state)
{
    (void)state;
    user_t u;
    user_new(&u, "ugw-race");
    assert_int_equal(topup_ok(&u, 1000), 1000);
    uint64_t ids[concurrent_debits];
    for (int i = 0; i < concurrent_debits; i++) {
        Paygate__V1__WalletMovementRequest request = PAYGATE__V1__WALLET_MOVEMENT_REQUEST__INIT;
        char ref[64];
        unique(ref, sizeof ref, "race");
        request.user_id = u.id;
        request.amount = 300;
        request.reference = ref;
        uint8_t packed[256];
        assert_true(paygate__v1__wallet_movement_request__get_packed_size(&request) <
                    sizeof packed);
        size_t len = paygate__v1__wallet_movement_request__pack(&request, packed);
        rpc_call_opts_t opts = {.deadline_ms = 20000, .principal = "payment"};
        rpc_status_t status;
        assert_int_equal(
            rpc_client_send(g.rpc, "user", "Debit", packed, len, &opts, &ids[i], &status), 0);
    }
    int ok = 0, short_of_funds = 0;
    bool seen[3] = {false, false, false}; /* balance_after 700, 400, 100 */
    for (int i = 0; i < concurrent_debits; i++) {
        uint64_t id = 0;
        rpc_status_t status;
        zmq_msg_t body;
        zmq_msg_init(&body);
        assert_int_equal(rpc_client_recv(g.rpc, 30000, &id, &body, &status), 1);
        bool ours = false;
        for (int j = 0; j < concurrent_debits; j++)
            ours |= ids[j] == id;
        assert_true(ours);
        if (status.code == PAYGATE__V1__CODE__OK) {
            Paygate__V1__WalletMovement *m = paygate__v1__wallet_movement__unpack(
                NULL, zmq_msg_size(&body), zmq_msg_data(&body));
            assert_non_null(m);
            assert_false(m->replayed);
            assert_true(m->balance_after >= 0);
            assert_true(m->balance_after == 700 || m->balance_after == 400 ||
                        m->balance_after == 100);
            int slot = m->balance_after == 700 ? 0 : m->balance_after == 400 ? 1 : 2;
            assert_false(seen[slot]);
            seen[slot] = true;
            paygate__v1__wallet_movement__free_unpacked(m, NULL);
            ok++;
        } else if (status.code == PAYGATE__V1__CODE__FAILED_PRECONDITION &&
                   strcmp(status.reason, "insufficient_funds") == 0) {
            short_of_funds++;
        } else {
            fail_msg("debit answered %d/%s: %s", (int)status.code, status.reason, status.message);
        }
        zmq_msg_close(&body);
    }
    assert_int_equal(ok, 3);
    assert_int_equal(short_of_funds, concurrent_debits - 3);
    assert_int_equal(wallet_balance(&u), 100);
    PGconn *db = db_connect();
    assert_int_equal(db_wallet_check(db, u.id), 100);
    PQfinish(db);
}

/* ---- tests: PostgreSQL restarted under the services ---------------------- */

/* Brings PostgreSQL back if the restart test failed half-way. */
static int restart_teardown(void **state)
{
    (void)state;
    pg_ensure_running();
    return 0;
}

/* With PostgreSQL stopped, requests answer 503 promptly (no hang) and
 * change nothing; once it is back, the same processes serve again at once
 * and a top-up retried with its key is credited exactly once. */
static void test_postgres_restart(void **state)
{
    (void)state;
    env_required("PAYGATE_PG_BIN");
    env_required("PAYGATE_TEST_PG_DATA");
    env_required("PAYGATE_TEST_PG_LOG");
    user_t u;
    user_new(&u, "ugw-restart");
    assert_int_equal(topup_ok(&u, 700), 700);
    assert_true(pg_running());
    pid_t user_pid = g.user->pid, gateway_pid = g.gateway->pid;

    assert_true(pg_stop());
    http_response_t r;
    for (int i = 0; i < 4; i++) { /* both user instances get a turn */
        call(&r, "GET", "/v1/wallet", u.token, NULL, NULL);
        if (r.status != 503)
            fail_msg("wallet with PostgreSQL down: HTTP %d: %s", r.status, r.body);
        json_t *error = json_object_get(r.json, "error");
        const char *code = json_string_value(json_object_get(error, "code"));
        assert_non_null(code);
        if (strcmp(code, "database_unavailable") != 0 && strcmp(code, "service_unavailable") != 0)
            fail_msg("503 with code %s", code);
        expect_error(&r, 503, code);
        assert_non_null(http_header(&r, "Retry-After"));
        if (r.elapsed_ms > unavailable_answer_ms_max)
            fail_msg("503 took %ld ms (at most %d)", r.elapsed_ms, unavailable_answer_ms_max);
        http_response_free(&r);
    }
    char key[64], body[64];
    unique(key, sizeof key, "key");
    snprintf(body, sizeof body, "{\"amount\":300}");
    topup_raw(&r, &u, key, body);
    assert_int_equal(r.status, 503);
    assert_true(r.elapsed_ms <= unavailable_answer_ms_max);
    http_response_free(&r);
    login_raw(&r, u.email, password);
    assert_int_equal(r.status, 503);
    http_response_free(&r);
    char local[96], email[128];
    unique(local, sizeof local, "ugw-down");
    snprintf(email, sizeof email, "%s@example.com", local);
    register_raw(&r, email, password, "Down");
    assert_int_equal(r.status, 503);
    http_response_free(&r);
    call(&r, "GET", "/healthz", NULL, NULL, NULL);
    expect_status(&r, 200);
    http_response_free(&r);

    assert_true(pg_start());
    for (int i = 0; i < 10; i++) { /* every instance, from the first request on */
        call(&r, "GET", "/v1/wallet", u.token, NULL, NULL);
        if (r.status != 200)
            fail_msg("request %d after the restart: HTTP %d: %s", i, r.status, r.body);
        assert_int_equal(json_number(r.json, "balance"), 700);
        http_response_free(&r);
    }
    for (int i = 0; i < 2; i++) { /* the retried top-up: once */
        topup_raw(&r, &u, key, body);
        expect_status(&r, 201);
        assert_int_equal(json_number(r.json, "balance"), 1000);
        http_response_free(&r);
    }
    assert_int_equal(wallet_balance(&u), 1000);
    login_raw(&r, u.email, password);
    expect_status(&r, 200);
    http_response_free(&r);
    register_raw(&r, email, password, "Down");
    expect_status(&r, 201);
    wallet_touched(json_text(r.json, "id"));
    http_response_free(&r);
    expect_running(g.user);
    expect_running(g.gateway);
    assert_int_equal(g.user->pid, user_pid);
    assert_int_equal(g.gateway->pid, gateway_pid);
}

/* ---- tests: the end ------------------------------------------------------- */

/* For every wallet the tests touched, balance == SUM(ledger.amount), the
 * latest ledger row agrees and none is negative. */
static void test_every_wallet_matches_its_ledger(void **state)
{
    (void)state;
    assert_true(g.wallet_count > 10);
    PGconn *db = db_connect();
    for (size_t i = 0; i < g.wallet_count; i++)
        db_wallet_check(db, g.wallets[i]);
    PQfinish(db);
}

/* The processes survived everything, stop cleanly on SIGTERM (exit 0:
 * under the sanitizers that also means no leak or memory error), and
 * their logs hold no password, secret or token. */
static void test_processes_survived_and_logs_clean(void **state)
{
    (void)state;
    expect_running(g.broker);
    expect_running(g.user);
    expect_running(g.gateway);
    /* the logs are the right ones: the user service logged our accounts */
    assert_true(g.wallet_count > 0);
    assert_true(file_count(g.user->log_path, g.wallets[0]) > 0);

    bool gateway_clean = proc_stop(g.gateway, 15000);
    int gateway_status = g.gateway->exit_status;
    bool user_clean = proc_stop(g.user, 15000);
    int user_status = g.user->exit_status;

    const proc_t *procs[] = {g.broker, g.user, g.gateway};
    const char *secrets[] = {password, wrong_password, jwt_secret, g.a_token};
    for (size_t p = 0; p < 3; p++) {
        for (size_t s = 0; s < 4; s++) {
            if (secrets[s][0] == '\0')
                fail_msg("secret %zu is empty: test_login_issues_token did not run?", s);
            long count = file_count(procs[p]->log_path, secrets[s]);
            assert_true(count >= 0);
            if (count != 0)
                fail_msg("%s holds secret #%zu %ld times", procs[p]->log_path, s, count);
        }
    }
    if (!gateway_clean)
        fail_msg("the gateway did not exit 0 on SIGTERM (wait status 0x%x); see %s",
                 (unsigned)gateway_status, g.gateway->log_path);
    if (!user_clean)
        fail_msg("the user service did not exit 0 on SIGTERM (wait status 0x%x); see %s",
                 (unsigned)user_status, g.user->log_path);
}

int main(void)
{
    const char *dsn = getenv("PAYGATE_TEST_PG_DSN");
    if (dsn == NULL || dsn[0] == '\0') {
        fprintf(stderr, "test_user_gateway: FAIL: PAYGATE_TEST_PG_DSN is not set. This test "
                        "needs the test PostgreSQL: run it with ./dev test -R user_gateway.\n");
        return 1;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "test_user_gateway: FAIL: libsodium did not initialise\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probes),
        cmocka_unit_test(test_request_id_echoed_or_generated),
        cmocka_unit_test(test_unknown_route_and_wrong_method),
        cmocka_unit_test(test_malformed_http_refused),
        cmocka_unit_test(test_register_creates_account),
        cmocka_unit_test(test_register_duplicate_email),
        cmocka_unit_test(test_register_validation),
        cmocka_unit_test(test_login_issues_token),
        cmocka_unit_test(test_login_failures_indistinguishable),
        cmocka_unit_test(test_wallet_starts_empty),
        cmocka_unit_test(test_wallet_rejects_bad_tokens),
        cmocka_unit_test(test_topup_idempotent),
        cmocka_unit_test(test_topup_key_reused_other_amount),
        cmocka_unit_test(test_topup_requires_idempotency_key),
        cmocka_unit_test(test_topup_rejects_bad_amounts),
        cmocka_unit_test(test_topup_rejects_unknown_fields),
        cmocka_unit_test(test_topup_rejects_bad_bodies),
        cmocka_unit_test(test_concurrent_topups_add_up),
        cmocka_unit_test(test_concurrent_same_key_credits_once),
        cmocka_unit_test(test_debit_credit_rules),
        cmocka_unit_test(test_concurrent_debits_never_overdraw),
        cmocka_unit_test_teardown(test_postgres_restart, restart_teardown),
        cmocka_unit_test(test_every_wallet_matches_its_ledger),
        cmocka_unit_test(test_processes_survived_and_logs_clean),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
