/*
 * config: strict environment variable parsing. See config.h.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"

bool config_parse_int(const char *text, int64_t min, int64_t max, int64_t *out)
{
    if (text == NULL || *text == '\0')
        return false;
    /* strtoll accepts leading spaces and '+'; we do not. */
    if (!(*text == '-' || (*text >= '0' && *text <= '9')))
        return false;
    errno = 0;
    char *end = NULL;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0')
        return false;
    if (value < min || value > max)
        return false;
    *out = (int64_t)value;
    return true;
}

bool config_int(const char *name, int64_t fallback, int64_t min, int64_t max, int64_t *out)
{
    const char *text = getenv(name);
    if (text == NULL || *text == '\0') {
        *out = fallback;
        return true;
    }
    if (!config_parse_int(text, min, max, out)) {
        log_error("config: %s='%s' is invalid: expected an integer from %lld to %lld", name, text,
                  (long long)min, (long long)max);
        return false;
    }
    return true;
}

bool config_str(const char *name, const char *fallback, size_t bytes_max, const char **out)
{
    const char *text = getenv(name);
    if (text == NULL || *text == '\0') {
        *out = fallback;
        return true;
    }
    if (strlen(text) > bytes_max) {
        log_error("config: %s is too long: %zu bytes, at most %zu", name, strlen(text), bytes_max);
        return false;
    }
    *out = text;
    return true;
}
