/*
 * json_call: one RPC with JSON in and out, through the same transcoder as
 * the HTTP gateway (lib/json/transcode.h): the request JSON becomes the
 * method's request message (unknown fields and wrong types refused, naming
 * the field), the reply message becomes JSON with every field. Used by
 * `paygatectl call` and `paygatectl demo`.
 */
#ifndef PAYGATECTL_JSON_CALL_H
#define PAYGATECTL_JSON_CALL_H

#include <stdio.h>

#include <jansson.h>

#include "json/transcode.h"
#include "methods.h"
#include "rpc/rpc.h"

typedef enum {
    JSON_CALL_OK,          /* '*reply' holds the reply */
    JSON_CALL_BAD_REQUEST, /* the JSON does not fit the request: 'error' says why */
    JSON_CALL_FAILED,      /* the call failed: 'status' says how */
    JSON_CALL_BAD_REPLY,   /* the reply is not the method's reply message */
} json_call_result_t;

/* Calls 'method' with 'request' (a JSON object) through 'client' with
 * 'opts'. On JSON_CALL_OK '*reply' is a new JSON object the caller
 * json_decref()s; otherwise it is NULL and 'error' (BAD_REQUEST) or
 * 'status' (FAILED) tells why. 'status' is always filled. */
json_call_result_t json_call(rpc_client_t *client, const ctl_method_t *method,
                             const json_t *request, const rpc_call_opts_t *opts, json_t **reply,
                             rpc_status_t *status, transcode_error_t *error);

/* Prints a failed call's status to 'out' as
 *   <prefix>: <service>.<method>: <CODE> <reason>: <message>
 *     <detail key>: <value>                (one line per detail) */
void json_call_print_status(FILE *out, const char *prefix, const ctl_method_t *method,
                            const rpc_status_t *status);

#endif
