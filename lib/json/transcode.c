/*
 * transcode: JSON <-> protobuf by protobuf-c descriptor. See transcode.h for
 * the mapping, its limits and what this module must never do.
 *
 * Everything here reads and writes protobuf-c's generated C structs through
 * their descriptors. One field descriptor says where its data lives:
 *
 *   struct Foo (desc->sizeof_message bytes)
 *   +------------------+
 *   | ProtobufCMessage |  base: descriptor, unknown fields
 *   +------------------+
 *   | ...              |
 *   | quantifier       |  <- field->quantifier_offset (0 when none):
 *   |                  |     repeated:  size_t n_foo (element count)
 *   |                  |     oneof:     uint32 case (the set member's id)
 *   |                  |     optional:  protobuf_c_boolean has_foo
 *   | member           |  <- field->offset: the value itself, or for a
 *   | ...              |     repeated field a pointer to an array of them
 *   +------------------+
 *
 * Oneof members share one union, so a member's storage is only meaningful
 * when the case says it is the set one. A value is stored as its C type:
 * 4 or 8 byte integers and floats, protobuf_c_boolean for bool, int for an
 * enum, char * for a string, ProtobufCBinaryData for bytes, and a pointer
 * for a message. Decode allocates all of them from the caller's arena and
 * never frees; that is why a decoded message must not be given to
 * protobuf_c_message_free_unpacked().
 */
#include "json/transcode.h"

#include <assert.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    /* Longest dotted path kept while decoding; error.field shows less. */
    path_bytes_max = 512,
};

/* The state of one decode (or one transcode_set_field): where memory comes
 * from, where the error goes, and the path of the field being decoded. */
typedef struct {
    arena_t *arena;
    transcode_error_t *error;
    char path[path_bytes_max];
    size_t path_len;
} decoder_t;

/* Any one value of any field type, for parsing before committing. */
typedef union {
    int32_t i32;
    uint32_t u32;
    int64_t i64;
    uint64_t u64;
    float f;
    double d;
    protobuf_c_boolean b;
    char *s;
    ProtobufCBinaryData bytes;
    ProtobufCMessage *msg;
} any_value_t;

/* ---- UTF-8 ------------------------------------------------------------------ */

/* The length of the valid UTF-8 sequence starting at 's', which has 'len'
 * bytes left, or 0 when it is not one (overlong forms, surrogates and code
 * points above U+10FFFF are invalid). 'len' must be at least 1. */
