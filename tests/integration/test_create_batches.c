/*
 * Integration tests of payment.Create in batches (batch.Create:
 * services/payment/payments.c payment_create_batch, saga.c
 * saga_drive_together) and of POST /v1/payments, which the gateway sends
 * through a route caller as such batches. The real paygate-broker,
 * paygate-user, paygate-order, paygate-payment and paygate-gateway
 * processes (tests/support/system.h, real certificates) on a scratch
 * database of the test PostgreSQL that ./dev test starts
 * (PAYGATE_TEST_PG_DSN; without it the test FAILS, it is never skipped).
 *
 * A batch is sent as the gateway sends one (rpc_client_call_batch,
 * principal "gateway", each call acting for its own user). Each call must
 * get the answer its single call gives (the same code, reason and
 * details), and the database must show every effect exactly once: for
 * every wallet, balance == top-ups - succeeded payments and the ledger
 * replays to it (tests/support/wallet_check.h); every paid order is
 * COMPLETED by the payment answered; one payment row per (user, key).
 *
 * Also what the batch code cannot simply carry: the order or the user
 * service stopped under a batch, and (a trigger of the test's own) a
 * batch whose inserts' or outcomes' transaction does not commit; each
 * call must still answer as alone, and pay once when retried.
 *
 * That the calls were driven together shows in the rows' xmin (the
 * writing transaction's id): the debits of one user.Debit batch share
 * one, and so do the orders of one order.MarkPaid batch and the payments
 * finished by one transaction. Process logs are kept in
 * $PAYGATE_TEST_LOG_DIR as create_batches-*.log; the payment service's is
 * read to see that a batch's transaction failed.
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
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "clock/clock.h"
#include "http_client.h"
#include "metrics_scrape.h"
#include "id/id.h"
#include "order.pb-c.h"
#include "payment.pb-c.h"
#include "proc.h"
#include "rpc/rpc.h"
#include "system.h"
#include "user.pb-c.h"
#include "db_assert.h"

/* The services' HS256 key (the user service signs with it): 48 bytes. */
static const char jwt_secret[] = "cbatch-test-secret-0123456789abcdefghijklmnopqrs";
_Static_assert(sizeof jwt_secret - 1 == 48, "the test secret is 48 characters");
static const char password[] = "Cbatch-Passw0rd-4e1f";

enum {
    service_threads = 4,        /* user, order and payment worker instances each */
    gateway_threads = 8,        /* HTTP threads: the 16 payments reach the callers at once */
    gateway_deadline_ms = 8000, /* below http_timeout_ms: a slow call is a 504, not a hang */
    call_deadline_ms = 20000,   /* the test's own calls (ASan, 2 shared cores) */
    ready_timeout_ms = 60000,
    http_payers = 16, /* concurrent POST /v1/payments that succeed */
    http_failing = 4, /* and that fail, at the same time */
    http_burst = http_payers + http_failing,
    http_users = 6,          /* whose wallets the good ones share */
    retry_attempts_max = 20, /* same-key retries of a payment still processing */
    token_bytes_max = 2048,
    key_bytes = 300, /* an idempotency key of test 4: room for one over the 255 allowed */
    restart_timeout_ms = 30000,  /* a service back and registered */
    recovery_timeout_ms = 60000, /* payments left PROCESSING finished (lease 10 s) */
};

static struct {
    system_t *system;
    rpc_client_t *rpc; /* the main thread's */
    PGconn *db;
    int http_port;
    atomic_uint counter; /* unique emails, keys */
} g;

/* ---- helpers ------------------------------------------------------------ */

/* A unique string "<what>-<pid>-<n>" in 'out' (thread-safe). */
static void unique(char *out, size_t size, const char *what)
{
    unsigned n = atomic_fetch_add(&g.counter, 1) + 1;
    snprintf(out, size, "%s-%d-%u", what, (int)getpid(), n);
}

/* One single call as 'principal' acting for 'user' (or NULL). On OK
 * '*reply' is set (free with protobuf_c_message_free_unpacked); pass NULL
 * to drop it. */
static Paygate__V1__Code call(const char *service, const char *method, const char *principal,
                              const char *user, const ProtobufCMessage *request,
                              const ProtobufCMessageDescriptor *reply_desc,
                              ProtobufCMessage **reply, rpc_status_t *status)
{
    rpc_call_opts_t opts = {
        .deadline_ms = call_deadline_ms, .user_id = user, .principal = principal};
    ProtobufCMessage *msg = NULL;
    Paygate__V1__Code code =
        rpc_client_call(g.rpc, service, method, request, reply_desc, &msg, &opts, status);
    if (reply != NULL)
        *reply = msg;
    else if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    return code;
}

/* Registers a new account (unique email from 'tag') over RPC, as the
 * gateway does; its id to 'id'. */
