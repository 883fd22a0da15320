/*
 * test_wire: unit tests of lib/wire, the broker protocol's frames.
 *
 * Three parts:
 *   - wire_decode on headers built with protobuf-c and packed: each command
 *     valid, then each way a peer can get it wrong (signature, junk bytes,
 *     unknown command, every field a command needs), and a deterministic
 *     junk loop that must never crash nor accept a NULL header;
 *   - the name and token validators at their length and character limits;
 *   - wire_send/wire_recv round trips over a real inproc:// DEALER<->ROUTER
 *     pair: bodies, identities, too many frames, too big, too few frames.
 *
 * Nothing here needs a broker: the sockets live in this process.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "broker.pb-c.h"
#include "status.pb-c.h"
#include "wire/wire.h"

/* ---- helpers: headers ---------------------------------------------------- */

/* A packed header, big enough for every header these tests build. */
typedef struct {
    uint8_t bytes[8 * 1024];
    size_t len;
} packed_t;

/* Packs 'header' into 'out'; fails the test if it does not fit. */
static void pack_header(const Paygate__V1__Header *header, packed_t *out)
{
    size_t size = paygate__v1__header__get_packed_size(header);
    assert_true(size <= sizeof out->bytes);
    out->len = paygate__v1__header__pack(header, out->bytes);
    assert_int_equal(out->len, size);
}

/* Decodes 'packed' behind a good signature; 'has_body' as given. */
static wire_error_t decode_packed(const packed_t *packed, bool has_body, Paygate__V1__Header **out,
                                  const char **detail)
{
    return wire_decode((const uint8_t *)WIRE_SIGNATURE, wire_signature_bytes, packed->bytes,
                       packed->len, has_body, out, detail);
}

/* Packs and decodes 'header'; asserts the result is 'expected'. For
 * WIRE_OK and WIRE_ERR_FIELD checks that '*out' is the decoded header (same
 * command and correlation id) and frees it; otherwise that it is NULL. */
static void expect_decode(const Paygate__V1__Header *header, bool has_body, wire_error_t expected)
{
    packed_t packed;
    pack_header(header, &packed);
    Paygate__V1__Header *out = (Paygate__V1__Header *)(uintptr_t)1; /* must be overwritten */
    const char *detail = NULL;
    wire_error_t rc = decode_packed(&packed, has_body, &out, &detail);
    if (rc != expected)
        fail_msg("wire_decode returned %d (%s), expected %d", (int)rc, detail ? detail : "-",
                 (int)expected);
    if (expected == WIRE_OK || expected == WIRE_ERR_FIELD) {
        assert_non_null(out);
        assert_int_equal(out->command, header->command);
        assert_int_equal(out->correlation_id, header->correlation_id);
        paygate__v1__header__free_unpacked(out, NULL);
    } else {
        assert_null(out);
    }
    if (expected == WIRE_OK)
        assert_null(detail);
    else
        assert_non_null(detail);
}

/* A string of 'n' copies of 'c' in 'buffer' (which holds n + 1 bytes). */
static char *repeat(char *buffer, char c, size_t n)
{
    memset(buffer, c, n);
    buffer[n] = '\0';
    return buffer;
}

static Paygate__V1__Header ready_header(Paygate__V1__Ready *ready)
{
    paygate__v1__ready__init(ready);
    ready->service = (char *)"payments";
    ready->instance_id = (char *)"payments-7f3a";
    ready->heartbeat_interval_ms = 1000;
    ready->max_in_flight = 4;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__READY;
    header.correlation_id = 42;
    header.ready = ready;
    return header;
}

static Paygate__V1__Header request_header(Paygate__V1__CallMeta *meta)
{
    paygate__v1__call_meta__init(meta);
    meta->request_id = (char *)"req-0001";
    meta->deadline_ms = 1500;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REQUEST;
    header.correlation_id = 77;
    header.service = (char *)"payments";
    header.method = (char *)"Capture";
    header.meta = meta;
    return header;
}

/* ---- wire_decode: valid headers ------------------------------------------ */

static void test_decode_ready_valid(void **state)
{
    (void)state;
    Paygate__V1__Ready ready;
    Paygate__V1__Header header = ready_header(&ready);
    packed_t packed;
    pack_header(&header, &packed);
    Paygate__V1__Header *out = NULL;
    const char *detail = "not reset";
    assert_int_equal(decode_packed(&packed, false, &out, &detail), WIRE_OK);
    assert_null(detail);
    assert_non_null(out);
    assert_int_equal(out->command, PAYGATE__V1__COMMAND__READY);
    assert_int_equal(out->correlation_id, 42);
    assert_non_null(out->ready);
    assert_string_equal(out->ready->service, "payments");
    assert_string_equal(out->ready->instance_id, "payments-7f3a");
    assert_int_equal(out->ready->heartbeat_interval_ms, 1000);
    assert_int_equal(out->ready->max_in_flight, 4);
    paygate__v1__header__free_unpacked(out, NULL);

    /* The limits themselves are allowed, and 0 means "broker default". */
    ready.heartbeat_interval_ms = 60000;
    ready.max_in_flight = 1024;
    expect_decode(&header, false, WIRE_OK);
    ready.heartbeat_interval_ms = 0;
    ready.max_in_flight = 0;
    expect_decode(&header, false, WIRE_OK);
}

