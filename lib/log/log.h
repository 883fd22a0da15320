/*
 * log: one line per event on stderr, with time, level and process name.
 *
 * The level comes from PAYGATE_LOG_LEVEL (debug, info, warn, error;
 * default info). Never log secrets: passwords, tokens, keys.
 */
#ifndef PAYGATE_LOG_H
#define PAYGATE_LOG_H

#include <stdbool.h>

typedef enum {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO = 1,
    LOG_LEVEL_WARN = 2,
    LOG_LEVEL_ERROR = 3,
} log_level_t;

/* Sets the process name shown on every line and reads PAYGATE_LOG_LEVEL.
 * Returns false (and logs why) when the level is not a known name. */
bool log_init(const char *process);

/* Writes one line at 'level' if it passes the configured threshold. */
void log_write(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* True when lines at 'level' are written (to skip building costly text). */
bool log_enabled(log_level_t level);

#define log_debug(...) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
