/*
 * The gateway's route callers (gateway-http/gateway.c, routes marked
 * 'gather': GET /v1/wallet -> user.GetWallet, GET /v1/orders/{id} ->
 * order.Get), with the real system as processes: broker, user and order
 * services (2 worker threads each), the gateway, a scratch database on the
 * test PostgreSQL (PAYGATE_TEST_PG_DSN; without it the test FAILS, it is
 * never skipped) and the test Redis.
 *
 * A gathered request's connection is suspended while the route's caller
 * makes its call, alone or in a batch with others, and is resumed to
 * answer from the stored result. The tests check what a client must see:
 *   - many users at once each get their own wallet and order, and 404 for
 *     another's order; the user service counts exactly one GetWallet per
 *     request (paygate_rpc_handled_total, batched or not);
 *   - errors come through the caller as the single call's would: a
 *     wallet deleted in SQL is 404 wallet_not_found, the user service
 *     stopped is 503 with Retry-After while other routes (the order
 *     route's own caller among them) keep answering, and reads work again
 *     once it is back;
 *   - a gateway that cannot listen exits (its callers must not keep it
 *     from stopping);
 *   - SIGTERM with gathered reads in flight: the gateway exits 0 with no
 *     sanitizer report, and every request got a complete answer or a
 *     refused or closed connection, within the client's timeout.
 * Whether calls were really batched is printed (not asserted: it depends
 * on timing) from the broker's paygate_broker_requests_routed_total, which
 * counts request messages, a batch being one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "http_client.h"
#include "metrics_scrape.h"
#include "proc.h"
#include "rpc/rpc.h"
#include "system.h"

static const char jwt_secret[] = "gwcall-test-secret-0123456789abcdefghijklmnopq";
static const char password[] = "Gwcall-Passw0rd-58c1e2";

enum {
    ready_timeout_ms = 60000,
    users_count = 24,                /* accounts of the concurrency test, one thread each */
    rounds_per_thread = 50,          /* each: wallet, own order, another's order */
    error_users_count = 4,           /* threads reading a deleted wallet, as many normal ones */
    error_rounds = 10,               /* requests per thread of the error mix */
    restart_timeout_ms = 30000,      /* the user service back and answering */
    queued_count = 320,              /* gathered reads queued at once: six batches' worth */
    inflight_count = 96,             /* gathered reads in flight at SIGTERM (two batches) */
    inflight_head_start_ms = 500,    /* for them to reach the gateway */
    gateway_exit_timeout_ms = 20000, /* SIGTERM to exit: deadline 5 s + drain, with margin */
    busy_exit_timeout_ms = 15000,    /* a gateway that cannot listen: start to exit */
    id_bytes = 64,
    failure_bytes = 1024,
};

typedef struct {
    char id[id_bytes];
    char email[128];
    char token[2048];
    char order[id_bytes];
    int64_t balance;
    int64_t order_amount;
} user_t;

static struct {
    system_t *system;
    int port;
    rpc_client_t *rpc;
    unsigned counter;
    user_t users[users_count];
} g;

/* ---- HTTP ------------------------------------------------------------------ */

static int call(http_response_t *r, const char *method, const char *path, const user_t *u,
                const char *key, const char *body)
{
    if (!http_api_request(r, g.port, method, path, u ? u->token : NULL, key, body, NULL))
        fail_msg("%s %s: %s", method, path, r->error);
    return r->status;
}

static const char *text_of(const http_response_t *r, const char *key)
{
    const char *value = r->json ? json_string_value(json_object_get(r->json, key)) : NULL;
    if (value == NULL)
        fail_msg("no string \"%s\" in %s", key, r->body ? r->body : "(no body)");
    return value;
}

static void unique(char *out, size_t size, const char *what)
{
    snprintf(out, size, "%s-%d-%u", what, (int)getpid(), ++g.counter);
}