static void test_decode_heartbeat_and_disconnect_valid(void **state)
{
    (void)state;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__HEARTBEAT;
    expect_decode(&header, false, WIRE_OK);

    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__UNAVAILABLE;
    status.message = (char *)"unknown worker: register again";
    header.command = PAYGATE__V1__COMMAND__DISCONNECT;
    header.status = &status;
    packed_t packed;
    pack_header(&header, &packed);
    Paygate__V1__Header *out = NULL;
    const char *detail = NULL;
    assert_int_equal(decode_packed(&packed, false, &out, &detail), WIRE_OK);
    assert_int_equal(out->command, PAYGATE__V1__COMMAND__DISCONNECT);
    assert_non_null(out->status);
    assert_int_equal(out->status->code, PAYGATE__V1__CODE__UNAVAILABLE);
    assert_string_equal(out->status->message, "unknown worker: register again");
    paygate__v1__header__free_unpacked(out, NULL);
}

static void test_decode_request_valid(void **state)
{
    (void)state;
    Paygate__V1__CallMeta meta;
    Paygate__V1__Header header = request_header(&meta);
    Paygate__V1__Caller caller = PAYGATE__V1__CALLER__INIT;
    caller.user_id = (char *)"user_123";
    caller.principal = (char *)"gateway";
    meta.caller = &caller;
    packed_t packed;
    pack_header(&header, &packed);
    Paygate__V1__Header *out = NULL;
    const char *detail = NULL;
    assert_int_equal(decode_packed(&packed, true, &out, &detail), WIRE_OK);
    assert_string_equal(out->service, "payments");
    assert_string_equal(out->method, "Capture");
    assert_int_equal(out->correlation_id, 77);
    assert_non_null(out->meta);
    assert_string_equal(out->meta->request_id, "req-0001");
    assert_int_equal(out->meta->deadline_ms, 1500);
    assert_non_null(out->meta->caller);
    assert_string_equal(out->meta->caller->user_id, "user_123");
    paygate__v1__header__free_unpacked(out, NULL);

    /* Without a body, without meta, and with an empty request id. */
    expect_decode(&header, false, WIRE_OK);
    meta.request_id = (char *)"";
    expect_decode(&header, true, WIRE_OK);
    header.meta = NULL;
    expect_decode(&header, true, WIRE_OK);
}

static void test_decode_reply_valid(void **state)
{
    (void)state;
    char text[wire_message_text_bytes_max + 1];
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__NOT_FOUND;
    status.reason = (char *)"payment_not_found";
    status.message = repeat(text, 'm', wire_message_text_bytes_max); /* exactly the limit */
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REPLY;
    header.correlation_id = UINT64_MAX;
    header.status = &status;
    packed_t packed;
    pack_header(&header, &packed);
    Paygate__V1__Header *out = NULL;
    const char *detail = NULL;
    assert_int_equal(decode_packed(&packed, true, &out, &detail), WIRE_OK);
    assert_int_equal(out->correlation_id, UINT64_MAX);
    assert_int_equal(out->status->code, PAYGATE__V1__CODE__NOT_FOUND);
    assert_string_equal(out->status->reason, "payment_not_found");
    assert_int_equal(strlen(out->status->message), wire_message_text_bytes_max);
    paygate__v1__header__free_unpacked(out, NULL);

    /* A REPLY without status means OK. */
    header.status = NULL;
    expect_decode(&header, false, WIRE_OK);
}

/* ---- wire_decode: bad frames --------------------------------------------- */