static size_t utf8_sequence_bytes(const unsigned char *s, size_t len)
{
    unsigned char lead = s[0];
    if (lead < 0x80)
        return 1;
    size_t n;
    uint32_t code, code_min;
    if ((lead & 0xE0) == 0xC0) {
        n = 2, code = lead & 0x1Fu, code_min = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
        n = 3, code = lead & 0x0Fu, code_min = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
        n = 4, code = lead & 0x07u, code_min = 0x10000;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        code = (code << 6) | (s[i] & 0x3Fu);
    }
    if (code < code_min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
        return 0;
    return n;
}

/* True when the 'len' bytes at 'text' are all valid UTF-8. */
static bool utf8_valid(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_sequence_bytes(s + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/* Cuts 'text' (NUL-terminated, 'len' bytes) back so it does not end in the
 * middle of a UTF-8 sequence, as a truncating copy may leave it. */
static void utf8_trim_partial(char *text, size_t len)
{
    size_t start = len;
    /* Find the start of the last sequence (at most 3 continuation bytes). */
    while (start > 0 && len - start < 4 && ((unsigned char)text[start - 1] & 0xC0) == 0x80)
        start--;
    if (start == 0 && len == 0)
        return;
    if (start > 0)
        start--; /* the lead byte */
    if (utf8_sequence_bytes((const unsigned char *)text + start, len - start) == 0)
        text[start] = '\0';
}

/* ---- errors and paths ------------------------------------------------------- */

/* Empties 'error' so a caller never sees a stale one. */
static void error_clear(transcode_error_t *error)
{
    error->field[0] = '\0';
    error->message[0] = '\0';
}

/* Appends printf-style text to the path of 'd' (cut short, on a UTF-8
 * boundary, when the path buffer is full). Returns the path's previous
 * length, for path_pop(). */
__attribute__((format(printf, 2, 3))) static size_t path_push(decoder_t *d, const char *format, ...)
{
    size_t saved = d->path_len;
    size_t room = sizeof d->path - d->path_len;
    if (room > 1) {
        va_list args;
        va_start(args, format);
        int written = vsnprintf(d->path + d->path_len, room, format, args);
        va_end(args);
        if (written > 0) {
            size_t added = (size_t)written < room ? (size_t)written : room - 1;
            d->path_len += added;
            if ((size_t)written >= room)
                utf8_trim_partial(d->path, d->path_len);
            d->path_len = strlen(d->path);
        }
    }
    return saved;
}

/* Appends field 'name' ('name_len' bytes, not NUL-terminated necessarily)
 * to the path of 'd', with a dot unless it is the first. Returns the
 * path's previous length. */
static size_t path_push_name(decoder_t *d, const char *name, size_t name_len)
{
    int shown = name_len < path_bytes_max ? (int)name_len : path_bytes_max;
    return d->path_len == 0 ? path_push(d, "%.*s", shown, name)
                            : path_push(d, ".%.*s", shown, name);
}

/* Restores the path of 'd' to 'saved' bytes (from a path_push*()). */
static void path_pop(decoder_t *d, size_t saved)
{
    assert(saved <= d->path_len);
    d->path_len = saved;
    d->path[saved] = '\0';
}

/* Fills the error of 'd': its field is the current path, its message the
 * printf-style text. Always returns false, so callers can return it. */
__attribute__((format(printf, 2, 3))) static bool decoder_fail(decoder_t *d, const char *format,
                                                               ...)
{
    transcode_error_t *error = d->error;
    size_t field_cap = sizeof error->field;
    if (d->path_len < field_cap) {
        memcpy(error->field, d->path, d->path_len + 1);
    } else {
        memcpy(error->field, d->path, field_cap - 4);
        error->field[field_cap - 4] = '\0';
        utf8_trim_partial(error->field, field_cap - 4);
        strcat(error->field, "...");
    }
    va_list args;
    va_start(args, format);
    int written = vsnprintf(error->message, sizeof error->message, format, args);
    va_end(args);
    if (written < 0)
        error->message[0] = '\0';
    else if ((size_t)written >= sizeof error->message)
        utf8_trim_partial(error->message, sizeof error->message - 1);
    return false;
}

/* Fails because the current field's JSON value is not 'expected' (a noun
 * phrase such as "an integer"). */
static bool decoder_expected(decoder_t *d, const char *expected)
{
    return decoder_fail(d, "\"%s\" must be %s", d->path, expected);
}

/* Fails because the arena is full (the request is too large overall). */
static bool decoder_out_of_memory(decoder_t *d)
{
    return decoder_fail(d, "\"%s\": out of memory (the request is too large)", d->path);
}

/* ---- descriptors and members ------------------------------------------------ */

/* The protobuf type name of 'type', for error messages. */
static const char *type_name(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
        return "int32";
    case PROTOBUF_C_TYPE_SINT32:
        return "sint32";
    case PROTOBUF_C_TYPE_SFIXED32:
        return "sfixed32";
    case PROTOBUF_C_TYPE_INT64:
        return "int64";
    case PROTOBUF_C_TYPE_SINT64:
        return "sint64";
    case PROTOBUF_C_TYPE_SFIXED64:
        return "sfixed64";
    case PROTOBUF_C_TYPE_UINT32:
        return "uint32";
    case PROTOBUF_C_TYPE_FIXED32:
        return "fixed32";
    case PROTOBUF_C_TYPE_UINT64:
        return "uint64";
    case PROTOBUF_C_TYPE_FIXED64:
        return "fixed64";
    case PROTOBUF_C_TYPE_FLOAT:
        return "float";
    case PROTOBUF_C_TYPE_DOUBLE:
        return "double";
    case PROTOBUF_C_TYPE_BOOL:
        return "bool";
    case PROTOBUF_C_TYPE_ENUM:
        return "enum";
    case PROTOBUF_C_TYPE_STRING:
        return "string";
    case PROTOBUF_C_TYPE_BYTES:
        return "bytes";
    case PROTOBUF_C_TYPE_MESSAGE:
        return "message";
    }
    return "unknown";
}

/* How many bytes one value of 'type' takes in a message or repeated array. */
static size_t type_value_bytes(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM: /* protobuf-c forces enums to int size */
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    assert(!"unknown protobuf-c field type");
    return 0;
}

/* The address of the data at 'offset' bytes into message 'msg'. */
static void *member_at(ProtobufCMessage *msg, unsigned offset)
{
    return (char *)msg + offset;
}

/* The read-only address of the data at 'offset' bytes into 'msg'. */
static const void *member_at_const(const ProtobufCMessage *msg, unsigned offset)
{
    return (const char *)msg + offset;
}

/* The oneof case (the set member's field id, 0 for none) of 'field' in
 * 'msg'. Read with memcpy: the case is a generated enum type. */
static uint32_t oneof_case(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field)
{
    uint32_t value;
    memcpy(&value, member_at_const(msg, field->quantifier_offset), sizeof value);
    return value;
}

/* The element count of repeated 'field' in 'msg'. */
static size_t repeated_count(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field)
{
    size_t count;
    memcpy(&count, member_at_const(msg, field->quantifier_offset), sizeof count);
    return count;
}

/* The pointer stored at 'field'->offset in 'msg' (a string, message or
 * repeated array). */
static const void *pointer_member(const ProtobufCMessage *msg,
                                  const ProtobufCFieldDescriptor *field)
{
    const void *pointer;
    memcpy(&pointer, member_at_const(msg, field->offset), sizeof pointer);
    return pointer;
}

/* Stores repeated 'field' of 'msg' as 'count' elements at 'array'. */
static void repeated_store(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field,
                           void *array, size_t count)
{
    memcpy(member_at(msg, field->quantifier_offset), &count, sizeof count);
    memcpy(member_at(msg, field->offset), &array, sizeof array);
}

/* Records that 'field' of 'msg' now holds a value, the way protobuf-c's
 * own parser does: a oneof case names it, a proto2 optional scalar gets
 * its has_ flag. Other fields carry no presence. */
static void field_mark_present(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field)
{
    if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t id = field->id;
        memcpy(member_at(msg, field->quantifier_offset), &id, sizeof id);
    } else if (field->label == PROTOBUF_C_LABEL_OPTIONAL && field->quantifier_offset != 0) {
        protobuf_c_boolean has = 1;
        memcpy(member_at(msg, field->quantifier_offset), &has, sizeof has);
    }
}

/* True when 'field' of 'msg' is to be encoded: a oneof member only when it
 * is the set one, a proto2 optional only when present (the same test
 * protobuf_c_message_pack makes), anything else always (proto3). */
static bool field_is_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field)
{
    if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return oneof_case(msg, field) == field->id;
    if (field->label != PROTOBUF_C_LABEL_OPTIONAL)
        return true;
    if (field->type == PROTOBUF_C_TYPE_MESSAGE || field->type == PROTOBUF_C_TYPE_STRING) {
        const void *pointer = pointer_member(msg, field);
        return pointer != NULL && pointer != field->default_value;
    }
    if (field->quantifier_offset == 0)
        return true;
    protobuf_c_boolean has;
    memcpy(&has, member_at_const(msg, field->quantifier_offset), sizeof has);
    return has != 0;
}

