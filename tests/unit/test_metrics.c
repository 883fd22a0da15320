/*
 * Unit tests for lib/metrics: the Prometheus text format (HELP/TYPE lines,
 * label escaping, histogram buckets cumulative with +Inf, _sum and _count,
 * float spelling), the limits (names, labels, series per family), and
 * counting from several threads at once without losing an increment.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/metrics.h"

/* Renders 'm' into a string the test frees with metrics_text_free. */
static metrics_text_t render(metrics_t *m)
{
    metrics_text_t text;
    metrics_text_init(&text);
    metrics_render(m, &text);
    assert_false(text.failed);
    return text;
}

static void test_counter_with_escaped_labels(void **state)
{
    (void)state;
    metrics_t *m = metrics_new();
    const char *const labels[] = {"route", "status", NULL};
    metrics_family_t *f = metrics_counter_family(m, "paygate_test_requests_total",
                                                 "Requests\nby \"route\" and C:\\ path", labels);
    assert_non_null(f);
    const char *const a[] = {"/v1/orders/{id}", "200"};
    const char *const b[] = {"say \"hi\"\\now\nthen", "404"};
    metrics_counter_add(metrics_series(f, a), 2);
    metrics_counter_add(metrics_series(f, b), 1);
    metrics_counter_add(metrics_series(f, a), 3); /* the same series again */
    assert_int_equal(metrics_series_value(metrics_series(f, a)), 5);
    metrics_text_t text = render(m);
    assert_string_equal(
        text.data, "# HELP paygate_test_requests_total Requests\\nby \"route\" and C:\\\\ path\n"
                   "# TYPE paygate_test_requests_total counter\n"
                   "paygate_test_requests_total{route=\"/v1/orders/{id}\",status=\"200\"} 5\n"
                   "paygate_test_requests_total{route=\"say \\\"hi\\\"\\\\now\\nthen\","
                   "status=\"404\"} 1\n");
    metrics_text_free(&text);
    metrics_destroy(&m);
    assert_null(m);
}

static void test_gauge_without_labels(void **state)
{
    (void)state;
    metrics_t *m = metrics_new();
    metrics_family_t *f = metrics_gauge_family(m, "paygate_test_in_flight", "In flight.", NULL);
    metrics_series_t *s = metrics_series(f, NULL);
    metrics_gauge_add(s, 3);
    metrics_gauge_add(s, -5);
    metrics_text_t text = render(m);
    assert_string_equal(text.data, "# HELP paygate_test_in_flight In flight.\n"
                                   "# TYPE paygate_test_in_flight gauge\n"
                                   "paygate_test_in_flight -2\n");
    metrics_text_free(&text);
    metrics_gauge_set(s, 42);
    assert_int_equal(metrics_series_value(s), 42);
    metrics_destroy(&m);
}

static void test_histogram_cumulative_buckets(void **state)
{
    (void)state;
    metrics_t *m = metrics_new();
    const double bounds[] = {0.005, 0.1, 1, 2.5};
    const char *const labels[] = {"route", NULL};
    metrics_family_t *f =
        metrics_histogram_family(m, "paygate_test_duration_seconds", "Latency.", labels, bounds, 4);
    assert_non_null(f);
    const char *const route[] = {"/x"};
    metrics_series_t *s = metrics_series(f, route);
    metrics_histogram_observe(s, 0.001); /* le 0.005 */
    metrics_histogram_observe(s, 0.005); /* le 0.005: bounds are inclusive */
    metrics_histogram_observe(s, 0.5);   /* le 1 */
    metrics_histogram_observe(s, 3.0);   /* only +Inf */
    metrics_histogram_observe(s, NAN);   /* ignored */
    assert_int_equal(metrics_series_value(s), 4);
    metrics_text_t text = render(m);
    assert_string_equal(text.data,
                        "# HELP paygate_test_duration_seconds Latency.\n"
                        "# TYPE paygate_test_duration_seconds histogram\n"
                        "paygate_test_duration_seconds_bucket{route=\"/x\",le=\"0.005\"} 2\n"
                        "paygate_test_duration_seconds_bucket{route=\"/x\",le=\"0.1\"} 2\n"
                        "paygate_test_duration_seconds_bucket{route=\"/x\",le=\"1\"} 3\n"
                        "paygate_test_duration_seconds_bucket{route=\"/x\",le=\"2.5\"} 3\n"
                        "paygate_test_duration_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4\n"
                        "paygate_test_duration_seconds_sum{route=\"/x\"} 3.5060000000000002\n"
                        "paygate_test_duration_seconds_count{route=\"/x\"} 4\n");
    metrics_text_free(&text);
    metrics_destroy(&m);
}

