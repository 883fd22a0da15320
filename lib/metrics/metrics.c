/*
 * metrics: families, series and the text format. See metrics.h.
 *
 * Memory layout: a family holds a fixed array of series pointers and an
 * atomic count of the published ones. A series is fully built (label
 * values copied, values zero) before a release-store of the count makes it
 * visible; readers load the count with acquire and scan [0, count), so a
 * series they see is complete. Series are created under the family's
 * mutex (a second creator re-scans first) and freed only by
 * metrics_destroy().
 *
 * Histogram buckets are stored per bucket (not cumulative) so that one
 * observation is one atomic increment; rendering accumulates them. The
 * sum is a double updated by compare-and-swap on its bits.
 */
#include "metrics.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"

typedef enum { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM } kind_t;

struct metrics_series {
    metrics_family_t *family;
    char values[metrics_labels_max][metrics_label_value_bytes_max + 1];
    _Atomic int64_t value;                             /* counter, gauge */
    _Atomic uint64_t buckets[metrics_buckets_max + 1]; /* histogram; last: +Inf */
    _Atomic uint64_t sum_bits;                         /* histogram sum, a double's bits */
};

struct metrics_family {
    kind_t kind;
    char name[metrics_name_bytes_max + 1];
    char help[metrics_help_bytes_max + 1];
    char labels[metrics_labels_max][metrics_name_bytes_max + 1];
    size_t label_count;
    double bounds[metrics_buckets_max];
    size_t bound_count;
    pthread_mutex_t lock; /* creating series */
    metrics_series_t *series[metrics_series_max];
    _Atomic size_t series_count;
    atomic_bool full_logged;
};

struct metrics {
    pthread_mutex_t lock; /* registering families */
    metrics_family_t *families[metrics_families_max];
    _Atomic size_t family_count;
};

/* ---- names ------------------------------------------------------------- */

/* A Prometheus metric or label name: [a-zA-Z_][a-zA-Z0-9_]* (we do not
 * use the colon, reserved for recording rules). */
static bool name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > metrics_name_bytes_max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

/* ---- registry ---------------------------------------------------------- */

metrics_t *metrics_new(void)
{
    metrics_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    return self;
}

