/*
 * Integration tests of the broker's durable event bus with real processes:
 * the paygate-broker binary with its own data directory, publishers using
 * rpc_client_publish and rpc_client_publish_many, consumers on raw DEALER
 * sockets (for exact control over acknowledgements and heartbeats) or the
 * lib/events consumer (one event at a time, or in batches), the outbox
 * relay (lib/outbox, on a scratch database of PAYGATE_TEST_PG_DSN), and
 * discovery (broker.services/List) to read topics and groups.
 *
 * Each test starts its own broker on a free port with a fresh
 * PAYGATE_BROKER_DATA_DIR under /tmp (removed by the teardown), so tests
 * are independent. Broker logs are kept in $PAYGATE_TEST_LOG_DIR, named
 * after the test ("<test>-broker.log", then "<test>-broker2.log" after a
 * restart).
 *
 * Never: share a data directory between tests, or leave a broker running.
 */
/* nftw: _GNU_SOURCE comes from the build (CMake defines it for every target) */
#include <dirent.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "clock/clock.h"
#include "events/consumer.h"
#include "outbox/outbox.h"
#include "proc.h"
#include "rpc/rpc.h"
#include "scratch_db.h"
#include "wire/wire.h"

enum {
    env_max = 16,
    members_max = 8,
    groups_view_max = 8,
    payload_bytes_max = 4096,
    publish_deadline_ms = 5000,
    broker_ready_timeout_ms = 10000,
};

/* A raw consumer: one DEALER socket that subscribed to one group. */
typedef struct {
    void *socket;          /* NULL once closed */
    uint32_t heartbeat_ms; /* what it told the broker; it heartbeats at a third */
    int64_t last_sent_at;
    Paygate__V1__Code disconnect_code; /* of the last DISCONNECT received */
} member_t;

/* One DELIVER, copied out of the frames. */
typedef struct {
    char topic[wire_topic_bytes_max + 8];
    char group[wire_topic_bytes_max + 1];
    char event_id[wire_event_id_bytes_max + 1];
    char key[wire_event_key_bytes_max + 1];
    uint64_t offset;
    int64_t timestamp_ms;
    uint32_t delivery_count;
    uint8_t payload[payload_bytes_max];
    size_t payload_len;
} delivery_t;

typedef struct {
    char name[wire_topic_bytes_max + 1];
    uint64_t committed;
    uint64_t lag;
    uint32_t in_flight;
    uint32_t consumers;
    uint64_t redelivered;
    uint64_t dead_lettered;
} group_view_t;

/* What discovery says about one topic. */
typedef struct {
    bool found;
    size_t topic_count; /* all topics in the reply */
    uint64_t start_offset;
    uint64_t end_offset;
    uint64_t published;
    uint64_t duplicates;
    size_t group_count;
    group_view_t groups[groups_view_max];
} topic_view_t;

typedef struct {
    const char *test;
    int port;
    int starts;
    bool bus;
    const char *const *extra; /* broker settings, kept for restarts */
    char endpoint[64];
    char env_endpoint[96];
    char root[64]; /* mkdtemp; the data dir is inside; removed by teardown */
    char data_dir[128];
    char env_data_dir[160];
    char log_path[2][512]; /* first and latest broker log */
    proc_t broker;
    rpc_client_t *client;
    void *zmq_ctx;
    member_t members[members_max];
    int member_count;
    /* the outbox relay tests: a scratch database and the relay */
    char db_base_dsn[1024];
    char db_name[64];
    char db_dsn[1200];
    bool db_made;
    PGconn *db;
    outbox_relay_t *relay;
} fixture_t;

/* ---- fixture ---------------------------------------------------------- */