static void user_new(user_t *u, const char *tag)
{
    memset(u, 0, sizeof *u);
    char local[96], body[512];
    unique(local, sizeof local, tag);
    snprintf(u->email, sizeof u->email, "%s@gwcall.example", local);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\",\"name\":\"%s\"}", u->email,
             password, tag);
    http_response_t r;
    if (call(&r, "POST", "/v1/users", NULL, NULL, body) != 201)
        fail_msg("register: HTTP %d: %s", r.status, r.body);
    snprintf(u->id, sizeof u->id, "%s", text_of(&r, "id"));
    http_response_free(&r);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", u->email, password);
    if (call(&r, "POST", "/v1/auth/login", NULL, NULL, body) != 200)
        fail_msg("login: HTTP %d: %s", r.status, r.body);
    snprintf(u->token, sizeof u->token, "%s", text_of(&r, "access_token"));
    http_response_free(&r);
}

static void top_up(user_t *u, int64_t amount)
{
    char key[64], body[64];
    unique(key, sizeof key, "top");
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    if (call(&r, "POST", "/v1/wallet/topups", u, key, body) != 201)
        fail_msg("top-up: HTTP %d: %s", r.status, r.body);
    http_response_free(&r);
    u->balance += amount;
}

static void order_new(user_t *u, int64_t amount)
{
    char body[64];
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    if (call(&r, "POST", "/v1/orders", u, NULL, body) != 201)
        fail_msg("order: HTTP %d: %s", r.status, r.body);
    snprintf(u->order, sizeof u->order, "%s", text_of(&r, "id"));
    http_response_free(&r);
    u->order_amount = amount;
}

/* NULL when 'r' is the error 'status'/'code' with a JSON body whose
 * error.request_id is the X-Request-Id header, else why not (static). */
static const char *error_mismatch(const http_response_t *r, int status, const char *code)
{
    static __thread char why[failure_bytes];
    const char *request_id = http_header(r, "X-Request-Id");
    json_t *error = r->json ? json_object_get(r->json, "error") : NULL;
    const char *got = json_string_value(json_object_get(error, "code"));
    const char *body_id = json_string_value(json_object_get(error, "request_id"));
    if (r->status != status || got == NULL || (code != NULL && strcmp(got, code) != 0) ||
        request_id == NULL || request_id[0] == '\0' || body_id == NULL ||
        strcmp(body_id, request_id) != 0) {
        snprintf(why, sizeof why, "HTTP %d (want %d %s), X-Request-Id %s: %.300s", r->status,
                 status, code ? code : "", request_id ? request_id : "none",
                 r->body ? r->body : "(no body)");
        return why;
    }
    return NULL;
}

/* ---- metrics ----------------------------------------------------------------- */

/* GET /metrics of 'which' (the user service's own listener): the text,
 * malloc'd, starting with a newline. */
static char *scrape(system_process_t which)
{
    int port = system_metrics_port(g.system, which);
    assert_true(port > 0);
    return metrics_scrape(port, system_process_name(which));
}

/* The sample 'key' (name{labels} as rendered) of 'text'; 0 when absent. */
static double sample(const char *text, const char *key)
{
    return metrics_sample(text, key, NULL);
}

static const char handled_ok[] =
    "paygate_rpc_handled_total{service=\"user\",method=\"GetWallet\",code=\"OK\"}";
static const char handled_not_found[] =
    "paygate_rpc_handled_total{service=\"user\",method=\"GetWallet\",code=\"NOT_FOUND\"}";
static const char routed[] = "paygate_broker_requests_routed_total";

/* ---- set-up ------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    /* the queued-reads test opens queued_count connections from 127.0.0.1 */
    static const char *const gateway_env[] = {"PAYGATE_GATEWAY_CONNECTIONS_PER_ADDRESS_MAX=1024",
                                              NULL}; /* static: the system keeps it */
    system_config_t config = {
        .name = "gwcall",
        .processes =
            SYSTEM_ONLY(system_user) | SYSTEM_ONLY(system_order) | SYSTEM_ONLY(system_gateway),
        .jwt_secret = jwt_secret,
        .rate_limits_off = true,
        .metrics = true,
        .threads = {[system_user] = 2, [system_order] = 2},
        .ready_timeout_ms = ready_timeout_ms,
        .process_env = {[system_gateway] = gateway_env},
    };
    g.system = system_new(&config);
    if (g.system == NULL)
        return -1;
    g.port = system_gateway_port(g.system);
    g.rpc = rpc_client_new(NULL, system_broker_endpoint(g.system));
    return g.rpc != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    rpc_client_destroy(&g.rpc);
    bool clean = system_stop(g.system);
    system_destroy(&g.system);
    return clean ? 0 : -1;
}

