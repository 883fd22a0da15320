/*
 * log: one line per event, JSON by default. See log.h for both formats.
 *
 * A line is built in a stack buffer of log_line_bytes_max bytes and
 * written with one write(2), so lines from several threads never
 * interleave (a pipe write up to PIPE_BUF is atomic). The buffer is
 * filled front to back and never overflows: room for the closing
 * characters is held back, a message that does not fit is cut between
 * two characters (never inside an escape or a UTF-8 sequence), and a
 * field that does not fit is left out whole. Either way the line then
 * ends with "truncated":true, and it is still one valid JSON object.
 *
 *   | {"time":..,"level":..,"process":..,"pid":..,"instance":..,     |
 *   | "request_id":..,"message":"..   ..","fields":{..},"truncated":true}\n |
 *     <---------------- cap = log_line_bytes_max - tail_reserve ------> <-tail->
 */
#include "log.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "text/utf8.h"

enum {
    /* closing characters held back: "  }  ,"truncated":true  }  \n */
    tail_reserve_bytes = 32,
};

static char log_process[log_process_bytes_max + 1] = "paygate";
static char log_instance[log_instance_bytes_max + 1] = "";
static log_level_t log_threshold = LOG_LEVEL_INFO;
static log_format_t log_format = LOG_FORMAT_JSON;
static int log_fd = STDERR_FILENO;

static _Thread_local char thread_instance[log_instance_bytes_max + 1];
static _Thread_local char thread_request_id[log_request_id_bytes_max + 1];

static const char *const level_names_json[] = {"debug", "info", "warn", "error"};
static const char *const level_names_text[] = {"DEBUG", "INFO", "WARN", "ERROR"};

/* ---- settings ------------------------------------------------------------ */

/* Parses 'name' (case-insensitive) into '*level'. */
static bool level_parse(const char *name, log_level_t *level)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, level_names_json[i]) == 0) {
            *level = (log_level_t)i;
            return true;
        }
    }
    return false;
}

/* Reads the settings; 'default_format' when PAYGATE_LOG_FORMAT is unset. */
static bool log_init_with(const char *process, log_format_t default_format)
{
    snprintf(log_process, sizeof log_process, "%s", process);
    /* the same id lib/rpc derives for a worker process */
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(log_instance, sizeof log_instance, "%.64s-%.40s-%d", process, host, (int)getpid());
    log_threshold = LOG_LEVEL_INFO;
    log_format = default_format;
    bool ok = true;
    const char *format = getenv("PAYGATE_LOG_FORMAT");
    if (format != NULL && *format != '\0') {
        if (strcasecmp(format, "json") == 0) {
            log_format = LOG_FORMAT_JSON;
        } else if (strcasecmp(format, "text") == 0) {
            log_format = LOG_FORMAT_TEXT;
        } else {
            log_error("PAYGATE_LOG_FORMAT: unknown format '%s' (expected json or text)", format);
            ok = false;
        }
    }
    const char *level = getenv("PAYGATE_LOG_LEVEL");
    if (level != NULL && *level != '\0' && !level_parse(level, &log_threshold)) {
        log_error("PAYGATE_LOG_LEVEL: unknown level '%s' (expected debug, info, warn or error)",
                  level);
        ok = false;
    }
    return ok;
}

bool log_init(const char *process)
{
    return log_init_with(process, LOG_FORMAT_JSON);
}

bool log_init_interactive(const char *process)
{
    return log_init_with(process, LOG_FORMAT_TEXT);
}

void log_set_instance(const char *instance)
{
    /* Unchanged (the usual case: lib/rpc derives the id log_init made up)
     * means no write, so threads already logging never see one. */
    if (instance != NULL && *instance != '\0' && strcmp(instance, log_instance) != 0)
        snprintf(log_instance, sizeof log_instance, "%s", instance);
}

void log_set_thread_instance(const char *instance)
{
    snprintf(thread_instance, sizeof thread_instance, "%s", instance != NULL ? instance : "");
}

void log_set_request_id(const char *request_id)
{
    snprintf(thread_request_id, sizeof thread_request_id, "%s",
             request_id != NULL ? request_id : "");
}

const char *log_request_id(void)
{
    return thread_request_id;
}

void log_set_fd(int fd)
{
    log_fd = fd >= 0 ? fd : STDERR_FILENO;
}

bool log_enabled(log_level_t level)
{
    return level >= log_threshold;
}

/* ---- building a line ------------------------------------------------------- */

typedef struct {
    char buf[log_line_bytes_max];
    size_t len;
    size_t cap; /* log_line_bytes_max - tail_reserve_bytes */
    bool truncated;
} line_t;

