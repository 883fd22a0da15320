/*
 * outbox relay: the thread that moves outbox rows to the event bus. See
 * outbox.h for the guarantees.
 *
 * A pass: BEGIN; lock up to outbox_batch_max unsent rows in id order (SKIP
 * LOCKED, so that several instances of a service share the work);
 * publish them in waves, each wave sent at once and then awaited
 * (rpc_client_publish_many: the broker stores a wave with one fsync),
 * where a wave holds at most one event per key: the first of each key,
 * then the second, and so on; stop after a wave in which a publish
 * failed (a key's order is kept: its next event was not sent, and the
 * next pass starts with the failed one); mark the published ones sent,
 * all in one statement; COMMIT. Sent rows older than a day are deleted
 * now and then.
 */
#include "outbox.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock/clock.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "pg/pg.h"
#include "rpc/rpc.h"
#include "wire/wire.h"

enum { cleanup_interval_ms = 60000, relay_retry_ms = 500 };

struct outbox_relay {
    outbox_relay_config_t config;
    char pg_dsn[1024];
    char schema[64];
    char endpoint[256];
    pthread_t thread;
    atomic_int stopping;
    uint64_t published;
    Paygate__V1__Code last_failure;     /* OK after a success */
    metrics_series_t *published_metric; /* NULL: no metrics */
    metrics_series_t *backlog_metric;
};

static const char pick_sql[] =
    "SELECT id, event_id, topic, key, encode(payload, 'hex') FROM outbox"
    " WHERE sent_at IS NULL ORDER BY id LIMIT $1::int FOR UPDATE SKIP LOCKED";
/* $1: the ids, as an array literal "{1,2,3}" */
static const char mark_sql[] = "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])";
static const char cleanup_sql[] =
    "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < now() - interval '1 day'";
static const char backlog_sql[] = "SELECT count(*) FROM outbox WHERE sent_at IS NULL";

char *outbox_payload_hex(const ProtobufCMessage *message)
{
    size_t size = protobuf_c_message_get_packed_size(message);
    if (size > outbox_payload_bytes_max)
        return NULL;
    uint8_t *packed = malloc(size + 1);
    char *hex = malloc(2 * size + 1);
    if (packed == NULL || hex == NULL) {
        free(packed);
        free(hex);
        return NULL;
    }
    protobuf_c_message_pack(message, packed);
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < size; i++) {
        hex[2 * i] = digits[packed[i] >> 4];
        hex[2 * i + 1] = digits[packed[i] & 15];
    }
    hex[2 * size] = '\0';
    free(packed);
    return hex;
}

void outbox_now_rfc3339(char *out, size_t out_size)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    snprintf(out, out_size, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000);
}

/* The value of hex digit 'c', or -1. */
static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes 'hex' into a new buffer; sets '*len'. NULL on bad input. */
static uint8_t *hex_decode(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    if (n % 2 != 0)
        return NULL;
    uint8_t *out = malloc(n / 2 + 1);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n / 2; i++) {
        int high = hex_digit(hex[2 * i]), low = hex_digit(hex[2 * i + 1]);
        if (high < 0 || low < 0) {
            free(out);
            return NULL;
        }
        out[i] = (uint8_t)(high << 4 | low);
    }
    *len = n / 2;
    return out;
}

/* Sets the backlog gauge to the number of unsent rows (kept as it was
 * when the count fails). */
static void relay_count_backlog(outbox_relay_t *self, pg_conn_t *pg)
{
    PGresult *rows = NULL;
    if (pg_exec_prepared(pg, "outbox_backlog", backlog_sql, 0, NULL, &rows) != PG_OK)
        return;
    metrics_gauge_set(self->backlog_metric, strtoll(PQgetvalue(rows, 0, 0), NULL, 10));
    PQclear(rows);
}

/* One pass; returns rows published, or -1 when it could not work or a
 * publish failed (those published are marked sent all the same). */
