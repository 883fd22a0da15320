/*
 * recorder: money events from the event bus become transactions.
 *
 * The consumer thread (lib/events) hands the events of topics "payments"
 * and "wallet" to recorder_on_events(), as many at once as the bus has
 * delivered meanwhile. Each payload is a MoneyEvent (proto/events.proto);
 * a movement of money becomes one row, and the rows of one call are
 * inserted by one statement (pg_exec_prepared_rows: one round trip, one
 * commit, the table's constraints set up once; when it fails, each event
 * goes again alone):
 *
 *   PAYMENT_SUCCEEDED -> PAYMENT  "₹1,000 paid for Order #ord_..."
 *   REFUND_SUCCEEDED  -> REFUND   "₹200 refunded for Order #ord_..."
 *   TOPUP_SUCCEEDED   -> TOPUP    "₹2,000 added to wallet"
 *   PAYMENT_FAILED    -> nothing: no money moved (acknowledged)
 *
 * The bus delivers at least once, so recording is idempotent by event id:
 * one INSERT ... ON CONFLICT (event_id) DO NOTHING, with no check-then-
 * insert window. A repeat is acknowledged again (and compared with the
 * first: a different movement under the same id is logged as an error).
 * The schema also refuses a second row for the same payment, refund or
 * top-up under another event id.
 *
 * What is acknowledged and what is not:
 *   - recorded, recorded before, or no movement: acknowledged;
 *   - malformed (not a MoneyEvent, an unknown type, a missing or invalid
 *     field, a time the database cannot read): logged and acknowledged,
 *     since it can never succeed and an unacknowledged event holds back
 *     its user's later events (the bus keeps one key's events in order);
 *   - the database unavailable, or an unexpected database error: not
 *     acknowledged, so the bus delivers it again later (and dead-letters
 *     it after its max_deliveries).
 *
 * It must never record an event it could not fully validate, and never
 * block the consumer thread for long (the thread also heartbeats).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock/clock.h"
#include "events.pb-c.h"
#include "id/id.h"
#include "log/log.h"
#include "money/money.h"
#include "transaction_service.h"
#include "wire/wire.h"

struct recorder {
    pg_conn_t *pg;
    int64_t database_retry_at_ms; /* monotonic; 0: try at once */
    uint64_t recorded;            /* new rows */
    uint64_t repeated;            /* events (or movements) recorded before */
    uint64_t ignored;             /* events that move no money */
    uint64_t malformed;           /* acknowledged without a row */
    uint64_t deferred;            /* left for redelivery */
};

/* One validated movement, ready to insert. Absent references are NULL. */
typedef struct {
    const char *event_id;
    const char *user_id;
    const char *type; /* "PAYMENT", "REFUND", "TOPUP" */
    int64_t amount;
    const char *currency;
    const char *order_id;
    const char *payment_id;
    const char *refund_id;
    const char *topup_id;
    char created_at[40]; /* RFC 3339 */
    char description[transaction_description_bytes_max];
} movement_t;

/* $1 id, $2 event, $3 user, $4 type, $5 amount, $6 currency, $7 order,
 * $8 payment, $9 refund, $10 top-up, $11 description, $12 created_at */
static const char record_sql[] =
    "INSERT INTO transactions (id, event_id, user_id, type, amount, currency, order_id,"
    " payment_id, refund_id, topup_id, description, created_at)"
    " VALUES ($1, $2, $3, $4, $5::bigint, $6, $7, $8, $9, $10, $11, $12::timestamptz)"
    " ON CONFLICT (event_id) DO NOTHING RETURNING id";

/* record_sql for many rows at once: $1..$12 are arrays of the columns
 * (pg_exec_prepared_rows); answers the event ids it inserted. */
static const char record_rows_sql[] =
    "INSERT INTO transactions (id, event_id, user_id, type, amount, currency, order_id,"
    " payment_id, refund_id, topup_id, description, created_at)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],"
    "                      $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],"
    "                      $11::text[], $12::timestamptz[])"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id";

/* $1 event */
static const char recorded_sql[] = "SELECT id, user_id, type, amount FROM transactions"
                                   " WHERE event_id = $1";

recorder_t *recorder_new(const char *pg_dsn)
{
    recorder_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->pg = pg_conn_new(pg_dsn, "transactions");
    if (self->pg == NULL) {
        free(self);
        return NULL;
    }
    return self;
}

