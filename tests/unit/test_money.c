/*
 * Unit tests of lib/money: checked arithmetic and rupee formatting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "money/money.h"

static void test_add_and_sub_detect_overflow(void **state)
{
    (void)state;
    int64_t out = 7;
    assert_true(money_add(100, 250, &out));
    assert_int_equal(out, 350);
    assert_false(money_add(INT64_MAX, 1, &out));
    assert_int_equal(out, 350); /* untouched on overflow */
    assert_false(money_add(INT64_MIN, -1, &out));
    assert_true(money_sub(100, 250, &out));
    assert_int_equal(out, -150);
    assert_false(money_sub(INT64_MIN, 1, &out));
    assert_false(money_sub(0, INT64_MIN, &out));
    assert_true(money_sub(INT64_MAX, INT64_MAX, &out));
    assert_int_equal(out, 0);
}

static void test_amount_valid_bounds(void **state)
{
    (void)state;
    assert_false(money_amount_valid(0, 100));
    assert_false(money_amount_valid(-1, 100));
    assert_true(money_amount_valid(1, 100));
    assert_true(money_amount_valid(100, 100));
    assert_false(money_amount_valid(101, 100));
    assert_false(money_amount_valid(INT64_MIN, INT64_MAX));
}

static void check_format(int64_t amount, const char *expected)
{
    char out[64];
    assert_true(money_format_inr(amount, out, sizeof out));
    assert_string_equal(out, expected);
}

static void test_format_indian_grouping(void **state)
{
    (void)state;
    check_format(0, "₹0");
    check_format(5, "₹0.05");
    check_format(50000, "₹500");
    check_format(50050, "₹500.50");
    check_format(100000, "₹1,000");
    check_format(99999999, "₹9,99,999.99");
    check_format(10000000, "₹1,00,000");
    check_format(10000050, "₹1,00,000.50");
    check_format(INT64_C(100000000000000), "₹10,00,00,00,00,000");
    check_format(-150, "-₹1.50");
    check_format(INT64_MIN, "-₹92,23,37,20,36,85,47,758.08");
    check_format(INT64_MAX, "₹92,23,37,20,36,85,47,758.07");
}

static void test_format_buffer_too_small(void **state)
{
    (void)state;
    char out[6];
    assert_false(money_format_inr(100000, out, sizeof out)); /* "₹1,000" needs 9 bytes */
    assert_true(money_format_inr(100, out, sizeof out));     /* "₹1" is 4 bytes + NUL */
    assert_string_equal(out, "₹1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_and_sub_detect_overflow),
        cmocka_unit_test(test_amount_valid_bounds),
        cmocka_unit_test(test_format_indian_grouping),
        cmocka_unit_test(test_format_buffer_too_small),
    };
    return cmocka_run_group_tests_name("money", tests, NULL, NULL);
}
