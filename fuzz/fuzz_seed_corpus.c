/*
 * fuzz_seed_corpus: writes the seed corpora of the fuzz targets, each a
 * handful of valid inputs in the target's input layout (see the header
 * comment of each fuzz_<target>.c):
 *
 *   <out>/transcode/  README's request bodies (+ a path, query or header
 *                     value after a NUL), and bodies with every field shape
 *                     and with messages nested to the depth limit
 *   <out>/wire/       real frames: one Header of every command
 *   <out>/protobuf/   real messages: requests, replies, events, headers
 *   <out>/eventlog/   segment files that eventlog_append() wrote: one
 *                     segment, a torn one, several in the "SEGS" layout, and
 *                     an empty directory
 *
 * Usage: fuzz_seed_corpus <out dir>   (the committed seeds: fuzz/corpus)
 *
 * The output is deterministic: running it again rewrites the same files.
 * Must never: write outside <out dir> (and one temporary directory).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.pb-c.h"
#include "echo.pb-c.h"
#include "events.pb-c.h"
#include "eventlog.h"
#include "log/log.h"
#include "notification.pb-c.h"
#include "order.pb-c.h"
#include "payment.pb-c.h"
#include "status.pb-c.h"
#include "transaction.pb-c.h"
#include "user.pb-c.h"

enum { file_bytes_max = 64 * 1024 };

static const char *out_dir;

/* Exits with a message naming 'what' when 'ok' is false. */
static void require(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_seed_corpus: %s: %s\n", what, errno ? strerror(errno) : "failed");
        exit(1);
    }
}

/* Writes 'len' bytes at 'data' to <out>/<target>/<name>. */
static void write_seed(const char *target, const char *name, const void *data, size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", out_dir, target);
    require(mkdir(path, 0755) == 0 || errno == EEXIST, path);
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, target, name);
    FILE *f = fopen(path, "wb");
    require(f != NULL, path);
    require(fwrite(data, 1, len, f) == len && fclose(f) == 0, path);
}

/* ---- transcode: JSON body, NUL, parameter ------------------------------------ */

static void transcode_seed(const char *name, const char *body, const char *parameter)
{
    char buffer[file_bytes_max];
    size_t len = strlen(body);
    memcpy(buffer, body, len);
    if (parameter != NULL) {
        buffer[len++] = '\0';
        memcpy(buffer + len, parameter, strlen(parameter));
        len += strlen(parameter);
    }
    write_seed("transcode", name, buffer, len);
}

static void transcode_seeds(void)
{
    /* README's "Try it" bodies, with the header or path value each goes with. */
    transcode_seed("register",
                   "{\"email\":\"asha@example.com\",\"password\":\"correct horse\","
                   "\"name\":\"Asha\"}",
                   NULL);
    transcode_seed("login", "{\"email\":\"asha@example.com\",\"password\":\"correct horse\"}",
                   NULL);
    transcode_seed("topup", "{\"amount\":200000}", "t1");
    transcode_seed("order", "{\"amount\":100000,\"receipt\":\"r-1\"}", NULL);
    transcode_seed("order_full",
                   "{\"amount\":100000,\"currency\":\"INR\",\"receipt\":\"r-1\","
                   "\"description\":\"Chai \xe2\x82\xb9\"}",
                   NULL);
    transcode_seed("payment", "{\"order_id\":\"ord_01hx\"}", "p1");
    transcode_seed("refund", "{\"amount\":5000}", "pay_01hx");
    transcode_seed("cancel_path_id", "{}", "ord_01hx");
    transcode_seed("list_query_limit", "{}", "10");
    transcode_seed("bad_type", "{\"amount\":\"100\"}", "-1");
    /* Every field shape of tests/unit/transcode_test.proto. */
    transcode_seed("all_types",
                   "{\"f_int32\":-5,\"f_sint32\":-6,\"f_sfixed32\":7,\"f_int64\":-8,"
                   "\"f_sint64\":9,\"f_sfixed64\":-10,\"f_uint32\":11,\"f_uint64\":12,"
                   "\"f_fixed32\":13,\"f_fixed64\":14,\"f_float\":1.5,\"f_double\":-2.25,"
                   "\"f_bool\":true,\"f_string\":\"h\xc3\xa9llo\",\"f_bytes\":\"AAEC/w==\","
                   "\"colour\":\"COLOUR_GREEN\",\"child\":{\"amount\":1,\"note\":\"n\","
                   "\"child\":{\"amount\":2}},\"amounts\":[1,-2,3],\"tags\":[\"a\",\"b\"],"
                   "\"items\":[{\"amount\":3},{\"note\":\"x\"}],\"balances\":{\"INR\":100},"
                   "\"upi_id\":\"asha@upi\",\"colours\":[\"COLOUR_RED\"],\"blobs\":[\"AA==\"],"
                   "\"flags\":[true,false],\"ratios\":[0.5,1e-3],"
                   "\"children_by_id\":{\"-1\":{\"amount\":4}},"
                   "\"names_by_u64\":{\"18446744073709551615\":\"max\"},"
                   "\"labels_by_flag\":{\"true\":\"yes\"}}",
                   "42");
    transcode_seed("all_types_card", "{\"card\":{\"amount\":1,\"child\":{\"note\":\"c\"}}}",
                   "COLOUR_RED");
    /* Children nested to the depth limit (32 message levels in all). */
    char deep[1024] = "{";
    for (int level = 2; level <= 32; level++)
        strcat(deep, "\"child\":{");
    for (int level = 2; level <= 32; level++)
        strcat(deep, "}");
    strcat(deep, "}");
    transcode_seed("all_types_deepest", deep, NULL);
}