void metrics_destroy(metrics_t **self_p)
{
    metrics_t *self = *self_p;
    if (self == NULL)
        return;
    size_t families = atomic_load(&self->family_count);
    for (size_t i = 0; i < families; i++) {
        metrics_family_t *f = self->families[i];
        size_t count = atomic_load(&f->series_count);
        for (size_t k = 0; k < count; k++)
            free(f->series[k]);
        pthread_mutex_destroy(&f->lock);
        free(f);
    }
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

/* True when 'a' and 'b' have the same kind, labels and buckets. */
static bool family_same_shape(const metrics_family_t *a, const metrics_family_t *b)
{
    if (a->kind != b->kind || a->label_count != b->label_count || a->bound_count != b->bound_count)
        return false;
    for (size_t i = 0; i < a->label_count; i++) {
        if (strcmp(a->labels[i], b->labels[i]) != 0)
            return false;
    }
    return memcmp(a->bounds, b->bounds, a->bound_count * sizeof a->bounds[0]) == 0;
}

/* Registers a family of 'kind'; the public constructors check their own
 * arguments first. */
static metrics_family_t *family_add(metrics_t *self, kind_t kind, const char *name,
                                    const char *help, const char *const *labels,
                                    const double *bounds, size_t bound_count)
{
    if (self == NULL)
        return NULL;
    if (!name_valid(name)) {
        log_error("metrics: '%s' is not a valid metric name", name);
        return NULL;
    }
    size_t label_count = 0;
    for (; labels != NULL && labels[label_count] != NULL; label_count++) {
        const char *label = labels[label_count];
        if (label_count == metrics_labels_max || !name_valid(label) ||
            strncmp(label, "__", 2) == 0 || (kind == KIND_HISTOGRAM && strcmp(label, "le") == 0)) {
            log_error("metrics: %s: label '%s' is invalid, reserved or one too many", name, label);
            return NULL;
        }
    }
    metrics_family_t *family = calloc(1, sizeof *family);
    if (family == NULL)
        return NULL;
    family->kind = kind;
    snprintf(family->name, sizeof family->name, "%s", name);
    snprintf(family->help, sizeof family->help, "%s", help ? help : "");
    for (size_t i = 0; i < label_count; i++)
        snprintf(family->labels[i], sizeof family->labels[i], "%s", labels[i]);
    family->label_count = label_count;
    for (size_t i = 0; i < bound_count; i++)
        family->bounds[i] = bounds[i];
    family->bound_count = bound_count;
    pthread_mutex_init(&family->lock, NULL);

    pthread_mutex_lock(&self->lock);
    size_t count = atomic_load(&self->family_count);
    bool taken = false;
    for (size_t i = 0; i < count && !taken; i++) {
        metrics_family_t *other = self->families[i];
        if (strcmp(other->name, name) != 0)
            continue;
        if (family_same_shape(other, family)) { /* registered again: the same family */
            pthread_mutex_unlock(&self->lock);
            pthread_mutex_destroy(&family->lock);
            free(family);
            return other;
        }
        taken = true;
    }
    if (taken || count == metrics_families_max) {
        pthread_mutex_unlock(&self->lock);
        log_error("metrics: cannot register %s (%s)", name,
                  taken ? "name taken" : "too many families");
        pthread_mutex_destroy(&family->lock);
        free(family);
        return NULL;
    }
    self->families[count] = family;
    atomic_store_explicit(&self->family_count, count + 1, memory_order_release);
    pthread_mutex_unlock(&self->lock);
    return family;
}

metrics_family_t *metrics_counter_family(metrics_t *self, const char *name, const char *help,
                                         const char *const *labels)
{
    return family_add(self, KIND_COUNTER, name, help, labels, NULL, 0);
}

metrics_family_t *metrics_gauge_family(metrics_t *self, const char *name, const char *help,
                                       const char *const *labels)
{
    return family_add(self, KIND_GAUGE, name, help, labels, NULL, 0);
}

metrics_family_t *metrics_histogram_family(metrics_t *self, const char *name, const char *help,
                                           const char *const *labels, const double *bounds,
                                           size_t bound_count)
{
    bool ok = bound_count >= 1 && bound_count <= metrics_buckets_max;
    for (size_t i = 0; ok && i < bound_count; i++)
        ok = isfinite(bounds[i]) && (i == 0 || bounds[i] > bounds[i - 1]);
    if (!ok) {
        log_error("metrics: %s: 1..%d finite, strictly increasing bucket bounds are required", name,
                  metrics_buckets_max);
        return NULL;
    }
    return family_add(self, KIND_HISTOGRAM, name, help, labels, bounds, bound_count);
}

/* True when 's' carries exactly 'values' (already cut to size by the
 * caller's comparison: values are compared up to the stored length). */
static bool series_has(const metrics_series_t *s, const metrics_family_t *f,
                       const char *const *values)
{
    for (size_t i = 0; i < f->label_count; i++) {
        if (strncmp(s->values[i], values[i], metrics_label_value_bytes_max) != 0)
            return false;
    }
    return true;
}

/* The published series of 'f' with 'values', or NULL. Lock-free. */
static metrics_series_t *series_find(metrics_family_t *f, const char *const *values)
{
    size_t count = atomic_load_explicit(&f->series_count, memory_order_acquire);
    for (size_t i = 0; i < count; i++) {
        if (series_has(f->series[i], f, values))
            return f->series[i];
    }
    return NULL;
}

metrics_series_t *metrics_series(metrics_family_t *family, const char *const *values)
{
    if (family == NULL)
        return NULL;
    static const char *const no_values[metrics_labels_max] = {"", "", "", ""};
    if (values == NULL)
        values = no_values;
    metrics_series_t *found = series_find(family, values);
    if (found != NULL)
        return found;
    pthread_mutex_lock(&family->lock);
    found = series_find(family, values); /* another thread may have made it */
    size_t count = atomic_load(&family->series_count);
    if (found == NULL && count < metrics_series_max) {
        found = calloc(1, sizeof *found);
        if (found != NULL) {
            found->family = family;
            for (size_t i = 0; i < family->label_count; i++)
                snprintf(found->values[i], sizeof found->values[i], "%s", values[i]);
            double zero = 0.0;
            uint64_t bits;
            memcpy(&bits, &zero, sizeof bits);
            atomic_init(&found->sum_bits, bits);
            family->series[count] = found;
            atomic_store_explicit(&family->series_count, count + 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&family->lock);
    if (found == NULL && !atomic_exchange(&family->full_logged, true))
        log_warn("metrics: %s has %d series (or memory ran out); further label values are "
                 "not counted",
                 family->name, metrics_series_max);
    return found;
}

/* ---- updates ------------------------------------------------------------ */

void metrics_counter_add(metrics_series_t *s, uint64_t n)
{
    if (s != NULL)
        atomic_fetch_add_explicit(&s->value, (int64_t)n, memory_order_relaxed);
}

void metrics_gauge_set(metrics_series_t *s, int64_t value)
{
    if (s != NULL)
        atomic_store_explicit(&s->value, value, memory_order_relaxed);
}

void metrics_gauge_add(metrics_series_t *s, int64_t delta)
{
    if (s != NULL)
        atomic_fetch_add_explicit(&s->value, delta, memory_order_relaxed);
}

void metrics_histogram_observe(metrics_series_t *s, double value)
{
    if (s == NULL || isnan(value))
        return;
    const metrics_family_t *f = s->family;
    size_t bucket = f->bound_count; /* +Inf */
    for (size_t i = 0; i < f->bound_count; i++) {
        if (value <= f->bounds[i]) {
            bucket = i;
            break;
        }
    }
    uint64_t old_bits = atomic_load_explicit(&s->sum_bits, memory_order_relaxed);
    for (;;) {
        double sum;
        memcpy(&sum, &old_bits, sizeof sum);
        sum += value;
        uint64_t new_bits;
        memcpy(&new_bits, &sum, sizeof new_bits);
        if (atomic_compare_exchange_weak_explicit(&s->sum_bits, &old_bits, new_bits,
                                                  memory_order_relaxed, memory_order_relaxed))
            break;
    }
    atomic_fetch_add_explicit(&s->buckets[bucket], 1, memory_order_relaxed);
}

int64_t metrics_series_value(const metrics_series_t *s)
{
    if (s == NULL)
        return 0;
    if (s->family->kind != KIND_HISTOGRAM)
        return atomic_load_explicit(&s->value, memory_order_relaxed);
    uint64_t count = 0;
    for (size_t i = 0; i <= s->family->bound_count; i++)
        count += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    return (int64_t)count;
}

/* ---- the text buffer ------------------------------------------------------ */

void metrics_text_init(metrics_text_t *text)
{
    memset(text, 0, sizeof *text);
}

void metrics_text_free(metrics_text_t *text)
{
    free(text->data);
    metrics_text_init(text);
}

/* Makes room for 'more' bytes plus the terminating NUL. */
static bool text_reserve(metrics_text_t *text, size_t more)
{
    if (text->failed)
        return false;
    if (text->len + more + 1 <= text->cap)
        return true;
    size_t cap = text->cap ? text->cap : 4096;
    while (cap < text->len + more + 1)
        cap *= 2;
    char *grown = realloc(text->data, cap);
    if (grown == NULL) {
        text->failed = true;
        return false;
    }
    text->data = grown;
    text->cap = cap;
    return true;
}

static void text_append(metrics_text_t *text, const char *bytes, size_t n)
{
    if (!text_reserve(text, n))
        return;
    memcpy(text->data + text->len, bytes, n);
    text->len += n;
    text->data[text->len] = '\0';
}

static void text_puts(metrics_text_t *text, const char *s)
{
    text_append(text, s, strlen(s));
}

/* Appends 's' escaping backslash and newline, and the double quote when
 * 'quote' (label values; HELP text leaves quotes as they are). */
static void text_escaped(metrics_text_t *text, const char *s, bool quote)
{
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '\\')
            text_append(text, "\\\\", 2);
        else if (*p == '\n')
            text_append(text, "\\n", 2);
        else if (*p == '"' && quote)
            text_append(text, "\\\"", 2);
        else
            text_append(text, p, 1);
    }
}

void metrics_text_family(metrics_text_t *text, const char *name, const char *type, const char *help)
{
    text_puts(text, "# HELP ");
    text_puts(text, name);
    text_puts(text, " ");
    text_escaped(text, help, false);
    text_puts(text, "\n# TYPE ");
    text_puts(text, name);
    text_puts(text, " ");
    text_puts(text, type);
    text_puts(text, "\n");
}

void metrics_text_sample(metrics_text_t *text, const char *name, const char *const *names,
                         const char *const *values, size_t count, const char *value)
{
    text_puts(text, name);
    for (size_t i = 0; i < count; i++) {
        text_puts(text, i == 0 ? "{" : ",");
        text_puts(text, names[i]);
        text_puts(text, "=\"");
        text_escaped(text, values[i], true);
        text_puts(text, "\"");
    }
    if (count > 0)
        text_puts(text, "}");
    text_puts(text, " ");
    text_puts(text, value);
    text_puts(text, "\n");
}

void metrics_text_sample_u64(metrics_text_t *text, const char *name, const char *const *names,
                             const char *const *values, size_t count, uint64_t value)
{
    char number[32];
    snprintf(number, sizeof number, "%" PRIu64, value);
    metrics_text_sample(text, name, names, values, count, number);
}

void metrics_text_sample_i64(metrics_text_t *text, const char *name, const char *const *names,
                             const char *const *values, size_t count, int64_t value)
{
    char number[32];
    snprintf(number, sizeof number, "%" PRId64, value);
    metrics_text_sample(text, name, names, values, count, number);
}

/* 'value' as the text format spells floats: the shortest %g text that
 * reads back as the same double (0.005, not 0.0050000000000000001);
 * whole numbers without an exponent (200000, not 2e+05). */
static void format_double(double value, char out[40])
{
    if (isnan(value)) {
        snprintf(out, 40, "NaN");
        return;
    }
    if (isinf(value)) {
        snprintf(out, 40, "%s", value > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (value == trunc(value) && fabs(value) < 1e15) { /* whole: no exponent */
        snprintf(out, 40, "%.0f", value);
        return;
    }
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(out, 40, "%.*g", digits, value);
        if (strtod(out, NULL) == value)
            return;
    }
}

void metrics_text_sample_double(metrics_text_t *text, const char *name, const char *const *names,
                                const char *const *values, size_t count, double value)
{
    char number[40];
    format_double(value, number);
    metrics_text_sample(text, name, names, values, count, number);
}

/* ---- rendering the registry ------------------------------------------------- */

/* Writes histogram series 's': its buckets cumulatively, then sum and
 * count (the count is the +Inf bucket, read once, so they agree). */
static void render_histogram(metrics_text_t *text, const metrics_family_t *f, metrics_series_t *s)
{
    const char *names[metrics_labels_max + 1];
    const char *values[metrics_labels_max + 1];
    for (size_t i = 0; i < f->label_count; i++) {
        names[i] = f->labels[i];
        values[i] = s->values[i];
    }
    names[f->label_count] = "le";
    char name[metrics_name_bytes_max + 16];
    snprintf(name, sizeof name, "%s_bucket", f->name);
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= f->bound_count; b++) {
        cumulative += atomic_load_explicit(&s->buckets[b], memory_order_relaxed);
        char le[40];
        format_double(b == f->bound_count ? INFINITY : f->bounds[b], le);
        values[f->label_count] = le;
        metrics_text_sample_u64(text, name, names, values, f->label_count + 1, cumulative);
    }
    uint64_t bits = atomic_load_explicit(&s->sum_bits, memory_order_relaxed);
    double sum;
    memcpy(&sum, &bits, sizeof sum);
    snprintf(name, sizeof name, "%s_sum", f->name);
    metrics_text_sample_double(text, name, names, values, f->label_count, sum);
    snprintf(name, sizeof name, "%s_count", f->name);
    metrics_text_sample_u64(text, name, names, values, f->label_count, cumulative);
}

void metrics_render(metrics_t *self, metrics_text_t *text)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    size_t families = atomic_load_explicit(&self->family_count, memory_order_acquire);
    for (size_t i = 0; i < families; i++) {
        metrics_family_t *f = self->families[i];
        metrics_text_family(text, f->name, type_names[f->kind], f->help);
        size_t count = atomic_load_explicit(&f->series_count, memory_order_acquire);
        const char *names[metrics_labels_max];
        for (size_t l = 0; l < f->label_count; l++)
            names[l] = f->labels[l];
        for (size_t k = 0; k < count; k++) {
            metrics_series_t *s = f->series[k];
            if (f->kind == KIND_HISTOGRAM) {
                render_histogram(text, f, s);
                continue;
            }
            const char *values[metrics_labels_max];
            for (size_t l = 0; l < f->label_count; l++)
                values[l] = s->values[l];
            metrics_text_sample_i64(text, f->name, names, values, f->label_count,
                                    atomic_load_explicit(&s->value, memory_order_relaxed));
        }
    }
}
