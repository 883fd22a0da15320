/*
 * Unit tests of lib/log: the JSON line format, escaping of every string,
 * truncation that keeps a line valid JSON, the per-thread request id and
 * instance, levels, and the text format.
 *
 * Lines are captured through a pipe (log_set_fd) and parsed with jansson,
 * which refuses invalid JSON and invalid UTF-8: a line that parses is one
 * a log shipper can read.
 */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "log/log.h"
#include "text/utf8.h"

enum { capture_bytes_max = 64 * 1024 };

static int pipe_fds[2] = {-1, -1};
static char captured[capture_bytes_max + 1];
static size_t captured_len;

/* Reads everything written to the pipe since the last call. */
static const char *capture(void)
{
    captured_len = 0;
    for (;;) {
        ssize_t n = read(pipe_fds[0], captured + captured_len, capture_bytes_max - captured_len);
        if (n <= 0)
            break;
        captured_len += (size_t)n;
    }
    captured[captured_len] = '\0';
    return captured;
}

/* Checks that exactly one line was written (ends with its only newline,
 * holds no other control byte) and parses it; fails the test otherwise. */
static json_t *one_json_line(void)
{
    capture();
    if (captured_len == 0)
        fail_msg("no line was written");
    assert_true(captured_len <= log_line_bytes_max);
    assert_int_equal(captured[captured_len - 1], '\n');
    for (size_t i = 0; i + 1 < captured_len; i++) {
        unsigned char c = (unsigned char)captured[i];
        if (c < 0x20 || c == 0x7f)
            fail_msg("raw control byte 0x%02x at %zu in: %s", c, i, captured);
    }
    json_error_t error;
    json_t *line = json_loadb(captured, captured_len - 1, JSON_REJECT_DUPLICATES, &error);
    if (line == NULL)
        fail_msg("not JSON (%s at %d): %s", error.text, error.position, captured);
    assert_true(json_is_object(line));
    return line;
}

static const char *text_of(json_t *object, const char *key)
{
    json_t *value = json_object_get(object, key);
    if (!json_is_string(value))
        fail_msg("\"%s\" is not a string in %s", key, captured);
    return json_string_value(value);
}

static int setup(void **state)
{
    (void)state;
    if (pipe(pipe_fds) != 0)
        return -1;
    fcntl(pipe_fds[0], F_SETFL, O_NONBLOCK);
    unsetenv("PAYGATE_LOG_LEVEL");
    unsetenv("PAYGATE_LOG_FORMAT");
    if (!log_init("unit-log"))
        return -1;
    log_set_fd(pipe_fds[1]);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    log_set_fd(-1);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return 0;
}

/* Each test starts from the defaults: json, info, no request id. */
static int reset(void **state)
{
    (void)state;
    unsetenv("PAYGATE_LOG_LEVEL");
    unsetenv("PAYGATE_LOG_FORMAT");
    assert_true(log_init("unit-log"));
    log_set_thread_instance(NULL);
    log_set_request_id(NULL);
    capture();
    return 0;
}

/* ---- the line --------------------------------------------------------- */

static void test_line_has_the_keys(void **state)
{
    (void)state;
    log_info("hello %s %d", "world", 42);
    json_t *line = one_json_line();
    const char *time_text = text_of(line, "time");
    /* RFC 3339, UTC, milliseconds: 2026-11-27T12:00:00.123Z */
    assert_int_equal(strlen(time_text), 24);
    int year, month, day, hour, minute, second, millis;
    char zone = 0;
    assert_int_equal(sscanf(time_text, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &year, &month, &day, &hour,
                            &minute, &second, &millis, &zone),
                     8);
    assert_true(year >= 2024 && month >= 1 && month <= 12 && day >= 1 && day <= 31);
    assert_true(hour < 24 && minute < 60 && second < 61 && millis < 1000);
    assert_int_equal(zone, 'Z');
    assert_string_equal(text_of(line, "level"), "info");
    assert_string_equal(text_of(line, "process"), "unit-log");
    assert_int_equal(json_integer_value(json_object_get(line, "pid")), getpid());
    char host[64] = "host"; /* as lib/rpc names instances */
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    char instance[160];
    snprintf(instance, sizeof instance, "unit-log-%.40s-%d", host, (int)getpid());
    assert_string_equal(text_of(line, "instance"), instance);
    assert_string_equal(text_of(line, "message"), "hello world 42");
    /* absent when there is none */
    assert_null(json_object_get(line, "request_id"));
    assert_null(json_object_get(line, "fields"));
    assert_null(json_object_get(line, "truncated"));
    json_decref(line);

    const char *levels[] = {"debug", "info", "warn", "error"};
    setenv("PAYGATE_LOG_LEVEL", "debug", 1);
    assert_true(log_init("unit-log"));
    for (int level = LOG_LEVEL_DEBUG; level <= LOG_LEVEL_ERROR; level++) {
        log_write((log_level_t)level, "at %d", level);
        line = one_json_line();
        assert_string_equal(text_of(line, "level"), levels[level]);
        json_decref(line);
    }
}