/* ---- wire: control byte, u16-prefixed frames, last frame bare ---------------- */

/* Appends frame 'data' to 'buffer' at '*len', length-prefixed unless 'last'. */
static void wire_frame(uint8_t *buffer, size_t *len, const void *data, size_t data_len, bool last)
{
    require(*len + 2 + data_len <= file_bytes_max, "wire seed size");
    if (!last) {
        buffer[(*len)++] = (uint8_t)data_len;
        buffer[(*len)++] = (uint8_t)(data_len >> 8);
    }
    memcpy(buffer + *len, data, data_len);
    *len += data_len;
}

/* A seed: optional identity ('identity_len' bytes), "PGW1", 'header',
 * optional body. */
static void wire_seed(const char *name, const Paygate__V1__Header *header, const char *identity,
                      size_t identity_len, const char *body)
{
    uint8_t packed[file_bytes_max];
    size_t packed_len = paygate__v1__header__get_packed_size(header);
    require(packed_len <= sizeof packed, "header size");
    paygate__v1__header__pack(header, packed);
    size_t frames = 2 + (identity != NULL) + (body != NULL);
    uint8_t buffer[file_bytes_max];
    size_t len = 0;
    buffer[len++] = (uint8_t)((frames - 1) | (identity != NULL ? 1 << 2 : 0));
    if (identity != NULL)
        wire_frame(buffer, &len, identity, identity_len, false);
    wire_frame(buffer, &len, "PGW1", 4, false);
    wire_frame(buffer, &len, packed, packed_len, body == NULL);
    if (body != NULL)
        wire_frame(buffer, &len, body, strlen(body), true);
    write_seed("wire", name, buffer, len);
}