/* True when 'entry_name' is the name protoc gives the map entry message of
 * a map field called 'field_name': "balances" -> "BalancesEntry",
 * "children_by_id" -> "ChildrenByIdEntry". */
static bool is_map_entry_name(const char *field_name, const char *entry_name)
{
    bool upper_next = true;
    const char *expected = entry_name;
    for (const char *c = field_name; *c != '\0'; c++) {
        if (*c == '_') {
            upper_next = true;
            continue;
        }
        char wanted = *c;
        if (upper_next && wanted >= 'a' && wanted <= 'z')
            wanted = (char)(wanted - 'a' + 'A');
        upper_next = false;
        if (*expected != wanted)
            return false;
        expected++;
    }
    return strcmp(expected, "Entry") == 0;
}

/* True when 'type' may be a map key (integral types, bool and string). */
static bool is_map_key_type(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
    case PROTOBUF_C_TYPE_ENUM:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return false;
    default:
        return true;
    }
}

/* True when 'field' is a protobuf map<K, V>. protobuf-c keeps no map flag,
 * so this recognises the entry message protoc generates for one: named
 * <FieldName>Entry, exactly the fields key = 1 and value = 2 (not
 * repeated), key of a map key type. */
static bool field_is_map(const ProtobufCFieldDescriptor *field)
{
    if (field->label != PROTOBUF_C_LABEL_REPEATED || field->type != PROTOBUF_C_TYPE_MESSAGE)
        return false;
    const ProtobufCMessageDescriptor *entry = field->descriptor;
    if (entry->n_fields != 2 || !is_map_entry_name(field->name, entry->short_name))
        return false;
    const ProtobufCFieldDescriptor *key = protobuf_c_message_descriptor_get_field(entry, 1);
    const ProtobufCFieldDescriptor *value = protobuf_c_message_descriptor_get_field(entry, 2);
    return key != NULL && value != NULL && strcmp(key->name, "key") == 0 &&
           strcmp(value->name, "value") == 0 && key->label != PROTOBUF_C_LABEL_REPEATED &&
           value->label != PROTOBUF_C_LABEL_REPEATED && is_map_key_type(key->type);
}

/* ---- base64 (standard alphabet, padded) ------------------------------------- */

