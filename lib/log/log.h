/*
 * log: one line per event on stderr, a JSON object by default.
 *
 * Every line names the process, its instance and (while a thread handles
 * a request) the request id, so that one request can be followed through
 * the gateway, the broker and every service it touches:
 *
 *   {"time":"2026-11-27T12:00:00.123Z","level":"info","process":"payment",
 *    "pid":4242,"instance":"payment-host-4242-0","request_id":"req_1f..",
 *    "message":"rpc served","fields":{"service":"payment","method":"Create",
 *    "status":"OK","duration_ms":12.345}}
 *
 * (one line in the file). "instance" is there once log_init ran,
 * "request_id" only while the writing thread has one
 * (log_set_request_id), "fields" only when the line has structured
 * fields, "truncated": true only when the line was cut at
 * log_line_bytes_max. Every string is valid JSON: quotes, backslashes and
 * control characters are escaped, and bytes that are not UTF-8 become
 * U+FFFD.
 *
 * PAYGATE_LOG_LEVEL (debug, info, warn, error; default info) sets the
 * threshold, PAYGATE_LOG_FORMAT (json, text; default json) the format.
 * "text" is the older human format, one line too:
 *
 *   2026-11-27T12:00:00.123Z INFO  payment[4242] [req_1f..] rpc served service=payment ...
 *
 * Never log secrets: passwords, tokens, keys, request or reply bodies.
 */
#ifndef PAYGATE_LOG_H
#define PAYGATE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    log_line_bytes_max = 4096,       /* one line, newline included; longer lines are cut */
    log_message_bytes_max = 2048,    /* the formatted message before escaping */
    log_process_bytes_max = 63,      /* process name */
    log_instance_bytes_max = 128,    /* instance id (as wire_instance_bytes_max) */
    log_request_id_bytes_max = 64,   /* request id (as wire_request_id_bytes_max) */
    log_fields_max = 16,             /* structured fields on one line */
    log_field_text_bytes_max = 1024, /* one string field value before escaping */
};

typedef enum {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO = 1,
    LOG_LEVEL_WARN = 2,
    LOG_LEVEL_ERROR = 3,
} log_level_t;

typedef enum {
    LOG_FORMAT_JSON = 0,
    LOG_FORMAT_TEXT = 1,
} log_format_t;

typedef enum {
    LOG_FIELD_STR,
    LOG_FIELD_INT,
    LOG_FIELD_DOUBLE,
    LOG_FIELD_BOOL,
} log_field_type_t;

/* One structured field: a key ([a-z0-9_]) and a typed value. The strings
 * are borrowed for the duration of the call. A NULL string is written as
 * JSON null, a double that is not finite as null. */
typedef struct {
    const char *key;
    log_field_type_t type;
    union {
        const char *str;
        int64_t i;
        double d;
        bool b;
    } value;
} log_field_t;

#define LOG_STR(k, v)    ((log_field_t){.key = (k), .type = LOG_FIELD_STR, .value.str = (v)})
#define LOG_INT(k, v)    ((log_field_t){.key = (k), .type = LOG_FIELD_INT, .value.i = (int64_t)(v)})
#define LOG_DOUBLE(k, v) ((log_field_t){.key = (k), .type = LOG_FIELD_DOUBLE, .value.d = (v)})
#define LOG_BOOL(k, v)   ((log_field_t){.key = (k), .type = LOG_FIELD_BOOL, .value.b = (v)})

/* LOG_FIELDS(LOG_STR("method", "GET"), LOG_INT("status", 200)) expands to
 * the two arguments 'fields, field_count' of log_write_fields. */
#define LOG_FIELDS(...)                                                                            \
    (const log_field_t[]){__VA_ARGS__},                                                            \
        sizeof((const log_field_t[]){__VA_ARGS__}) / sizeof(log_field_t)

/* Sets the process name shown on every line, the process's instance id to
 * "<process>-<host>-<pid>" (log_set_instance changes it), and reads
 * PAYGATE_LOG_LEVEL and PAYGATE_LOG_FORMAT (default json). Call it first,
 * before any thread starts. Returns false (and logs why) when a setting is
 * not a known name. */
bool log_init(const char *process);

/* Like log_init, for tools a person runs at a terminal (paygatectl): the
 * format is text unless PAYGATE_LOG_FORMAT says json. */
bool log_init_interactive(const char *process);

/* Sets the instance id on the lines of every thread that has none of its
 * own (NULL or "": keep the current one). Call it before threads start. */
void log_set_instance(const char *instance);

/* Sets the instance id on the calling thread's lines (a worker thread is
 * one instance to the broker); NULL or "" falls back to the process's. */
void log_set_thread_instance(const char *instance);

/* Sets the request id on the calling thread's lines until it is set again;
 * NULL or "" clears it. Longer ids are cut at log_request_id_bytes_max. */
void log_set_request_id(const char *request_id);

/* The calling thread's request id, "" when it has none. */
const char *log_request_id(void);

/* Sends the lines to file descriptor 'fd' instead of stderr (tests);
 * -1: stderr again. Each line is one write(2), so lines of several
 * threads never interleave. */
void log_set_fd(int fd);

/* True when lines at 'level' are written (to skip building costly text). */
bool log_enabled(log_level_t level);

/* Writes one line at 'level' if it passes the threshold: 'fmt' and its
 * arguments (printf-style) are the message. */
void log_write(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* log_write with the arguments as a va_list (adapters for libraries). */
void log_vwrite(log_level_t level, const char *fmt, va_list args)
    __attribute__((format(printf, 2, 0)));

/* Writes one line with 'field_count' structured 'fields' (at most
 * log_fields_max; more are dropped and the line marked truncated). Use
 * LOG_FIELDS(...) for the middle two arguments. */
void log_write_fields(log_level_t level, const log_field_t *fields, size_t field_count,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define log_debug(...) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