static void test_levels_filter_and_bad_settings_fail(void **state)
{
    (void)state;
    setenv("PAYGATE_LOG_LEVEL", "WARN", 1);
    assert_true(log_init("unit-log"));
    assert_false(log_enabled(LOG_LEVEL_INFO));
    assert_true(log_enabled(LOG_LEVEL_WARN));
    log_info("not shown");
    log_debug("not shown");
    assert_int_equal(strlen(capture()), 0);
    log_error("shown");
    json_t *line = one_json_line();
    assert_string_equal(text_of(line, "message"), "shown");
    json_decref(line);

    setenv("PAYGATE_LOG_LEVEL", "loud", 1);
    assert_false(log_init("unit-log"));
    line = one_json_line(); /* the refusal itself is a line */
    assert_string_equal(text_of(line, "level"), "error");
    assert_non_null(strstr(text_of(line, "message"), "PAYGATE_LOG_LEVEL"));
    json_decref(line);
    unsetenv("PAYGATE_LOG_LEVEL");

    setenv("PAYGATE_LOG_FORMAT", "xml", 1);
    assert_false(log_init("unit-log"));
    line = one_json_line();
    assert_non_null(strstr(text_of(line, "message"), "PAYGATE_LOG_FORMAT"));
    json_decref(line);
    setenv("PAYGATE_LOG_FORMAT", "JSON", 1);
    assert_true(log_init("unit-log"));
}

/* ---- escaping ----------------------------------------------------------- */

/* Logs 'input' as the message and as a string field; both must come back
 * as 'expected' after JSON decoding. */
static void expect_round_trip(const char *input, const char *expected)
{
    log_write_fields(LOG_LEVEL_INFO, LOG_FIELDS(LOG_STR("value", input)), "%s", input);
    json_t *line = one_json_line();
    if (strcmp(text_of(line, "message"), expected) != 0)
        fail_msg("message of \"%s\" decoded to \"%s\", expected \"%s\"", input,
                 text_of(line, "message"), expected);
    assert_string_equal(text_of(json_object_get(line, "fields"), "value"), expected);
    assert_null(json_object_get(line, "truncated"));
    json_decref(line);
}