static const char base64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The 6-bit value of base64 digit 'c', or -1 when it is not one. */
static int base64_digit(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes the 'len' bytes of base64 at 'text' into arena memory at '*out'.
 * Strict: the length must be a multiple of 4, '=' only as the last one or
 * two characters, no whitespace, and the unused bits before padding zero
 * (so every byte string has exactly one accepted encoding). Fails when
 * invalid, when the decoded bytes would exceed transcode_string_bytes_max
 * (checked before allocating) or when the arena is full. */
static bool base64_decode(decoder_t *d, const char *text, size_t len, ProtobufCBinaryData *out)
{
    if (len % 4 != 0)
        return decoder_expected(d, "base64 (standard alphabet, padded)");
    size_t pad = 0;
    if (len >= 4 && text[len - 1] == '=')
        pad = text[len - 2] == '=' ? 2 : 1;
    size_t out_len = len / 4 * 3 - pad;
    if (out_len > transcode_string_bytes_max)
        return decoder_fail(d, "\"%s\" is longer than %d bytes", d->path,
                            transcode_string_bytes_max);
    uint8_t *data = NULL;
    if (out_len > 0) {
        data = arena_alloc(d->arena, out_len);
        if (data == NULL)
            return decoder_out_of_memory(d);
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        size_t quad_pad = i + 4 == len ? pad : 0;
        uint32_t digits[4] = {0, 0, 0, 0};
        for (size_t j = 0; j < 4 - quad_pad; j++) {
            int digit = base64_digit((unsigned char)text[i + j]);
            if (digit < 0)
                return decoder_expected(d, "base64 (standard alphabet, padded)");
            digits[j] = (uint32_t)digit;
        }
        if ((quad_pad == 2 && (digits[1] & 0x0F) != 0) ||
            (quad_pad == 1 && (digits[2] & 0x03) != 0))
            return decoder_expected(d, "base64 (standard alphabet, padded)");
        uint32_t bits = digits[0] << 18 | digits[1] << 12 | digits[2] << 6 | digits[3];
        data[o++] = (uint8_t)(bits >> 16);
        if (quad_pad < 2)
            data[o++] = (uint8_t)(bits >> 8);
        if (quad_pad < 1)
            data[o++] = (uint8_t)bits;
    }
    assert(o == out_len);
    out->len = out_len;
    out->data = data;
    return true;
}

/* The 'len' bytes at 'data' as a new JSON string in padded standard
 * base64, or NULL on OOM. */
static json_t *base64_encode(const uint8_t *data, size_t len)
{
    size_t out_len = (len + 2) / 3 * 4;
    char *text = malloc(out_len + 1);
    if (text == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        size_t left = len - i;
        uint32_t bits = (uint32_t)data[i] << 16;
        if (left > 1)
            bits |= (uint32_t)data[i + 1] << 8;
        if (left > 2)
            bits |= data[i + 2];
        text[o++] = base64_alphabet[bits >> 18 & 0x3F];
        text[o++] = base64_alphabet[bits >> 12 & 0x3F];
        text[o++] = left > 1 ? base64_alphabet[bits >> 6 & 0x3F] : '=';
        text[o++] = left > 2 ? base64_alphabet[bits & 0x3F] : '=';
    }
    assert(o == out_len);
    text[o] = '\0';
    json_t *json = json_stringn_nocheck(text, out_len);
    free(text);
    return json;
}

/* ---- decoding one value ----------------------------------------------------- */

static bool decode_message(decoder_t *d, const json_t *json, const ProtobufCMessageDescriptor *desc,
                           unsigned depth, ProtobufCMessage **out);

/* Checks JSON 'value' is an integer in ['min', 'max'] (the range of a
 * field of type 'type') and stores it in '*out'. Reals, even 1.0, are
 * refused: they are not integers in the JSON the client sent. */
static bool decode_integer(decoder_t *d, const json_t *value, json_int_t min, json_int_t max,
                           ProtobufCType type, json_int_t *out)
{
    if (!json_is_integer(value))
        return decoder_expected(d, "an integer");
    json_int_t number = json_integer_value(value);
    if (number < 0 && min == 0)
        return decoder_fail(d, "\"%s\" must not be negative (%s)", d->path, type_name(type));
    if (number < min || number > max)
        return decoder_fail(d, "\"%s\" is out of range for %s", d->path, type_name(type));
    *out = number;
    return true;
}

/* Copies the 'len' bytes of string 'text' into the arena as a C string at
 * '*out'. Refuses strings over transcode_string_bytes_max, with a NUL
 * inside (a C string would silently cut it) or not valid UTF-8. */
static bool decode_string_bytes(decoder_t *d, const char *text, size_t len, char **out)
{
    if (len > transcode_string_bytes_max)
        return decoder_fail(d, "\"%s\" is longer than %d bytes", d->path,
                            transcode_string_bytes_max);
    if (memchr(text, '\0', len) != NULL)
        return decoder_fail(d, "\"%s\" must not contain NUL characters", d->path);
    if (!utf8_valid(text, len))
        return decoder_fail(d, "\"%s\" must be valid UTF-8", d->path);
    char *copy = arena_alloc(d->arena, len + 1);
    if (copy == NULL)
        return decoder_out_of_memory(d);
    memcpy(copy, text, len);
    copy[len] = '\0';
    *out = copy;
    return true;
}

/* Looks up the value named by the 'len' bytes at 'name' in the enum of
 * 'field' and stores its number in '*out'. */
static bool decode_enum_name(decoder_t *d, const ProtobufCFieldDescriptor *field, const char *name,
                             size_t len, int32_t *out)
{
    const ProtobufCEnumDescriptor *desc = field->descriptor;
    const ProtobufCEnumValue *value = NULL;
    if (memchr(name, '\0', len) == NULL)
        value = protobuf_c_enum_descriptor_get_value_by_name(desc, name);
    if (value == NULL) {
        /* Quote the value only as printable ASCII (it came from the
         * client, and the message must stay valid UTF-8 in the JSON). */
        char shown[65];
        size_t n = 0;
        for (; n < len && n + 1 < sizeof shown; n++)
            shown[n] = name[n] >= ' ' && name[n] < 127 && name[n] != '"' ? name[n] : '?';
        shown[n] = '\0';
        return decoder_fail(d, "\"%s\": unknown value \"%s\" for enum %s", d->path, shown,
                            desc->name);
    }
    *out = value->value;
    return true;
}

/* Decodes JSON 'value' as one value of 'field' (one element if it is
 * repeated) into 'slot', which has room for type_value_bytes(). 'depth' is
 * the level of the message that holds the field. JSON null is refused
 * here: only a whole field may be null. */
static bool decode_value(decoder_t *d, const ProtobufCFieldDescriptor *field, const json_t *value,
                         unsigned depth, void *slot)
{
    any_value_t v;
    memset(&v, 0, sizeof v);
    json_int_t number;
    switch (field->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if (!decode_integer(d, value, INT32_MIN, INT32_MAX, field->type, &number))
            return false;
        v.i32 = (int32_t)number;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if (!decode_integer(d, value, 0, UINT32_MAX, field->type, &number))
            return false;
        v.u32 = (uint32_t)number;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        if (!decode_integer(d, value, LLONG_MIN, LLONG_MAX, field->type, &number))
            return false;
        v.i64 = (int64_t)number;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        /* jansson cannot hold more than LLONG_MAX: see transcode.h. */
        if (!decode_integer(d, value, 0, LLONG_MAX, field->type, &number))
            return false;
        v.u64 = (uint64_t)number;
        break;
    case PROTOBUF_C_TYPE_FLOAT: {
        if (!json_is_number(value))
            return decoder_expected(d, "a number");
        double real = json_number_value(value);
        if (real > FLT_MAX || real < -FLT_MAX)
            return decoder_fail(d, "\"%s\" is out of range for float", d->path);
        v.f = (float)real;
        break;
    }
    case PROTOBUF_C_TYPE_DOUBLE:
        if (!json_is_number(value))
            return decoder_expected(d, "a number");
        v.d = json_number_value(value);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(value))
            return decoder_expected(d, "true or false");
        v.b = json_is_true(value);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *desc = field->descriptor;
        if (!json_is_string(value))
            return decoder_fail(d, "\"%s\" must be a string naming a value of enum %s", d->path,
                                desc->name);
        if (!decode_enum_name(d, field, json_string_value(value), json_string_length(value),
                              &v.i32))
            return false;
        break;
    }
    case PROTOBUF_C_TYPE_STRING:
        if (!json_is_string(value))
            return decoder_expected(d, "a string");
        if (!decode_string_bytes(d, json_string_value(value), json_string_length(value), &v.s))
            return false;
        break;
    case PROTOBUF_C_TYPE_BYTES:
        if (!json_is_string(value))
            return decoder_expected(d, "a base64 string");
        if (!base64_decode(d, json_string_value(value), json_string_length(value), &v.bytes))
            return false;
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        if (!json_is_object(value))
            return decoder_expected(d, "an object");
        if (depth >= transcode_depth_levels_max)
            return decoder_fail(d, "\"%s\": nesting too deep (more than %d message levels)",
                                d->path, transcode_depth_levels_max);
        if (!decode_message(d, value, field->descriptor, depth + 1, &v.msg))
            return false;
        break;
    }
    memcpy(slot, &v, type_value_bytes(field->type));
    return true;
}

