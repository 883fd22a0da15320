/*
 * http_status: how an RPC status becomes an HTTP response status and a
 * stable error code string.
 *
 * The HTTP status follows the status code, refined by the reason where a
 * payment API needs it (402 for insufficient funds, 413 for too large).
 * The error code is the RPC reason when there is one, else the code's
 * snake_case name. Pure functions.
 */
#ifndef PAYGATE_GATEWAY_HTTP_STATUS_H
#define PAYGATE_GATEWAY_HTTP_STATUS_H

#include "status.pb-c.h"

/* The HTTP status for a failed call with 'code' and 'reason' (may be ""). */
unsigned http_status_for(Paygate__V1__Code code, const char *reason);

/* The error code string for the client: 'reason' if not empty, else e.g.
 * "not_found" for NOT_FOUND. Never NULL. */
const char *http_error_code(Paygate__V1__Code code, const char *reason);

#endif
