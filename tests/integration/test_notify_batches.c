/*
 * The notification service's batches (services/notification/notify.c,
 * store_deliver_many): the real broker (its event bus on disk) and the
 * real paygate-notification, with a redis-server of this test's own (on
 * a free port: the test stops it, and must never stop the Redis other
 * tests share). Money events are published to the bus by the test.
 *
 *   1. Many events at once (published while the service is stopped, so
 *      that it is handed them as batches when it starts): each becomes
 *      exactly one notification (list, seen key, channel), with its text,
 *      the group's lag reaches 0 and nothing was refused.
 *   2. Redis hung (SIGSTOP) while events arrive: the service keeps
 *      running, the events stay unacknowledged and are refused (NACK);
 *      after SIGCONT each is notified exactly once.
 *   3. Redis killed while events arrive, then started again on its port:
 *      the same.
 *   4. A delivery script that fails half-way for one user (an error
 *      reply: their list key holds a string): that event is refused until
 *      the key is repaired, then notified exactly once; the others of its
 *      batch are notified at once.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "clock/clock.h"
#include "events.pb-c.h"
#include "proc.h"
#include "rpc/rpc.h"
#include "system.h"
#include "wire/wire.h"

static const char jwt_secret[] = "notify-batches-test-secret-0123456789abcdefghij";

enum {
    id_bytes = 64,
    events_max = 40,         /* events of one round */
    payload_bytes_max = 512, /* a packed MoneyEvent of this test */
    wait_ms = 60000,         /* for the group to catch up, for Redis to start */
    redis_timeout_s = 10,    /* the test's own Redis commands */
    burst_users = 10,        /* test 1: users, three events each */
    outage_events = 12,      /* tests 2 and 3: events published during the outage */
};

static struct {
    system_t *system;
    proc_t redis;
    int redis_port;
    char redis_port_text[16];
    char env_redis[64];
    rpc_client_t *rpc;
    unsigned round;
} t;

/* ---- the test's Redis ------------------------------------------------------ */

static redisContext *redis_open(void)
{
    struct timeval timeout = {.tv_sec = redis_timeout_s};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", t.redis_port, timeout);
    if (c == NULL || c->err != 0) {
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, timeout);
    return c;
}

/* Starts redis-server on t.redis_port (log "notifyb-redis<suffix>") and
 * waits until it answers PING. */
static bool redis_start(const char *suffix)
{
    static const char *const args_tail[] = {"--bind",       "127.0.0.1", "--save", "",
                                            "--appendonly", "no",        NULL};
    const char *args[16] = {"--port", t.redis_port_text};
    size_t n = 2;
    for (size_t i = 0; args_tail[i] != NULL; i++)
        args[n++] = args_tail[i];
    args[n] = NULL;
    char name[64];
    snprintf(name, sizeof name, "notifyb-redis%s", suffix);
    if (!proc_start_args(&t.redis, name, PAYGATE_REDIS_SERVER_BIN, args, NULL))
        return false;
    int64_t until = clock_now_ms() + wait_ms;
    while (clock_now_ms() < until) {
        if (proc_wait(&t.redis, 0))
            return false; /* exited: see its log */
        redisContext *c = redis_open();
        redisReply *reply = c != NULL ? redisCommand(c, "PING") : NULL;
        bool up = reply != NULL && reply->type == REDIS_REPLY_STATUS;
        if (reply != NULL)
            freeReplyObject(reply);
        if (c != NULL)
            redisFree(c);
        if (up)
            return true;
        sleep_ms(50);
    }
    return false;
}

/* Runs a command on a fresh connection; fails the test when Redis does not
 * answer. Caller frees the reply. */
static redisReply *redis_run(const char *format, ...)
{
    redisContext *c = redis_open();
    if (c == NULL)
        fail_msg("the test's Redis on port %d does not answer", t.redis_port);
    va_list args;
    va_start(args, format);
    redisReply *reply = redisvCommand(c, format, args);
    va_end(args);
    if (reply == NULL)
        fail_msg("Redis: %s", c->errstr);
    redisFree(c);
    return reply;
}