static void test_decode_bad_signature(void **state)
{
    (void)state;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__HEARTBEAT;
    packed_t packed;
    pack_header(&header, &packed);
    static const struct {
        const char *sig;
        size_t len;
    } cases[] = {
        {"PGW2", 4},              /* another version */
        {"pgw1", 4},              /* case matters */
        {"XGW1", 4},  {"PGW", 3}, /* too short */
        {"PGW1x", 5},             /* too long */
        {"", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Paygate__V1__Header *out = NULL;
        const char *detail = NULL;
        wire_error_t rc = wire_decode((const uint8_t *)cases[i].sig, cases[i].len, packed.bytes,
                                      packed.len, false, &out, &detail);
        if (rc != WIRE_ERR_SIGNATURE)
            fail_msg("signature case %zu: got %d", i, (int)rc);
        assert_null(out);
        assert_non_null(detail);
    }
}

static void test_decode_header_not_protobuf(void **state)
{
    (void)state;
    Paygate__V1__Header *out = NULL;
    const char *detail = NULL;
    const uint8_t *sig = (const uint8_t *)WIRE_SIGNATURE;

    /* Field 1 as a varint that never ends. */
    static const uint8_t endless_varint[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                                             0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(
        wire_decode(sig, 4, endless_varint, sizeof endless_varint, false, &out, &detail),
        WIRE_ERR_HEADER);
    assert_null(out);
    assert_non_null(detail);

    /* A length-delimited field (service) longer than the frame. */
    static const uint8_t overlong[] = {0x08, 0x03, 0x1a, 0x40, 'a', 'b'};
    assert_int_equal(wire_decode(sig, 4, overlong, sizeof overlong, false, &out, &detail),
                     WIRE_ERR_HEADER);
    assert_null(out);

    /* Wire type 7 does not exist. */
    static const uint8_t bad_wire_type[] = {0x0f, 0x01};
    assert_int_equal(wire_decode(sig, 4, bad_wire_type, sizeof bad_wire_type, false, &out, &detail),
                     WIRE_ERR_HEADER);
    assert_null(out);

    /* Text, not protobuf. */
    static const char text[] = "{\"command\":\"READY\"}";
    assert_int_equal(
        wire_decode(sig, 4, (const uint8_t *)text, sizeof text - 1, false, &out, &detail),
        WIRE_ERR_HEADER);
    assert_null(out);

    /* A valid READY cut short by one byte, and by half. */
    Paygate__V1__Ready ready;
    Paygate__V1__Header header = ready_header(&ready);
    packed_t packed;
    pack_header(&header, &packed);
    assert_int_equal(wire_decode(sig, 4, packed.bytes, packed.len - 1, false, &out, &detail),
                     WIRE_ERR_HEADER);
    assert_null(out);
    assert_int_equal(wire_decode(sig, 4, packed.bytes, packed.len / 2, false, &out, &detail),
                     WIRE_ERR_HEADER);
    assert_null(out);

    /* A header frame over 64 KiB is refused before parsing. */
    size_t big_len = wire_header_bytes_max + 1;
    uint8_t *big = calloc(1, big_len);
    assert_non_null(big);
    assert_int_equal(wire_decode(sig, 4, big, big_len, false, &out, &detail), WIRE_ERR_HEADER);
    assert_null(out);
    free(big);
}

static void test_decode_unknown_command(void **state)
{
    (void)state;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.correlation_id = 5;
    header.command = (Paygate__V1__Command)99;
    expect_decode(&header, false, WIRE_ERR_COMMAND);
    header.command = PAYGATE__V1__COMMAND__COMMAND_UNSPECIFIED;
    expect_decode(&header, false, WIRE_ERR_COMMAND);
    header.command = (Paygate__V1__Command)11; /* one past NACK */
    expect_decode(&header, false, WIRE_ERR_COMMAND);
    header.command = (Paygate__V1__Command)-1;
    expect_decode(&header, false, WIRE_ERR_COMMAND);

    /* An empty header frame is a header with command 0. */
    Paygate__V1__Header *out = NULL;
    const char *detail = NULL;
    static const uint8_t nothing[1] = {0};
    assert_int_equal(
        wire_decode((const uint8_t *)WIRE_SIGNATURE, 4, nothing, 0, false, &out, &detail),
        WIRE_ERR_COMMAND);
    assert_null(out);
}

/* ---- wire_decode: fields per command ------------------------------------- */

static void test_decode_ready_bad_fields(void **state)
{
    (void)state;
    char long_name[wire_service_bytes_max + 2];
    char long_instance[wire_instance_bytes_max + 2];
    Paygate__V1__Ready ready;
    Paygate__V1__Header header = ready_header(&ready);

    header.ready = NULL;
    expect_decode(&header, false, WIRE_ERR_FIELD);
    header.ready = &ready;

    static const char *const bad_services[] = {
        "",          "Payments",  "PAY",   "pay ments",  " payments",
        "payments ", "pay/ments", "pay:x", "pay\tments", "\xc3\xbcmlaut",
    };
    for (size_t i = 0; i < sizeof bad_services / sizeof bad_services[0]; i++) {
        ready.service = (char *)bad_services[i];
        expect_decode(&header, false, WIRE_ERR_FIELD);
    }
    ready.service = repeat(long_name, 's', wire_service_bytes_max + 1); /* 65 */
    expect_decode(&header, false, WIRE_ERR_FIELD);
    ready.service = repeat(long_name, 's', wire_service_bytes_max); /* 64 */
    expect_decode(&header, false, WIRE_OK);
    ready.service = (char *)"ledger_v2.eu-west";
    expect_decode(&header, false, WIRE_OK);

    ready.instance_id = (char *)"";
    expect_decode(&header, false, WIRE_ERR_FIELD);
    ready.instance_id = (char *)"host 1";
    expect_decode(&header, false, WIRE_ERR_FIELD);
    ready.instance_id = (char *)"host\n1";
    expect_decode(&header, false, WIRE_ERR_FIELD);
    ready.instance_id = repeat(long_instance, 'i', wire_instance_bytes_max + 1); /* 129 */
    expect_decode(&header, false, WIRE_ERR_FIELD);
    ready.instance_id = repeat(long_instance, 'i', wire_instance_bytes_max); /* 128 */
    expect_decode(&header, false, WIRE_OK);
    ready.instance_id = (char *)"host-1:4242/pid=9";
    expect_decode(&header, false, WIRE_OK);

    ready.heartbeat_interval_ms = 60001;
    expect_decode(&header, false, WIRE_ERR_FIELD);
    ready.heartbeat_interval_ms = UINT32_MAX;
    expect_decode(&header, false, WIRE_ERR_FIELD);
    ready.heartbeat_interval_ms = 1000;

    ready.max_in_flight = 1025;
    expect_decode(&header, false, WIRE_ERR_FIELD);
    ready.max_in_flight = UINT32_MAX;
    expect_decode(&header, false, WIRE_ERR_FIELD);
}

/* WIRE_ERR_FIELD hands back the decoded header so that the broker can
 * answer the sender's correlation id: check the whole header survives. */
static void test_decode_field_error_keeps_header(void **state)
{
    (void)state;
    Paygate__V1__CallMeta meta;
    Paygate__V1__Header header = request_header(&meta);
    header.method = (char *)"Capture Now";
    header.correlation_id = 0x1122334455667788u;
    packed_t packed;
    pack_header(&header, &packed);
    Paygate__V1__Header *out = NULL;
    const char *detail = NULL;
    assert_int_equal(decode_packed(&packed, true, &out, &detail), WIRE_ERR_FIELD);
    assert_non_null(out);
    assert_non_null(detail);
    assert_non_null(strstr(detail, "method"));
    assert_int_equal(out->command, PAYGATE__V1__COMMAND__REQUEST);
    assert_int_equal(out->correlation_id, 0x1122334455667788u);
    assert_string_equal(out->service, "payments");
    assert_string_equal(out->method, "Capture Now");
    assert_string_equal(out->meta->request_id, "req-0001");
    paygate__v1__header__free_unpacked(out, NULL);
}

static void test_decode_request_bad_fields(void **state)
{
    (void)state;
    char long_text[wire_request_id_bytes_max + 2];
    Paygate__V1__CallMeta meta;
    Paygate__V1__Header header = request_header(&meta);

    header.service = (char *)"";
    expect_decode(&header, true, WIRE_ERR_FIELD);
    header.service = (char *)"Payments";
    expect_decode(&header, true, WIRE_ERR_FIELD);
    header.service = repeat(long_text, 'p', wire_service_bytes_max + 1);
    expect_decode(&header, true, WIRE_ERR_FIELD);
    header.service = (char *)"payments";

    static const char *const bad_methods[] = {"",         "Capture Now", "Capture-Now",
                                              "Cap/ture", "Capture()",   "\xc3\xa9t\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad_methods / sizeof bad_methods[0]; i++) {
        header.method = (char *)bad_methods[i];
        expect_decode(&header, true, WIRE_ERR_FIELD);
    }
    header.method = repeat(long_text, 'M', wire_method_bytes_max + 1);
    expect_decode(&header, true, WIRE_ERR_FIELD);
    header.method = repeat(long_text, 'M', wire_method_bytes_max);
    expect_decode(&header, true, WIRE_OK);
    header.method = (char *)"v2.Capture_All";
    expect_decode(&header, true, WIRE_OK);

    meta.request_id = (char *)"req 1";
    expect_decode(&header, true, WIRE_ERR_FIELD);
    meta.request_id = (char *)"req\x7f";
    expect_decode(&header, true, WIRE_ERR_FIELD);
    meta.request_id = repeat(long_text, 'r', wire_request_id_bytes_max + 1);
    expect_decode(&header, true, WIRE_ERR_FIELD);
    meta.request_id = repeat(long_text, 'r', wire_request_id_bytes_max);
    expect_decode(&header, true, WIRE_OK);
}

static void test_decode_reply_message_too_long(void **state)
{
    (void)state;
    char *text = malloc(2001);
    assert_non_null(text);
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__INTERNAL;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REPLY;
    header.correlation_id = 9;
    header.status = &status;
    status.message = repeat(text, 'x', 2000);
    expect_decode(&header, true, WIRE_ERR_FIELD);
    status.message = repeat(text, 'x', wire_message_text_bytes_max + 1);
    expect_decode(&header, false, WIRE_ERR_FIELD);
    status.message = repeat(text, 'x', wire_message_text_bytes_max);
    expect_decode(&header, false, WIRE_OK);
    free(text);
}

static void test_decode_body_not_allowed(void **state)
{
    (void)state;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__HEARTBEAT;
    expect_decode(&header, true, WIRE_ERR_FIELD);
    header.command = PAYGATE__V1__COMMAND__DISCONNECT;
    expect_decode(&header, true, WIRE_ERR_FIELD);
}

/* ---- validators ---------------------------------------------------------- */

static void test_service_name_valid(void **state)
{
    (void)state;
    char name[wire_service_bytes_max + 2];
    assert_true(wire_service_name_valid("a"));
    assert_true(wire_service_name_valid("payments"));
    assert_true(wire_service_name_valid("0-9_a.z"));
    assert_true(wire_service_name_valid(repeat(name, 'a', wire_service_bytes_max)));
    assert_false(wire_service_name_valid(repeat(name, 'a', wire_service_bytes_max + 1)));
    assert_false(wire_service_name_valid(NULL));
    assert_false(wire_service_name_valid(""));
    assert_false(wire_service_name_valid("A"));
    assert_false(wire_service_name_valid("pay ments"));
    assert_false(wire_service_name_valid("pay/ments"));
    assert_false(wire_service_name_valid("pay\x80"));
    /* The last allowed position takes the same character check. */
    repeat(name, 'a', wire_service_bytes_max);
    name[wire_service_bytes_max - 1] = 'Z';
    assert_false(wire_service_name_valid(name));
}

static void test_method_name_valid(void **state)
{
    (void)state;
    char name[wire_method_bytes_max + 2];
    assert_true(wire_method_name_valid("M"));
    assert_true(wire_method_name_valid("Capture"));
    assert_true(wire_method_name_valid("v1.Refund_Partial9"));
    assert_true(wire_method_name_valid(repeat(name, 'M', wire_method_bytes_max)));
    assert_false(wire_method_name_valid(repeat(name, 'M', wire_method_bytes_max + 1)));
    assert_false(wire_method_name_valid(NULL));
    assert_false(wire_method_name_valid(""));
    assert_false(wire_method_name_valid("Cap-ture")); /* '-' is for services only */
    assert_false(wire_method_name_valid("Cap ture"));
    assert_false(wire_method_name_valid("Capture\n"));
}

static void test_token_valid(void **state)
{
    (void)state;
    char text[130];
    assert_true(wire_token_valid("x", 1));
    assert_false(wire_token_valid("xy", 1));
    assert_true(wire_token_valid("!~", 2)); /* both ends of printable ASCII */
    assert_true(wire_token_valid(repeat(text, 't', 64), 64));
    assert_false(wire_token_valid(repeat(text, 't', 65), 64));
    assert_true(wire_token_valid(repeat(text, 't', 128), 128));
    assert_false(wire_token_valid(repeat(text, 't', 129), 128));
    assert_false(wire_token_valid(NULL, 64));
    assert_false(wire_token_valid("", 64));
    assert_false(wire_token_valid("a b", 64));
    assert_false(wire_token_valid("a\tb", 64));
    assert_false(wire_token_valid("\x7f", 64));
    assert_false(wire_token_valid("caf\xc3\xa9", 64));
}

/* ---- names --------------------------------------------------------------- */

static void test_code_name(void **state)
{
    (void)state;
    assert_string_equal(wire_code_name(PAYGATE__V1__CODE__OK), "OK");
    assert_string_equal(wire_code_name(PAYGATE__V1__CODE__INVALID_ARGUMENT), "INVALID_ARGUMENT");
    assert_string_equal(wire_code_name(PAYGATE__V1__CODE__UNAVAILABLE), "UNAVAILABLE");
    assert_string_equal(wire_code_name(PAYGATE__V1__CODE__DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
    assert_string_equal(wire_code_name(PAYGATE__V1__CODE__UNIMPLEMENTED), "UNIMPLEMENTED");
    assert_string_equal(wire_code_name((Paygate__V1__Code)12), "UNKNOWN_CODE");
    assert_string_equal(wire_code_name((Paygate__V1__Code)99), "UNKNOWN_CODE");
    assert_string_equal(wire_code_name((Paygate__V1__Code)-1), "UNKNOWN_CODE");
}

static void test_error_text(void **state)
{
    (void)state;
    assert_string_equal(wire_error_text(WIRE_OK), "ok");
    const char *seen[WIRE_ERR_TOO_BIG + 1];
    for (int e = WIRE_OK; e <= WIRE_ERR_TOO_BIG; e++) {
        seen[e] = wire_error_text((wire_error_t)e);
        assert_non_null(seen[e]);
        for (int k = 0; k < e; k++)
            assert_string_not_equal(seen[k], seen[e]);
    }
    assert_string_equal(wire_error_text((wire_error_t)42), "unknown wire error");
}

/* ---- junk ---------------------------------------------------------------- */

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* Checks one wire_decode result against the contract, and frees. */
static void check_junk_result(wire_error_t rc, Paygate__V1__Header *out, const char *detail,
                              size_t round)
{
    switch (rc) {
    case WIRE_OK:
        if (out == NULL)
            fail_msg("round %zu: WIRE_OK with a NULL header", round);
        assert_null(detail);
        /* What is accepted must really satisfy the command's rules. */
        if (out->command == PAYGATE__V1__COMMAND__READY) {
            assert_non_null(out->ready);
            assert_true(wire_service_name_valid(out->ready->service));
        } else if (out->command == PAYGATE__V1__COMMAND__REQUEST) {
            assert_true(wire_service_name_valid(out->service));
            assert_true(wire_method_name_valid(out->method));
        }
        break;
    case WIRE_ERR_FIELD:
        if (out == NULL)
            fail_msg("round %zu: WIRE_ERR_FIELD with a NULL header", round);
        assert_non_null(detail);
        break;
    case WIRE_ERR_SIGNATURE:
    case WIRE_ERR_HEADER:
    case WIRE_ERR_COMMAND:
        if (out != NULL)
            fail_msg("round %zu: error %d with a header", round, (int)rc);
        assert_non_null(detail);
        break;
    default:
        fail_msg("round %zu: wire_decode returned %d", round, (int)rc);
    }
    if (out != NULL)
        paygate__v1__header__free_unpacked(out, NULL);
}

static void test_decode_junk_never_crashes(void **state)
{
    (void)state;
    enum { rounds = 10000, junk_bytes_max = 96 };
    uint64_t seed = 0x9e3779b97f4a7c15u;
    uint8_t junk[junk_bytes_max];
    size_t accepted = 0;
    for (size_t round = 0; round < rounds; round++) {
        size_t len = (size_t)(xorshift64(&seed) % (junk_bytes_max + 1));
        for (size_t i = 0; i < len; i++)
            junk[i] = (uint8_t)xorshift64(&seed);
        /* Start most strings with a plausible field tag so that the parser
         * gets past the first byte often. */
        if (len > 0 && round % 4 != 0)
            junk[0] = (uint8_t)((1 + xorshift64(&seed) % 7) << 3 | (xorshift64(&seed) & 2));
        bool has_body = (xorshift64(&seed) & 1) != 0;
        Paygate__V1__Header *out = NULL;
        const char *detail = NULL;
        wire_error_t rc =
            wire_decode((const uint8_t *)WIRE_SIGNATURE, 4, junk, len, has_body, &out, &detail);
        if (rc == WIRE_OK)
            accepted++;
        check_junk_result(rc, out, detail, round);
    }
    /* Junk is junk: most of it must be refused. */
    assert_true(accepted < rounds / 2);
}

/* Flips bytes of valid headers: near-misses reach the field checks. */
static void test_decode_mutated_headers_never_crash(void **state)
{
    (void)state;
    enum { rounds = 10000 };
    Paygate__V1__Ready ready;
    Paygate__V1__Header ready_h = ready_header(&ready);
    Paygate__V1__CallMeta meta;
    Paygate__V1__Header request_h = request_header(&meta);
    packed_t valid[2];
    pack_header(&ready_h, &valid[0]);
    pack_header(&request_h, &valid[1]);
    uint64_t seed = 12345;
    size_t outcomes[WIRE_ERR_TOO_BIG + 1] = {0};
    for (size_t round = 0; round < rounds; round++) {
        packed_t p = valid[round % 2];
        int flips = 1 + (int)(xorshift64(&seed) % 3);
        for (int f = 0; f < flips; f++)
            p.bytes[xorshift64(&seed) % p.len] = (uint8_t)xorshift64(&seed);
        if (xorshift64(&seed) % 8 == 0)
            p.len = (size_t)(xorshift64(&seed) % p.len);
        Paygate__V1__Header *out = NULL;
        const char *detail = NULL;
        wire_error_t rc = decode_packed(&p, (xorshift64(&seed) & 1) != 0, &out, &detail);
        if ((int)rc >= 0 && rc <= WIRE_ERR_TOO_BIG)
            outcomes[rc]++;
        check_junk_result(rc, out, detail, round);
    }
    /* The mutations must have exercised the interesting outcomes. */
    assert_true(outcomes[WIRE_OK] > 0);
    assert_true(outcomes[WIRE_ERR_HEADER] > 0);
    assert_true(outcomes[WIRE_ERR_FIELD] > 0);
}

/* ---- sockets ------------------------------------------------------------- */

#define CLIENT_ID "client-1"

typedef struct {
    void *ctx;
    void *router; /* the broker's side */
    void *dealer; /* a peer, with routing id CLIENT_ID */
} sockets_t;

static int sockets_setup(void **state)
{
    static int counter;
    sockets_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -1;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "inproc://test-wire-%d", counter++);
    int timeout_ms = 2000, zero = 0;
    s->ctx = zmq_ctx_new();
    s->router = zmq_socket(s->ctx, ZMQ_ROUTER);
    s->dealer = zmq_socket(s->ctx, ZMQ_DEALER);
    if (s->router == NULL || s->dealer == NULL)
        return -1;
    zmq_setsockopt(s->router, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(s->dealer, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(s->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s->dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s->dealer, ZMQ_ROUTING_ID, CLIENT_ID, strlen(CLIENT_ID));
    if (zmq_bind(s->router, endpoint) != 0 || zmq_connect(s->dealer, endpoint) != 0)
        return -1;
    *state = s;
    return 0;
}

static int sockets_teardown(void **state)
{
    sockets_t *s = *state;
    zmq_close(s->dealer);
    zmq_close(s->router);
    zmq_ctx_term(s->ctx);
    free(s);
    return 0;
}

/* A body message holding 'text'. */
static void body_init(zmq_msg_t *body, const char *text)
{
    size_t n = strlen(text);
    assert_int_equal(zmq_msg_init_size(body, n), 0);
    memcpy(zmq_msg_data(body), text, n);
}

static void send_raw_frames(void *socket, const char *const *frames, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        int more = i + 1 < count ? ZMQ_SNDMORE : 0;
        assert_true(zmq_send(socket, frames[i], strlen(frames[i]), more) >= 0);
    }
}

static void test_roundtrip_request_with_body(void **state)
{
    sockets_t *s = *state;
    Paygate__V1__CallMeta meta;
    Paygate__V1__Header header = request_header(&meta);
    zmq_msg_t body;
    body_init(&body, "{\"amount_minor\":1250}");
    size_t body_len = zmq_msg_size(&body);
    assert_int_equal(wire_send(s->dealer, NULL, 0, &header, &body, 0), 0);
    assert_int_equal(zmq_msg_size(&body), 0); /* moved */
    zmq_msg_close(&body);

    wire_message_t msg;
    const char *detail = NULL;
    assert_int_equal(wire_recv(s->router, true, 1024 * 1024, 0, &msg, &detail), WIRE_OK);
    assert_null(detail);
    assert_int_equal(msg.identity_len, strlen(CLIENT_ID));
    assert_memory_equal(msg.identity, CLIENT_ID, strlen(CLIENT_ID));
    assert_non_null(msg.header);
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__REQUEST);
    assert_int_equal(msg.header->correlation_id, 77);
    assert_string_equal(msg.header->method, "Capture");
    assert_true(msg.has_body);
    assert_int_equal(zmq_msg_size(&msg.body), body_len);
    assert_memory_equal(zmq_msg_data(&msg.body), "{\"amount_minor\":1250}", body_len);
    /* bytes counts signature + header + body, not the identity */
    size_t header_len = paygate__v1__header__get_packed_size(&header);
    assert_int_equal(msg.bytes, wire_signature_bytes + header_len + body_len);
    wire_message_clear(&msg);
    assert_null(msg.header);
    assert_false(msg.has_body);
    wire_message_clear(&msg); /* twice is safe */
}

static void test_roundtrip_reply_to_identity_without_body(void **state)
{
    sockets_t *s = *state;
    /* The router learns the dealer's identity from a first message. */
    Paygate__V1__Header hello = PAYGATE__V1__HEADER__INIT;
    hello.command = PAYGATE__V1__COMMAND__HEARTBEAT;
    assert_int_equal(wire_send(s->dealer, NULL, 0, &hello, NULL, 0), 0);
    wire_message_t msg;
    const char *detail = NULL;
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_OK);
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__HEARTBEAT);
    assert_false(msg.has_body);
    wire_message_clear(&msg);

    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__UNAVAILABLE;
    status.reason = (char *)"no_worker";
    Paygate__V1__Header reply = PAYGATE__V1__HEADER__INIT;
    reply.command = PAYGATE__V1__COMMAND__REPLY;
    reply.correlation_id = 31337;
    reply.status = &status;
    assert_int_equal(
        wire_send(s->router, (const uint8_t *)CLIENT_ID, strlen(CLIENT_ID), &reply, NULL, 0), 0);
    assert_int_equal(wire_recv(s->dealer, false, 4096, 0, &msg, &detail), WIRE_OK);
    assert_int_equal(msg.identity_len, 0);
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__REPLY);
    assert_int_equal(msg.header->correlation_id, 31337);
    assert_int_equal(msg.header->status->code, PAYGATE__V1__CODE__UNAVAILABLE);
    assert_string_equal(msg.header->status->reason, "no_worker");
    assert_false(msg.has_body);
    wire_message_clear(&msg);
}

