/*
 * utf8: strict UTF-8 decoding. See utf8.h.
 */
#include "utf8.h"

#include <stdint.h>

long utf8_chars(const char *text, bool reject_controls)
{
    long count = 0;
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        unsigned char c = *p;
        size_t extra;
        uint32_t cp;
        if (c < 0x80) {
            extra = 0;
            cp = c;
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
            return -1;
        }
        for (size_t i = 1; i <= extra; i++) {
            if ((p[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
                return -1;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        static const uint32_t min_for_length[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_for_length[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return -1; /* overlong, out of range or a surrogate */
        if (reject_controls && (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)))
            return -1;
        p += extra + 1;
        count++;
    }
    return count;
}
