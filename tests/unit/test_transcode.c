/*
 * test_transcode: unit tests of lib/json/transcode, the JSON <-> protobuf
 * mapping of the public HTTP API, against the test-only messages of
 * tests/unit/transcode_test.proto:
 *
 *   - every scalar type round trips, at its boundaries, and one past them
 *     is refused with the field named;
 *   - enums by name, nested messages, repeated fields, maps, base64 bytes,
 *     oneofs; unknown fields and wrong types named by dotted path;
 *   - the depth, element and string limits;
 *   - encode emits every proto3 field, defaults included;
 *   - transcode_set_field for each type, junk included;
 *   - a decoded message packs, and unpacks to the same JSON;
 *   - a seeded random-input loop: nothing crashes, every success round
 *     trips, every failure says why.
 *
 * Nothing here touches the network, the clock or the environment.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena/arena.h"
#include "json/transcode.h"
#include "transcode_test.pb-c.h"

typedef Paygate__Test__AllTypes all_types_t;
#define ALL_TYPES (&paygate__test__all_types__descriptor)

enum {
    test_arena_block_bytes = 64 * 1024,
    random_iterations = 20000, /* per input kind in the random loop */
};

/* ---- helpers ---------------------------------------------------------------- */

/* A fresh arena per test, in '*state'. */
static int arena_setup(void **state)
{
    *state = arena_new(test_arena_block_bytes);
    return *state == NULL ? -1 : 0;
}

/* Frees the arena made by arena_setup(). */
static int arena_teardown(void **state)
{
    arena_t *arena = *state;
    arena_destroy(&arena);
    return 0;
}

/* Parses 'text' as JSON (duplicate keys refused, as the gateway should),
 * failing the test when it does not parse. */
static json_t *load(const char *text)
{
    json_error_t error;
    json_t *json = json_loads(text, JSON_REJECT_DUPLICATES, &error);
    if (json == NULL)
        fail_msg("test JSON does not parse: %s: %s", error.text, text);
    return json;
}

/* Decodes JSON 'text' as an AllTypes, failing the test with the error
 * when it is refused. */
static all_types_t *decode_ok(arena_t *arena, const char *text)
{
    json_t *json = load(text);
    transcode_error_t error;
    memset(&error, 'x', sizeof error); /* must be cleared on success */
    ProtobufCMessage *msg = transcode_from_json(json, ALL_TYPES, arena, &error);
    json_decref(json);
    if (msg == NULL)
        fail_msg("refused %s: field \"%s\": %s", text, error.field, error.message);
    assert_string_equal(error.field, "");
    assert_string_equal(error.message, "");
    assert_ptr_equal(msg->descriptor, ALL_TYPES);
    return (all_types_t *)msg;
}

/* Asserts decoding JSON value 'json' (taken) as an AllTypes is refused,
 * with error field 'field' and a message containing 'message_part'. */
