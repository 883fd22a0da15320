/*
 * metrics: counters, gauges and histograms, rendered in the Prometheus
 * text exposition format 0.0.4.
 *
 * A process owns one metrics_t. It registers families at start-up (a
 * name like paygate_<area>_<thing>_<unit>, a help text, a fixed list of
 * at most metrics_labels_max label names, and for a histogram its fixed
 * bucket bounds), resolves a series (one combination of label values)
 * when it first needs it, and then updates the series with lock-free
 * atomics from any thread. Only creating a series takes a lock; looking
 * one up and updating it never does, so the hot path never waits.
 *
 * The number of series per family is bounded (metrics_series_max): label
 * values must come from small fixed sets (a route template, a status
 * code, a method name), never from user input such as a raw path. When a
 * family is full, metrics_series() returns NULL and every update of NULL
 * is a no-op (the first refusal is logged).
 *
 * Series are never removed. Values that come and go with the state of
 * something else (a broker's services) are better rendered from a
 * snapshot with the metrics_text_* writer below, which escapes exactly
 * as metrics_render() does.
 *
 * This module never does I/O; metrics_server.h serves the text over HTTP.
 */
#ifndef PAYGATE_METRICS_H
#define PAYGATE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    metrics_labels_max = 4,              /* label names per family */
    metrics_series_max = 512,            /* label value combinations per family */
    metrics_families_max = 64,           /* families per metrics_t */
    metrics_buckets_max = 16,            /* histogram bounds, +Inf not counted */
    metrics_label_value_bytes_max = 128, /* longer values are cut */
    metrics_name_bytes_max = 96,
    metrics_help_bytes_max = 256,
};

typedef struct metrics metrics_t;
typedef struct metrics_family metrics_family_t;
typedef struct metrics_series metrics_series_t;

/* A new, empty set of families. NULL on OOM. */
metrics_t *metrics_new(void);

/* Frees every family and series and sets '*self' to NULL. No thread may
 * still update a series of it. */
void metrics_destroy(metrics_t **self);

/* Registers a counter family 'name' with 'help' and the NULL-ended label
 * names 'labels' (NULL: none). Returns the family, or NULL (after
 * logging) when the name or a label name is not a valid Prometheus name,
 * the name is taken by a family of another kind, labels or buckets, or a
 * limit is reached. Registering the same family again returns the first
 * one (so two modules of a process may share it). */
metrics_family_t *metrics_counter_family(metrics_t *self, const char *name, const char *help,
                                         const char *const *labels);

/* Same for a gauge (a signed value that goes up and down). */
metrics_family_t *metrics_gauge_family(metrics_t *self, const char *name, const char *help,
                                       const char *const *labels);

/* Same for a histogram with 'bound_count' (1..metrics_buckets_max)
 * strictly increasing upper bounds 'bounds' (the +Inf bucket is
 * implicit). 'labels' may not contain "le". */
metrics_family_t *metrics_histogram_family(metrics_t *self, const char *name, const char *help,
                                           const char *const *labels, const double *bounds,
                                           size_t bound_count);

/* The series of 'family' for the label 'values' (as many as the family has
 * label names, in the same order; NULL when it has none), created at zero
 * on first use. Values longer than metrics_label_value_bytes_max are cut.
 * NULL when 'family' is NULL or full. Thread-safe. */
metrics_series_t *metrics_series(metrics_family_t *family, const char *const *values);

/* Adds 'n' to counter series 's' (NULL: nothing). */
void metrics_counter_add(metrics_series_t *s, uint64_t n);

/* Sets gauge series 's' to 'value', or adds 'delta' to it (NULL: nothing). */
void metrics_gauge_set(metrics_series_t *s, int64_t value);
void metrics_gauge_add(metrics_series_t *s, int64_t delta);

/* Counts 'value' into histogram series 's' (NULL: nothing): one bucket,
 * the sum and the count. */
void metrics_histogram_observe(metrics_series_t *s, double value);

/* The current value of a counter or gauge series (0 for NULL); the
 * count of a histogram series. For tests and assertions. */
int64_t metrics_series_value(const metrics_series_t *s);

/* ---- text exposition -------------------------------------------------- */

/* A growing text buffer. 'failed' is set (and text stops growing) when
 * memory runs out; the renderer then answers 500. */
typedef struct {
    char *data; /* NUL-terminated while not failed */
    size_t len;
    size_t cap;
    bool failed;
} metrics_text_t;

/* An empty buffer (no allocation yet). */
void metrics_text_init(metrics_text_t *text);

/* Frees the buffer's memory and empties it. */
void metrics_text_free(metrics_text_t *text);

/* Writes the "# HELP" (help escaped: backslash and newline) and "# TYPE"
 * lines of family 'name' of 'type' ("counter", "gauge", "histogram"). */
void metrics_text_family(metrics_text_t *text, const char *name, const char *type,
                         const char *help);

/* Writes one sample line: 'name', then the 'count' labels 'names'='values'
 * in braces (values escaped: backslash, double quote, newline; no braces
 * when 'count' is 0), a space and 'value' (already formatted). */
void metrics_text_sample(metrics_text_t *text, const char *name, const char *const *names,
                         const char *const *values, size_t count, const char *value);

/* The same with an unsigned, signed or floating-point value. Floats are
 * written with up to 17 significant digits, +Inf/-Inf/NaN as Prometheus
 * spells them. */
void metrics_text_sample_u64(metrics_text_t *text, const char *name, const char *const *names,
                             const char *const *values, size_t count, uint64_t value);
void metrics_text_sample_i64(metrics_text_t *text, const char *name, const char *const *names,
                             const char *const *values, size_t count, int64_t value);
void metrics_text_sample_double(metrics_text_t *text, const char *name, const char *const *names,
                                const char *const *values, size_t count, double value);

/* Appends every family of 'self', in registration order, series in
 * creation order, to 'text'. Histograms as <name>_bucket (cumulative, le
 * ending with "+Inf"), <name>_sum and <name>_count. Thread-safe; values
 * are read one by one, so a scrape taken while another thread updates
 * may be a few increments apart between series (never torn). */
void metrics_render(metrics_t *self, metrics_text_t *text);

/* The Content-Type of the text format. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
