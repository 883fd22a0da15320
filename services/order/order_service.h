/*
 * The order service's handlers, its limits, and the state each worker
 * thread owns.
 */
#ifndef PAYGATE_ORDER_SERVICE_H
#define PAYGATE_ORDER_SERVICE_H

#include "pg/pg.h"
#include "rpc/rpc.h"

enum {
    order_amount_minor_max = 1000000000, /* ₹1,00,00,000 per order; also a CHECK */
    order_receipt_chars_max = 40,        /* also a CHECK */
    order_description_chars_max = 255,   /* also a CHECK */
    order_list_limit_default = 10,
    order_list_limit_max = 100,
    order_user_id_bytes_max = 64,    /* caller and MarkPaid user ids */
    order_payment_id_bytes_max = 64, /* MarkPaid payment ids */
};

/* One per worker thread: its own database connection. */
typedef struct {
    pg_conn_t *pg;
} order_thread_t;

/* orders.c */
Paygate__V1__Code order_create(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                               ProtobufCMessage *reply, void *thread);
Paygate__V1__Code order_get(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                            ProtobufCMessage *reply, void *thread);
Paygate__V1__Code order_list(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                             ProtobufCMessage *reply, void *thread);
Paygate__V1__Code order_cancel(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                               ProtobufCMessage *reply, void *thread);
/* orders.c: Get's batch code (rpc_batch_handler_fn). */
void order_get_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                     ProtobufCMessage *const *replies, Paygate__V1__Code *codes, bool *answered,
                     size_t count, void *thread_state);
/* orders.c: MarkPaid's batch code (rpc_batch_handler_fn). */
void order_mark_paid_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                           ProtobufCMessage *const *replies, Paygate__V1__Code *codes,
                           bool *answered, size_t count, void *thread_state);
Paygate__V1__Code order_mark_paid(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                  ProtobufCMessage *reply, void *thread);

#endif