static void test_roundtrip_reply_with_body_to_identity(void **state)
{
    sockets_t *s = *state;
    Paygate__V1__Header hello = PAYGATE__V1__HEADER__INIT;
    hello.command = PAYGATE__V1__COMMAND__HEARTBEAT;
    assert_int_equal(wire_send(s->dealer, NULL, 0, &hello, NULL, 0), 0);
    wire_message_t msg;
    const char *detail = NULL;
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_OK);
    wire_message_clear(&msg);

    /* A header over the 512-byte stack buffer of wire_send. */
    char text[wire_message_text_bytes_max + 1];
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.message = repeat(text, 'k', 900);
    Paygate__V1__Header reply = PAYGATE__V1__HEADER__INIT;
    reply.command = PAYGATE__V1__COMMAND__REPLY;
    reply.correlation_id = 8;
    reply.status = &status;
    zmq_msg_t body;
    body_init(&body, "pong");
    assert_int_equal(
        wire_send(s->router, (const uint8_t *)CLIENT_ID, strlen(CLIENT_ID), &reply, &body, 0), 0);
    zmq_msg_close(&body);
    assert_int_equal(wire_recv(s->dealer, false, 4096, 0, &msg, &detail), WIRE_OK);
    assert_int_equal(strlen(msg.header->status->message), 900);
    assert_true(msg.has_body);
    assert_int_equal(zmq_msg_size(&msg.body), 4);
    assert_memory_equal(zmq_msg_data(&msg.body), "pong", 4);
    wire_message_clear(&msg);
}

