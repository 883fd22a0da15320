/*
 * Integration tests of batches (lib/rpc "batch.<Method>", proto/batch.proto)
 * and of the payment service's gathering (services/payment/gather.h):
 * the real paygate-broker, paygate-user, paygate-order and paygate-payment
 * processes (tests/support/system.h, real certificates), on a scratch
 * database of the test PostgreSQL that ./dev test starts
 * (PAYGATE_TEST_PG_DSN; without it the test FAILS, it is never skipped).
 *
 * The services are called over the broker as the payment service calls
 * them (rpc_client_call_batch with principal "payment"); each item's answer
 * must be the one its single call gives, and the database must show every
 * effect exactly once: for every wallet a test touches, balance ==
 * SUM(ledger.amount), replayed in order never below zero.
 *
 * Then payments, many at once from 16 client threads (payment.Create over
 * the broker, as the gateway sends it): every payment gets its own answer
 * and the money adds up, and the payment service's /metrics shows that
 * its calls really were gathered into batches of two or more.
 *
 * Which calls one transaction committed shows in the rows' xmin (the
 * writing transaction's id): a batch's calls share it, calls run again
 * one by one after a failed batch do not. Process logs are kept in
 * $PAYGATE_TEST_LOG_DIR as batches-*.log; the user service's is read to
 * see that a Credit batch whose transaction failed was run again.
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

#include <libpq-fe.h>

#include "curve/curve.h"
#include "http_client.h"
#include "metrics_scrape.h"
#include "id/id.h"
#include "money/money.h"
#include "order.pb-c.h"
#include "payment.pb-c.h"
#include "proc.h"
#include "rpc/rpc.h"
#include "system.h"
#include "db_assert.h"
#include "user.pb-c.h"

/* The services' HS256 key (the user service signs with it): 48 bytes. */
static const char jwt_secret[] = "batches-test-secret-0123456789abcdefghijklmnopqr";
_Static_assert(sizeof jwt_secret - 1 == 48, "the test secret is 48 characters");

enum {
    service_threads = 4,      /* user and order worker instances */
    payment_threads = 16,     /* one per concurrent client: they all run at once */
    call_deadline_ms = 20000, /* the test's calls (ASan, 2 shared cores) */
    ready_timeout_ms = 60000,
    clients = 16,            /* concurrent paying threads */
    client_orders = 6,       /* payments per client, all succeed */
    mixed_orders = 8,        /* payments per client in the mixed run */
    mixed_funded_orders = 4, /* of which the wallet can pay this many */
    retry_attempts_max = 40, /* same-key retries of a payment still processing */
};

static struct {
    system_t *system;
    rpc_client_t *rpc; /* the main thread's */
    PGconn *db;
    atomic_uint counter; /* unique emails, keys and references */
} g;

/* ---- helpers ------------------------------------------------------------ */

/* A unique string "<what>-<pid>-<n>" in 'out' (thread-safe). */
static void unique(char *out, size_t size, const char *what)
{
    unsigned n = atomic_fetch_add(&g.counter, 1) + 1;
    snprintf(out, size, "%s-%d-%u", what, (int)getpid(), n);
}

/* One single call on 'rpc' as 'principal' acting for 'user' (or NULL).
 * On OK '*reply' is set (free with protobuf_c_message_free_unpacked);
 * pass NULL to drop it. */
static Paygate__V1__Code call(rpc_client_t *rpc, const char *service, const char *method,
                              const char *principal, const char *user,
                              const ProtobufCMessage *request,
                              const ProtobufCMessageDescriptor *reply_desc,
                              ProtobufCMessage **reply, rpc_status_t *status)
{
    rpc_call_opts_t opts = {
        .deadline_ms = call_deadline_ms, .user_id = user, .principal = principal};
    ProtobufCMessage *msg = NULL;
    Paygate__V1__Code code =
        rpc_client_call(rpc, service, method, request, reply_desc, &msg, &opts, status);
    if (reply != NULL)
        *reply = msg;
    else if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    return code;
}

/* One batch of 'method' of 'service' as 'principal'; fails the test unless
 * the service ran it (the batch's own code OK). Each item's status and
 * reply are set. */