static void wire_seeds(void)
{
    Paygate__V1__Header h;
    Paygate__V1__Ready ready;
    Paygate__V1__CallMeta meta;
    Paygate__V1__Caller caller;
    Paygate__V1__Status status;
    Paygate__V1__Event event;
    Paygate__V1__Subscribe subscribe;

    paygate__v1__header__init(&h);
    paygate__v1__ready__init(&ready);
    h.command = PAYGATE__V1__COMMAND__READY;
    ready.service = "payment";
    ready.instance_id = "payment-host-42-0";
    ready.heartbeat_interval_ms = 1000;
    ready.max_in_flight = 4;
    h.ready = &ready;
    wire_seed("ready", &h, NULL, 0, NULL);
    wire_seed("ready_routed", &h, "\x00\x6b\x8b\x45\x67", 5, NULL); /* ROUTER's own ids */

    paygate__v1__header__init(&h);
    h.command = PAYGATE__V1__COMMAND__HEARTBEAT;
    wire_seed("heartbeat", &h, NULL, 0, NULL);

    paygate__v1__header__init(&h);
    paygate__v1__call_meta__init(&meta);
    paygate__v1__caller__init(&caller);
    h.command = PAYGATE__V1__COMMAND__REQUEST;
    h.correlation_id = 7;
    h.service = "order";
    h.method = "Create";
    meta.request_id = "req-3f2a";
    meta.deadline_ms = 5000;
    caller.user_id = "usr_01hx";
    caller.principal = "gateway";
    meta.caller = &caller;
    h.meta = &meta;
    wire_seed("request", &h, NULL, 0, "\x08\xa0\x8d\x06\x1a\x03r-1");
    wire_seed("request_routed", &h, "client-1", 8, "\x08\xa0\x8d\x06");

    paygate__v1__header__init(&h);
    paygate__v1__status__init(&status);
    Paygate__V1__Status__DetailsEntry detail;
    paygate__v1__status__details_entry__init(&detail);
    Paygate__V1__Status__DetailsEntry *details[] = {&detail};
    h.command = PAYGATE__V1__COMMAND__REPLY;
    h.correlation_id = 7;
    status.code = PAYGATE__V1__CODE__FAILED_PRECONDITION;
    status.message = "order is not payable";
    status.reason = "order_not_payable";
    detail.key = "order_id";
    detail.value = "ord_01hx";
    status.n_details = 1;
    status.details = details;
    h.status = &status;
    wire_seed("reply_error", &h, NULL, 0, NULL);
    paygate__v1__status__init(&status);
    wire_seed("reply_ok", &h, NULL, 0, "\x0a\x08ord_01hx");

    paygate__v1__header__init(&h);
    h.command = PAYGATE__V1__COMMAND__DISCONNECT;
    wire_seed("disconnect", &h, NULL, 0, NULL);

    paygate__v1__header__init(&h);
    paygate__v1__event__init(&event);
    h.command = PAYGATE__V1__COMMAND__PUBLISH;
    h.correlation_id = 9;
    event.topic = "payments";
    event.event_id = "evt_01hx";
    event.key = "usr_01hx";
    h.event = &event;
    wire_seed("publish", &h, NULL, 0, "\x0a\x08evt_01hx\x10\x01");
    h.command = PAYGATE__V1__COMMAND__DELIVER;
    event.offset = 4711;
    event.timestamp_ms = 1767225600000;
    event.group = "transaction";
    event.delivery_count = 1;
    wire_seed("deliver", &h, NULL, 0, "\x0a\x08evt_01hx\x10\x01");
    h.command = PAYGATE__V1__COMMAND__ACK;
    wire_seed("ack", &h, NULL, 0, NULL);
    h.command = PAYGATE__V1__COMMAND__NACK;
    wire_seed("nack", &h, NULL, 0, NULL);

    paygate__v1__header__init(&h);
    paygate__v1__subscribe__init(&subscribe);
    h.command = PAYGATE__V1__COMMAND__SUBSCRIBE;
    subscribe.topic = "payments";
    subscribe.group = "notification";
    subscribe.consumer_id = "notification-host-1-0";
    subscribe.max_in_flight = 16;
    subscribe.heartbeat_interval_ms = 1000;
    h.subscribe = &subscribe;
    wire_seed("subscribe", &h, NULL, 0, NULL);
}

/* ---- protobuf: one packed message per file ------------------------------------ */

static void protobuf_seed(const char *name, const ProtobufCMessage *msg)
{
    uint8_t buffer[file_bytes_max];
    size_t len = protobuf_c_message_get_packed_size(msg);
    require(len <= sizeof buffer, "message size");
    protobuf_c_message_pack(msg, buffer);
    write_seed("protobuf", name, buffer, len);
}

