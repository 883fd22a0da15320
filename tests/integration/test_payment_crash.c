/*
 * The crash test of payments (issue 4): paygate-payment, paygate-user and
 * paygate-order are killed with SIGKILL while clients pay orders over HTTP,
 * restarted, and afterwards every payment has ended SUCCEEDED or FAILED
 * and the money adds up to the paisa.
 *
 * The real broker, services and gateway run on free loopback ports against
 * the test PostgreSQL that ./dev test starts (PAYGATE_TEST_PG_DSN; without
 * it the test FAILS, it is never skipped). The payment service runs with a
 * short lease (PAYGATE_PAYMENT_LEASE_MS) and recovery interval, so that
 * sagas a crash left behind are taken over within the run.
 *
 *   clients (4 threads per user)          fault thread (fixed seed)
 *   loop: create an order, pay it;        6 rounds: kill payment, user and
 *     sometimes also pay or cancel the    order with SIGKILL, one at a time
 *     latest order of another client of   in random order, at random
 *     its user (a double payment / a      moments; restart each after a
 *     cancellation racing a payment);     random downtime and wait until
 *     sometimes refund a payment; now     it is registered again
 *     and then top up.
 *   Every request that gets a 5xx, no answer or idempotency_in_progress is
 *   retried with the SAME Idempotency-Key, within bounds, as a real client
 *   does; what each client was finally told is kept.
 *
 * Then, once no payment is PROCESSING and no refund PENDING (bounded wait),
 * the database is checked: every payment SUCCEEDED or FAILED; per wallet,
 * balance == SUM(ledger) (replayed in order, never below zero) and
 * top-ups - SUCCEEDED payments + refunds == balance, and the net of debits
 * and credits == COMPLETED orders - refunds; every COMPLETED order has
 * exactly one SUCCEEDED payment, the one it names, and every SUCCEEDED
 * payment completed its order; every DEBIT is of a SUCCEEDED payment or
 * compensated by a CREDIT of the same reference, and every CREDIT is a
 * compensation or a refund; and no client was told something the database
 * contradicts (a 201 SUCCEEDED for a payment that did not succeed, a 402
 * for one that did, a refund or top-up that is not there). Each broken
 * rule is a violation, printed; the test passes only with none.
 *
 * A second group stages one interleaving of that run deterministically
 * (test_stale_driver_never_completes_a_failed_payment): a saga driver
 * whose lease passed while it waited for the user service acts on a
 * payment that its first driver has meanwhile FAILED. It runs first, with
 * its own processes (logs stale-*.log).
 *
 * Other tests share the database: the users are new (unique emails) and
 * every check is restricted to them. Logs: crash-*.log in
 * $PAYGATE_TEST_LOG_DIR (each incarnation of a service has its own).
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
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "clock/clock.h"
#include "http_client.h"
#include "proc.h"
#include "system.h"

static const char jwt_secret[] = "payment-crash-secret-0123456789abcdefghijklmnop";
_Static_assert(sizeof jwt_secret - 1 == 47, "the test secret is 47 characters");
static const char password[] = "Crash-Passw0rd-9a2c41";

enum {
    seed = 20240917,
    users_count = 4,
    clients_per_user = 4,
    clients_count = users_count * clients_per_user,
    service_threads = 3,
    gateway_threads = clients_count,
    gateway_deadline_ms = 8000, /* below http_timeout_ms (10 s) */
    lease_ms = 1500,
    recovery_interval_ms = 300,
    initial_topup_minor = 15000,
    refill_topup_minor = 6000,
    refill_every = 5, /* a client tops up every this many orders */
    order_minor_min = 500,
    order_minor_max = 5000,
    fault_rounds = 6, /* each round kills payment, user and order once */
    fault_gap_ms_min = 500,
    fault_gap_ms_max = 3000,
    downtime_ms_min = 200,
    downtime_ms_max = 4000, /* beyond the 2 s call deadline: calls fail, sagas stall */
    restart_register_ms_max = 30000,
    run_ms_max = 90000,       /* the clients' activity, all told */
    action_budget_ms = 25000, /* one action, retries included */
    retry_backoff_ms_max = 1000,
    settle_timeout_ms = 60000,
    ready_timeout_ms = 60000,
    think_ms_max = 400,
    records_max = 1024, /* per client and kind */
    violations_printed_max = 60,
    id_bytes_max = 64,
    token_bytes_max = 2048,
};

typedef struct {
    char id[id_bytes_max + 1];
    char email[128];
    char token[token_bytes_max + 1];
    pthread_mutex_t lock;                            /* guards 'latest' */
    char latest[clients_per_user][id_bytes_max + 1]; /* each client's newest order */
} crash_user_t;

/* What a client was finally told about one action. status 0: no final
 * answer within the budget (it gave up). */
typedef struct {
    char order[id_bytes_max + 1];
    char key[64];
    int status;
    char code[64];                  /* the error code; "" on success */
    char payment[id_bytes_max + 1]; /* body id, or error payment_id */
    char payment_status[16];        /* body status of a 201 */
} pay_record_t;

typedef struct {
    char payment[id_bytes_max + 1];
    char key[64];
    int64_t amount; /* 0: full refund */
    int status;
    char code[64];
    char refund[id_bytes_max + 1];
    int64_t refunded; /* the amount in the 201 */
} refund_record_t;

typedef struct {
    char key[64];
    int64_t amount;
    int status;
    char id[id_bytes_max + 1];
} topup_record_t;

typedef struct {
    crash_user_t *user;
    int slot; /* 0..clients_per_user-1 within its user */
    uint64_t rng;
    pay_record_t pays[records_max];
    size_t pay_count;
    refund_record_t refunds[records_max];
    size_t refund_count;
    topup_record_t topups[records_max];
    size_t topup_count;
    int cancels;
    int orders_failed; /* creates that got no answer */
} client_t;

/* A service the fault thread kills and restarts. */
typedef struct {
    const char *service; /* broker name: "payment", "user", "order" */
    system_process_t which;
    int threads;  /* instances it registers */
    proc_t *proc; /* the system's */
    int incarnation;
} victim_t;

/* How a group runs the system; 0 means the binary's default. */
typedef struct {
    const char *prefix;  /* log names: <prefix>-<process>[-<n>].log */
    int service_threads; /* payment and order worker instances */
    int user_threads;
    int user_max_in_flight;
    int lease_ms;
    int recovery_interval_ms;
    int call_deadline_ms;
    int broker_grace_ms;
} fixture_config_t;