static void test_escaping_of_every_string(void **state)
{
    (void)state;
    expect_round_trip("plain", "plain");
    expect_round_trip("say \"hi\" \\ back\\slash /", "say \"hi\" \\ back\\slash /");
    expect_round_trip("line1\nline2\r\ttab\b\f", "line1\nline2\r\ttab\b\f");
    expect_round_trip("bell\x01\x1f del\x7f", "bell\x01\x1f del\x7f");
    /* C1 control U+0085, line and paragraph separators: escaped, intact */
    expect_round_trip("c1 \xc2\x85 ls \xe2\x80\xa8 ps \xe2\x80\xa9",
                      "c1 \xc2\x85 ls \xe2\x80\xa8 ps \xe2\x80\xa9");
    /* valid UTF-8 stays as it is: rupee sign, Devanagari, an emoji */
    expect_round_trip("\xe2\x82\xb9 500 \xe0\xa4\xa8\xe0\xa4\xae \xf0\x9f\x92\xb8",
                      "\xe2\x82\xb9 500 \xe0\xa4\xa8\xe0\xa4\xae \xf0\x9f\x92\xb8");
    /* invalid UTF-8: each bad byte becomes U+FFFD */
    expect_round_trip("a\xff"
                      "b",
                      "a\xef\xbf\xbd"
                      "b");
    expect_round_trip("lone \x80 cont", "lone \xef\xbf\xbd cont");
    expect_round_trip("cut \xe2\x82", "cut \xef\xbf\xbd\xef\xbf\xbd");
    expect_round_trip("overlong \xc0\xaf", "overlong \xef\xbf\xbd\xef\xbf\xbd");
    expect_round_trip("surrogate \xed\xa0\x80", "surrogate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    expect_round_trip("past max \xf4\x90\x80\x80",
                      "past max \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");

    /* the escapes are the short JSON ones where JSON has them */
    log_info("q\"b\\n\nt\tc\x01");
    capture();
    assert_non_null(strstr(captured, "\"message\":\"q\\\"b\\\\n\\nt\\tc\\u0001\""));

    /* the head's strings are escaped too */
    log_set_thread_instance("inst\"ance\n");
    log_set_request_id("req\"1");
    log_info("x");
    json_t *line = one_json_line();
    assert_string_equal(text_of(line, "instance"), "inst\"ance\n");
    assert_string_equal(text_of(line, "request_id"), "req\"1");
    json_decref(line);
}

/* Random bytes anywhere: every line is one valid JSON object, and valid
 * UTF-8 without controls comes back byte for byte. */
static void test_random_bytes_always_give_valid_json(void **state)
{
    (void)state;
    srand(20261127);
    char input[300];
    for (int round = 0; round < 10000; round++) {
        size_t len = (size_t)(rand() % (int)(sizeof input - 1));
        for (size_t i = 0; i < len; i++) {
            int pick = rand() % 4;
            int byte = pick == 0   ? rand() % 256
                       : pick == 1 ? 0x80 + rand() % 64 /* continuation bytes */
                                   : 0x20 + rand() % 95;
            input[i] = (char)(unsigned char)byte;
            if (input[i] == '\0')
                input[i] = '?';
        }
        input[len] = '\0';
        log_write_fields(LOG_LEVEL_WARN, LOG_FIELDS(LOG_STR(input, input), LOG_INT("round", round)),
                         "%s", input);
        json_t *line = one_json_line();
        if (utf8_chars(input, true) >= 0) {
            assert_string_equal(text_of(line, "message"), input);
            assert_string_equal(text_of(json_object_get(line, "fields"), input), input);
        }
        json_decref(line);
    }
}

/* ---- fields -------------------------------------------------------------- */

static void test_fields_of_every_type(void **state)
{
    (void)state;
    log_write_fields(LOG_LEVEL_INFO,
                     LOG_FIELDS(LOG_STR("method", "POST"), LOG_STR("nothing", NULL),
                                LOG_INT("status", 201), LOG_INT("big", INT64_MIN),
                                LOG_DOUBLE("duration_ms", 12.3456), LOG_DOUBLE("nan", NAN),
                                LOG_BOOL("completed", true), LOG_BOOL("cached", false)),
                     "request done");
    json_t *line = one_json_line();
    assert_string_equal(text_of(line, "message"), "request done");
    json_t *fields = json_object_get(line, "fields");
    assert_true(json_is_object(fields));
    assert_int_equal(json_object_size(fields), 8);
    assert_string_equal(text_of(fields, "method"), "POST");
    assert_true(json_is_null(json_object_get(fields, "nothing")));
    assert_int_equal(json_integer_value(json_object_get(fields, "status")), 201);
    assert_true(json_integer_value(json_object_get(fields, "big")) == INT64_MIN);
    double duration = json_number_value(json_object_get(fields, "duration_ms"));
    assert_true(duration > 12.345 && duration < 12.347);
    assert_true(json_is_null(json_object_get(fields, "nan")));
    assert_true(json_is_true(json_object_get(fields, "completed")));
    assert_true(json_is_false(json_object_get(fields, "cached")));
    json_decref(line);
}

/* ---- limits ---------------------------------------------------------------- */