static void protobuf_seeds(void)
{
    Paygate__V1__RegisterRequest reg = PAYGATE__V1__REGISTER_REQUEST__INIT;
    reg.email = "asha@example.com";
    reg.password = "correct horse";
    reg.name = "Asha";
    protobuf_seed("register_request", &reg.base);

    Paygate__V1__TopUpRequest topup = PAYGATE__V1__TOP_UP_REQUEST__INIT;
    topup.amount = 200000;
    topup.idempotency_key = "t1";
    protobuf_seed("top_up_request", &topup.base);

    Paygate__V1__Order order = PAYGATE__V1__ORDER__INIT;
    order.id = "ord_01hx";
    order.user_id = "usr_01hx";
    order.amount = 100000;
    order.currency = "INR";
    order.status = PAYGATE__V1__ORDER_STATUS__PENDING;
    order.receipt = "r-1";
    order.created_at = "2026-01-01T00:00:00Z";
    order.updated_at = "2026-01-01T00:00:00Z";
    protobuf_seed("order", &order.base);

    Paygate__V1__Payment payment = PAYGATE__V1__PAYMENT__INIT;
    payment.id = "pay_01hx";
    payment.order_id = "ord_01hx";
    payment.amount = 100000;
    payment.currency = "INR";
    payment.status = PAYGATE__V1__PAYMENT_STATUS__FAILED;
    payment.failure_code = "insufficient_funds";
    Paygate__V1__Payment *payments[] = {&payment, &payment};
    Paygate__V1__PaymentList list = PAYGATE__V1__PAYMENT_LIST__INIT;
    list.n_data = 2;
    list.data = payments;
    list.has_more = 1;
    protobuf_seed("payment_list", &list.base);

    Paygate__V1__MoneyEvent event = PAYGATE__V1__MONEY_EVENT__INIT;
    event.event_id = "evt_01hx";
    event.type = PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED;
    event.user_id = "usr_01hx";
    event.amount = 50000;
    event.currency = "INR";
    event.order_id = "ord_01hx";
    event.payment_id = "pay_01hx";
    event.occurred_at = "2026-01-01T00:00:00Z";
    protobuf_seed("money_event", &event.base);

    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    Paygate__V1__Status__DetailsEntry detail = PAYGATE__V1__STATUS__DETAILS_ENTRY__INIT;
    Paygate__V1__Status__DetailsEntry *details[] = {&detail};
    status.code = PAYGATE__V1__CODE__ALREADY_EXISTS;
    status.message = "email taken";
    status.reason = "email_taken";
    detail.key = "field";
    detail.value = "email";
    status.n_details = 1;
    status.details = details;
    protobuf_seed("status", &status.base);

    Paygate__V1__InstanceInfo instance = PAYGATE__V1__INSTANCE_INFO__INIT;
    instance.instance_id = "echo-1";
    instance.heartbeat_age_ms = 12;
    instance.max_in_flight = 4;
    Paygate__V1__InstanceInfo *instances[] = {&instance};
    Paygate__V1__ServiceInfo service = PAYGATE__V1__SERVICE_INFO__INIT;
    service.name = "echo";
    service.n_instances = 1;
    service.instances = instances;
    Paygate__V1__ServiceInfo *services[] = {&service};
    Paygate__V1__BrokerStats stats = PAYGATE__V1__BROKER_STATS__INIT;
    stats.requests_routed = UINT64_MAX; /* above INT64_MAX: a JSON string */
    Paygate__V1__ListServicesReply reply = PAYGATE__V1__LIST_SERVICES_REPLY__INIT;
    reply.n_services = 1;
    reply.services = services;
    reply.stats = &stats;
    protobuf_seed("list_services_reply", &reply.base);

    Paygate__V1__EchoRequest echo = PAYGATE__V1__ECHO_REQUEST__INIT;
    echo.payload = (ProtobufCBinaryData){.len = 4, .data = (uint8_t *)"\x00\xff\x10\x80"};
    echo.sleep_ms = 5;
    protobuf_seed("echo_request", &echo.base);

    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    Paygate__V1__CallMeta meta = PAYGATE__V1__CALL_META__INIT;
    header.command = PAYGATE__V1__COMMAND__REQUEST;
    header.correlation_id = 7;
    header.service = "payment";
    header.method = "Create";
    meta.request_id = "req-1";
    meta.deadline_ms = 2000;
    header.meta = &meta;
    protobuf_seed("header_request", &header.base);
}

/* ---- eventlog: segment files eventlog_append() wrote -------------------------- */

/* Reads <dir>/<name> into 'buffer' (at most 'capacity' bytes); returns
 * its length. */