static struct {
    system_t *system;
    const char *dsn; /* the system's scratch database */
    int http_port;
    const fixture_config_t *config;
    victim_t victims[3];
    PGconn *db;
    atomic_uint counter;
    atomic_int stop;
    int64_t clients_until_ms;
    int faults;
    int fault_problems;
    char fault_problem[1024];
    crash_user_t users[users_count];
    client_t clients[clients_count];
    char user_array[users_count * (id_bytes_max + 1) + 8]; /* "{usr_a,usr_b,...}" */
    int user_count;                                        /* in user_array */
    int violations;
} g;

/* ---- small helpers ------------------------------------------------------ */

/* xorshift64*: deterministic per thread from the fixed seed. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

/* A number in [lo, hi]. */
static int rng_between(uint64_t *state, int lo, int hi)
{
    return lo + (int)(rng_next(state) % (uint64_t)(hi - lo + 1));
}

/* A unique string "<what>-<pid>-<n>" in 'out' (thread-safe). */
static void unique(char *out, size_t size, const char *what)
{
    unsigned n = atomic_fetch_add(&g.counter, 1) + 1;
    snprintf(out, size, "%s-%d-%u", what, (int)getpid(), n);
}

/* Records one broken rule (printed, up to a limit). Main thread only. */
static void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void violation(const char *fmt, ...)
{
    g.violations++;
    if (g.violations > violations_printed_max)
        return;
    va_list args;
    va_start(args, fmt);
    fputs("test_payment_crash: VIOLATION: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
}

/* One request to the gateway: 'token' (or NULL) as Bearer, 'key' (or
 * NULL) as Idempotency-Key, 'body' (or NULL) as JSON. */
static bool api_try(http_response_t *r, const char *token, const char *method, const char *path,
                    const char *key, const char *body)
{
    return http_api_request(r, g.http_port, method, path, token, key, body, NULL);
}

/* The error code of 'r' ("" when it is no error). */
static const char *error_code(const http_response_t *r)
{
    const char *code =
        json_string_value(json_object_get(json_object_get(r->json, "error"), "code"));
    return code ? code : "";
}

/* Sends the request until a final answer: one that came, is JSON, is
 * below 500 and is not idempotency_in_progress. Between tries it waits
 * (100 ms doubling to retry_backoff_ms_max), within action_budget_ms. True
 * with 'r' filled (the caller frees it); false when it gave up. */
static bool api_retrying(http_response_t *r, const char *token, const char *method,
                         const char *path, const char *key, const char *body)
{
    int64_t until = clock_now_ms() + action_budget_ms;
    int backoff_ms = 100;
    for (;;) {
        bool answered = api_try(r, token, method, path, key, body);
        if (answered && r->json != NULL && r->status < 500 &&
            strcmp(error_code(r), "idempotency_in_progress") != 0)
            return true;
        http_response_free(r);
        if (clock_now_ms() + backoff_ms > until)
            return false;
        sleep_ms(backoff_ms);
        backoff_ms = backoff_ms * 2 > retry_backoff_ms_max ? retry_backoff_ms_max : backoff_ms * 2;
    }
}

/* ---- what a client does ----------------------------------------------------- */

/* Tops up the client's user by 'amount' with a new key (retried). */
static void client_top_up(client_t *c, int64_t amount)
{
    if (c->topup_count == records_max)
        return;
    topup_record_t *t = &c->topups[c->topup_count++];
    unique(t->key, sizeof t->key, "crash-topup");
    t->amount = amount;
    char body[64];
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    if (!api_retrying(&r, c->user->token, "POST", "/v1/wallet/topups", t->key, body))
        return;
    t->status = r.status;
    const char *id = json_string_value(json_object_get(r.json, "id"));
    snprintf(t->id, sizeof t->id, "%s", id ? id : "");
    http_response_free(&r);
}

/* Creates an order of 'amount'; its id into 'id'. False when no 201 came
 * (a retried create may leave an extra PENDING order: harmless). */
static bool client_create_order(client_t *c, int64_t amount, char id[id_bytes_max + 1])
{
    char body[64];
    snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    http_response_t r;
    if (!api_retrying(&r, c->user->token, "POST", "/v1/orders", NULL, body)) {
        c->orders_failed++;
        return false;
    }
    const char *got = json_string_value(json_object_get(r.json, "id"));
    bool ok = r.status == 201 && got != NULL;
    if (ok)
        snprintf(id, id_bytes_max + 1, "%s", got);
    else
        c->orders_failed++;
    http_response_free(&r);
    return ok;
}

/* Pays 'order' with a new key, retrying with that same key; records what
 * it was told. Returns the record, or NULL when out of records. */
static pay_record_t *client_pay(client_t *c, const char *order)
{
    if (c->pay_count == records_max)
        return NULL;
    pay_record_t *p = &c->pays[c->pay_count++];
    snprintf(p->order, sizeof p->order, "%s", order);
    unique(p->key, sizeof p->key, "crash-pay");
    char body[128];
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order);
    http_response_t r;
    if (!api_retrying(&r, c->user->token, "POST", "/v1/payments", p->key, body))
        return p;
    p->status = r.status;
    json_t *error = json_object_get(r.json, "error");
    const char *id = error ? json_string_value(json_object_get(error, "payment_id"))
                           : json_string_value(json_object_get(r.json, "id"));
    const char *status = json_string_value(json_object_get(r.json, "status"));
    snprintf(p->code, sizeof p->code, "%s", error_code(&r));
    snprintf(p->payment, sizeof p->payment, "%s", id ? id : "");
    snprintf(p->payment_status, sizeof p->payment_status, "%s", status ? status : "");
    http_response_free(&r);
    return p;
}

/* Refunds 'amount' (0: all that is left) of 'payment', retried with one
 * key; records what it was told. */
static void client_refund(client_t *c, const char *payment, int64_t amount)
{
    if (c->refund_count == records_max)
        return;
    refund_record_t *f = &c->refunds[c->refund_count++];
    snprintf(f->payment, sizeof f->payment, "%s", payment);
    unique(f->key, sizeof f->key, "crash-refund");
    f->amount = amount;
    char path[128], body[64];
    snprintf(path, sizeof path, "/v1/payments/%s/refunds", payment);
    if (amount > 0)
        snprintf(body, sizeof body, "{\"amount\":%" PRId64 "}", amount);
    else
        snprintf(body, sizeof body, "{}");
    http_response_t r;
    if (!api_retrying(&r, c->user->token, "POST", path, f->key, body))
        return;
    f->status = r.status;
    snprintf(f->code, sizeof f->code, "%s", error_code(&r));
    const char *id = json_string_value(json_object_get(r.json, "id"));
    snprintf(f->refund, sizeof f->refund, "%s", id ? id : "");
    json_t *refunded = json_object_get(r.json, "amount");
    f->refunded = json_is_integer(refunded) ? (int64_t)json_integer_value(refunded) : 0;
    http_response_free(&r);
}