static int fixture_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->port = free_tcp_port();
    assert_true(f->port > 0);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", f->port);
    snprintf(f->env_endpoint, sizeof f->env_endpoint, "PAYGATE_BROKER_ENDPOINT=%s", f->endpoint);
    snprintf(f->root, sizeof f->root, "/tmp/paygate-bus-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->data_dir, sizeof f->data_dir, "%s/data", f->root);
    snprintf(f->env_data_dir, sizeof f->env_data_dir, "PAYGATE_BROKER_DATA_DIR=%s", f->data_dir);
    f->zmq_ctx = zmq_ctx_new();
    assert_non_null(f->zmq_ctx);
    *state = f;
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture_t *f = *state;
    outbox_relay_stop(&f->relay);
    if (f->db != NULL)
        PQfinish(f->db);
    if (f->db_made)
        scratch_db_drop(f->db_base_dsn, f->db_name);
    rpc_client_destroy(&f->client);
    proc_kill(&f->broker);
    for (int i = 0; i < f->member_count; i++) {
        if (f->members[i].socket != NULL)
            zmq_close(f->members[i].socket);
    }
    zmq_ctx_term(f->zmq_ctx);
    nftw(f->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Starts (or restarts, on the same port and data dir) the broker with the
 * settings of the last start_broker, and waits until discovery answers. */
static void broker_launch(fixture_t *f)
{
    const char *env[env_max];
    size_t n = 0;
    env[n++] = f->env_endpoint;
    if (f->bus)
        env[n++] = f->env_data_dir;
    for (size_t i = 0; f->extra != NULL && f->extra[i] != NULL && n < env_max - 1; i++)
        env[n++] = f->extra[i];
    env[n] = NULL;
    char name[128];
    f->starts++;
    if (f->starts == 1)
        snprintf(name, sizeof name, "bus-%s-broker", f->test);
    else
        snprintf(name, sizeof name, "bus-%s-broker%d", f->test, f->starts);
    assert_true(proc_start(&f->broker, name, PAYGATE_BROKER_BIN, env));
    snprintf(f->log_path[f->starts == 1 ? 0 : 1], sizeof f->log_path[0], "%s", f->broker.log_path);
    if (f->starts == 1)
        snprintf(f->log_path[1], sizeof f->log_path[1], "%s", f->broker.log_path);
    if (f->client == NULL)
        f->client = rpc_client_new(NULL, f->endpoint);
    assert_non_null(f->client);
    int64_t until = clock_now_ms() + broker_ready_timeout_ms;
    while (discovery_count(f->client, "nobody", 200) < 0) {
        assert_true(proc_wait(&f->broker, 0) == false); /* it did not exit */
        assert_true(clock_now_ms() < until);
    }
}

/* Starts the broker for 'test' with 'extra' settings (NULL-ended, may be
 * NULL); 'bus' gives it PAYGATE_BROKER_DATA_DIR. */
static void start_broker(fixture_t *f, const char *test, bool bus, const char *const extra[])
{
    f->test = test;
    f->bus = bus;
    f->extra = extra;
    broker_launch(f);
}

/* SIGKILLs the broker and starts it again on the same data directory. */
static void restart_broker(fixture_t *f)
{
    proc_kill(&f->broker);
    broker_launch(f);
}

/* True while the broker process has not exited. */
static bool broker_alive(fixture_t *f)
{
    return proc_wait(&f->broker, 0) == false;
}

/* ---- publishing ---------------------------------------------------------- */

/* Publishes one event; returns the code, '*offset' and '*duplicate'. */
static Paygate__V1__Code publish(fixture_t *f, const char *topic, const char *event_id,
                                 const char *key, const void *payload, size_t payload_len,
                                 uint64_t *offset, bool *duplicate, rpc_status_t *status)
{
    uint64_t local_offset = UINT64_MAX;
    bool local_duplicate = false;
    rpc_status_t local_status;
    return rpc_client_publish(f->client, topic, event_id, key, payload, payload_len,
                              publish_deadline_ms, offset ? offset : &local_offset,
                              duplicate ? duplicate : &local_duplicate,
                              status ? status : &local_status);
}

/* Publishes a text event that must be stored at 'expected_offset'. */
static void publish_ok(fixture_t *f, const char *topic, const char *event_id, const char *key,
                       const char *payload, uint64_t expected_offset)
{
    uint64_t offset = UINT64_MAX;
    bool duplicate = true;
    rpc_status_t status;
    Paygate__V1__Code code =
        publish(f, topic, event_id, key, payload, strlen(payload), &offset, &duplicate, &status);
    if (code != PAYGATE__V1__CODE__OK)
        print_error("publish %s/%s: %s %s %s\n", topic, event_id, wire_code_name(code),
                    status.reason, status.message);
    assert_int_equal(code, PAYGATE__V1__CODE__OK);
    assert_false(duplicate);
    assert_int_equal(offset, expected_offset);
}

/* ---- raw consumers --------------------------------------------------------- */

static void member_send(member_t *m, const Paygate__V1__Header *header)
{
    assert_int_equal(wire_send(m->socket, NULL, 0, header, NULL, 0), 0);
    m->last_sent_at = clock_now_ms();
}

/* A new raw DEALER connected to the broker (closed by the teardown). */
static member_t *member_new(fixture_t *f, uint32_t heartbeat_ms)
{
    assert_true(f->member_count < members_max);
    member_t *m = &f->members[f->member_count++];
    memset(m, 0, sizeof *m);
    m->socket = zmq_socket(f->zmq_ctx, ZMQ_DEALER);
    assert_non_null(m->socket);
    int zero = 0;
    zmq_setsockopt(m->socket, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(m->socket, f->endpoint), 0);
    m->heartbeat_ms = heartbeat_ms;
    m->last_sent_at = clock_now_ms();
    return m;
}

/* Sends SUBSCRIBE for 'topic'/'group'. */
static void member_subscribe(member_t *m, const char *topic, const char *group,
                             const char *consumer_id, uint32_t max_in_flight, bool start_at_end)
{
    Paygate__V1__Subscribe sub = PAYGATE__V1__SUBSCRIBE__INIT;
    sub.topic = (char *)topic;
    sub.group = (char *)group;
    sub.consumer_id = (char *)consumer_id;
    sub.max_in_flight = max_in_flight;
    sub.heartbeat_interval_ms = m->heartbeat_ms;
    sub.start_at_end = start_at_end;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__SUBSCRIBE;
    header.subscribe = &sub;
    member_send(m, &header);
}

/* A new member subscribed to 'topic'/'group'. */
static member_t *member_join(fixture_t *f, const char *topic, const char *group,
                             const char *consumer_id, uint32_t max_in_flight, uint32_t heartbeat_ms,
                             bool start_at_end)
{
    member_t *m = member_new(f, heartbeat_ms);
    member_subscribe(m, topic, group, consumer_id, max_in_flight, start_at_end);
    return m;
}

/* Sends ACK for 'offset' of 'topic'/'group'. */
static void member_ack(member_t *m, const char *topic, const char *group, uint64_t offset)
{
    Paygate__V1__Event event = PAYGATE__V1__EVENT__INIT;
    event.topic = (char *)topic;
    event.group = (char *)group;
    event.offset = offset;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__ACK;
    header.event = &event;
    member_send(m, &header);
}

/* Acknowledges delivery 'd'. */
static void member_ack_delivery(member_t *m, const delivery_t *d)
{
    member_ack(m, d->topic, d->group, d->offset);
}

/* Closes the socket without DISCONNECT, as a crashed process would. */
static void member_crash(member_t *m)
{
    zmq_close(m->socket);
    m->socket = NULL;
}

static void delivery_copy(delivery_t *out, const wire_message_t *msg)
{
    const Paygate__V1__Event *e = msg->header->event;
    memset(out, 0, sizeof *out);
    snprintf(out->topic, sizeof out->topic, "%s", e->topic ? e->topic : "");
    snprintf(out->group, sizeof out->group, "%s", e->group ? e->group : "");
    snprintf(out->event_id, sizeof out->event_id, "%s", e->event_id ? e->event_id : "");
    snprintf(out->key, sizeof out->key, "%s", e->key ? e->key : "");
    out->offset = e->offset;
    out->timestamp_ms = e->timestamp_ms;
    out->delivery_count = e->delivery_count;
    if (msg->has_body) {
        size_t len = zmq_msg_size((zmq_msg_t *)&msg->body);
        assert_true(len <= sizeof out->payload);
        memcpy(out->payload, zmq_msg_data((zmq_msg_t *)&msg->body), len);
        out->payload_len = len;
    }
}

/* Sends HEARTBEAT when a third of the member's interval passed since it
 * last sent anything. */
static void member_heartbeat_if_due(member_t *m)
{
    if (m->heartbeat_ms > 0 && clock_now_ms() - m->last_sent_at >= m->heartbeat_ms / 3) {
        Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
        header.command = PAYGATE__V1__COMMAND__HEARTBEAT;
        member_send(m, &header);
    }
}

/* Keeps 'm' alive for 'ms' without reading what it is delivered. */
static void member_keep_alive(member_t *m, int ms)
{
    int64_t until = clock_now_ms() + ms;
    while (clock_now_ms() < until) {
        member_heartbeat_if_due(m);
        sleep_ms(10);
    }
}

/* Waits up to 'timeout_ms' for a DELIVER, heartbeating meanwhile (at a
 * third of the member's interval). Returns 1 with '*out', 0 on timeout,
 * -1 when the broker sent DISCONNECT (code in m->disconnect_code). The
 * broker's HEARTBEATs are skipped. */
static int member_recv(member_t *m, int timeout_ms, delivery_t *out)
{
    int64_t until = clock_now_ms() + timeout_ms;
    for (;;) {
        member_heartbeat_if_due(m);
        int64_t now = clock_now_ms();
        int64_t wait = until - now;
        if (wait < 0)
            wait = 0;
        if (wait > 20)
            wait = 20;
        zmq_pollitem_t item = {.socket = m->socket, .events = ZMQ_POLLIN};
        int ready = zmq_poll(&item, 1, (long)wait);
        if (ready > 0) {
            wire_message_t msg;
            const char *detail = NULL;
            int rc = wire_recv(m->socket, false, 4 << 20, ZMQ_DONTWAIT, &msg, &detail);
            if (rc == WIRE_OK) {
                Paygate__V1__Command command = msg.header->command;
                if (command == PAYGATE__V1__COMMAND__DELIVER) {
                    delivery_copy(out, &msg);
                    wire_message_clear(&msg);
                    return 1;
                }
                if (command == PAYGATE__V1__COMMAND__DISCONNECT) {
                    m->disconnect_code =
                        msg.header->status ? msg.header->status->code : PAYGATE__V1__CODE__OK;
                    wire_message_clear(&msg);
                    return -1;
                }
            } else if (rc > 0) {
                print_error("malformed message from the broker: %s\n", detail);
                fail();
            }
            wire_message_clear(&msg);
            continue;
        }
        if (clock_now_ms() >= until)
            return 0;
    }
}

/* Receives one DELIVER that must come within 'timeout_ms'. */
static void member_expect(member_t *m, int timeout_ms, delivery_t *out)
{
    int rc = member_recv(m, timeout_ms, out);
    if (rc != 1)
        print_error("expected a DELIVER within %d ms, got %s\n", timeout_ms,
                    rc == 0 ? "nothing" : "DISCONNECT");
    assert_int_equal(rc, 1);
}

/* Asserts that no DELIVER (nor DISCONNECT) comes within 'ms'. */
static void member_expect_nothing(member_t *m, int ms)
{
    delivery_t d;
    int rc = member_recv(m, ms, &d);
    if (rc == 1)
        print_error("unexpected DELIVER of %s offset %llu (delivery %u)\n", d.topic,
                    (unsigned long long)d.offset, d.delivery_count);
    assert_int_equal(rc, 0);
}

/* Keeps 'count' members alive (heartbeats) for 'ms', asserting that none
 * of them is delivered anything. */
static void members_idle(member_t *const members[], size_t count, int ms)
{
    int64_t until = clock_now_ms() + ms;
    while (clock_now_ms() < until) {
        for (size_t i = 0; i < count; i++)
            member_expect_nothing(members[i], 10);
    }
}

/* ---- discovery ---------------------------------------------------------- */

/* Reads 'topic' from broker.services/List. False when the broker did not
 * answer; out->found says whether the topic is listed. */
static bool topic_view(fixture_t *f, const char *topic, topic_view_t *out)
{
    memset(out, 0, sizeof *out);
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    ProtobufCMessage *msg = NULL;
    rpc_call_opts_t opts = {.deadline_ms = 2000};
    rpc_status_t status;
    if (rpc_client_call(f->client, "broker.services", "List", &request.base,
                        &paygate__v1__list_services_reply__descriptor, &msg, &opts,
                        &status) != PAYGATE__V1__CODE__OK)
        return false;
    Paygate__V1__ListServicesReply *reply = (Paygate__V1__ListServicesReply *)msg;
    out->topic_count = reply->n_topics;
    for (size_t i = 0; i < reply->n_topics; i++) {
        const Paygate__V1__TopicInfo *t = reply->topics[i];
        if (strcmp(t->name, topic) != 0)
            continue;
        out->found = true;
        out->start_offset = t->start_offset;
        out->end_offset = t->end_offset;
        out->published = t->published;
        out->duplicates = t->duplicates;
        out->group_count = t->n_groups;
        for (size_t k = 0; k < t->n_groups && k < groups_view_max; k++) {
            const Paygate__V1__GroupInfo *g = t->groups[k];
            group_view_t *v = &out->groups[k];
            snprintf(v->name, sizeof v->name, "%s", g->name);
            v->committed = g->committed_offset;
            v->lag = g->lag;
            v->in_flight = g->in_flight;
            v->consumers = g->consumers;
            v->redelivered = g->redelivered;
            v->dead_lettered = g->dead_lettered;
        }
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    return true;
}

/* Like topic_view, but the topic must be listed. */
static void topic_view_must(fixture_t *f, const char *topic, topic_view_t *out)
{
    assert_true(topic_view(f, topic, out));
    if (!out->found)
        print_error("topic %s is not in discovery\n", topic);
    assert_true(out->found);
}

/* Group 'name' of a topic view; fails the test when it is not listed. */
static const group_view_t *group_of(const topic_view_t *view, const char *name)
{
    for (size_t i = 0; i < view->group_count && i < groups_view_max; i++) {
        if (strcmp(view->groups[i].name, name) == 0)
            return &view->groups[i];
    }
    print_error("group %s is not in discovery\n", name);
    fail();
    return NULL;
}

/* Polls discovery (keeping 'members' alive by heartbeats; what they are
 * delivered meanwhile stays in their sockets) until group 'group' of
 * 'topic' has committed offset 'committed' (< 0: any) and 'consumers'
 * members (< 0: any). Returns false after 'timeout_ms'. */
static bool wait_group(fixture_t *f, member_t *const members[], size_t member_count,
                       const char *topic, const char *group, int64_t committed, int consumers,
                       int timeout_ms)
{
    int64_t until = clock_now_ms() + timeout_ms;
    topic_view_t view;
    while (clock_now_ms() < until) {
        if (topic_view(f, topic, &view) && view.found) {
            for (size_t i = 0; i < view.group_count && i < groups_view_max; i++) {
                const group_view_t *g = &view.groups[i];
                if (strcmp(g->name, group) == 0 &&
                    (committed < 0 || g->committed == (uint64_t)committed) &&
                    (consumers < 0 || g->consumers == (uint32_t)consumers))
                    return true;
            }
        }
        for (size_t i = 0; i < member_count; i++)
            member_heartbeat_if_due(members[i]);
        sleep_ms(20);
    }
    print_error("group %s/%s did not reach committed %lld with %d consumers\n", topic, group,
                (long long)committed, consumers);
    return false;
}

/* Counts the lines of 'path' that contain both 'a' and 'b'. */
static int log_count(const char *path, const char *a, const char *b)
{
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return -1;
    char line[4096];
    int count = 0;
    while (fgets(line, sizeof line, file) != NULL)
        count += strstr(line, a) != NULL && (b == NULL || strstr(line, b) != NULL);
    fclose(file);
    return count;
}

static int64_t wall_now_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* ---- 1. publishing ------------------------------------------------------- */

/* Publishes are acknowledged with dense offsets 0, 1, 2...; a duplicate
 * event id is acknowledged with the first offset and duplicate=true, and
 * is not stored: the end offset does not move, the next event takes the
 * next offset, and a reader sees the first payload only. */
static void test_publish_offsets_and_duplicates(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "publish", true, NULL);
    char id[32], payload[32];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "evt-%d", i);
        snprintf(payload, sizeof payload, "payload-%d", i);
        publish_ok(f, "pay.events", id, "", payload, (uint64_t)i);
    }
    uint64_t offset = UINT64_MAX;
    bool duplicate = false;
    assert_int_equal(publish(f, "pay.events", "evt-1", "", "other", 5, &offset, &duplicate, NULL),
                     PAYGATE__V1__CODE__OK);
    assert_true(duplicate);
    assert_int_equal(offset, 1);
    duplicate = false;
    assert_int_equal(publish(f, "pay.events", "evt-3", "k", "x", 1, &offset, &duplicate, NULL),
                     PAYGATE__V1__CODE__OK);
    assert_true(duplicate);
    assert_int_equal(offset, 3);

    topic_view_t view;
    topic_view_must(f, "pay.events", &view);
    assert_int_equal(view.start_offset, 0);
    assert_int_equal(view.end_offset, 5); /* duplicates not stored */
    assert_int_equal(view.published, 5);
    assert_int_equal(view.duplicates, 2);

    publish_ok(f, "pay.events", "evt-5", "", "payload-5", 5);

    /* What is stored: six events, each id once, with its first payload. */
    member_t *m = member_join(f, "pay.events", "reader", "reader-1", 16, 5000, false);
    for (int i = 0; i < 6; i++) {
        delivery_t d;
        member_expect(m, 5000, &d);
        snprintf(id, sizeof id, "evt-%d", i);
        snprintf(payload, sizeof payload, "payload-%d", i);
        assert_int_equal(d.offset, i);
        assert_string_equal(d.event_id, id);
        assert_int_equal(d.payload_len, strlen(payload));
        assert_memory_equal(d.payload, payload, strlen(payload));
        member_ack_delivery(m, &d);
    }
    member_expect_nothing(m, 300);
}