/* Appends 'n' bytes of 's' when they fit; else marks the line truncated. */
static bool line_put(line_t *line, const char *s, size_t n)
{
    if (n > line->cap - line->len) {
        line->truncated = true;
        return false;
    }
    memcpy(line->buf + line->len, s, n);
    line->len += n;
    return true;
}

static bool line_puts(line_t *line, const char *s)
{
    return line_put(line, s, strlen(s));
}

/* Appends printf-style text when it fits whole. */
static bool line_printf(line_t *line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool line_printf(line_t *line, const char *fmt, ...)
{
    char text[64];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    if (n < 0 || (size_t)n >= sizeof text)
        return false;
    return line_put(line, text, (size_t)n);
}

/* The length of the first 'n' bytes of 's' without an incomplete UTF-8
 * sequence at their end (text cut at a byte count may split one). */
static size_t utf8_whole(const char *s, size_t n)
{
    size_t start = n;
    for (int back = 0; back < 4 && start > 0; back++) {
        start--;
        if (((unsigned char)s[start] & 0xc0) != 0x80)
            break; /* the last sequence starts here */
    }
    uint32_t cp = 0;
    if (start < n && utf8_decode(s + start, n - start, &cp) == 0 && (unsigned char)s[start] >= 0xc0)
        return start; /* a lead byte whose sequence was cut off */
    return n;
}

/* Appends the 'n' bytes of 's' escaped, whole characters only: for JSON
 * ('json') quotes and backslashes are escaped too; both formats escape C0
 * and C1 controls, DEL, U+2028 and U+2029 (a line stays one line, for a
 * terminal as for a JavaScript parser) and write U+FFFD for each byte that
 * is not part of valid UTF-8. Stops, marking the line truncated, at the
 * first character that does not fit. Returns true when all of 's' was
 * written. */
static bool line_put_escaped(line_t *line, const char *s, size_t n, bool json)
{
    size_t i = 0;
    while (i < n) {
        uint32_t cp = 0;
        size_t used = utf8_decode(s + i, n - i, &cp);
        char escape[8];
        const char *out = s + i;
        size_t out_len = used;
        if (used == 0) {
            out = "\xef\xbf\xbd"; /* U+FFFD for one stray byte */
            out_len = 3;
            used = 1;
        } else if (json && (cp == '"' || cp == '\\')) {
            escape[0] = '\\';
            escape[1] = (char)cp;
            out = escape;
            out_len = 2;
        } else if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || cp == 0x2028 || cp == 0x2029) {
            const char *named = cp == '\n'   ? "\\n"
                                : cp == '\r' ? "\\r"
                                : cp == '\t' ? "\\t"
                                : cp == '\b' ? "\\b"
                                : cp == '\f' ? "\\f"
                                             : NULL;
            if (named != NULL)
                snprintf(escape, sizeof escape, "%s", named);
            else
                snprintf(escape, sizeof escape, "\\u%04x", (unsigned)cp);
            out = escape;
            out_len = strlen(escape);
        }
        if (!line_put(line, out, out_len))
            return false;
        i += used;
    }
    return true;
}

/* Appends "<key>":"<escaped value>" (JSON) with a leading comma. */
static bool line_put_json_string(line_t *line, const char *key, const char *value)
{
    size_t mark = line->len;
    bool ok = line_puts(line, ",\"") && line_put_escaped(line, key, strlen(key), true) &&
              line_puts(line, "\":\"") && line_put_escaped(line, value, strlen(value), true) &&
              line_puts(line, "\"");
    if (!ok)
        line->len = mark;
    return ok;
}

/* Appends one field: JSON "key":value (with a leading comma unless
 * 'first'), or text " key=value". A string value is cut (whole
 * characters) at log_field_text_bytes_max; a field that does not fit
 * whole in the line is left out. Either marks the line truncated. */
static void line_put_field(line_t *line, const log_field_t *field, bool first)
{
    size_t mark = line->len;
    bool json = log_format == LOG_FORMAT_JSON;
    const char *key = field->key != NULL ? field->key : "";
    bool ok = json ? line_puts(line, first ? "\"" : ",\"") : line_puts(line, " ");
    ok = ok && line_put_escaped(line, key, strlen(key), json);
    ok = ok && line_puts(line, json ? "\":" : "=");
    switch (field->type) {
    case LOG_FIELD_STR: {
        const char *s = field->value.str;
        if (s == NULL) {
            ok = ok && line_puts(line, "null");
            break;
        }
        size_t n = strnlen(s, log_field_text_bytes_max + 1);
        if (n > log_field_text_bytes_max) {
            n = utf8_whole(s, log_field_text_bytes_max);
            line->truncated = true;
        }
        ok = ok && (!json || line_puts(line, "\""));
        ok = ok && line_put_escaped(line, s, n, json);
        ok = ok && (!json || line_puts(line, "\""));
        break;
    }
    case LOG_FIELD_INT:
        ok = ok && line_printf(line, "%lld", (long long)field->value.i);
        break;
    case LOG_FIELD_DOUBLE:
        if (isfinite(field->value.d))
            ok = ok && line_printf(line, "%.3f", field->value.d);
        else
            ok = ok && line_puts(line, "null");
        break;
    case LOG_FIELD_BOOL:
        ok = ok && line_puts(line, field->value.b ? "true" : "false");
        break;
    default:
        ok = ok && line_puts(line, "null");
        break;
    }
    if (!ok) {
        line->len = mark;
        line->truncated = true;
    }
}