void recorder_destroy(recorder_t **self)
{
    if (*self == NULL)
        return;
    recorder_t *r = *self;
    log_info("recorder: %" PRIu64 " recorded, %" PRIu64 " repeats, %" PRIu64
             " without movement, %" PRIu64 " malformed, %" PRIu64 " deferred",
             r->recorded, r->repeated, r->ignored, r->malformed, r->deferred);
    pg_conn_destroy(&r->pg);
    free(r);
    *self = NULL;
}

/* 'text' when it is safe to log (a printable token of at most 128 bytes),
 * else a placeholder: payload strings are untrusted. */
static const char *loggable(const char *text)
{
    if (text == NULL || text[0] == '\0')
        return "(none)";
    return wire_token_valid(text, transaction_event_id_bytes_max) ? text : "(unprintable)";
}

/* Reads 'digits' decimal digits at 'text' into '*value'. */
static bool read_digits(const char *text, int digits, int *value)
{
    *value = 0;
    for (int i = 0; i < digits; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
        *value = *value * 10 + (text[i] - '0');
    }
    return true;
}

/* True when 'text' is an RFC 3339 date-time with an explicit offset,
 * "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)", with every field in
 * range. The day is checked against 31 only: the database refuses
 * 2024-02-30, which the caller then treats as malformed. */
static bool rfc3339_valid(const char *text)
{
    int year, month, day, hour, minute, second, offset_hour, offset_minute;
    if (strnlen(text, 40) >= 40 || !read_digits(text, 4, &year) || text[4] != '-' ||
        !read_digits(text + 5, 2, &month) || text[7] != '-' || !read_digits(text + 8, 2, &day) ||
        text[10] != 'T' || !read_digits(text + 11, 2, &hour) || text[13] != ':' ||
        !read_digits(text + 14, 2, &minute) || text[16] != ':' ||
        !read_digits(text + 17, 2, &second))
        return false;
    if (year < 1 || month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 ||
        second > 60)
        return false;
    const char *p = text + 19;
    if (*p == '.') {
        p++;
        int fraction_digits = 0;
        while (*p >= '0' && *p <= '9') {
            p++;
            fraction_digits++;
        }
        if (fraction_digits < 1 || fraction_digits > 9)
            return false;
    }
    if (p[0] == 'Z' && p[1] == '\0')
        return true;
    return (p[0] == '+' || p[0] == '-') && read_digits(p + 1, 2, &offset_hour) && p[3] == ':' &&
           read_digits(p + 4, 2, &offset_minute) && p[6] == '\0' && offset_hour <= 23 &&
           offset_minute <= 59;
}

/* Writes Unix time 'unix_ms' as RFC 3339 UTC with milliseconds into
 * 'out'. False when it is out of range. */
static bool rfc3339_from_unix_ms(int64_t unix_ms, char *out, size_t out_size)
{
    if (unix_ms <= 0)
        return false;
    time_t seconds = (time_t)(unix_ms / 1000);
    struct tm utc;
    if (gmtime_r(&seconds, &utc) == NULL)
        return false;
    int written = snprintf(out, out_size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900,
                           utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                           (int)(unix_ms % 1000));
    return written > 0 && (size_t)written < out_size;
}

/* The reference a movement of this type needs: 'text' when it is 1..64
 * printable characters, else NULL after naming 'name' in '*why'. */
static const char *reference_required(const char *name, const char *text, const char **why)
{
    if (text == NULL || !wire_token_valid(text, transaction_reference_bytes_max)) {
        *why = name;
        return NULL;
    }
    return text;
}

/*
 * Turns 'e' (a money event, delivered as 'event') into '*m'. Returns true
 * with a movement to record; false with '*why' NULL for an event that
 * moves no money, or with '*why' naming what makes it malformed.
 */