/* ---- 2. one group, one member ------------------------------------------- */

/* A group receives every event once, in order, with its payload, key,
 * event id, offset, timestamp and delivery_count 1; once everything is
 * acknowledged the committed offset is the end offset and the lag 0. */
static void test_group_receives_every_event_in_order(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "inorder", true, NULL);
    enum { count = 12 };
    int64_t published_after = wall_now_ms();
    char id[32], key[32], payload[64];
    for (int i = 0; i < count; i++) {
        snprintf(id, sizeof id, "ord-%d", i);
        snprintf(key, sizeof key, i == 5 ? "" : "key-%d", i); /* one without a key */
        snprintf(payload, sizeof payload, "order %d paid %d paise", i, 1000 + i);
        publish_ok(f, "orders", id, key, payload, (uint64_t)i);
    }
    int64_t published_before = wall_now_ms();

    member_t *m = member_join(f, "orders", "billing", "billing-1", 4, 5000, false);
    for (int i = 0; i < count; i++) {
        delivery_t d;
        member_expect(m, 5000, &d);
        snprintf(id, sizeof id, "ord-%d", i);
        snprintf(key, sizeof key, i == 5 ? "" : "key-%d", i);
        snprintf(payload, sizeof payload, "order %d paid %d paise", i, 1000 + i);
        assert_string_equal(d.topic, "orders");
        assert_string_equal(d.group, "billing");
        assert_int_equal(d.offset, i);
        assert_string_equal(d.event_id, id);
        assert_string_equal(d.key, key);
        assert_int_equal(d.delivery_count, 1);
        assert_int_equal(d.payload_len, strlen(payload));
        assert_memory_equal(d.payload, payload, strlen(payload));
        assert_true(d.timestamp_ms >= published_after - 1000);
        assert_true(d.timestamp_ms <= published_before + 1000);
        member_ack_delivery(m, &d);
    }
    member_expect_nothing(m, 300); /* each event once */

    member_t *alive[] = {m};
    assert_true(wait_group(f, alive, 1, "orders", "billing", count, 1, 3000));
    topic_view_t view;
    topic_view_must(f, "orders", &view);
    assert_int_equal(view.end_offset, count);
    const group_view_t *g = group_of(&view, "billing");
    assert_int_equal(g->committed, view.end_offset);
    assert_int_equal(g->lag, 0);
    assert_int_equal(g->in_flight, 0);
    assert_int_equal(g->redelivered, 0);
    assert_int_equal(g->dead_lettered, 0);
}

/* ---- 3. sharing within a group, fan-out across groups ---------------------- */

/* Two members of one group share the events (each event to exactly one
 * of them); another group receives all of them too. */
static void test_members_share_and_groups_fan_out(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "share", true, NULL);
    member_t *m1 = member_join(f, "ledger", "shared", "shared-1", 100, 5000, false);
    member_t *m2 = member_join(f, "ledger", "shared", "shared-2", 100, 5000, false);
    member_t *audit = member_join(f, "ledger", "audit", "audit-1", 100, 5000, false);
    member_t *all[] = {m1, m2, audit};
    assert_true(wait_group(f, all, 3, "ledger", "shared", 0, 2, 5000));
    assert_true(wait_group(f, all, 3, "ledger", "audit", 0, 1, 5000));

    enum { count = 20 };
    char id[32];
    for (int i = 0; i < count; i++) {
        snprintf(id, sizeof id, "led-%d", i);
        publish_ok(f, "ledger", id, "", id, (uint64_t)i);
    }

    int seen[count] = {0};
    int by_member[2] = {0, 0};
    int total = 0;
    int64_t until = clock_now_ms() + 10000;
    while (total < count && clock_now_ms() < until) {
        member_t *pair[2] = {m1, m2};
        for (int k = 0; k < 2; k++) {
            delivery_t d;
            if (member_recv(pair[k], 10, &d) != 1)
                continue;
            assert_string_equal(d.group, "shared");
            assert_true(d.offset < count);
            assert_int_equal(d.delivery_count, 1);
            seen[d.offset]++;
            by_member[k]++;
            total++;
            member_ack_delivery(pair[k], &d);
        }
    }
    assert_int_equal(total, count);
    for (int i = 0; i < count; i++)
        assert_int_equal(seen[i], 1); /* exactly one member each */
    assert_true(by_member[0] > 0 && by_member[1] > 0);

    for (int i = 0; i < count; i++) {
        delivery_t d;
        member_expect(audit, 5000, &d);
        assert_string_equal(d.group, "audit");
        assert_int_equal(d.offset, i);
        snprintf(id, sizeof id, "led-%d", i);
        assert_string_equal(d.event_id, id);
        member_ack_delivery(audit, &d);
    }
    members_idle(all, 3, 300); /* nothing twice */
    assert_true(wait_group(f, all, 3, "ledger", "shared", count, 2, 3000));
    assert_true(wait_group(f, all, 3, "ledger", "audit", count, 1, 3000));
}

/* ---- 4. ack timeout, redelivery, dead letters ------------------------------ */

/* An event not acknowledged within the ack timeout is delivered again
 * (delivery_count 2, 3); after max_deliveries it is appended to
 * "<topic>.dlq" with its payload, the group moves past it, and the broker
 * logs it. */
static void test_unacked_event_redelivered_then_dead_lettered(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "deadletter", true,
                 (const char *[]){"PAYGATE_BROKER_ACK_TIMEOUT_MS=400",
                                  "PAYGATE_BROKER_MAX_DELIVERIES=3", NULL});
    member_t *m = member_join(f, "refunds", "worker", "worker-1", 1, 1000, false);
    member_t *alive[] = {m};
    assert_true(wait_group(f, alive, 1, "refunds", "worker", 0, 1, 5000));
    publish_ok(f, "refunds", "poison", "kp", "bad-bytes", 0);

    int64_t previous_at = 0;
    for (uint32_t n = 1; n <= 3; n++) {
        delivery_t d;
        member_expect(m, 3000, &d);
        int64_t at = clock_now_ms();
        assert_int_equal(d.offset, 0);
        assert_string_equal(d.event_id, "poison");
        assert_int_equal(d.delivery_count, n);
        assert_int_equal(d.payload_len, 9);
        assert_memory_equal(d.payload, "bad-bytes", 9);
        if (n > 1) /* not before the ack timeout */
            assert_true(at - previous_at >= 350);
        previous_at = at;
        /* not acknowledged */
    }

    /* Dead-lettered: "refunds.dlq" holds it, the group is past it. */
    int64_t until = clock_now_ms() + 3000;
    topic_view_t dlq;
    for (;;) {
        assert_true(topic_view(f, "refunds.dlq", &dlq));
        if (dlq.found && dlq.end_offset == 1)
            break;
        assert_true(clock_now_ms() < until);
        member_expect_nothing(m, 20); /* and no 4th delivery meanwhile */
    }
    assert_true(wait_group(f, alive, 1, "refunds", "worker", 1, 1, 3000));
    topic_view_t view;
    topic_view_must(f, "refunds", &view);
    assert_int_equal(view.end_offset, 1);
    const group_view_t *g = group_of(&view, "worker");
    assert_int_equal(g->dead_lettered, 1);
    assert_int_equal(g->redelivered, 2);
    assert_int_equal(g->in_flight, 0);
    assert_int_equal(g->lag, 0);
    assert_int_equal(log_count(f->log_path[0], "dead-lettered", "poison"), 1);

    /* The group goes on with the next event. */
    publish_ok(f, "refunds", "healthy", "kp", "good-bytes", 1);
    delivery_t d;
    member_expect(m, 3000, &d);
    assert_int_equal(d.offset, 1);
    assert_string_equal(d.event_id, "healthy");
    assert_int_equal(d.delivery_count, 1);
    member_ack_delivery(m, &d);
    assert_true(wait_group(f, alive, 1, "refunds", "worker", 2, 1, 3000));

    /* A consumer of the dead letter topic gets the original event. */
    member_t *reader = member_join(f, "refunds.dlq", "dlq-reader", "dlq-1", 1, 5000, false);
    member_expect(reader, 5000, &d);
    assert_string_equal(d.topic, "refunds.dlq");
    assert_int_equal(d.offset, 0);
    assert_int_equal(d.delivery_count, 1);
    assert_string_equal(d.key, "kp");
    assert_true(strlen(d.event_id) > 0);
    assert_int_equal(d.payload_len, 9);
    assert_memory_equal(d.payload, "bad-bytes", 9);
    member_ack_delivery(reader, &d);
    member_expect_nothing(reader, 300);
    member_expect_nothing(m, 10);
}

/* ---- 5. a member dies ------------------------------------------------------- */

/* A member that dies (socket closed, no DISCONNECT) with events in flight:
 * the broker notices on its next send or by heartbeat expiry, long before
 * the ack timeout (30 s by default), and gives them to the other member. */