static void test_recv_five_frames_then_usable(void **state)
{
    sockets_t *s = *state;
    Paygate__V1__Header heartbeat = PAYGATE__V1__HEADER__INIT;
    heartbeat.command = PAYGATE__V1__COMMAND__HEARTBEAT;
    packed_t packed;
    pack_header(&heartbeat, &packed);
    const char *detail = NULL;
    wire_message_t msg;

    /* Five frames from the dealer: signature, header, body and two more. */
    assert_true(zmq_send(s->dealer, WIRE_SIGNATURE, 4, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(s->dealer, packed.bytes, packed.len, ZMQ_SNDMORE) >= 0);
    static const char *const rest[] = {"body", "extra-1", "extra-2"};
    send_raw_frames(s->dealer, rest, 3);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_ERR_FRAMES);
    assert_non_null(detail);
    assert_null(msg.header);
    assert_false(msg.has_body);
    assert_int_equal(msg.identity_len, strlen(CLIENT_ID)); /* so the broker can answer */
    wire_message_clear(&msg);

    /* The rest of that message was drained: the next one reads cleanly. */
    assert_int_equal(wire_send(s->dealer, NULL, 0, &heartbeat, NULL, 0), 0);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_OK);
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__HEARTBEAT);
    wire_message_clear(&msg);

    /* Many more frames than slots. */
    static const char *const many[] = {"PGW1", "a", "b", "c", "d", "e", "f", "g", "h"};
    send_raw_frames(s->dealer, many, sizeof many / sizeof many[0]);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_ERR_FRAMES);
    wire_message_clear(&msg);
    assert_int_equal(wire_send(s->dealer, NULL, 0, &heartbeat, NULL, 0), 0);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_OK);
    wire_message_clear(&msg);

    /* On a DEALER (no identity frame) four frames are already too many. */
    assert_int_equal(wire_send(s->dealer, NULL, 0, &heartbeat, NULL, 0), 0);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_OK);
    wire_message_clear(&msg);
    assert_true(zmq_send(s->router, CLIENT_ID, strlen(CLIENT_ID), ZMQ_SNDMORE) >= 0);
    static const char *const four[] = {"PGW1", "h", "body", "extra"};
    send_raw_frames(s->router, four, 4);
    assert_int_equal(wire_recv(s->dealer, false, 4096, 0, &msg, &detail), WIRE_ERR_FRAMES);
    wire_message_clear(&msg);
    assert_int_equal(
        wire_send(s->router, (const uint8_t *)CLIENT_ID, strlen(CLIENT_ID), &heartbeat, NULL, 0),
        0);
    assert_int_equal(wire_recv(s->dealer, false, 4096, 0, &msg, &detail), WIRE_OK);
    wire_message_clear(&msg);
}

