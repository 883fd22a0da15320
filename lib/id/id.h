/*
 * id: public object ids in the style "usr_5fq3m8k2c1x9h7d4b6n0p2r4",
 * a type prefix and 120 random bits in lower-case base32 (Crockford's
 * alphabet, no i, l, o, u). Random, so they leak no counts or times.
 */
#ifndef PAYGATE_ID_H
#define PAYGATE_ID_H

#include <stdbool.h>
#include <stddef.h>

enum { id_random_chars = 24, id_bytes_max = 64 };

/* Writes 'prefix' + "_" + 24 random base32 characters into 'out'.
 * Returns false when 'out_size' is too small. Thread-safe. */
bool id_new(const char *prefix, char *out, size_t out_size);

/* True when 'text' looks like an id of 'prefix' (exact shape). */
bool id_valid(const char *prefix, const char *text);

#endif
