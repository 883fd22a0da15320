/*
 * Unit tests of gateway-http/ratelimit.c: token buckets with a fake clock
 * (times are passed in), so every expectation is exact.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "ratelimit.h"

static const int64_t second_us = 1000000;
static const int64_t t0 = 1000 * 1000000LL; /* any start time */

/* A config with every class off but 'class' at 'per_min' and 'burst'. */
static ratelimit_config_t config_with(ratelimit_class_t class, int64_t per_min, int64_t burst)
{
    ratelimit_config_t c;
    memset(&c, 0, sizeof c);
    for (int i = 0; i < RATELIMIT_CLASS_COUNT; i++)
        c.rules[i] = (ratelimit_rule_t){0, 1};
    c.rules[class] = (ratelimit_rule_t){per_min, burst};
    c.entries_max = 1024;
    return c;
}

static bool take(ratelimit_t *r, ratelimit_class_t class, const char *key, int64_t now_us,
                 ratelimit_verdict_t *v)
{
    return ratelimit_take(r, class, key, strlen(key), now_us, v);
}

/* A burst of 5 passes, the 6th is refused with Retry-After rounded up to
 * whole seconds (60 a minute: one token a second); after that second one
 * more passes, and a full refill gives the whole burst again, never more. */
static void test_burst_then_refill(void **state)
{
    (void)state;
    ratelimit_config_t c = config_with(RATELIMIT_ADDRESS, 60, 5);
    ratelimit_t *r = ratelimit_new(&c);
    assert_non_null(r);
    ratelimit_verdict_t v;
    for (int i = 0; i < 5; i++) {
        assert_true(take(r, RATELIMIT_ADDRESS, "10.0.0.1", t0, &v));
        assert_int_equal(v.limit, 5);
        assert_int_equal(v.remaining, 4 - i);
    }
    assert_false(take(r, RATELIMIT_ADDRESS, "10.0.0.1", t0, &v));
    assert_int_equal(v.retry_after_s, 1);
    assert_int_equal(ratelimit_rejected_total(r), 1);
    assert_int_equal(ratelimit_rejected(r, RATELIMIT_ADDRESS), 1);
    /* half a second: half a token, still refused, still 1 s */
    assert_false(take(r, RATELIMIT_ADDRESS, "10.0.0.1", t0 + second_us / 2, &v));
    assert_int_equal(v.retry_after_s, 1);
    /* one second after the start: a token is back */
    assert_true(take(r, RATELIMIT_ADDRESS, "10.0.0.1", t0 + second_us, &v));
    assert_false(take(r, RATELIMIT_ADDRESS, "10.0.0.1", t0 + second_us, &v));
    /* an hour later: full (5), not 3600 */
    int passed = 0;
    while (take(r, RATELIMIT_ADDRESS, "10.0.0.1", t0 + 3600 * second_us, &v))
        passed++;
    assert_int_equal(passed, 5);
    assert_int_equal(ratelimit_rejected_total(r), 4);
    ratelimit_destroy(&r);
    assert_null(r);
}

/* Keys and classes are separate buckets: another address, or the same
 * text in another class, is not affected by a spent bucket. */
static void test_keys_and_classes_independent(void **state)
{
    (void)state;
    ratelimit_config_t c = config_with(RATELIMIT_LOGIN_ADDRESS, 1, 2);
    c.rules[RATELIMIT_LOGIN_EMAIL] = (ratelimit_rule_t){1, 2};
    ratelimit_t *r = ratelimit_new(&c);
    assert_non_null(r);
    ratelimit_verdict_t v;
    assert_true(take(r, RATELIMIT_LOGIN_ADDRESS, "a", t0, &v));
    assert_true(take(r, RATELIMIT_LOGIN_ADDRESS, "a", t0, &v));
    assert_false(take(r, RATELIMIT_LOGIN_ADDRESS, "a", t0, &v));
    assert_int_equal(v.retry_after_s, 60); /* one a minute */
    assert_true(take(r, RATELIMIT_LOGIN_ADDRESS, "b", t0, &v));
    assert_true(take(r, RATELIMIT_LOGIN_EMAIL, "a", t0, &v));
    /* a class that is off always allows */
    for (int i = 0; i < 100; i++)
        assert_true(take(r, RATELIMIT_USER, "a", t0, &v));
    assert_false(ratelimit_enabled(r, RATELIMIT_USER));
    assert_true(ratelimit_enabled(r, RATELIMIT_LOGIN_EMAIL));
    ratelimit_destroy(&r);
}