/* Cancels 'order' (idempotent by nature; retried). */
static void client_cancel(client_t *c, const char *order)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/orders/%s/cancel", order);
    http_response_t r;
    if (api_retrying(&r, c->user->token, "POST", path, NULL, "{}"))
        http_response_free(&r);
    c->cancels++;
}

/* A client: until the fault schedule ends, create an order and pay it;
 * sometimes pay or cancel the newest order of another client of the same
 * user first (racing its payment), refund a paid order, top up. */
static void *client_main(void *arg)
{
    client_t *c = arg;
    crash_user_t *u = c->user;
    for (int round = 1; !atomic_load(&g.stop) && clock_now_ms() < g.clients_until_ms; round++) {
        if (round % refill_every == 0)
            client_top_up(c, refill_topup_minor);
        int64_t amount =
            (int64_t)rng_between(&c->rng, order_minor_min / 100, order_minor_max / 100) * 100;
        char order[id_bytes_max + 1], theirs[id_bytes_max + 1];
        if (!client_create_order(c, amount, order))
            continue;
        pthread_mutex_lock(&u->lock);
        snprintf(u->latest[c->slot], sizeof u->latest[c->slot], "%s", order);
        snprintf(theirs, sizeof theirs, "%s", u->latest[(c->slot + 1) % clients_per_user]);
        pthread_mutex_unlock(&u->lock);

        int dice = rng_between(&c->rng, 0, 9);
        if (dice < 2 && theirs[0] != '\0')
            client_pay(c, theirs);
        else if (dice == 2 && theirs[0] != '\0')
            client_cancel(c, theirs);

        pay_record_t *p = client_pay(c, order);
        if (p != NULL && p->status == 201 && p->payment[0] != '\0') {
            int refund_dice = rng_between(&c->rng, 0, 7);
            if (refund_dice < 2)
                client_refund(c, p->payment, amount / 2);
            else if (refund_dice == 2)
                client_refund(c, p->payment, 0);
        }
        sleep_ms(rng_between(&c->rng, 0, think_ms_max));
    }
    return NULL;
}

/* ---- faults ------------------------------------------------------------------ */

/* Starts the next incarnation of 'v' (its log: <prefix>-<service>-<n>.log;
 * the first one's is <prefix>-<service>.log). */
static bool victim_start(victim_t *v)
{
    char suffix[16];
    snprintf(suffix, sizeof suffix, "-%d", ++v->incarnation);
    return system_start_process(g.system, v->which, suffix);
}

/* Notes a problem of the fault thread for the main thread to report. */
static void fault_problem(const char *what, const victim_t *v)
{
    g.fault_problems++;
    snprintf(g.fault_problem, sizeof g.fault_problem, "%s %s (see %s)", what, v->service,
             v->proc->log_path);
}

/* The fault schedule: 'fault_rounds' rounds, each killing payment, user
 * and order once in a random order (fixed seed), after a random pause;
 * each is restarted after a random downtime, and the next fault waits
 * until it has registered again. Then it tells the clients to stop. */