static bool movement_from_event(const events_delivery_t *event, const Paygate__V1__MoneyEvent *e,
                                movement_t *m, const char **why)
{
    memset(m, 0, sizeof *m);
    *why = NULL;
    /* By contract the bus event id equals the MoneyEvent's
     * (proto/events.proto). The payload's is the idempotency key: it is
     * derived from the movement and travels with it. */
    m->event_id = e->event_id != NULL && e->event_id[0] != '\0' ? e->event_id : event->event_id;
    if (!wire_token_valid(m->event_id, transaction_event_id_bytes_max)) {
        *why = "event_id";
        return false;
    }
    if (strcmp(m->event_id, event->event_id) != 0)
        log_warn("recorder: %s offset %" PRIu64 ": bus event id %s differs from the payload's %s;"
                 " using the payload's",
                 event->topic, event->offset, loggable(event->event_id), m->event_id);

    bool needs_order = false, needs_payment = false, needs_refund = false, needs_topup = false;
    const char *verb = NULL;
    switch (e->type) {
    case PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_SUCCEEDED:
        m->type = "PAYMENT";
        needs_order = needs_payment = true;
        verb = "paid for";
        break;
    case PAYGATE__V1__MONEY_EVENT_TYPE__REFUND_SUCCEEDED:
        m->type = "REFUND";
        needs_order = needs_payment = needs_refund = true;
        verb = "refunded for";
        break;
    case PAYGATE__V1__MONEY_EVENT_TYPE__TOPUP_SUCCEEDED:
        m->type = "TOPUP";
        needs_topup = true;
        break;
    case PAYGATE__V1__MONEY_EVENT_TYPE__PAYMENT_FAILED:
        return false; /* no money moved: nothing to record */
    default:
        *why = "type";
        return false;
    }

    m->user_id = e->user_id;
    if (!wire_token_valid(m->user_id, transaction_reference_bytes_max)) {
        *why = "user_id";
        return false;
    }
    m->amount = e->amount;
    if (!money_amount_valid(m->amount, transaction_amount_minor_max)) {
        *why = "amount";
        return false;
    }
    m->currency = e->currency != NULL && e->currency[0] != '\0' ? e->currency : "INR";
    if (strcmp(m->currency, "INR") != 0) {
        *why = "currency";
        return false;
    }
    /* Each type stores the references it needs (the schema's CHECK);
     * any other reference an event carries says nothing more and is
     * not stored. */
    if (needs_order && (m->order_id = reference_required("order_id", e->order_id, why)) == NULL)
        return false;
    if (needs_payment &&
        (m->payment_id = reference_required("payment_id", e->payment_id, why)) == NULL)
        return false;
    if (needs_refund && (m->refund_id = reference_required("refund_id", e->refund_id, why)) == NULL)
        return false;
    if (needs_topup && (m->topup_id = reference_required("topup_id", e->topup_id, why)) == NULL)
        return false;

    /* When the money moved; an event without it gets the time the bus
     * stored it (usually moments later: the publisher's outbox relays it). */
    const char *occurred_at = e->occurred_at != NULL ? e->occurred_at : "";
    if (occurred_at[0] != '\0') {
        if (!rfc3339_valid(occurred_at)) {
            *why = "occurred_at";
            return false;
        }
        snprintf(m->created_at, sizeof m->created_at, "%s", occurred_at);
    } else {
        if (!rfc3339_from_unix_ms(event->timestamp_ms, m->created_at, sizeof m->created_at)) {
            *why = "occurred_at";
            return false;
        }
        log_warn("recorder: event %s has no occurred_at; using the bus's time %s", m->event_id,
                 m->created_at);
    }

    char amount_text[40];
    if (!money_format_inr(m->amount, amount_text, sizeof amount_text)) {
        *why = "amount";
        return false;
    }
    int written = verb != NULL ? snprintf(m->description, sizeof m->description, "%s %s Order #%s",
                                          amount_text, verb, m->order_id)
                               : snprintf(m->description, sizeof m->description,
                                          "%s added to wallet", amount_text);
    /* "₹1,00,00,000.00 refunded for Order #" and a 64-byte id fit with
     * room to spare. */
    if (written <= 0 || (size_t)written >= sizeof m->description) {
        *why = "description";
        return false;
    }
    return true;
}

/* An event already recorded: checks that the row is the same movement
 * (same user, type and amount). A mismatch is a publisher's bug: the
 * first movement stays, and the error is logged. */
static void recorder_check_repeat(recorder_t *self, const events_delivery_t *event,
                                  const movement_t *m)
{
    const char *params[] = {m->event_id};
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(self->pg, "transaction_recorded", recorded_sql, 1, params, &rows);
    if (result != PG_OK) {
        log_warn("recorder: event %s was recorded before; could not compare (database %s)",
                 m->event_id, pg_error_sqlstate(self->pg));
        return;
    }
    if (PQntuples(rows) != 1) {
        log_error("recorder: event %s conflicted but has no row", m->event_id);
    } else if (strcmp(PQgetvalue(rows, 0, 1), m->user_id) != 0 ||
               strcmp(PQgetvalue(rows, 0, 2), m->type) != 0 ||
               strtoll(PQgetvalue(rows, 0, 3), NULL, 10) != m->amount) {
        log_error("recorder: event %s was recorded as %s %s of %s paise for %s, and now comes"
                  " as %s %" PRId64 " paise for %s; keeping the first",
                  m->event_id, PQgetvalue(rows, 0, 0), PQgetvalue(rows, 0, 2),
                  PQgetvalue(rows, 0, 3), PQgetvalue(rows, 0, 1), m->type, m->amount, m->user_id);
    } else {
        log_info("recorder: event %s (delivery %" PRIu32 ") was recorded before as %s", m->event_id,
                 event->delivery_count, PQgetvalue(rows, 0, 0));
    }
    PQclear(rows);
}