/* Parses the 'len' bytes at 'text' (NUL-terminated at 'len') as a strict
 * decimal integer: an optional '-', then digits only. Stores the sign in
 * '*negative' and the magnitude in '*magnitude'. Returns 0 on success, 1
 * when it is not such an integer, 2 when the magnitude overflows. */
static int parse_decimal(const char *text, size_t len, bool *negative, uint64_t *magnitude)
{
    size_t i = 0;
    *negative = len > 0 && text[0] == '-';
    if (*negative)
        i++;
    if (i == len)
        return 1;
    uint64_t result = 0;
    bool overflow = false;
    for (; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return 1;
        unsigned digit = (unsigned)(text[i] - '0');
        if (result > (UINT64_MAX - digit) / 10)
            overflow = true;
        else
            result = result * 10 + digit;
    }
    *magnitude = result;
    return overflow ? 2 : 0;
}

/* True when the 'len' bytes at 'text' are a JSON number exactly:
 * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. Keeps strtod() from
 * accepting spaces, hex, "inf" and "nan". */
static bool is_json_number(const char *text, size_t len)
{
    size_t i = 0;
    if (i < len && text[i] == '-')
        i++;
    if (i < len && text[i] == '0') {
        i++;
    } else {
        if (i == len || text[i] < '1' || text[i] > '9')
            return false;
        while (i < len && text[i] >= '0' && text[i] <= '9')
            i++;
    }
    if (i < len && text[i] == '.') {
        i++;
        if (i == len || text[i] < '0' || text[i] > '9')
            return false;
        while (i < len && text[i] >= '0' && text[i] <= '9')
            i++;
    }
    if (i < len && (text[i] == 'e' || text[i] == 'E')) {
        i++;
        if (i < len && (text[i] == '+' || text[i] == '-'))
            i++;
        if (i == len || text[i] < '0' || text[i] > '9')
            return false;
        while (i < len && text[i] >= '0' && text[i] <= '9')
            i++;
    }
    return i == len;
}

/* True when the decimal integer 'text' ('len' bytes, already parsed) is
 * written the one canonical way: no leading zeros, no "-0". */
static bool is_canonical_decimal(const char *text, size_t len)
{
    const char *digits = text[0] == '-' ? text + 1 : text;
    size_t digits_len = len - (size_t)(digits - text);
    if (digits[0] == '0')
        return digits_len == 1 && digits == text;
    return true;
}

/* Parses 'text' ('len' bytes, NUL-terminated at 'len'; a parameter or a
 * map key) as one value of 'field' into 'slot' (type_value_bytes() of
 * room), by the rules of transcode_set_field(). A map key ('is_map_key')
 * must also be a canonical integer, so that two distinct JSON keys ("1",
 * "01") can never become two entries with the same key. */
static bool parse_text(decoder_t *d, const ProtobufCFieldDescriptor *field, const char *text,
                       size_t len, bool is_map_key, void *slot)
{
    assert(text[len] == '\0');
    any_value_t v;
    memset(&v, 0, sizeof v);
    bool negative = false;
    uint64_t magnitude = 0;
    uint64_t max = 0;
    switch (field->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: {
        bool wide = type_value_bytes(field->type) == 8;
        max = wide ? (uint64_t)INT64_MAX : (uint64_t)INT32_MAX;
        int status = parse_decimal(text, len, &negative, &magnitude);
        if (status == 1)
            return decoder_expected(d, "an integer");
        if (status == 2 || magnitude > max + (negative ? 1 : 0))
            return decoder_fail(d, "\"%s\" is out of range for %s", d->path,
                                type_name(field->type));
        if (is_map_key && !is_canonical_decimal(text, len))
            return decoder_fail(d, "\"%s\": a map key must be an integer without leading zeros",
                                d->path);
        /* -magnitude computed in unsigned arithmetic: no signed overflow. */
        uint64_t bits = negative ? 0 - magnitude : magnitude;
        int64_t signed_value;
        memcpy(&signed_value, &bits, sizeof signed_value);
        if (wide)
            v.i64 = signed_value;
        else
            v.i32 = (int32_t)signed_value;
        break;
    }
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        bool wide = type_value_bytes(field->type) == 8;
        max = wide ? UINT64_MAX : UINT32_MAX;
        int status = parse_decimal(text, len, &negative, &magnitude);
        if (status == 1)
            return decoder_expected(d, "an integer");
        if (negative)
            return decoder_fail(d, "\"%s\" must not be negative (%s)", d->path,
                                type_name(field->type));
        if (status == 2 || magnitude > max)
            return decoder_fail(d, "\"%s\" is out of range for %s", d->path,
                                type_name(field->type));
        if (is_map_key && !is_canonical_decimal(text, len))
            return decoder_fail(d, "\"%s\": a map key must be an integer without leading zeros",
                                d->path);
        if (wide)
            v.u64 = magnitude;
        else
            v.u32 = (uint32_t)magnitude;
        break;
    }
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        if (!is_json_number(text, len))
            return decoder_expected(d, "a number");
        /* strtod() reads '.' as the point in the "C" locale, which no
         * paygate process changes. Overflow gives +-HUGE_VAL (refused
         * below); underflow rounds towards 0 like any float. */
        double real = strtod(text, NULL);
        bool is_float = field->type == PROTOBUF_C_TYPE_FLOAT;
        double limit = is_float ? FLT_MAX : DBL_MAX;
        if (real > limit || real < -limit)
            return decoder_fail(d, "\"%s\" is out of range for %s", d->path,
                                type_name(field->type));
        if (is_float)
            v.f = (float)real;
        else
            v.d = real;
        break;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (strcmp(text, "true") == 0)
            v.b = 1;
        else if (strcmp(text, "false") == 0)
            v.b = 0;
        else
            return decoder_expected(d, "true or false");
        break;
    case PROTOBUF_C_TYPE_ENUM:
        if (!decode_enum_name(d, field, text, len, &v.i32))
            return false;
        break;
    case PROTOBUF_C_TYPE_STRING:
        if (!decode_string_bytes(d, text, len, &v.s))
            return false;
        break;
    case PROTOBUF_C_TYPE_BYTES:
        if (len > transcode_string_bytes_max)
            return decoder_fail(d, "\"%s\" is longer than %d bytes", d->path,
                                transcode_string_bytes_max);
        if (len > 0) {
            uint8_t *data = arena_alloc(d->arena, len);
            if (data == NULL)
                return decoder_out_of_memory(d);
            memcpy(data, text, len);
            v.bytes.data = data;
        }
        v.bytes.len = len;
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        return decoder_fail(d, "\"%s\" is a message and cannot be set from text", d->path);
    }
    memcpy(slot, &v, type_value_bytes(field->type));
    return true;
}