static void test_dead_member_events_go_to_other_member(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "deadmember", true, NULL);
    member_t *doomed = member_join(f, "payouts", "payer", "payer-doomed", 10, 200, false);
    member_t *survivor = member_join(f, "payouts", "payer", "payer-ok", 10, 5000, false);
    member_t *both[] = {doomed, survivor};
    assert_true(wait_group(f, both, 2, "payouts", "payer", 0, 2, 5000));

    enum { count = 6 };
    char id[32];
    for (int i = 0; i < count; i++) {
        snprintf(id, sizeof id, "pay-%d", i);
        publish_ok(f, "payouts", id, "", id, (uint64_t)i);
    }
    bool held_by_doomed[count] = {false};
    int doomed_count = 0, total = 0;
    int64_t until = clock_now_ms() + 10000;
    while (total < count && clock_now_ms() < until) {
        delivery_t d;
        if (member_recv(doomed, 10, &d) == 1) {
            assert_true(d.offset < count);
            held_by_doomed[d.offset] = true; /* never acknowledged */
            doomed_count++;
            total++;
        }
        if (member_recv(survivor, 10, &d) == 1) {
            member_ack_delivery(survivor, &d);
            total++;
        }
    }
    assert_int_equal(total, count);
    assert_true(doomed_count > 0);

    member_crash(doomed);
    int64_t crashed_at = clock_now_ms();
    int redelivered = 0;
    while (redelivered < doomed_count) {
        delivery_t d;
        member_expect(survivor, 5000, &d);
        assert_true(d.offset < count);
        assert_true(held_by_doomed[d.offset]);
        assert_int_equal(d.delivery_count, 2);
        held_by_doomed[d.offset] = false; /* once */
        member_ack_delivery(survivor, &d);
        redelivered++;
    }
    assert_true(clock_now_ms() - crashed_at < 5000);
    member_t *alive[] = {survivor};
    assert_true(wait_group(f, alive, 1, "payouts", "payer", count, 1, 3000));
    topic_view_t view;
    topic_view_must(f, "payouts", &view);
    const group_view_t *g = group_of(&view, "payer");
    assert_int_equal(g->redelivered, doomed_count);
    assert_int_equal(g->in_flight, 0);
    member_expect_nothing(survivor, 300);
}

/* A member that expires (connected but silent) while the only other
 * member has died unnoticed: its events go to the dead one, whose send
 * fails. The broker must survive that (no use of the removed peer), and
 * both events wait for the next member. */
static void test_expiry_hands_events_to_dead_member(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "expirydead", true, NULL);
    /* 'silent' expires after 3 x 200 ms; 'gone' has a long interval, so
     * the broker does not heartbeat it before that. */
    member_t *silent = member_join(f, "fees", "fee", "fee-silent", 5, 200, false);
    member_t *first[] = {silent};
    assert_true(wait_group(f, first, 1, "fees", "fee", 0, 1, 5000));
    member_t *gone = member_join(f, "fees", "fee", "fee-gone", 5, 10000, false);
    member_t *both[] = {silent, gone};
    assert_true(wait_group(f, both, 2, "fees", "fee", 0, 2, 5000));
    publish_ok(f, "fees", "fee-0", "", "f0", 0);
    publish_ok(f, "fees", "fee-1", "", "f1", 1);
    delivery_t d;
    member_expect(silent, 3000, &d);
    assert_int_equal(d.offset, 0);
    member_expect(gone, 3000, &d);
    assert_int_equal(d.offset, 1);

    member_crash(gone);
    sleep_ms(1500); /* 'silent' sends nothing: it expires */

    assert_true(broker_alive(f));
    topic_view_t view;
    topic_view_must(f, "fees", &view);
    const group_view_t *g = group_of(&view, "fee");
    assert_int_equal(g->consumers, 0);
    assert_int_equal(g->in_flight, 0);
    assert_int_equal(g->committed, 0);

    member_t *next = member_join(f, "fees", "fee", "fee-next", 5, 5000, false);
    bool got[2] = {false, false};
    for (int i = 0; i < 2; i++) {
        member_expect(next, 5000, &d);
        assert_true(d.offset < 2);
        assert_false(got[d.offset]);
        got[d.offset] = true;
        assert_true(d.delivery_count >= 2);
        member_ack_delivery(next, &d);
    }
    member_t *alive[] = {next};
    assert_true(wait_group(f, alive, 1, "fees", "fee", 2, 1, 3000));
    assert_true(broker_alive(f));
}

/* ---- 6. per-key order ----------------------------------------------------- */

/* Key A: a1, a2; key B: b1; two events without a key. While a1 is not
 * acknowledged the member gets b1 and the keyless events, but not a2;
 * after the ACK of a1 it gets a2. */
static void test_per_key_order(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "perkey", true, NULL);
    member_t *m = member_join(f, "wallet", "applier", "applier-1", 10, 5000, false);
    member_t *alive[] = {m};
    assert_true(wait_group(f, alive, 1, "wallet", "applier", 0, 1, 5000));
    publish_ok(f, "wallet", "a1", "user-a", "a1", 0);
    publish_ok(f, "wallet", "a2", "user-a", "a2", 1);
    publish_ok(f, "wallet", "b1", "user-b", "b1", 2);
    publish_ok(f, "wallet", "n1", "", "n1", 3);
    publish_ok(f, "wallet", "n2", "", "n2", 4);

    bool got[5] = {false};
    delivery_t d, held[5];
    int64_t until = clock_now_ms() + 1000;
    while (clock_now_ms() < until) {
        if (member_recv(m, 20, &d) != 1)
            continue;
        assert_true(d.offset < 5);
        assert_false(got[d.offset]);
        got[d.offset] = true;
        held[d.offset] = d;
    }
    assert_true(got[0]);  /* a1 */
    assert_false(got[1]); /* a2 waits for a1 */
    assert_true(got[2]);  /* b1: another key */
    assert_true(got[3]);  /* keyless: never blocked ... */
    assert_true(got[4]);  /* ... even behind an unacknowledged keyless one */

    member_ack_delivery(m, &held[0]);
    member_expect(m, 3000, &d);
    assert_int_equal(d.offset, 1);
    assert_string_equal(d.event_id, "a2");
    assert_int_equal(d.delivery_count, 1);
    member_ack_delivery(m, &d);
    for (int i = 2; i < 5; i++)
        member_ack_delivery(m, &held[i]);
    assert_true(wait_group(f, alive, 1, "wallet", "applier", 5, 1, 3000));
    member_expect_nothing(m, 200);
}

/* ---- 7. durability --------------------------------------------------------- */

/* The payload of event 'i' in the durability test: varied sizes. */
static size_t durable_payload(int i, uint8_t *out, size_t size)
{
    size_t len = (size_t)(1 + (i * 97) % 1500);
    assert_true(len <= size);
    for (size_t k = 0; k < len; k++)
        out[k] = (uint8_t)((i * 31 + (int)k * 7) & 0xff);
    return len;
}

/* N acknowledged publishes survive SIGKILL: after a restart on the same
 * data dir the end offset is N, a new group receives all N with their
 * payloads, a group that had acknowledged K resumes at K, new events take
 * offset N on, and the dedup window still knows the old ids. */
static void test_durable_across_sigkill(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "durable", true, NULL);
    enum { count = 25, acked = 7 };
    uint8_t payload[payload_bytes_max];
    char id[32];
    for (int i = 0; i < count; i++) {
        snprintf(id, sizeof id, "dur-%d", i);
        size_t len = durable_payload(i, payload, sizeof payload);
        uint64_t offset = UINT64_MAX;
        bool duplicate = true;
        assert_int_equal(publish(f, "settlements", id, "", payload, len, &offset, &duplicate, NULL),
                         PAYGATE__V1__CODE__OK);
        assert_false(duplicate);
        assert_int_equal(offset, i);
    }
    member_t *m = member_join(f, "settlements", "resume", "resume-1", 1, 5000, false);
    for (int i = 0; i < acked; i++) {
        delivery_t d;
        member_expect(m, 5000, &d);
        assert_int_equal(d.offset, i);
        member_ack_delivery(m, &d);
    }
    member_t *alive[] = {m};
    assert_true(wait_group(f, alive, 1, "settlements", "resume", acked, 1, 3000));
    member_keep_alive(m, 400); /* > 300 ms: the offset file is written */
    member_crash(m);

    restart_broker(f);
    topic_view_t view;
    topic_view_must(f, "settlements", &view);
    assert_int_equal(view.end_offset, count);
    assert_int_equal(group_of(&view, "resume")->committed, acked);

    member_t *fresh = member_join(f, "settlements", "fresh", "fresh-1", 8, 5000, false);
    for (int i = 0; i < count; i++) {
        delivery_t d;
        member_expect(fresh, 5000, &d);
        assert_int_equal(d.offset, i);
        snprintf(id, sizeof id, "dur-%d", i);
        assert_string_equal(d.event_id, id);
        size_t len = durable_payload(i, payload, sizeof payload);
        assert_int_equal(d.payload_len, len);
        assert_memory_equal(d.payload, payload, len);
        member_ack_delivery(fresh, &d);
    }
    member_expect_nothing(fresh, 200);

    member_t *resumed = member_join(f, "settlements", "resume", "resume-2", 1, 5000, false);
    delivery_t d;
    member_expect(resumed, 5000, &d);
    assert_int_equal(d.offset, acked);
    snprintf(id, sizeof id, "dur-%d", acked);
    assert_string_equal(d.event_id, id);

    publish_ok(f, "settlements", "dur-new", "", "new", count);
    uint64_t offset = UINT64_MAX;
    bool duplicate = false;
    assert_int_equal(publish(f, "settlements", "dur-0", "", "again", 5, &offset, &duplicate, NULL),
                     PAYGATE__V1__CODE__OK);
    assert_true(duplicate);
    assert_int_equal(offset, 0);
}

/* After a restart discovery lists the groups that existed, and only
 * those; the broker can persist all of their offsets. */
static void test_restart_keeps_exactly_the_groups(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "groupsrestart", true, NULL);
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "gr-%d", i);
        publish_ok(f, "invoices", id, "", id, (uint64_t)i);
    }
    member_t *m = member_join(f, "invoices", "mailer", "mailer-1", 4, 5000, false);
    for (int i = 0; i < 3; i++) {
        delivery_t d;
        member_expect(m, 5000, &d);
        member_ack_delivery(m, &d);
    }
    member_t *alive[] = {m};
    assert_true(wait_group(f, alive, 1, "invoices", "mailer", 3, 1, 3000));
    member_keep_alive(m, 400);
    member_crash(m);

    restart_broker(f);
    sleep_ms(500); /* a few offset flush intervals */
    topic_view_t view;
    topic_view_must(f, "invoices", &view);
    for (size_t i = 0; i < view.group_count && i < groups_view_max; i++)
        print_message("after restart: group '%s' committed %llu\n", view.groups[i].name,
                      (unsigned long long)view.groups[i].committed);
    assert_int_equal(view.group_count, 1);
    assert_string_equal(view.groups[0].name, "mailer");
    assert_int_equal(view.groups[0].committed, 3);
    assert_int_equal(log_count(f->log_path[1], "cannot persist", NULL), 0);
}

