/*
 * utf8: counting and checking user text (names, receipts, descriptions,
 * passwords) before it reaches a database.
 */
#ifndef PAYGATE_UTF8_H
#define PAYGATE_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* The number of code points in 'text', or -1 when it is not valid UTF-8
 * (overlong forms, surrogates and values past U+10FFFF are invalid), or,
 * with 'reject_controls', when it holds a C0 or C1 control character. */
long utf8_chars(const char *text, bool reject_controls);

#endif
