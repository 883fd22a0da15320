/*
 * The notification service's RPC side: the state each worker thread owns
 * and the handlers (service "notification", proto/notification.proto).
 */
#ifndef PAYGATE_NOTIFICATION_SERVICE_H
#define PAYGATE_NOTIFICATION_SERVICE_H

#include "rpc/rpc.h"
#include "store.h"

enum {
    notification_list_limit_max = store_latest_max, /* also the default (limit 0) */
};

/* One per worker thread: its own Redis connection. */
typedef struct {
    store_t *store;
} notification_thread_t;

/* list.c: List, the caller's latest notifications, newest first. */
Paygate__V1__Code notification_list(rpc_ctx_t *ctx, const ProtobufCMessage *request,
                                    ProtobufCMessage *reply, void *thread);

#endif