/* ---- 1. isolation under concurrency ------------------------------------------ */

typedef struct {
    size_t index;     /* g.users[index] calls */
    unsigned wallets; /* GET /v1/wallet answered */
    unsigned requests;
    char failure[failure_bytes]; /* the first wrong answer, or "" */
} reader_t;

static void reader_fail(reader_t *self, const char *what, const http_response_t *r)
{
    if (self->failure[0] == '\0')
        snprintf(self->failure, sizeof self->failure, "user %zu: %.300s: HTTP %d %.200s: %.300s",
                 self->index, what, r->status, r->error, r->body ? r->body : "(no body)");
}

static void *reader_main(void *arg)
{
    reader_t *self = arg;
    const user_t *u = &g.users[self->index];
    const user_t *other = &g.users[(self->index + 1) % users_count];
    char own_path[128], other_path[128];
    snprintf(own_path, sizeof own_path, "/v1/orders/%s", u->order);
    snprintf(other_path, sizeof other_path, "/v1/orders/%s", other->order);
    for (int round = 0; round < rounds_per_thread; round++) {
        http_response_t r;
        bool sent = http_api_request(&r, g.port, "GET", "/v1/wallet", u->token, NULL, NULL, NULL);
        self->requests++;
        if (!sent || r.status != 200 || r.json == NULL) {
            reader_fail(self, "GET /v1/wallet", &r);
        } else {
            const char *id = json_string_value(json_object_get(r.json, "user_id"));
            json_t *balance = json_object_get(r.json, "balance");
            if (id == NULL || strcmp(id, u->id) != 0 || !json_is_integer(balance) ||
                json_integer_value(balance) != u->balance)
                reader_fail(self, "GET /v1/wallet answered another wallet", &r);
            self->wallets++;
        }
        http_response_free(&r);

        sent = http_api_request(&r, g.port, "GET", own_path, u->token, NULL, NULL, NULL);
        self->requests++;
        if (!sent || r.status != 200 || r.json == NULL) {
            reader_fail(self, "GET own order", &r);
        } else {
            const char *id = json_string_value(json_object_get(r.json, "id"));
            json_t *amount = json_object_get(r.json, "amount");
            if (id == NULL || strcmp(id, u->order) != 0 || !json_is_integer(amount) ||
                json_integer_value(amount) != u->order_amount)
                reader_fail(self, "GET own order answered another order", &r);
        }
        http_response_free(&r);

        sent = http_api_request(&r, g.port, "GET", other_path, u->token, NULL, NULL, NULL);
        self->requests++;
        const char *why = sent ? error_mismatch(&r, 404, "order_not_found") : r.error;
        if (why != NULL)
            reader_fail(self, why, &r);
        http_response_free(&r);
    }
    return NULL;
}

/* 24 users with different balances and orders read at once from 24
 * threads: every answer is the caller's own, another's order is 404, and
 * the user service handled exactly one GetWallet per wallet request. */