/* ---- 8. replay and start_at_end ------------------------------------------ */

/* A new group replays the retained history from the beginning; a new
 * group that asks for start_at_end gets only what is published after it
 * joined. */
static void test_replay_and_start_at_end(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "replay", true, NULL);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "old-%d", i);
        publish_ok(f, "users", id, "", id, (uint64_t)i);
    }
    member_t *replay = member_join(f, "users", "replayer", "replayer-1", 16, 5000, false);
    member_t *tail = member_join(f, "users", "tailer", "tailer-1", 16, 5000, true);
    member_t *both[] = {replay, tail};
    assert_true(wait_group(f, both, 2, "users", "tailer", 5, 1, 5000));
    for (int i = 0; i < 5; i++) {
        delivery_t d;
        member_expect(replay, 5000, &d);
        assert_int_equal(d.offset, i);
        member_ack_delivery(replay, &d);
    }
    member_expect_nothing(tail, 300); /* no history */
    topic_view_t view;
    topic_view_must(f, "users", &view);
    assert_int_equal(group_of(&view, "tailer")->committed, 5);
    assert_int_equal(group_of(&view, "tailer")->lag, 0);

    publish_ok(f, "users", "new-5", "", "new-5", 5);
    publish_ok(f, "users", "new-6", "", "new-6", 6);
    for (int i = 5; i < 7; i++) {
        delivery_t d;
        member_expect(tail, 5000, &d);
        assert_int_equal(d.offset, i);
        char id[16];
        snprintf(id, sizeof id, "new-%d", i);
        assert_string_equal(d.event_id, id);
        member_ack_delivery(tail, &d);
        member_expect(replay, 5000, &d);
        assert_int_equal(d.offset, i);
        member_ack_delivery(replay, &d);
    }
    members_idle(both, 2, 200);
    assert_true(wait_group(f, both, 2, "users", "tailer", 7, 1, 3000));
    assert_true(wait_group(f, both, 2, "users", "replayer", 7, 1, 3000));
}

/* ---- 9. the lib/events consumer ----------------------------------------- */

enum { recorded_max = 64 };

typedef struct {
    pthread_mutex_t lock;
    char ids[recorded_max][32];
    int distinct;
    int calls;
    bool unexpected; /* an id that is too long or too many ids */
} recorder_t;

static bool record_event(const events_delivery_t *event, void *state)
{
    recorder_t *r = state;
    pthread_mutex_lock(&r->lock);
    r->calls++;
    bool known = false;
    for (int i = 0; i < r->distinct; i++)
        known |= strcmp(r->ids[i], event->event_id) == 0;
    if (!known) {
        if (r->distinct == recorded_max || strlen(event->event_id) >= sizeof r->ids[0])
            r->unexpected = true;
        else
            snprintf(r->ids[r->distinct++], sizeof r->ids[0], "%s", event->event_id);
    }
    pthread_mutex_unlock(&r->lock);
    return true;
}

static int recorded(recorder_t *r)
{
    pthread_mutex_lock(&r->lock);
    int n = r->distinct;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* Waits until 'n' distinct events were handled. */
static bool recorder_wait(recorder_t *r, int n, int timeout_ms)
{
    int64_t until = clock_now_ms() + timeout_ms;
    while (recorded(r) < n) {
        if (clock_now_ms() >= until)
            return false;
        sleep_ms(20);
    }
    return true;
}

typedef struct {
    events_consumer_t *consumer;
    int result;
} consumer_thread_t;

static void *consumer_main(void *arg)
{
    consumer_thread_t *t = arg;
    t->result = events_consumer_run(t->consumer);
    return NULL;
}

/* The library consumer receives events published before and after it
 * started, acknowledges them, and after a SIGKILL and restart of the
 * broker reconnects, subscribes again and receives new events. */
static void test_events_consumer_survives_broker_restart(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "libconsumer", true, NULL);
    char id[32];
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "lib-%d", i);
        publish_ok(f, "notify", id, "", id, (uint64_t)i);
    }
    recorder_t rec;
    memset(&rec, 0, sizeof rec);
    pthread_mutex_init(&rec.lock, NULL);
    const char *topics[] = {"notify", NULL};
    events_consumer_config_t config = {
        .endpoint = f->endpoint,
        .group = "notifier",
        .topics = topics,
        .consumer_id = "notifier-1",
        .max_in_flight = 4,
        .heartbeat_interval_ms = 200,
        .heartbeat_liveness = 3,
        .handler = record_event,
        .state = &rec,
    };
    consumer_thread_t thread = {.consumer = events_consumer_new(&config), .result = -2};
    assert_non_null(thread.consumer);
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, consumer_main, &thread), 0);

    bool ok = recorder_wait(&rec, 3, 10000);
    for (int i = 3; ok && i < 6; i++) {
        snprintf(id, sizeof id, "lib-%d", i);
        publish_ok(f, "notify", id, "", id, (uint64_t)i);
    }
    ok = ok && recorder_wait(&rec, 6, 10000);
    ok = ok && wait_group(f, NULL, 0, "notify", "notifier", 6, 1, 5000);
    if (ok) {
        sleep_ms(400); /* the committed offset reaches the disk */
        restart_broker(f);
        for (int i = 6; i < 9; i++) {
            snprintf(id, sizeof id, "lib-%d", i);
            publish_ok(f, "notify", id, "", id, (uint64_t)i);
        }
        ok = recorder_wait(&rec, 9, 15000);
        if (!ok)
            print_error("the consumer handled %d of 9 events after the restart\n", recorded(&rec));
    }
    bool committed = ok && wait_group(f, NULL, 0, "notify", "notifier", 9, 1, 10000);

    events_consumer_stop(thread.consumer);
    pthread_join(tid, NULL);
    events_consumer_destroy(&thread.consumer);
    pthread_mutex_destroy(&rec.lock);

    assert_true(ok);
    assert_true(committed);
    assert_int_equal(thread.result, 0);
    assert_false(rec.unexpected);
    assert_int_equal(rec.distinct, 9);
    for (int i = 0; i < 9; i++) {
        snprintf(id, sizeof id, "lib-%d", i);
        bool found = false;
        for (int k = 0; k < rec.distinct; k++)
            found |= strcmp(rec.ids[k], id) == 0;
        assert_true(found);
    }
}

/* ---- 9b. the lib/events batch handler ------------------------------------- */

enum {
    batch_events_max = 64, /* events of one batch test (numbered "bat-<n>") */
    batch_handled_max = 4, /* hand-overs of one event the log keeps */
    batch_handler_ms = 50, /* each call is slow: what arrives meanwhile waits */
    batch_in_flight = 16,  /* the consumer's max_in_flight */
};

/* What a batch handler was given, per event number. */
typedef struct {
    pthread_mutex_t lock;
    int refuse;                   /* refused on its first hand-over; -1: none */
    int calls;                    /* batch handler calls */
    size_t largest;               /* events in the largest call */
    size_t smallest;              /* events in the smallest call */
    bool same_key_in_call;        /* two events of one non-empty key in one call */
    bool unexpected;              /* an event id, topic or group not of the test */
    int handed[batch_events_max]; /* hand-overs of event n */
    uint32_t counts[batch_events_max][batch_handled_max]; /* their delivery_count */
    int order[batch_events_max]; /* event numbers in the order acknowledged */
    int acknowledged;
} batch_log_t;

static void batch_log_init(batch_log_t *b, int refuse)
{
    memset(b, 0, sizeof *b);
    pthread_mutex_init(&b->lock, NULL);
    b->refuse = refuse;
    b->smallest = SIZE_MAX;
}

/* The number of "bat-<n>", or -1. */
static int batch_event_number(const char *event_id)
{
    int n = -1, used = 0;
    if (sscanf(event_id, "bat-%d%n", &n, &used) != 1 || event_id[used] != '\0' || n < 0 ||
        n >= batch_events_max)
        return -1;
    return n;
}

/* The batch handler: logs each call, refuses event 'refuse' on its first
 * hand-over, acknowledges the rest, and is slow on purpose. */
static void batch_record(const events_delivery_t *events, size_t count, bool *acknowledge,
                         void *state)
{
    batch_log_t *b = state;
    pthread_mutex_lock(&b->lock);
    b->calls++;
    if (count > b->largest)
        b->largest = count;
    if (count < b->smallest)
        b->smallest = count;
    for (size_t i = 0; i < count; i++) {
        const events_delivery_t *e = &events[i];
        acknowledge[i] = false;
        for (size_t k = 0; k < i; k++)
            b->same_key_in_call |= e->key[0] != '\0' && strcmp(e->key, events[k].key) == 0;
        int n = batch_event_number(e->event_id);
        if (n < 0 || strcmp(e->topic, "batched") != 0 || strcmp(e->group, "batcher") != 0) {
            b->unexpected = true;
            continue;
        }
        char payload[32];
        int len = snprintf(payload, sizeof payload, "payload-%d", n);
        b->unexpected |=
            e->payload_len != (size_t)len || memcmp(e->payload, payload, e->payload_len);
        if (b->handed[n] < batch_handled_max)
            b->counts[n][b->handed[n]] = e->delivery_count;
        b->handed[n]++;
        if (n == b->refuse && b->handed[n] == 1)
            continue; /* refused: NACK */
        acknowledge[i] = true;
        if (b->acknowledged < batch_events_max)
            b->order[b->acknowledged] = n;
        b->acknowledged++;
    }
    pthread_mutex_unlock(&b->lock);
    sleep_ms(batch_handler_ms);
}

static int batch_acknowledged(batch_log_t *b)
{
    pthread_mutex_lock(&b->lock);
    int n = b->acknowledged;
    pthread_mutex_unlock(&b->lock);
    return n;
}

/* Runs a lib/events consumer with the batch handler on topic "batched",
 * group "batcher", until 'count' events were acknowledged and the group
 * committed them all, then 'linger_ms' more (for anything delivered
 * again), and stops it. Returns false when that did not happen in time. */
