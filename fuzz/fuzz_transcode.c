/*
 * fuzz_transcode: libFuzzer target for the HTTP gateway's JSON <-> protobuf
 * transcoding (lib/json/transcode.c), the way gateway-http/gateway.c uses
 * it on a request.
 *
 * Input layout (fuzz/corpus/transcode/ holds README's request bodies):
 *
 *   JSON body bytes [ NUL  parameter text ]
 *
 * The body is parsed with json_loadb() (the gateway's flags, plus
 * JSON_ALLOW_NUL and JSON_DECODE_ANY: they only accept more, and
 * transcode must survive any json_t), then, for the request message of
 * every route of routes_v1 (gateway-http/routes.c) and for the test-only
 * message with a field of every shape (tests/unit/transcode_test.proto):
 *
 *   1. transcode_from_json(body) (or, when it fails, of {});
 *   2. transcode_set_field(field, parameter text) for every field of the
 *      message, as the gateway does for path, query and header values;
 *   3. transcode_to_json() of the result, and the checks below (of a {}
 *      fallback only for the test-only message, to keep executions fast).
 *
 * What every input must satisfy (else the target aborts: a finding):
 *   - no crash, leak, out-of-bounds access or undefined behaviour;
 *   - a failure says why: a non-empty message; field and message are
 *     terminated within their buffers and valid UTF-8 (the gateway puts
 *     them into its JSON error body);
 *   - a failed transcode_set_field() leaves the message unchanged;
 *   - a decoded message packs, and protobuf-c unpacks it to the same JSON;
 *   - the JSON out is valid: it dumps, parses back equal, and decodes
 *     again (transcode_from_json) to a message with the same JSON.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "arena/arena.h"
#include "json/transcode.h"
#include "routes.h"
#include "transcode_test.pb-c.h"

enum {
    arena_block_bytes = 64 * 1024,
    parameter_bytes_max = 4096,
};

/* The flags the gateway parses bodies with, plus two that only widen what
 * reaches transcode. */
#define BODY_FLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY)

static arena_t *arena;

/* Stops the run with 'what' when 'ok' is false: libFuzzer records the
 * input as a crash. */
static void require(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_transcode: invariant broken: %s\n", what);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    arena = arena_new(arena_block_bytes);
    require(arena != NULL, "arena_new");
    return 0;
}

/* True when the 'len' bytes at 'text' are valid UTF-8 (no overlong forms,
 * surrogates or code points above U+10FFFF). Written here again, not taken
 * from transcode.c, so that a bug there cannot hide itself. */
static bool utf8_valid(const unsigned char *text, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = text[i];
        size_t n;
        uint32_t code;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 2, code = c & 0x1Fu;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3, code = c & 0x0Fu;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4, code = c & 0x07u;
        } else {
            return false;
        }
        if (len - i < n)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((text[i + k] & 0xC0) != 0x80)
                return false;
            code = code << 6 | (text[i + k] & 0x3Fu);
        }
        if ((n == 3 && code < 0x800) || (n == 4 && (code < 0x10000 || code > 0x10FFFF)) ||
            (code >= 0xD800 && code <= 0xDFFF))
            return false;
        i += n;
    }
    return true;
}

/* The checks every failure must pass: it says why, and says it in
 * terminated UTF-8. */
static void check_error(const transcode_error_t *error)
{
    const char *field_end = memchr(error->field, '\0', sizeof error->field);
    const char *message_end = memchr(error->message, '\0', sizeof error->message);
    require(field_end != NULL, "error.field is terminated");
    require(message_end != NULL, "error.message is terminated");
    require(message_end != error->message, "a failure has a message");
    require(utf8_valid((const unsigned char *)error->field, (size_t)(field_end - error->field)),
            "error.field is valid UTF-8");
    require(
        utf8_valid((const unsigned char *)error->message, (size_t)(message_end - error->message)),
        "error.message is valid UTF-8");
}

/* 'msg' packed into a new malloc'd buffer, its size in '*len'. */
static uint8_t *pack_message(const ProtobufCMessage *msg, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buffer = malloc(*len > 0 ? *len : 1);
    require(buffer != NULL, "malloc");
    require(protobuf_c_message_pack(msg, buffer) == *len, "pack writes get_packed_size bytes");
    return buffer;
}

/* 'msg' as JSON, which must not fail (only out of memory may). */
static json_t *to_json(const ProtobufCMessage *msg)
{
    json_t *json = transcode_to_json(msg);
    require(json != NULL, "transcode_to_json of a complete message");
    return json;
}

/* True when 'msg' holds a uint64/fixed64 value above INT64_MAX outside a
 * map key: transcode_to_json() writes it as a string, which decode refuses
 * (a documented limit, see transcode.h). transcode_set_field() can set one
 * from text; JSON cannot. */
