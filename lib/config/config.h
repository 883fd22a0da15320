/*
 * config: reads settings from environment variables, strictly.
 *
 * A malformed or out-of-range value is an error that names the variable,
 * the value and the accepted range; the caller refuses to start. A value
 * is never silently clamped or replaced by the default.
 */
#ifndef PAYGATE_CONFIG_H
#define PAYGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reads integer variable 'name' into '*out'. Unset or empty gives
 * 'fallback'. Returns false, after logging a precise error, when the value
 * is not a decimal integer within ['min', 'max']. */
bool config_int(const char *name, int64_t fallback, int64_t min, int64_t max, int64_t *out);

/* Parses 'text' as a decimal integer in ['min', 'max'] without touching the
 * environment. Returns false on any junk, overflow or range error. */
bool config_parse_int(const char *text, int64_t min, int64_t max, int64_t *out);

/* Reads string variable 'name' into '*out' (pointing into the environment,
 * or at 'fallback' when unset or empty). Returns false, after logging,
 * when it is longer than 'bytes_max'. */
bool config_str(const char *name, const char *fallback, size_t bytes_max, const char **out);

#endif
