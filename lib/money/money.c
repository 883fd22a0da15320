/*
 * money: Indian rupee formatting. See money.h.
 */
#include "money.h"

#include <stdio.h>
#include <string.h>

bool money_format_inr(int64_t amount, char *out, size_t out_size)
{
    /* Work on the magnitude as uint64 so that INT64_MIN is fine. */
    bool negative = amount < 0;
    uint64_t magnitude = negative ? (uint64_t)0 - (uint64_t)amount : (uint64_t)amount;
    uint64_t rupees = magnitude / 100, paise = magnitude % 100;

    char digits[24];
    int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)rupees);
    /* Indian grouping: the last three digits, then groups of two. */
    char grouped[40];
    size_t g = 0;
    for (int i = 0; i < n; i++) {
        int left = n - i; /* digits from here to the end */
        if (i > 0 && left >= 3 && (left == 3 || (left - 3) % 2 == 0))
            grouped[g++] = ',';
        grouped[g++] = digits[i];
    }
    grouped[g] = '\0';

    int written;
    if (paise != 0)
        written = snprintf(out, out_size, "%s\u20b9%s.%02u", negative ? "-" : "", grouped,
                           (unsigned)paise);
    else
        written = snprintf(out, out_size, "%s\u20b9%s", negative ? "-" : "", grouped);
    return written >= 0 && (size_t)written < out_size;
}
