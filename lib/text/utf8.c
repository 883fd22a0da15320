/*
 * utf8: strict UTF-8 decoding. See utf8.h.
 */
#include "utf8.h"

#include <string.h>

size_t utf8_decode(const char *text, size_t len, uint32_t *code_point)
{
    const unsigned char *p = (const unsigned char *)text;
    if (len == 0)
        return 0;
    unsigned char c = p[0];
    size_t extra;
    uint32_t cp;
    if (c < 0x80) {
        *code_point = c;
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        extra = 1;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        extra = 2;
        cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        extra = 3;
        cp = c & 0x07;
    } else {
        return 0; /* a continuation byte or 0xf8..0xff */
    }
    if (extra >= len)
        return 0; /* truncated */
    for (size_t i = 1; i <= extra; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    static const uint32_t min_for_length[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0; /* overlong, out of range or a surrogate */
    *code_point = cp;
    return extra + 1;
}

long utf8_chars(const char *text, bool reject_controls)
{
    long count = 0;
    size_t left = strlen(text);
    while (left > 0) {
        uint32_t cp = 0;
        size_t used = utf8_decode(text, left, &cp);
        if (used == 0)
            return -1;
        if (reject_controls && (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)))
            return -1;
        text += used;
        left -= used;
        count++;
    }
    return count;
}