static void test_isolation_under_concurrency(void **state)
{
    (void)state;
    for (size_t i = 0; i < users_count; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "iso%zu", i);
        user_new(&g.users[i], tag);
        top_up(&g.users[i], 1000 + 137 * (int64_t)i);
        if (i % 3 == 0)
            top_up(&g.users[i], 50000 + (int64_t)i);
        order_new(&g.users[i], 500 + 11 * (int64_t)i);
    }
    char *before = scrape(system_user);
    char *broker_before = scrape(system_broker);
    char *gateway_before = metrics_scrape(g.port, "gateway");
    reader_t readers[users_count];
    pthread_t threads[users_count];
    for (size_t i = 0; i < users_count; i++) {
        readers[i] = (reader_t){.index = i};
        assert_int_equal(pthread_create(&threads[i], NULL, reader_main, &readers[i]), 0);
    }
    unsigned wallets = 0, requests = 0;
    int failures = 0;
    for (size_t i = 0; i < users_count; i++) {
        pthread_join(threads[i], NULL);
        wallets += readers[i].wallets;
        requests += readers[i].requests;
        if (readers[i].failure[0] != '\0') {
            fprintf(stderr, "  %s\n", readers[i].failure);
            failures++;
        }
    }
    char *after = scrape(system_user);
    char *broker_after = scrape(system_broker);
    char *gateway_after = metrics_scrape(g.port, "gateway");
    double handled = sample(after, handled_ok) - sample(before, handled_ok);
    double messages = sample(broker_after, routed) - sample(broker_before, routed);
    /* the gateway's gathering metrics: every read counted once, in the
     * calls of its route's caller and in the waits */
    static const char *const gathered[][2] = {
        {"paygate_gateway_gathered_calls_sum{route=\"/v1/wallet\"}", "wallet"},
        {"paygate_gateway_gather_wait_seconds_count{route=\"/v1/wallet\"}", "wallet"},
        {"paygate_gateway_gathered_calls_sum{route=\"/v1/orders/{id}\"}", "order"},
        {"paygate_gateway_gather_wait_seconds_count{route=\"/v1/orders/{id}\"}", "order"},
    };
    double gathered_delta[4];
    for (size_t i = 0; i < 4; i++)
        gathered_delta[i] =
            sample(gateway_after, gathered[i][0]) - sample(gateway_before, gathered[i][0]);
    double made =
        sample(gateway_after, "paygate_gateway_gathered_calls_count{route=\"/v1/wallet\"}") -
        sample(gateway_before, "paygate_gateway_gathered_calls_count{route=\"/v1/wallet\"}");
    free(gateway_before);
    free(gateway_after);
    fprintf(stderr,
            "  %u requests (%u wallet reads, user GetWallet handled %.0f): the broker routed "
            "%.0f request messages (fewer than requests: some went in batches)\n",
            requests, wallets, handled, messages);
    free(before);
    free(after);
    free(broker_before);
    free(broker_after);
    if (failures > 0)
        fail_msg("%d of %d readers saw a wrong answer (above)", failures, users_count);
    assert_int_equal(requests, users_count * rounds_per_thread * 3);
    assert_int_equal(wallets, users_count * rounds_per_thread);
    if (handled != (double)wallets)
        fail_msg("the user service handled %.0f GetWallet calls for %u requests", handled, wallets);
    for (size_t i = 0; i < 4; i++) {
        double want = strcmp(gathered[i][1], "wallet") == 0 ? wallets : requests - wallets;
        if (gathered_delta[i] != want)
            fail_msg("%s moved by %.0f for %.0f reads", gathered[i][0], gathered_delta[i], want);
    }
    /* one or more reads per call the caller made */
    if (made < 1 || made > wallets)
        fail_msg("the wallet route's caller made %.0f calls for %u reads", made, wallets);
}

/* ---- 2. errors through the caller --------------------------------------------- */

typedef struct {
    const user_t *user;
    int status; /* expected */
    const char *code;
    char failure[failure_bytes];
} mix_t;

static void *mix_main(void *arg)
{
    mix_t *self = arg;
    for (int i = 0; i < error_rounds && self->failure[0] == '\0'; i++) {
        http_response_t r;
        bool sent =
            http_api_request(&r, g.port, "GET", "/v1/wallet", self->user->token, NULL, NULL, NULL);
        const char *why = NULL;
        if (!sent)
            why = r.error;
        else if (self->status != 200)
            why = error_mismatch(&r, self->status, self->code);
        else if (r.status != 200 || r.json == NULL ||
                 json_integer_value(json_object_get(r.json, "balance")) != self->user->balance)
            why = r.body ? r.body : "no body";
        if (why != NULL)
            snprintf(self->failure, sizeof self->failure, "%s: %.400s", self->user->id, why);
        http_response_free(&r);
    }
    return NULL;
}

/* Deletes the wallet row of 'user_id' in the services' database. */
static void wallet_delete(const char *user_id)
{
    PGconn *pg = PQconnectdb(system_pg_dsn(g.system));
    if (PQstatus(pg) != CONNECTION_OK)
        fail_msg("database: %s", PQerrorMessage(pg));
    const char *params[] = {user_id};
    PGresult *res = PQexecParams(pg, "DELETE FROM users.wallets WHERE user_id = $1", 1, NULL,
                                 params, NULL, NULL, 0);
    bool deleted = PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdTuples(res), "1") == 0;
    if (!deleted)
        fprintf(stderr, "  DELETE: %s\n", PQerrorMessage(pg));
    PQclear(res);
    PQfinish(pg);
    assert_true(deleted);
}