static void test_long_message_is_cut_whole_characters(void **state)
{
    (void)state;
    /* every character doubles when escaped: the line fills up first */
    char quotes[log_message_bytes_max];
    memset(quotes, '"', sizeof quotes - 1);
    quotes[sizeof quotes - 1] = '\0';
    log_info("%s", quotes);
    json_t *line = one_json_line();
    const char *message = text_of(line, "message");
    assert_true(strlen(message) > 1500);
    assert_true(strlen(message) < sizeof quotes - 1);
    assert_int_equal(strspn(message, "\""), strlen(message));
    assert_true(json_is_true(json_object_get(line, "truncated")));
    json_decref(line);

    /* cut by the message limit in the middle of a 3-byte character */
    char rupees[3 * log_message_bytes_max];
    size_t n = 0;
    rupees[n++] = 'x';
    rupees[n++] = 'y'; /* 2 + 3k bytes: the 2047-byte cut falls inside a rupee sign */
    while (n + 3 < sizeof rupees) {
        memcpy(rupees + n, "\xe2\x82\xb9", 3);
        n += 3;
    }
    rupees[n] = '\0';
    log_info("%s", rupees);
    line = one_json_line();
    message = text_of(line, "message");
    assert_int_equal(strlen(message) % 3, 2); /* "xy" + whole rupee signs, no U+FFFD */
    assert_null(strstr(message, "\xef\xbf\xbd"));
    assert_true(strlen(message) > log_message_bytes_max - 4);
    assert_true(json_is_true(json_object_get(line, "truncated")));
    json_decref(line);
}

static void test_fields_beyond_the_limits(void **state)
{
    (void)state;
    /* a string field is cut at log_field_text_bytes_max */
    char long_value[3000];
    memset(long_value, 'v', sizeof long_value - 1);
    long_value[sizeof long_value - 1] = '\0';
    log_write_fields(LOG_LEVEL_INFO, LOG_FIELDS(LOG_STR("long", long_value), LOG_INT("after", 7)),
                     "m");
    json_t *line = one_json_line();
    json_t *fields = json_object_get(line, "fields");
    assert_int_equal(strlen(text_of(fields, "long")), log_field_text_bytes_max);
    assert_int_equal(json_integer_value(json_object_get(fields, "after")), 7);
    assert_true(json_is_true(json_object_get(line, "truncated")));
    json_decref(line);

    /* more than log_fields_max fields: the first ones are kept */
    log_field_t many[log_fields_max + 4];
    char keys[log_fields_max + 4][8];
    for (size_t i = 0; i < log_fields_max + 4; i++) {
        snprintf(keys[i], sizeof keys[i], "k%zu", i);
        many[i] = LOG_INT(keys[i], i);
    }
    log_write_fields(LOG_LEVEL_INFO, many, log_fields_max + 4, "many");
    line = one_json_line();
    fields = json_object_get(line, "fields");
    assert_int_equal(json_object_size(fields), log_fields_max);
    assert_non_null(json_object_get(fields, "k0"));
    assert_null(json_object_get(fields, "k16"));
    assert_true(json_is_true(json_object_get(line, "truncated")));
    json_decref(line);

    /* fields that no longer fit are left out whole; the line stays JSON */
    char controls[501];
    memset(controls, '\x01', sizeof controls - 1); /* 6 bytes each escaped: 3000 */
    controls[sizeof controls - 1] = '\0';
    log_write_fields(LOG_LEVEL_INFO,
                     LOG_FIELDS(LOG_STR("a", controls), LOG_STR("b", controls),
                                LOG_STR("c", controls), LOG_INT("small", 1)),
                     "%s", "big fields");
    line = one_json_line();
    fields = json_object_get(line, "fields");
    assert_int_equal(strlen(text_of(fields, "a")), 500);
    assert_null(json_object_get(fields, "b")); /* a second 3000 bytes do not fit */
    assert_null(json_object_get(fields, "c"));
    assert_int_equal(json_integer_value(json_object_get(fields, "small")), 1);
    assert_true(json_is_true(json_object_get(line, "truncated")));
    json_decref(line);
}

/* ---- per-thread context --------------------------------------------------- */

static void *other_thread(void *arg)
{
    (void)arg;
    log_info("from the other thread");
    log_set_request_id("req_other");
    log_set_thread_instance("worker-7");
    log_info("other with its own");
    return NULL;
}