static void expect_refused_json(arena_t *arena, json_t *json, const char *field,
                                const char *message_part)
{
    transcode_error_t error;
    ProtobufCMessage *msg = transcode_from_json(json, ALL_TYPES, arena, &error);
    char *text = json_dumps(json, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(json);
    if (msg != NULL)
        fail_msg("accepted %.200s", text);
    if (strcmp(error.field, field) != 0 || strstr(error.message, message_part) == NULL)
        fail_msg("%.200s: got field \"%s\" message \"%s\", want field \"%s\" message with \"%s\"",
                 text, error.field, error.message, field, message_part);
    free(text);
}

/* Asserts JSON 'text' is refused as an AllTypes, naming 'field', with a
 * message containing 'message_part'. */
static void expect_refused(arena_t *arena, const char *text, const char *field,
                           const char *message_part)
{
    expect_refused_json(arena, load(text), field, message_part);
}

/* Asserts each member of JSON object 'text' comes back equal (same JSON
 * type and value) after decode and encode as an AllTypes. Returns the
 * decoded message. */
static all_types_t *expect_round_trip(arena_t *arena, const char *text)
{
    all_types_t *msg = decode_ok(arena, text);
    json_t *in = load(text);
    json_t *out = transcode_to_json(&msg->base);
    assert_non_null(out);
    const char *key;
    json_t *value;
    json_object_foreach(in, key, value)
    {
        json_t *got = json_object_get(out, key);
        if (got == NULL || !json_equal(value, got)) {
            char *want_text = json_dumps(value, JSON_ENCODE_ANY);
            char *got_text = got ? json_dumps(got, JSON_ENCODE_ANY) : NULL;
            fail_msg("\"%s\": sent %s, got back %s", key, want_text,
                     got_text ? got_text : "(missing)");
        }
    }
    json_decref(in);
    json_decref(out);
    return msg;
}

/* Asserts transcode_set_field('msg', 'name', 'text') fails naming 'name',
 * with a message containing 'message_part', and leaves the message's
 * packed bytes unchanged. */
static void expect_set_refused(arena_t *arena, ProtobufCMessage *msg, const char *name,
                               const char *text, const char *message_part)
{
    size_t before_len = protobuf_c_message_get_packed_size(msg);
    uint8_t *before = malloc(before_len + 1);
    assert_non_null(before);
    protobuf_c_message_pack(msg, before);
    transcode_error_t error;
    if (transcode_set_field(msg, name, text, arena, &error))
        fail_msg("set %s = \"%s\" accepted", name, text);
    if (strcmp(error.field, name) != 0 || strstr(error.message, message_part) == NULL)
        fail_msg("set %s = \"%s\": got field \"%s\" message \"%s\", want \"%s\"", name, text,
                 error.field, error.message, message_part);
    size_t after_len = protobuf_c_message_get_packed_size(msg);
    assert_int_equal(after_len, before_len);
    uint8_t *after = malloc(after_len + 1);
    assert_non_null(after);
    protobuf_c_message_pack(msg, after);
    assert_memory_equal(before, after, before_len);
    free(before);
    free(after);
}

/* Sets 'name' of 'msg' from 'text', failing the test if refused. */
static void set_ok(arena_t *arena, ProtobufCMessage *msg, const char *name, const char *text)
{
    transcode_error_t error;
    if (!transcode_set_field(msg, name, text, arena, &error))
        fail_msg("set %s = \"%s\" refused: %s", name, text, error.message);
}

/* A fresh, empty AllTypes in 'arena'. */
static all_types_t *empty_message(arena_t *arena)
{
    all_types_t *msg = arena_alloc(arena, sizeof *msg);
    assert_non_null(msg);
    paygate__test__all_types__init(msg);
    return msg;
}

/* ---- scalars ---------------------------------------------------------------- */

static void test_scalars_round_trip(void **state)
{
    arena_t *arena = *state;
    all_types_t *msg =
        expect_round_trip(arena, "{\"f_int32\": -2147483648,"
                                 " \"f_sint32\": 2147483647,"
                                 " \"f_sfixed32\": -7,"
                                 " \"f_int64\": -9223372036854775808,"
                                 " \"f_sint64\": 9223372036854775807,"
                                 " \"f_sfixed64\": -1,"
                                 " \"f_uint32\": 4294967295,"
                                 " \"f_uint64\": 9223372036854775807,"
                                 " \"f_fixed32\": 1,"
                                 " \"f_fixed64\": 12345,"
                                 " \"f_float\": 1.5,"
                                 " \"f_double\": -0.25,"
                                 " \"f_bool\": true,"
                                 " \"f_string\": \"h\\u00e9llo \\u20b9 \\ud83d\\ude00\","
                                 " \"f_bytes\": \"AAEC/w==\","
                                 " \"colour\": \"COLOUR_GREEN\"}");
    assert_int_equal(msg->f_int32, INT32_MIN);
    assert_int_equal(msg->f_sint32, INT32_MAX);
    assert_int_equal(msg->f_sfixed32, -7);
    assert_true(msg->f_int64 == INT64_MIN);
    assert_true(msg->f_sint64 == INT64_MAX);
    assert_true(msg->f_sfixed64 == -1);
    assert_true(msg->f_uint32 == UINT32_MAX);
    assert_true(msg->f_uint64 == (uint64_t)INT64_MAX);
    assert_int_equal(msg->f_fixed32, 1);
    assert_int_equal(msg->f_fixed64, 12345);
    assert_true(msg->f_float == 1.5f);
    assert_true(msg->f_double == -0.25);
    assert_true(msg->f_bool);
    assert_string_equal(msg->f_string, "h\xc3\xa9llo \xe2\x82\xb9 \xf0\x9f\x98\x80");
    assert_int_equal(msg->f_bytes.len, 4);
    assert_memory_equal(msg->f_bytes.data, "\x00\x01\x02\xff", 4);
    assert_int_equal(msg->colour, PAYGATE__TEST__COLOUR__COLOUR_GREEN);

    /* And the other end of each range. */
    msg = expect_round_trip(
        arena, "{\"f_int32\": 2147483647, \"f_sint32\": -2147483648,"
               " \"f_sfixed32\": 2147483647, \"f_int64\": 9223372036854775807,"
               " \"f_sint64\": -9223372036854775808, \"f_uint32\": 0,"
               " \"f_uint64\": 0, \"f_fixed32\": 4294967295,"
               " \"f_fixed64\": 9223372036854775807, \"f_bool\": false,"
               " \"f_float\": 3.4028234663852886e38, \"f_double\": 1.7976931348623157e308}");
    assert_true(msg->f_sint64 == INT64_MIN);
    assert_true(msg->f_fixed32 == UINT32_MAX);
    assert_false(msg->f_bool);
    assert_true(msg->f_float == FLT_MAX);
}

static void test_integer_boundaries(void **state)
{
    arena_t *arena = *state;
    expect_refused(arena, "{\"f_int32\": 2147483648}", "f_int32", "out of range for int32");
    expect_refused(arena, "{\"f_int32\": -2147483649}", "f_int32", "out of range for int32");
    expect_refused(arena, "{\"f_sint32\": 2147483648}", "f_sint32", "out of range for sint32");
    expect_refused(arena, "{\"f_sfixed32\": -2147483649}", "f_sfixed32",
                   "out of range for sfixed32");
    expect_refused(arena, "{\"f_uint32\": -1}", "f_uint32", "must not be negative");
    expect_refused(arena, "{\"f_uint32\": 4294967296}", "f_uint32", "out of range for uint32");
    expect_refused(arena, "{\"f_fixed32\": 4294967296}", "f_fixed32", "out of range for fixed32");
    expect_refused(arena, "{\"f_uint64\": -1}", "f_uint64", "must not be negative");
    expect_refused(arena, "{\"f_fixed64\": -9223372036854775808}", "f_fixed64",
                   "must not be negative");
    expect_refused(arena, "{\"f_int64\": 1.5}", "f_int64", "\"f_int64\" must be an integer");
    expect_refused(arena, "{\"f_int64\": 1.0}", "f_int64", "must be an integer");
    expect_refused(arena, "{\"f_int32\": 1e3}", "f_int32", "must be an integer");
    expect_refused(arena, "{\"f_int32\": \"5\"}", "f_int32", "\"f_int32\" must be an integer");
    expect_refused(arena, "{\"f_uint64\": \"5\"}", "f_uint64", "must be an integer");
    expect_refused(arena, "{\"f_sint64\": true}", "f_sint64", "must be an integer");
    expect_refused(arena, "{\"f_fixed32\": [1]}", "f_fixed32", "must be an integer");

    /* The documented limit: jansson refuses integers past long long, so a
     * uint64 above INT64_MAX cannot even reach transcode_from_json(). */
    json_error_t error;
    json_t *json = json_loads("{\"f_uint64\": 9223372036854775808}", 0, &error);
    assert_null(json);
    assert_non_null(strstr(error.text, "too big"));
}

static void test_floats(void **state)
{
    arena_t *arena = *state;
    all_types_t *msg = decode_ok(arena, "{\"f_float\": 3, \"f_double\": -12}");
    assert_true(msg->f_float == 3.0f); /* integers accepted for reals */
    assert_true(msg->f_double == -12.0);
    json_t *out = transcode_to_json(&msg->base);
    assert_true(json_is_real(json_object_get(out, "f_float")));
    assert_true(json_real_value(json_object_get(out, "f_double")) == -12.0);
    json_decref(out);

    msg = decode_ok(arena, "{\"f_float\": 1e-50, \"f_double\": 1e308}");
    assert_true(msg->f_float == 0.0f); /* underflow rounds, like any float */
    assert_true(msg->f_double == 1e308);
    expect_refused(arena, "{\"f_float\": 1e39}", "f_float", "out of range for float");
    expect_refused(arena, "{\"f_float\": -1e39}", "f_float", "out of range for float");
    expect_refused(arena, "{\"f_float\": \"1.5\"}", "f_float", "\"f_float\" must be a number");
    expect_refused(arena, "{\"f_double\": \"NaN\"}", "f_double", "must be a number");
    expect_refused(arena, "{\"f_double\": false}", "f_double", "must be a number");
    expect_refused(arena, "{\"ratios\": [1.5, \"2\"]}", "ratios[1]", "must be a number");
}

static void test_bools_and_strings(void **state)
{
    arena_t *arena = *state;
    expect_refused(arena, "{\"f_bool\": 1}", "f_bool", "\"f_bool\" must be true or false");
    expect_refused(arena, "{\"f_bool\": \"true\"}", "f_bool", "must be true or false");
    expect_refused(arena, "{\"flags\": [true, 0]}", "flags[1]", "must be true or false");
    expect_refused(arena, "{\"f_string\": 5}", "f_string", "\"f_string\" must be a string");
    expect_refused(arena, "{\"tags\": [\"a\", null]}", "tags[1]", "must be a string");

    /* jansson refuses "\u0000" on load, but a json_t built in code can hold
     * one, and a C string would silently cut it. */
    json_t *json = json_pack("{s:s%}", "f_string", "a\0b", (size_t)3);
    assert_non_null(json);
    expect_refused_json(arena, json, "f_string", "NUL");
    json = json_object();
    assert_int_equal(json_object_set_new(json, "f_string", json_stringn_nocheck("\xff\xfe", 2)), 0);
    expect_refused_json(arena, json, "f_string", "UTF-8");

    all_types_t *msg = decode_ok(arena, "{\"f_string\": \"\", \"tags\": [\"\", \"x\"]}");
    assert_string_equal(msg->f_string, "");
    assert_int_equal(msg->n_tags, 2);
    assert_string_equal(msg->tags[1], "x");
}

static void test_enums(void **state)
{
    arena_t *arena = *state;
    all_types_t *msg = expect_round_trip(
        arena,
        "{\"colour\": \"COLOUR_RED\", \"colours\": [\"COLOUR_GREEN\", \"COLOUR_UNSPECIFIED\"]}");
    assert_int_equal(msg->colour, PAYGATE__TEST__COLOUR__COLOUR_RED);
    assert_int_equal(msg->n_colours, 2);
    assert_int_equal(msg->colours[0], PAYGATE__TEST__COLOUR__COLOUR_GREEN);
    assert_int_equal(msg->colours[1], PAYGATE__TEST__COLOUR__COLOUR_UNSPECIFIED);

    expect_refused(arena, "{\"colour\": \"COLOUR_PURPLE\"}", "colour",
                   "unknown value \"COLOUR_PURPLE\" for enum paygate.test.Colour");
    expect_refused(arena, "{\"colour\": \"colour_red\"}", "colour", "unknown value");
    expect_refused(arena, "{\"colour\": \"\"}", "colour", "unknown value");
    expect_refused(arena, "{\"colour\": 1}", "colour", "must be a string naming a value");
    expect_refused(arena, "{\"colours\": [\"COLOUR_RED\", 2]}", "colours[1]",
                   "must be a string naming a value");

    /* A number without a name (from a newer peer) is encoded as a number. */
    msg = empty_message(arena);
    msg->colour = (Paygate__Test__Colour)7;
    json_t *out = transcode_to_json(&msg->base);
    assert_int_equal(json_integer_value(json_object_get(out, "colour")), 7);
    json_decref(out);
}

/* ---- composite fields ------------------------------------------------------- */

static void test_nested_repeated_and_maps(void **state)
{
    arena_t *arena = *state;
    all_types_t *msg = expect_round_trip(
        arena,
        "{\"child\": {\"amount\": 5, \"note\": \"n\", \"child\": {\"amount\": 6, \"note\": \"\","
        "            \"child\": null}},"
        " \"amounts\": [1, -2, 9223372036854775807],"
        " \"tags\": [\"a\", \"b\"],"
        " \"items\": [{\"amount\": 1, \"note\": \"x\", \"child\": null},"
        "            {\"amount\": 2, \"note\": \"\", \"child\": null}],"
        " \"balances\": {\"INR\": 100, \"USD\": -5},"
        " \"children_by_id\": {\"7\": {\"amount\": 70, \"note\": \"\", \"child\": null},"
        "                      \"-3\": {\"amount\": 0, \"note\": \"\", \"child\": null}},"
        " \"names_by_u64\": {\"18446744073709551615\": \"max\", \"0\": \"zero\"},"
        " \"labels_by_flag\": {\"true\": \"yes\", \"false\": \"no\"},"
        " \"flags\": [true, false], \"ratios\": [0.5, -1.25]}");
    assert_non_null(msg->child);
    assert_int_equal(msg->child->amount, 5);
    assert_non_null(msg->child->child);
    assert_int_equal(msg->child->child->amount, 6);
    assert_null(msg->child->child->child);
    assert_int_equal(msg->n_amounts, 3);
    assert_true(msg->amounts[2] == INT64_MAX);
    assert_int_equal(msg->n_items, 2);
    assert_int_equal(msg->items[1]->amount, 2);
    assert_int_equal(msg->n_balances, 2);
    assert_string_equal(msg->balances[0]->key, "INR");
    assert_int_equal(msg->balances[0]->value, 100);
    assert_int_equal(msg->balances[1]->value, -5);
    assert_int_equal(msg->n_children_by_id, 2);
    assert_int_equal(msg->children_by_id[1]->key, -3);
    assert_int_equal(msg->children_by_id[0]->value->amount, 70);
    assert_int_equal(msg->n_names_by_u64, 2);
    /* Map keys are strings, so the full uint64 range fits there. */
    assert_true(msg->names_by_u64[0]->key == UINT64_MAX);
    assert_true(msg->labels_by_flag[0]->key);
    assert_false(msg->labels_by_flag[1]->key);

    /* Empty containers, and null leaving fields alone. */
    msg = decode_ok(arena, "{\"child\": {}, \"amounts\": [], \"balances\": {}, \"items\": null,"
                           " \"tags\": null, \"labels_by_flag\": null, \"f_string\": null}");
    assert_non_null(msg->child);
    assert_int_equal(msg->child->amount, 0);
    assert_int_equal(msg->n_amounts, 0);
    assert_int_equal(msg->n_balances, 0);
    assert_string_equal(msg->f_string, "");

    expect_refused(arena, "{\"amounts\": [1, \"2\"]}", "amounts[1]",
                   "\"amounts[1]\" must be an integer");
    expect_refused(arena, "{\"amounts\": [1, null]}", "amounts[1]", "must be an integer");
    expect_refused(arena, "{\"amounts\": {}}", "amounts", "\"amounts\" must be an array");
    expect_refused(arena, "{\"amounts\": 1}", "amounts", "must be an array");
    expect_refused(arena, "{\"items\": [{\"amount\": 1}, 5]}", "items[1]", "must be an object");
    expect_refused(arena, "{\"items\": [{}, null]}", "items[1]", "must be an object");
    expect_refused(arena, "{\"items\": [{\"amount\": 1}, {\"amount\": 1.5}]}", "items[1].amount",
                   "\"items[1].amount\" must be an integer");
    expect_refused(arena, "{\"child\": []}", "child", "\"child\" must be an object");
    expect_refused(arena, "{\"child\": {\"child\": {\"note\": 3}}}", "child.child.note",
                   "must be a string");
    expect_refused(arena, "{\"balances\": []}", "balances", "\"balances\" must be an object");
    expect_refused(arena, "{\"balances\": {\"INR\": \"100\"}}", "balances[\"INR\"]",
                   "must be an integer");
    expect_refused(arena, "{\"balances\": {\"INR\": null}}", "balances[\"INR\"]",
                   "must be an integer");
    expect_refused(arena, "{\"children_by_id\": {\"x1\": {}}}", "children_by_id[\"x1\"]",
                   "must be an integer");
    expect_refused(arena, "{\"children_by_id\": {\"2147483648\": {}}}",
                   "children_by_id[\"2147483648\"]", "out of range for int32");
    expect_refused(arena, "{\"children_by_id\": {\"1\": {\"bogus\": 1}}}",
                   "children_by_id[\"1\"].bogus", "unknown field");
    expect_refused(arena, "{\"names_by_u64\": {\"-1\": \"x\"}}", "names_by_u64[\"-1\"]",
                   "must not be negative");
    expect_refused(arena, "{\"names_by_u64\": {\"18446744073709551616\": \"x\"}}",
                   "names_by_u64[\"18446744073709551616\"]", "out of range for uint64");
    expect_refused(arena, "{\"labels_by_flag\": {\"yes\": \"x\"}}", "labels_by_flag[\"yes\"]",
                   "must be true or false");
    /* One integer, one spelling: "1" and "01" must not give two entries with key 1. */
    expect_refused(arena, "{\"children_by_id\": {\"1\": {}, \"01\": {}}}", "children_by_id[\"01\"]",
                   "without leading zeros");
    expect_refused(arena, "{\"names_by_u64\": {\"00\": \"x\"}}", "names_by_u64[\"00\"]",
                   "without leading zeros");
    expect_refused(arena, "{\"children_by_id\": {\"-0\": {}}}", "children_by_id[\"-0\"]",
                   "without leading zeros");
    expect_refused(arena, "{\"children_by_id\": {\" 1\": {}}}", "children_by_id[\" 1\"]",
                   "must be an integer");
}

static void test_oneof(void **state)
{
    arena_t *arena = *state;
    all_types_t *msg = decode_ok(arena, "{\"upi_id\": \"a@upi\"}");
    assert_int_equal(msg->method_case, PAYGATE__TEST__ALL_TYPES__METHOD_UPI_ID);
    assert_string_equal(msg->upi_id, "a@upi");
    json_t *out = transcode_to_json(&msg->base);
    assert_string_equal(json_string_value(json_object_get(out, "upi_id")), "a@upi");
    assert_null(json_object_get(out, "card")); /* only the set member */
    json_decref(out);

    msg = decode_ok(arena, "{\"upi_id\": null, \"card\": {\"amount\": 9}}");
    assert_int_equal(msg->method_case, PAYGATE__TEST__ALL_TYPES__METHOD_CARD);
    assert_int_equal(msg->card->amount, 9);
    out = transcode_to_json(&msg->base);
    assert_null(json_object_get(out, "upi_id"));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(out, "card"), "amount")),
                     9);
    json_decref(out);

    msg = decode_ok(arena, "{}");
    assert_int_equal(msg->method_case, PAYGATE__TEST__ALL_TYPES__METHOD__NOT_SET);
    out = transcode_to_json(&msg->base);
    assert_null(json_object_get(out, "upi_id"));
    assert_null(json_object_get(out, "card"));
    json_decref(out);

    expect_refused(arena, "{\"upi_id\": \"a@upi\", \"card\": {}}", "card",
                   "\"card\" and \"upi_id\" are in the same oneof");
    expect_refused(arena, "{\"upi_id\": 5}", "upi_id", "must be a string");
}