static void test_errors_through_the_caller(void **state)
{
    (void)state;
    /* A wallet gone (no top-up yet, so no ledger row refers to it). */
    user_t gone;
    user_new(&gone, "gone");
    wallet_delete(gone.id);
    http_response_t r;
    call(&r, "GET", "/v1/wallet", &gone, NULL, NULL);
    const char *why = error_mismatch(&r, 404, "wallet_not_found");
    if (why != NULL)
        fail_msg("deleted wallet: %s", why);
    http_response_free(&r);

    /* The same, mixed at once with readers of wallets that exist, so that
     * batches hold both (the batch code leaves a missing wallet to the
     * single call's code). */
    char *before = scrape(system_user);
    mix_t mixes[2 * error_users_count];
    pthread_t threads[2 * error_users_count];
    for (size_t i = 0; i < 2 * error_users_count; i++) {
        bool missing = i % 2 == 0;
        mixes[i] = (mix_t){.user = missing ? &gone : &g.users[i],
                           .status = missing ? 404 : 200,
                           .code = missing ? "wallet_not_found" : NULL};
        assert_int_equal(pthread_create(&threads[i], NULL, mix_main, &mixes[i]), 0);
    }
    int failures = 0;
    for (size_t i = 0; i < 2 * error_users_count; i++) {
        pthread_join(threads[i], NULL);
        if (mixes[i].failure[0] != '\0') {
            fprintf(stderr, "  %s\n", mixes[i].failure);
            failures++;
        }
    }
    char *after = scrape(system_user);
    double not_found = sample(after, handled_not_found) - sample(before, handled_not_found);
    free(before);
    free(after);
    if (failures > 0)
        fail_msg("%d readers of the error mix saw a wrong answer (above)", failures);
    assert_true(not_found == (double)(error_users_count * error_rounds));

    /* The user service stopped: a gathered read is 503 with Retry-After;
     * the order routes (one of them gathered by its own caller) and the
     * probes still answer. */
    proc_t *user = system_process(g.system, system_user);
    assert_true(proc_stop(user, system_stop_timeout_ms));
    assert_true(discovery_wait(g.rpc, "user", 0, 10000) >= 0);
    for (int i = 0; i < 3; i++) {
        call(&r, "GET", "/v1/wallet", &g.users[i], NULL, NULL);
        why = error_mismatch(&r, 503, NULL);
        if (why != NULL)
            fail_msg("user service stopped: %s", why);
        const char *retry = http_header(&r, "Retry-After");
        if (retry == NULL || retry[0] == '\0')
            fail_msg("503 without Retry-After");
        http_response_free(&r);
    }
    char path[128];
    snprintf(path, sizeof path, "/v1/orders/%s", g.users[0].order);
    assert_int_equal(call(&r, "GET", path, &g.users[0], NULL, NULL), 200);
    assert_string_equal(text_of(&r, "id"), g.users[0].order);
    http_response_free(&r);
    assert_int_equal(call(&r, "GET", "/v1/orders", &g.users[0], NULL, NULL), 200);
    http_response_free(&r);
    assert_int_equal(call(&r, "GET", "/healthz", NULL, NULL, NULL), 200);
    http_response_free(&r);

    /* Back: reads work again, each its own wallet. */
    assert_true(system_start_process(g.system, system_user, "-restarted"));
    assert_true(discovery_wait(g.rpc, "user", 2, restart_timeout_ms) >= 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(call(&r, "GET", "/v1/wallet", &g.users[i], NULL, NULL), 200);
        assert_string_equal(text_of(&r, "user_id"), g.users[i].id);
        assert_true(json_integer_value(json_object_get(r.json, "balance")) == g.users[i].balance);
        http_response_free(&r);
    }
}

/* ---- 3. a gateway that cannot listen ------------------------------------------ */

/* A second gateway on the first one's port cannot listen: it must say so
 * and exit non-zero, its route callers stopped, rather than hang. */