/* Writes the finished line with one write(2) (more only after a short
 * write, which a pipe or a file does not do for a line this short). */
static void line_emit(const line_t *line)
{
    size_t done = 0;
    while (done < line->len) {
        ssize_t n = write(log_fd, line->buf + done, line->len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        done += (size_t)n;
    }
}

/* Builds and writes one line. */
static void log_line(log_level_t level, const log_field_t *fields, size_t field_count,
                     const char *fmt, va_list args)
{
    char message[log_message_bytes_max];
    int m = vsnprintf(message, sizeof message, fmt, args);
    if (m < 0)
        m = 0;
    size_t message_len = (size_t)m;
    line_t line;
    line.len = 0;
    line.cap = sizeof line.buf - tail_reserve_bytes;
    line.truncated = false;
    if (message_len >= sizeof message) {
        message_len = utf8_whole(message, sizeof message - 1);
        line.truncated = true;
    }
    if (field_count > log_fields_max) {
        field_count = log_fields_max;
        line.truncated = true;
    }

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char time_text[80]; /* room for any int the compiler imagines */
    snprintf(time_text, sizeof time_text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(now.tv_nsec / 1000000));
    const char *instance = thread_instance[0] != '\0' ? thread_instance : log_instance;
    bool json = log_format == LOG_FORMAT_JSON;

    if (json) {
        /* The head is short and bounded (names and ids have limits), so it
         * always fits; the message and the fields share what is left. */
        line_puts(&line, "{\"time\":\"");
        line_puts(&line, time_text);
        line_puts(&line, "\",\"level\":\"");
        line_puts(&line, level_names_json[level]);
        line_puts(&line, "\"");
        line_put_json_string(&line, "process", log_process);
        line_printf(&line, ",\"pid\":%d", (int)getpid());
        if (instance[0] != '\0') /* empty only before log_init */
            line_put_json_string(&line, "instance", instance);
        if (thread_request_id[0] != '\0')
            line_put_json_string(&line, "request_id", thread_request_id);
        line_puts(&line, ",\"message\":\"");
        line_put_escaped(&line, message, message_len, true);
        line.buf[line.len++] = '"'; /* from the tail reserve */
        if (field_count > 0 && line_puts(&line, ",\"fields\":{")) {
            for (size_t i = 0; i < field_count; i++)
                line_put_field(&line, &fields[i], line.buf[line.len - 1] == '{');
            line.buf[line.len++] = '}';
        }
        if (line.truncated) {
            static const char mark[] = ",\"truncated\":true";
            memcpy(line.buf + line.len, mark, sizeof mark - 1);
            line.len += sizeof mark - 1;
        }
        line.buf[line.len++] = '}';
    } else {
        char head[160];
        int n = snprintf(head, sizeof head, "%s %-5s ", time_text, level_names_text[level]);
        line_put(&line, head, n > 0 ? (size_t)n : 0);
        line_put_escaped(&line, log_process, strlen(log_process), false);
        line_printf(&line, "[%d] ", (int)getpid());
        if (thread_request_id[0] != '\0') {
            line_puts(&line, "[");
            line_put_escaped(&line, thread_request_id, strlen(thread_request_id), false);
            line_puts(&line, "] ");
        }
        line_put_escaped(&line, message, message_len, false);
        for (size_t i = 0; i < field_count; i++)
            line_put_field(&line, &fields[i], false);
        if (line.truncated) {
            static const char mark[] = " (truncated)";
            memcpy(line.buf + line.len, mark, sizeof mark - 1);
            line.len += sizeof mark - 1;
        }
    }
    line.buf[line.len++] = '\n';
    line_emit(&line);
}

void log_vwrite(log_level_t level, const char *fmt, va_list args)
{
    if (level < log_threshold)
        return;
    log_line(level, NULL, 0, fmt, args);
}

void log_write(log_level_t level, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    va_list args;
    va_start(args, fmt);
    log_line(level, NULL, 0, fmt, args);
    va_end(args);
}

void log_write_fields(log_level_t level, const log_field_t *fields, size_t field_count,
                      const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    va_list args;
    va_start(args, fmt);
    log_line(level, fields, field_count, fmt, args);
    va_end(args);
}