/* ---- decoding fields and messages ------------------------------------------- */

/* Decodes JSON array 'value' into repeated (non-map) 'field' of 'msg'. */
static bool decode_repeated(decoder_t *d, ProtobufCMessage *msg,
                            const ProtobufCFieldDescriptor *field, const json_t *value,
                            unsigned depth)
{
    if (!json_is_array(value))
        return decoder_expected(d, "an array");
    size_t count = json_array_size(value);
    if (count > transcode_repeated_elements_max)
        return decoder_fail(d, "\"%s\" has %zu elements, more than the limit of %d", d->path, count,
                            transcode_repeated_elements_max);
    size_t element_bytes = type_value_bytes(field->type);
    char *array = NULL;
    if (count > 0) {
        array = arena_alloc(d->arena, count * element_bytes);
        if (array == NULL)
            return decoder_out_of_memory(d);
    }
    for (size_t i = 0; i < count; i++) {
        size_t saved = path_push(d, "[%zu]", i);
        if (!decode_value(d, field, json_array_get(value, i), depth, array + i * element_bytes))
            return false;
        path_pop(d, saved);
    }
    repeated_store(msg, field, array, count);
    return true;
}

/* Decodes JSON object 'value' into map 'field' of 'msg': one entry message
 * per member, the key parsed from its name like a parameter, the value
 * decoded like an element (null is refused). */
static bool decode_map(decoder_t *d, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field,
                       const json_t *value, unsigned depth)
{
    if (!json_is_object(value))
        return decoder_expected(d, "an object");
    size_t count = json_object_size(value);
    if (count > transcode_repeated_elements_max)
        return decoder_fail(d, "\"%s\" has %zu entries, more than the limit of %d", d->path, count,
                            transcode_repeated_elements_max);
    const ProtobufCMessageDescriptor *entry_desc = field->descriptor;
    const ProtobufCFieldDescriptor *key_field =
        protobuf_c_message_descriptor_get_field(entry_desc, 1);
    const ProtobufCFieldDescriptor *value_field =
        protobuf_c_message_descriptor_get_field(entry_desc, 2);
    assert(key_field != NULL && value_field != NULL); /* field_is_map() checked */
    ProtobufCMessage **entries = NULL;
    if (count > 0) {
        entries = arena_alloc(d->arena, count * sizeof *entries);
        if (entries == NULL)
            return decoder_out_of_memory(d);
    }
    json_t *object = (json_t *)value; /* jansson's iterators are not const; only read */
    size_t i = 0;
    for (void *it = json_object_iter(object); it != NULL; it = json_object_iter_next(object, it)) {
        assert(i < count);
        const char *key = json_object_iter_key(it);
        size_t key_len = json_object_iter_key_len(it);
        int shown = key_len < path_bytes_max ? (int)key_len : path_bytes_max;
        size_t saved = path_push(d, "[\"%.*s\"]", shown, key);
        ProtobufCMessage *entry = arena_alloc(d->arena, entry_desc->sizeof_message);
        if (entry == NULL)
            return decoder_out_of_memory(d);
        protobuf_c_message_init(entry_desc, entry);
        if (!parse_text(d, key_field, key, key_len, true, member_at(entry, key_field->offset)))
            return false;
        field_mark_present(entry, key_field);
        if (!decode_value(d, value_field, json_object_iter_value(it), depth,
                          member_at(entry, value_field->offset)))
            return false;
        field_mark_present(entry, value_field);
        entries[i++] = entry;
        path_pop(d, saved);
    }
    assert(i == count);
    repeated_store(msg, field, entries, count);
    return true;
}

/* Decodes JSON 'value' into 'field' of 'msg' (at message level 'depth').
 * null leaves the field at its default. A second member of a oneof that
 * already has one set is refused rather than silently replacing it. */
static bool decode_field(decoder_t *d, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field,
                         const json_t *value, unsigned depth)
{
    if (json_is_null(value))
        return true;
    if (field->label == PROTOBUF_C_LABEL_REPEATED)
        return field_is_map(field) ? decode_map(d, msg, field, value, depth)
                                   : decode_repeated(d, msg, field, value, depth);
    if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t set_id = oneof_case(msg, field);
        if (set_id != 0 && set_id != field->id) {
            const ProtobufCFieldDescriptor *other =
                protobuf_c_message_descriptor_get_field(msg->descriptor, set_id);
            return decoder_fail(d, "\"%s\" and \"%s\" are in the same oneof: set only one", d->path,
                                other != NULL ? other->name : "?");
        }
    }
    if (!decode_value(d, field, value, depth, member_at(msg, field->offset)))
        return false;
    field_mark_present(msg, field);
    return true;
}