static bool batch_consume(fixture_t *f, batch_log_t *b, int count, int linger_ms)
{
    const char *topics[] = {"batched", NULL};
    events_consumer_config_t config = {
        .endpoint = f->endpoint,
        .group = "batcher",
        .topics = topics,
        .consumer_id = "batcher-1",
        .max_in_flight = batch_in_flight,
        .heartbeat_interval_ms = 200,
        .heartbeat_liveness = 3,
        .batch_handler = batch_record,
        .state = b,
    };
    consumer_thread_t thread = {.consumer = events_consumer_new(&config), .result = -2};
    assert_non_null(thread.consumer);
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, consumer_main, &thread), 0);
    int64_t until = clock_now_ms() + 15000;
    while (batch_acknowledged(b) < count && clock_now_ms() < until)
        sleep_ms(20);
    bool ok = batch_acknowledged(b) >= count;
    if (!ok)
        print_error("the batch handler acknowledged %d of %d events\n", batch_acknowledged(b),
                    count);
    ok = ok && wait_group(f, NULL, 0, "batched", "batcher", count, 1, 5000);
    if (ok)
        sleep_ms(linger_ms);
    events_consumer_stop(thread.consumer);
    pthread_join(tid, NULL);
    events_consumer_destroy(&thread.consumer);
    assert_int_equal(thread.result, 0);
    return ok;
}

/* The key of batch event 'n' in the first test: 20 keys, two events
 * each, then four without a key. */
static void batch_key(int n, char *key, size_t size)
{
    if (n >= 40)
        snprintf(key, size, "%s", "");
    else
        snprintf(key, size, "key-%02d", n % 20);
}

/* 44 events wait before the consumer starts; its batch handler (slow, so
 * that what arrives meanwhile waits for the next call) is given batches
 * of more than one event, never more than max_in_flight, never two of one
 * key; every event is handed over once (delivery_count 1) and
 * acknowledged, each key's events in the order published, and the group
 * commits all of them with nothing redelivered. */
static void test_events_batch_handler_gets_what_waits(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "batchhandler", true, NULL);
    enum { count = 44 };
    char id[32], key[32], payload[32];
    for (int i = 0; i < count; i++) {
        snprintf(id, sizeof id, "bat-%d", i);
        batch_key(i, key, sizeof key);
        snprintf(payload, sizeof payload, "payload-%d", i);
        publish_ok(f, "batched", id, key, payload, (uint64_t)i);
    }
    batch_log_t b;
    batch_log_init(&b, -1);
    bool ok = batch_consume(f, &b, count, 300);
    pthread_mutex_destroy(&b.lock);
    assert_true(ok);

    print_message("%d calls for %d events, %zu to %zu events each\n", b.calls, count, b.smallest,
                  b.largest);
    assert_false(b.unexpected);
    assert_false(b.same_key_in_call);
    assert_true(b.largest > 1);
    assert_true(b.largest <= batch_in_flight);
    assert_true(b.calls < count);
    assert_int_equal(b.acknowledged, count);
    for (int i = 0; i < count; i++) {
        assert_int_equal(b.handed[i], 1);
        assert_int_equal(b.counts[i][0], 1);
    }
    /* each key's events in the order published */
    for (int k = 0; k < count; k++) {
        for (int j = k + 1; j < count; j++) {
            char a[32], c[32];
            batch_key(b.order[k], a, sizeof a);
            batch_key(b.order[j], c, sizeof c);
            if (a[0] != '\0' && strcmp(a, c) == 0 && b.order[k] > b.order[j])
                fail_msg("key %s: event %d acknowledged before event %d", a, b.order[j],
                         b.order[k]);
        }
    }
    topic_view_t view;
    topic_view_must(f, "batched", &view);
    const group_view_t *g = group_of(&view, "batcher");
    assert_int_equal(g->committed, count);
    assert_int_equal(g->lag, 0);
    assert_int_equal(g->in_flight, 0);
    assert_int_equal(g->redelivered, 0);
}

/* A batch handler that refuses one event of a batch (acknowledge[i]
 * false) gets that event alone again after the NACK delay (a refusal does
 * not count as a delivery: delivery_count stays 1); the others of its
 * batch are acknowledged and never handed over again, and the next event
 * of the refused event's key waits until it is acknowledged. */
static void test_events_batch_refusal_redelivers_only_that_event(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "batchrefuse", true,
                 (const char *[]){"PAYGATE_BROKER_NACK_DELAY_MS=200", NULL});
    enum { count = 10, refused = 3, same_key = 7 };
    char id[32], key[32], payload[32];
    for (int i = 0; i < count; i++) {
        snprintf(id, sizeof id, "bat-%d", i);
        snprintf(key, sizeof key, "key-%d", i == same_key ? refused : i);
        snprintf(payload, sizeof payload, "payload-%d", i);
        publish_ok(f, "batched", id, key, payload, (uint64_t)i);
    }
    batch_log_t b;
    batch_log_init(&b, refused);
    /* linger well past the NACK delay: nothing else may come again */
    bool ok = batch_consume(f, &b, count, 1000);
    pthread_mutex_destroy(&b.lock);
    assert_true(ok);

    assert_false(b.unexpected);
    assert_false(b.same_key_in_call);
    assert_true(b.largest > 1);
    assert_int_equal(b.acknowledged, count);
    for (int i = 0; i < count; i++) {
        if (b.handed[i] != (i == refused ? 2 : 1))
            fail_msg("event %d was handed over %d times", i, b.handed[i]);
        assert_int_equal(b.counts[i][0], 1);
    }
    assert_int_equal(b.counts[refused][1], 1); /* a NACK is not a failed delivery */
    int refused_at = -1, same_key_at = -1;
    for (int k = 0; k < count; k++) {
        if (b.order[k] == refused)
            refused_at = k;
        if (b.order[k] == same_key)
            same_key_at = k;
    }
    assert_true(refused_at >= 0 && same_key_at > refused_at);
    topic_view_t view;
    topic_view_must(f, "batched", &view);
    const group_view_t *g = group_of(&view, "batcher");
    assert_int_equal(g->committed, count);
    assert_int_equal(g->redelivered, 1);
    assert_int_equal(g->dead_lettered, 0);
}

/* ---- 9c. rpc_client_publish_many ------------------------------------------ */

enum { many_max = 16 };

/* Fills 'items' with 'count' events "<prefix>-<first + i>" of 'topic',
 * key "k<i % 3>", payload the id; 'ids' holds the strings. */
static void many_fill(rpc_publish_item_t *items, char (*ids)[32], size_t count, const char *topic,
                      const char *prefix, int first)
{
    static const char *const keys[] = {"k0", "k1", "k2"};
    for (size_t i = 0; i < count; i++) {
        snprintf(ids[i], sizeof ids[i], "%s-%d", prefix, first + (int)i);
        items[i] = (rpc_publish_item_t){.topic = topic,
                                        .event_id = ids[i],
                                        .key = keys[i % 3],
                                        .payload = ids[i],
                                        .payload_len = strlen(ids[i]),
                                        .code = PAYGATE__V1__CODE__INTERNAL,
                                        .offset = UINT64_MAX,
                                        .duplicate = true};
    }
}

/* rpc_client_publish_many: twelve events in one call are all OK with
 * offsets 0..11 in the order sent; the same ids again (in another order,
 * with two new ones) are duplicates with their first offsets, the new
 * ones stored next; in a call with an event of an invalid topic and one
 * without an event id, those two fail (INVALID_ARGUMENT) and the others
 * are stored. A reader sees each event once, in offset order. */
static void test_publish_many(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "publishmany", true, NULL);
    rpc_publish_item_t items[many_max];
    char ids[many_max][32];
    many_fill(items, ids, 12, "many", "m", 0);
    assert_int_equal(rpc_client_publish_many(f->client, items, 12, publish_deadline_ms), 12);
    for (size_t i = 0; i < 12; i++) {
        assert_int_equal(items[i].code, PAYGATE__V1__CODE__OK);
        assert_false(items[i].duplicate);
        assert_int_equal(items[i].offset, i);
    }

    /* again, reversed, then two new ones */
    rpc_publish_item_t again[many_max];
    char again_ids[many_max][32];
    for (size_t i = 0; i < 12; i++) {
        many_fill(&again[i], &again_ids[i], 1, "many", "m", 11 - (int)i);
        again[i].key = items[11 - i].key;
    }
    many_fill(&again[12], &again_ids[12], 2, "many", "m", 12);
    assert_int_equal(rpc_client_publish_many(f->client, again, 14, publish_deadline_ms), 14);
    for (size_t i = 0; i < 12; i++) {
        assert_int_equal(again[i].code, PAYGATE__V1__CODE__OK);
        assert_true(again[i].duplicate);
        assert_int_equal(again[i].offset, 11 - i);
    }
    for (size_t i = 12; i < 14; i++) {
        assert_int_equal(again[i].code, PAYGATE__V1__CODE__OK);
        assert_false(again[i].duplicate);
        assert_int_equal(again[i].offset, i);
    }

    /* a bad topic and a missing event id among good ones */
    rpc_publish_item_t mixed[4];
    char mixed_ids[4][32];
    many_fill(mixed, mixed_ids, 4, "many", "v", 0);
    mixed[1].topic = "Bad Topic!";
    mixed[2].event_id = "";
    assert_int_equal(rpc_client_publish_many(f->client, mixed, 4, publish_deadline_ms), 2);
    assert_int_equal(mixed[0].code, PAYGATE__V1__CODE__OK);
    assert_int_equal(mixed[0].offset, 14);
    assert_int_equal(mixed[1].code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_int_equal(mixed[2].code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
    assert_int_equal(mixed[3].code, PAYGATE__V1__CODE__OK);
    assert_int_equal(mixed[3].offset, 15);
    assert_false(mixed[3].duplicate);

    topic_view_t view;
    topic_view_must(f, "many", &view);
    assert_int_equal(view.end_offset, 16);
    assert_int_equal(view.published, 16);
    assert_int_equal(view.duplicates, 12);
    assert_int_equal(view.topic_count, 1); /* nothing stored under the bad name */

    member_t *m = member_join(f, "many", "reader", "reader-1", 16, 5000, false);
    for (int i = 0; i < 16; i++) {
        char expected[32];
        if (i < 14)
            snprintf(expected, sizeof expected, "m-%d", i);
        else
            snprintf(expected, sizeof expected, "v-%d", i == 14 ? 0 : 3);
        delivery_t d;
        member_expect(m, 5000, &d);
        assert_int_equal(d.offset, i);
        assert_string_equal(d.event_id, expected);
        assert_int_equal(d.payload_len, strlen(expected));
        assert_memory_equal(d.payload, expected, d.payload_len);
        member_ack_delivery(m, &d);
    }
    member_expect_nothing(m, 300);
}

/* rpc_client_publish_many without an answer in time (the broker
 * SIGSTOPped): every item DEADLINE_EXCEEDED and 0 returned. Once the
 * broker goes on, it stores them and answers late; the next call must
 * drop those late answers and take only its own (offsets after the late
 * ones), and the first call's ids are then duplicates at offsets 0..2. */
static void test_publish_many_late_answers(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "publishlate", true, NULL);
    rpc_publish_item_t items[3], next[3], again[3];
    char ids[3][32], next_ids[3][32], again_ids[3][32];
    many_fill(items, ids, 3, "late", "late", 0);
    proc_signal(&f->broker, SIGSTOP);
    size_t ok = rpc_client_publish_many(f->client, items, 3, 300);
    proc_signal(&f->broker, SIGCONT);
    assert_int_equal(ok, 0);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(items[i].code, PAYGATE__V1__CODE__DEADLINE_EXCEEDED);

    many_fill(next, next_ids, 3, "late", "next", 0);
    assert_int_equal(rpc_client_publish_many(f->client, next, 3, publish_deadline_ms), 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(next[i].code, PAYGATE__V1__CODE__OK);
        assert_false(next[i].duplicate);
        assert_int_equal(next[i].offset, 3 + i);
    }
    many_fill(again, again_ids, 3, "late", "late", 0);
    assert_int_equal(rpc_client_publish_many(f->client, again, 3, publish_deadline_ms), 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(again[i].code, PAYGATE__V1__CODE__OK);
        assert_true(again[i].duplicate);
        assert_int_equal(again[i].offset, i);
    }
}