static void *fault_main(void *arg)
{
    (void)arg;
    uint64_t rng = (uint64_t)seed * 7919u + 17u;
    rpc_client_t *rpc = rpc_client_new(NULL, system_broker_endpoint(g.system));
    for (int round = 0; rpc != NULL && round < fault_rounds; round++) {
        int order[3] = {0, 1, 2};
        for (int i = 2; i > 0; i--) {
            int j = rng_between(&rng, 0, i);
            int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (int k = 0; k < 3; k++) {
            victim_t *v = &g.victims[order[k]];
            sleep_ms(rng_between(&rng, fault_gap_ms_min, fault_gap_ms_max));
            if (v->proc->pid <= 0 || waitpid(v->proc->pid, &v->proc->exit_status, WNOHANG) != 0) {
                v->proc->pid = 0;
                fault_problem("died by itself:", v);
            }
            proc_kill(v->proc);
            g.faults++;
            sleep_ms(rng_between(&rng, downtime_ms_min, downtime_ms_max));
            if (!victim_start(v)) {
                fault_problem("cannot restart", v);
                continue;
            }
            if (discovery_wait(rpc, v->service, v->threads, restart_register_ms_max) < 0)
                fault_problem("did not register again:", v);
        }
    }
    rpc_client_destroy(&rpc);
    atomic_store(&g.stop, 1);
    return NULL;
}

/* ---- the database ------------------------------------------------------------- */

/* Runs 'sql' with $1 = this test's user ids (text[]); fails the test
 * unless it returns rows. The caller PQclear()s. */
static PGresult *db_rows(const char *sql)
{
    const char *params[] = {g.user_array};
    PGresult *res = PQexecParams(g.db, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", PQerrorMessage(g.db));
        PQclear(res);
        fail_msg("query failed: %s: %s", why, sql);
    }
    return res;
}

static int64_t cell_int(const PGresult *res, int row, int col)
{
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* Payments and refunds still in flight for this test's users. */
static int64_t db_unsettled(void)
{
    PGresult *res = db_rows("SELECT (SELECT count(*) FROM payments.payments"
                            "  WHERE user_id = ANY($1::text[]) AND status = 'PROCESSING')"
                            " + (SELECT count(*) FROM payments.refunds"
                            "  WHERE user_id = ANY($1::text[]) AND status = 'PENDING')");
    int64_t n = cell_int(res, 0, 0);
    PQclear(res);
    return n;
}

/* Every row of 'sql' (which selects what breaks 'rule') is a violation. */
static void expect_no_rows(const char *rule, const char *sql)
{
    PGresult *res = db_rows(sql);
    for (int i = 0; i < PQntuples(res); i++) {
        char row[512] = "";
        size_t used = 0;
        for (int c = 0; c < PQnfields(res) && used < sizeof row; c++) {
            int n = snprintf(row + used, sizeof row - used, "%s%s=%s", c ? " " : "",
                             PQfname(res, c), PQgetvalue(res, i, c));
            used += n > 0 ? (size_t)n : 0;
        }
        violation("%s: %s", rule, row);
    }
    PQclear(res);
}

/* The money of each user adds up. */
static void check_wallets(void)
{
    static const char sql[] =
        "SELECT w.user_id, w.balance,"
        " (SELECT COALESCE(SUM(amount), 0) FROM users.ledger l WHERE l.user_id = w.user_id),"
        " (SELECT COALESCE(SUM(amount), 0) FROM users.topups t WHERE t.user_id = w.user_id),"
        " (SELECT COALESCE(SUM(amount), 0) FROM users.ledger l WHERE l.user_id = w.user_id"
        "   AND l.kind = 'TOPUP'),"
        " (SELECT COALESCE(SUM(amount), 0) FROM payments.payments p WHERE p.user_id = w.user_id"
        "   AND p.status = 'SUCCEEDED'),"
        " (SELECT COALESCE(SUM(amount), 0) FROM payments.refunds r WHERE r.user_id = w.user_id"
        "   AND r.status = 'SUCCEEDED'),"
        " (SELECT COALESCE(SUM(amount), 0) FROM users.ledger l WHERE l.user_id = w.user_id"
        "   AND l.kind IN ('DEBIT', 'CREDIT')),"
        " (SELECT COALESCE(SUM(amount), 0) FROM orders.orders o WHERE o.user_id = w.user_id"
        "   AND o.status = 'COMPLETED')"
        " FROM users.wallets w WHERE w.user_id = ANY($1::text[])";
    PGresult *res = db_rows(sql);
    if (PQntuples(res) != g.user_count)
        violation("expected %d wallets, found %d", g.user_count, PQntuples(res));
    for (int i = 0; i < PQntuples(res); i++) {
        const char *user = PQgetvalue(res, i, 0);
        int64_t balance = cell_int(res, i, 1), ledger = cell_int(res, i, 2);
        int64_t topups = cell_int(res, i, 3), topup_rows = cell_int(res, i, 4);
        int64_t paid = cell_int(res, i, 5), refunded = cell_int(res, i, 6);
        int64_t moved = cell_int(res, i, 7), completed = cell_int(res, i, 8);
        if (balance != ledger)
            violation("wallet %s: balance %" PRId64 " != SUM(ledger) %" PRId64, user, balance,
                      ledger);
        if (balance < 0)
            violation("wallet %s: negative balance %" PRId64, user, balance);
        if (topups != topup_rows)
            violation("wallet %s: top-ups %" PRId64 " but TOPUP ledger rows %" PRId64, user, topups,
                      topup_rows);
        if (topups - paid + refunded != balance)
            violation("wallet %s: top-ups %" PRId64 " - succeeded payments %" PRId64
                      " + refunds %" PRId64 " = %" PRId64 " != balance %" PRId64,
                      user, topups, paid, refunded, topups - paid + refunded, balance);
        if (-moved != completed - refunded)
            violation("wallet %s: debits net of credits %" PRId64 " != completed orders %" PRId64
                      " - refunds %" PRId64,
                      user, -moved, completed, refunded);
    }
    PQclear(res);
    expect_no_rows("the ledger replayed in order disagrees with balance_after or goes negative",
                   "SELECT user_id, id, balance_after, running FROM ("
                   " SELECT user_id, id, balance_after,"
                   "  SUM(amount) OVER (PARTITION BY user_id ORDER BY id) AS running"
                   " FROM users.ledger WHERE user_id = ANY($1::text[])) x"
                   " WHERE running <> balance_after OR running < 0");
}

/* Orders, payments, refunds and ledger rows agree with each other. */
static void check_rows(void)
{
    expect_no_rows("payment not SUCCEEDED or FAILED",
                   "SELECT id, status, step FROM payments.payments"
                   " WHERE user_id = ANY($1::text[]) AND status NOT IN ('SUCCEEDED', 'FAILED')");
    expect_no_rows("refund not SUCCEEDED", "SELECT id, status FROM payments.refunds"
                                           " WHERE user_id = ANY($1::text[])"
                                           " AND status <> 'SUCCEEDED'");
    expect_no_rows(
        "COMPLETED order without exactly one SUCCEEDED payment, the one it names",
        "SELECT o.id, o.payment_id, (SELECT count(*) FROM payments.payments p"
        "  WHERE p.order_id = o.id AND p.status = 'SUCCEEDED') AS succeeded"
        " FROM orders.orders o WHERE o.user_id = ANY($1::text[]) AND o.status = 'COMPLETED'"
        " AND ((SELECT count(*) FROM payments.payments p WHERE p.order_id = o.id"
        "       AND p.status = 'SUCCEEDED') <> 1"
        "  OR NOT EXISTS (SELECT 1 FROM payments.payments p WHERE p.id = o.payment_id"
        "       AND p.status = 'SUCCEEDED'))");
    expect_no_rows(
        "SUCCEEDED payment whose order is not COMPLETED by it",
        "SELECT p.id, p.order_id, o.status AS order_status, o.payment_id AS order_payment"
        " FROM payments.payments p LEFT JOIN orders.orders o ON o.id = p.order_id"
        " WHERE p.user_id = ANY($1::text[]) AND p.status = 'SUCCEEDED'"
        " AND (o.status IS DISTINCT FROM 'COMPLETED'"
        "      OR o.payment_id IS DISTINCT FROM p.id)");
    expect_no_rows(
        "DEBIT of a payment that did not succeed and was not compensated (or of another amount)",
        "SELECT l.reference, l.amount, p.status, p.failure_code FROM users.ledger l"
        " LEFT JOIN payments.payments p ON p.id = l.reference"
        " WHERE l.user_id = ANY($1::text[]) AND l.kind = 'DEBIT'"
        " AND (p.id IS NULL OR p.amount <> -l.amount"
        "  OR (p.status <> 'SUCCEEDED' AND NOT EXISTS (SELECT 1 FROM users.ledger c"
        "      WHERE c.user_id = l.user_id AND c.kind = 'CREDIT' AND c.reference = l.reference"
        "      AND c.amount = -l.amount)))");
    expect_no_rows("SUCCEEDED payment without exactly one DEBIT, or with a compensation",
                   "SELECT p.id, p.amount FROM payments.payments p"
                   " WHERE p.user_id = ANY($1::text[]) AND p.status = 'SUCCEEDED'"
                   " AND ((SELECT count(*) FROM users.ledger l WHERE l.user_id = p.user_id"
                   "       AND l.kind = 'DEBIT' AND l.reference = p.id) <> 1"
                   "  OR EXISTS (SELECT 1 FROM users.ledger c WHERE c.user_id = p.user_id"
                   "       AND c.kind = 'CREDIT' AND c.reference = p.id))");
    expect_no_rows("CREDIT that is neither a compensation of a FAILED payment's DEBIT nor a refund",
                   "SELECT c.reference, c.amount FROM users.ledger c"
                   " WHERE c.user_id = ANY($1::text[]) AND c.kind = 'CREDIT'"
                   " AND NOT EXISTS (SELECT 1 FROM payments.payments p WHERE p.id = c.reference"
                   "   AND p.status = 'FAILED' AND p.amount = c.amount"
                   "   AND EXISTS (SELECT 1 FROM users.ledger d WHERE d.user_id = c.user_id"
                   "        AND d.kind = 'DEBIT' AND d.reference = c.reference))"
                   " AND NOT EXISTS (SELECT 1 FROM payments.refunds r WHERE r.id = c.reference"
                   "   AND r.status = 'SUCCEEDED' AND r.amount = c.amount)");
    expect_no_rows("SUCCEEDED refund without exactly one CREDIT of its amount",
                   "SELECT r.id, r.amount FROM payments.refunds r"
                   " WHERE r.user_id = ANY($1::text[]) AND r.status = 'SUCCEEDED'"
                   " AND (SELECT count(*) FROM users.ledger c WHERE c.user_id = r.user_id"
                   "      AND c.kind = 'CREDIT' AND c.reference = r.id"
                   "      AND c.amount = r.amount) <> 1");
    expect_no_rows("payment whose amount_refunded is not the sum of its refunds",
                   "SELECT p.id, p.amount_refunded, (SELECT COALESCE(SUM(r.amount), 0)"
                   "  FROM payments.refunds r WHERE r.payment_id = p.id) AS refunds"
                   " FROM payments.payments p WHERE p.user_id = ANY($1::text[])"
                   " AND p.amount_refunded <> (SELECT COALESCE(SUM(r.amount), 0)"
                   "  FROM payments.refunds r WHERE r.payment_id = p.id)");
}

/* Finds 'id' in column 0 of 'res'; returns the row or -1. */
static int find_row(const PGresult *res, const char *id)
{
    for (int i = 0; i < PQntuples(res); i++) {
        if (strcmp(PQgetvalue(res, i, 0), id) == 0)
            return i;
    }
    return -1;
}

/* Nothing a client was told is contradicted by the database. Counts the
 * payments tried into '*tried'. */
static void check_told(int *tried, int *gave_up)
{
    PGresult *payments = db_rows("SELECT id, status, failure_code, order_id FROM payments.payments"
                                 " WHERE user_id = ANY($1::text[])");
    PGresult *refunds = db_rows("SELECT id, status, amount, payment_id FROM payments.refunds"
                                " WHERE user_id = ANY($1::text[])");
    PGresult *topups =
        db_rows("SELECT id, amount FROM users.topups WHERE user_id = ANY($1::text[])");
    for (int k = 0; k < clients_count; k++) {
        client_t *c = &g.clients[k];
        for (size_t i = 0; i < c->pay_count; i++) {
            pay_record_t *p = &c->pays[i];
            (*tried)++;
            if (p->status == 0) {
                (*gave_up)++;
                violation("payment of order %s (key %s): no final answer within %d ms", p->order,
                          p->key, action_budget_ms);
                continue;
            }
            int row = p->payment[0] ? find_row(payments, p->payment) : -1;
            const char *final = row >= 0 ? PQgetvalue(payments, row, 1) : "(none)";
            if (row >= 0 && strcmp(PQgetvalue(payments, row, 3), p->order) != 0)
                violation("told payment %s for order %s, but it pays order %s", p->payment,
                          p->order, PQgetvalue(payments, row, 3));
            if (p->status == 201) {
                if (strcmp(p->payment_status, "SUCCEEDED") != 0 || strcmp(final, "SUCCEEDED") != 0)
                    violation("told 201 %s for payment %s (order %s), it ends %s",
                              p->payment_status, p->payment, p->order, final);
            } else if ((p->status == 402 && strcmp(p->code, "insufficient_funds") == 0) ||
                       (p->status == 409 && strcmp(p->code, "order_not_payable") == 0)) {
                if (row < 0 || strcmp(final, "FAILED") != 0 ||
                    strcmp(PQgetvalue(payments, row, 2), p->code) != 0)
                    violation("told %d %s for payment %s (order %s), it ends %s %s", p->status,
                              p->code, p->payment[0] ? p->payment : "(no id)", p->order, final,
                              row >= 0 ? PQgetvalue(payments, row, 2) : "");
            } else {
                violation("payment of order %s (key %s) answered %d %s", p->order, p->key,
                          p->status, p->code);
            }
        }
        for (size_t i = 0; i < c->refund_count; i++) {
            refund_record_t *f = &c->refunds[i];
            if (f->status != 201) {
                violation("refund of %s (key %s) answered %d %s", f->payment, f->key, f->status,
                          f->code);
                continue;
            }
            int row = find_row(refunds, f->refund);
            if (row < 0 || strcmp(PQgetvalue(refunds, row, 1), "SUCCEEDED") != 0 ||
                cell_int(refunds, row, 2) != f->refunded ||
                strcmp(PQgetvalue(refunds, row, 3), f->payment) != 0 ||
                (f->amount > 0 && f->refunded != f->amount))
                violation("told 201 refund %s of %" PRId64 " for %s, the database has %s",
                          f->refund, f->refunded, f->payment,
                          row < 0 ? "none" : PQgetvalue(refunds, row, 1));
        }
        for (size_t i = 0; i < c->topup_count; i++) {
            topup_record_t *t = &c->topups[i];
            if (t->status != 201) {
                violation("top-up (key %s) answered %d", t->key, t->status);
                continue;
            }
            int row = find_row(topups, t->id);
            if (row < 0 || cell_int(topups, row, 1) != t->amount)
                violation("told 201 top-up %s of %" PRId64 ", the database has %s", t->id,
                          t->amount, row < 0 ? "none" : PQgetvalue(topups, row, 1));
        }
    }
    PQclear(payments);
    PQclear(refunds);
    PQclear(topups);
}

/* ---- processes ------------------------------------------------------------ */

/* True when 'p' is still running (reaps it otherwise). */
static bool running(proc_t *p)
{
    if (p->pid > 0 && waitpid(p->pid, &p->exit_status, WNOHANG) == p->pid)
        p->pid = 0;
    return p->pid > 0;
}

/* Starts broker, payment, user, order and gateway as 'config' says, waits
 * until /readyz answers 200 and every instance is registered, and connects
 * to the database. */
static void fixture_start(const fixture_config_t *config)
{
    g.config = config;
    char lease[64], recovery[64], call_deadline[64], in_flight[64], grace[64], gw_deadline[64];
    snprintf(lease, sizeof lease, "PAYGATE_PAYMENT_LEASE_MS=%d", config->lease_ms);
    snprintf(recovery, sizeof recovery, "PAYGATE_PAYMENT_RECOVERY_INTERVAL_MS=%d",
             config->recovery_interval_ms);
    snprintf(call_deadline, sizeof call_deadline, "PAYGATE_PAYMENT_CALL_DEADLINE_MS=%d",
             config->call_deadline_ms);
    snprintf(in_flight, sizeof in_flight, "PAYGATE_USER_MAX_IN_FLIGHT=%d",
             config->user_max_in_flight);
    snprintf(grace, sizeof grace, "PAYGATE_BROKER_UNAVAILABLE_GRACE_MS=%d",
             config->broker_grace_ms);
    snprintf(gw_deadline, sizeof gw_deadline, "PAYGATE_GATEWAY_DEADLINE_MS=%d",
             gateway_deadline_ms);
    /* 0 means the binary's default: the entry is left out. */
    const char *payment_env[] = {lease, recovery,
                                 config->call_deadline_ms > 0 ? call_deadline : NULL, NULL};
    const char *user_env[] = {config->user_max_in_flight > 0 ? in_flight : NULL, NULL};
    const char *broker_env[] = {config->broker_grace_ms > 0 ? grace : NULL, NULL};
    const char *gateway_env[] = {gw_deadline, NULL};
    system_config_t system_config = {
        .name = config->prefix,
        .processes = SYSTEM_ONLY(system_payment) | SYSTEM_ONLY(system_user) |
                     SYSTEM_ONLY(system_order) | SYSTEM_ONLY(system_gateway),
        .jwt_secret = jwt_secret,
        .rate_limits_off = true,
        .threads = {[system_payment] = config->service_threads,
                    [system_user] = config->user_threads,
                    [system_order] = config->service_threads,
                    [system_gateway] = gateway_threads},
        .ready_timeout_ms = ready_timeout_ms,
        .process_env = {[system_broker] = broker_env,
                        [system_payment] = payment_env,
                        [system_user] = user_env,
                        [system_gateway] = gateway_env},
    };
    g.system = system_new(&system_config);
    if (g.system == NULL)
        fail_msg("the system did not start; see %s-*.log", config->prefix);
    g.http_port = system_gateway_port(g.system);
    g.dsn = system_pg_dsn(g.system);
    const char *services[3] = {"payment", "user", "order"};
    const system_process_t which[3] = {system_payment, system_user, system_order};
    for (int i = 0; i < 3; i++) {
        victim_t *v = &g.victims[i];
        memset(v, 0, sizeof *v);
        v->service = services[i];
        v->which = which[i];
        v->threads = system_config.threads[which[i]];
        v->proc = system_process(g.system, which[i]);
    }
    g.db = PQconnectdb(g.dsn);
    if (PQstatus(g.db) != CONNECTION_OK)
        fail_msg("cannot connect to the test database: %s", PQerrorMessage(g.db));
}

/* Stops what fixture_start started. The last incarnations must drain and
 * exit 0 on SIGTERM (no ASan leak). Returns 0, or -1 when one did not. */
static int fixture_stop(void)
{
    PQfinish(g.db);
    g.db = NULL;
    bool clean = system_stop(g.system);
    system_destroy(&g.system);
    return clean ? 0 : -1;
}

/* The crash run: short lease and recovery interval (sagas a crash left
 * behind are taken over within the run), several instances of each. */
static const fixture_config_t crash_config = {
    .prefix = "crash",
    .service_threads = service_threads,
    .user_threads = service_threads,
    .lease_ms = lease_ms,
    .recovery_interval_ms = recovery_interval_ms,
};

static int crash_setup(void **state)
{
    (void)state;
    fixture_start(&crash_config);
    return 0;
}

static int crash_teardown(void **state)
{
    (void)state;
    return fixture_stop();
}

/* ---- the test ------------------------------------------------------------------ */

/* Registers a new account (unique email from 'tag') into 'u' and logs it
 * in. */
static void account_new(crash_user_t *u, const char *tag)
{
    pthread_mutex_init(&u->lock, NULL);
    char local[96], body[512];
    unique(local, sizeof local, tag);
    snprintf(u->email, sizeof u->email, "%s@example.com", local);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\",\"name\":\"Crash\"}",
             u->email, password);
    http_response_t r;
    if (!api_try(&r, NULL, "POST", "/v1/users", NULL, body) || r.status != 201)
        fail_msg("register: %d %s", r.status, r.body ? r.body : r.error);
    const char *id = json_string_value(json_object_get(r.json, "id"));
    if (id == NULL)
        fail_msg("register answered no id: %s", r.body);
    snprintf(u->id, sizeof u->id, "%s", id);
    http_response_free(&r);
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", u->email, password);
    if (!api_try(&r, NULL, "POST", "/v1/auth/login", NULL, body) || r.status != 200)
        fail_msg("login: %d %s", r.status, r.body ? r.body : r.error);
    const char *token = json_string_value(json_object_get(r.json, "access_token"));
    if (token == NULL)
        fail_msg("login answered no token: %s", r.body);
    snprintf(u->token, sizeof u->token, "%s", token);
    http_response_free(&r);
}

/* Creates user 'i' with its clients, and tops up its first money
 * (recorded as its first client's top-up). */
static void user_setup(int i)
{
    crash_user_t *u = &g.users[i];
    account_new(u, "crash");
    for (int s = 0; s < clients_per_user; s++) {
        client_t *c = &g.clients[i * clients_per_user + s];
        c->user = u;
        c->slot = s;
        c->rng = (uint64_t)seed + (uint64_t)(i * clients_per_user + s) * 0x9E3779B97F4A7C15u;
    }
    client_top_up(&g.clients[i * clients_per_user], initial_topup_minor);
    if (g.clients[i * clients_per_user].topups[0].status != 201)
        fail_msg("the first top-up of user %d failed", i);
}

/* Payments under SIGKILLs of payment, user and order all end SUCCEEDED or
 * FAILED, and the money adds up (see the top of this file). */
static void test_crashes_leave_money_consistent(void **state)
{
    (void)state;
    g.violations = 0;
    int64_t started_ms = clock_now_ms();
    size_t used = 0;
    g.user_array[used++] = '{';
    for (int i = 0; i < users_count; i++) {
        user_setup(i);
        used += (size_t)snprintf(g.user_array + used, sizeof g.user_array - used, "%s%s",
                                 i ? "," : "", g.users[i].id);
    }
    snprintf(g.user_array + used, sizeof g.user_array - used, "}");
    g.user_count = users_count;

    /* The run: clients and faults at once, bounded. */
    g.clients_until_ms = clock_now_ms() + run_ms_max;
    pthread_t clients[clients_count], faults;
    for (int k = 0; k < clients_count; k++)
        assert_int_equal(pthread_create(&clients[k], NULL, client_main, &g.clients[k]), 0);
    assert_int_equal(pthread_create(&faults, NULL, fault_main, NULL), 0);
    pthread_join(faults, NULL);
    atomic_store(&g.stop, 1);
    for (int k = 0; k < clients_count; k++)
        pthread_join(clients[k], NULL);
    int64_t run_ms = clock_now_ms() - started_ms;
    if (g.fault_problems > 0)
        violation("fault thread: %d problems, last: %s", g.fault_problems, g.fault_problem);
    for (int i = 0; i < 3; i++) {
        if (!running(g.victims[i].proc))
            violation("%s is not running after the run; see %s", g.victims[i].service,
                      g.victims[i].proc->log_path);
    }

    /* Let the recovery loop finish what the crashes left behind. */
    int64_t settle_start = clock_now_ms();
    int64_t unsettled = db_unsettled();
    while (unsettled > 0 && clock_now_ms() - settle_start < settle_timeout_ms) {
        sleep_ms(250);
        unsettled = db_unsettled();
    }
    int64_t settle_ms = clock_now_ms() - settle_start;
    if (unsettled > 0)
        violation("%" PRId64 " payments/refunds still in flight %d ms after the run", unsettled,
                  settle_timeout_ms);

    check_rows();
    check_wallets();
    int tried = 0, gave_up = 0;
    check_told(&tried, &gave_up);

    PGresult *res = db_rows("SELECT count(*) FILTER (WHERE status = 'SUCCEEDED'),"
                            " count(*) FILTER (WHERE status = 'FAILED'),"
                            " count(*) FILTER (WHERE status = 'FAILED'"
                            "  AND failure_code = 'order_not_payable' AND EXISTS ("
                            "  SELECT 1 FROM users.ledger c WHERE c.user_id = p.user_id"
                            "  AND c.kind = 'CREDIT' AND c.reference = p.id)),"
                            " (SELECT count(*) FROM payments.refunds r"
                            "  WHERE r.user_id = ANY($1::text[])),"
                            " count(*) FILTER (WHERE attempts > 0)"
                            " FROM payments.payments p WHERE p.user_id = ANY($1::text[])");
    int64_t succeeded = cell_int(res, 0, 0), failed = cell_int(res, 0, 1);
    int64_t compensated = cell_int(res, 0, 2), refunds = cell_int(res, 0, 3);
    int64_t taken_over = cell_int(res, 0, 4); /* sagas a crash or timeout left to another driver */
    PQclear(res);
    int cancels = 0, orders_failed = 0;
    for (int k = 0; k < clients_count; k++) {
        cancels += g.clients[k].cancels;
        orders_failed += g.clients[k].orders_failed;
    }
    printf("test_payment_crash: payments tried %d, succeeded %" PRId64 ", failed %" PRId64
           " (compensated %" PRId64 "), taken over after a stall %" PRId64 ", refunds %" PRId64
           ", cancels %d, gave up %d (orders not created %d), faults injected %d, run %" PRId64
           " ms, settled in %" PRId64 " ms, violations %d\n",
           tried, succeeded, failed, compensated, taken_over, refunds, cancels, gave_up,
           orders_failed, g.faults, run_ms, settle_ms, g.violations);
    fflush(stdout);

    assert_int_equal(g.faults, fault_rounds * 3);
    assert_true(succeeded > 0 && tried > 0);
    /* The faults did bite: some sagas stalled and another driver (the
     * recovery loop, or a retry taking over) finished them. */
    assert_true(taken_over > 0);
    assert_int_equal(g.violations, 0);
}

/* ---- a stale saga driver, staged ------------------------------------------------ */

/* The stale-driver scenario: one user instance that takes one request at
 * a time (so queued calls run in the order they were sent), a lease
 * shorter than a call's deadline (so the recovery loop takes a saga over
 * while its first driver still waits for the user service), and a broker
 * that holds calls for a missing service until their deadline. */
static const fixture_config_t stale_config = {
    .prefix = "stale",
    .service_threads = 2,
    .user_threads = 1,
    .user_max_in_flight = 1,
    .lease_ms = 1000,
    .recovery_interval_ms = 200,
    .call_deadline_ms = 4000,
    .broker_grace_ms = 10000,
};

static int stale_setup(void **state)
{
    (void)state;
    fixture_start(&stale_config);
    return 0;
}

static int stale_teardown(void **state)
{
    (void)state;
    return fixture_stop();
}

typedef struct {
    const char *token;
    const char *method;
    const char *path;
    const char *key;
    const char *body;
    http_response_t response;
    bool answered;
} one_call_t;

/* One request, on its own thread. */
static void *one_call_main(void *arg)
{
    one_call_t *call = arg;
    call->answered =
        api_try(&call->response, call->token, call->method, call->path, call->key, call->body);
    return NULL;
}

/* Polls 'sql' (one integer, $1 = the test's users) until it is at least
 * 'want' or 'timeout_ms' passes; returns the last value. */
static int64_t db_wait_at_least(const char *sql, int64_t want, int timeout_ms)
{
    int64_t until = clock_now_ms() + timeout_ms;
    for (;;) {
        PGresult *res = db_rows(sql);
        int64_t value = PQntuples(res) == 1 ? cell_int(res, 0, 0) : -1;
        PQclear(res);
        if (value >= want || clock_now_ms() > until)
            return value;
        sleep_ms(20);
    }
}

/* A saga driver whose lease passed while it waited must not act on a
 * payment that another driver has finished meanwhile. Staged with the user
 * service down: the payment's first driver (the request) sends its debit
 * and waits; the client tops up (queued behind it); the lease passes and
 * the recovery loop sends the same debit (queued last). The user service
 * comes back and runs them in that order: the first debit finds the
 * wallet empty, the payment FAILS (insufficient_funds, the client is told
 * 402), the top-up lands, and the recovery's debit now finds money. What
 * must follow: the FAILED payment stays FAILED with no money taken and
 * the order PENDING (or, had it succeeded, the client would have been
 * told so). What must never follow: a debit and a COMPLETED order for a
 * payment the client was told had failed. */
static void test_stale_driver_never_completes_a_failed_payment(void **state)
{
    (void)state;
    crash_user_t *u = &g.users[0];
    memset(u, 0, sizeof *u);
    account_new(u, "stale");
    snprintf(g.user_array, sizeof g.user_array, "{%s}", u->id);
    g.user_count = 1;
    g.violations = 0;
    client_t *c = &g.clients[0];
    memset(c, 0, sizeof *c);
    c->user = u;
    char order[id_bytes_max + 1], key[64], topup_key[64], body[128], path[128];
    assert_true(client_create_order(c, 1000, order));
    unique(key, sizeof key, "stale-pay");
    unique(topup_key, sizeof topup_key, "stale-topup");

    /* The user service goes away. */
    victim_t *user = &g.victims[1];
    rpc_client_t *rpc = rpc_client_new(NULL, system_broker_endpoint(g.system));
    assert_non_null(rpc);
    proc_kill(user->proc);
    assert_true(discovery_wait(rpc, "user", 0, 10000) >= 0);

    /* The payment: its debit waits at the broker. */
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", order);
    one_call_t pay = {
        .token = u->token, .method = "POST", .path = "/v1/payments", .key = key, .body = body};
    pthread_t pay_thread, topup_thread;
    assert_int_equal(pthread_create(&pay_thread, NULL, one_call_main, &pay), 0);
    assert_int_equal(db_wait_at_least("SELECT count(*) FROM payments.payments"
                                      " WHERE user_id = ANY($1::text[])",
                                      1, 5000),
                     1);
    sleep_ms(100);

    /* The top-up: queued behind that debit. */
    one_call_t topup = {.token = u->token,
                        .method = "POST",
                        .path = "/v1/wallet/topups",
                        .key = topup_key,
                        .body = "{\"amount\":1000}"};
    assert_int_equal(pthread_create(&topup_thread, NULL, one_call_main, &topup), 0);

    /* The lease passes; the recovery loop takes the saga over and sends
     * its own debit (queued behind the top-up). */
    int64_t taken = db_wait_at_least("SELECT COALESCE(MAX(attempts), 0) FROM payments.payments"
                                     " WHERE user_id = ANY($1::text[])",
                                     1, stale_config.lease_ms + 5000);
    PGresult *res = db_rows("SELECT status FROM payments.payments WHERE user_id = ANY($1::text[])");
    bool processing = strcmp(PQgetvalue(res, 0, 0), "PROCESSING") == 0;
    PQclear(res);
    if (taken < 1 || !processing)
        fail_msg("not staged: the recovery loop did not take the waiting payment over "
                 "(attempts %" PRId64 ", %s)",
                 taken, processing ? "PROCESSING" : "already finished");
    sleep_ms(200);

    /* The user service comes back and works through the queue in order. */
    assert_true(victim_start(user));
    assert_true(discovery_wait(rpc, "user", 1, 20000) >= 0);
    rpc_client_destroy(&rpc);
    pthread_join(pay_thread, NULL);
    pthread_join(topup_thread, NULL);
    if (!pay.answered || !topup.answered)
        fail_msg("no answer: payment %s, top-up %s", pay.answered ? "ok" : pay.response.error,
                 topup.answered ? "ok" : topup.response.error);
    assert_int_equal(topup.response.status, 201);
    int told = pay.response.status;
    char told_code[64];
    snprintf(told_code, sizeof told_code, "%s", error_code(&pay.response));
    /* 503 payment_processing is an honest "not decided yet": the request's
     * driver lost its lease to the recovery loop and must not claim an
     * outcome; the client learns it by retrying with the same key. */
    bool undecided = told == 503 && strcmp(told_code, "payment_processing") == 0;
    if (!(told == 201 || (told == 402 && strcmp(told_code, "insufficient_funds") == 0) ||
          undecided))
        fail_msg("the payment answered %d: %s", told, pay.response.body);

    /* Whatever the stale driver does, it has done within a second. */
    sleep_ms(1000);
    int64_t until = clock_now_ms() + 10000;
    while (db_unsettled() > 0 && clock_now_ms() < until)
        sleep_ms(100);

    /* The same key keeps answering what the client was told. */
    http_response_t r;
    assert_true(api_try(&r, u->token, "POST", "/v1/payments", key, body));
    int replay = r.status;
    http_response_free(&r);
    snprintf(path, sizeof path, "/v1/orders/%s", order);
    assert_true(api_try(&r, u->token, "GET", path, NULL, NULL));
    char order_status[16];
    snprintf(order_status, sizeof order_status, "%s",
             r.json ? json_string_value(json_object_get(r.json, "status")) : "?");
    http_response_free(&r);
    assert_true(api_try(&r, u->token, "GET", "/v1/wallet", NULL, NULL));
    json_t *balance_json = json_object_get(r.json, "balance");
    int64_t balance = json_is_integer(balance_json) ? json_integer_value(balance_json) : -1;
    http_response_free(&r);
    res = db_rows("SELECT status, failure_code FROM payments.payments"
                  " WHERE user_id = ANY($1::text[])");
    char final[16], failure[64];
    snprintf(final, sizeof final, "%s", PQgetvalue(res, 0, 0));
    snprintf(failure, sizeof failure, "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    printf("test_payment_crash: stale driver: told %d %s, replay %d, payment %s %s, order %s, "
           "balance %" PRId64 "\n",
           told, told_code, replay, final, failure, order_status, balance);
    fflush(stdout);

    check_rows();
    check_wallets();
    if (undecided) {
        if (replay != 201 && replay != 402)
            violation("told 503 payment_processing, and after settling the same key still "
                      "answers %d",
                      replay);
        told = replay; /* what the client now knows */
    }
    if (replay != told)
        violation("told %d, the same key now answers %d", told, replay);
    if (told == 402 &&
        (strcmp(final, "FAILED") != 0 || strcmp(order_status, "PENDING") != 0 || balance != 1000))
        violation("told 402 insufficient_funds, yet the payment is %s, the order %s and the "
                  "wallet holds %" PRId64 " of the 1000 topped up",
                  final, order_status, balance);
    if (told == 201 &&
        (strcmp(final, "SUCCEEDED") != 0 || strcmp(order_status, "COMPLETED") != 0 || balance != 0))
        violation("told 201, yet the payment is %s, the order %s and the wallet holds %" PRId64,
                  final, order_status, balance);
    http_response_free(&pay.response);
    http_response_free(&topup.response);
    assert_int_equal(g.violations, 0);
}

int main(void)
{
    const char *dsn = getenv("PAYGATE_TEST_PG_DSN");
    if (dsn == NULL || *dsn == '\0') {
        fprintf(stderr, "test_payment_crash: FAIL: PAYGATE_TEST_PG_DSN is not set. This test "
                        "needs the test PostgreSQL: run it with ./dev test (e.g. ./dev test -R "
                        "payment).\n");
        return 1;
    }
    const struct CMUnitTest stale_tests[] = {
        cmocka_unit_test(test_stale_driver_never_completes_a_failed_payment),
    };
    const struct CMUnitTest crash_tests[] = {
        cmocka_unit_test(test_crashes_leave_money_consistent),
    };
    int failed =
        cmocka_run_group_tests_name("stale_driver", stale_tests, stale_setup, stale_teardown);
    failed += cmocka_run_group_tests_name("crash", crash_tests, crash_setup, crash_teardown);
    return failed == 0 ? 0 : 1;
}
