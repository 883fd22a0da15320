/*
 * test_transcode_fuzz_regressions: inputs that fuzz/fuzz_transcode found,
 * kept as unit tests of lib/json/transcode.c.
 *
 * The finding: a transcode_error_t message is not always valid UTF-8. The
 * gateway puts error.message into its JSON error body with json_string(),
 * which returns NULL for invalid UTF-8, so the body then has no "message"
 * at all. transcode.c trims its messages to whole UTF-8 sequences where
 * it cuts them (utf8_trim_partial), except in decode_enum_name(), which
 * quotes the unknown enum value as "%.*s" of at most 64 bytes:
 *   - a value longer than 64 bytes is cut in the middle of a multi-byte
 *     character (from a JSON body);
 *   - a value from text (transcode_set_field: a path, query or header
 *     parameter) is quoted as is, and need not be UTF-8 at all.
 * No request message of routes_v1 has an enum field today, so no HTTP
 * request reaches it yet; the first route with one will.
 *
 * The inputs are in fuzz/corpus/transcode/ (regress_enum_*).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "arena/arena.h"
#include "json/transcode.h"
#include "transcode_test.pb-c.h"

/* True when 'text' (NUL-terminated) is valid UTF-8: no stray continuation
 * bytes, no truncated sequences, no overlong forms or surrogates. */
static bool utf8_valid(const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    while (*s != '\0') {
        size_t n;
        uint32_t code;
        if (*s < 0x80) {
            s++;
            continue;
        } else if (*s >= 0xC2 && *s <= 0xDF) {
            n = 2, code = *s & 0x1Fu;
        } else if (*s >= 0xE0 && *s <= 0xEF) {
            n = 3, code = *s & 0x0Fu;
        } else if (*s >= 0xF0 && *s <= 0xF4) {
            n = 4, code = *s & 0x07u;
        } else {
            return false;
        }
        for (size_t k = 1; k < n; k++) {
            if ((s[k] & 0xC0) != 0x80)
                return false;
            code = code << 6 | (s[k] & 0x3Fu);
        }
        if ((n == 3 && code < 0x800) || (n == 4 && (code < 0x10000 || code > 0x10FFFF)) ||
            (code >= 0xD800 && code <= 0xDFFF))
            return false;
        s += n;
    }
    return true;
}

static int arena_setup(void **state)
{
    *state = arena_new(64 * 1024);
    return *state == NULL ? -1 : 0;
}

static int arena_teardown(void **state)
{
    arena_t *arena = *state;
    arena_destroy(&arena);
    return 0;
}

/* An enum value of 1 + 40 two-byte characters: the quote is cut at byte
 * 64, inside the 32nd "é". */
static void test_long_enum_value_from_json(void **state)
{
    arena_t *arena = *state;
    char body[256] = "{\"colour\":\"a";
    for (int i = 0; i < 40; i++)
        strcat(body, "\xc3\xa9");
    strcat(body, "\"}");
    json_error_t parse_error;
    json_t *json = json_loads(body, JSON_REJECT_DUPLICATES, &parse_error);
    assert_non_null(json);
    transcode_error_t error;
    ProtobufCMessage *msg =
        transcode_from_json(json, &paygate__test__all_types__descriptor, arena, &error);
    json_decref(json);
    assert_null(msg);
    assert_string_equal(error.field, "colour");
    if (!utf8_valid(error.message))
        print_error("error.message is not UTF-8: %s\n", error.message);
    assert_true(utf8_valid(error.message));
}

/* fuzz_transcode's minimised input: the parameter "\x9e" (not UTF-8) set
 * on an enum field, as a query parameter would be. */
static void test_enum_value_from_text_not_utf8(void **state)
{
    arena_t *arena = *state;
    json_t *empty = json_object();
    transcode_error_t error;
    ProtobufCMessage *msg =
        transcode_from_json(empty, &paygate__test__all_types__descriptor, arena, &error);
    json_decref(empty);
    assert_non_null(msg);
    assert_false(transcode_set_field(msg, "colour", "\x9e", arena, &error));
    assert_string_equal(error.field, "colour");
    assert_true(utf8_valid(error.message));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_long_enum_value_from_json, arena_setup,
                                        arena_teardown),
        cmocka_unit_test_setup_teardown(test_enum_value_from_text_not_utf8, arena_setup,
                                        arena_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