/* Decodes JSON object 'json' into a new arena message of type 'desc' at
 * '*out'. 'depth' is its nesting level (the top-level message is 1; the
 * caller checked the limit). Every member must name a field; every proto2
 * required field must be present and not null. */
static bool decode_message(decoder_t *d, const json_t *json, const ProtobufCMessageDescriptor *desc,
                           unsigned depth, ProtobufCMessage **out)
{
    assert(json_is_object(json));
    assert(desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    assert(depth <= transcode_depth_levels_max);
    ProtobufCMessage *msg = arena_alloc(d->arena, desc->sizeof_message);
    if (msg == NULL)
        return decoder_out_of_memory(d);
    protobuf_c_message_init(desc, msg);
    json_t *object = (json_t *)json; /* jansson's iterators are not const; only read */
    for (void *it = json_object_iter(object); it != NULL; it = json_object_iter_next(object, it)) {
        const char *key = json_object_iter_key(it);
        size_t key_len = json_object_iter_key_len(it);
        size_t saved = path_push_name(d, key, key_len);
        const ProtobufCFieldDescriptor *field = NULL;
        if (memchr(key, '\0', key_len) == NULL) /* "a\u0000b" must not match "a" */
            field = protobuf_c_message_descriptor_get_field_by_name(desc, key);
        if (field == NULL)
            return decoder_fail(d, "unknown field \"%s\"", d->path);
        if (!decode_field(d, msg, field, json_object_iter_value(it), depth))
            return false;
        path_pop(d, saved);
    }
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *field = &desc->fields[i];
        if (field->label != PROTOBUF_C_LABEL_REQUIRED)
            continue;
        const json_t *value = json_object_get(json, field->name);
        if (value == NULL || json_is_null(value)) {
            path_push_name(d, field->name, strlen(field->name));
            return decoder_fail(d, "missing required field \"%s\"", d->path);
        }
    }
    *out = msg;
    return true;
}

/* ---- encoding --------------------------------------------------------------- */

/* 'text' as a new JSON string, or NULL on OOM. NULL 'text' is "" (how
 * protobuf-c treats it); bytes that are not UTF-8 become U+FFFD, because
 * jansson refuses them and one bad string must not fail a whole reply. */
static json_t *encode_string(const char *text)
{
    if (text == NULL)
        return json_string_nocheck("");
    size_t len = strlen(text);
    if (utf8_valid(text, len))
        return json_stringn_nocheck(text, len);
    char *clean = malloc(len * 3 + 1); /* each bad byte becomes 3 */
    if (clean == NULL)
        return NULL;
    const unsigned char *s = (const unsigned char *)text;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence_bytes(s + i, len - i);
        if (n == 0) {
            memcpy(clean + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(clean + o, s + i, n);
            o += n;
            i += n;
        }
    }
    json_t *json = json_stringn_nocheck(clean, o);
    free(clean);
    return json;
}

/* The float or double 'real' as JSON: a number when finite, else the
 * string "NaN", "Infinity" or "-Infinity" (jansson has no such numbers).
 * NULL on OOM. */
static json_t *encode_real(double real)
{
    if (isnan(real))
        return json_string_nocheck("NaN");
    if (isinf(real))
        return json_string_nocheck(real > 0 ? "Infinity" : "-Infinity");
    return json_real(real);
}

/* A uint64 'number' as JSON: a number up to INT64_MAX, above that (which
 * jansson cannot hold) its decimal string. NULL on OOM. */
static json_t *encode_uint64(uint64_t number)
{
    if (number <= (uint64_t)INT64_MAX)
        return json_integer((json_int_t)number);
    char text[24];
    snprintf(text, sizeof text, "%" PRIu64, number);
    return json_string_nocheck(text);
}

static json_t *encode_message(const ProtobufCMessage *msg);

/* One value of 'field' stored at 'slot' (type_value_bytes() of it) as new
 * JSON, or NULL on OOM. */
static json_t *encode_value(const ProtobufCFieldDescriptor *field, const void *slot)
{
    any_value_t v;
    memset(&v, 0, sizeof v);
    memcpy(&v, slot, type_value_bytes(field->type));
    switch (field->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(v.i32);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(v.u32);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return json_integer(v.i64);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return encode_uint64(v.u64);
    case PROTOBUF_C_TYPE_FLOAT:
        return encode_real(v.f);
    case PROTOBUF_C_TYPE_DOUBLE:
        return encode_real(v.d);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(v.b);
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *named =
            protobuf_c_enum_descriptor_get_value(field->descriptor, v.i32);
        return named != NULL ? json_string_nocheck(named->name) : json_integer(v.i32);
    }
    case PROTOBUF_C_TYPE_STRING:
        return encode_string(v.s);
    case PROTOBUF_C_TYPE_BYTES:
        return base64_encode(v.bytes.data, v.bytes.data != NULL ? v.bytes.len : 0);
    case PROTOBUF_C_TYPE_MESSAGE:
        return v.msg != NULL ? encode_message(v.msg) : json_null();
    }
    return NULL;
}

/* The map key of 'entry' ('key_field' of it) as text in 'buffer' of
 * 'buffer_bytes' (room for any integer) unless it is a string, which is
 * returned as is. */
