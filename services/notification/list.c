/*
 * list: the List RPC, the caller's latest notifications from Redis.
 *
 * The caller is the user id in the call's metadata (set by the gateway
 * from the access token), never a field of the request: a user only ever
 * reads their own list. An entry that is not a notification's JSON is
 * skipped and logged; it cannot fail the whole list.
 */
#include <stdio.h>
#include <string.h>

#include "log/log.h"
#include "notification.pb-c.h"
#include "notification_service.h"
#include "render.h"

typedef struct {
    rpc_ctx_t *ctx;
    Paygate__V1__NotificationList *reply;
    size_t capacity;
    bool out_of_memory;
} list_fill_t;

/* Appends one stored JSON to the reply (a store_each_fn). */
static void list_append(const char *json, size_t len, void *state)
{
    list_fill_t *fill = state;
    notification_t n;
    if (!notification_from_json(json, len, &n)) {
        log_warn("list: an entry of %s's list is not a notification; skipped",
                 rpc_ctx_user_id(fill->ctx));
        return;
    }
    if (fill->reply->n_data == fill->capacity)
        return;
    Paygate__V1__Notification *out = rpc_ctx_alloc(fill->ctx, sizeof *out);
    if (out == NULL) {
        fill->out_of_memory = true;
        return;
    }
    paygate__v1__notification__init(out);
    out->id = rpc_ctx_strdup(fill->ctx, n.id);
    out->user_id = rpc_ctx_strdup(fill->ctx, n.user_id);
    out->type = rpc_ctx_strdup(fill->ctx, n.type);
    out->message = rpc_ctx_strdup(fill->ctx, n.message);
    out->amount = n.amount;
    out->order_id = rpc_ctx_strdup(fill->ctx, n.order_id);
    out->payment_id = rpc_ctx_strdup(fill->ctx, n.payment_id);
    out->created_at = rpc_ctx_strdup(fill->ctx, n.created_at);
    if (out->id == NULL || out->user_id == NULL || out->type == NULL || out->message == NULL ||
        out->order_id == NULL || out->payment_id == NULL || out->created_at == NULL) {
        fill->out_of_memory = true;
        return;
    }
    fill->reply->data[fill->reply->n_data++] = out;
}

Paygate__V1__Code notification_list(rpc_ctx_t *ctx, const ProtobufCMessage *request_msg,
                                    ProtobufCMessage *reply_msg, void *thread_state)
{
    const Paygate__V1__ListNotificationsRequest *request =
        (const Paygate__V1__ListNotificationsRequest *)request_msg;
    Paygate__V1__NotificationList *reply = (Paygate__V1__NotificationList *)reply_msg;
    notification_thread_t *thread = thread_state;
    const char *user = rpc_ctx_user_id(ctx);
    if (user[0] == '\0')
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAUTHENTICATED, "unauthenticated",
                            "this call needs an authenticated user");
    if (!notification_user_id_valid(user))
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_user_id",
                            "the caller's user id is not 1..64 of [A-Za-z0-9_-]");
    if (request->limit < 0 || request->limit > notification_list_limit_max)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INVALID_ARGUMENT, "invalid_limit",
                            "limit must be from 1 to %d (0 means %d)", notification_list_limit_max,
                            notification_list_limit_max);
    int limit = request->limit == 0 ? notification_list_limit_max : request->limit;
    list_fill_t fill = {.ctx = ctx, .reply = reply, .capacity = (size_t)limit};
    reply->data = rpc_ctx_alloc(ctx, fill.capacity * sizeof *reply->data);
    if (reply->data == NULL)
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "internal error (request %s)", rpc_ctx_request_id(ctx));
    if (store_latest(thread->store, user, limit, list_append, &fill) != STORE_OK) {
        reply->n_data = 0;
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__UNAVAILABLE, "notifications_unavailable",
                            "notifications are temporarily unavailable");
    }
    if (fill.out_of_memory) {
        reply->n_data = 0;
        return rpc_ctx_fail(ctx, PAYGATE__V1__CODE__INTERNAL, "internal_error",
                            "internal error (request %s)", rpc_ctx_request_id(ctx));
    }
    return PAYGATE__V1__CODE__OK;
}
