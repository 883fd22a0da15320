/*
 * money: amounts as int64_t minor units (paise: 100 = ₹1), with checked
 * arithmetic and Indian formatting.
 *
 * Never use floating point for money. Every operation that could overflow
 * says so in its result instead of wrapping.
 */
#ifndef PAYGATE_MONEY_H
#define PAYGATE_MONEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest wallet balance we hold: ₹10,00,00,00,00,000 (10^14 paise),
 * also enforced by the database. */
#define MONEY_BALANCE_MINOR_MAX INT64_C(100000000000000)

/* '*out' = 'a' + 'b'. False (and '*out' untouched) on int64 overflow. */
static inline bool money_add(int64_t a, int64_t b, int64_t *out)
{
    int64_t sum;
    if (__builtin_add_overflow(a, b, &sum))
        return false;
    *out = sum;
    return true;
}

/* '*out' = 'a' - 'b'. False (and '*out' untouched) on int64 overflow. */
static inline bool money_sub(int64_t a, int64_t b, int64_t *out)
{
    int64_t difference;
    if (__builtin_sub_overflow(a, b, &difference))
        return false;
    *out = difference;
    return true;
}

/* True when 'amount' is a positive amount of at most 'amount_minor_max'. */
static inline bool money_amount_valid(int64_t amount, int64_t amount_minor_max)
{
    return amount > 0 && amount <= amount_minor_max;
}

/* Writes 'amount' paise as rupees with Indian digit grouping into 'out':
 * 50000 -> "₹500", 50050 -> "₹500.50", 10000000 -> "₹1,00,000",
 * -150 -> "-₹1.50". Paise are shown only when not zero. Returns false
 * when 'out_size' is too small (at least 40 bytes always suffices). */
bool money_format_inr(int64_t amount, char *out, size_t out_size);

#endif