/* A broker without an event bus answers each PUBLISH of a
 * rpc_client_publish_many UNIMPLEMENTED: nothing is OK, 0 returned. */
static void test_publish_many_without_bus(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "publishmanynobus", false, NULL);
    rpc_publish_item_t items[4];
    char ids[4][32];
    many_fill(items, ids, 4, "many", "nobus", 0);
    assert_int_equal(rpc_client_publish_many(f->client, items, 4, publish_deadline_ms), 0);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(items[i].code, PAYGATE__V1__CODE__UNIMPLEMENTED);
    assert_true(broker_alive(f));
}

/* ---- 10. bad input --------------------------------------------------------- */

/* SUBSCRIBE with invalid topic names, PUBLISH without an event id, ACKs
 * for unknown topics, groups and offsets and from a peer that does not
 * hold the event: the broker counts what is malformed, changes nothing,
 * and keeps serving. */
static void test_bad_input_survived(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "badinput", true, NULL);
    publish_ok(f, "good", "good-0", "", "g0", 0);
    member_t *holder = member_join(f, "good", "g", "holder-1", 1, 5000, false);
    delivery_t d;
    member_expect(holder, 5000, &d);
    assert_int_equal(d.offset, 0); /* in flight, not acknowledged */

    member_t *bad = member_new(f, 0);
    member_subscribe(bad, "Bad Topic!", "g", "bad-1", 1, false);
    member_subscribe(bad, "a-topic-name-that-is-longer-than-forty-eight-chars", "g", "bad-2", 1,
                     false);
    member_subscribe(bad, "good", "Bad Group", "bad-3", 1, false);

    Paygate__V1__Event event = PAYGATE__V1__EVENT__INIT;
    event.topic = (char *)"good";
    event.event_id = (char *)"";
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__PUBLISH;
    header.correlation_id = 77;
    header.event = &event;
    member_send(bad, &header);

    member_ack(bad, "good", "nogroup", 0);    /* unknown group */
    member_ack(bad, "nosuchtopic", "g", 0);   /* unknown topic */
    member_ack(bad, "good", "g", 0);          /* not a consumer: not its event */
    member_ack(holder, "good", "g", 12345);   /* never delivered */
    member_ack(holder, "good", "nogroup", 0); /* a consumer, but the wrong group */
    member_expect_nothing(holder, 300);

    assert_true(broker_alive(f));
    topic_view_t view;
    topic_view_must(f, "good", &view);
    assert_int_equal(view.end_offset, 1); /* the PUBLISH without id stored nothing */
    assert_int_equal(view.group_count, 1);
    const group_view_t *g = group_of(&view, "g");
    assert_int_equal(g->committed, 0); /* no ACK above counted */
    assert_int_equal(g->in_flight, 1);
    assert_int_equal(view.topic_count, 1); /* no topic from the bad SUBSCRIBEs */
    Paygate__V1__BrokerStats stats;
    assert_true(discovery_stats(f->client, &stats));
    assert_int_equal(stats.frames_malformed, 4);

    /* Still serving: publishes, deliveries and the real ACK work. */
    publish_ok(f, "good", "good-1", "", "g1", 1);
    member_ack_delivery(holder, &d);
    member_expect(holder, 3000, &d);
    assert_int_equal(d.offset, 1);
    member_ack_delivery(holder, &d);
    member_t *alive[] = {holder};
    assert_true(wait_group(f, alive, 1, "good", "g", 2, 1, 3000));
    assert_true(broker_alive(f));
}

/* A PUBLISH the broker cannot accept (no event id) is answered, with the
 * publisher's correlation id and INVALID_ARGUMENT, as a malformed REQUEST
 * is: a publisher must not wait for its deadline to learn it. */
static void test_publish_without_event_id_is_answered(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "noeventid", true, NULL);
    member_t *raw = member_new(f, 0);
    Paygate__V1__Event event = PAYGATE__V1__EVENT__INIT;
    event.topic = (char *)"good";
    event.event_id = (char *)"";
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__PUBLISH;
    header.correlation_id = 77;
    header.event = &event;
    member_send(raw, &header);

    zmq_pollitem_t item = {.socket = raw->socket, .events = ZMQ_POLLIN};
    int ready = zmq_poll(&item, 1, 2000);
    if (ready <= 0)
        print_error("no answer to a PUBLISH without event id within 2 s\n");
    assert_int_equal(ready, 1);
    wire_message_t msg;
    const char *detail = NULL;
    assert_int_equal(wire_recv(raw->socket, false, 1 << 20, 0, &msg, &detail), WIRE_OK);
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__REPLY);
    assert_true(msg.header->correlation_id == 77);
    assert_non_null(msg.header->status);
    assert_int_equal(msg.header->status->code, PAYGATE__V1__CODE__INVALID_ARGUMENT);
    wire_message_clear(&msg);
}

/* Topic and group names "." and ".." are path components, not names: the
 * broker must not write outside its data directory for them (".." would
 * be the data dir's parent), and must not accept them. */
static void test_dot_names_stay_inside_data_dir(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "dotnames", true, NULL);
    rpc_status_t status;
    Paygate__V1__Code up = publish(f, "..", "dot-1", "", "escape", 6, NULL, NULL, &status);
    Paygate__V1__Code here = publish(f, ".", "dot-2", "", "here", 4, NULL, NULL, &status);
    member_t *m = member_join(f, "t", "..", "dots-1", 1, 5000, false);
    member_expect_nothing(m, 300);
    assert_true(broker_alive(f));

    /* Nothing but the data dir in its parent. */
    DIR *dir = opendir(f->root);
    assert_non_null(dir);
    struct dirent *entry;
    int strays = 0;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0 ||
            strcmp(entry->d_name, "data") == 0)
            continue;
        print_error("outside the data dir: %s/%s\n", f->root, entry->d_name);
        strays++;
    }
    closedir(dir);
    assert_int_equal(strays, 0);
    assert_int_not_equal(up, PAYGATE__V1__CODE__OK);
    assert_int_not_equal(here, PAYGATE__V1__CODE__OK);
    topic_view_t view;
    assert_true(topic_view(f, "t", &view));
    for (size_t i = 0; view.found && i < view.group_count; i++)
        assert_string_not_equal(view.groups[i].name, "..");
}

/* Without PAYGATE_BROKER_DATA_DIR the broker has no bus: PUBLISH is
 * answered UNIMPLEMENTED (reason bus_disabled) at once, SUBSCRIBE with
 * DISCONNECT UNIMPLEMENTED, and discovery lists no topics. */
static void test_bus_disabled(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "disabled", false, NULL);
    rpc_status_t status;
    int64_t start = clock_now_ms();
    assert_int_equal(publish(f, "orders", "x-1", "", "x", 1, NULL, NULL, &status),
                     PAYGATE__V1__CODE__UNIMPLEMENTED);
    assert_string_equal(status.reason, "bus_disabled");
    assert_true(clock_now_ms() - start < 2000);

    member_t *m = member_join(f, "orders", "g", "g-1", 1, 5000, false);
    delivery_t d;
    assert_int_equal(member_recv(m, 3000, &d), -1);
    assert_int_equal(m->disconnect_code, PAYGATE__V1__CODE__UNIMPLEMENTED);

    topic_view_t view;
    assert_true(topic_view(f, "orders", &view));
    assert_false(view.found);
    assert_int_equal(view.topic_count, 0);
    assert_true(broker_alive(f));
}

/* ---- 11. the outbox relay (lib/outbox) ------------------------------------- */

enum { relay_rows_max = 16, relay_wait_ms = 10000 };

/* Runs 'sql' on the fixture's scratch database; it must succeed. */
static void relay_sql(fixture_t *f, const char *sql)
{
    PGresult *r = PQexec(f->db, sql);
    ExecStatusType status = PQresultStatus(r);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
        print_error("%s: %s\n", sql, PQerrorMessage(f->db));
    assert_true(status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK);
    PQclear(r);
}

/* The first column of the first row of 'sql', as a number. */
static long long relay_number(fixture_t *f, const char *sql)
{
    PGresult *r = PQexec(f->db, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        print_error("%s: %s\n", sql, PQerrorMessage(f->db));
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 1);
    long long value = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return value;
}

/* A scratch database with schema "relay" holding an outbox table as the
 * services' migrations make it (dropped by the teardown). */
