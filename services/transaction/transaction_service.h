/*
 * The transaction service: its limits, the recorder (money events from the
 * event bus become rows) and the RPC handlers (the owner reads them).
 */
#ifndef PAYGATE_TRANSACTION_SERVICE_H
#define PAYGATE_TRANSACTION_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "events/consumer.h"
#include "pg/pg.h"
#include "rpc/rpc.h"

enum {
    /* The largest single movement: the user service's largest debit or
     * credit, ₹1,00,00,000. Also a CHECK. */
    transaction_amount_minor_max = 1000000000,
    transaction_event_id_bytes_max = 128, /* the bus's limit; also a CHECK */
    transaction_reference_bytes_max = 64, /* user, order, payment, refund, top-up ids */
    transaction_description_bytes_max = 256,
    transaction_list_limit_default = 10,
    transaction_list_limit_max = 100,
    /* Events the bus may hand the recorder before it acknowledges any. */
    transaction_events_in_flight_max = 32,
    /* After the database answered UNAVAILABLE, events are left for
     * redelivery without trying for this long, so that a database that
     * hangs connections (2 s each) cannot keep the consumer thread from
     * heartbeating. */
    recorder_database_retry_ms = 1000,
};

/* One per RPC worker thread: its own database connection. */
typedef struct {
    pg_conn_t *pg;
} transaction_thread_t;

/* recorder.c: records MoneyEvents as transactions, on the consumer's
 * thread, with a database connection of its own. */
typedef struct recorder recorder_t;

/* A recorder for database 'pg_dsn' (it connects on the first event).
 * NULL when memory runs out. */
recorder_t *recorder_new(const char *pg_dsn);

/* Logs what the recorder did, closes its connection, frees it and sets
 * '*self' to NULL. NULL is a no-op. */
void recorder_destroy(recorder_t **self);

/* The consumer's batch handler (events_batch_handler_fn), with
 * 'recorder' a recorder_t: records 'events' idempotently by event id,
 * together in one statement (one round trip) when it can. Sets
 * 'acknowledge[i]' true when event i is recorded, was recorded before,
 * moves no money, or can never be recorded (malformed: logged); false
 * (redeliver) when the database is unavailable or failed unexpectedly. */
void recorder_on_events(const events_delivery_t *events, size_t count, bool *acknowledge,
                        void *recorder);

/* transactions.c: the RPC handlers (thread state: transaction_thread_t). */
Paygate__V1__Code transaction_get(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                  ProtobufCMessage *reply, void *thread);
Paygate__V1__Code transaction_list(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                   ProtobufCMessage *reply, void *thread);

#endif
