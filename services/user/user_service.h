/*
 * The user service's handlers and the state each worker thread owns.
 */
#ifndef PAYGATE_USER_SERVICE_H
#define PAYGATE_USER_SERVICE_H

#include "pg/pg.h"
#include "rpc/rpc.h"
#include "token/token.h"

enum {
    topup_amount_minor_max = 10000000,      /* ₹1,00,000 per top-up */
    movement_amount_minor_max = 1000000000, /* ₹1,00,00,000 per debit or credit */
    idempotency_key_bytes_max = 255,
    reference_bytes_max = 128,
};

/* One per worker thread: its own database connection. */
typedef struct {
    pg_conn_t *pg;
    const token_keyring_t *keys;
} user_thread_t;

/* accounts.c */
Paygate__V1__Code user_register(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                ProtobufCMessage *reply, void *thread);
Paygate__V1__Code user_login(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                             ProtobufCMessage *reply, void *thread);

/* wallet.c */
Paygate__V1__Code wallet_get(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                             ProtobufCMessage *reply, void *thread);
Paygate__V1__Code wallet_top_up(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                ProtobufCMessage *reply, void *thread);
/* wallet.c: GetWallet's batch code (rpc_batch_handler_fn). */
void wallet_get_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                      ProtobufCMessage *const *replies, Paygate__V1__Code *codes, bool *answered,
                      size_t count, void *thread_state);
/* wallet.c: Debit's batch code (rpc_batch_handler_fn). */
void wallet_debit_batch(rpc_ctx_t *const *ctxs, const ProtobufCMessage *const *requests,
                        ProtobufCMessage *const *replies, Paygate__V1__Code *codes, bool *answered,
                        size_t count, void *thread_state);
Paygate__V1__Code wallet_debit(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                               ProtobufCMessage *reply, void *thread);
Paygate__V1__Code wallet_credit(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                ProtobufCMessage *reply, void *thread);

#endif