static void test_recv_too_big(void **state)
{
    sockets_t *s = *state;
    Paygate__V1__CallMeta meta;
    Paygate__V1__Header header = request_header(&meta);
    header.correlation_id = 4242;
    enum { bytes_max = 256 };
    zmq_msg_t body;
    assert_int_equal(zmq_msg_init_size(&body, 300), 0);
    memset(zmq_msg_data(&body), 'b', 300);
    assert_int_equal(wire_send(s->dealer, NULL, 0, &header, &body, 0), 0);
    zmq_msg_close(&body);

    wire_message_t msg;
    const char *detail = NULL;
    assert_int_equal(wire_recv(s->router, true, bytes_max, 0, &msg, &detail), WIRE_ERR_TOO_BIG);
    assert_non_null(detail);
    /* The header is decoded, so the broker can answer RESOURCE_EXHAUSTED
     * to the right correlation id; the body is not kept. */
    assert_non_null(msg.header);
    assert_int_equal(msg.header->command, PAYGATE__V1__COMMAND__REQUEST);
    assert_int_equal(msg.header->correlation_id, 4242);
    assert_false(msg.has_body);
    assert_true(msg.bytes > bytes_max);
    assert_int_equal(msg.identity_len, strlen(CLIENT_ID));
    wire_message_clear(&msg);

    /* Exactly at the limit is fine. */
    size_t fixed = wire_signature_bytes + paygate__v1__header__get_packed_size(&header);
    assert_int_equal(zmq_msg_init_size(&body, bytes_max - fixed), 0);
    memset(zmq_msg_data(&body), 'b', bytes_max - fixed);
    assert_int_equal(wire_send(s->dealer, NULL, 0, &header, &body, 0), 0);
    zmq_msg_close(&body);
    assert_int_equal(wire_recv(s->router, true, bytes_max, 0, &msg, &detail), WIRE_OK);
    assert_int_equal(msg.bytes, bytes_max);
    assert_true(msg.has_body);
    wire_message_clear(&msg);
}