static void user_new(char id[id_bytes_max + 1], const char *tag)
{
    char local[96], email[128];
    unique(local, sizeof local, tag);
    snprintf(email, sizeof email, "%s@example.com", local);
    Paygate__V1__RegisterRequest request = PAYGATE__V1__REGISTER_REQUEST__INIT;
    request.email = email;
    request.password = (char *)password;
    request.name = (char *)"Batch payer";
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code = call("user", "Register", "gateway", NULL, &request.base,
                                  &paygate__v1__user__descriptor, &reply, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("register: %d/%s: %s", (int)code, status.reason, status.message);
    snprintf(id, id_bytes_max + 1, "%s", ((Paygate__V1__User *)reply)->id);
    protobuf_c_message_free_unpacked(reply, NULL);
}

/* Tops up the wallet of 'user' by 'amount' (a new key). */
static void top_up(const char *user, int64_t amount)
{
    char key[64];
    unique(key, sizeof key, "topup");
    Paygate__V1__TopUpRequest request = PAYGATE__V1__TOP_UP_REQUEST__INIT;
    request.amount = amount;
    request.idempotency_key = key;
    rpc_status_t status;
    Paygate__V1__Code code = call("user", "TopUp", "gateway", user, &request.base,
                                  &paygate__v1__top_up__descriptor, NULL, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("top up: %d/%s: %s", (int)code, status.reason, status.message);
}

/* Creates an order of 'amount' for 'user'; its id to 'id'. */
static void order_new(const char *user, int64_t amount, char id[id_bytes_max + 1])
{
    Paygate__V1__CreateOrderRequest request = PAYGATE__V1__CREATE_ORDER_REQUEST__INIT;
    request.amount = amount;
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code = call("order", "Create", "gateway", user, &request.base,
                                  &paygate__v1__order__descriptor, &reply, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("create order: %d/%s: %s", (int)code, status.reason, status.message);
    snprintf(id, id_bytes_max + 1, "%s", ((Paygate__V1__Order *)reply)->id);
    protobuf_c_message_free_unpacked(reply, NULL);
}

/* Cancels order 'id' of 'user'; must be OK. */
static void order_cancel(const char *user, const char *id)
{
    Paygate__V1__CancelOrderRequest request = PAYGATE__V1__CANCEL_ORDER_REQUEST__INIT;
    request.id = (char *)id;
    rpc_status_t status;
    Paygate__V1__Code code = call("order", "Cancel", "gateway", user, &request.base,
                                  &paygate__v1__order__descriptor, NULL, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("cancel order %s: %d/%s: %s", id, (int)code, status.reason, status.message);
}

/* A CreatePaymentRequest for a batch item or a single call. */
static Paygate__V1__CreatePaymentRequest create_request(const char *order, const char *key)
{
    Paygate__V1__CreatePaymentRequest request = PAYGATE__V1__CREATE_PAYMENT_REQUEST__INIT;
    request.order_id = (char *)order;
    request.idempotency_key = (char *)key;
    return request;
}

/* One single payment.Create as the gateway for 'user'; the reply (on OK)
 * to '*reply' (may be NULL: dropped). */
static Paygate__V1__Code create_single(const char *user, const char *order, const char *key,
                                       Paygate__V1__Payment **reply, rpc_status_t *status)
{
    Paygate__V1__CreatePaymentRequest request = create_request(order, key);
    ProtobufCMessage *msg = NULL;
    Paygate__V1__Code code = call("payment", "Create", "gateway", user, &request.base,
                                  &paygate__v1__payment__descriptor, &msg, status);
    if (reply != NULL)
        *reply = (Paygate__V1__Payment *)msg;
    else if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    return code;
}

/* Pays 'order' of 'user' with 'key' by a single call; must SUCCEED. The
 * payment id to 'id'. */
static void pay_single_ok(const char *user, const char *order, const char *key,
                          char id[id_bytes_max + 1])
{
    Paygate__V1__Payment *p = NULL;
    rpc_status_t status;
    Paygate__V1__Code code = create_single(user, order, key, &p, &status);
    if (code != PAYGATE__V1__CODE__OK || p->status != PAYGATE__V1__PAYMENT_STATUS__SUCCEEDED)
        fail_msg("pay %s: %d/%s: %s", order, (int)code, status.reason, status.message);
    snprintf(id, id_bytes_max + 1, "%s", p->id);
    protobuf_c_message_free_unpacked(&p->base, NULL);
}

/* One batch.Create of 'count' calls ('requests[i]' for 'users[i]'), as the
 * gateway's route caller sends it; fails the test unless the service ran
 * the batch (its own code OK). Each item's status and reply are set. */
static void create_batch(const Paygate__V1__CreatePaymentRequest *requests,
                         const char *const *users, rpc_batch_item_t *items, size_t count)
{
    for (size_t i = 0; i < count; i++)
        items[i] = (rpc_batch_item_t){.request = &requests[i].base, .user_id = users[i]};
    rpc_call_opts_t opts = {.deadline_ms = call_deadline_ms, .principal = "gateway"};
    rpc_status_t status;
    Paygate__V1__Code code =
        rpc_client_call_batch(g.rpc, "payment", "Create", items, count,
                              &paygate__v1__payment__descriptor, &opts, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("batch.Create: %d/%s: %s", (int)code, status.reason, status.message);
}

/* Frees the replies of 'items'. */
static void batch_free(rpc_batch_item_t *items, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (items[i].reply != NULL)
            protobuf_c_message_free_unpacked(items[i].reply, NULL);
        items[i].reply = NULL;
    }
}

/* Fails unless item 'i' answered 'code' with 'reason' and a message, and
 * no reply. */
static void expect_item_fails(const rpc_batch_item_t *items, size_t i, Paygate__V1__Code code,
                              const char *reason)
{
    if (items[i].status.code != code || strcmp(items[i].status.reason, reason) != 0)
        fail_msg("item %zu: %d/%s (%s), expected %d/%s", i, (int)items[i].status.code,
                 items[i].status.reason, items[i].status.message, (int)code, reason);
    assert_null(items[i].reply);
    assert_true(items[i].status.message[0] != '\0');
}

/* Fails unless item 'i' is a SUCCEEDED payment of 'user' for 'order' of
 * 'amount'; returns it. */
static const Paygate__V1__Payment *expect_item_paid(const rpc_batch_item_t *items, size_t i,
                                                    const char *user, const char *order,
                                                    int64_t amount)
{
    if (items[i].status.code != PAYGATE__V1__CODE__OK || items[i].reply == NULL)
        fail_msg("item %zu: %d/%s (%s), expected OK", i, (int)items[i].status.code,
                 items[i].status.reason, items[i].status.message);
    const Paygate__V1__Payment *p = (const Paygate__V1__Payment *)items[i].reply;
    if (p->status != PAYGATE__V1__PAYMENT_STATUS__SUCCEEDED || strcmp(p->order_id, order) != 0 ||
        strcmp(p->user_id, user) != 0 || p->amount != amount || strcmp(p->currency, "INR") != 0)
        fail_msg("item %zu: payment %s status %d order %s user %s amount %" PRId64
                 ", expected SUCCEEDED %s %s %" PRId64,
                 i, p->id, (int)p->status, p->order_id, p->user_id, p->amount, order, user, amount);
    assert_true(strncmp(p->id, "pay_", 4) == 0);
    assert_int_equal(p->amount_refunded, 0);
    assert_true(p->created_at[0] != '\0' && p->updated_at[0] != '\0');
    return p;
}

/* Fails unless 'batch' (an item's status) and 'single' are the same
 * answer: code, reason, message (with payment ids taken out) and details
 * (with payment ids taken out). */
static void expect_same_answer(const char *name, const rpc_status_t *single,
                               const rpc_status_t *batch)
{
    if (single->code != batch->code || strcmp(single->reason, batch->reason) != 0)
        fail_msg("%s: alone %d/%s, in a batch %d/%s", name, (int)single->code, single->reason,
                 (int)batch->code, batch->reason);
    /* the messages, each with its own payment id cut out */
    char m1[sizeof single->message], m2[sizeof batch->message];
    const rpc_status_t *st[] = {single, batch};
    char *out[] = {m1, m2};
    for (size_t s = 0; s < 2; s++) {
        const char *id = rpc_status_detail(st[s], "payment_id");
        const char *at = id != NULL ? strstr(st[s]->message, id) : NULL;
        if (at == NULL)
            snprintf(out[s], sizeof m1, "%s", st[s]->message);
        else
            snprintf(out[s], sizeof m1, "%.*s<id>%s", (int)(at - st[s]->message), st[s]->message,
                     at + strlen(id));
    }
    if (strcmp(m1, m2) != 0)
        fail_msg("%s: alone '%s', in a batch '%s'", name, m1, m2);
    if (single->detail_count != batch->detail_count)
        fail_msg("%s: %zu details alone, %zu in a batch", name, single->detail_count,
                 batch->detail_count);
    for (size_t i = 0; i < single->detail_count; i++) {
        const char *key = single->details[i].key;
        const char *other = rpc_status_detail(batch, key);
        if (other == NULL)
            fail_msg("%s: detail %s alone, not in a batch", name, key);
        if (strcmp(key, "payment_id") == 0)
            assert_true(strncmp(other, "pay_", 4) == 0);
        else if (strcmp(other, single->details[i].value) != 0)
            fail_msg("%s: detail %s '%s' alone, '%s' in a batch", name, key,
                     single->details[i].value, other);
    }
}

/* ---- the database --------------------------------------------------------- */

/* The single integer 'sql' returns for parameters 'a' and 'b' (b may be
 * NULL: one parameter). */
static int64_t db_int(const char *sql, const char *a, const char *b)
{
    const char *params[] = {a, b};
    return db_assert_int(g.db, sql, b != NULL ? 2 : 1, params);
}

/* The single text 'sql' returns for parameter 'a' into 'out' (32 bytes). */
static void db_text(const char *sql, const char *a, char out[32])
{
    const char *params[] = {a};
    PGresult *res = db_assert_rows(g.db, sql, 1, params);
    if (PQntuples(res) != 1 || PQnfields(res) != 1)
        fail_msg("expected one value from: %s (%s)", sql, a);
    snprintf(out, 32, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* Checks the wallet of 'user': wallet_check (tests/support: the ledger
 * replays to the balance, never below zero), and the balance is its
 * top-ups minus its succeeded payments, and 'expected'. */
static void db_wallet_expect(const char *user, int64_t expected)
{
    int64_t balance = db_assert_wallet(g.db, user);
    int64_t topups =
        db_int("SELECT COALESCE(SUM(amount), 0) FROM users.topups WHERE user_id = $1", user, NULL);
    int64_t paid = db_int("SELECT COALESCE(SUM(amount), 0) FROM payments.payments"
                          " WHERE user_id = $1 AND status = 'SUCCEEDED'",
                          user, NULL);
    if (balance != topups - paid || balance != expected)
        fail_msg("wallet %s: balance %" PRId64 ", top-ups %" PRId64 " - paid %" PRId64
                 ", expected %" PRId64,
                 user, balance, topups, paid, expected);
}

/* Fails unless order 'id' is 'status' with payment 'payment' (the
 * database's own row). */
static void db_order_expect(const char *id, const char *status, const char *payment)
{
    const char *params[] = {id};
    PGresult *res = db_assert_rows(
        g.db, "SELECT status, COALESCE(payment_id, '') FROM orders.orders WHERE id = $1", 1,
        params);
    if (PQntuples(res) != 1)
        fail_msg("order %s: %d rows", id, PQntuples(res));
    if (strcmp(PQgetvalue(res, 0, 0), status) != 0 || strcmp(PQgetvalue(res, 0, 1), payment) != 0)
        fail_msg("order %s: %s by '%s', expected %s by '%s'", id, PQgetvalue(res, 0, 0),
                 PQgetvalue(res, 0, 1), status, payment);
    PQclear(res);
}

/* Fails unless payment 'id' is of 'user', 'order', with 'status' and
 * 'failure' (failure_code). */
static void db_payment_expect(const char *id, const char *user, const char *order,
                              const char *status, const char *failure)
{
    const char *params[] = {id};
    PGresult *res = db_assert_rows(g.db,
                                   "SELECT user_id, order_id, status, failure_code"
                                   " FROM payments.payments WHERE id = $1",
                                   1, params);
    if (PQntuples(res) != 1)
        fail_msg("payment %s: %d rows", id, PQntuples(res));
    if (strcmp(PQgetvalue(res, 0, 0), user) != 0 || strcmp(PQgetvalue(res, 0, 1), order) != 0 ||
        strcmp(PQgetvalue(res, 0, 2), status) != 0 || strcmp(PQgetvalue(res, 0, 3), failure) != 0)
        fail_msg("payment %s: %s %s %s '%s', expected %s %s %s '%s'", id, PQgetvalue(res, 0, 0),
                 PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3), user, order,
                 status, failure);
    PQclear(res);
}

/* How many payment rows 'user' has with idempotency key 'key'. */
static int64_t db_key_rows(const char *user, const char *key)
{
    return db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1"
                  " AND idempotency_key = $2",
                  user, key);
}

/* How many ledger rows of 'user' carry 'reference' (a payment id). */
static int64_t db_ledger_rows(const char *user, const char *reference)
{
    return db_int("SELECT count(*) FROM users.ledger WHERE user_id = $1 AND reference = $2", user,
                  reference);
}

/* The transaction that wrote the debit of payment 'payment' (its xmin). */
static void db_debit_xmin(const char *payment, char out[32])
{
    db_text("SELECT xmin::text FROM users.ledger WHERE reference = $1 AND kind = 'DEBIT'", payment,
            out);
}

/* ---- processes ------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    static char deadline[64]; /* static: the system keeps it */
    snprintf(deadline, sizeof deadline, "PAYGATE_GATEWAY_DEADLINE_MS=%d", gateway_deadline_ms);
    static const char *gateway_env[] = {deadline, NULL};
    static const char *const env[] = {"PAYGATE_LOG_LEVEL=info", NULL};
    /* Ready when the gateway says so and every instance registered, so
     * that concurrent payments really run at once. */
    system_config_t config = {
        .name = "create_batches",
        .processes = SYSTEM_ONLY(system_user) | SYSTEM_ONLY(system_order) |
                     SYSTEM_ONLY(system_payment) | SYSTEM_ONLY(system_gateway),
        .jwt_secret = jwt_secret,
        .rate_limits_off = true,
        .metrics = true,
        .threads = {[system_user] = service_threads,
                    [system_order] = service_threads,
                    [system_payment] = service_threads,
                    [system_gateway] = gateway_threads},
        .ready_timeout_ms = ready_timeout_ms,
        .env = env,
        .process_env = {[system_gateway] = gateway_env},
    };
    g.system = system_new(&config);
    if (g.system == NULL)
        return -1;
    g.http_port = system_gateway_port(g.system);
    g.rpc = rpc_client_new(NULL, system_broker_endpoint(g.system));
    if (g.rpc == NULL)
        return -1;
    g.db = PQconnectdb(system_pg_dsn(g.system));
    if (PQstatus(g.db) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to the test database: %s\n", PQerrorMessage(g.db));
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    PQfinish(g.db);
    g.db = NULL;
    rpc_client_destroy(&g.rpc);
    /* Draining on SIGTERM and exiting 0 (no leak under ASan) is part of
     * every process's contract: check it. */
    bool clean = system_stop(g.system);
    system_destroy(&g.system);
    return clean ? 0 : -1;
}

/* ---- 1. one batch, every answer its own ----------------------------------- */

/* One batch.Create mixing four good payments of three users (one user
 * twice) with every way a call fails: no idempotency key, no order id,
 * no user, an order that does not exist, another user's order, an order
 * already COMPLETED, a CANCELLED order, a wallet too poor, the key of an
 * earlier succeeded payment (replayed, not paid again) and that key with
 * another order. Each call gets its single call's answer; the good ones
 * are debited in one user.Debit batch, completed in one order.MarkPaid
 * batch and finished in one transaction; the database holds every
 * effect exactly once. */
static void test_batch_answers_each_call(void **state)
{
    (void)state;
    char a[id_bytes_max + 1], b[id_bytes_max + 1], c[id_bytes_max + 1], poor[id_bytes_max + 1],
        other[id_bytes_max + 1];
    user_new(a, "cb-a");
    user_new(b, "cb-b");
    user_new(c, "cb-c");
    user_new(poor, "cb-poor");
    user_new(other, "cb-other");
    top_up(a, 20000);
    top_up(b, 10000);
    top_up(c, 10000);
    top_up(poor, 500);
    top_up(other, 10000);
    char oa1[id_bytes_max + 1], oa2[id_bytes_max + 1], ob[id_bytes_max + 1], oc[id_bytes_max + 1],
        done[id_bytes_max + 1], cancelled[id_bytes_max + 1], untouched[id_bytes_max + 1],
        op[id_bytes_max + 1], foreign[id_bytes_max + 1], missing[id_bytes_max + 1];
    order_new(a, 1000, oa1);
    order_new(a, 1500, oa2);
    order_new(b, 2500, ob);
    order_new(c, 3000, oc);
    order_new(a, 700, done);
    order_new(a, 800, cancelled);
    order_new(a, 900, untouched);
    order_new(poor, 5000, op);
    order_new(other, 1200, foreign);
    assert_true(id_new("ord", missing, sizeof missing));
    order_cancel(a, cancelled);
    /* an earlier payment, by a single call */
    char k_done[64], earlier[id_bytes_max + 1];
    unique(k_done, sizeof k_done, "cb-key");
    pay_single_ok(a, done, k_done, earlier);

    char k[11][64];
    for (size_t i = 0; i < 11; i++)
        unique(k[i], sizeof k[i], "cb-key");
    Paygate__V1__CreatePaymentRequest requests[] = {
        create_request(oa1, k[0]),         /* 0: good */
        create_request(untouched, ""),     /* 1: no idempotency key */
        create_request(ob, k[1]),          /* 2: good, another user */
        create_request("", k[2]),          /* 3: no order id */
        create_request(missing, k[3]),     /* 4: no such order */
        create_request(foreign, k[4]),     /* 5: another user's order */
        create_request(done, k[5]),        /* 6: COMPLETED by 'earlier' */
        create_request(op, k[6]),          /* 7: the wallet holds 500 of 5000 */
        create_request(done, k_done),      /* 8: the earlier payment's call again */
        create_request(oa2, k[7]),         /* 9: good, 'a' again */
        create_request(untouched, k_done), /* 10: that key, another order */
        create_request(cancelled, k[8]),   /* 11: CANCELLED */
        create_request(oc, k[9]),          /* 12: good */
        create_request(untouched, k[10]),  /* 13: no user */
    };
    const char *users[] = {a, a, b, a, a, a, a, poor, a, a, a, a, c, ""};
    enum { n = sizeof requests / sizeof requests[0] };
    _Static_assert(sizeof users / sizeof users[0] == n, "a user per call");
    rpc_batch_item_t items[n];
    int metrics_port = system_metrics_port(g.system, system_payment);
    char *before = metrics_scrape(metrics_port, "payment");
    create_batch(requests, users, items, n);
    char *after = metrics_scrape(metrics_port, "payment");
    /* one batch of n calls, each of its steps once (the good payments went
     * through all of them together) */
    static const char *const counted[] = {
        "paygate_payment_batch_calls_count",
        "paygate_payment_batch_step_seconds_count{step=\"order_get\"}",
        "paygate_payment_batch_step_seconds_count{step=\"insert\"}",
        "paygate_payment_batch_step_seconds_count{step=\"debit\"}",
        "paygate_payment_batch_step_seconds_count{step=\"mark_paid\"}",
        "paygate_payment_batch_step_seconds_count{step=\"finish\"}",
    };
    for (size_t i = 0; i < sizeof counted / sizeof counted[0]; i++) {
        bool found;
        double moved =
            metrics_sample(after, counted[i], &found) - metrics_sample(before, counted[i], NULL);
        if (!found || moved != 1)
            fail_msg("%s moved by %.0f (found: %d), wanted 1", counted[i], moved, found);
        if (i > 0) { /* a step took some time */
            char sum[128];
            snprintf(sum, sizeof sum, "paygate_payment_batch_step_seconds_sum%s",
                     strchr(counted[i], '{'));
            assert_true(metrics_sample(after, sum, NULL) > metrics_sample(before, sum, NULL));
        }
    }
    assert_true(metrics_sample(after, "paygate_payment_batch_calls_sum", NULL) -
                    metrics_sample(before, "paygate_payment_batch_calls_sum", NULL) ==
                n);
    free(before);
    free(after);

    const Paygate__V1__Payment *pa1 = expect_item_paid(items, 0, a, oa1, 1000);
    expect_item_fails(items, 1, PAYGATE__V1__CODE__INVALID_ARGUMENT, "idempotency_key_required");
    const Paygate__V1__Payment *pb = expect_item_paid(items, 2, b, ob, 2500);
    expect_item_fails(items, 3, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_order_id");
    expect_item_fails(items, 4, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    expect_item_fails(items, 5, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    expect_item_fails(items, 6, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");
    const char *p_done = rpc_status_detail(&items[6].status, "payment_id");
    assert_non_null(p_done);
    assert_true(strncmp(p_done, "pay_", 4) == 0);
    assert_string_not_equal(p_done, earlier);
    expect_item_fails(items, 7, PAYGATE__V1__CODE__FAILED_PRECONDITION, "insufficient_funds");
    const char *p_poor = rpc_status_detail(&items[7].status, "payment_id");
    assert_non_null(p_poor);
    const Paygate__V1__Payment *replay = expect_item_paid(items, 8, a, done, 700);
    assert_string_equal(replay->id, earlier); /* the same payment, replayed */
    const Paygate__V1__Payment *pa2 = expect_item_paid(items, 9, a, oa2, 1500);
    expect_item_fails(items, 10, PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_key_reused");
    expect_item_fails(items, 11, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");
    const char *p_cancelled = rpc_status_detail(&items[11].status, "payment_id");
    assert_non_null(p_cancelled);
    const Paygate__V1__Payment *pc = expect_item_paid(items, 12, c, oc, 3000);
    expect_item_fails(items, 13, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated");
    /* four new payments, each its own */
    const char *paid[] = {pa1->id, pa2->id, pb->id, pc->id};
    for (size_t i = 0; i < 4; i++)
        for (size_t j = i + 1; j < 4; j++)
            assert_string_not_equal(paid[i], paid[j]);

    /* the wallets: each lost exactly its succeeded payments */
    db_wallet_expect(a, 20000 - 700 - 1000 - 1500);
    db_wallet_expect(b, 10000 - 2500);
    db_wallet_expect(c, 10000 - 3000);
    db_wallet_expect(poor, 500);
    db_wallet_expect(other, 10000);
    /* the orders: each paid one COMPLETED by its payment, the rest as they were */
    db_order_expect(oa1, "COMPLETED", pa1->id);
    db_order_expect(oa2, "COMPLETED", pa2->id);
    db_order_expect(ob, "COMPLETED", pb->id);
    db_order_expect(oc, "COMPLETED", pc->id);
    db_order_expect(done, "COMPLETED", earlier);
    db_order_expect(cancelled, "CANCELLED", "");
    db_order_expect(untouched, "PENDING", "");
    db_order_expect(op, "PENDING", "");
    db_order_expect(foreign, "PENDING", "");
    /* the payments: one row per (user, key), as answered */
    db_payment_expect(pa1->id, a, oa1, "SUCCEEDED", "");
    db_payment_expect(pa2->id, a, oa2, "SUCCEEDED", "");
    db_payment_expect(pb->id, b, ob, "SUCCEEDED", "");
    db_payment_expect(pc->id, c, oc, "SUCCEEDED", "");
    db_payment_expect(earlier, a, done, "SUCCEEDED", "");
    db_payment_expect(p_done, a, done, "FAILED", "order_not_payable");
    db_payment_expect(p_cancelled, a, cancelled, "FAILED", "order_not_payable");
    db_payment_expect(p_poor, poor, op, "FAILED", "insufficient_funds");
    assert_int_equal(db_key_rows(a, k_done), 1);
    assert_int_equal(db_key_rows(a, k[0]), 1);
    assert_int_equal(db_key_rows(b, k[1]), 1);
    assert_int_equal(db_key_rows(a, k[5]), 1);
    assert_int_equal(db_key_rows(poor, k[6]), 1);
    assert_int_equal(db_key_rows(a, k[7]), 1);
    assert_int_equal(db_key_rows(a, k[8]), 1);
    assert_int_equal(db_key_rows(c, k[9]), 1);
    assert_int_equal(db_key_rows(a, k[2]) + db_key_rows(a, k[3]) + db_key_rows(a, k[4]), 0);
    /* no row for a refused call: a has earlier, oa1, oa2, done, cancelled */
    assert_int_equal(db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", a, NULL),
                     5);
    assert_int_equal(
        db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", other, NULL), 0);
    assert_int_equal(
        db_int("SELECT count(*) FROM payments.payments WHERE order_id = $1", untouched, NULL), 0);
    /* each debit once (the replay moved nothing), none for the failures */
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(
            db_int("SELECT count(*) FROM users.ledger WHERE reference = $1", paid[i], NULL), 1);
    assert_int_equal(db_ledger_rows(a, earlier), 1);
    assert_int_equal(db_ledger_rows(poor, p_poor), 0);
    assert_int_equal(db_ledger_rows(a, p_done), 0);
    assert_int_equal(db_ledger_rows(a, p_cancelled), 0);

    /* driven together: one user.Debit batch, one order.MarkPaid batch,
     * one transaction for the outcomes (not the earlier single call's) */
    char x_first[32], x[32];
    db_debit_xmin(paid[0], x_first);
    for (size_t i = 1; i < 4; i++) {
        db_debit_xmin(paid[i], x);
        assert_string_equal(x, x_first);
    }
    db_debit_xmin(earlier, x);
    assert_string_not_equal(x, x_first);
    const char *paid_orders[] = {oa1, oa2, ob, oc};
    db_text("SELECT xmin::text FROM orders.orders WHERE id = $1", paid_orders[0], x_first);
    for (size_t i = 1; i < 4; i++) {
        db_text("SELECT xmin::text FROM orders.orders WHERE id = $1", paid_orders[i], x);
        assert_string_equal(x, x_first);
    }
    db_text("SELECT xmin::text FROM payments.payments WHERE id = $1", paid[0], x_first);
    for (size_t i = 1; i < 4; i++) {
        db_text("SELECT xmin::text FROM payments.payments WHERE id = $1", paid[i], x);
        assert_string_equal(x, x_first);
    }

    /* every call again, alone: the same answers, and nothing moves */
    for (size_t i = 0; i < n; i++) {
        if (users[i][0] == '\0' || requests[i].idempotency_key[0] == '\0' ||
            requests[i].order_id[0] == '\0')
            continue; /* refused before anything: shown above and in test 4 */
        Paygate__V1__Payment *p = NULL;
        rpc_status_t status;
        Paygate__V1__Code code =
            create_single(users[i], requests[i].order_id, requests[i].idempotency_key, &p, &status);
        if (code != items[i].status.code || strcmp(status.reason, items[i].status.reason) != 0)
            fail_msg("call %zu alone: %d/%s, in the batch %d/%s", i, (int)code, status.reason,
                     (int)items[i].status.code, items[i].status.reason);
        if (code == PAYGATE__V1__CODE__OK) { /* the first answer, field for field */
            const ProtobufCMessage *was_paid = items[i].reply;
            size_t size = protobuf_c_message_get_packed_size(was_paid);
            assert_int_equal(protobuf_c_message_get_packed_size(&p->base), size);
            uint8_t *b1 = malloc(size + 1), *b2 = malloc(size + 1);
            assert_true(b1 != NULL && b2 != NULL);
            protobuf_c_message_pack(was_paid, b1);
            protobuf_c_message_pack(&p->base, b2);
            if (memcmp(b1, b2, size) != 0)
                fail_msg("call %zu: the replay of %s differs from the batch's answer", i, p->id);
            free(b1);
            free(b2);
        } else {
            expect_same_answer("a call of the batch, alone", &status, &items[i].status);
        }
        const char *was = rpc_status_detail(&items[i].status, "payment_id");
        const char *now = rpc_status_detail(&status, "payment_id");
        if (code != PAYGATE__V1__CODE__OK && was != NULL && i != 10)
            assert_string_equal(now != NULL ? now : "", was); /* the recorded failure */
        if (p != NULL)
            protobuf_c_message_free_unpacked(&p->base, NULL);
    }
    db_wallet_expect(a, 20000 - 700 - 1000 - 1500);
    db_wallet_expect(b, 10000 - 2500);
    db_wallet_expect(c, 10000 - 3000);
    db_wallet_expect(poor, 500);
    assert_int_equal(db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", a, NULL),
                     5);
    batch_free(items, n);
}

/* ---- 2. one batch, one key or one order twice ----------------------------- */

/* Two (and three) calls of one user with the same idempotency key and
 * order in one batch: exactly one payment is made and debited once; every
 * call answers that payment (replayed) or idempotency_in_progress, never
 * a second payment. Then two calls of one user for one order with two
 * keys in one batch: the order is paid once; the other payment FAILED
 * order_not_payable, its debit (if made) given back. */
static void test_batch_same_key_or_order_twice(void **state)
{
    (void)state;
    char u[id_bytes_max + 1], v[id_bytes_max + 1];
    user_new(u, "cb-twice");
    user_new(v, "cb-twice-v");
    top_up(u, 10000);
    top_up(v, 10000);

    /* the same call two and three times */
    for (size_t copies = 2; copies <= 3; copies++) {
        char order[id_bytes_max + 1], key[64];
        int64_t amount = 1000 + (int64_t)copies;
        order_new(u, amount, order);
        unique(key, sizeof key, "cb-same");
        Paygate__V1__CreatePaymentRequest requests[3];
        const char *users[3];
        for (size_t i = 0; i < copies; i++) {
            requests[i] = create_request(order, key);
            users[i] = u;
        }
        rpc_batch_item_t items[3];
        create_batch(requests, users, items, copies);
        char payment[id_bytes_max + 1] = "";
        size_t succeeded = 0;
        for (size_t i = 0; i < copies; i++) {
            if (items[i].status.code == PAYGATE__V1__CODE__OK) {
                const Paygate__V1__Payment *p = expect_item_paid(items, i, u, order, amount);
                if (payment[0] == '\0')
                    snprintf(payment, sizeof payment, "%s", p->id);
                assert_string_equal(p->id, payment); /* never a second payment */
                succeeded++;
            } else {
                expect_item_fails(items, i, PAYGATE__V1__CODE__FAILED_PRECONDITION,
                                  "idempotency_in_progress");
            }
        }
        batch_free(items, copies);
        if (succeeded == 0)
            fail_msg("none of %zu copies answered the payment", copies);
        assert_int_equal(db_key_rows(u, key), 1);
        assert_int_equal(db_ledger_rows(u, payment), 1);
        db_order_expect(order, "COMPLETED", payment);
        db_payment_expect(payment, u, order, "SUCCEEDED", "");
        /* and alone later: the same payment */
        Paygate__V1__Payment *p = NULL;
        rpc_status_t status;
        assert_int_equal(create_single(u, order, key, &p, &status), PAYGATE__V1__CODE__OK);
        assert_string_equal(p->id, payment);
        protobuf_c_message_free_unpacked(&p->base, NULL);
    }
    db_wallet_expect(u, 10000 - 1002 - 1003);
    assert_int_equal(db_int("SELECT count(*) FROM users.ledger WHERE user_id = $1"
                            " AND kind = 'DEBIT'",
                            u, NULL),
                     2);

    /* one order, two keys (and another user's payment beside them) */
    char order[id_bytes_max + 1], other_order[id_bytes_max + 1], k1[64], k2[64], kv[64];
    order_new(u, 2000, order);
    order_new(v, 3000, other_order);
    unique(k1, sizeof k1, "cb-order");
    unique(k2, sizeof k2, "cb-order");
    unique(kv, sizeof kv, "cb-order");
    Paygate__V1__CreatePaymentRequest requests[] = {
        create_request(order, k1), create_request(other_order, kv), create_request(order, k2)};
    const char *users[] = {u, v, u};
    rpc_batch_item_t items[3];
    create_batch(requests, users, items, 3);
    expect_item_paid(items, 1, v, other_order, 3000);
    size_t winner = items[0].status.code == PAYGATE__V1__CODE__OK ? 0 : 2;
    size_t loser = 2 - winner;
    const Paygate__V1__Payment *won = expect_item_paid(items, winner, u, order, 2000);
    expect_item_fails(items, loser, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");
    const char *lost = rpc_status_detail(&items[loser].status, "payment_id");
    assert_non_null(lost);
    assert_string_not_equal(lost, won->id);
    db_order_expect(order, "COMPLETED", won->id);
    db_payment_expect(won->id, u, order, "SUCCEEDED", "");
    db_payment_expect(lost, u, order, "FAILED", "order_not_payable");
    assert_int_equal(db_ledger_rows(u, won->id), 1);
    /* the loser's debit, when it was made, was given back */
    int64_t lost_net = db_int("SELECT COALESCE(SUM(amount), 0) FROM users.ledger"
                              " WHERE user_id = $1 AND reference = $2",
                              u, lost);
    assert_int_equal(lost_net, 0);
    assert_int_equal(db_int("SELECT count(*) FROM payments.payments WHERE order_id = $1"
                            " AND status = 'SUCCEEDED'",
                            order, NULL),
                     1);
    db_wallet_expect(u, 10000 - 1002 - 1003 - 2000);
    db_wallet_expect(v, 10000 - 3000);
    batch_free(items, 3);
}

/* ---- 3. through the gateway, concurrently ------------------------------------- */

typedef struct {
    char id[id_bytes_max + 1];
    char token[token_bytes_max];
    int64_t funded;
    int64_t spent;
    int payments;
} http_user_t;

/* One POST /v1/payments of a burst, from its own thread. */
typedef struct {
    http_user_t *user;
    char order[id_bytes_max + 1];
    int64_t amount;
    char key[64];
    pthread_barrier_t *start;
    bool once;               /* no retry: the first answer */
    int expect_status;       /* the HTTP status it must get */
    const char *expect_code; /* and its error code ("" for 201) */
    /* the answer */
    int status;
    int attempts;
    char payment[id_bytes_max + 1];
    char *body; /* the final response's body (malloc'd) */
} http_payer_t;

/* Registers and logs in a user over HTTP. */
static void http_user_new(http_user_t *u, const char *tag)
{
    memset(u, 0, sizeof *u);
    char local[96], body[512];
    unique(local, sizeof local, tag);
    snprintf(body, sizeof body,
             "{\"email\":\"%s@example.com\",\"password\":\"%s\",\"name\":\"Payer\"}", local,
             password);
    http_response_t r;
    if (!http_api_request(&r, g.http_port, "POST", "/v1/users", NULL, NULL, body, NULL) ||
        r.status != 201 || r.json == NULL)
        fail_msg("register: HTTP %d %s: %s", r.status, r.error, r.body ? r.body : "");
    snprintf(u->id, sizeof u->id, "%s", json_string_value(json_object_get(r.json, "id")));
    http_response_free(&r);
    snprintf(body, sizeof body, "{\"email\":\"%s@example.com\",\"password\":\"%s\"}", local,
             password);
    if (!http_api_request(&r, g.http_port, "POST", "/v1/auth/login", NULL, NULL, body, NULL) ||
        r.status != 200 || r.json == NULL)
        fail_msg("login: HTTP %d %s: %s", r.status, r.error, r.body ? r.body : "");
    const char *token = json_string_value(json_object_get(r.json, "access_token"));
    assert_non_null(token);
    snprintf(u->token, sizeof u->token, "%s", token);
    http_response_free(&r);
}

/* Pays p->order with p->key once all payers are ready, retrying the same
 * key while the payment is still processing (a 5xx, a lost connection or
 * idempotency_in_progress), as a client would. */
static void *http_payer_main(void *arg)
{
    http_payer_t *p = arg;
    char body[128];
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", p->order);
    pthread_barrier_wait(p->start);
    free(p->body);
    p->body = NULL;
    p->status = 0;
    for (p->attempts = 1; p->attempts <= retry_attempts_max; p->attempts++) {
        http_response_t r;
        bool answered = http_api_request(&r, g.http_port, "POST", "/v1/payments", p->user->token,
                                         p->key, body, NULL);
        const char *code = NULL;
        if (answered && r.json != NULL)
            code = json_string_value(json_object_get(json_object_get(r.json, "error"), "code"));
        bool again = !answered || r.status >= 500 ||
                     (code != NULL && strcmp(code, "idempotency_in_progress") == 0);
        if (!again || p->once) {
            p->status = r.status;
            const char *id = r.json ? json_string_value(json_object_get(r.json, "id")) : NULL;
            snprintf(p->payment, sizeof p->payment, "%s", id ? id : "");
            p->body = strdup(r.body ? r.body : "");
            http_response_free(&r);
            return NULL;
        }
        http_response_free(&r);
        sleep_ms(200);
    }
    return NULL;
}

/* Runs the payers of 'ps' at once. */
static void http_payers_run(http_payer_t *ps, size_t count)
{
    pthread_t threads[http_burst];
    pthread_barrier_t start;
    assert_true(count <= http_burst);
    assert_int_equal(pthread_barrier_init(&start, NULL, (unsigned)count), 0);
    for (size_t i = 0; i < count; i++) {
        ps[i].start = &start;
        assert_int_equal(pthread_create(&threads[i], NULL, http_payer_main, &ps[i]), 0);
    }
    for (size_t i = 0; i < count; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);
}

/* The JSON of response body 'body' without its error's request_id (which
 * is per request); the caller json_decref()s. */
static json_t *json_without_request_id(const char *body)
{
    json_t *json = json_loads(body, 0, NULL);
    if (json == NULL)
        fail_msg("not JSON: %s", body);
    json_t *error = json_object_get(json, "error");
    if (error != NULL)
        json_object_del(error, "request_id");
    return json;
}

/* 16 POST /v1/payments at once (each its own order; 6 users, so that
 * payments of one wallet meet in one batch), which the gateway's route
 * callers send as batch.Create, and among them 4 that fail (a wallet too
 * poor: 402; an order paid before and a cancelled one: 409; another
 * user's order: 404): every good one 201 SUCCEEDED, each order COMPLETED
 * by its payment, each wallet lost exactly its payments, each failure its
 * own error. Then the same 20 requests again at once, with the same
 * Idempotency-Keys: the same responses (same payment ids; the errors
 * but for their request_id), and no money moves. */
static void test_gateway_concurrent_payments(void **state)
{
    (void)state;
    static http_user_t users[http_users + 1]; /* the last one: too poor */
    static http_payer_t ps[http_burst];
    memset(ps, 0, sizeof ps);
    int64_t rows[http_users + 1] = {0}; /* payment rows each user will have */
    for (size_t i = 0; i <= http_users; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "cb-http%zu", i);
        http_user_new(&users[i], tag);
    }
    for (size_t t = 0; t < http_payers; t++) {
        http_payer_t *p = &ps[t];
        p->user = &users[t % http_users];
        p->amount = 1000 + 37 * (int64_t)t;
        p->expect_status = 201;
        p->expect_code = "";
        order_new(p->user->id, p->amount, p->order);
        unique(p->key, sizeof p->key, "cb-http");
        p->user->spent += p->amount;
        p->user->payments++;
        rows[t % http_users]++;
    }
    /* the failures */
    http_user_t *poor = &users[http_users];
    http_payer_t *f = &ps[http_payers];
    f[0] = (http_payer_t){
        .user = poor, .amount = 5000, .expect_status = 402, .expect_code = "insufficient_funds"};
    order_new(poor->id, f[0].amount, f[0].order);
    rows[http_users]++;
    f[1] = (http_payer_t){
        .user = &users[0], .amount = 900, .expect_status = 409, .expect_code = "order_not_payable"};
    order_new(users[0].id, f[1].amount, f[1].order);
    rows[0] += 2; /* the payment before, and the failed one */
    f[2] = (http_payer_t){
        .user = &users[1], .amount = 800, .expect_status = 404, .expect_code = "order_not_found"};
    order_new(users[2].id, f[2].amount, f[2].order); /* users[2]'s */
    f[3] = (http_payer_t){
        .user = &users[3], .amount = 700, .expect_status = 409, .expect_code = "order_not_payable"};
    order_new(users[3].id, f[3].amount, f[3].order);
    order_cancel(users[3].id, f[3].order);
    rows[3]++;
    for (size_t i = 0; i < http_failing; i++)
        unique(f[i].key, sizeof f[i].key, "cb-http-fail");
    for (size_t i = 0; i < http_users; i++) {
        users[i].funded = users[i].spent + 5000 + 111 * (int64_t)i; /* enough, and some left */
        top_up(users[i].id, users[i].funded);
    }
    poor->funded = 100;
    top_up(poor->id, poor->funded);
    char key[64], paid_before[id_bytes_max + 1];
    unique(key, sizeof key, "cb-http-before");
    pay_single_ok(users[0].id, f[1].order, key, paid_before);
    users[0].spent += f[1].amount;
    users[0].payments++;

    http_payers_run(ps, http_burst);
    char *first[http_burst];
    char payments[http_payers * (id_bytes_max + 1) + 3] = "{";
    for (size_t t = 0; t < http_burst; t++) {
        http_payer_t *p = &ps[t];
        if (p->status != p->expect_status)
            fail_msg("payment %zu: HTTP %d after %d attempts, expected %d: %s", t, p->status,
                     p->attempts, p->expect_status, p->body ? p->body : "(none)");
        json_t *json = json_loads(p->body, 0, NULL);
        assert_non_null(json);
        if (p->expect_status == 201) {
            assert_string_equal(json_string_value(json_object_get(json, "status")), "SUCCEEDED");
            assert_string_equal(json_string_value(json_object_get(json, "order_id")), p->order);
            assert_string_equal(json_string_value(json_object_get(json, "user_id")), p->user->id);
            assert_int_equal(json_integer_value(json_object_get(json, "amount")), p->amount);
            for (size_t s = 0; s < t; s++)
                assert_string_not_equal(ps[s].payment, p->payment);
            db_order_expect(p->order, "COMPLETED", p->payment);
            db_payment_expect(p->payment, p->user->id, p->order, "SUCCEEDED", "");
            assert_int_equal(db_ledger_rows(p->user->id, p->payment), 1);
            strcat(payments, p->payment);
            strcat(payments, t + 1 < http_payers ? "," : "}");
        } else {
            json_t *error = json_object_get(json, "error");
            const char *code = json_string_value(json_object_get(error, "code"));
            const char *id = json_string_value(json_object_get(error, "payment_id"));
            if (code == NULL || strcmp(code, p->expect_code) != 0)
                fail_msg("payment %zu: expected %s: %s", t, p->expect_code, p->body);
            if (p->expect_status == 404) {
                assert_null(id);
            } else { /* the FAILED payment is named, and nothing moved for it */
                assert_non_null(id);
                db_payment_expect(id, p->user->id, p->order, "FAILED", p->expect_code);
                assert_int_equal(db_ledger_rows(p->user->id, id), 0);
            }
        }
        json_decref(json);
        assert_int_equal(db_key_rows(p->user->id, p->key), p->expect_status == 404 ? 0 : 1);
        first[t] = p->body;
        p->body = NULL;
    }
    db_order_expect(f[0].order, "PENDING", "");
    db_order_expect(f[1].order, "COMPLETED", paid_before);
    db_order_expect(f[2].order, "PENDING", "");
    db_order_expect(f[3].order, "CANCELLED", "");
    for (size_t i = 0; i <= http_users; i++) {
        db_wallet_expect(users[i].id, users[i].funded - users[i].spent);
        assert_int_equal(db_int("SELECT count(*) FROM users.ledger WHERE user_id = $1"
                                " AND kind = 'DEBIT'",
                                users[i].id, NULL),
                         users[i].payments);
        assert_int_equal(
            db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", users[i].id, NULL),
            rows[i]);
    }
    /* how many batches the debits went in (printed, not asserted: it
     * depends on timing whether the payments met in batches) */
    const char *params[] = {payments};
    PGresult *res = db_assert_rows(g.db,
                                   "SELECT count(DISTINCT xmin::text) FROM users.ledger"
                                   " WHERE kind = 'DEBIT' AND reference = ANY($1::text[])",
                                   1, params);
    fprintf(stderr, "%d payments over HTTP: their debits in %s commits\n", (int)http_payers,
            PQgetvalue(res, 0, 0));
    PQclear(res);

    /* the same requests again, at once: the first responses, no money */
    http_payers_run(ps, http_burst);
    for (size_t t = 0; t < http_burst; t++) {
        http_payer_t *p = &ps[t];
        if (p->status != p->expect_status || p->body == NULL)
            fail_msg("replay %zu: HTTP %d: %s, first %s", t, p->status,
                     p->body ? p->body : "(none)", first[t]);
        if (p->expect_status == 201) { /* byte for byte */
            if (strcmp(p->body, first[t]) != 0)
                fail_msg("replay %zu: %s, first %s", t, p->body, first[t]);
        } else {
            json_t *was = json_without_request_id(first[t]);
            json_t *now = json_without_request_id(p->body);
            if (!json_equal(was, now))
                fail_msg("replay %zu: %s, first %s", t, p->body, first[t]);
            json_decref(was);
            json_decref(now);
        }
        free(p->body);
        p->body = NULL;
        free(first[t]);
        assert_int_equal(db_key_rows(p->user->id, p->key), p->expect_status == 404 ? 0 : 1);
    }
    for (size_t i = 0; i <= http_users; i++) {
        db_wallet_expect(users[i].id, users[i].funded - users[i].spent);
        assert_int_equal(
            db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", users[i].id, NULL),
            rows[i]);
    }
}

/* ---- 4. batch and single answers compared --------------------------------- */

/* A way a call fails, made twice: alone and in a batch, each run on
 * state of its own set up alike (failure_setup). */
typedef struct {
    const char *name;
    Paygate__V1__Code code;
    const char *reason;
    bool payment_detail; /* the answer names a payment (a FAILED one) */
} failure_kind_t;

/* The call of kind 'kind' for one run: its user, order and key (into the
 * buffers). */
static void failure_setup(size_t kind, char user[id_bytes_max + 1], char order[id_bytes_max + 1],
                          char key[key_bytes])
{
    unique(key, key_bytes, "cb-cmp");
    switch (kind) {
    case 0: /* no key */
        user_new(user, "cb-cmp");
        order_new(user, 1000, order);
        key[0] = '\0';
        break;
    case 1: /* a key too long (256 characters) */
        user_new(user, "cb-cmp");
        order_new(user, 1000, order);
        memset(key, 'k', 256);
        key[256] = '\0';
        break;
    case 2: /* no such order */
        user_new(user, "cb-cmp");
        assert_true(id_new("ord", order, id_bytes_max + 1));
        break;
    case 3: { /* another user's order */
        char owner[id_bytes_max + 1];
        user_new(user, "cb-cmp");
        user_new(owner, "cb-cmp-owner");
        order_new(owner, 1000, order);
        break;
    }
    case 4: /* a CANCELLED order */
        user_new(user, "cb-cmp");
        top_up(user, 5000);
        order_new(user, 1000, order);
        order_cancel(user, order);
        break;
    case 5: /* too poor */
        user_new(user, "cb-cmp");
        top_up(user, 999);
        order_new(user, 1000, order);
        break;
    case 6: { /* a known key with another order */
        char paid[id_bytes_max + 1], payment[id_bytes_max + 1];
        user_new(user, "cb-cmp");
        top_up(user, 5000);
        order_new(user, 1000, paid);
        pay_single_ok(user, paid, key, payment);
        order_new(user, 1000, order);
        break;
    }
    default: /* 7: a user without a wallet (an id the user service never made) */
        unique(user, id_bytes_max + 1, "usr_nowallet");
        order_new(user, 1000, order);
        break;
    }
}

/* For each way a call fails, the call made alone and the same call (on
 * state set up alike) inside a batch beside two good payments answer the
 * same code, reason, message and details; the good payments succeed. */
static void test_batch_and_single_answers_match(void **state)
{
    (void)state;
    static const failure_kind_t kinds[] = {
        {"no key", PAYGATE__V1__CODE__INVALID_ARGUMENT, "idempotency_key_required", false},
        {"key too long", PAYGATE__V1__CODE__INVALID_ARGUMENT, "idempotency_key_required", false},
        {"no such order", PAYGATE__V1__CODE__NOT_FOUND, "order_not_found", false},
        {"another user's order", PAYGATE__V1__CODE__NOT_FOUND, "order_not_found", false},
        {"cancelled order", PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable", true},
        {"too poor", PAYGATE__V1__CODE__FAILED_PRECONDITION, "insufficient_funds", true},
        {"key reused", PAYGATE__V1__CODE__FAILED_PRECONDITION, "idempotency_key_reused", false},
        {"no wallet", PAYGATE__V1__CODE__FAILED_PRECONDITION, "wallet_not_found", true},
    };
    char good[id_bytes_max + 1];
    user_new(good, "cb-cmp-good");
    top_up(good, 100000);
    for (size_t kind = 0; kind < sizeof kinds / sizeof kinds[0]; kind++) {
        const failure_kind_t *f = &kinds[kind];
        char user[id_bytes_max + 1], order[id_bytes_max + 1], key[key_bytes];

        /* alone */
        failure_setup(kind, user, order, key);
        rpc_status_t single;
        Paygate__V1__Payment *reply = NULL;
        Paygate__V1__Code code = create_single(user, order, key, &reply, &single);
        assert_null(reply);
        if (code != f->code || strcmp(single.reason, f->reason) != 0)
            fail_msg("%s alone: %d/%s (%s), expected %d/%s", f->name, (int)code, single.reason,
                     single.message, (int)f->code, f->reason);
        assert_int_equal(rpc_status_detail(&single, "payment_id") != NULL, f->payment_detail);

        /* in a batch, between two good payments */
        failure_setup(kind, user, order, key);
        char o1[id_bytes_max + 1], o2[id_bytes_max + 1], k1[64], k2[64];
        order_new(good, 500, o1);
        order_new(good, 600, o2);
        unique(k1, sizeof k1, "cb-cmp-good");
        unique(k2, sizeof k2, "cb-cmp-good");
        Paygate__V1__CreatePaymentRequest requests[] = {
            create_request(o1, k1), create_request(order, key), create_request(o2, k2)};
        const char *users[] = {good, user, good};
        rpc_batch_item_t items[3];
        create_batch(requests, users, items, 3);
        expect_item_paid(items, 0, good, o1, 500);
        expect_item_paid(items, 2, good, o2, 600);
        assert_null(items[1].reply);
        expect_same_answer(f->name, &single, &items[1].status);
        const char *failed = rpc_status_detail(&items[1].status, "payment_id");
        if (f->payment_detail) /* the FAILED payment is recorded as such, nothing moved */
            db_payment_expect(failed, user, order, "FAILED", f->reason);
        if (failed != NULL)
            assert_int_equal(db_int("SELECT COALESCE(SUM(amount), 0) FROM users.ledger"
                                    " WHERE reference = $1",
                                    failed, NULL),
                             0);
        batch_free(items, 3);
    }
}

/* ---- 5. a service down under a batch ------------------------------------ */

/* How many times 'needle' occurs in the log of process 'which' so far
 * (its current log file). */
static int log_count(system_process_t which, const char *needle)
{
    FILE *f = fopen(system_process(g.system, which)->log_path, "r");
    if (f == NULL)
        fail_msg("cannot read the %s log", system_process_name(which));
    int count = 0;
    char line[8192];
    while (fgets(line, sizeof line, f) != NULL)
        for (const char *at = strstr(line, needle); at != NULL; at = strstr(at + 1, needle))
            count++;
    fclose(f);
    return count;
}

/* Stops service 'which' and waits until the broker knows no instance. */
static void service_stop(system_process_t which)
{
    assert_true(proc_stop(system_process(g.system, which), system_stop_timeout_ms));
    assert_true(discovery_wait(g.rpc, system_process_name(which), 0, restart_timeout_ms) >= 0);
}

/* Starts service 'which' again and waits until all its instances registered. */
static void service_start(system_process_t which, const char *suffix)
{
    assert_true(system_start_process(g.system, which, suffix));
    assert_true(discovery_wait(g.rpc, system_process_name(which), service_threads,
                               restart_timeout_ms) >= 0);
}

/* Sends the calls 'requests' (of 'user') as one batch again and again,
 * with a pause, until every one is OK (a payment still processing, or
 * its key in progress, answers otherwise), at most recovery_timeout_ms;
 * fails the test on any other answer. Each payment id to 'ids'. */
static void create_batch_until_paid(const Paygate__V1__CreatePaymentRequest *requests,
                                    const char *const *users, size_t count,
                                    char ids[][id_bytes_max + 1])
{
    int64_t start = clock_now_ms();
    for (;;) {
        rpc_batch_item_t items[8];
        assert_true(count <= 8);
        create_batch(requests, users, items, count);
        size_t ok = 0;
        for (size_t i = 0; i < count; i++) {
            const rpc_status_t *st = &items[i].status;
            if (st->code == PAYGATE__V1__CODE__OK) {
                const Paygate__V1__Payment *p = (const Paygate__V1__Payment *)items[i].reply;
                assert_int_equal(p->status, PAYGATE__V1__PAYMENT_STATUS__SUCCEEDED);
                snprintf(ids[i], id_bytes_max + 1, "%s", p->id);
                ok++;
            } else if (!(st->code == PAYGATE__V1__CODE__UNAVAILABLE &&
                         strcmp(st->reason, "payment_processing") == 0) &&
                       !(st->code == PAYGATE__V1__CODE__FAILED_PRECONDITION &&
                         strcmp(st->reason, "idempotency_in_progress") == 0)) {
                fail_msg("call %zu: %d/%s: %s", i, (int)st->code, st->reason, st->message);
            }
        }
        batch_free(items, count);
        if (ok == count)
            return;
        if (clock_now_ms() - start > recovery_timeout_ms)
            fail_msg("%zu of %zu payments still not finished after %d ms", count - ok, count,
                     (int)recovery_timeout_ms);
        sleep_ms(500);
    }
}

/* The order service down: its order.Get batch fails, so every call of a
 * batch goes to the single handler, which answers as alone: UNAVAILABLE
 * order_service_unavailable, and no payment is recorded; once it is back
 * the same calls pay. The user service down: the payments are recorded
 * and their user.Debit batch gets no answer, so they stay PROCESSING (as
 * a single call's payment does, without a wait for a debit each alone)
 * and answer as alone: UNAVAILABLE payment_processing with the payment
 * id; once it is back the same keys give those very payments, SUCCEEDED,
 * each debited once. */
static void test_batch_with_a_service_down(void **state)
{
    (void)state;
    for (size_t round = 0; round < 2; round++) {
        system_process_t down = round == 0 ? system_order : system_user;
        const char *reason = round == 0 ? "order_service_unavailable" : "payment_processing";
        char u[id_bytes_max + 1], orders[3][id_bytes_max + 1], keys[3][64];
        user_new(u, "cb-down");
        top_up(u, 10000);
        for (size_t i = 0; i < 3; i++) {
            order_new(u, 1000 + 100 * (int64_t)i, orders[i]);
            unique(keys[i], sizeof keys[i], "cb-down");
        }
        service_stop(down);

        rpc_status_t single;
        Paygate__V1__Payment *reply = NULL;
        Paygate__V1__Code code = create_single(u, orders[0], keys[0], &reply, &single);
        assert_null(reply);
        if (code != PAYGATE__V1__CODE__UNAVAILABLE || strcmp(single.reason, reason) != 0)
            fail_msg("%s down, alone: %d/%s: %s", system_process_name(down), (int)code,
                     single.reason, single.message);
        Paygate__V1__CreatePaymentRequest requests[3];
        const char *users[3] = {u, u, u};
        for (size_t i = 0; i < 3; i++)
            requests[i] = create_request(orders[i], keys[i]);
        int unanswered = log_count(system_payment, "debits got no answer");
        rpc_batch_item_t items[2];
        create_batch(&requests[1], users, items, 2);
        char named[3][id_bytes_max + 1] = {"", "", ""};
        const char *id = rpc_status_detail(&single, "payment_id");
        snprintf(named[0], sizeof named[0], "%s", id ? id : "");
        for (size_t i = 0; i < 2; i++) {
            expect_same_answer(system_process_name(down), &single, &items[i].status);
            id = rpc_status_detail(&items[i].status, "payment_id");
            snprintf(named[i + 1], sizeof named[i + 1], "%s", id ? id : "");
        }
        batch_free(items, 2);
        if (round == 0) { /* nothing recorded */
            assert_int_equal(
                db_int("SELECT count(*) FROM payments.payments WHERE user_id = $1", u, NULL), 0);
        } else { /* recorded, PROCESSING, nothing paid yet */
            /* the Debit batch got no answer: the two stay PROCESSING as a
             * single call's payment does, without a debit each alone */
            assert_int_equal(log_count(system_payment, "debits got no answer"), unanswered + 1);
            for (size_t i = 1; i < 3; i++) {
                char needle[160];
                snprintf(needle, sizeof needle, "saga %s: debit outcome unknown", named[i]);
                assert_int_equal(log_count(system_payment, needle), 0);
            }
            for (size_t i = 0; i < 3; i++) {
                db_payment_expect(named[i], u, orders[i], "PROCESSING", "");
                db_order_expect(orders[i], "PENDING", "");
            }
        }

        service_start(down, "-back");
        char ids[3][id_bytes_max + 1];
        create_batch_until_paid(requests, users, 3, ids);
        int64_t spent = 0;
        for (size_t i = 0; i < 3; i++) {
            if (round == 1)
                assert_string_equal(ids[i], named[i]); /* the payment recorded before */
            assert_int_equal(db_key_rows(u, keys[i]), 1);
            assert_int_equal(db_ledger_rows(u, ids[i]), 1);
            db_order_expect(orders[i], "COMPLETED", ids[i]);
            db_payment_expect(ids[i], u, orders[i], "SUCCEEDED", "");
            spent += 1000 + 100 * (int64_t)i;
        }
        db_wallet_expect(u, 10000 - spent);
    }
}

/* POSTs p->order with p->key until it is 201 (the same key: a payment
 * still processing answers 503, its key in progress 409), at most
 * recovery_timeout_ms; fails the test on any other answer. */
static void http_pay_until_paid(http_payer_t *p)
{
    char body[128];
    snprintf(body, sizeof body, "{\"order_id\":\"%s\"}", p->order);
    int64_t start = clock_now_ms();
    for (;;) {
        http_response_t r;
        bool answered = http_api_request(&r, g.http_port, "POST", "/v1/payments", p->user->token,
                                         p->key, body, NULL);
        const char *code = NULL;
        if (answered && r.json != NULL)
            code = json_string_value(json_object_get(json_object_get(r.json, "error"), "code"));
        if (answered && r.status == 201) {
            const char *id = json_string_value(json_object_get(r.json, "id"));
            assert_non_null(id);
            snprintf(p->payment, sizeof p->payment, "%s", id);
            assert_string_equal(json_string_value(json_object_get(r.json, "status")), "SUCCEEDED");
            http_response_free(&r);
            return;
        }
        bool again = !answered || r.status >= 500 ||
                     (code != NULL && strcmp(code, "idempotency_in_progress") == 0);
        if (!again)
            fail_msg("POST /v1/payments: HTTP %d: %s", r.status, r.body ? r.body : "");
        http_response_free(&r);
        if (clock_now_ms() - start > recovery_timeout_ms)
            fail_msg("payment of %s not finished after %d ms", p->order, (int)recovery_timeout_ms);
        sleep_ms(500);
    }
}

/* The user service down while 4 payments come through the gateway at
 * once (gathered into batches as they meet): each answers as a single
 * call does, 503 payment_processing naming its payment (recorded
 * PROCESSING), not a 504 for a whole batch; once the service is back, the
 * same keys give those payments, SUCCEEDED, each debited once. */
static void test_gateway_payments_with_the_user_service_down(void **state)
{
    (void)state;
    enum { n = 4 };
    static http_user_t user;
    static http_payer_t ps[n];
    memset(ps, 0, sizeof ps);
    http_user_new(&user, "cb-down-http");
    top_up(user.id, 10000);
    for (size_t i = 0; i < n; i++) {
        ps[i].user = &user;
        ps[i].amount = 1000 + 10 * (int64_t)i;
        ps[i].once = true;
        order_new(user.id, ps[i].amount, ps[i].order);
        unique(ps[i].key, sizeof ps[i].key, "cb-down-http");
    }
    service_stop(system_user);
    http_payers_run(ps, n);
    char named[n][id_bytes_max + 1];
    for (size_t i = 0; i < n; i++) {
        http_payer_t *p = &ps[i];
        json_t *json = p->body ? json_loads(p->body, 0, NULL) : NULL;
        json_t *error = json_object_get(json, "error");
        const char *code = json_string_value(json_object_get(error, "code"));
        const char *id = json_string_value(json_object_get(error, "payment_id"));
        if (p->status != 503 || code == NULL || strcmp(code, "payment_processing") != 0 ||
            id == NULL)
            fail_msg("payment %zu with the user service down: HTTP %d: %s (expected 503"
                     " payment_processing with its payment_id, as alone)",
                     i, p->status, p->body ? p->body : "(none)");
        snprintf(named[i], sizeof named[i], "%s", id);
        json_decref(json);
        free(p->body);
        p->body = NULL;
        db_payment_expect(named[i], user.id, p->order, "PROCESSING", "");
        db_order_expect(p->order, "PENDING", "");
    }
    service_start(system_user, "-back-http");
    int64_t spent = 0;
    for (size_t i = 0; i < n; i++) {
        http_pay_until_paid(&ps[i]);
        assert_string_equal(ps[i].payment, named[i]);
        assert_int_equal(db_key_rows(user.id, ps[i].key), 1);
        assert_int_equal(db_ledger_rows(user.id, named[i]), 1);
        db_order_expect(ps[i].order, "COMPLETED", named[i]);
        spent += ps[i].amount;
    }
    db_wallet_expect(user.id, 10000 - spent);
}

/* ---- 6. a batch's transaction that does not commit ------------------------ */

/* Runs the SQL command 'sql' on the test's connection; fails unless OK. */
static void db_exec(const char *sql)
{
    db_assert_exec(g.db, sql);
}

/* A trigger of the test's own makes the payment service's statements fail
 * for some idempotency keys: inserts of keys "cb-boom*", and the update
 * that records SUCCEEDED for keys "cb-stuck*".
 *
 * The inserts' transaction fails: nothing of it stays, and every call
 * goes to the single handler, which answers each as alone (the two good
 * ones paid, each in its own transaction now; the refused one the error
 * its single call gives, with no row).
 *
 * The outcomes' transaction fails (after the debits and the orders'
 * completion): each payment goes on alone from its recorded step, its
 * calls replayed (no second debit), and the two good ones SUCCEED; the
 * one whose outcome cannot be recorded answers payment_processing with
 * its id, its order completed by it and debited once. Without the
 * trigger the same key then gives that payment SUCCEEDED (its lease
 * taken over, or the recovery loop), and the money adds up. */
static void test_batch_whose_transaction_fails(void **state)
{
    (void)state;
    db_exec("CREATE FUNCTION payments.cb_refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$");
    db_exec("CREATE TRIGGER cb_refuse_insert BEFORE INSERT ON payments.payments FOR EACH ROW"
            " WHEN (NEW.idempotency_key LIKE 'cb-boom%') EXECUTE FUNCTION payments.cb_refuse()");
    db_exec("CREATE TRIGGER cb_refuse_finish BEFORE UPDATE ON payments.payments FOR EACH ROW"
            " WHEN (NEW.status = 'SUCCEEDED' AND NEW.idempotency_key LIKE 'cb-stuck%')"
            " EXECUTE FUNCTION payments.cb_refuse()");
    char u[id_bytes_max + 1], o[7][id_bytes_max + 1], k[7][64];
    user_new(u, "cb-fail");
    top_up(u, 20000);
    const int64_t amount[7] = {1000, 1100, 1200, 1300, 1400, 1500, 1600};
    for (size_t i = 0; i < 7; i++) {
        order_new(u, amount[i], o[i]);
        unique(k[i], sizeof k[i], i == 1 || i == 6 ? "cb-boom" : i == 4 ? "cb-stuck" : "cb-ok");
    }
    const char *users[] = {u, u, u};

    /* the inserts: a refused one alone, then one in a batch of three */
    rpc_status_t single;
    assert_int_equal(create_single(u, o[6], k[6], NULL, &single), PAYGATE__V1__CODE__INTERNAL);
    assert_string_equal(single.reason, "internal_error");
    int inserts_failed = log_count(system_payment, "inserts did not commit");
    Paygate__V1__CreatePaymentRequest first[] = {
        create_request(o[0], k[0]), create_request(o[1], k[1]), create_request(o[2], k[2])};
    rpc_batch_item_t items[3];
    create_batch(first, users, items, 3);
    const Paygate__V1__Payment *p0 = expect_item_paid(items, 0, u, o[0], amount[0]);
    const Paygate__V1__Payment *p2 = expect_item_paid(items, 2, u, o[2], amount[2]);
    expect_item_fails(items, 1, single.code, single.reason);
    assert_int_equal(items[1].status.detail_count, single.detail_count);
    assert_int_equal(log_count(system_payment, "inserts did not commit"), inserts_failed + 1);
    assert_int_equal(db_key_rows(u, k[1]) + db_key_rows(u, k[6]), 0);
    db_order_expect(o[1], "PENDING", "");
    db_order_expect(o[0], "COMPLETED", p0->id);
    db_order_expect(o[2], "COMPLETED", p2->id);
    assert_int_equal(db_ledger_rows(u, p0->id), 1);
    assert_int_equal(db_ledger_rows(u, p2->id), 1);
    char x0[32], x2[32];
    db_debit_xmin(p0->id, x0);
    db_debit_xmin(p2->id, x2);
    assert_string_not_equal(x0, x2); /* paid alone, one after the other */
    db_wallet_expect(u, 20000 - amount[0] - amount[2]);
    batch_free(items, 3);

    /* the outcomes */
    int outcomes_failed = log_count(system_payment, "outcomes did not commit");
    Paygate__V1__CreatePaymentRequest second[] = {
        create_request(o[3], k[3]), create_request(o[4], k[4]), create_request(o[5], k[5])};
    create_batch(second, users, items, 3);
    const Paygate__V1__Payment *p3 = expect_item_paid(items, 0, u, o[3], amount[3]);
    const Paygate__V1__Payment *p5 = expect_item_paid(items, 2, u, o[5], amount[5]);
    expect_item_fails(items, 1, PAYGATE__V1__CODE__UNAVAILABLE, "payment_processing");
    char stuck[id_bytes_max + 1];
    const char *named = rpc_status_detail(&items[1].status, "payment_id");
    assert_non_null(named);
    snprintf(stuck, sizeof stuck, "%s", named);
    assert_int_equal(log_count(system_payment, "outcomes did not commit"), outcomes_failed + 1);
    /* debited together (one Debit batch), then each replayed alone: once */
    char x3[32], x4[32], x5[32];
    db_debit_xmin(p3->id, x3);
    db_debit_xmin(stuck, x4);
    db_debit_xmin(p5->id, x5);
    assert_string_equal(x3, x4);
    assert_string_equal(x3, x5);
    assert_int_equal(db_ledger_rows(u, p3->id), 1);
    assert_int_equal(db_ledger_rows(u, stuck), 1);
    assert_int_equal(db_ledger_rows(u, p5->id), 1);
    db_order_expect(o[3], "COMPLETED", p3->id);
    db_order_expect(o[4], "COMPLETED", stuck);
    db_order_expect(o[5], "COMPLETED", p5->id);
    db_payment_expect(p3->id, u, o[3], "SUCCEEDED", "");
    db_payment_expect(stuck, u, o[4], "PROCESSING", "");
    db_payment_expect(p5->id, u, o[5], "SUCCEEDED", "");
    batch_free(items, 3);

    /* the trigger gone, the same key gives that payment, finished */
    db_exec("DROP FUNCTION payments.cb_refuse() CASCADE");
    char again[1][id_bytes_max + 1];
    create_batch_until_paid(&second[1], users, 1, again);
    assert_string_equal(again[0], stuck);
    db_payment_expect(stuck, u, o[4], "SUCCEEDED", "");
    db_order_expect(o[4], "COMPLETED", stuck);
    assert_int_equal(db_ledger_rows(u, stuck), 1);
    assert_int_equal(db_key_rows(u, k[4]), 1);
    db_wallet_expect(u, 20000 - amount[0] - amount[2] - amount[3] - amount[4] - amount[5]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_answers_each_call),
        cmocka_unit_test(test_batch_same_key_or_order_twice),
        cmocka_unit_test(test_gateway_concurrent_payments),
        cmocka_unit_test(test_batch_and_single_answers_match),
        cmocka_unit_test(test_batch_with_a_service_down),
        cmocka_unit_test(test_gateway_payments_with_the_user_service_down),
        cmocka_unit_test(test_batch_whose_transaction_fails),
    };
    return cmocka_run_group_tests_name("create_batches", tests, group_setup, group_teardown);
}
