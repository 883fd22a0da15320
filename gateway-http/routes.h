/*
 * routes: the HTTP API as data. Each route maps a method and a path
 * template to one RPC (service, method, request and reply messages); the
 * gateway transcodes generically from these descriptors, so adding an
 * endpoint is adding a row, never writing a handler.
 *
 * Matching is pure (no I/O) and unit-tested.
 */
#ifndef PAYGATE_GATEWAY_ROUTES_H
#define PAYGATE_GATEWAY_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

enum {
    route_params_max = 4,        /* {name} segments in one path */
    route_param_bytes_max = 128, /* one path segment's value */
    route_path_bytes_max = 512,
};

/* The stricter rate limit a route takes on top of the per-address and
 * per-user ones (ratelimit.h). */
typedef enum {
    ROUTE_LIMIT_NONE = 0,
    ROUTE_LIMIT_REGISTER, /* per address */
    ROUTE_LIMIT_LOGIN,    /* per address and per email */
    ROUTE_LIMIT_PAYMENT,  /* per user */
} route_limit_t;

typedef struct {
    const char *method; /* "GET", "POST" */
    const char *path;   /* "/v1/orders/{id}": {field} binds a segment to a request field */
    const char *service;
    const char *rpc;
    const ProtobufCMessageDescriptor *request;
    const ProtobufCMessageDescriptor *reply;
    bool auth;                       /* needs a valid access token */
    unsigned success_status;         /* 200 or 201 */
    const char *idempotency_field;   /* field set from Idempotency-Key (required), or NULL */
    const char *const *query_fields; /* NULL-ended query parameters allowed, or NULL */
    bool has_body;                   /* takes a JSON body (POST) */
    route_limit_t limit;             /* its stricter rate limit, if any */
    /* Calls made at the same time by the gateway's threads go to the
     * service as one batch (lib/gather; the method must take batches, or
     * each is made alone): for hot reads whose service answers a batch in
     * one database round trip, and for payments, which it drives
     * together. */
    bool gather;
    /* With gather: the route's caller threads, each with one batch out at
     * a time (0: 1). Two keep a slow method's next batch going while one
     * is out. */
    unsigned callers;
} route_t;

enum { route_callers_max = 4 };

typedef struct {
    const route_t *route;    /* NULL when nothing matched */
    bool method_not_allowed; /* the path exists with other methods */
    char allow[64];          /* those methods, for the Allow header */
    size_t param_count;
    struct {
        char name[64];
        char value[route_param_bytes_max + 1];
    } params[route_params_max];
} route_match_t;

/* The API's routes and their number. */
extern const route_t routes_v1[];
extern const size_t routes_v1_count;

/* Finds the route for 'method' 'path' among 'routes' and the values of
 * its {field} segments. A segment value must be 1..128 printable ASCII
 * characters. Returns true when a route matched; otherwise
 * 'out->method_not_allowed' tells 405 from 404. */
bool routes_match(const route_t *routes, size_t count, const char *method, const char *path,
                  route_match_t *out);

#endif