static int relay_pass(outbox_relay_t *self, pg_conn_t *pg, rpc_client_t *rpc)
{
    if (pg_begin(pg) != PG_OK)
        return -1;
    char batch[16];
    snprintf(batch, sizeof batch, "%d", outbox_batch_max);
    const char *params[] = {batch};
    PGresult *rows = NULL;
    if (pg_exec_prepared(pg, "outbox_pick", pick_sql, 1, params, &rows) != PG_OK) {
        pg_rollback(pg);
        return -1;
    }
    int count = PQntuples(rows);
    uint8_t *payloads[outbox_batch_max];
    size_t lengths[outbox_batch_max];
    int wave[outbox_batch_max];
    bool sent[outbox_batch_max] = {0};
    if (count > outbox_batch_max)
        count = outbox_batch_max;
    for (int i = 0; i < count; i++) {
        payloads[i] = hex_decode(PQgetvalue(rows, i, 4), &lengths[i]);
        if (payloads[i] == NULL) { /* cannot be: the column is hex of bytea */
            count = i;
            break;
        }
        /* A key's events go in order: each goes out in the wave after its
         * key's event before it (one wave is published at once, and an
         * event may be stored while one before it in its wave failed). */
        wave[i] = 0;
        const char *key = PQgetvalue(rows, i, 3);
        for (int j = 0; key[0] != '\0' && j < i; j++)
            if (wave[j] >= wave[i] && strcmp(PQgetvalue(rows, j, 3), key) == 0)
                wave[i] = wave[j] + 1;
    }
    int published = 0;
    bool failed = false;
    for (int w = 0; !failed; w++) {
        rpc_publish_item_t items[outbox_batch_max];
        int rows_of[outbox_batch_max];
        size_t n = 0;
        for (int i = 0; i < count; i++) {
            if (wave[i] != w)
                continue;
            items[n] = (rpc_publish_item_t){.topic = PQgetvalue(rows, i, 2),
                                            .event_id = PQgetvalue(rows, i, 1),
                                            .key = PQgetvalue(rows, i, 3),
                                            .payload = payloads[i],
                                            .payload_len = lengths[i]};
            rows_of[n++] = i;
        }
        if (n == 0)
            break;
        rpc_client_publish_many(rpc, items, n, self->config.publish_deadline_ms);
        for (size_t k = 0; k < n; k++) {
            Paygate__V1__Code code = items[k].code;
            if (code == PAYGATE__V1__CODE__OK) {
                sent[rows_of[k]] = true;
                published++;
                continue;
            }
            /* Say it once per kind of failure, not once per pass. */
            if (!failed && code != self->last_failure)
                log_warn("outbox: publish of %s failed (%s); will retry", items[k].event_id,
                         wire_code_name(code));
            if (!failed)
                self->last_failure = code;
            failed = true;
        }
        if (!failed)
            self->last_failure = PAYGATE__V1__CODE__OK;
    }
    /* "{id,id,...}": up to outbox_batch_max ids of at most 20 digits */
    char ids[2 + outbox_batch_max * 21];
    size_t ids_len = 0;
    ids[ids_len++] = '{';
    for (int i = 0; i < count; i++) {
        free(payloads[i]);
        if (sent[i])
            ids_len += (size_t)snprintf(ids + ids_len, sizeof ids - ids_len, "%s%s",
                                        ids_len > 1 ? "," : "", PQgetvalue(rows, i, 0));
    }
    snprintf(ids + ids_len, sizeof ids - ids_len, "}");
    /* One statement marks the batch (one per row cost a round trip each). */
    const char *mark[] = {ids};
    if (published > 0 && pg_exec_prepared(pg, "outbox_mark", mark_sql, 1, mark, NULL) != PG_OK) {
        published = 0; /* not marked: they go again next pass */
        failed = true;
    }
    PQclear(rows);
    if (pg_commit(pg) != PG_OK)
        return -1;
    if (published > 0) {
        self->published += (uint64_t)published;
        metrics_counter_add(self->published_metric, (uint64_t)published);
    }
    return failed ? -1 : published;
}

