/*
 * fuzz_protobuf: libFuzzer target for protobuf decoding of every message of
 * the wire contract (every .proto in proto/), and for the gateway's reply path that
 * turns a decoded message into JSON.
 *
 * Input: the bytes of one protobuf message (fuzz/corpus/protobuf/ holds
 * real ones). Every input is unpacked as every message type listed in
 * fuzz_protobuf_messages[] (generated from the protoc-c headers, see
 * libfuzzer/list_messages.cmake), and for each type that accepts it:
 *
 *   1. with protobuf-c's allocator, as the broker and lib/wire do: the
 *      message packs to get_packed_size() bytes, those unpack again, to the
 *      same packed size and the same bytes (packing is stable), and
 *      free_unpacked() frees everything (LeakSanitizer);
 *   2. with the arena allocator (lib/arena), as lib/rpc and the gateway do,
 *      then transcode_to_json() as the gateway answers a reply: the JSON
 *      dumps, parses back equal, and what transcode_from_json() accepts of
 *      it encodes to the same JSON (it may refuse what JSON cannot carry:
 *      a uint64 above INT64_MAX, an unnamed enum value, NaN, infinities).
 *
 * What every input must satisfy (else the target aborts: a finding): the
 * checks above, and no crash, leak, out-of-bounds access or undefined
 * behaviour. One known defect of protobuf-c is skipped: see
 * holds_field_number_0().
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
#include "fuzz_protobuf_messages.h"
#include "json/transcode.h"

enum {
    arena_block_bytes = 64 * 1024,
    message_types = sizeof fuzz_protobuf_messages / sizeof fuzz_protobuf_messages[0],
};

static arena_t *arena;

/* Stops the run with 'what' (about message type 'desc') when 'ok' is
 * false: libFuzzer records the input as a crash. */
static void require(bool ok, const ProtobufCMessageDescriptor *desc, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_protobuf: %s: invariant broken: %s\n", desc->name, what);
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
    if (arena == NULL)
        abort();
    for (size_t i = 0; i < message_types; i++)
        require(fuzz_protobuf_messages[i]->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
                fuzz_protobuf_messages[i], "a message descriptor");
    return 0;
}

/* 'msg' packed into a new malloc'd buffer, its size in '*len'. */
static uint8_t *pack_message(const ProtobufCMessage *msg, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buffer = malloc(*len > 0 ? *len : 1);
    require(buffer != NULL, msg->descriptor, "malloc");
    require(protobuf_c_message_pack(msg, buffer) == *len, msg->descriptor,
            "pack writes get_packed_size() bytes");
    return buffer;
}

/* True when 'msg' or a message in it keeps an unknown field numbered 0.
 *
 * protobuf-c 1.4.1 refuses a tag whose first byte says field 0 but accepts
 * the same tag written in more bytes ("\x80\x00"), keeps it as an unknown
 * field, and packs it back as "\x00", which no decoder accepts: pack then
 * unpack fails. That is the library's (Debian's protobuf-c, not ours to
 * patch); where paygate packs again what it unpacked, the header of the
 * broker protocol, it is finding F1 of fuzz/README.md, which fuzz_wire and
 * tests/unit/test_wire_fuzz_regressions.c hold lib/wire to. Here such
 * messages are skipped, so that this target keeps finding other bugs. */
static bool holds_field_number_0(const ProtobufCMessage *msg)
{
    for (unsigned i = 0; i < msg->n_unknown_fields; i++)
        if (msg->unknown_fields[i].tag == 0)
            return true;
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *field = &desc->fields[i];
        if (field->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t set_id; /* members share storage: only the set one is a message */
            memcpy(&set_id, (const char *)msg + field->quantifier_offset, sizeof set_id);
            if (set_id != field->id)
                continue;
        }
        size_t count = 1;
        const void *member = (const char *)msg + field->offset;
        if (field->label == PROTOBUF_C_LABEL_REPEATED) {
            memcpy(&count, (const char *)msg + field->quantifier_offset, sizeof count);
            memcpy(&member, member, sizeof member); /* the array of message pointers */
        }
        for (size_t k = 0; k < count; k++) {
            const ProtobufCMessage *child;
            memcpy(&child, (const char *)member + k * sizeof child, sizeof child);
            if (child != NULL && holds_field_number_0(child))
                return true;
        }
    }
    return false;
}

/* Step 1: unpack, pack, unpack again, pack again. */
static bool check_round_trip(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                             size_t size)
{
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, size, data);
    if (msg == NULL)
        return false;
    if (holds_field_number_0(msg)) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return false;
    }
    require(protobuf_c_message_check(msg), desc, "an unpacked message passes check()");
    size_t len;
    uint8_t *packed = pack_message(msg, &len);
    ProtobufCMessage *again = protobuf_c_message_unpack(desc, NULL, len, packed);
    require(again != NULL, desc, "what pack() wrote unpacks");
    size_t again_len;
    uint8_t *again_packed = pack_message(again, &again_len);
    require(again_len == len, desc, "packed, unpacked and packed again: the same size");
    require(memcmp(again_packed, packed, len) == 0, desc, "packing is stable");
    free(again_packed);
    free(packed);
    protobuf_c_message_free_unpacked(again, NULL);
    protobuf_c_message_free_unpacked(msg, NULL);
    return true;
}

/* Step 2: unpack into the arena and answer it as JSON. */
static void check_json(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t size)
{
    arena_reset(arena);
    ProtobufCAllocator allocator = arena_protobuf_allocator(arena);
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, &allocator, size, data);
    require(msg != NULL, desc, "what unpacks with malloc unpacks into an arena");
    json_t *json = transcode_to_json(msg);
    require(json != NULL, desc, "transcode_to_json of an unpacked message");

    char *text = json_dumps(json, JSON_COMPACT);
    require(text != NULL, desc, "transcode_to_json gives JSON that dumps");
    json_error_t parse_error;
    json_t *parsed = json_loads(text, JSON_REJECT_DUPLICATES, &parse_error);
    require(parsed != NULL && json_equal(parsed, json), desc, "the dumped JSON parses back equal");
    free(text);

    transcode_error_t error;
    ProtobufCMessage *again = transcode_from_json(parsed, desc, arena, &error);
    if (again != NULL) {
        json_t *again_json = transcode_to_json(again);
        require(again_json != NULL && json_equal(again_json, json), desc,
                "JSON decoded and encoded again is the same JSON");
        json_decref(again_json);
    } else {
        require(error.message[0] != '\0', desc, "a decode failure says why");
    }
    json_decref(parsed);
    json_decref(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < message_types; i++) {
        const ProtobufCMessageDescriptor *desc = fuzz_protobuf_messages[i];
        if (check_round_trip(desc, data, size))
            check_json(desc, data, size);
    }
    return 0;
}