static void relay_db_new(fixture_t *f)
{
    const char *dsn = getenv("PAYGATE_TEST_PG_DSN");
    if (dsn == NULL || dsn[0] == '\0')
        fail_msg("PAYGATE_TEST_PG_DSN is not set: run the suite with ./dev test");
    snprintf(f->db_base_dsn, sizeof f->db_base_dsn, "%s", dsn);
    snprintf(f->db_name, sizeof f->db_name, "bus_relay_%d", (int)getpid());
    assert_true(scratch_db_create(dsn, f->db_name, f->db_dsn, sizeof f->db_dsn));
    f->db_made = true;
    f->db = PQconnectdb(f->db_dsn);
    if (PQstatus(f->db) != CONNECTION_OK)
        fail_msg("cannot connect to %s: %s", f->db_name, PQerrorMessage(f->db));
    relay_sql(f, "SET client_min_messages = warning");
    relay_sql(f, "CREATE SCHEMA relay");
    relay_sql(f, "CREATE TABLE relay.outbox (id bigserial PRIMARY KEY,"
                 " event_id text NOT NULL UNIQUE, topic text NOT NULL, key text NOT NULL,"
                 " payload bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
                 " sent_at timestamptz)");
}

typedef struct {
    const char *event_id;
    const char *topic;
    const char *key;
} relay_row_t;

/* Inserts 'rows' (NULL event id ends them) in one statement, ids in
 * order; each payload is its event id. */
static void relay_insert(fixture_t *f, const relay_row_t *rows)
{
    char sql[4096];
    size_t len = (size_t)snprintf(
        sql, sizeof sql, "INSERT INTO relay.outbox (event_id, topic, key, payload) VALUES");
    for (size_t i = 0; rows[i].event_id != NULL; i++)
        len += (size_t)snprintf(sql + len, sizeof sql - len, "%s ('%s', '%s', '%s', '%s'::bytea)",
                                i > 0 ? "," : "", rows[i].event_id, rows[i].topic, rows[i].key,
                                rows[i].event_id);
    assert_true(len < sizeof sql);
    relay_sql(f, sql);
}

/* Whether the row of 'event_id' has sent_at. */
static bool relay_sent(fixture_t *f, const char *event_id)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM relay.outbox WHERE event_id = '%s' AND sent_at IS NOT NULL",
             event_id);
    return relay_number(f, sql) == 1;
}

/* Waits until the row of 'event_id' (NULL: every row) has sent_at. */
static bool relay_wait_sent(fixture_t *f, const char *event_id)
{
    int64_t until = clock_now_ms() + relay_wait_ms;
    while (clock_now_ms() < until) {
        if (event_id != NULL ? relay_sent(f, event_id)
                             : relay_number(f, "SELECT count(*) FROM relay.outbox"
                                               " WHERE sent_at IS NULL") == 0)
            return true;
        sleep_ms(50);
    }
    print_error("outbox row %s not sent within %d ms\n", event_id ? event_id : "(any)",
                relay_wait_ms);
    return false;
}

/* Starts the relay of schema "relay" towards the fixture's broker. */
static void relay_start(fixture_t *f)
{
    outbox_relay_config_t config = {
        .pg_dsn = f->db_dsn,
        .schema = "relay",
        .broker_endpoint = f->endpoint,
        .interval_ms = 20,
        .publish_deadline_ms = 2000,
    };
    f->relay = outbox_relay_start(&config);
    assert_non_null(f->relay);
}

/* Reads 'count' events of topic "relayed" as a new group 'group' from
 * its start, acknowledging each, and then asserts that nothing more
 * comes; 'offsets[i]' is the offset of the row 'rows[i]' (UINT64_MAX
 * when it did not come). */
static void relay_read(fixture_t *f, const char *group, const relay_row_t *rows, size_t count,
                       uint64_t *offsets)
{
    size_t n = 0;
    while (rows[n].event_id != NULL)
        n++;
    for (size_t i = 0; i < n; i++)
        offsets[i] = UINT64_MAX;
    member_t *m = member_join(f, "relayed", group, group, 16, 5000, false);
    for (size_t k = 0; k < count; k++) {
        delivery_t d;
        member_expect(m, 5000, &d);
        size_t i = 0;
        while (i < n && strcmp(rows[i].event_id, d.event_id) != 0)
            i++;
        if (i == n)
            fail_msg("unexpected event %s at offset %llu", d.event_id,
                     (unsigned long long)d.offset);
        assert_int_equal(offsets[i], UINT64_MAX); /* once */
        assert_int_equal(d.payload_len, strlen(d.event_id));
        assert_memory_equal(d.payload, d.event_id, d.payload_len);
        assert_string_equal(d.key, rows[i].key);
        offsets[i] = d.offset;
        member_ack_delivery(m, &d);
    }
    member_expect_nothing(m, 300);
}

/* Asserts that rows of one key have increasing offsets in id order. */
static void relay_assert_key_order(const relay_row_t *rows, const uint64_t *offsets)
{
    for (size_t i = 0; rows[i].event_id != NULL; i++) {
        for (size_t j = i + 1; rows[j].event_id != NULL; j++) {
            if (rows[i].key[0] == '\0' || strcmp(rows[i].key, rows[j].key) != 0)
                continue;
            if (offsets[i] == UINT64_MAX || offsets[j] == UINT64_MAX || offsets[i] >= offsets[j])
                fail_msg("key %s: %s (offset %llu) is not before %s (offset %llu)", rows[i].key,
                         rows[i].event_id, (unsigned long long)offsets[i], rows[j].event_id,
                         (unsigned long long)offsets[j]);
        }
    }
}

/* Outbox rows with keys A,A,B,A,C,B, one without a key and A again,
 * waiting before the relay starts: it sends them all (each row marked
 * sent, each event stored once), each key's events in id order, in waves
 * of at most one event per key (the first of each key, then the second,
 * ...: the offsets show the waves). */
static void test_outbox_relay_waves_keep_key_order(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "relaywaves", true, NULL);
    relay_db_new(f);
    static const relay_row_t rows[] = {
        {"w-1", "relayed", "A"}, {"w-2", "relayed", "A"}, {"w-3", "relayed", "B"},
        {"w-4", "relayed", "A"}, {"w-5", "relayed", "C"}, {"w-6", "relayed", "B"},
        {"w-7", "relayed", ""},  {"w-8", "relayed", "A"}, {NULL, NULL, NULL}};
    enum { count = 8 };
    relay_insert(f, rows);
    relay_start(f);
    assert_true(relay_wait_sent(f, NULL));

    topic_view_t view;
    topic_view_must(f, "relayed", &view);
    assert_int_equal(view.end_offset, count);
    assert_int_equal(view.duplicates, 0);
    uint64_t offsets[relay_rows_max];
    relay_read(f, "checker", rows, count, offsets);
    relay_assert_key_order(rows, offsets);
    /* the waves: {w-1, w-3, w-5, w-7}, {w-2, w-6}, {w-4}, {w-8} */
    static const uint64_t waves[count] = {0, 4, 1, 6, 2, 5, 3, 7};
    for (size_t i = 0; i < count; i++) {
        if (offsets[i] != waves[i])
            fail_msg("%s stored at offset %llu, its wave says %llu", rows[i].event_id,
                     (unsigned long long)offsets[i], (unsigned long long)waves[i]);
    }
}

/* A row whose publish fails (an invalid topic: INVALID_ARGUMENT, every
 * time) holds back its key's later rows, which stay unsent and
 * unpublished, while other keys' rows go on (a pass stops after the wave
 * with the failure; the next starts with the failed row). Once the row is
 * repaired it is sent, then its key's next one, in order. */
static void test_outbox_relay_failure_holds_back_only_its_key(void **state)
{
    fixture_t *f = *state;
    start_broker(f, "relayfail", true, NULL);
    relay_db_new(f);
    static const relay_row_t rows[] = {{"x-1", "relayed", "A"}, {"x-2", "Bad Topic!", "A"},
                                       {"x-3", "relayed", "A"}, {"x-4", "relayed", "B"},
                                       {"x-5", "relayed", "B"}, {"x-6", "relayed", "B"},
                                       {NULL, NULL, NULL}};
    relay_insert(f, rows);
    relay_start(f);
    assert_true(relay_wait_sent(f, "x-6"));
    sleep_ms(1500); /* three more passes (the relay retries every 500 ms) */
    assert_true(relay_sent(f, "x-1"));
    assert_false(relay_sent(f, "x-2"));
    assert_false(relay_sent(f, "x-3"));
    assert_true(relay_sent(f, "x-4"));
    assert_true(relay_sent(f, "x-5"));
    topic_view_t view;
    topic_view_must(f, "relayed", &view);
    assert_int_equal(view.end_offset, 4); /* x-1, x-4, x-5, x-6; not x-3 */
    uint64_t offsets[relay_rows_max];
    relay_read(f, "before", rows, 4, offsets);
    assert_true(offsets[0] != UINT64_MAX);
    assert_true(offsets[2] == UINT64_MAX);

    relay_sql(f, "UPDATE relay.outbox SET topic = 'relayed' WHERE event_id = 'x-2'");
    assert_true(relay_wait_sent(f, NULL));
    topic_view_must(f, "relayed", &view);
    assert_int_equal(view.end_offset, 6);
    static const relay_row_t repaired[] = {{"x-1", "relayed", "A"}, {"x-2", "relayed", "A"},
                                           {"x-3", "relayed", "A"}, {"x-4", "relayed", "B"},
                                           {"x-5", "relayed", "B"}, {"x-6", "relayed", "B"},
                                           {NULL, NULL, NULL}};
    relay_read(f, "after", repaired, 6, offsets);
    relay_assert_key_order(repaired, offsets);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_publish_offsets_and_duplicates),
        T(test_group_receives_every_event_in_order),
        T(test_members_share_and_groups_fan_out),
        T(test_unacked_event_redelivered_then_dead_lettered),
        T(test_dead_member_events_go_to_other_member),
        T(test_expiry_hands_events_to_dead_member),
        T(test_per_key_order),
        T(test_durable_across_sigkill),
        T(test_restart_keeps_exactly_the_groups),
        T(test_replay_and_start_at_end),
        T(test_events_consumer_survives_broker_restart),
        T(test_events_batch_handler_gets_what_waits),
        T(test_events_batch_refusal_redelivers_only_that_event),
        T(test_publish_many),
        T(test_publish_many_late_answers),
        T(test_publish_many_without_bus),
        T(test_bad_input_survived),
        T(test_publish_without_event_id_is_answered),
        T(test_dot_names_stay_inside_data_dir),
        T(test_bus_disabled),
        T(test_outbox_relay_waves_keep_key_order),
        T(test_outbox_relay_failure_holds_back_only_its_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
