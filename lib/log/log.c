/*
 * log: one line per event on stderr. Format:
 *
 *   2026-11-27T12:00:00.123Z INFO  broker[1234] message
 *
 * A line is built in a stack buffer and written with one write(2), so lines
 * from several threads never interleave.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

enum { log_line_bytes_max = 2048 };

static char log_process[64] = "paygate";
static log_level_t log_threshold = LOG_LEVEL_INFO;

static const char *const log_level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

/* Parses 'name' (case-insensitive) into '*level'. */
static bool log_level_parse(const char *name, log_level_t *level)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, names[i]) == 0) {
            *level = (log_level_t)i;
            return true;
        }
    }
    return false;
}

bool log_init(const char *process)
{
    snprintf(log_process, sizeof log_process, "%s", process);
    const char *env = getenv("PAYGATE_LOG_LEVEL");
    if (env == NULL || *env == '\0')
        return true;
    if (!log_level_parse(env, &log_threshold)) {
        log_error("PAYGATE_LOG_LEVEL: unknown level '%s' (expected debug, info, warn or error)",
                  env);
        return false;
    }
    return true;
}

bool log_enabled(log_level_t level)
{
    return level >= log_threshold;
}

void log_write(log_level_t level, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    char line[log_line_bytes_max];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s[%d] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     now.tv_nsec / 1000000, log_level_names[level], log_process, (int)getpid());
    if (n < 0)
        return;
    size_t used = (size_t)n;
    va_list args;
    va_start(args, fmt);
    int m = vsnprintf(line + used, sizeof line - used - 1, fmt, args);
    va_end(args);
    if (m < 0)
        return;
    used += (size_t)m;
    if (used > sizeof line - 2)
        used = sizeof line - 2; /* truncated: keep the newline */
    line[used++] = '\n';
    ssize_t written = write(STDERR_FILENO, line, used);
    (void)written;
}