static void test_request_id_and_instance_are_per_thread(void **state)
{
    (void)state;
    log_set_instance("payment-pod-1");
    log_set_request_id("req_main");
    log_info("main");
    json_t *line = one_json_line();
    assert_string_equal(text_of(line, "request_id"), "req_main");
    assert_string_equal(text_of(line, "instance"), "payment-pod-1");
    assert_string_equal(log_request_id(), "req_main");
    json_decref(line);

    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, other_thread, NULL), 0);
    pthread_join(thread, NULL);
    capture();
    char *second = strchr(captured, '\n');
    assert_non_null(second);
    *second++ = '\0';
    json_t *first_line = json_loads(captured, 0, NULL);
    json_t *second_line = json_loadb(second, strlen(second) - 1, 0, NULL);
    assert_non_null(first_line);
    assert_non_null(second_line);
    assert_null(json_object_get(first_line, "request_id")); /* not the main thread's */
    assert_string_equal(text_of(first_line, "instance"), "payment-pod-1");
    assert_string_equal(text_of(second_line, "request_id"), "req_other");
    assert_string_equal(text_of(second_line, "instance"), "worker-7");
    json_decref(first_line);
    json_decref(second_line);

    /* the main thread is untouched; clearing removes the key */
    log_info("main again");
    line = one_json_line();
    assert_string_equal(text_of(line, "request_id"), "req_main");
    assert_string_equal(text_of(line, "instance"), "payment-pod-1");
    json_decref(line);
    log_set_request_id("");
    log_info("cleared");
    line = one_json_line();
    assert_null(json_object_get(line, "request_id"));
    assert_string_equal(log_request_id(), "");
    json_decref(line);

    /* an id over the limit is cut, never overflows */
    char long_id[200];
    memset(long_id, 'r', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    log_set_request_id(long_id);
    assert_int_equal(strlen(log_request_id()), log_request_id_bytes_max);
    log_set_request_id(NULL);
}

/* ---- text format ----------------------------------------------------------- */

static void test_text_format(void **state)
{
    (void)state;
    setenv("PAYGATE_LOG_FORMAT", "text", 1);
    assert_true(log_init("unit-log"));
    log_set_request_id("req_text");
    log_write_fields(LOG_LEVEL_WARN,
                     LOG_FIELDS(LOG_STR("route", "/v1/orders"), LOG_INT("status", 404)),
                     "two\nlines \"quoted\"");
    capture();
    char expected_tail[128];
    snprintf(expected_tail, sizeof expected_tail,
             "Z WARN  unit-log[%d] [req_text] two\\nlines \"quoted\" route=/v1/orders status=404\n",
             (int)getpid());
    assert_int_equal(strlen(captured), 24 + strlen(expected_tail) - 1);
    assert_string_equal(captured + 23, expected_tail);
    assert_int_equal(strchr(captured, '\n') - captured, (long)strlen(captured) - 1);

    /* an interactive tool defaults to text; PAYGATE_LOG_FORMAT still wins */
    unsetenv("PAYGATE_LOG_FORMAT");
    assert_true(log_init_interactive("unit-log"));
    log_set_request_id(NULL);
    log_info("plain");
    capture();
    assert_int_equal(captured[0], '2');
    assert_non_null(strstr(captured, " INFO  unit-log["));
    setenv("PAYGATE_LOG_FORMAT", "json", 1);
    assert_true(log_init_interactive("unit-log"));
    log_info("json");
    json_t *line = one_json_line();
    assert_string_equal(text_of(line, "message"), "json");
    json_decref(line);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_line_has_the_keys, reset),
        cmocka_unit_test_setup(test_levels_filter_and_bad_settings_fail, reset),
        cmocka_unit_test_setup(test_escaping_of_every_string, reset),
        cmocka_unit_test_setup(test_random_bytes_always_give_valid_json, reset),
        cmocka_unit_test_setup(test_fields_of_every_type, reset),
        cmocka_unit_test_setup(test_long_message_is_cut_whole_characters, reset),
        cmocka_unit_test_setup(test_fields_beyond_the_limits, reset),
        cmocka_unit_test_setup(test_request_id_and_instance_are_per_thread, reset),
        cmocka_unit_test_setup(test_text_format, reset),
    };
    return cmocka_run_group_tests_name("log", tests, setup, teardown);
}