static void test_bytes_base64(void **state)
{
    arena_t *arena = *state;
    static const struct {
        const char *base64;
        const char *bytes;
        size_t len;
    } valid[] = {
        {"", "", 0},
        {"AA==", "\x00", 1},
        {"AAE=", "\x00\x01", 2},
        {"AAEC", "\x00\x01\x02", 3},
        {"+/+/", "\xfb\xff\xbf", 3},
        {"aGVsbG8=", "hello", 5},
    };
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "{\"f_bytes\": \"%s\"}", valid[i].base64);
        all_types_t *msg = expect_round_trip(arena, text);
        assert_int_equal(msg->f_bytes.len, valid[i].len);
        if (valid[i].len > 0)
            assert_memory_equal(msg->f_bytes.data, valid[i].bytes, valid[i].len);
    }
    static const char *const invalid[] = {
        "A",    "AA",   "AAA",  "AA=",  "AA=A",    "A===",     "====",  "=AAA",
        "AB==", "AAF=", "AA A", "-_-_", "AAAA\\n", "AA==AA==", "AAAA=", "\\u00e9AAA",
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "{\"f_bytes\": \"%s\"}", invalid[i]);
        expect_refused(arena, text, "f_bytes", "\"f_bytes\" must be base64");
    }
    expect_refused(arena, "{\"f_bytes\": 12}", "f_bytes", "must be a base64 string");
    expect_refused(arena, "{\"blobs\": [\"AA==\", \"A\"]}", "blobs[1]", "must be base64");

    /* Every length and byte value survives encode then decode. */
    uint8_t data[40];
    for (size_t len = 0; len <= sizeof data; len++) {
        for (size_t i = 0; i < len; i++)
            data[i] = (uint8_t)(len * 37 + i * 101);
        all_types_t *msg = empty_message(arena);
        msg->f_bytes.data = data;
        msg->f_bytes.len = len;
        json_t *out = transcode_to_json(&msg->base);
        assert_non_null(out);
        assert_int_equal(json_string_length(json_object_get(out, "f_bytes")), (len + 2) / 3 * 4);
        transcode_error_t error;
        all_types_t *back = (all_types_t *)transcode_from_json(out, ALL_TYPES, arena, &error);
        json_decref(out);
        assert_non_null(back);
        assert_int_equal(back->f_bytes.len, len);
        if (len > 0)
            assert_memory_equal(back->f_bytes.data, data, len);
    }
}

