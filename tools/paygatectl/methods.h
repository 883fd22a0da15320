/*
 * methods: the RPCs paygatectl can call by name, with the protobuf
 * messages they take and give, so that `call` can turn JSON into a request
 * and the reply back into JSON (lib/json, as the gateway does).
 *
 * The public methods come from the gateway's routes table (routes_v1), so
 * the two never disagree; the internal ones (user.Debit/Credit,
 * order.MarkPaid, broker.services List, the test service echo) are listed
 * in methods.c.
 */
#ifndef PAYGATECTL_METHODS_H
#define PAYGATECTL_METHODS_H

#include <stdbool.h>
#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

typedef struct {
    const char *service; /* "user", "broker.services" */
    const char *method;  /* "Register", "List" */
    const ProtobufCMessageDescriptor *request;
    const ProtobufCMessageDescriptor *reply;
    char route[96]; /* "POST /v1/users", or what it is for when internal */
} ctl_method_t;

/* Finds 'service'.'method' and copies its entry into 'out'. False when
 * paygatectl does not know it. */
bool ctl_method_find(const char *service, const char *method, ctl_method_t *out);

/* Prints every known method, one per line, to 'out'. */
void ctl_methods_print(FILE *out);

#endif