/* ---- the system ------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    t.redis_port = free_tcp_port();
    snprintf(t.redis_port_text, sizeof t.redis_port_text, "%d", t.redis_port);
    if (t.redis_port <= 0 || !redis_start("")) {
        fprintf(stderr, "cannot start redis-server on port %d; see its log\n", t.redis_port);
        proc_kill(&t.redis);
        return -1;
    }
    snprintf(t.env_redis, sizeof t.env_redis, "PAYGATE_REDIS_PORT=%d", t.redis_port);
    /* a refused event comes back soon; the notifier says what it does */
    static const char *const broker_env[] = {"PAYGATE_BROKER_NACK_DELAY_MS=200", NULL};
    static const char *notification_env[] = {NULL, "PAYGATE_LOG_LEVEL=debug", NULL};
    notification_env[0] = t.env_redis;
    system_config_t config = {
        .name = "notifyb",
        .processes = SYSTEM_ONLY(system_broker) | SYSTEM_ONLY(system_notification),
        .jwt_secret = jwt_secret,
        .threads = {[system_notification] = 1},
    };
    config.process_env[system_broker] = broker_env;
    config.process_env[system_notification] = notification_env;
    t.system = system_new(&config);
    if (t.system == NULL) {
        proc_kill(&t.redis);
        return -1;
    }
    t.rpc = rpc_client_new(NULL, system_broker_endpoint(t.system));
    return t.rpc != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    rpc_client_destroy(&t.rpc);
    system_destroy(&t.system);
    proc_signal(&t.redis, SIGCONT); /* in case a test failed while it was stopped */
    proc_stop(&t.redis, 10000);
    return 0;
}

static proc_t *notifier(void)
{
    return system_process(t.system, system_notification);
}

/* ---- the events ------------------------------------------------------------ */

/* One money event of a round, and the notification it must become. */
typedef struct {
    char event_id[id_bytes];
    char user[id_bytes];
    char order[id_bytes];
    char payment[id_bytes];
    const char *topic;
    const char *type; /* the notification's */
    int64_t amount;
    char message[256];
    uint8_t payload[payload_bytes_max];
    size_t payload_len;
} money_t;

static money_t events[events_max];

/* Event 'i' of round 'tag' for user 'user' (a number of the round): a
 * top-up (topic "wallet"), a payment or a refund ("payments") by i % 3,
 * of (10 + i) rupees. */
static void money_new(money_t *m, const char *tag, int i, int user)
{
    memset(m, 0, sizeof *m);
    snprintf(m->event_id, id_bytes, "evt_%s_%d", tag, i);
    snprintf(m->user, id_bytes, "usr_%s_%d", tag, user);
    m->amount = (10 + i) * 100;
    Paygate__V1__MoneyEvent e = PAYGATE__V1__MONEY_EVENT__INIT;
    e.event_id = m->event_id;
    e.user_id = m->user;
    e.amount = m->amount;
    e.currency = (char *)"INR";
    e.occurred_at = (char *)"2026-11-27T10:00:00.000Z";
    e.request_id = (char *)"";
    if (i % 3 == 0) {
        e.type = PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED;
        m->topic = "wallet";
        m->type = "topup.succeeded";
        snprintf(m->message, sizeof m->message, "₹%d has been added to your wallet.", 10 + i);
        e.topup_id = (char *)"top_x";
    } else {
        snprintf(m->order, id_bytes, "ord_%s_%d", tag, i);
        snprintf(m->payment, id_bytes, "pay_%s_%d", tag, i);
        e.order_id = m->order;
        e.payment_id = m->payment;
        m->topic = "payments";
        if (i % 3 == 1) {
            e.type = PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED;
            m->type = "payment.succeeded";
            snprintf(m->message, sizeof m->message,
                     "Your payment of ₹%d for Order #%s is successful.", 10 + i, m->order);
        } else {
            e.type = PAYGATE__V1__MONEY_EVENT_TYPE__REFUND_SUCCEEDED;
            e.refund_id = (char *)"ref_x";
            m->type = "refund.succeeded";
            snprintf(m->message, sizeof m->message,
                     "₹%d has been refunded to your wallet for Order #%s.", 10 + i, m->order);
        }
    }
    m->payload_len = paygate__v1__money_event__get_packed_size(&e);
    assert_true(m->payload_len <= sizeof m->payload);
    paygate__v1__money_event__pack(&e, m->payload);
}

/* Makes 'count' events of a new round, event i for user i % 'users'. */
static void round_new(int count, int users, char tag[32])
{
    assert_true(count <= events_max);
    snprintf(tag, 32, "nb%dr%u", (int)getpid(), t.round++);
    for (int i = 0; i < count; i++)
        money_new(&events[i], tag, i, i % users);
}