static const char *encode_map_key(const ProtobufCMessage *entry,
                                  const ProtobufCFieldDescriptor *key_field, char *buffer,
                                  size_t buffer_bytes)
{
    any_value_t v;
    memset(&v, 0, sizeof v);
    memcpy(&v, member_at_const(entry, key_field->offset), type_value_bytes(key_field->type));
    switch (key_field->type) {
    case PROTOBUF_C_TYPE_STRING:
        return v.s != NULL ? v.s : "";
    case PROTOBUF_C_TYPE_BOOL:
        return v.b ? "true" : "false";
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        snprintf(buffer, buffer_bytes, "%" PRIu32, v.u32);
        return buffer;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        snprintf(buffer, buffer_bytes, "%" PRIu64, v.u64);
        return buffer;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        snprintf(buffer, buffer_bytes, "%" PRId64, v.i64);
        return buffer;
    default:
        snprintf(buffer, buffer_bytes, "%" PRId32, v.i32);
        return buffer;
    }
}

/* Map 'field' of 'msg' as a new JSON object, or NULL on OOM. Entries with
 * the same key: the last wins, as in protobuf. */
static json_t *encode_map(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field)
{
    const ProtobufCMessageDescriptor *entry_desc = field->descriptor;
    const ProtobufCFieldDescriptor *key_field =
        protobuf_c_message_descriptor_get_field(entry_desc, 1);
    const ProtobufCFieldDescriptor *value_field =
        protobuf_c_message_descriptor_get_field(entry_desc, 2);
    json_t *object = json_object();
    if (object == NULL)
        return NULL;
    size_t count = repeated_count(msg, field);
    ProtobufCMessage *const *entries = pointer_member(msg, field);
    for (size_t i = 0; i < count; i++) {
        const ProtobufCMessage *entry = entries[i];
        if (entry == NULL)
            continue;
        char number[32];
        json_t *key = encode_string(encode_map_key(entry, key_field, number, sizeof number));
        json_t *value = encode_value(value_field, member_at_const(entry, value_field->offset));
        int status = -1;
        if (key != NULL)
            status = json_object_setn_new_nocheck(object, json_string_value(key),
                                                  json_string_length(key), value);
        else
            json_decref(value);
        json_decref(key);
        if (status != 0) {
            json_decref(object);
            return NULL;
        }
    }
    return object;
}

/* Field 'field' of 'msg' as new JSON (an array when repeated, an object
 * when a map), or NULL on OOM. */
static json_t *encode_field(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field)
{
    if (field->label != PROTOBUF_C_LABEL_REPEATED)
        return encode_value(field, member_at_const(msg, field->offset));
    if (field_is_map(field))
        return encode_map(msg, field);
    json_t *array = json_array();
    if (array == NULL)
        return NULL;
    size_t count = repeated_count(msg, field);
    const char *elements = pointer_member(msg, field);
    size_t element_bytes = type_value_bytes(field->type);
    for (size_t i = 0; i < count; i++) {
        if (json_array_append_new(array, encode_value(field, elements + i * element_bytes)) != 0) {
            json_decref(array);
            return NULL;
        }
    }
    return array;
}

/* 'msg' as a new JSON object with every present field, in field-number
 * order, or NULL on OOM. */
static json_t *encode_message(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    assert(desc != NULL && desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    json_t *object = json_object();
    if (object == NULL)
        return NULL;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *field = &desc->fields[i];
        if (!field_is_present(msg, field))
            continue;
        /* json_object_set_new() takes the value, even NULL, and fails. */
        if (json_object_set_new_nocheck(object, field->name, encode_field(msg, field)) != 0) {
            json_decref(object);
            return NULL;
        }
    }
    return object;
}

/* ---- the API ---------------------------------------------------------------- */

ProtobufCMessage *transcode_from_json(const json_t *json, const ProtobufCMessageDescriptor *desc,
                                      arena_t *arena, transcode_error_t *error)
{
    assert(desc != NULL && arena != NULL && error != NULL);
    assert(desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    error_clear(error);
    decoder_t d = {.arena = arena, .error = error, .path = "", .path_len = 0};
    if (!json_is_object(json)) {
        decoder_fail(&d, "the body must be a JSON object");
        return NULL;
    }
    ProtobufCMessage *msg = NULL;
    if (!decode_message(&d, json, desc, 1, &msg))
        return NULL;
    return msg;
}

bool transcode_set_field(ProtobufCMessage *msg, const char *name, const char *text, arena_t *arena,
                         transcode_error_t *error)
{
    assert(msg != NULL && name != NULL && text != NULL && arena != NULL && error != NULL);
    error_clear(error);
    decoder_t d = {.arena = arena, .error = error, .path = "", .path_len = 0};
    path_push_name(&d, name, strlen(name));
    const ProtobufCFieldDescriptor *field =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
    if (field == NULL)
        return decoder_fail(&d, "unknown field \"%s\"", d.path);
    if (field->type == PROTOBUF_C_TYPE_MESSAGE)
        return decoder_fail(&d, "\"%s\" is a %s field and cannot be set from text", d.path,
                            field_is_map(field) ? "map" : "message");
    any_value_t v;
    if (!parse_text(&d, field, text, strlen(text), false, &v))
        return false;
    size_t element_bytes = type_value_bytes(field->type);
    if (field->label != PROTOBUF_C_LABEL_REPEATED) {
        memcpy(member_at(msg, field->offset), &v, element_bytes);
        field_mark_present(msg, field);
        return true;
    }
    size_t count = repeated_count(msg, field);
    if (count >= transcode_repeated_elements_max)
        return decoder_fail(&d, "\"%s\" has more than the limit of %d elements", d.path,
                            transcode_repeated_elements_max);
    char *array = arena_alloc(arena, (count + 1) * element_bytes);
    if (array == NULL)
        return decoder_out_of_memory(&d);
    if (count > 0)
        memcpy(array, pointer_member(msg, field), count * element_bytes);
    memcpy(array + count * element_bytes, &v, element_bytes);
    repeated_store(msg, field, array, count + 1);
    return true;
}

json_t *transcode_to_json(const ProtobufCMessage *msg)
{
    assert(msg != NULL);
    return encode_message(msg);
}