static void test_text_writer_floats(void **state)
{
    (void)state;
    metrics_text_t text;
    metrics_text_init(&text);
    metrics_text_family(&text, "paygate_x", "gauge", "x");
    metrics_text_sample_double(&text, "paygate_x", NULL, NULL, 0, INFINITY);
    metrics_text_sample_double(&text, "paygate_x", NULL, NULL, 0, -INFINITY);
    metrics_text_sample_double(&text, "paygate_x", NULL, NULL, 0, NAN);
    metrics_text_sample_double(&text, "paygate_x", NULL, NULL, 0, 0.25);
    metrics_text_sample_u64(&text, "paygate_x", NULL, NULL, 0, UINT64_MAX);
    assert_string_equal(text.data, "# HELP paygate_x x\n# TYPE paygate_x gauge\n"
                                   "paygate_x +Inf\npaygate_x -Inf\npaygate_x NaN\n"
                                   "paygate_x 0.25\npaygate_x 18446744073709551615\n");
    metrics_text_free(&text);
}

static void test_names_and_limits(void **state)
{
    (void)state;
    metrics_t *m = metrics_new();
    const char *const bad_label[] = {"le", NULL};
    const char *const reserved[] = {"__name", NULL};
    const char *const five[] = {"a", "b", "c", "d", "e", NULL};
    const double bounds[] = {1, 1};
    const char *const labels_one[] = {"a", NULL};
    assert_null(metrics_counter_family(m, "9starts_with_digit", "x", NULL));
    assert_null(metrics_counter_family(m, "has-dash", "x", NULL));
    assert_null(metrics_counter_family(m, "", "x", NULL));
    assert_null(metrics_counter_family(m, "paygate_ok", "x", reserved));
    assert_null(metrics_counter_family(m, "paygate_ok", "x", five));
    assert_null(metrics_histogram_family(m, "paygate_h", "x", bad_label, (double[]){1}, 1));
    assert_null(
        metrics_histogram_family(m, "paygate_h", "x", NULL, bounds, 2)); /* not increasing */
    assert_null(metrics_histogram_family(m, "paygate_h", "x", NULL, bounds, 0));
    metrics_family_t *ok = metrics_counter_family(m, "paygate_ok", "x", NULL);
    assert_non_null(ok);
    assert_ptr_equal(metrics_counter_family(m, "paygate_ok", "again", NULL), ok); /* shared */
    assert_null(metrics_gauge_family(m, "paygate_ok", "x", NULL));         /* taken by a counter */
    assert_null(metrics_counter_family(m, "paygate_ok", "x", labels_one)); /* other labels */

    const char *const labels[] = {"id", NULL};
    metrics_family_t *f = metrics_counter_family(m, "paygate_many_total", "x", labels);
    for (int i = 0; i < metrics_series_max; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        const char *const values[] = {id};
        assert_non_null(metrics_series(f, values));
    }
    const char *const one_more[] = {"overflow"};
    assert_null(metrics_series(f, one_more));
    metrics_counter_add(metrics_series(f, one_more), 1); /* a no-op, not a crash */
    const char *const existing[] = {"7"};
    assert_non_null(metrics_series(f, existing)); /* old series still found */
    metrics_destroy(&m);
}

enum { threads_count = 4, increments_per_thread = 100000 };

typedef struct {
    metrics_family_t *counter;
    metrics_family_t *histogram;
} shared_t;

static void *count_a_lot(void *arg)
{
    shared_t *shared = arg;
    const char *const values[] = {"shared"};
    for (int i = 0; i < increments_per_thread; i++) {
        /* resolving every time: the lookup races the first creation */
        metrics_counter_add(metrics_series(shared->counter, values), 1);
        metrics_histogram_observe(metrics_series(shared->histogram, values), 0.5);
    }
    return NULL;
}

static void test_threads_lose_nothing(void **state)
{
    (void)state;
    metrics_t *m = metrics_new();
    const char *const labels[] = {"kind", NULL};
    const double bounds[] = {1};
    shared_t shared = {
        .counter = metrics_counter_family(m, "paygate_test_total", "x", labels),
        .histogram = metrics_histogram_family(m, "paygate_test_seconds", "x", labels, bounds, 1),
    };
    pthread_t threads[threads_count];
    for (int i = 0; i < threads_count; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, count_a_lot, &shared), 0);
    for (int i = 0; i < threads_count; i++)
        pthread_join(threads[i], NULL);
    const char *const values[] = {"shared"};
    assert_int_equal(metrics_series_value(metrics_series(shared.counter, values)),
                     threads_count * increments_per_thread);
    assert_int_equal(metrics_series_value(metrics_series(shared.histogram, values)),
                     threads_count * increments_per_thread);
    metrics_text_t text = render(m);
    /* one series each, and the sum is exact (0.5 is a binary fraction) */
    assert_non_null(strstr(text.data, "paygate_test_total{kind=\"shared\"} 400000\n"));
    assert_non_null(strstr(text.data, "paygate_test_seconds_sum{kind=\"shared\"} 200000\n"));
    assert_non_null(strstr(text.data, "paygate_test_seconds_bucket{kind=\"shared\",le=\"1\"} "
                                      "400000\n"));
    metrics_text_free(&text);
    metrics_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_with_escaped_labels),
        cmocka_unit_test(test_gauge_without_labels),
        cmocka_unit_test(test_histogram_cumulative_buckets),
        cmocka_unit_test(test_text_writer_floats),
        cmocka_unit_test(test_names_and_limits),
        cmocka_unit_test(test_threads_lose_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