/* ---- errors ----------------------------------------------------------------- */

static void test_unknown_fields(void **state)
{
    arena_t *arena = *state;
    expect_refused(arena, "{\"f_int32\": 1, \"bogus\": 1}", "bogus", "unknown field \"bogus\"");
    expect_refused(arena, "{\"child\": {\"bogus\": 1}}", "child.bogus",
                   "unknown field \"child.bogus\"");
    expect_refused(arena, "{\"items\": [{}, {\"child\": {\"x\": null}}]}", "items[1].child.x",
                   "unknown field \"items[1].child.x\"");
    expect_refused(arena, "{\"fInt32\": 1}", "fInt32", "unknown field"); /* .proto names only */
    expect_refused(arena, "{\"F_INT32\": 1}", "F_INT32", "unknown field");
    expect_refused(arena, "{\"\": 1}", "", "unknown field \"\"");
    expect_refused(arena, "{\"bogus\": null}", "bogus", "unknown field"); /* even when null */

    /* A key with a NUL in it (jansson refuses one on load, but code can
     * build it) must not match the field before the NUL. */
    json_t *json = json_object();
    assert_int_equal(json_object_setn_new(json, "f_int32\0x", 9, json_integer(1)), 0);
    expect_refused_json(arena, json, "f_int32", "unknown field");
}

