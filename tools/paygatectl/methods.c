/*
 * methods: the RPCs `paygatectl call` knows. See methods.h.
 */
#include "methods.h"

#include <string.h>

#include "broker.pb-c.h"
#include "echo.pb-c.h"
#include "order.pb-c.h"
#include "routes.h"
#include "user.pb-c.h"

/* Methods no HTTP route reaches: the services' internal ones, discovery,
 * and the diagnostic echo worker of the tests and benchmarks. */
static const ctl_method_t internal_methods[] = {
    {"user", "Debit", &paygate__v1__wallet_movement_request__descriptor,
     &paygate__v1__wallet_movement__descriptor, "internal: the payment service's debit"},
    {"user", "Credit", &paygate__v1__wallet_movement_request__descriptor,
     &paygate__v1__wallet_movement__descriptor, "internal: the payment service's credit"},
    {"order", "MarkPaid", &paygate__v1__mark_paid_request__descriptor,
     &paygate__v1__order__descriptor, "internal: the payment service completes an order"},
    {"broker.services", "List", &paygate__v1__list_services_request__descriptor,
     &paygate__v1__list_services_reply__descriptor, "the broker's discovery"},
    {"echo", "Echo", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     "tests and benchmarks"},
    {"echo", "Sleep", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     "tests and benchmarks"},
    {"echo", "Fail", &paygate__v1__echo_request__descriptor, &paygate__v1__echo_reply__descriptor,
     "tests and benchmarks"},
};
enum { internal_count = sizeof internal_methods / sizeof internal_methods[0] };

/* Route 'i' of routes_v1 as a method entry. */
static ctl_method_t route_method(size_t i)
{
    const route_t *r = &routes_v1[i];
    ctl_method_t m = {r->service, r->rpc, r->request, r->reply, ""};
    snprintf(m.route, sizeof m.route, "%s %s", r->method, r->path);
    return m;
}

bool ctl_method_find(const char *service, const char *method, ctl_method_t *out)
{
    for (size_t i = 0; i < routes_v1_count; i++) {
        if (strcmp(routes_v1[i].service, service) == 0 && strcmp(routes_v1[i].rpc, method) == 0) {
            *out = route_method(i);
            return true;
        }
    }
    for (size_t i = 0; i < internal_count; i++) {
        if (strcmp(internal_methods[i].service, service) == 0 &&
            strcmp(internal_methods[i].method, method) == 0) {
            *out = internal_methods[i];
            return true;
        }
    }
    return false;
}

static void print_method(FILE *out, const ctl_method_t *m)
{
    char name[96];
    snprintf(name, sizeof name, "%s %s", m->service, m->method);
    /* "paygate.v1.RegisterRequest" -> "RegisterRequest" */
    const char *request = strrchr(m->request->name, '.') + 1;
    const char *reply = strrchr(m->reply->name, '.') + 1;
    char types[128];
    snprintf(types, sizeof types, "%s -> %s", request, reply);
    fprintf(out, "  %-28s %-48s %s\n", name, types, m->route);
}

void ctl_methods_print(FILE *out)
{
    for (size_t i = 0; i < routes_v1_count; i++) {
        ctl_method_t m = route_method(i);
        print_method(out, &m);
    }
    for (size_t i = 0; i < internal_count; i++)
        print_method(out, &internal_methods[i]);
}