static void *relay_main(void *arg)
{
    outbox_relay_t *self = arg;
    pg_conn_t *pg = pg_conn_new(self->pg_dsn, self->schema);
    rpc_client_t *rpc = rpc_client_new(NULL, self->endpoint);
    if (pg == NULL || rpc == NULL) {
        log_error("outbox: relay cannot start");
        pg_conn_destroy(&pg);
        rpc_client_destroy(&rpc);
        return NULL;
    }
    int64_t next_cleanup = clock_now_ms() + cleanup_interval_ms;
    int64_t next_backlog = 0;
    while (!atomic_load(&self->stopping)) {
        int published = relay_pass(self, pg, rpc);
        if (self->backlog_metric != NULL && clock_now_ms() >= next_backlog) {
            relay_count_backlog(self, pg);
            next_backlog = clock_now_ms() + outbox_backlog_interval_ms;
        }
        if (clock_now_ms() >= next_cleanup) {
            pg_exec_prepared(pg, "outbox_cleanup", cleanup_sql, 0, NULL, NULL);
            next_cleanup = clock_now_ms() + cleanup_interval_ms;
        }
        if (published >= outbox_batch_max)
            continue; /* more waiting */
        int64_t until =
            clock_now_ms() + (published < 0 ? relay_retry_ms : self->config.interval_ms);
        while (!atomic_load(&self->stopping) && clock_now_ms() < until)
            usleep(10 * 1000);
    }
    log_info("outbox: relay stopped after %llu events", (unsigned long long)self->published);
    rpc_client_destroy(&rpc);
    pg_conn_destroy(&pg);
    return NULL;
}

outbox_relay_t *outbox_relay_start(const outbox_relay_config_t *config)
{
    outbox_relay_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    snprintf(self->pg_dsn, sizeof self->pg_dsn, "%s", config->pg_dsn);
    snprintf(self->schema, sizeof self->schema, "%s", config->schema);
    snprintf(self->endpoint, sizeof self->endpoint, "%s", config->broker_endpoint);
    if (self->config.interval_ms == 0)
        self->config.interval_ms = 50;
    if (self->config.publish_deadline_ms == 0)
        self->config.publish_deadline_ms = 2000;
    if (config->metrics != NULL) {
        const char *const labels[] = {"outbox", NULL};
        const char *const values[] = {self->schema};
        self->published_metric =
            metrics_series(metrics_counter_family(
                               config->metrics, "paygate_outbox_published_total",
                               "Outbox rows published to the event bus and marked sent.", labels),
                           values);
        self->backlog_metric = metrics_series(
            metrics_gauge_family(config->metrics, "paygate_outbox_backlog_events",
                                 "Outbox rows not yet relayed to the event bus (counted every "
                                 "second by the relay).",
                                 labels),
            values);
    }
    if (pthread_create(&self->thread, NULL, relay_main, self) != 0) {
        free(self);
        return NULL;
    }
    return self;
}

void outbox_relay_stop(outbox_relay_t **self)
{
    if (*self == NULL)
        return;
    atomic_store(&(*self)->stopping, 1);
    pthread_join((*self)->thread, NULL);
    free(*self);
    *self = NULL;
}

int64_t outbox_backlog(const char *pg_dsn, const char *schema)
{
    pg_conn_t *pg = pg_conn_new(pg_dsn, schema);
    PGresult *rows = NULL;
    int64_t count = -1;
    if (pg != NULL && pg_exec(pg, backlog_sql, 0, NULL, &rows) == PG_OK) {
        count = strtoll(PQgetvalue(rows, 0, 0), NULL, 10);
        PQclear(rows);
    }
    pg_conn_destroy(&pg);
    return count;
}