static void test_recv_too_few_frames(void **state)
{
    sockets_t *s = *state;
    wire_message_t msg;
    const char *detail = NULL;
    /* One frame. */
    assert_true(zmq_send(s->dealer, WIRE_SIGNATURE, 4, 0) >= 0);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_ERR_FRAMES);
    assert_non_null(detail);
    assert_null(msg.header);
    assert_int_equal(msg.identity_len, strlen(CLIENT_ID));
    wire_message_clear(&msg);
    /* An empty frame. */
    assert_true(zmq_send(s->dealer, "", 0, 0) >= 0);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_ERR_FRAMES);
    wire_message_clear(&msg);
    /* One frame towards a DEALER. */
    assert_true(zmq_send(s->router, CLIENT_ID, strlen(CLIENT_ID), ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(s->router, WIRE_SIGNATURE, 4, 0) >= 0);
    assert_int_equal(wire_recv(s->dealer, false, 4096, 0, &msg, &detail), WIRE_ERR_FRAMES);
    wire_message_clear(&msg);
}

static void test_recv_bad_signature_and_junk_header(void **state)
{
    sockets_t *s = *state;
    wire_message_t msg;
    const char *detail = NULL;
    static const char *const bad_sig[] = {"PGW0", "x"};
    send_raw_frames(s->dealer, bad_sig, 2);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_ERR_SIGNATURE);
    assert_null(msg.header);
    wire_message_clear(&msg);

    static const char *const bad_header[] = {"PGW1", "\xff\xff\xff"};
    send_raw_frames(s->dealer, bad_header, 2);
    assert_int_equal(wire_recv(s->router, true, 4096, 0, &msg, &detail), WIRE_ERR_HEADER);
    assert_null(msg.header);
    wire_message_clear(&msg);
}