/* The record statement's parameters for 'm' (pointing into 'm' and
 * 'row'). False when no id could be made. */
typedef struct {
    char id[id_bytes_max];
    char amount[24];
    const char *params[12];
} record_row_t;

static bool record_row(const movement_t *m, record_row_t *row)
{
    if (!id_new("txn", row->id, sizeof row->id)) {
        log_error("recorder: no id for event %s", m->event_id);
        return false;
    }
    snprintf(row->amount, sizeof row->amount, "%" PRId64, m->amount);
    const char *params[] = {row->id,      m->event_id, m->user_id,     m->type,
                            row->amount,  m->currency, m->order_id,    m->payment_id,
                            m->refund_id, m->topup_id, m->description, m->created_at};
    memcpy(row->params, params, sizeof params);
    return true;
}

/* The record statement ran for 'm' (as 'row'): 'inserted' a new row,
 * or found the event recorded before. */
static void recorder_recorded(recorder_t *self, const events_delivery_t *event, const movement_t *m,
                              const record_row_t *row, bool inserted)
{
    if (inserted) {
        self->recorded++;
        log_info("recorder: %s %s %" PRId64 " paise for %s (event %s, %s offset %" PRIu64
                 ", delivery %" PRIu32 ")",
                 row->id, m->type, m->amount, m->user_id, m->event_id, event->topic, event->offset,
                 event->delivery_count);
    } else {
        self->repeated++;
        recorder_check_repeat(self, event, m);
    }
}

/* Inserts 'm' unless its event id is recorded. Returns true to
 * acknowledge the event. */
static bool recorder_record(recorder_t *self, const events_delivery_t *event, const movement_t *m)
{
    record_row_t row;
    if (!record_row(m, &row)) {
        self->deferred++;
        return false;
    }
    PGresult *rows = NULL;
    pg_result_t result =
        pg_exec_prepared(self->pg, "transaction_record", record_sql, 12, row.params, &rows);
    switch (result) {
    case PG_OK: {
        bool inserted = PQntuples(rows) == 1;
        PQclear(rows);
        recorder_recorded(self, event, m, &row, inserted);
        return true;
    }
    case PG_UNAVAILABLE:
        self->database_retry_at_ms = clock_now_ms() + recorder_database_retry_ms;
        self->deferred++;
        log_warn("recorder: database unavailable; event %s (%s offset %" PRIu64
                 ") left for redelivery",
                 m->event_id, event->topic, event->offset);
        return false;
    case PG_CONSTRAINT: {
        const char *constraint = pg_error_constraint(self->pg);
        if (strcmp(constraint, "transactions_payment_once") == 0 ||
            strcmp(constraint, "transactions_refund_once") == 0 ||
            strcmp(constraint, "transactions_topup_once") == 0) {
            /* The same movement under another event id: it has its row. */
            self->repeated++;
            log_error("recorder: event %s is a %s already recorded under another event id"
                      " (%s); not recorded twice",
                      m->event_id, m->type, constraint);
            return true;
        }
        self->malformed++;
        log_error("recorder: event %s breaks %s; acknowledged without a row", m->event_id,
                  constraint[0] ? constraint : pg_error_sqlstate(self->pg));
        return true;
    }
    case PG_ERROR:
        if (strncmp(pg_error_sqlstate(self->pg), "22", 2) == 0) {
            /* A data exception: the values (e.g. 2024-02-30) can never
             * be stored. */
            self->malformed++;
            log_error("recorder: event %s has a value the database refuses (%s); acknowledged"
                      " without a row",
                      m->event_id, pg_error_sqlstate(self->pg));
            return true;
        }
        break;
    case PG_SERIALIZATION:
        break;
    }
    self->deferred++;
    log_error("recorder: database error %s recording event %s; left for redelivery",
              pg_error_sqlstate(self->pg), m->event_id);
    return false;
}

/* A delivery, decoded and checked: 'record' when 'movement' should be
 * inserted; otherwise 'acknowledge' is the answer. */