static void test_gateway_that_cannot_listen_exits(void **state)
{
    (void)state;
    const char *env[system_env_max + 2];
    size_t n = system_env(g.system, system_gateway, env);
    char port[64];
    snprintf(port, sizeof port, "PAYGATE_GATEWAY_PORT=%d", g.port);
    env[n++] = port;
    env[n] = NULL;
    proc_t busy = {0};
    assert_true(proc_start(&busy, "gwcall-gateway-busy", PAYGATE_GATEWAY_BIN, env));
    bool exited = proc_wait(&busy, busy_exit_timeout_ms);
    if (!exited) {
        proc_kill(&busy);
        fail_msg("a gateway that cannot listen did not exit within %d ms; see %s",
                 busy_exit_timeout_ms, busy.log_path);
    }
    assert_true(WIFEXITED(busy.exit_status));
    assert_true(WEXITSTATUS(busy.exit_status) != 0);
    /* and the first gateway still answers */
    http_response_t r;
    assert_int_equal(call(&r, "GET", "/v1/wallet", &g.users[0], NULL, NULL), 200);
    http_response_free(&r);
}

/* ---- 4. reads queued behind batches keep their deadline ------------------------ */

typedef struct {
    const user_t *user;
    char failure[failure_bytes];
} queued_t;

static void *queued_main(void *arg)
{
    queued_t *self = arg;
    http_response_t r;
    if (!http_api_request(&r, g.port, "GET", "/v1/wallet", self->user->token, NULL, NULL, NULL)) {
        snprintf(self->failure, sizeof self->failure, "no answer: %s", r.error);
    } else {
        const char *why = r.status == 503   ? error_mismatch(&r, 503, NULL)
                          : r.status == 504 ? error_mismatch(&r, 504, NULL)
                                            : "neither 503 nor 504";
        if (why != NULL)
            snprintf(self->failure, sizeof self->failure, "%s", why);
    }
    http_response_free(&r);
    return NULL;
}

/* With the user service stopped each batch waits the broker's grace (2 s)
 * for a worker; 320 reads make six batches of at most 64, one after the
 * other. A read's deadline (PAYGATE_GATEWAY_DEADLINE_MS, 5 s) counts from
 * when it came, not from when its batch left: every one is answered, 503
 * or 504, well within the client's timeout (10 s), not after the sixth
 * batch. */
static void test_queued_reads_keep_their_deadline(void **state)
{
    (void)state;
    proc_t *user = system_process(g.system, system_user);
    if (user->pid > 0) /* (a failed test before may have left it stopped) */
        assert_true(proc_stop(user, system_stop_timeout_ms));
    assert_true(discovery_wait(g.rpc, "user", 0, 10000) >= 0);
    queued_t *reads = calloc(queued_count, sizeof *reads);
    pthread_t *threads = calloc(queued_count, sizeof *threads);
    assert_non_null(reads);
    assert_non_null(threads);
    for (size_t i = 0; i < queued_count; i++) {
        reads[i].user = &g.users[i % users_count];
        assert_int_equal(pthread_create(&threads[i], NULL, queued_main, &reads[i]), 0);
    }
    int failures = 0;
    for (size_t i = 0; i < queued_count; i++) {
        pthread_join(threads[i], NULL);
        if (reads[i].failure[0] != '\0' && failures++ < 5)
            fprintf(stderr, "  read %zu: %s\n", i, reads[i].failure);
    }
    free(reads);
    free(threads);
    if (failures > 0)
        fail_msg("%d of %d queued reads got a wrong answer or none", failures, queued_count);
    assert_true(system_start_process(g.system, system_user, "-again"));
    assert_true(discovery_wait(g.rpc, "user", 2, restart_timeout_ms) >= 0);
    http_response_t r;
    assert_int_equal(call(&r, "GET", "/v1/wallet", &g.users[0], NULL, NULL), 200);
    http_response_free(&r);
}

/* ---- 5. SIGTERM with gathered reads in flight --------------------------------- */

typedef struct {
    const user_t *user;
    bool answered;   /* a complete HTTP answer */
    int status;      /* its status */
    long elapsed_ms; /* connect to answer (or to failure) */
    char failure[failure_bytes];
} inflight_t;

