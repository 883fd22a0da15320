/*
 * utf8: counting and checking user text (names, receipts, descriptions,
 * passwords) before it reaches a database, and decoding it one code point
 * at a time (lib/log escapes log text with it).
 */
#ifndef PAYGATE_UTF8_H
#define PAYGATE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The number of code points in 'text', or -1 when it is not valid UTF-8
 * (overlong forms, surrogates and values past U+10FFFF are invalid), or,
 * with 'reject_controls', when it holds a C0 or C1 control character. */
long utf8_chars(const char *text, bool reject_controls);

/* Decodes the code point at the start of 'text' (of 'len' bytes, NULs
 * included) into '*code_point' and returns its length in bytes (1..4).
 * Returns 0 when 'len' is 0 or the bytes there are not one valid UTF-8
 * sequence (a stray continuation byte, a truncated sequence, an overlong
 * form, a surrogate, a value past U+10FFFF): the caller then skips one
 * byte. */
size_t utf8_decode(const char *text, size_t len, uint32_t *code_point);

#endif