static void test_wrong_types(void **state)
{
    arena_t *arena = *state;
    static const struct {
        const char *json;
        const char *field;
        const char *message;
    } cases[] = {
        {"{\"f_int32\": \"1\"}", "f_int32", "\"f_int32\" must be an integer"},
        {"{\"f_uint32\": null, \"f_fixed64\": {}}", "f_fixed64",
         "\"f_fixed64\" must be an integer"},
        {"{\"f_float\": true}", "f_float", "\"f_float\" must be a number"},
        {"{\"f_double\": []}", "f_double", "\"f_double\" must be a number"},
        {"{\"f_bool\": \"false\"}", "f_bool", "\"f_bool\" must be true or false"},
        {"{\"f_string\": false}", "f_string", "\"f_string\" must be a string"},
        {"{\"f_bytes\": []}", "f_bytes", "\"f_bytes\" must be a base64 string"},
        {"{\"colour\": {}}", "colour", "\"colour\" must be a string naming a value"},
        {"{\"child\": \"x\"}", "child", "\"child\" must be an object"},
        {"{\"tags\": \"a\"}", "tags", "\"tags\" must be an array"},
        {"{\"items\": {}}", "items", "\"items\" must be an array"},
        {"{\"balances\": 3}", "balances", "\"balances\" must be an object"},
        {"{\"card\": 1}", "card", "\"card\" must be an object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_refused(arena, cases[i].json, cases[i].field, cases[i].message);

    /* The body itself must be an object. */
    static const char *const not_objects[] = {"[]", "1", "\"x\"", "null", "true"};
    for (size_t i = 0; i < sizeof not_objects / sizeof not_objects[0]; i++) {
        json_error_t error;
        json_t *json = json_loads(not_objects[i], JSON_DECODE_ANY, &error);
        assert_non_null(json);
        expect_refused_json(arena, json, "", "must be a JSON object");
    }
    transcode_error_t error;
    assert_null(transcode_from_json(NULL, ALL_TYPES, arena, &error));
    assert_string_equal(error.field, "");
    assert_non_null(strstr(error.message, "must be a JSON object"));
}

/* ---- limits ----------------------------------------------------------------- */

/* '{"child": ' nested 'levels' times around '{}' as a JSON text (malloc'd). */
static char *nested_children(int levels)
{
    size_t len = (size_t)levels * 12 + 3;
    char *text = malloc(len);
    assert_non_null(text);
    size_t o = 0;
    for (int i = 0; i < levels; i++)
        o += (size_t)snprintf(text + o, len - o, "{\"child\": ");
    o += (size_t)snprintf(text + o, len - o, "{}");
    for (int i = 0; i < levels; i++)
        text[o++] = '}';
    text[o] = '\0';
    return text;
}

static void test_depth_limit(void **state)
{
    arena_t *arena = *state;
    /* The top-level message is level 1, so 31 nested children reach 32. */
    char *text = nested_children(transcode_depth_levels_max - 1);
    all_types_t *msg = decode_ok(arena, text);
    Paygate__Test__Child *child = msg->child;
    int levels = 1;
    for (; child != NULL; child = child->child)
        levels++;
    assert_int_equal(levels, transcode_depth_levels_max);
    free(text);

    text = nested_children(transcode_depth_levels_max);
    json_t *json = load(text);
    free(text);
    transcode_error_t error;
    assert_null(transcode_from_json(json, ALL_TYPES, arena, &error));
    json_decref(json);
    assert_non_null(strstr(error.message, "nesting too deep"));
    /* The path (child.child... 32 times) is longer than error.field: cut
     * short with "...". */
    assert_int_equal(strncmp(error.field, "child.child.child", 17), 0);
    assert_int_equal(strlen(error.field), sizeof error.field - 1);
    assert_string_equal(error.field + strlen(error.field) - 3, "...");

    /* Far deeper than the limit is refused the same way, not crashed. */
    text = nested_children(1500);
    json = load(text);
    free(text);
    assert_null(transcode_from_json(json, ALL_TYPES, arena, &error));
    json_decref(json);
    assert_non_null(strstr(error.message, "nesting too deep"));
}

/* A JSON object {"<field>": [<count> elements of 'element' (taken)]}. */
static json_t *object_with_array(const char *field, size_t count, json_t *element)
{
    json_t *array = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append(array, element);
    json_decref(element);
    return json_pack("{s:o}", field, array);
}

static void test_size_limits(void **state)
{
    arena_t *arena = *state;
    transcode_error_t error;

    json_t *json = object_with_array("amounts", transcode_repeated_elements_max, json_integer(7));
    all_types_t *msg = (all_types_t *)transcode_from_json(json, ALL_TYPES, arena, &error);
    json_decref(json);
    assert_non_null(msg);
    assert_int_equal(msg->n_amounts, transcode_repeated_elements_max);
    assert_int_equal(msg->amounts[transcode_repeated_elements_max - 1], 7);

    expect_refused_json(
        arena, object_with_array("items", transcode_repeated_elements_max + 1, json_object()),
        "items", "more than the limit of 1000");

    json_t *map = json_object();
    for (int i = 0; i <= transcode_repeated_elements_max; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        json_object_set_new(map, key, json_integer(i));
    }
    expect_refused_json(arena, json_pack("{s:o}", "balances", map), "balances",
                        "more than the limit of 1000");

    /* Strings: the limit is in bytes, so a multi-byte character counts 2. */
    size_t max = transcode_string_bytes_max;
    char *text = malloc(max + 2);
    assert_non_null(text);
    memset(text, 'a', max + 1);
    text[max + 1] = '\0';
    json = json_pack("{s:s#}", "f_string", text, (int)max);
    msg = (all_types_t *)transcode_from_json(json, ALL_TYPES, arena, &error);
    json_decref(json);
    assert_non_null(msg);
    assert_int_equal(strlen(msg->f_string), max);
    expect_refused_json(arena, json_pack("{s:s#}", "f_string", text, (int)max + 1), "f_string",
                        "longer than 65536 bytes");
    memcpy(text + max - 1, "\xc3\xa9", 2); /* max - 1 + 2 bytes */
    expect_refused_json(arena, json_pack("{s:s#}", "f_string", text, (int)max + 1), "f_string",
                        "longer than 65536 bytes");
    expect_refused_json(arena, json_pack("{s:[s#]}", "tags", text, (int)max + 1), "tags[0]",
                        "longer than 65536 bytes");
    free(text);

    /* Bytes: the limit is on the decoded bytes. */
    all_types_t *big = empty_message(arena);
    uint8_t *data = calloc(1, max + 1);
    assert_non_null(data);
    big->f_bytes.data = data;
    big->f_bytes.len = max;
    json = transcode_to_json(&big->base);
    msg = (all_types_t *)transcode_from_json(json, ALL_TYPES, arena, &error);
    json_decref(json);
    assert_non_null(msg);
    assert_int_equal(msg->f_bytes.len, max);
    big->f_bytes.len = max + 1;
    expect_refused_json(arena, transcode_to_json(&big->base), "f_bytes", "longer than 65536 bytes");
    free(data);

    /* A full arena is an error, not a crash. */
    arena_t *small = arena_new(1024);
    assert_non_null(small);
    json = object_with_array("tags", 900, json_string("0123456789012345678901234567890123456789"));
    int refused = 0;
    for (int i = 0; i < 2000 && refused == 0; i++)
        refused = transcode_from_json(json, ALL_TYPES, small, &error) == NULL;
    json_decref(json);
    arena_destroy(&small);
    assert_int_equal(refused, 1);
    assert_non_null(strstr(error.message, "out of memory"));
}

/* ---- encoding --------------------------------------------------------------- */

static void test_defaults_on_encode(void **state)
{
    arena_t *arena = *state;
    json_t *want = load("{\"f_int32\": 0, \"f_sint32\": 0, \"f_sfixed32\": 0, \"f_int64\": 0,"
                        " \"f_sint64\": 0, \"f_sfixed64\": 0, \"f_uint32\": 0, \"f_uint64\": 0,"
                        " \"f_fixed32\": 0, \"f_fixed64\": 0, \"f_float\": 0.0,"
                        " \"f_double\": 0.0, \"f_bool\": false, \"f_string\": \"\","
                        " \"f_bytes\": \"\", \"colour\": \"COLOUR_UNSPECIFIED\", \"child\": null,"
                        " \"amounts\": [], \"tags\": [], \"items\": [], \"balances\": {},"
                        " \"colours\": [], \"blobs\": [], \"flags\": [], \"ratios\": [],"
                        " \"children_by_id\": {}, \"names_by_u64\": {},"
                        " \"labels_by_flag\": {}}");

    all_types_t *decoded = decode_ok(arena, "{}");
    all_types_t initialised = PAYGATE__TEST__ALL_TYPES__INIT;
    const ProtobufCMessage *messages[] = {&decoded->base, &initialised.base};
    for (size_t i = 0; i < 2; i++) {
        json_t *got = transcode_to_json(messages[i]);
        assert_non_null(got);
        if (!json_equal(got, want)) {
            char *text = json_dumps(got, 0);
            fail_msg("defaults encoded as %s", text);
        }
        /* Fields come out in field-number order. */
        void *it = json_object_iter(got);
        assert_string_equal(json_object_iter_key(it), "f_int32");
        json_decref(got);
    }
    json_decref(want);

    /* A nested message's defaults are emitted too. */
    all_types_t *msg = decode_ok(arena, "{\"child\": {}}");
    json_t *got = transcode_to_json(&msg->base);
    json_t *child = json_object_get(got, "child");
    assert_int_equal(json_object_size(child), 3);
    assert_true(json_is_integer(json_object_get(child, "amount")));
    assert_string_equal(json_string_value(json_object_get(child, "note")), "");
    assert_true(json_is_null(json_object_get(child, "child")));
    json_decref(got);
}

static void test_encode_edge_values(void **state)
{
    arena_t *arena = *state;
    all_types_t *msg = empty_message(arena);
    msg->f_uint64 = UINT64_MAX;
    msg->f_fixed64 = (uint64_t)INT64_MAX + 1;
    msg->f_float = NAN;
    msg->f_double = -INFINITY;
    msg->f_string = "ok \xff bad \xed\xa0\x80 end"; /* stray byte, a surrogate */
    static double ratios[] = {INFINITY, 2.5};
    msg->ratios = ratios;
    msg->n_ratios = 2;
    json_t *out = transcode_to_json(&msg->base);
    assert_non_null(out);
    /* Past INT64_MAX: a decimal string rather than a rounded number. */
    assert_string_equal(json_string_value(json_object_get(out, "f_uint64")),
                        "18446744073709551615");
    assert_string_equal(json_string_value(json_object_get(out, "f_fixed64")),
                        "9223372036854775808");
    assert_string_equal(json_string_value(json_object_get(out, "f_float")), "NaN");
    assert_string_equal(json_string_value(json_object_get(out, "f_double")), "-Infinity");
    json_t *ratio_json = json_object_get(out, "ratios");
    assert_string_equal(json_string_value(json_array_get(ratio_json, 0)), "Infinity");
    assert_true(json_real_value(json_array_get(ratio_json, 1)) == 2.5);
    assert_string_equal(json_string_value(json_object_get(out, "f_string")),
                        "ok \xef\xbf\xbd bad \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end");
    char *dumped = json_dumps(out, 0);
    assert_non_null(dumped); /* the whole reply still serialises */
    free(dumped);
    json_decref(out);

    /* A NULL string pointer is "" (protobuf-c packs it that way). */
    msg = empty_message(arena);
    msg->f_string = NULL;
    out = transcode_to_json(&msg->base);
    assert_string_equal(json_string_value(json_object_get(out, "f_string")), "");
    json_decref(out);
}

/* ---- transcode_set_field ---------------------------------------------------- */

static void test_set_field_integers(void **state)
{
    arena_t *arena = *state;
    all_types_t *msg = empty_message(arena);
    ProtobufCMessage *m = &msg->base;

    set_ok(arena, m, "f_int32", "-2147483648");
    assert_int_equal(msg->f_int32, INT32_MIN);
    set_ok(arena, m, "f_sint32", "2147483647");
    assert_int_equal(msg->f_sint32, INT32_MAX);
    set_ok(arena, m, "f_sfixed32", "007"); /* leading zeros are still decimal */
    assert_int_equal(msg->f_sfixed32, 7);
    set_ok(arena, m, "f_int64", "-9223372036854775808");
    assert_true(msg->f_int64 == INT64_MIN);
    set_ok(arena, m, "f_sint64", "9223372036854775807");
    assert_true(msg->f_sint64 == INT64_MAX);
    set_ok(arena, m, "f_sfixed64", "-0");
    assert_true(msg->f_sfixed64 == 0);
    set_ok(arena, m, "f_uint32", "4294967295");
    assert_true(msg->f_uint32 == UINT32_MAX);
    set_ok(arena, m, "f_uint64", "18446744073709551615"); /* text has no jansson limit */
    assert_true(msg->f_uint64 == UINT64_MAX);
    set_ok(arena, m, "f_fixed32", "10");
    assert_int_equal(msg->f_fixed32, 10);
    set_ok(arena, m, "f_fixed64", "0");
    assert_int_equal(msg->f_fixed64, 0);

    static const char *const junk[] = {
        "",     "12abc", "abc",   "-",   "+1",  " 1", "1 ",  "1.0",  "1e3",
        "0x10", "--1",   "1_000", "1,0", "\t1", "１", "1\n", "true", "null",
    };
    static const char *const signed_fields[] = {"f_int32", "f_sint32", "f_sfixed32",
                                                "f_int64", "f_sint64", "f_sfixed64"};
    static const char *const unsigned_fields[] = {"f_uint32", "f_uint64", "f_fixed32", "f_fixed64"};
    for (size_t j = 0; j < sizeof junk / sizeof junk[0]; j++) {
        for (size_t i = 0; i < sizeof signed_fields / sizeof signed_fields[0]; i++)
            expect_set_refused(arena, m, signed_fields[i], junk[j], "must be an integer");
        for (size_t i = 0; i < sizeof unsigned_fields / sizeof unsigned_fields[0]; i++)
            expect_set_refused(arena, m, unsigned_fields[i], junk[j], "must be an integer");
    }
    expect_set_refused(arena, m, "f_int32", "2147483648", "out of range for int32");
    expect_set_refused(arena, m, "f_int32", "-2147483649", "out of range for int32");
    expect_set_refused(arena, m, "f_int64", "9223372036854775808", "out of range for int64");
    expect_set_refused(arena, m, "f_int64", "-9223372036854775809", "out of range for int64");
    expect_set_refused(arena, m, "f_int64", "99999999999999999999", "out of range for int64");
    expect_set_refused(arena, m, "f_uint64", "18446744073709551616", "out of range for uint64");
    expect_set_refused(arena, m, "f_uint64", "99999999999999999999", "out of range for uint64");
    expect_set_refused(arena, m, "f_uint32", "4294967296", "out of range for uint32");
    expect_set_refused(arena, m, "f_uint32", "-1", "must not be negative");
    expect_set_refused(arena, m, "f_fixed64", "-0", "must not be negative");
    /* Refusals left every value as it was. */
    assert_int_equal(msg->f_int32, INT32_MIN);
    assert_true(msg->f_uint64 == UINT64_MAX);
}

static void test_set_field_other_types(void **state)
{
    arena_t *arena = *state;
    all_types_t *msg = empty_message(arena);
    ProtobufCMessage *m = &msg->base;

    set_ok(arena, m, "f_bool", "true");
    assert_true(msg->f_bool);
    set_ok(arena, m, "f_bool", "false");
    assert_false(msg->f_bool);
    static const char *const bad_bools[] = {"", "1", "0", "TRUE", "True", "yes", "true "};
    for (size_t i = 0; i < sizeof bad_bools / sizeof bad_bools[0]; i++)
        expect_set_refused(arena, m, "f_bool", bad_bools[i], "must be true or false");

    set_ok(arena, m, "colour", "COLOUR_GREEN");
    assert_int_equal(msg->colour, PAYGATE__TEST__COLOUR__COLOUR_GREEN);
    expect_set_refused(arena, m, "colour", "2", "unknown value \"2\"");
    expect_set_refused(arena, m, "colour", "colour_green", "unknown value");
    expect_set_refused(arena, m, "colour", "", "unknown value");

    set_ok(arena, m, "f_double", "-1.5e3");
    assert_true(msg->f_double == -1500.0);
    set_ok(arena, m, "f_float", "0.25");
    assert_true(msg->f_float == 0.25f);
    set_ok(arena, m, "f_double", "0");
    assert_true(msg->f_double == 0.0);
    static const char *const bad_numbers[] = {"",   "nan", "NaN",  "inf", "Infinity", "0x1p3",
                                              " 1", "1 ",  "1.",   ".5",  "+1",       "01",
                                              "1e", "--1", "1.5x", "1e+", "-"};
    for (size_t i = 0; i < sizeof bad_numbers / sizeof bad_numbers[0]; i++)
        expect_set_refused(arena, m, "f_double", bad_numbers[i], "must be a number");
    expect_set_refused(arena, m, "f_double", "1e999", "out of range for double");
    expect_set_refused(arena, m, "f_float", "1e39", "out of range for float");
    assert_true(msg->f_double == 0.0);

    set_ok(arena, m, "f_string", "h\xc3\xa9llo");
    assert_string_equal(msg->f_string, "h\xc3\xa9llo");
    set_ok(arena, m, "f_string", "");
    assert_string_equal(msg->f_string, "");
    expect_set_refused(arena, m, "f_string", "bad \xff", "UTF-8");
    expect_set_refused(arena, m, "f_string", "\xc0\x80", "UTF-8"); /* overlong NUL */

    set_ok(arena, m, "f_bytes", "raw\x01\xff"); /* as is, not base64 */
    assert_int_equal(msg->f_bytes.len, 5);
    assert_memory_equal(msg->f_bytes.data, "raw\x01\xff", 5);

    /* Repeated scalars: each call appends one element. */
    set_ok(arena, m, "tags", "a");
    set_ok(arena, m, "tags", "b");
    assert_int_equal(msg->n_tags, 2);
    assert_string_equal(msg->tags[0], "a");
    assert_string_equal(msg->tags[1], "b");
    set_ok(arena, m, "amounts", "-5");
    assert_int_equal(msg->n_amounts, 1);
    assert_int_equal(msg->amounts[0], -5);
    expect_set_refused(arena, m, "amounts", "x", "must be an integer");
    assert_int_equal(msg->n_amounts, 1);
    for (int i = 1; i < transcode_repeated_elements_max; i++)
        set_ok(arena, m, "amounts", "1");
    expect_set_refused(arena, m, "amounts", "1", "more than the limit of 1000");

    /* A oneof member becomes the set one. */
    set_ok(arena, m, "upi_id", "a@upi");
    assert_int_equal(msg->method_case, PAYGATE__TEST__ALL_TYPES__METHOD_UPI_ID);
    assert_string_equal(msg->upi_id, "a@upi");

    expect_set_refused(arena, m, "nope", "1", "unknown field \"nope\"");
    expect_set_refused(arena, m, "", "1", "unknown field");
    expect_set_refused(arena, m, "child", "{}", "message field");
    expect_set_refused(arena, m, "card", "x", "message field");
    expect_set_refused(arena, m, "balances", "x", "map field");

    /* Long strings are refused by the byte limit. */
    size_t max = transcode_string_bytes_max;
    char *text = malloc(max + 2);
    assert_non_null(text);
    memset(text, 'x', max + 1);
    text[max + 1] = '\0';
    expect_set_refused(arena, m, "f_string", text, "longer than 65536 bytes");
    expect_set_refused(arena, m, "f_bytes", text, "longer than 65536 bytes");
    text[max] = '\0';
    set_ok(arena, m, "f_string", text);
    assert_int_equal(strlen(msg->f_string), max);
    free(text);
}

/* ---- pack / unpack ---------------------------------------------------------- */

/* Packs 'msg' and unpacks it with protobuf-c's normal allocator, asserting
 * the unpacked message encodes to the same JSON as 'msg'. */
static void expect_pack_round_trip(const ProtobufCMessage *msg)
{
    assert_true(protobuf_c_message_check(msg));
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buffer = malloc(len + 1);
    assert_non_null(buffer);
    assert_int_equal(protobuf_c_message_pack(msg, buffer), len);
    ProtobufCMessage *unpacked = protobuf_c_message_unpack(msg->descriptor, NULL, len, buffer);
    free(buffer);
    assert_non_null(unpacked);
    json_t *want = transcode_to_json(msg);
    json_t *got = transcode_to_json(unpacked);
    assert_non_null(want);
    assert_non_null(got);
    if (!json_equal(want, got)) {
        char *want_text = json_dumps(want, JSON_COMPACT);
        char *got_text = json_dumps(got, JSON_COMPACT);
        fail_msg("packed %s\nunpacked %s", want_text, got_text);
    }
    json_decref(want);
    json_decref(got);
    protobuf_c_message_free_unpacked(unpacked, NULL);
}

static void test_pack_unpack(void **state)
{
    arena_t *arena = *state;
    static const char *const bodies[] = {
        "{}",
        "{\"f_int32\": -1, \"f_sint32\": -2147483648, \"f_sfixed32\": -3, \"f_int64\": -4,"
        " \"f_sint64\": -9223372036854775808, \"f_sfixed64\": 9223372036854775807,"
        " \"f_uint32\": 4294967295, \"f_uint64\": 9223372036854775807, \"f_fixed32\": 8,"
        " \"f_fixed64\": 9, \"f_float\": -0.5, \"f_double\": 1e-300, \"f_bool\": true,"
        " \"f_string\": \"\\u20b9100\", \"f_bytes\": \"/wAB\", \"colour\": \"COLOUR_RED\"}",
        "{\"child\": {\"amount\": 1, \"child\": {\"note\": \"deep\"}}, \"amounts\": [0, -1, 2],"
        " \"tags\": [\"\", \"t\"], \"items\": [{}, {\"amount\": 5}],"
        " \"balances\": {\"INR\": 0, \"USD\": 7}, \"upi_id\": \"x@y\","
        " \"colours\": [\"COLOUR_RED\", \"COLOUR_UNSPECIFIED\"], \"blobs\": [\"\", \"AA==\"],"
        " \"flags\": [false, true], \"ratios\": [0, 1.5],"
        " \"children_by_id\": {\"-1\": {}, \"2\": {\"note\": \"two\"}},"
        " \"names_by_u64\": {\"18446744073709551615\": \"\"},"
        " \"labels_by_flag\": {\"false\": \"f\"}}",
        "{\"card\": {}}",
        "{\"card\": {\"amount\": -9}}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        all_types_t *msg = decode_ok(arena, bodies[i]);
        expect_pack_round_trip(&msg->base);
    }

    /* transcode_set_field results pack too. */
    all_types_t *msg = decode_ok(arena, "{\"tags\": [\"a\"]}");
    set_ok(arena, &msg->base, "tags", "b");
    set_ok(arena, &msg->base, "f_uint64", "18446744073709551615");
    set_ok(arena, &msg->base, "upi_id", "p@q");
    set_ok(arena, &msg->base, "f_bytes", "\x01\x02");
    expect_pack_round_trip(&msg->base);

    /* The packed bytes are the same as protobuf-c's for a hand-built one. */
    all_types_t *decoded = decode_ok(arena, "{\"f_int64\": 150, \"f_string\": \"hi\","
                                            " \"amounts\": [1, 2]}");
    all_types_t built = PAYGATE__TEST__ALL_TYPES__INIT;
    int64_t amounts[] = {1, 2};
    built.f_int64 = 150;
    built.f_string = "hi";
    built.n_amounts = 2;
    built.amounts = amounts;
    size_t len = protobuf_c_message_get_packed_size(&built.base);
    assert_int_equal(protobuf_c_message_get_packed_size(&decoded->base), len);
    uint8_t a[64], b[64];
    assert_true(len <= sizeof a);
    protobuf_c_message_pack(&built.base, a);
    protobuf_c_message_pack(&decoded->base, b);
    assert_memory_equal(a, b, len);
}

/* ---- random inputs ---------------------------------------------------------- */

/* xorshift64*: a small deterministic PRNG, so a failure reproduces. */
static uint64_t random_next(uint64_t *seed)
{
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    return *seed * 2685821657736338717ULL;
}

/* A random number in [0, 'n'). */
static size_t random_below(uint64_t *seed, size_t n)
{
    return (size_t)(random_next(seed) % n);
}

static const char *const random_keys[] = {
    "f_int32",
    "f_sint32",
    "f_sfixed32",
    "f_int64",
    "f_sint64",
    "f_sfixed64",
    "f_uint32",
    "f_uint64",
    "f_fixed32",
    "f_fixed64",
    "f_float",
    "f_double",
    "f_bool",
    "f_string",
    "f_bytes",
    "colour",
    "child",
    "amounts",
    "tags",
    "items",
    "balances",
    "upi_id",
    "card",
    "colours",
    "blobs",
    "flags",
    "ratios",
    "children_by_id",
    "names_by_u64",
    "labels_by_flag",
    "amount",
    "note",
    "bogus",
    "",
    "INR",
    "7",
    "-1",
    "true",
    "18446744073709551615",
};

static const char *const random_strings[] = {
    "",          "AA==", "AAEC", "A",  "COLOUR_RED", "COLOUR_GREEN", "x",
    "h\xc3\xa9", "true", "12",   "-3", "====",       "aGVsbG8=",     "\xe2\x82\xb9",
};

/* A random JSON value at most 'depth' containers deep, biased towards the
 * field names and value shapes of AllTypes so decodes get past the first
 * field. */
static json_t *random_json(uint64_t *seed, int depth)
{
    static const json_int_t integers[] = {0,
                                          1,
                                          -1,
                                          7,
                                          127,
                                          128,
                                          255,
                                          65535,
                                          2147483647,
                                          2147483648LL,
                                          -2147483648LL,
                                          -2147483649LL,
                                          4294967295LL,
                                          4294967296LL,
                                          9223372036854775807LL,
                                          (-9223372036854775807LL - 1)};
    static const double reals[] = {0.0, 1.0, -1.5, 1e-320, 3.4e38, 3.5e38, 1e308, -0.0};
    size_t kind = random_below(seed, depth > 0 ? 9 : 6);
    switch (kind) {
    case 0:
        return json_null();
    case 1:
        return json_boolean(random_below(seed, 2));
    case 2:
        return json_integer(integers[random_below(seed, sizeof integers / sizeof integers[0])]);
    case 3:
        return json_real(reals[random_below(seed, sizeof reals / sizeof reals[0])]);
    case 4:
    case 5:
        return json_string(
            random_strings[random_below(seed, sizeof random_strings / sizeof random_strings[0])]);
    case 6: {
        json_t *array = json_array();
        size_t n = random_below(seed, 5);
        for (size_t i = 0; i < n; i++)
            json_array_append_new(array, random_json(seed, depth - 1));
        return array;
    }
    default: {
        json_t *object = json_object();
        size_t n = random_below(seed, 6);
        for (size_t i = 0; i < n; i++)
            json_object_set_new(
                object, random_keys[random_below(seed, sizeof random_keys / sizeof random_keys[0])],
                random_json(seed, depth - 1));
        return object;
    }
    }
}

static json_t *random_for_message(uint64_t *seed, const ProtobufCMessageDescriptor *desc,
                                  int depth);

/* A random JSON value that is usually of the right shape for one value of
 * 'field' (sometimes out of range, malformed or of another type). */
static json_t *random_for_value(uint64_t *seed, const ProtobufCFieldDescriptor *field, int depth)
{
    static const char *const base64[] = {"", "AA==", "AAEC", "/w==", "A", "AB==", "aGk="};
    static const char *const names[] = {"COLOUR_RED", "COLOUR_GREEN", "COLOUR_UNSPECIFIED", "RED"};
    if (random_below(seed, 10) == 0)
        return random_json(seed, depth > 0 ? 1 : 0);
    switch (field->type) {
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
    case PROTOBUF_C_TYPE_BOOL:
    case PROTOBUF_C_TYPE_STRING:
        break;
    case PROTOBUF_C_TYPE_BYTES:
        return json_string(base64[random_below(seed, sizeof base64 / sizeof base64[0])]);
    case PROTOBUF_C_TYPE_ENUM:
        return json_string(names[random_below(seed, sizeof names / sizeof names[0])]);
    case PROTOBUF_C_TYPE_MESSAGE:
        return depth > 0 ? random_for_message(seed, field->descriptor, depth - 1) : json_object();
    default: /* integers */
        return json_integer((json_int_t)(random_next(seed) >> random_below(seed, 64)) *
                            (random_below(seed, 4) == 0 ? -1 : 1));
    }
    if (field->type == PROTOBUF_C_TYPE_BOOL)
        return json_boolean(random_below(seed, 2));
    if (field->type == PROTOBUF_C_TYPE_STRING)
        return json_string(
            random_strings[random_below(seed, sizeof random_strings / sizeof random_strings[0])]);
    return json_real((double)(int64_t)random_next(seed) / 1e6);
}

/* A random JSON value usually of the right shape for 'field': an array for
 * a repeated field, an object for a map. */
static json_t *random_for_field(uint64_t *seed, const ProtobufCFieldDescriptor *field, int depth)
{
    static const char *const map_keys[] = {
        "7", "-1", "0", "true", "false", "INR", "01", "18446744073709551615", "2147483648"};
    if (field->label != PROTOBUF_C_LABEL_REPEATED || random_below(seed, 10) == 0)
        return random_for_value(seed, field, depth);
    size_t n = random_below(seed, 4);
    const ProtobufCMessageDescriptor *entry = field->descriptor;
    if (field->type == PROTOBUF_C_TYPE_MESSAGE && strstr(entry->short_name, "Entry") != NULL) {
        const ProtobufCFieldDescriptor *value = protobuf_c_message_descriptor_get_field(entry, 2);
        json_t *object = json_object();
        for (size_t i = 0; i < n; i++)
            json_object_set_new(object,
                                map_keys[random_below(seed, sizeof map_keys / sizeof map_keys[0])],
                                random_for_value(seed, value, depth));
        return object;
    }
    json_t *array = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(array, random_for_value(seed, field, depth));
    return array;
}

/* A random JSON object for a message of type 'desc': mostly its own field
 * names with values of about the right shape, sometimes a stray key. */
static json_t *random_for_message(uint64_t *seed, const ProtobufCMessageDescriptor *desc, int depth)
{
    json_t *object = json_object();
    size_t n = random_below(seed, 6);
    for (size_t i = 0; i < n; i++) {
        if (random_below(seed, 20) == 0) {
            json_object_set_new(object, "stray", json_integer(1));
            continue;
        }
        const ProtobufCFieldDescriptor *field = &desc->fields[random_below(seed, desc->n_fields)];
        json_object_set_new(object, field->name, random_for_field(seed, field, depth));
    }
    return object;
}

/* 'text' with a few random byte edits (replace, insert or delete), in
 * 'out' of 'out_bytes'. */
static void random_mutate(uint64_t *seed, const char *text, char *out, size_t out_bytes)
{
    static const char alphabet[] = "{}[]\":,0123456789-.eE+ truefalsn\\u\xc3\xa9\x80\xff";
    size_t len = strlen(text);
    assert_true(len < out_bytes - 8);
    memcpy(out, text, len + 1);
    size_t edits = 1 + random_below(seed, 4);
    for (size_t e = 0; e < edits && len > 0 && len < out_bytes - 2; e++) {
        size_t at = random_below(seed, len);
        char c = alphabet[random_below(seed, sizeof alphabet - 1)];
        switch (random_below(seed, 3)) {
        case 0:
            out[at] = c;
            break;
        case 1:
            memmove(out + at + 1, out + at, len - at + 1);
            out[at] = c;
            len++;
            break;
        default:
            memmove(out + at, out + at + 1, len - at);
            len--;
            break;
        }
    }
}

/* Feeds 'json' to the decoder. A refusal must name a reason in valid
 * UTF-8 (the gateway puts it in a JSON reply); a success must pack, unpack
 * and encode to the same JSON, and decode again from that JSON. Returns
 * true when it was accepted. */
static bool check_random_input(arena_t *arena, const json_t *json)
{
    transcode_error_t error;
    ProtobufCMessage *msg = transcode_from_json(json, ALL_TYPES, arena, &error);
    if (msg == NULL) {
        assert_true(error.message[0] != '\0');
        json_t *field = json_string(error.field);
        json_t *message = json_string(error.message);
        assert_non_null(field);
        assert_non_null(message);
        json_decref(field);
        json_decref(message);
        return false;
    }
    expect_pack_round_trip(msg);
    json_t *first = transcode_to_json(msg);
    assert_non_null(first);
    ProtobufCMessage *again = transcode_from_json(first, ALL_TYPES, arena, &error);
    if (again == NULL) {
        char *text = json_dumps(first, JSON_COMPACT);
        fail_msg("own output refused: %s: %s", error.message, text);
    }
    json_t *second = transcode_to_json(again);
    assert_true(json_equal(first, second));
    json_decref(first);
    json_decref(second);
    return true;
}

static void test_random_inputs(void **state)
{
    arena_t *arena = *state;
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    int accepted = 0, refused = 0, unparsable = 0;

    /* Random JSON trees: half of any shape, half shaped like AllTypes. */
    for (int i = 0; i < random_iterations; i++) {
        json_t *json = i % 2 ? random_json(&seed, 4) : random_for_message(&seed, ALL_TYPES, 3);
        if (check_random_input(arena, json))
            accepted++;
        else
            refused++;
        json_decref(json);
        arena_reset(arena);
    }

    /* Random edits of valid bodies, whatever still parses. */
    static const char *const bodies[] = {
        "{\"f_int32\": 12, \"child\": {\"amount\": 5, \"note\": \"n\"}, \"tags\": [\"a\"]}",
        "{\"balances\": {\"INR\": 100}, \"children_by_id\": {\"7\": {\"amount\": 1}}}",
        "{\"f_bytes\": \"AAEC\", \"colour\": \"COLOUR_RED\", \"upi_id\": \"a@b\"}",
        "{\"f_double\": 1.5e3, \"f_bool\": true, \"amounts\": [1, 2, 3], \"card\": {}}",
        "{\"names_by_u64\": {\"18\": \"x\"}, \"labels_by_flag\": {\"true\": \"y\"}}",
    };
    for (int i = 0; i < random_iterations; i++) {
        char text[256];
        random_mutate(&seed, bodies[random_below(&seed, sizeof bodies / sizeof bodies[0])], text,
                      sizeof text);
        json_error_t error;
        json_t *json = json_loads(text, JSON_DECODE_ANY, &error);
        if (json == NULL) {
            unparsable++;
            continue;
        }
        if (check_random_input(arena, json))
            accepted++;
        else
            refused++;
        json_decref(json);
        arena_reset(arena);
    }

    /* Random parameters for random fields. */
    for (int i = 0; i < random_iterations; i++) {
        all_types_t *msg = empty_message(arena);
        const char *name =
            random_keys[random_below(&seed, sizeof random_keys / sizeof random_keys[0])];
        const char *text =
            random_strings[random_below(&seed, sizeof random_strings / sizeof random_strings[0])];
        transcode_error_t error;
        if (transcode_set_field(&msg->base, name, text, arena, &error))
            expect_pack_round_trip(&msg->base);
        else
            assert_string_equal(error.field, name);
        arena_reset(arena);
    }

    print_message("random inputs: %d accepted, %d refused, %d did not parse\n", accepted, refused,
                  unparsable);
    /* Both outcomes happened often, or the loop tested little. */
    assert_true(accepted > random_iterations / 20);
    assert_true(refused > random_iterations / 20);
    assert_true(unparsable > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_scalars_round_trip, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_integer_boundaries, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_floats, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_bools_and_strings, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_enums, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_nested_repeated_and_maps, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_oneof, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_bytes_base64, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_fields, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_types, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_depth_limit, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_size_limits, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_defaults_on_encode, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_encode_edge_values, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_set_field_integers, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_set_field_other_types, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_pack_unpack, arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_random_inputs, arena_setup, arena_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