static void *inflight_main(void *arg)
{
    inflight_t *self = arg;
    http_response_t r;
    self->answered =
        http_api_request(&r, g.port, "GET", "/v1/wallet", self->user->token, NULL, NULL, NULL);
    self->status = r.status;
    self->elapsed_ms = r.elapsed_ms;
    if (self->answered) {
        const char *why = r.status == 503   ? error_mismatch(&r, 503, NULL)
                          : r.status == 504 ? error_mismatch(&r, 504, NULL)
                                            : "neither 503 nor 504";
        if (why != NULL)
            snprintf(self->failure, sizeof self->failure, "%s", why);
    } else if (strstr(r.error, "timed out") != NULL || strstr(r.error, "within") != NULL) {
        /* refused or closed is fine; waiting until the client gives up is not */
        snprintf(self->failure, sizeof self->failure, "no answer: %s", r.error);
    }
    http_response_free(&r);
    return NULL;
}

/* Reads a file whole (malloc'd, NUL-terminated), or NULL. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap * 2 + 8192;
            char *more = realloc(text, cap);
            if (more == NULL)
                break;
            text = more;
        }
        size_t got = fread(text + len, 1, 4096, f);
        len += got;
        if (got == 0)
            break;
    }
    fclose(f);
    if (text != NULL)
        text[len] = '\0';
    return text;
}

static void test_sigterm_with_reads_in_flight(void **state)
{
    (void)state;
    /* With the user service stopped, every gathered read waits in the
     * broker (its grace for a worker to come) until it is UNAVAILABLE. */
    proc_t *user = system_process(g.system, system_user);
    if (user->pid > 0) /* (a failed test before may have left it stopped) */
        assert_true(proc_stop(user, system_stop_timeout_ms));
    assert_true(discovery_wait(g.rpc, "user", 0, 10000) >= 0);
    inflight_t reads[inflight_count];
    pthread_t threads[inflight_count];
    for (size_t i = 0; i < inflight_count; i++) {
        reads[i] = (inflight_t){.user = &g.users[i % users_count]};
        assert_int_equal(pthread_create(&threads[i], NULL, inflight_main, &reads[i]), 0);
    }
    sleep_ms(inflight_head_start_ms);
    proc_t *gateway = system_process(g.system, system_gateway);
    proc_signal(gateway, SIGTERM);
    int answered = 0, closed = 0, failures = 0;
    long slowest_ms = 0;
    for (size_t i = 0; i < inflight_count; i++) {
        pthread_join(threads[i], NULL);
        if (reads[i].failure[0] != '\0') {
            fprintf(stderr, "  read %zu: %s\n", i, reads[i].failure);
            failures++;
        }
        if (reads[i].elapsed_ms > slowest_ms)
            slowest_ms = reads[i].elapsed_ms;
        if (reads[i].answered)
            answered++;
        else
            closed++;
    }
    fprintf(stderr,
            "  %d reads answered (503/504), %d refused or closed; the slowest took %ld ms\n",
            answered, closed, slowest_ms);
    bool exited = proc_wait(gateway, gateway_exit_timeout_ms);
    if (!exited)
        proc_kill(gateway);
    char *log = slurp(gateway->log_path);
    assert_non_null(log);
    bool sanitizer = strstr(log, "AddressSanitizer") != NULL ||
                     strstr(log, "LeakSanitizer") != NULL || strstr(log, "runtime error") != NULL;
    free(log);
    if (!exited)
        fail_msg("the gateway did not exit within %d ms of SIGTERM; see %s",
                 gateway_exit_timeout_ms, gateway->log_path);
    if (!WIFEXITED(gateway->exit_status) || WEXITSTATUS(gateway->exit_status) != 0)
        fail_msg("the gateway exited with status 0x%x; see %s", gateway->exit_status,
                 gateway->log_path);
    if (sanitizer)
        fail_msg("a sanitizer report in %s", gateway->log_path);
    if (failures > 0)
        fail_msg("%d reads in flight got a wrong answer or none (above)", failures);
    /* once it is gone nothing listens */
    http_response_t r;
    assert_false(http_request(&r, g.port, "GET", "/healthz", NULL, NULL));
    http_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isolation_under_concurrency),
        cmocka_unit_test(test_errors_through_the_caller),
        cmocka_unit_test(test_gateway_that_cannot_listen_exits),
        cmocka_unit_test(test_queued_reads_keep_their_deadline),
        cmocka_unit_test(test_sigterm_with_reads_in_flight),
    };
    return cmocka_run_group_tests_name("gateway callers", tests, group_setup, group_teardown);
}