/* Publishes events [first, first + count) to the bus, all at once. */
static void publish(int first, int count)
{
    rpc_publish_item_t items[events_max];
    for (int i = 0; i < count; i++) {
        const money_t *m = &events[first + i];
        items[i] = (rpc_publish_item_t){.topic = m->topic,
                                        .event_id = m->event_id,
                                        .key = m->user,
                                        .payload = m->payload,
                                        .payload_len = m->payload_len};
    }
    assert_int_equal(rpc_client_publish_many(t.rpc, items, (size_t)count, 10000), count);
    for (int i = 0; i < count; i++)
        assert_false(items[i].duplicate);
}

/* ---- the consumer group ---------------------------------------------------- */

/* Group "notification" over its two topics, from broker.services/List. */
typedef struct {
    int topics; /* of the two, how many have the group */
    uint64_t end_offset, committed, lag, redelivered, dead_lettered;
    uint32_t in_flight;
} group_t;

static group_t group_now(void)
{
    group_t out = {0};
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    ProtobufCMessage *msg = NULL;
    rpc_call_opts_t opts = {.deadline_ms = 5000};
    rpc_status_t status;
    Paygate__V1__Code code =
        rpc_client_call(t.rpc, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &msg, &opts, &status);
    if (code != PAYGATE__V1__CODE__OK)
        fail_msg("broker.services/List: %s %s", wire_code_name(code), status.message);
    Paygate__V1__ListServicesReply *reply = (Paygate__V1__ListServicesReply *)msg;
    for (size_t i = 0; i < reply->n_topics; i++) {
        const Paygate__V1__TopicInfo *topic = reply->topics[i];
        if (strcmp(topic->name, "payments") != 0 && strcmp(topic->name, "wallet") != 0)
            continue;
        for (size_t k = 0; k < topic->n_groups; k++) {
            const Paygate__V1__GroupInfo *g = topic->groups[k];
            if (strcmp(g->name, "notification") != 0)
                continue;
            out.topics++;
            out.end_offset += topic->end_offset;
            out.committed += g->committed_offset;
            out.lag += g->lag;
            out.in_flight += g->in_flight;
            out.redelivered += g->redelivered;
            out.dead_lettered += g->dead_lettered;
        }
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    return out;
}

/* Waits until the group has acknowledged everything published ('end'
 * events over both topics): lag 0, nothing in flight. */
static group_t group_caught_up(uint64_t end)
{
    int64_t until = clock_now_ms() + wait_ms;
    for (;;) {
        group_t g = group_now();
        if (g.topics == 2 && g.end_offset == end && g.lag == 0 && g.in_flight == 0)
            return g;
        if (clock_now_ms() > until)
            fail_msg("group notification: %d topics, end %llu (want %llu), lag %llu, %u in "
                     "flight after %d ms; see %s",
                     g.topics, (unsigned long long)g.end_offset, (unsigned long long)end,
                     (unsigned long long)g.lag, g.in_flight, wait_ms, notifier()->log_path);
        sleep_ms(100);
    }
}

/* Waits until the group has refused (NACK) or redelivered at least
 * 'count' more deliveries than 'before' shows, the notifier still running
 * all the while. */
static group_t group_refused(const group_t *before, uint64_t count)
{
    int64_t until = clock_now_ms() + wait_ms;
    for (;;) {
        if (proc_wait(notifier(), 0))
            fail_msg("the notification service exited (status 0x%x); see %s",
                     (unsigned)notifier()->exit_status, notifier()->log_path);
        group_t g = group_now();
        if (g.redelivered >= before->redelivered + count)
            return g;
        if (clock_now_ms() > until)
            fail_msg("group notification: %llu redelivered (want %llu more than %llu) after %d ms",
                     (unsigned long long)g.redelivered, (unsigned long long)count,
                     (unsigned long long)before->redelivered, wait_ms);
        sleep_ms(100);
    }
}

/* ---- what Redis holds -------------------------------------------------------- */

/* Asserts that each of events [0, count) is notified exactly once: its
 * seen key is set, its user's list holds it once with its text, and the
 * lists of the round's 'users' hold nothing else. */
static void assert_notified_once(int count, int users)
{
    int found[events_max] = {0};
    int listed = 0;
    for (int u = 0; u < users; u++) {
        redisReply *list = redis_run("LRANGE notifications:user:%s:latest 0 -1", events[u].user);
        assert_int_equal(list->type, REDIS_REPLY_ARRAY);
        for (size_t k = 0; k < list->elements; k++) {
            listed++;
            json_error_t error;
            json_t *n = json_loads(list->element[k]->str, 0, &error);
            if (n == NULL)
                fail_msg("%s holds non-JSON: %s", events[u].user, list->element[k]->str);
            const char *id = json_string_value(json_object_get(n, "id"));
            int i = 0;
            while (i < count && (id == NULL || strcmp(events[i].event_id, id) != 0))
                i++;
            if (i == count)
                fail_msg("%s holds a notification of no event of the round: %s", events[u].user,
                         list->element[k]->str);
            const money_t *m = &events[i];
            found[i]++;
            assert_string_equal(json_string_value(json_object_get(n, "user_id")), m->user);
            assert_string_equal(json_string_value(json_object_get(n, "type")), m->type);
            assert_string_equal(json_string_value(json_object_get(n, "message")), m->message);
            assert_int_equal(json_integer_value(json_object_get(n, "amount")), m->amount);
            assert_string_equal(json_string_value(json_object_get(n, "order_id")), m->order);
            assert_string_equal(json_string_value(json_object_get(n, "payment_id")), m->payment);
            json_decref(n);
        }
        freeReplyObject(list);
    }
    for (int i = 0; i < count; i++) {
        if (found[i] != 1)
            fail_msg("event %s has %d notifications in %s's list", events[i].event_id, found[i],
                     events[i].user);
        redisReply *seen = redis_run("EXISTS notification:seen:%s", events[i].event_id);
        assert_int_equal(seen->type, REDIS_REPLY_INTEGER);
        if (seen->integer != 1)
            fail_msg("notification:seen:%s is not set", events[i].event_id);
        freeReplyObject(seen);
    }
    assert_int_equal(listed, count);
}

/* A subscription to every user's channel (PSUBSCRIBE notifications:user:*). */
static redisContext *channel_open(void)
{
    redisContext *c = redis_open();
    assert_non_null(c);
    redisReply *reply = redisCommand(c, "PSUBSCRIBE notifications:user:*");
    assert_non_null(reply);
    freeReplyObject(reply);
    return c;
}

/* Reads every message the subscription 'c' got so far (a PING through it
 * marks the end: Redis answers in order) and asserts that events [0,
 * count) each came exactly once and nothing else did. Closes 'c'. */
static void channel_assert_once(redisContext *c, int count)
{
    int found[events_max] = {0};
    redisReply *ping = NULL;
    assert_int_equal(redisAppendCommand(c, "PING"), REDIS_OK);
    for (;;) {
        redisReply *reply = NULL;
        if (redisGetReply(c, (void **)&reply) != REDIS_OK || reply == NULL)
            fail_msg("the subscription: %s", c->errstr);
        assert_int_equal(reply->type, REDIS_REPLY_ARRAY);
        const char *kind = reply->element[0]->str;
        if (strcmp(kind, "pong") == 0) {
            ping = reply;
            break;
        }
        assert_string_equal(kind, "pmessage");
        assert_int_equal(reply->elements, 4);
        json_error_t error;
        json_t *n = json_loads(reply->element[3]->str, 0, &error);
        assert_non_null(n);
        const char *id = json_string_value(json_object_get(n, "id"));
        int i = 0;
        while (i < count && (id == NULL || strcmp(events[i].event_id, id) != 0))
            i++;
        if (i == count)
            fail_msg("a message of no event of the round on %s: %s", reply->element[2]->str,
                     reply->element[3]->str);
        char channel[128];
        snprintf(channel, sizeof channel, "notifications:user:%s", events[i].user);
        assert_string_equal(reply->element[2]->str, channel);
        assert_string_equal(json_string_value(json_object_get(n, "message")), events[i].message);
        found[i]++;
        json_decref(n);
        freeReplyObject(reply);
    }
    freeReplyObject(ping);
    redisFree(c);
    for (int i = 0; i < count; i++)
        if (found[i] != 1)
            fail_msg("event %s came %d times on its channel", events[i].event_id, found[i]);
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

/* ---- tests ----------------------------------------------------------------- */

/* 30 events of 10 users, published while the service is stopped: it is
 * handed them together when it starts. Each is notified exactly once,
 * the group acknowledges all without a refusal, and each delivery script
 * ran once (Redis's own count of EVAL calls). */
static void test_many_at_once(void **state)
{
    (void)state;
    char tag[32];
    int count = burst_users * 3;
    round_new(count, burst_users, tag);
    assert_true(proc_stop(notifier(), system_stop_timeout_ms));
    group_t before = group_now();
    redisReply *reset = redis_run("CONFIG RESETSTAT");
    freeReplyObject(reset);
    redisContext *channel = channel_open();

    publish(0, count);
    assert_true(system_start_process(t.system, system_notification, "-many"));
    group_t after = group_caught_up(before.end_offset + (uint64_t)count);
    assert_int_equal(after.committed, after.end_offset);
    assert_int_equal(after.redelivered, before.redelivered);
    assert_int_equal(after.dead_lettered, before.dead_lettered);

    assert_notified_once(count, burst_users);
    channel_assert_once(channel, count);
    redisReply *stats = redis_run("INFO commandstats");
    assert_int_equal(stats->type, REDIS_REPLY_STRING);
    const char *eval = strstr(stats->str, "cmdstat_eval:calls=");
    if (eval == NULL || atoi(eval + strlen("cmdstat_eval:calls=")) != count)
        fail_msg("want %d delivery scripts run, Redis says: %.60s", count, eval ? eval : "none");
    freeReplyObject(stats);
}

/* Redis stops answering (SIGSTOP: connections hang, commands time out)
 * while 'outage_events' events arrive: the service keeps running and
 * refuses them (lag stays, NACKs counted as redelivered); once Redis runs
 * again (SIGCONT), each is notified exactly once, also those whose
 * scripts Redis had read before it stopped and ran after. */
static void test_redis_hung(void **state)
{
    (void)state;
    char tag[32];
    round_new(outage_events, outage_events / 2, tag);
    redisContext *channel = channel_open();
    group_t before = group_now();
    proc_signal(&t.redis, SIGSTOP);
    publish(0, outage_events);
    group_t during = group_refused(&before, outage_events);
    assert_true(during.lag > 0);
    assert_int_equal(during.dead_lettered, before.dead_lettered);
    proc_signal(&t.redis, SIGCONT);

    group_t after = group_caught_up(before.end_offset + outage_events);
    assert_int_equal(after.dead_lettered, before.dead_lettered);
    assert_false(proc_wait(notifier(), 0));
    assert_notified_once(outage_events, outage_events / 2);
    channel_assert_once(channel, outage_events);
    assert_true(log_lines(notifier()->log_path, "not delivered (Redis unavailable); NACK") >= 1);
}

/* Redis is killed while events arrive (connections refused), then
 * started again on its port (empty: no persistence): the events wait,
 * refused, and each is notified exactly once after. */
static void test_redis_restarted(void **state)
{
    (void)state;
    char tag[32];
    round_new(outage_events, outage_events, tag);
    group_t before = group_now();
    proc_kill(&t.redis);
    publish(0, outage_events);
    group_t during = group_refused(&before, outage_events);
    assert_true(during.lag > 0);
    assert_true(redis_start("-again"));

    group_t after = group_caught_up(before.end_offset + outage_events);
    assert_int_equal(after.dead_lettered, before.dead_lettered);
    assert_false(proc_wait(notifier(), 0));
    assert_notified_once(outage_events, outage_events);
}

/* One user's list key holds a string: their event's delivery script
 * fails half-way (an error reply in the batch's answers) while the other
 * events of the batch are notified. That event is refused until the key
 * is repaired (deleted), then notified exactly once. */
static void test_script_error(void **state)
{
    (void)state;
    char tag[32];
    int count = 9;
    round_new(count, count, tag); /* one event per user */
    int bad = 4;
    redisReply *set = redis_run("SET notifications:user:%s:latest broken", events[bad].user);
    freeReplyObject(set);
    assert_true(proc_stop(notifier(), system_stop_timeout_ms));
    group_t before = group_now();
    publish(0, count);
    assert_true(system_start_process(t.system, system_notification, "-script"));

    /* the others arrive; the broken one is refused, again and again */
    int64_t until = clock_now_ms() + wait_ms;
    for (int i = 0; i < count; i++) {
        if (i == bad)
            continue;
        for (;;) {
            redisReply *seen = redis_run("LLEN notifications:user:%s:latest", events[i].user);
            long long len = seen->integer;
            freeReplyObject(seen);
            if (len == 1)
                break;
            if (clock_now_ms() > until)
                fail_msg("event %s not notified within %d ms", events[i].event_id, wait_ms);
            sleep_ms(100);
        }
    }
    group_t during = group_refused(&before, 2);
    assert_true(during.lag >= 1);

    redisReply *del = redis_run("DEL notifications:user:%s:latest", events[bad].user);
    freeReplyObject(del);
    group_t after = group_caught_up(before.end_offset + (uint64_t)count);
    assert_int_equal(after.dead_lettered, before.dead_lettered);
    assert_notified_once(count, count);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_at_once),
        cmocka_unit_test(test_redis_hung),
        cmocka_unit_test(test_script_error),
        cmocka_unit_test(test_redis_restarted),
    };
    return cmocka_run_group_tests_name("notification batches", tests, group_setup, group_teardown);
}