typedef struct {
    Paygate__V1__MoneyEvent *event; /* NULL: not a MoneyEvent */
    movement_t movement;
    bool record;
    bool acknowledge;
} recorder_item_t;

/* Decodes and checks 'event' into '*item' (free item->event after). */
static void recorder_prepare(recorder_t *self, const events_delivery_t *event,
                             recorder_item_t *item)
{
    item->record = false;
    item->acknowledge = true;
    Paygate__V1__MoneyEvent *e = item->event =
        paygate__v1__money_event__unpack(NULL, event->payload_len, event->payload);
    if (e == NULL) {
        self->malformed++;
        log_error("recorder: %s offset %" PRIu64 " (event %s) is not a MoneyEvent; acknowledged"
                  " without a row",
                  event->topic, event->offset, loggable(event->event_id));
        return;
    }
    log_set_request_id(e->request_id); /* the request that caused the event */
    const char *why = NULL;
    if (!movement_from_event(event, e, &item->movement, &why)) {
        if (why == NULL) {
            self->ignored++;
            log_debug("recorder: event %s moves no money", loggable(e->event_id));
        } else {
            self->malformed++;
            log_error("recorder: %s offset %" PRIu64 " (event %s): missing or invalid %s;"
                      " acknowledged without a row",
                      event->topic, event->offset, loggable(event->event_id), why);
        }
    } else if (clock_now_ms() < self->database_retry_at_ms) {
        self->deferred++;
        log_debug("recorder: database down moments ago; event %s left for redelivery",
                  item->movement.event_id);
        item->acknowledge = false;
    } else {
        item->record = true;
    }
    log_set_request_id(NULL);
}

/* Records the items of 'items' that are to be recorded, one statement
 * each (see recorder_on_events for several at once). */
static void recorder_record_each(recorder_t *self, const events_delivery_t *events,
                                 recorder_item_t *items, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (!items[i].record)
            continue;
        log_set_request_id(items[i].event->request_id);
        if (clock_now_ms() < self->database_retry_at_ms) { /* down since this batch began */
            self->deferred++;
            items[i].acknowledge = false;
        } else {
            items[i].acknowledge = recorder_record(self, &events[i], &items[i].movement);
        }
        log_set_request_id(NULL);
    }
}

void recorder_on_events(const events_delivery_t *events, size_t count, bool *acknowledge,
                        void *state)
{
    recorder_t *self = state;
    recorder_item_t items[events_batch_max];
    record_row_t rows[events_batch_max];
    const char *const *params[events_batch_max];
    size_t indexes[events_batch_max], batched = 0;
    if (count > events_batch_max)
        count = events_batch_max; /* the consumer never sends more */
    for (size_t i = 0; i < count; i++) {
        recorder_prepare(self, &events[i], &items[i]);
        if (!items[i].record)
            continue;
        if (!record_row(&items[i].movement, &rows[batched])) {
            self->deferred++;
            items[i].record = items[i].acknowledge = false;
            continue;
        }
        params[batched] = rows[batched].params;
        indexes[batched++] = i;
    }
    /* Two or more: one statement for all (one round trip, one commit,
     * the table's constraints set up once). When it fails (a constraint,
     * the database gone), nothing of it happened and each goes again
     * alone, which explains its own failure. */
    bool done = false;
    if (batched >= 2) {
        PGresult *result_rows = NULL;
        pg_result_t result =
            pg_exec_prepared_rows(self->pg, "transaction_record_rows", record_rows_sql, 12, batched,
                                  params, &result_rows);
        if (result == PG_OK) {
            for (size_t b = 0; b < batched; b++) {
                recorder_item_t *item = &items[indexes[b]];
                bool inserted = false;
                for (int r = 0; !inserted && r < PQntuples(result_rows); r++)
                    inserted = strcmp(PQgetvalue(result_rows, r, 0), item->movement.event_id) == 0;
                log_set_request_id(item->event->request_id);
                recorder_recorded(self, &events[indexes[b]], &item->movement, &rows[b], inserted);
                item->acknowledge = true;
                item->record = false;
                log_set_request_id(NULL);
            }
            PQclear(result_rows);
            done = true;
        } else {
            log_info("recorder: a batch of %zu events did not commit (%s); each goes alone",
                     batched, pg_error_sqlstate(self->pg));
        }
    }
    if (!done)
        recorder_record_each(self, events, items, count);
    for (size_t i = 0; i < count; i++) {
        acknowledge[i] = items[i].acknowledge;
        if (items[i].event != NULL)
            paygate__v1__money_event__free_unpacked(items[i].event, NULL);
    }
}