/* Out-of-range rules and sizes are refused at construction. */
static void test_bad_config_refused(void **state)
{
    (void)state;
    ratelimit_config_t c = config_with(RATELIMIT_USER, 10, 0);
    assert_null(ratelimit_new(&c));
    c = config_with(RATELIMIT_USER, -1, 1);
    assert_null(ratelimit_new(&c));
    c = config_with(RATELIMIT_USER, ratelimit_per_min_max + 1LL, 1);
    assert_null(ratelimit_new(&c));
    c = config_with(RATELIMIT_USER, 10, 10);
    c.entries_max = 8;
    assert_null(ratelimit_new(&c));
    c.entries_max = ratelimit_entries_max;
    c.rules[RATELIMIT_USER].burst = ratelimit_burst_max;
    c.rules[RATELIMIT_USER].per_min = ratelimit_per_min_max;
    ratelimit_t *r = ratelimit_new(&c); /* the extremes do not overflow */
    assert_non_null(r);
    ratelimit_verdict_t v;
    assert_true(take(r, RATELIMIT_USER, "u", t0, &v));
    assert_true(take(r, RATELIMIT_USER, "u", INT64_MAX / 2, &v));
    assert_int_equal(v.remaining, ratelimit_burst_max - 1);
    ratelimit_destroy(&r);
}

/* Memory is bounded: 100,000 distinct keys in a 64-entry table are each
 * a fresh bucket (allowed) and never fail or grow it (ASan would see). */
static void test_bounded_table(void **state)
{
    (void)state;
    ratelimit_config_t c = config_with(RATELIMIT_ADDRESS, 60, 1);
    c.entries_max = 100; /* rounded down to 64 */
    ratelimit_t *r = ratelimit_new(&c);
    assert_non_null(r);
    ratelimit_verdict_t v;
    char key[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_true(take(r, RATELIMIT_ADDRESS, key, t0, &v));
    }
    ratelimit_destroy(&r);
}

/* Eviction prefers buckets that are full again: a login email spent for
 * a minute stays refused while 50,000 other keys (an address limit that
 * refills within 1 ms) come and go through a 64-entry table; it would be
 * forgotten (and pass) if eviction took it before the full ones. */
static void test_eviction_keeps_spent_buckets(void **state)
{
    (void)state;
    ratelimit_config_t c = config_with(RATELIMIT_LOGIN_EMAIL, 1, 1);
    c.rules[RATELIMIT_ADDRESS] = (ratelimit_rule_t){60000, 1}; /* one token a millisecond */
    c.entries_max = 64;
    ratelimit_t *r = ratelimit_new(&c);
    assert_non_null(r);
    ratelimit_verdict_t v;
    assert_true(take(r, RATELIMIT_LOGIN_EMAIL, "victim@example.com", t0, &v));
    assert_false(take(r, RATELIMIT_LOGIN_EMAIL, "victim@example.com", t0, &v));
    char key[32];
    for (int i = 0; i < 50000; i++) {
        snprintf(key, sizeof key, "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        assert_true(take(r, RATELIMIT_ADDRESS, key, t0 + (int64_t)(i + 1) * 1000, &v));
    }
    assert_false(take(r, RATELIMIT_LOGIN_EMAIL, "victim@example.com", t0 + 50 * second_us, &v));
    assert_int_equal(v.retry_after_s, 10);
    assert_true(take(r, RATELIMIT_LOGIN_EMAIL, "victim@example.com", t0 + 60 * second_us, &v));
    ratelimit_destroy(&r);
}

typedef struct {
    ratelimit_t *r;
    atomic_int *allowed;
} hammer_t;

static void *hammer(void *arg)
{
    hammer_t *h = arg;
    ratelimit_verdict_t v;
    for (int i = 0; i < 2000; i++) {
        if (ratelimit_take(h->r, RATELIMIT_USER, "shared", 6, t0, &v))
            atomic_fetch_add(h->allowed, 1);
    }
    return NULL;
}

/* 8 threads at one instant on one bucket of 100: exactly 100 pass. */
static void test_threads_share_one_bucket(void **state)
{
    (void)state;
    ratelimit_config_t c = config_with(RATELIMIT_USER, 60, 100);
    ratelimit_t *r = ratelimit_new(&c);
    assert_non_null(r);
    atomic_int allowed = 0;
    hammer_t h = {r, &allowed};
    pthread_t threads[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, hammer, &h), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(atomic_load(&allowed), 100);
    assert_int_equal(ratelimit_rejected_total(r), 8 * 2000 - 100);
    ratelimit_destroy(&r);
}

/* A clock that goes backwards gives nothing back and breaks nothing. */
static void test_clock_backwards(void **state)
{
    (void)state;
    ratelimit_config_t c = config_with(RATELIMIT_PAYMENT_USER, 60, 1);
    ratelimit_t *r = ratelimit_new(&c);
    assert_non_null(r);
    ratelimit_verdict_t v;
    assert_true(take(r, RATELIMIT_PAYMENT_USER, "u", t0, &v));
    assert_false(take(r, RATELIMIT_PAYMENT_USER, "u", t0 - 10 * second_us, &v));
    assert_true(v.retry_after_s >= 1);
    assert_string_equal(ratelimit_class_name(RATELIMIT_PAYMENT_USER), "payment_user");
    assert_string_equal(ratelimit_class_name(RATELIMIT_LOGIN_EMAIL), "login_email");
    ratelimit_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_keys_and_classes_independent),
        cmocka_unit_test(test_bad_config_refused),
        cmocka_unit_test(test_bounded_table),
        cmocka_unit_test(test_eviction_keeps_spent_buckets),
        cmocka_unit_test(test_threads_share_one_bucket),
        cmocka_unit_test(test_clock_backwards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