static size_t read_file(const char *dir, const char *name, uint8_t *buffer, size_t capacity)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    require(f != NULL, path);
    size_t len = fread(buffer, 1, capacity, f);
    require(feof(f), "segment file larger than a seed");
    fclose(f);
    return len;
}

/* Appends 'count' records to a log in 'dir' with 'segment_bytes_max'. */
static void append_records(const char *dir, uint64_t segment_bytes_max, int count)
{
    eventlog_config_t config = {.dir = dir, .segment_bytes_max = segment_bytes_max};
    eventlog_t *log = eventlog_open(&config);
    require(log != NULL, "eventlog_open");
    for (int i = 0; i < count; i++) {
        char id[32], key[32];
        uint8_t payload[64];
        snprintf(id, sizeof id, "evt_%04d", i);
        if (i % 3 == 0)
            key[0] = '\0';
        else
            snprintf(key, sizeof key, "usr_%d", i % 2);
        size_t payload_len = (size_t)(i * 7) % sizeof payload;
        for (size_t k = 0; k < payload_len; k++)
            payload[k] = (uint8_t)(i + (int)k);
        require(eventlog_append(log, id, key, payload, payload_len, 1767225600000 + i, NULL) == 0,
                "eventlog_append");
    }
    require(eventlog_sync(log) == 0, "eventlog_sync");
    eventlog_close(&log);
}

/* Removes every file of 'dir', then 'dir'. */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
    rmdir(dir);
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void eventlog_seeds(void)
{
    char root[] = "/tmp/paygate-fuzz-seeds-XXXXXX";
    require(mkdtemp(root) != NULL, "mkdtemp");
    char dir[64];
    snprintf(dir, sizeof dir, "%s/log", root);
    static uint8_t segment[file_bytes_max];

    /* One segment of 6 records (empty and non-empty keys and payloads). */
    append_records(dir, 0, 6);
    size_t len = read_file(dir, "00000000000000000000.log", segment, sizeof segment);
    write_seed("eventlog", "segment", segment, len);
    /* The same, torn in the middle of its last record. */
    write_seed("eventlog", "segment_torn", segment, len - 9);
    /* One record only. */
    write_seed("eventlog", "one_record", segment, 32 + 8);
    remove_dir(dir);

    /* Several segments (small segment_bytes_max), in the "SEGS" layout. */
    append_records(dir, 160, 7);
    uint8_t buffer[file_bytes_max];
    size_t at = 0;
    memcpy(buffer, "SEGS", 4);
    at += 4;
    DIR *d = opendir(dir);
    require(d != NULL, dir);
    char names[8][64];
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && count < 8)
        if (strlen(e->d_name) == 24)
            snprintf(names[count++], sizeof names[0], "%s", e->d_name);
    closedir(d);
    qsort(names, (size_t)count, sizeof names[0], compare_names); /* readdir has no order */
    require(count >= 2 && count <= 4, "the several-segments seed has 2..4 segments");
    for (int i = 0; i < count; i++) {
        uint64_t base = strtoull(names[i], NULL, 10);
        len = read_file(dir, names[i], segment, sizeof segment);
        require(len <= 0xffff && at + 10 + len <= sizeof buffer, "segment size in a seed");
        for (int k = 0; k < 8; k++)
            buffer[at++] = (uint8_t)(base >> (8 * k));
        buffer[at++] = (uint8_t)len;
        buffer[at++] = (uint8_t)(len >> 8);
        memcpy(buffer + at, segment, len);
        at += len;
    }
    write_seed("eventlog", "segments", buffer, at);
    /* "SEGS" and no segment: an empty directory. */
    write_seed("eventlog", "empty_directory", "SEGS", 4);
    remove_dir(dir);
    rmdir(root);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s <out dir> (the committed seeds: fuzz/corpus)\n", argv[0]);
        return 2;
    }
    out_dir = argv[1];
    setenv("PAYGATE_LOG_LEVEL", "warn", 0);
    log_init("fuzz_seed_corpus");
    require(mkdir(out_dir, 0755) == 0 || errno == EEXIST, out_dir);
    transcode_seeds();
    wire_seeds();
    protobuf_seeds();
    eventlog_seeds();
    return 0;
}