static void test_recv_nothing_waiting(void **state)
{
    sockets_t *s = *state;
    wire_message_t msg;
    const char *detail = NULL;
    errno = 0;
    assert_int_equal(wire_recv(s->router, true, 4096, ZMQ_DONTWAIT, &msg, &detail), -1);
    assert_int_equal(errno, EAGAIN);
    assert_null(msg.header);
    wire_message_clear(&msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_ready_valid),
        cmocka_unit_test(test_decode_heartbeat_and_disconnect_valid),
        cmocka_unit_test(test_decode_request_valid),
        cmocka_unit_test(test_decode_reply_valid),
        cmocka_unit_test(test_decode_bad_signature),
        cmocka_unit_test(test_decode_header_not_protobuf),
        cmocka_unit_test(test_decode_unknown_command),
        cmocka_unit_test(test_decode_ready_bad_fields),
        cmocka_unit_test(test_decode_field_error_keeps_header),
        cmocka_unit_test(test_decode_request_bad_fields),
        cmocka_unit_test(test_decode_reply_message_too_long),
        cmocka_unit_test(test_decode_body_not_allowed),
        cmocka_unit_test(test_service_name_valid),
        cmocka_unit_test(test_method_name_valid),
        cmocka_unit_test(test_token_valid),
        cmocka_unit_test(test_code_name),
        cmocka_unit_test(test_error_text),
        cmocka_unit_test(test_decode_junk_never_crashes),
        cmocka_unit_test(test_decode_mutated_headers_never_crash),
        cmocka_unit_test_setup_teardown(test_roundtrip_request_with_body, sockets_setup,
                                        sockets_teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_reply_to_identity_without_body,
                                        sockets_setup, sockets_teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_reply_with_body_to_identity, sockets_setup,
                                        sockets_teardown),
        cmocka_unit_test_setup_teardown(test_recv_five_frames_then_usable, sockets_setup,
                                        sockets_teardown),
        cmocka_unit_test_setup_teardown(test_recv_too_big, sockets_setup, sockets_teardown),
        cmocka_unit_test_setup_teardown(test_recv_too_few_frames, sockets_setup, sockets_teardown),
        cmocka_unit_test_setup_teardown(test_recv_bad_signature_and_junk_header, sockets_setup,
                                        sockets_teardown),
        cmocka_unit_test_setup_teardown(test_recv_nothing_waiting, sockets_setup, sockets_teardown),
    };
    return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