static bool holds_unsendable_uint64(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    size_t name_len = strlen(desc->short_name);
    bool map_entry = name_len > 5 && strcmp(desc->short_name + name_len - 5, "Entry") == 0;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *field = &desc->fields[i];
        if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t set_id; /* a oneof's members share storage: only the set one counts */
            memcpy(&set_id, (const char *)msg + field->quantifier_offset, sizeof set_id);
            if (set_id != field->id)
                continue;
        }
        const char *member = (const char *)msg + field->offset;
        size_t count = 1;
        if (field->label == PROTOBUF_C_LABEL_REPEATED) {
            memcpy(&count, (const char *)msg + field->quantifier_offset, sizeof count);
            const void *array; /* a repeated field's member is a pointer to its array */
            memcpy(&array, member, sizeof array);
            member = array;
        }
        for (size_t k = 0; k < count; k++) {
            if (field->type == PROTOBUF_C_TYPE_UINT64 || field->type == PROTOBUF_C_TYPE_FIXED64) {
                uint64_t value;
                memcpy(&value, member + k * sizeof value, sizeof value);
                if (value > INT64_MAX && !(map_entry && field->id == 1))
                    return true;
            } else if (field->type == PROTOBUF_C_TYPE_MESSAGE) {
                const ProtobufCMessage *child;
                memcpy(&child, member + k * sizeof child, sizeof child);
                if (child != NULL && holds_unsendable_uint64(child))
                    return true;
            }
        }
    }
    return false;
}

/* The checks on a message that transcode built: it packs and unpacks to
 * the same JSON; its JSON dumps, parses back equal and decodes again to
 * the same JSON (unless it holds a value JSON cannot carry). */
static void check_message(const ProtobufCMessage *msg)
{
    json_t *json = to_json(msg);

    size_t len;
    uint8_t *packed = pack_message(msg, &len);
    ProtobufCMessage *unpacked = protobuf_c_message_unpack(msg->descriptor, NULL, len, packed);
    require(unpacked != NULL, "a decoded message packs into what protobuf-c unpacks");
    json_t *unpacked_json = to_json(unpacked);
    require(json_equal(json, unpacked_json), "packed and unpacked, the same JSON");
    json_decref(unpacked_json);
    protobuf_c_message_free_unpacked(unpacked, NULL);
    free(packed);

    char *text = json_dumps(json, JSON_COMPACT);
    require(text != NULL, "transcode_to_json gives JSON that dumps");
    json_error_t parse_error;
    json_t *parsed = json_loads(text, JSON_REJECT_DUPLICATES, &parse_error);
    require(parsed != NULL && json_equal(parsed, json), "the dumped JSON parses back equal");
    free(text);

    transcode_error_t error;
    ProtobufCMessage *again = transcode_from_json(parsed, msg->descriptor, arena, &error);
    if (again == NULL) {
        check_error(&error);
        require(holds_unsendable_uint64(msg), "transcode_to_json's output decodes again");
    } else {
        json_t *again_json = to_json(again);
        require(json_equal(again_json, json), "decoded again, the same JSON");
        json_decref(again_json);
    }
    json_decref(parsed);
    json_decref(json);
}

/* transcode_set_field(name, text) on 'msg', checked: a failure says why
 * and leaves 'msg' unchanged. It only ever writes members of 'msg' itself
 * (a value, a oneof case, a repeated field's count and array pointer), so
 * comparing the struct's bytes is the whole check. */
static void set_field_checked(ProtobufCMessage *msg, const char *name, const char *text)
{
    size_t bytes = msg->descriptor->sizeof_message;
    uint8_t *before = malloc(bytes);
    require(before != NULL, "malloc");
    memcpy(before, msg, bytes);
    transcode_error_t error;
    if (!transcode_set_field(msg, name, text, arena, &error)) {
        check_error(&error);
        require(memcmp(before, msg, bytes) == 0,
                "a failed transcode_set_field leaves the message unchanged");
    }
    free(before);
}

/* Steps 1-3 of the header comment for message type 'desc'. The checks of
 * check_message() are the costly part, so a message that the body did not
 * decode into ({} with parameters set) is checked only when
 * 'check_fallback': for the message with every field shape, which covers
 * every parameter type the request messages have. */
static void fuzz_message_type(const json_t *body, const ProtobufCMessageDescriptor *desc,
                              const char *parameter, bool check_fallback)
{
    arena_reset(arena);
    transcode_error_t error;
    ProtobufCMessage *msg = transcode_from_json(body, desc, arena, &error);
    bool decoded = msg != NULL;
    if (!decoded) {
        check_error(&error);
        json_t *empty = json_object();
        msg = transcode_from_json(empty, desc, arena, &error);
        json_decref(empty);
        require(msg != NULL, "{} decodes into every message");
    }
    for (unsigned i = 0; i < desc->n_fields; i++)
        set_field_checked(msg, desc->fields[i].name, parameter);
    set_field_checked(msg, "no_such_field", parameter);
    if (decoded || check_fallback)
        check_message(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, '\0', size);
    size_t body_len = nul != NULL ? (size_t)(nul - data) : size;
    char parameter[parameter_bytes_max + 1] = "";
    if (nul != NULL) {
        size_t n = size - body_len - 1;
        if (n > parameter_bytes_max)
            n = parameter_bytes_max;
        memcpy(parameter, nul + 1, n);
        parameter[n] = '\0'; /* a NUL inside ends it, as in a C string */
    }
    json_error_t parse_error;
    json_t *body = json_loadb((const char *)data, body_len, BODY_FLAGS, &parse_error);
    if (body == NULL)
        body = json_null(); /* the parameter is fuzzed anyway */
    for (size_t r = 0; r < routes_v1_count; r++)
        fuzz_message_type(body, routes_v1[r].request, parameter, false);
    fuzz_message_type(body, &paygate__test__all_types__descriptor, parameter, true);
    json_decref(body);
    return 0;
}
