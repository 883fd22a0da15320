/*
 * routes: the v1 routes table and the path matcher. See routes.h.
 */
#include "routes.h"

#include <stdio.h>
#include <string.h>

#include "notification.pb-c.h"
#include "order.pb-c.h"
#include "payment.pb-c.h"
#include "transaction.pb-c.h"
#include "user.pb-c.h"

/* Cursor pagination, as Stripe: ?limit=1..100&starting_after=<id>. */
static const char *const page_query[] = {"limit", "starting_after", NULL};
static const char *const limit_query[] = {"limit", NULL};

/* One row per endpoint: method, path, service, RPC, request and reply
 * messages (by their protobuf-c descriptor names), then the flags. */
#define MSG(name) &paygate__v1__##name##__descriptor
#define ROUTE(m, p, svc, rpc_name, req, rep, ...)                                                  \
    {                                                                                              \
        .method = m, .path = p, .service = svc, .rpc = rpc_name, .request = MSG(req),              \
        .reply = MSG(rep), __VA_ARGS__                                                             \
    }

// clang-format off
const route_t routes_v1[] = {
    ROUTE("POST", "/v1/users", "user", "Register", register_request, user,
          .success_status = 201, .has_body = true, .limit = ROUTE_LIMIT_REGISTER),
    ROUTE("POST", "/v1/auth/login", "user", "Login", login_request, login_reply,
          .success_status = 200, .has_body = true, .limit = ROUTE_LIMIT_LOGIN),
    ROUTE("GET", "/v1/wallet", "user", "GetWallet", get_wallet_request, wallet,
          .auth = true, .success_status = 200, .gather = true),
    ROUTE("POST", "/v1/wallet/topups", "user", "TopUp", top_up_request, top_up,
          .auth = true, .success_status = 201, .has_body = true,
          .idempotency_field = "idempotency_key"),
    ROUTE("POST", "/v1/orders", "order", "Create", create_order_request, order,
          .auth = true, .success_status = 201, .has_body = true),
    ROUTE("GET", "/v1/orders", "order", "List", list_orders_request, order_list,
          .auth = true, .success_status = 200, .query_fields = page_query),
    ROUTE("GET", "/v1/orders/{id}", "order", "Get", get_order_request, order,
          .auth = true, .success_status = 200, .gather = true),
    ROUTE("POST", "/v1/orders/{id}/cancel", "order", "Cancel", cancel_order_request, order,
          .auth = true, .success_status = 200, .has_body = true),
    ROUTE("POST", "/v1/payments", "payment", "Create", create_payment_request, payment,
          .auth = true, .success_status = 201, .has_body = true,
          .idempotency_field = "idempotency_key", .limit = ROUTE_LIMIT_PAYMENT, .gather = true,
          .callers = 2),
    ROUTE("GET", "/v1/payments", "payment", "List", list_payments_request, payment_list,
          .auth = true, .success_status = 200, .query_fields = page_query),
    ROUTE("GET", "/v1/payments/{id}", "payment", "Get", get_payment_request, payment,
          .auth = true, .success_status = 200),
    ROUTE("POST", "/v1/payments/{payment_id}/refunds", "payment", "CreateRefund",
          create_refund_request, refund,
          .auth = true, .success_status = 201, .has_body = true,
          .idempotency_field = "idempotency_key"),
    ROUTE("GET", "/v1/transactions", "transaction", "List", list_transactions_request,
          transaction_list, .auth = true, .success_status = 200, .query_fields = page_query),
    ROUTE("GET", "/v1/transactions/{id}", "transaction", "Get", get_transaction_request,
          transaction, .auth = true, .success_status = 200),
    ROUTE("GET", "/v1/notifications", "notification", "List", list_notifications_request,
          notification_list, .auth = true, .success_status = 200, .query_fields = limit_query),
};
// clang-format on
const size_t routes_v1_count = sizeof routes_v1 / sizeof routes_v1[0];

/* Copies the next '/'-separated segment of '*path' into 'out' and
 * advances '*path'. Returns false at the end or when it is too long. */
static bool next_segment(const char **path, char *out, size_t out_size)
{
    const char *p = *path;
    if (*p != '/')
        return false;
    p++;
    const char *end = strchr(p, '/');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n + 1 > out_size)
        return false;
    memcpy(out, p, n);
    out[n] = '\0';
    *path = p + n;
    return true;
}

static bool segment_value_valid(const char *value)
{
    if (value[0] == '\0')
        return false;
    for (const char *c = value; *c; c++) {
        if (*c <= ' ' || *c >= 127)
            return false;
    }
    return true;
}

/* Matches 'path' against 'template', filling the params of 'out'. */
static bool path_matches(const char *template, const char *path, route_match_t *out)
{
    out->param_count = 0;
    char want[route_param_bytes_max + 1], got[route_param_bytes_max + 1];
    for (;;) {
        bool more_want = next_segment(&template, want, sizeof want);
        bool more_got = next_segment(&path, got, sizeof got);
        if (!more_want || !more_got)
            return !more_want && !more_got && *path == '\0';
        size_t len = strlen(want);
        if (len > 2 && want[0] == '{' && want[len - 1] == '}') {
            if (!segment_value_valid(got) || out->param_count == route_params_max)
                return false;
            size_t k = out->param_count++;
            snprintf(out->params[k].name, sizeof out->params[k].name, "%.*s", (int)(len - 2),
                     want + 1);
            snprintf(out->params[k].value, sizeof out->params[k].value, "%s", got);
        } else if (strcmp(want, got) != 0) {
            return false;
        }
    }
}

bool routes_match(const route_t *routes, size_t count, const char *method, const char *path,
                  route_match_t *out)
{
    memset(out, 0, sizeof *out);
    if (strlen(path) > route_path_bytes_max)
        return false;
    /* a trailing slash is not the same resource */
    if (strlen(path) > 1 && path[strlen(path) - 1] == '/')
        return false;
    size_t allow_len = 0;
    for (size_t i = 0; i < count; i++) {
        route_match_t candidate;
        memset(&candidate, 0, sizeof candidate);
        if (!path_matches(routes[i].path, path, &candidate))
            continue;
        if (strcmp(routes[i].method, method) == 0) {
            *out = candidate;
            out->route = &routes[i];
            return true;
        }
        out->method_not_allowed = true;
        int n = snprintf(out->allow + allow_len, sizeof out->allow - allow_len, "%s%s",
                         allow_len ? ", " : "", routes[i].method);
        if (n > 0 && (size_t)n < sizeof out->allow - allow_len)
            allow_len += (size_t)n;
    }
    return false;
}
