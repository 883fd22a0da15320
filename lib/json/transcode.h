/*
 * transcode: JSON <-> protobuf, driven only by protobuf-c descriptors.
 *
 * The HTTP gateway uses it to turn an outside JSON body (plus path, query
 * and header parameters) into a request message, and the reply message
 * back into JSON. No message is ever mapped by hand: whatever the .proto
 * says is the public JSON contract, field for field.
 *
 * The mapping (this is the public HTTP API's contract):
 *
 *   proto                         JSON
 *   ----------------------------  --------------------------------------
 *   field names                   the .proto names (snake_case), exactly
 *   int32 sint32 sfixed32         number without fraction or exponent
 *   int64 sint64 sfixed64         (json_integer); reals such as 1.0 are
 *   uint32 fixed32                refused, as are values outside the
 *   uint64 fixed64                field's width and negative unsigned
 *   float double                  number (integers accepted)
 *   bool                          true / false
 *   string                        string (UTF-8, no NUL)
 *   bytes                         string, base64 (standard, padded)
 *   enum                          the value's name as a string
 *   message                       object
 *   repeated T                    array of T
 *   map<K, V>                     object; keys are strings, converted to K
 *   null (decode only)            leave the field at its default
 *
 * Encoding follows proto3: every field is emitted, zero and empty values
 * included ("balance": 0, "has_more": false, "data": []). A message field
 * that is not set is emitted as null. Of a oneof only the set member is
 * emitted; a proto2 optional field only when set.
 *
 * Known limits of the mapping, each on purpose:
 *   - jansson holds integers as long long, so a uint64/fixed64 above
 *     INT64_MAX cannot be sent (it fails to parse as JSON). On encode such
 *     a value is emitted as a decimal string rather than lose precision.
 *   - A float/double that is NaN or infinite is encoded as the string
 *     "NaN", "Infinity" or "-Infinity" (as proto3 JSON does); decode
 *     accepts numbers only.
 *   - An enum value that has no name (an open proto3 enum received from a
 *     newer peer) is encoded as its number; decode accepts names only.
 *   - A string that is not valid UTF-8 (protobuf-c does not check) is
 *     encoded with each bad byte replaced by U+FFFD.
 *   - protobuf-c descriptors do not mark map entries. A repeated message
 *     field is treated as a map when its type is the nested message protoc
 *     generates for map<,> (named <FieldName>Entry, fields key=1, value=2).
 *
 * Callers should parse bodies with json_loads(..., JSON_REJECT_DUPLICATES,
 * ...): by default jansson keeps the last of two equal keys silently, and
 * this module only ever sees the survivor.
 *
 * Must never: abort, read out of bounds or allocate without bound on any
 * JSON or text input (every size is limited below, and decode memory all
 * comes from the caller's arena); accept an integer, string or bytes value
 * it would have to round, clamp or truncate (float/double round, as they
 * must); hand-write the mapping of any message.
 */
#ifndef PAYGATE_JSON_TRANSCODE_H
#define PAYGATE_JSON_TRANSCODE_H

#include <stdbool.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "arena/arena.h"

enum {
    /* Message nesting levels in one decode; the top-level message is 1. */
    transcode_depth_levels_max = 32,
    /* Elements of one repeated field, or entries of one map field. */
    transcode_repeated_elements_max = 1000,
    /* Bytes of one string, bytes (after base64 decoding) or map key. */
    transcode_string_bytes_max = 64 * 1024,
};

/* Why a decode failed. 'field' is the dotted path of the offending field,
 * such as "items[2].amount" or "balances[\"INR\"]", "" when the problem is
 * not one field's (for example the body is not an object); it is cut short
 * when longer than the buffer. 'message' is for humans and quotes the path:
 * "\"amount\" must be an integer", "unknown field \"child.bogus\"". */
typedef struct {
    char field[128];
    char message[256];
} transcode_error_t;

/* Decodes JSON object 'json' into a new message of type 'desc' whose
 * memory (the message, nested messages, strings, bytes and repeated
 * arrays) all comes from 'arena'. Returns NULL and fills 'error' when
 * 'json' is NULL or not an object, on any unknown field, wrong type,
 * out-of-range value, broken limit, missing proto2 required field or when
 * the arena is full. Never aborts on input; 'desc', 'arena' and 'error'
 * must not be NULL. The result packs with protobuf_c_message_pack() and
 * must not be given to protobuf_c_message_free_unpacked(). */
ProtobufCMessage *transcode_from_json(const json_t *json, const ProtobufCMessageDescriptor *desc,
                                      arena_t *arena, transcode_error_t *error);

/* Sets the field named 'name' of 'msg' from 'text' (a path parameter such
 * as {id}, a query parameter such as ?limit=10, a header such as
 * Idempotency-Key). 'text' is parsed by the field's type: integers as
 * strict decimal ("-" allowed for signed types only; no "+", spaces,
 * fraction or junk), float/double as a JSON number, bools as "true" or
 * "false", enums by value name, strings as is (must be UTF-8, no longer
 * than transcode_string_bytes_max), bytes as is (raw, not base64). A
 * repeated scalar field gets 'text' appended as one more element (so
 * ?tag=a&tag=b works). Setting a oneof member makes it the set member.
 * Returns false and fills 'error' (leaving 'msg' unchanged) when the field
 * does not exist, is a message or map field, or 'text' does not parse.
 * New memory comes from 'arena'. 'msg' must be arena-owned (from
 * transcode_from_json or protobuf_c_message_init on arena memory), never
 * one that protobuf_c_message_free_unpacked() will free. */
bool transcode_set_field(ProtobufCMessage *msg, const char *name, const char *text, arena_t *arena,
                         transcode_error_t *error);

/* Encodes 'msg' as a new JSON object following the table above; the
 * caller json_decref()s it. Returns NULL only when memory runs out. 'msg'
 * must be a complete message (as unpacked or built by the caller). */
json_t *transcode_to_json(const ProtobufCMessage *msg);

#endif
