/*
 * Unit tests of the broker's rights lists (broker/auth.h): how a
 * certificate's comma-separated list with '*' prefixes matches names.
 * The ZAP handler and the rules themselves are tested with real processes
 * in tests/integration/test_auth.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "auth.h"

static void test_exact_names(void **state)
{
    (void)state;
    assert_true(auth_list_matches("payment", "payment"));
    assert_true(auth_list_matches("payments,wallet", "wallet"));
    assert_true(auth_list_matches(" payments , wallet ", "wallet"));
    assert_false(auth_list_matches("payments,wallet", "payment"));
    assert_false(auth_list_matches("payment", "payments"));
    assert_false(auth_list_matches("payment", "paymen"));
}

static void test_prefixes(void **state)
{
    (void)state;
    assert_true(auth_list_matches("*", "anything"));
    assert_true(auth_list_matches("paygatectl*", "paygatectl"));
    assert_true(auth_list_matches("paygatectl*", "paygatectl-probe"));
    assert_false(auth_list_matches("paygatectl-*", "paygatectl"));
    assert_false(auth_list_matches("pay*", "user"));
}

static void test_nothing_allows_nothing(void **state)
{
    (void)state;
    assert_false(auth_list_matches("", "user"));
    assert_false(auth_list_matches(",,", "user"));
    assert_false(auth_list_matches(NULL, "user"));
    assert_false(auth_list_matches("*", "")); /* an empty name is never allowed */
    assert_false(auth_list_matches("user", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_names),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_nothing_allows_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