static void batch(const char *service, const char *method, const char *principal,
                  rpc_batch_item_t *items, size_t count,
                  const ProtobufCMessageDescriptor *reply_desc)
{
    rpc_call_opts_t opts = {.deadline_ms = call_deadline_ms, .principal = principal};
    rpc_status_t status;
    Paygate__V1__Code code =
        rpc_client_call_batch(g.rpc, service, method, items, count, reply_desc, &opts, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("batch.%s of %s: %d/%s: %s", method, service, (int)code, status.reason,
                 status.message);
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

/* Fails unless item 'i' of 'items' answered 'code' with 'reason'. */
static void expect_item_fails(const rpc_batch_item_t *items, size_t i, Paygate__V1__Code code,
                              const char *reason)
{
    if (items[i].status.code != code || strcmp(items[i].status.reason, reason) != 0)
        fail_msg("item %zu: %d/%s (%s), expected %d/%s", i, (int)items[i].status.code,
                 items[i].status.reason, items[i].status.message, (int)code, reason);
    assert_null(items[i].reply);
    assert_true(items[i].status.message[0] != '\0');
}

/* Fails unless item 'i' answered OK with a reply; returns the reply. */
static const ProtobufCMessage *expect_item_ok(const rpc_batch_item_t *items, size_t i)
{
    if (items[i].status.code != PAYGATE__V1__CODE__OK || items[i].reply == NULL)
        fail_msg("item %zu: %d/%s (%s), expected OK", i, (int)items[i].status.code,
                 items[i].status.reason, items[i].status.message);
    return items[i].reply;
}

/* How many times 'needle' occurs in the log of process 'which' so far. */
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

/* ---- users, wallets and orders over RPC ------------------------------ */

/* Registers a new account (unique email from 'tag'); its id to 'id'. */
static void user_new(char id[id_bytes_max + 1], const char *tag)
{
    char local[96], email[128];
    unique(local, sizeof local, tag);
    snprintf(email, sizeof email, "%s@example.com", local);
    Paygate__V1__RegisterRequest request = PAYGATE__V1__REGISTER_REQUEST__INIT;
    request.email = email;
    request.password = (char *)"Batch-Passw0rd-77c1";
    request.name = (char *)"Batcher";
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code = call(g.rpc, "user", "Register", "gateway", NULL, &request.base,
                                  &paygate__v1__user__descriptor, &reply, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("register: %d/%s: %s", (int)code, status.reason, status.message);
    snprintf(id, id_bytes_max + 1, "%s", ((Paygate__V1__User *)reply)->id);
    protobuf_c_message_free_unpacked(reply, NULL);
}

/* Tops up the wallet of 'user' by 'amount' (a new key); returns the
 * balance after. */
static int64_t top_up(const char *user, int64_t amount)
{
    char key[64];
    unique(key, sizeof key, "topup");
    Paygate__V1__TopUpRequest request = PAYGATE__V1__TOP_UP_REQUEST__INIT;
    request.amount = amount;
    request.idempotency_key = key;
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code = call(g.rpc, "user", "TopUp", "gateway", user, &request.base,
                                  &paygate__v1__top_up__descriptor, &reply, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("top up: %d/%s: %s", (int)code, status.reason, status.message);
    int64_t balance = ((Paygate__V1__TopUp *)reply)->balance;
    protobuf_c_message_free_unpacked(reply, NULL);
    return balance;
}

/* A single Debit or Credit of 'amount' with 'reference' for 'user' as the
 * payment service; fails the test unless OK. Returns the movement (the
 * caller frees it). */
static Paygate__V1__WalletMovement *move_ok(const char *method, const char *user, int64_t amount,
                                            const char *reference)
{
    Paygate__V1__WalletMovementRequest request = PAYGATE__V1__WALLET_MOVEMENT_REQUEST__INIT;
    request.user_id = (char *)user;
    request.amount = amount;
    request.reference = (char *)reference;
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code = call(g.rpc, "user", method, "payment", user, &request.base,
                                  &paygate__v1__wallet_movement__descriptor, &reply, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("%s: %d/%s: %s", method, (int)code, status.reason, status.message);
    return (Paygate__V1__WalletMovement *)reply;
}

/* Creates an order of 'amount' for 'user'; its id to 'id'. */
static void order_new(rpc_client_t *rpc, const char *user, int64_t amount,
                      char id[id_bytes_max + 1])
{
    Paygate__V1__CreateOrderRequest request = PAYGATE__V1__CREATE_ORDER_REQUEST__INIT;
    request.amount = amount;
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code = call(rpc, "order", "Create", "gateway", user, &request.base,
                                  &paygate__v1__order__descriptor, &reply, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("create order: %d/%s: %s", (int)code, status.reason, status.message);
    snprintf(id, id_bytes_max + 1, "%s", ((Paygate__V1__Order *)reply)->id);
    protobuf_c_message_free_unpacked(reply, NULL);
}

/* Order 'id' of 'user' by a single Get (must be OK); the caller frees it. */
static Paygate__V1__Order *order_get(const char *user, const char *id)
{
    Paygate__V1__GetOrderRequest request = PAYGATE__V1__GET_ORDER_REQUEST__INIT;
    request.id = (char *)id;
    ProtobufCMessage *reply = NULL;
    rpc_status_t status;
    Paygate__V1__Code code = call(g.rpc, "order", "Get", "gateway", user, &request.base,
                                  &paygate__v1__order__descriptor, &reply, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("get order %s: %d/%s: %s", id, (int)code, status.reason, status.message);
    return (Paygate__V1__Order *)reply;
}

/* Fails unless order 'id' of 'user' has 'status' and 'payment_id'. */
static void expect_order(const char *user, const char *id, Paygate__V1__OrderStatus status,
                         const char *payment_id)
{
    Paygate__V1__Order *order = order_get(user, id);
    if (order->status != status || strcmp(order->payment_id, payment_id) != 0)
        fail_msg("order %s: status %d payment '%s', expected %d '%s'", id, (int)order->status,
                 order->payment_id, (int)status, payment_id);
    protobuf_c_message_free_unpacked(&order->base, NULL);
}

/* A single MarkPaid of order 'id' of 'user' by 'payment_id'; must be OK. */
static void mark_paid_ok(const char *user, const char *id, const char *payment_id)
{
    Paygate__V1__MarkPaidRequest request = PAYGATE__V1__MARK_PAID_REQUEST__INIT;
    request.order_id = (char *)id;
    request.payment_id = (char *)payment_id;
    request.user_id = (char *)user;
    rpc_status_t status;
    Paygate__V1__Code code = call(g.rpc, "order", "MarkPaid", "payment", user, &request.base,
                                  &paygate__v1__order__descriptor, NULL, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("mark paid %s: %d/%s: %s", id, (int)code, status.reason, status.message);
}

/* ---- the database --------------------------------------------------------- */

/* The single integer 'sql' returns for parameters 'a' and 'b' (b may be
 * NULL: one parameter). */
static int64_t db_int(const char *sql, const char *a, const char *b)
{
    const char *params[] = {a, b};
    return db_assert_int(g.db, sql, b != NULL ? 2 : 1, params);
}

/* How many ledger rows of 'user' carry 'reference'. */
static int64_t db_ledger_rows(const char *user, const char *reference)
{
    return db_int("SELECT count(*) FROM users.ledger WHERE user_id = $1 AND reference = $2", user,
                  reference);
}

/* The transaction that wrote the ledger row of 'user' with 'reference'
 * (its xmin) into 'out': rows written by one transaction share it. */
static void db_ledger_xmin(const char *user, const char *reference, char out[32])
{
    const char *params[] = {user, reference};
    PGresult *res = db_assert_rows(
        g.db, "SELECT xmin::text FROM users.ledger WHERE user_id = $1 AND reference = $2", 2,
        params);
    if (PQntuples(res) != 1)
        fail_msg("wallet %s: %d ledger rows %s, expected one", user, PQntuples(res), reference);
    snprintf(out, 32, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* The transaction that last wrote order 'id' (its xmin) into 'out'. */
static void db_order_xmin(const char *id, char out[32])
{
    const char *params[] = {id};
    PGresult *res =
        db_assert_rows(g.db, "SELECT xmin::text FROM orders.orders WHERE id = $1", 1, params);
    assert_int_equal(PQntuples(res), 1);
    snprintf(out, 32, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* ---- processes ------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    char deadline[64];
    snprintf(deadline, sizeof deadline, "PAYGATE_PAYMENT_CALL_DEADLINE_MS=%d", 10000);
    const char *payment_env[] = {deadline, NULL};
    const char *env[] = {"PAYGATE_LOG_LEVEL=info", NULL};
    /* No gateway: the test speaks to the services through the broker, as
     * the gateway and the payment service do. Ready when every instance
     * registered, so that concurrent payments really run at once. */
    system_config_t config = {
        .name = "batches",
        .processes =
            SYSTEM_ONLY(system_user) | SYSTEM_ONLY(system_order) | SYSTEM_ONLY(system_payment),
        .jwt_secret = jwt_secret,
        .metrics = true,
        .threads = {[system_user] = service_threads,
                    [system_order] = service_threads,
                    [system_payment] = payment_threads},
        .ready_timeout_ms = ready_timeout_ms,
        .env = env,
        .process_env = {[system_payment] = payment_env},
    };
    g.system = system_new(&config);
    if (g.system == NULL)
        return -1;
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

/* ---- tests: user.Debit / user.Credit in batches ------------------------ */

/* A movement request for a batch item. */
static Paygate__V1__WalletMovementRequest movement(const char *user, int64_t amount,
                                                   const char *reference)
{
    Paygate__V1__WalletMovementRequest request = PAYGATE__V1__WALLET_MOVEMENT_REQUEST__INIT;
    request.user_id = (char *)user;
    request.amount = amount;
    request.reference = (char *)reference;
    return request;
}

/* Fails unless item 'i' is the movement of 'kind' of 'amount' for 'user'
 * with 'reference', leaving 'balance_after', replayed or not. Returns its
 * ledger id. */
static int64_t expect_movement(const rpc_batch_item_t *items, size_t i, const char *kind,
                               const char *user, int64_t amount, const char *reference,
                               int64_t balance_after, bool replayed)
{
    const Paygate__V1__WalletMovement *m =
        (const Paygate__V1__WalletMovement *)expect_item_ok(items, i);
    assert_string_equal(m->kind, kind);
    assert_string_equal(m->user_id, user);
    assert_string_equal(m->reference, reference);
    if (m->amount != amount || m->balance_after != balance_after || m->replayed != replayed)
        fail_msg("item %zu: amount %" PRId64 " balance_after %" PRId64
                 " replayed %d, expected %" PRId64 " %" PRId64 " %d",
                 i, m->amount, m->balance_after, (int)m->replayed, amount, balance_after,
                 (int)replayed);
    assert_true(m->ledger_id > 0);
    return m->ledger_id;
}

/* One batch of debits mixing every answer a debit has: a good one, an
 * insufficient-funds one (with its balance detail), a user without a
 * wallet, two debits of one user (the second sees the first), a replay of
 * an earlier single debit and a replay of an earlier item of the same
 * batch, that item's reference with another amount, and a debit whose
 * window closed. Each answer is its single call's; nothing is applied
 * twice. */
static void test_user_debit_batch_answers_each_call(void **state)
{
    (void)state;
    char a[id_bytes_max + 1], b[id_bytes_max + 1], c[id_bytes_max + 1], nobody[id_bytes_max + 1];
    user_new(a, "bdebit-a");
    user_new(b, "bdebit-b");
    user_new(c, "bdebit-c");
    unique(nobody, sizeof nobody, "usr_nowallet");
    assert_int_equal(top_up(a, 10000), 10000);
    assert_int_equal(top_up(b, 1000), 1000);
    assert_int_equal(top_up(c, 5000), 5000);
    char ra1[64], ra2[64], rb[64], rc[64], rn[64], rw[64];
    unique(ra1, sizeof ra1, "pay-a1");
    unique(ra2, sizeof ra2, "pay-a2");
    unique(rb, sizeof rb, "pay-b");
    unique(rc, sizeof rc, "pay-c");
    unique(rn, sizeof rn, "pay-n");
    unique(rw, sizeof rw, "pay-w");
    /* an earlier debit, by a single call */
    Paygate__V1__WalletMovement *earlier = move_ok("Debit", c, 700, rc);
    assert_false(earlier->replayed);
    assert_int_equal(earlier->balance_after, 4300);
    int64_t earlier_ledger = earlier->ledger_id;
    protobuf_c_message_free_unpacked(&earlier->base, NULL);

    Paygate__V1__WalletMovementRequest requests[] = {
        movement(a, 3000, ra1),   /* 0: good */
        movement(b, 5000, rb),    /* 1: insufficient funds */
        movement(nobody, 10, rn), /* 2: no wallet */
        movement(a, 2000, ra2),   /* 3: the same user again */
        movement(c, 700, rc),     /* 4: a replay of the earlier single debit */
        movement(a, 3000, ra1),   /* 5: a replay of item 0 */
        movement(a, 999, ra1),    /* 6: item 0's reference, another amount */
        movement(c, 100, rw),     /* 7: its window closed long ago (below) */
    };
    requests[7].not_after_ms = 1000; /* 1970 */
    const char *users[] = {a, b, nobody, a, c, a, a, c};
    enum { n = sizeof requests / sizeof requests[0] };
    rpc_batch_item_t items[n];
    for (size_t i = 0; i < n; i++)
        items[i] = (rpc_batch_item_t){.request = &requests[i].base, .user_id = users[i]};
    batch("user", "Debit", "payment", items, n, &paygate__v1__wallet_movement__descriptor);

    int64_t first = expect_movement(items, 0, "DEBIT", a, 3000, ra1, 7000, false);
    expect_item_fails(items, 1, PAYGATE__V1__CODE__FAILED_PRECONDITION, "insufficient_funds");
    assert_non_null(rpc_status_detail(&items[1].status, "balance"));
    assert_string_equal(rpc_status_detail(&items[1].status, "balance"), "1000");
    expect_item_fails(items, 2, PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found");
    int64_t second = expect_movement(items, 3, "DEBIT", a, 2000, ra2, 5000, false);
    assert_true(second > first);
    assert_int_equal(expect_movement(items, 4, "DEBIT", c, 700, rc, 4300, true), earlier_ledger);
    assert_int_equal(expect_movement(items, 5, "DEBIT", a, 3000, ra1, 7000, true), first);
    expect_item_fails(items, 6, PAYGATE__V1__CODE__ALREADY_EXISTS, "reference_reused");
    expect_item_fails(items, 7, PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "debit_window_closed");
    batch_free(items, n);

    assert_int_equal(db_assert_wallet(g.db, a), 5000);
    assert_int_equal(db_assert_wallet(g.db, b), 1000);
    assert_int_equal(db_assert_wallet(g.db, c), 4300);
    assert_int_equal(db_ledger_rows(a, ra1), 1);
    assert_int_equal(db_ledger_rows(a, ra2), 1);
    assert_int_equal(db_ledger_rows(b, rb), 0);
    assert_int_equal(db_ledger_rows(c, rc), 1);
    assert_int_equal(db_ledger_rows(c, rw), 0);
    assert_int_equal(db_int("SELECT count(*) FROM users.ledger WHERE user_id = $1", nobody, NULL),
                     0);
    /* the batch's debits were one transaction (one commit), not the
     * earlier single call's */
    char x1[32], x2[32], xc[32];
    db_ledger_xmin(a, ra1, x1);
    db_ledger_xmin(a, ra2, x2);
    db_ledger_xmin(c, rc, xc);
    assert_string_equal(x1, x2);
    assert_string_not_equal(x1, xc);

    /* the refused debit left no trace: its reference works now, alone */
    Paygate__V1__WalletMovement *later = move_ok("Debit", b, 400, rb);
    assert_false(later->replayed);
    assert_int_equal(later->balance_after, 600);
    protobuf_c_message_free_unpacked(&later->base, NULL);
    assert_int_equal(db_assert_wallet(g.db, b), 600);
}

/* The gateway's principal may not move money, in a batch as alone: every
 * item is PERMISSION_DENIED and nothing moves. */
static void test_user_batch_refuses_the_gateway(void **state)
{
    (void)state;
    char a[id_bytes_max + 1];
    user_new(a, "bgw");
    assert_int_equal(top_up(a, 2000), 2000);
    char r1[64], r2[64];
    unique(r1, sizeof r1, "pay-gw");
    unique(r2, sizeof r2, "pay-gw");
    const char *methods[] = {"Debit", "Credit"};
    for (size_t m = 0; m < 2; m++) {
        Paygate__V1__WalletMovementRequest requests[] = {movement(a, 100, r1),
                                                         movement(a, 200, r2)};
        rpc_batch_item_t items[2];
        for (size_t i = 0; i < 2; i++)
            items[i] = (rpc_batch_item_t){.request = &requests[i].base, .user_id = a};
        batch("user", methods[m], "gateway", items, 2, &paygate__v1__wallet_movement__descriptor);
        expect_item_fails(items, 0, PAYGATE__V1__CODE__PERMISSION_DENIED, "internal_only");
        expect_item_fails(items, 1, PAYGATE__V1__CODE__PERMISSION_DENIED, "internal_only");
    }
    assert_int_equal(db_assert_wallet(g.db, a), 2000);
    assert_int_equal(db_ledger_rows(a, r1) + db_ledger_rows(a, r2), 0);
}

/* Gives 'user' (a new, empty wallet) a balance of 'balance' as a top-up
 * of the database's own, ledger row and all, so that the wallet is one
 * credit away from its limit. */
static void db_fill_wallet(const char *user, int64_t balance)
{
    char amount[24], reference[64];
    snprintf(amount, sizeof amount, "%" PRId64, balance);
    unique(reference, sizeof reference, "fill");
    const char *params[] = {user, amount, reference};
    PGresult *res = PQexecParams(
        g.db,
        "WITH w AS (UPDATE users.wallets SET balance = balance + $2::bigint WHERE user_id = $1"
        " RETURNING balance)"
        " INSERT INTO users.ledger (user_id, kind, amount, balance_after, reference)"
        " SELECT $1, 'TOPUP', $2::bigint, balance, $3 FROM w RETURNING id",
        3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        char why[512];
        snprintf(why, sizeof why, "%s", PQerrorMessage(g.db));
        PQclear(res);
        fail_msg("cannot fill wallet %s: %s", user, why);
    }
    PQclear(res);
}

/* A batch of credits in which one statement fails inside the batch's
 * transaction (a credit past the wallet's limit: wallets_balance_check),
 * after another item already credited: the service rolls back and runs
 * each item alone. Every item still gets its single call's answer (the
 * failing one balance_limit), and every credit is applied exactly once. */
static void test_user_batch_falls_back_when_a_statement_fails(void **state)
{
    (void)state;
    char a[id_bytes_max + 1], b[id_bytes_max + 1], rich[id_bytes_max + 1], nobody[id_bytes_max + 1];
    user_new(a, "bfall-a");
    user_new(b, "bfall-b");
    user_new(rich, "bfall-rich");
    unique(nobody, sizeof nobody, "usr_nowallet");
    assert_int_equal(top_up(a, 1000), 1000);
    assert_int_equal(top_up(b, 500), 500);
    const int64_t near_limit = MONEY_BALANCE_MINOR_MAX - 500;
    db_fill_wallet(rich, near_limit);
    assert_int_equal(db_assert_wallet(g.db, rich), near_limit);
    char ra[64], rb[64], rr[64], rn[64], rd[64];
    unique(ra, sizeof ra, "refund-a");
    unique(rb, sizeof rb, "refund-b");
    unique(rr, sizeof rr, "refund-rich");
    unique(rn, sizeof rn, "refund-n");
    unique(rd, sizeof rd, "pay-a");
    int fallbacks_before = log_count(system_user, "Credit calls did not commit");

    Paygate__V1__WalletMovementRequest requests[] = {
        movement(a, 100, ra),     /* 0: good, before the failing statement */
        movement(rich, 600, rr),  /* 1: past the limit: the statement fails */
        movement(a, 100, ra),     /* 2: a replay of item 0 */
        movement(nobody, 10, rn), /* 3: no wallet */
        movement(b, 250, rb),     /* 4: good, after it */
        movement(a, 999, ra),     /* 5: item 0's reference, another amount */
    };
    const char *users[] = {a, rich, a, nobody, b, a};
    enum { n = sizeof requests / sizeof requests[0] };
    rpc_batch_item_t items[n];
    for (size_t i = 0; i < n; i++)
        items[i] = (rpc_batch_item_t){.request = &requests[i].base, .user_id = users[i]};
    batch("user", "Credit", "payment", items, n, &paygate__v1__wallet_movement__descriptor);

    int64_t first = expect_movement(items, 0, "CREDIT", a, 100, ra, 1100, false);
    expect_item_fails(items, 1, PAYGATE__V1__CODE__FAILED_PRECONDITION, "balance_limit");
    assert_int_equal(expect_movement(items, 2, "CREDIT", a, 100, ra, 1100, true), first);
    expect_item_fails(items, 3, PAYGATE__V1__CODE__NOT_FOUND, "wallet_not_found");
    expect_movement(items, 4, "CREDIT", b, 250, rb, 750, false);
    expect_item_fails(items, 5, PAYGATE__V1__CODE__ALREADY_EXISTS, "reference_reused");
    batch_free(items, n);
    /* the batch's transaction really failed and was run again call by call */
    assert_int_equal(log_count(system_user, "Credit calls did not commit"), fallbacks_before + 1);

    assert_int_equal(db_assert_wallet(g.db, a), 1100);
    assert_int_equal(db_assert_wallet(g.db, b), 750);
    assert_int_equal(db_assert_wallet(g.db, rich), near_limit);
    assert_int_equal(db_ledger_rows(a, ra), 1);
    assert_int_equal(db_ledger_rows(b, rb), 1);
    assert_int_equal(db_ledger_rows(rich, rr), 0);
    /* run one by one: a transaction each */
    char xa[32], xb[32];
    db_ledger_xmin(a, ra, xa);
    db_ledger_xmin(b, rb, xb);
    assert_string_not_equal(xa, xb);

    /* and a debit batch after it works in one transaction again */
    Paygate__V1__WalletMovementRequest debits[] = {movement(a, 100, rd), movement(b, 50, rd)};
    rpc_batch_item_t more[2] = {{.request = &debits[0].base, .user_id = a},
                                {.request = &debits[1].base, .user_id = b}};
    batch("user", "Debit", "payment", more, 2, &paygate__v1__wallet_movement__descriptor);
    expect_movement(more, 0, "DEBIT", a, 100, rd, 1000, false);
    expect_movement(more, 1, "DEBIT", b, 50, rd, 700, false);
    batch_free(more, 2);
    db_ledger_xmin(a, rd, xa);
    db_ledger_xmin(b, rd, xb);
    assert_string_equal(xa, xb);
    assert_int_equal(db_assert_wallet(g.db, a), 1000);
    assert_int_equal(db_assert_wallet(g.db, b), 700);
}

/* Debit's batch code: five debits of one wallet and one of another in
 * one batch are one transaction, each seeing the balance the one before
 * it left; and when one of a batch's statements fails, nothing of the
 * batch happens and each debit goes alone, the good ones made and the
 * failing one refused. */
static void test_user_debit_batch_one_wallet_often_and_a_failing_statement(void **state)
{
    (void)state;
    char a[id_bytes_max + 1], b[id_bytes_max + 1], c[id_bytes_max + 1];
    user_new(a, "bmany-a");
    user_new(b, "bmany-b");
    user_new(c, "bmany-c");
    assert_int_equal(top_up(a, 10000), 10000);
    assert_int_equal(top_up(b, 10000), 10000);
    assert_int_equal(top_up(c, 10000), 10000);

    /* 1. a's five debits and one of b's */
    enum { n = 6 };
    char r[n][64];
    for (size_t i = 0; i < n; i++)
        unique(r[i], sizeof r[i], "pay-many");
    Paygate__V1__WalletMovementRequest requests[n];
    const char *users[n];
    rpc_batch_item_t items[n];
    for (size_t i = 0; i < n; i++) {
        users[i] = i == 2 ? b : a;
        requests[i] = movement(users[i], 100 * (int64_t)(i + 1), r[i]);
        items[i] = (rpc_batch_item_t){.request = &requests[i].base, .user_id = users[i]};
    }
    batch("user", "Debit", "payment", items, n, &paygate__v1__wallet_movement__descriptor);
    int64_t balance = 10000;
    for (size_t i = 0; i < n; i++) {
        if (i == 2) {
            expect_movement(items, i, "DEBIT", b, 300, r[i], 9700, false);
            continue;
        }
        balance -= 100 * (int64_t)(i + 1);
        expect_movement(items, i, "DEBIT", a, 100 * (int64_t)(i + 1), r[i], balance, false);
    }
    batch_free(items, n);
    assert_int_equal(db_assert_wallet(g.db, a), 10000 - 100 - 200 - 400 - 500 - 600);
    assert_int_equal(db_assert_wallet(g.db, b), 9700);
    char x0[32], x5[32], xb[32];
    db_ledger_xmin(a, r[0], x0);
    db_ledger_xmin(a, r[5], x5);
    db_ledger_xmin(b, r[2], xb);
    assert_string_equal(x0, x5); /* one transaction */
    assert_string_equal(x0, xb);

    /* 2. a statement that fails (a trigger refuses one ledger row) */
    db_assert_exec(g.db, "CREATE FUNCTION users.bmany_refuse() RETURNS trigger LANGUAGE plpgsql AS"
                         " $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$");
    db_assert_exec(
        g.db, "CREATE TRIGGER bmany_refuse BEFORE INSERT ON users.ledger FOR EACH ROW"
              " WHEN (NEW.reference LIKE 'bmany-boom%') EXECUTE FUNCTION users.bmany_refuse()");
    char ra[64], rb[64], rc[64], ra2[64];
    unique(ra, sizeof ra, "bmany-ok");
    unique(rb, sizeof rb, "bmany-boom");
    unique(rc, sizeof rc, "bmany-ok");
    unique(ra2, sizeof ra2, "bmany-ok");
    int64_t a_before = db_assert_wallet(g.db, a), b_before = db_assert_wallet(g.db, b);
    Paygate__V1__WalletMovementRequest more[] = {
        movement(a, 50, ra), movement(b, 60, rb),  /* refused by the trigger */
        movement(c, 70, rc), movement(a, 80, ra2), /* a again */
    };
    const char *more_users[] = {a, b, c, a};
    enum { m = sizeof more / sizeof more[0] };
    rpc_batch_item_t more_items[m];
    for (size_t i = 0; i < m; i++)
        more_items[i] = (rpc_batch_item_t){.request = &more[i].base, .user_id = more_users[i]};
    batch("user", "Debit", "payment", more_items, m, &paygate__v1__wallet_movement__descriptor);
    expect_movement(more_items, 0, "DEBIT", a, 50, ra, a_before - 50, false);
    expect_item_fails(more_items, 1, PAYGATE__V1__CODE__INTERNAL, "internal_error");
    expect_movement(more_items, 2, "DEBIT", c, 70, rc, 9930, false);
    expect_movement(more_items, 3, "DEBIT", a, 80, ra2, a_before - 130, false);
    batch_free(more_items, m);
    db_assert_exec(g.db, "DROP TRIGGER bmany_refuse ON users.ledger");
    db_assert_exec(g.db, "DROP FUNCTION users.bmany_refuse()");
    assert_int_equal(db_assert_wallet(g.db, a), a_before - 130);
    assert_int_equal(db_assert_wallet(g.db, b), b_before);
    assert_int_equal(db_assert_wallet(g.db, c), 9930);
    assert_int_equal(db_ledger_rows(b, rb), 0);
    /* each went alone: a transaction each */
    char xa[32], xa2[32], xc[32];
    db_ledger_xmin(a, ra, xa);
    db_ledger_xmin(a, ra2, xa2);
    db_ledger_xmin(c, rc, xc);
    assert_string_not_equal(xa, xc);
    assert_string_not_equal(xa, xa2);
}

/* ---- tests: order.MarkPaid / order.Get in batches ----------------------- */

/* A MarkPaid request for a batch item. */
static Paygate__V1__MarkPaidRequest mark_paid(const char *user, const char *order,
                                              const char *payment)
{
    Paygate__V1__MarkPaidRequest request = PAYGATE__V1__MARK_PAID_REQUEST__INIT;
    request.order_id = (char *)order;
    request.payment_id = (char *)payment;
    request.user_id = (char *)user;
    return request;
}

/* Fails unless item 'i' answered order 'id' COMPLETED by 'payment'. */
static void expect_completed(const rpc_batch_item_t *items, size_t i, const char *id,
                             const char *payment)
{
    const Paygate__V1__Order *order = (const Paygate__V1__Order *)expect_item_ok(items, i);
    assert_string_equal(order->id, id);
    assert_int_equal(order->status, PAYGATE__V1__ORDER_STATUS__COMPLETED);
    assert_string_equal(order->payment_id, payment);
}

/* A new payment id of the test's own ("pay_" and unique). */
static void payment_id_new(char out[id_bytes_max + 1])
{
    assert_true(id_new("pay", out, id_bytes_max + 1));
}

/* One MarkPaid batch mixing a payable order, an order completed by
 * another payment, a replay of the payment that completed an order, a
 * cancelled order, an order that does not exist and another user's
 * order: each gets its single call's answer and only the payable one
 * changes. */
static void test_order_mark_paid_batch_answers_each_call(void **state)
{
    (void)state;
    char u[id_bytes_max + 1], other[id_bytes_max + 1];
    unique(u, sizeof u, "usr_bmark");
    unique(other, sizeof other, "usr_bmark_other");
    char payable[id_bytes_max + 1], taken[id_bytes_max + 1], replay[id_bytes_max + 1],
        cancelled[id_bytes_max + 1], foreign[id_bytes_max + 1], missing[id_bytes_max + 1];
    order_new(g.rpc, u, 1000, payable);
    order_new(g.rpc, u, 1100, taken);
    order_new(g.rpc, u, 1200, replay);
    order_new(g.rpc, u, 1300, cancelled);
    order_new(g.rpc, other, 1400, foreign);
    assert_true(id_new("ord", missing, sizeof missing));
    char p_new[id_bytes_max + 1], p_taken[id_bytes_max + 1], p_other[id_bytes_max + 1],
        p_replay[id_bytes_max + 1], p_cancel[id_bytes_max + 1], p_foreign[id_bytes_max + 1],
        p_missing[id_bytes_max + 1];
    payment_id_new(p_new);
    payment_id_new(p_taken);
    payment_id_new(p_other);
    payment_id_new(p_replay);
    payment_id_new(p_cancel);
    payment_id_new(p_foreign);
    payment_id_new(p_missing);
    mark_paid_ok(u, taken, p_taken);
    mark_paid_ok(u, replay, p_replay);
    Paygate__V1__CancelOrderRequest cancel = PAYGATE__V1__CANCEL_ORDER_REQUEST__INIT;
    cancel.id = cancelled;
    rpc_status_t status;
    assert_int_equal(call(g.rpc, "order", "Cancel", "gateway", u, &cancel.base,
                          &paygate__v1__order__descriptor, NULL, &status),
                     PAYGATE__V1__CODE__OK);

    Paygate__V1__MarkPaidRequest requests[] = {
        mark_paid(u, payable, p_new),      /* 0: PENDING: completed */
        mark_paid(u, taken, p_other),      /* 1: completed by another payment */
        mark_paid(u, replay, p_replay),    /* 2: the same payment again */
        mark_paid(u, cancelled, p_cancel), /* 3: cancelled */
        mark_paid(u, missing, p_missing),  /* 4: no such order */
        mark_paid(u, foreign, p_foreign),  /* 5: another user's order */
        mark_paid(u, payable, p_new),      /* 6: item 0 again */
        mark_paid(u, payable, p_other),    /* 7: item 0's order, another payment */
    };
    enum { n = sizeof requests / sizeof requests[0] };
    rpc_batch_item_t items[n];
    for (size_t i = 0; i < n; i++)
        items[i] = (rpc_batch_item_t){.request = &requests[i].base, .user_id = u};
    batch("order", "MarkPaid", "payment", items, n, &paygate__v1__order__descriptor);

    expect_completed(items, 0, payable, p_new);
    assert_int_equal(((const Paygate__V1__Order *)items[0].reply)->amount, 1000);
    expect_item_fails(items, 1, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");
    assert_string_equal(rpc_status_detail(&items[1].status, "status"), "COMPLETED");
    expect_completed(items, 2, replay, p_replay);
    expect_item_fails(items, 3, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");
    assert_string_equal(rpc_status_detail(&items[3].status, "status"), "CANCELLED");
    expect_item_fails(items, 4, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    expect_item_fails(items, 5, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    expect_completed(items, 6, payable, p_new);
    expect_item_fails(items, 7, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");
    batch_free(items, n);

    expect_order(u, payable, PAYGATE__V1__ORDER_STATUS__COMPLETED, p_new);
    expect_order(u, taken, PAYGATE__V1__ORDER_STATUS__COMPLETED, p_taken);
    expect_order(u, replay, PAYGATE__V1__ORDER_STATUS__COMPLETED, p_replay);
    expect_order(u, cancelled, PAYGATE__V1__ORDER_STATUS__CANCELLED, "");
    expect_order(other, foreign, PAYGATE__V1__ORDER_STATUS__PENDING, "");

    /* the gateway may not mark orders paid, in a batch as alone */
    char pending[id_bytes_max + 1], p_gw[id_bytes_max + 1];
    order_new(g.rpc, u, 1500, pending);
    payment_id_new(p_gw);
    Paygate__V1__MarkPaidRequest gw = mark_paid(u, pending, p_gw);
    rpc_batch_item_t refused[1] = {{.request = &gw.base, .user_id = u}};
    batch("order", "MarkPaid", "gateway", refused, 1, &paygate__v1__order__descriptor);
    expect_item_fails(refused, 0, PAYGATE__V1__CODE__PERMISSION_DENIED, "internal_only");
    expect_order(u, pending, PAYGATE__V1__ORDER_STATUS__PENDING, "");
}

/* A MarkPaid batch in which one statement fails inside the transaction
 * (a payment id that already completed another order: the UNIQUE
 * orders_payment_id_key) after another order was completed: the order
 * service rolls back and runs each item alone; each answer is its single
 * call's and the orders end as those single calls leave them. */
static void test_order_batch_falls_back_when_a_statement_fails(void **state)
{
    (void)state;
    char u[id_bytes_max + 1];
    unique(u, sizeof u, "usr_bfall");
    char first[id_bytes_max + 1], clash[id_bytes_max + 1], last[id_bytes_max + 1],
        done[id_bytes_max + 1];
    order_new(g.rpc, u, 2000, first);
    order_new(g.rpc, u, 2100, clash);
    order_new(g.rpc, u, 2200, last);
    order_new(g.rpc, u, 2300, done);
    char p_first[id_bytes_max + 1], p_done[id_bytes_max + 1], p_last[id_bytes_max + 1];
    payment_id_new(p_first);
    payment_id_new(p_done);
    payment_id_new(p_last);
    mark_paid_ok(u, done, p_done);

    Paygate__V1__MarkPaidRequest requests[] = {
        mark_paid(u, first, p_first), /* 0: completed, before the failure */
        mark_paid(u, clash, p_done),  /* 1: p_done completed another order */
        mark_paid(u, last, p_last),   /* 2: completed, after it */
        mark_paid(u, done, p_done),   /* 3: a replay */
    };
    enum { n = sizeof requests / sizeof requests[0] };
    rpc_batch_item_t items[n];
    for (size_t i = 0; i < n; i++)
        items[i] = (rpc_batch_item_t){.request = &requests[i].base, .user_id = u};
    batch("order", "MarkPaid", "payment", items, n, &paygate__v1__order__descriptor);

    expect_completed(items, 0, first, p_first);
    expect_item_fails(items, 1, PAYGATE__V1__CODE__FAILED_PRECONDITION, "order_not_payable");
    assert_string_equal(rpc_status_detail(&items[1].status, "payment_id"), p_done);
    expect_completed(items, 2, last, p_last);
    expect_completed(items, 3, done, p_done);
    batch_free(items, n);

    /* run one by one: a transaction each */
    char x_first[32], x_last[32];
    db_order_xmin(first, x_first);
    db_order_xmin(last, x_last);
    assert_string_not_equal(x_first, x_last);
    expect_order(u, first, PAYGATE__V1__ORDER_STATUS__COMPLETED, p_first);
    expect_order(u, clash, PAYGATE__V1__ORDER_STATUS__PENDING, "");
    expect_order(u, last, PAYGATE__V1__ORDER_STATUS__COMPLETED, p_last);
    expect_order(u, done, PAYGATE__V1__ORDER_STATUS__COMPLETED, p_done);
}

/* batch.Get: each item acts for its own user and sees only that user's
 * orders (another user's order is NOT_FOUND, as for a single Get); an
 * item without a user is unauthenticated. */
static void test_order_get_batch_each_user_sees_its_own(void **state)
{
    (void)state;
    char u1[id_bytes_max + 1], u2[id_bytes_max + 1];
    unique(u1, sizeof u1, "usr_bget1");
    unique(u2, sizeof u2, "usr_bget2");
    char o1[id_bytes_max + 1], o2[id_bytes_max + 1];
    order_new(g.rpc, u1, 3100, o1);
    order_new(g.rpc, u2, 3200, o2);
    Paygate__V1__GetOrderRequest r1 = PAYGATE__V1__GET_ORDER_REQUEST__INIT;
    Paygate__V1__GetOrderRequest r2 = PAYGATE__V1__GET_ORDER_REQUEST__INIT;
    r1.id = o1;
    r2.id = o2;
    rpc_batch_item_t items[] = {
        {.request = &r1.base, .user_id = u1}, /* 0: own */
        {.request = &r2.base, .user_id = u2}, /* 1: own */
        {.request = &r2.base, .user_id = u1}, /* 2: u2's order for u1 */
        {.request = &r1.base, .user_id = u2}, /* 3: u1's order for u2 */
        {.request = &r1.base, .user_id = ""}, /* 4: nobody */
    };
    enum { n = sizeof items / sizeof items[0] };
    batch("order", "Get", "payment", items, n, &paygate__v1__order__descriptor);
    const Paygate__V1__Order *got1 = (const Paygate__V1__Order *)expect_item_ok(items, 0);
    assert_string_equal(got1->id, o1);
    assert_string_equal(got1->user_id, u1);
    assert_int_equal(got1->amount, 3100);
    const Paygate__V1__Order *got2 = (const Paygate__V1__Order *)expect_item_ok(items, 1);
    assert_string_equal(got2->id, o2);
    assert_string_equal(got2->user_id, u2);
    assert_int_equal(got2->amount, 3200);
    expect_item_fails(items, 2, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    expect_item_fails(items, 3, PAYGATE__V1__CODE__NOT_FOUND, "order_not_found");
    expect_item_fails(items, 4, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated");
    batch_free(items, n);

    /* a method that is not batchable answers the batch UNIMPLEMENTED */
    Paygate__V1__CreateOrderRequest create = PAYGATE__V1__CREATE_ORDER_REQUEST__INIT;
    create.amount = 100;
    rpc_batch_item_t creates[1] = {{.request = &create.base, .user_id = u1}};
    rpc_call_opts_t opts = {.deadline_ms = call_deadline_ms, .principal = "gateway"};
    rpc_status_t status;
    assert_int_equal(rpc_client_call_batch(g.rpc, "order", "Create", creates, 1,
                                           &paygate__v1__order__descriptor, &opts, &status),
                     PAYGATE__V1__CODE__UNIMPLEMENTED);
    assert_int_equal(creates[0].status.code, PAYGATE__V1__CODE__UNIMPLEMENTED);
    assert_null(creates[0].reply);
}

/* The broker lets only keys trusted to carry an end user's id (gateway,
 * payment, operators: act_for_users) act for a user. A batch carries
 * each call's user inside its body: a key without that right (here the
 * transaction service's) may not act for users that way either, so it
 * cannot read another user's order through batch.Get; the same batch
 * without users is let through (and answered unauthenticated). */
static void test_batch_user_ids_need_the_right_to_act_for_users(void **state)
{
    (void)state;
    char victim[id_bytes_max + 1], order[id_bytes_max + 1], cert[512];
    unique(victim, sizeof victim, "usr_victim");
    order_new(g.rpc, victim, 4100, order);
    const char *dir = getenv("PAYGATE_TEST_CERTS_DIR");
    assert_non_null(dir);
    snprintf(cert, sizeof cert, "%s/transaction.cert_secret", dir);
    curve_identity_t identity;
    assert_true(curve_identity_load(cert, NULL, getenv("PAYGATE_BROKER_CERT"), &identity));
    rpc_client_t *rpc = rpc_client_new_as(NULL, system_broker_endpoint(g.system), &identity);
    assert_non_null(rpc);
    Paygate__V1__GetOrderRequest get = PAYGATE__V1__GET_ORDER_REQUEST__INIT;
    get.id = order;
    rpc_call_opts_t opts = {.deadline_ms = call_deadline_ms};
    rpc_status_t status;

    /* alone: refused by the broker */
    rpc_call_opts_t single = {.deadline_ms = call_deadline_ms, .user_id = victim};
    ProtobufCMessage *reply = NULL;
    assert_int_equal(rpc_client_call(rpc, "order", "Get", &get.base,
                                     &paygate__v1__order__descriptor, &reply, &single, &status),
                     PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_string_equal(status.reason, "user_identity_not_allowed");
    assert_null(reply);

    /* in a batch, next to a call without a user: refused whole */
    rpc_batch_item_t items[] = {{.request = &get.base, .user_id = ""},
                                {.request = &get.base, .user_id = victim}};
    assert_int_equal(rpc_client_call_batch(rpc, "order", "Get", items, 2,
                                           &paygate__v1__order__descriptor, &opts, &status),
                     PAYGATE__V1__CODE__PERMISSION_DENIED);
    assert_string_equal(status.reason, "user_identity_not_allowed");
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(items[i].status.code, PAYGATE__V1__CODE__PERMISSION_DENIED);
        assert_null(items[i].reply);
    }

    /* without users the batch goes through; the order stays unseen */
    rpc_batch_item_t anonymous[] = {{.request = &get.base, .user_id = NULL}};
    assert_int_equal(rpc_client_call_batch(rpc, "order", "Get", anonymous, 1,
                                           &paygate__v1__order__descriptor, &opts, &status),
                     PAYGATE__V1__CODE__OK);
    expect_item_fails(anonymous, 0, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated");
    rpc_client_destroy(&rpc);
}

/* ---- tests: payments gathered ------------------------------------------- */

/* What one client thread pays and what it got. */
typedef struct {
    char user[id_bytes_max + 1];
    int64_t amount; /* of each of its orders (distinct per client) */
    size_t orders;
    char order[mixed_orders][id_bytes_max + 1];
    /* the expected outcome of each payment: "" = SUCCEEDED, else the code */
    const char *expect[mixed_orders];
    /* the answers */
    Paygate__V1__Code code[mixed_orders];
    char reason[mixed_orders][rpc_reason_bytes_max + 1];
    char payment[mixed_orders][id_bytes_max + 1]; /* id answered (reply or detail) */
    char answered_order[mixed_orders][id_bytes_max + 1];
    int64_t answered_amount[mixed_orders];
    char failure[256]; /* a problem the thread met; "" = none */
} client_t;

static pthread_barrier_t start_line;

/* Pays each of c's orders in turn with a fresh key on a client of its
 * own, retrying the same key while the payment is still processing, and
 * records every answer. */
static void *client_run(void *arg)
{
    client_t *c = arg;
    rpc_client_t *rpc = rpc_client_new(NULL, system_broker_endpoint(g.system));
    pthread_barrier_wait(&start_line);
    if (rpc == NULL) {
        snprintf(c->failure, sizeof c->failure, "no RPC client");
        return NULL;
    }
    for (size_t i = 0; i < c->orders; i++) {
        char key[64];
        unique(key, sizeof key, "gather-pay");
        Paygate__V1__CreatePaymentRequest request = PAYGATE__V1__CREATE_PAYMENT_REQUEST__INIT;
        request.order_id = c->order[i];
        request.idempotency_key = key;
        rpc_status_t status;
        ProtobufCMessage *reply = NULL;
        Paygate__V1__Code code = PAYGATE__V1__CODE__UNAVAILABLE;
        for (int attempt = 0; attempt < retry_attempts_max; attempt++) {
            code = call(rpc, "payment", "Create", "gateway", c->user, &request.base,
                        &paygate__v1__payment__descriptor, &reply, &status);
            bool processing = code == PAYGATE__V1__CODE__DEADLINE_EXCEEDED ||
                              code == PAYGATE__V1__CODE__UNAVAILABLE ||
                              (code == PAYGATE__V1__CODE__FAILED_PRECONDITION &&
                               strcmp(status.reason, "idempotency_in_progress") == 0);
            if (!processing)
                break;
            sleep_ms(250); /* the same key again: the payment's outcome */
        }
        c->code[i] = code;
        snprintf(c->reason[i], sizeof c->reason[i], "%s", status.reason);
        if (code == PAYGATE__V1__CODE__OK) {
            const Paygate__V1__Payment *p = (const Paygate__V1__Payment *)reply;
            snprintf(c->payment[i], sizeof c->payment[i], "%s", p->id);
            snprintf(c->answered_order[i], sizeof c->answered_order[i], "%s", p->order_id);
            c->answered_amount[i] =
                p->status == PAYGATE__V1__PAYMENT_STATUS__SUCCEEDED ? p->amount : -1;
            if (strcmp(p->user_id, c->user) != 0)
                snprintf(c->failure, sizeof c->failure, "payment %s answered for user %s", p->id,
                         p->user_id);
            protobuf_c_message_free_unpacked(reply, NULL);
        } else {
            const char *id = rpc_status_detail(&status, "payment_id");
            snprintf(c->payment[i], sizeof c->payment[i], "%s", id ? id : "");
        }
    }
    rpc_client_destroy(&rpc);
    return NULL;
}

/* Runs the clients in 'cs' at once (they start together). */
static void clients_run(client_t *cs, size_t count)
{
    pthread_t threads[clients];
    assert_true(count <= clients);
    assert_int_equal(pthread_barrier_init(&start_line, NULL, (unsigned)count), 0);
    for (size_t i = 0; i < count; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, client_run, &cs[i]), 0);
    for (size_t i = 0; i < count; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start_line);
}

/* The payment service's counter 'name'{kind="'kind'"} (0 when absent). */
static double gathered(const char *text, const char *name, const char *kind)
{
    char key[160];
    snprintf(key, sizeof key, "%s{kind=\"%s\"}", name, kind);
    return metrics_sample(text, key, NULL);
}

/* GET /metrics of the payment service (malloc'd, led by a newline). */
static char *payment_metrics(void)
{
    return metrics_scrape(system_metrics_port(g.system, system_payment), "payment");
}

/* Checks every answer of client 'c' against what it expected, the orders
 * and the payments' rows, and its wallet: 'funded' minus its successes. */
static void client_check(const client_t *c, int64_t funded)
{
    if (c->failure[0] != '\0')
        fail_msg("client %s: %s", c->user, c->failure);
    int64_t paid = 0;
    for (size_t i = 0; i < c->orders; i++) {
        const char *expect = c->expect[i];
        if (expect[0] == '\0') {
            if (c->code[i] != PAYGATE__V1__CODE__OK)
                fail_msg("client %s order %zu: %d/%s, expected SUCCEEDED", c->user, i,
                         (int)c->code[i], c->reason[i]);
            assert_string_equal(c->answered_order[i], c->order[i]);
            assert_int_equal(c->answered_amount[i], c->amount);
            /* the order is COMPLETED by this very payment */
            expect_order(c->user, c->order[i], PAYGATE__V1__ORDER_STATUS__COMPLETED, c->payment[i]);
            paid += c->amount;
        } else {
            if (c->code[i] != PAYGATE__V1__CODE__FAILED_PRECONDITION ||
                strcmp(c->reason[i], expect) != 0)
                fail_msg("client %s order %zu: %d/%s, expected %s", c->user, i, (int)c->code[i],
                         c->reason[i], expect);
            assert_true(strncmp(c->payment[i], "pay_", 4) == 0);
        }
        /* the payment answered is this order's, of this user, as answered */
        const char *params[] = {c->payment[i]};
        PGresult *res = db_assert_rows(g.db,
                                       "SELECT order_id, user_id, status, failure_code, amount"
                                       " FROM payments.payments WHERE id = $1",
                                       1, params);
        assert_int_equal(PQntuples(res), 1);
        assert_string_equal(PQgetvalue(res, 0, 0), c->order[i]);
        assert_string_equal(PQgetvalue(res, 0, 1), c->user);
        assert_string_equal(PQgetvalue(res, 0, 2), expect[0] == '\0' ? "SUCCEEDED" : "FAILED");
        assert_string_equal(PQgetvalue(res, 0, 3), expect);
        assert_int_equal(strtoll(PQgetvalue(res, 0, 4), NULL, 10), c->amount);
        PQclear(res);
        /* exactly one payment succeeded for a paid order, none otherwise */
        int64_t succeeded = db_int("SELECT count(*) FROM payments.payments"
                                   " WHERE order_id = $1 AND status = 'SUCCEEDED'",
                                   c->order[i], NULL);
        assert_int_equal(succeeded, expect[0] == '\0' ? 1 : 0);
        /* the wallet moved once for it at most: the debit carries the payment id */
        assert_int_equal(db_ledger_rows(c->user, c->payment[i]), expect[0] == '\0' ? 1 : 0);
    }
    assert_int_equal(db_assert_wallet(g.db, c->user), funded - paid);
}

/* 16 clients pay 6 fresh orders each at once: every payment SUCCEEDED
 * exactly once with its own answer, each order is COMPLETED by its
 * payment, each wallet lost exactly its payments, and the payment service
 * really gathered its debits (and its other calls) into batches of two
 * or more. */
static void test_concurrent_payments_are_gathered(void **state)
{
    (void)state;
    static client_t cs[clients];
    memset(cs, 0, sizeof cs);
    const int64_t funded = 100000;
    for (size_t t = 0; t < clients; t++) {
        client_t *c = &cs[t];
        user_new(c->user, "gather");
        assert_int_equal(top_up(c->user, funded), funded);
        c->amount = 1000 + (int64_t)t * 7;
        c->orders = client_orders;
        for (size_t i = 0; i < client_orders; i++) {
            order_new(g.rpc, c->user, c->amount, c->order[i]);
            c->expect[i] = "";
        }
    }
    char *before = payment_metrics();
    clients_run(cs, clients);
    char *after = payment_metrics();
    for (size_t t = 0; t < clients; t++)
        client_check(&cs[t], funded);

    const char *kinds[] = {"order_get", "payment_insert", "debit", "mark_paid", "payment_finish"};
    double calls_total = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        double calls = gathered(after, "paygate_payment_gathered_calls_total", kinds[k]) -
                       gathered(before, "paygate_payment_gathered_calls_total", kinds[k]);
        double batches = gathered(after, "paygate_payment_gathered_batches_total", kinds[k]) -
                         gathered(before, "paygate_payment_gathered_batches_total", kinds[k]);
        fprintf(stderr, "gathered %s: %.0f calls in %.0f batches\n", kinds[k], calls, batches);
        /* a batch holds two or more calls, and no more calls than were made */
        assert_true(calls >= 2 * batches);
        assert_true(calls <= clients * client_orders);
        calls_total += calls;
    }
    double debit_calls = gathered(after, "paygate_payment_gathered_calls_total", "debit") -
                         gathered(before, "paygate_payment_gathered_calls_total", "debit");
    double debit_batches = gathered(after, "paygate_payment_gathered_batches_total", "debit") -
                           gathered(before, "paygate_payment_gathered_batches_total", "debit");
    if (!(debit_batches >= 1 && debit_calls > debit_batches))
        fail_msg("debits were not gathered: %.0f calls in %.0f batches", debit_calls,
                 debit_batches);
    assert_true(calls_total > 0);
    /* and the services committed such batches as one transaction: fewer
     * transactions wrote the debits and completed the orders than there
     * were payments */
    char users[clients * (id_bytes_max + 1) + 3] = "{";
    for (size_t t = 0; t < clients; t++) {
        strcat(users, cs[t].user);
        strcat(users, t + 1 < clients ? "," : "}");
    }
    const char *params[] = {users};
    PGresult *res = db_assert_rows(g.db,
                                   "SELECT count(*), count(DISTINCT xmin::text) FROM users.ledger"
                                   " WHERE kind = 'DEBIT' AND user_id = ANY($1::text[])",
                                   1, params);
    int64_t debits = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t debit_commits = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    res = db_assert_rows(g.db,
                         "SELECT count(*), count(DISTINCT xmin::text) FROM orders.orders"
                         " WHERE status = 'COMPLETED' AND user_id = ANY($1::text[])",
                         1, params);
    int64_t completed = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t completed_commits = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    fprintf(stderr,
            "%" PRId64 " debits in %" PRId64 " commits, %" PRId64 " orders completed in %" PRId64
            " commits\n",
            debits, debit_commits, completed, completed_commits);
    assert_int_equal(debits, clients * client_orders);
    assert_int_equal(completed, clients * client_orders);
    assert_true(debit_commits < debits);
    assert_true(completed_commits < completed);
    free(before);
    free(after);
}

/* 16 clients at once, each paying 8 orders of which 2 were already paid
 * by another payment and 2 more than its wallet holds: half the payments
 * fail, in the same gathered batches as the others, and each answer is
 * still its own payment's (the right order, the right reason, the right
 * payment row); the money adds up. */
static void test_concurrent_payments_half_fail_each_answer_its_own(void **state)
{
    (void)state;
    static client_t cs[clients];
    memset(cs, 0, sizeof cs);
    /* the order of each client's payments: S = succeeds, P = paid before,
     * F = no funds left (the wallet holds 4 orders) */
    static const char plan[mixed_orders + 1] = "SPSSSPFF";
    char *before = payment_metrics();
    for (size_t t = 0; t < clients; t++) {
        client_t *c = &cs[t];
        user_new(c->user, "mixed");
        c->amount = 2000 + (int64_t)t * 11;
        assert_int_equal(top_up(c->user, c->amount * mixed_funded_orders),
                         c->amount * mixed_funded_orders);
        c->orders = mixed_orders;
        for (size_t i = 0; i < mixed_orders; i++) {
            order_new(g.rpc, c->user, c->amount, c->order[i]);
            switch (plan[i]) {
            case 'S':
                c->expect[i] = "";
                break;
            case 'P': {
                char other[id_bytes_max + 1];
                payment_id_new(other);
                mark_paid_ok(c->user, c->order[i], other);
                c->expect[i] = "order_not_payable";
                break;
            }
            default:
                c->expect[i] = "insufficient_funds";
            }
        }
    }
    clients_run(cs, clients);
    for (size_t t = 0; t < clients; t++) {
        const client_t *c = &cs[t];
        client_check(c, c->amount * mixed_funded_orders);
        assert_int_equal(db_assert_wallet(g.db, c->user), 0);
        for (size_t i = 0; i < mixed_orders; i++)
            if (plan[i] == 'F')
                expect_order(c->user, c->order[i], PAYGATE__V1__ORDER_STATUS__PENDING, "");
    }
    char *after = payment_metrics();
    double debit_calls = gathered(after, "paygate_payment_gathered_calls_total", "debit") -
                         gathered(before, "paygate_payment_gathered_calls_total", "debit");
    fprintf(stderr, "mixed run: %.0f debits gathered\n", debit_calls);
    free(before);
    free(after);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_user_debit_batch_answers_each_call),
        cmocka_unit_test(test_user_batch_refuses_the_gateway),
        cmocka_unit_test(test_user_batch_falls_back_when_a_statement_fails),
        cmocka_unit_test(test_user_debit_batch_one_wallet_often_and_a_failing_statement),
        cmocka_unit_test(test_order_mark_paid_batch_answers_each_call),
        cmocka_unit_test(test_order_batch_falls_back_when_a_statement_fails),
        cmocka_unit_test(test_order_get_batch_each_user_sees_its_own),
        cmocka_unit_test(test_batch_user_ids_need_the_right_to_act_for_users),
        cmocka_unit_test(test_concurrent_payments_are_gathered),
        cmocka_unit_test(test_concurrent_payments_half_fail_each_answer_its_own),
    };
    return cmocka_run_group_tests_name("batches", tests, group_setup, group_teardown);
}
