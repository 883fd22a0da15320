/*
 * http_status: RPC status -> HTTP status and error code. See http_status.h.
 */
#include "http_status.h"

#include <string.h>

unsigned http_status_for(Paygate__V1__Code code, const char *reason)
{
    if (reason == NULL)
        reason = "";
    switch (code) {
    case PAYGATE__V1__CODE__OK:
        return 200;
    case PAYGATE__V1__CODE__INVALID_ARGUMENT:
        return 400;
    case PAYGATE__V1__CODE__UNAUTHENTICATED:
        return 401;
    case PAYGATE__V1__CODE__PERMISSION_DENIED:
        return 403;
    case PAYGATE__V1__CODE__NOT_FOUND:
        return 404;
    case PAYGATE__V1__CODE__ALREADY_EXISTS:
        return 409;
    case PAYGATE__V1__CODE__FAILED_PRECONDITION:
        return strcmp(reason, "insufficient_funds") == 0 ? 402 : 409;
    case PAYGATE__V1__CODE__RESOURCE_EXHAUSTED:
        return strcmp(reason, "message_too_big") == 0 ? 413 : 429;
    case PAYGATE__V1__CODE__UNAVAILABLE:
        return 503;
    case PAYGATE__V1__CODE__DEADLINE_EXCEEDED:
        return 504;
    case PAYGATE__V1__CODE__UNIMPLEMENTED:
        return 501;
    case PAYGATE__V1__CODE__INTERNAL:
    default:
        return 500;
    }
}

const char *http_error_code(Paygate__V1__Code code, const char *reason)
{
    if (reason != NULL && reason[0] != '\0')
        return reason;
    switch (code) {
    case PAYGATE__V1__CODE__OK:
        return "ok";
    case PAYGATE__V1__CODE__INVALID_ARGUMENT:
        return "invalid_argument";
    case PAYGATE__V1__CODE__NOT_FOUND:
        return "not_found";
    case PAYGATE__V1__CODE__ALREADY_EXISTS:
        return "already_exists";
    case PAYGATE__V1__CODE__FAILED_PRECONDITION:
        return "failed_precondition";
    case PAYGATE__V1__CODE__PERMISSION_DENIED:
        return "permission_denied";
    case PAYGATE__V1__CODE__UNAUTHENTICATED:
        return "unauthenticated";
    case PAYGATE__V1__CODE__RESOURCE_EXHAUSTED:
        return "rate_limited";
    case PAYGATE__V1__CODE__UNAVAILABLE:
        return "service_unavailable";
    case PAYGATE__V1__CODE__DEADLINE_EXCEEDED:
        return "timeout";
    case PAYGATE__V1__CODE__UNIMPLEMENTED:
        return "not_implemented";
    case PAYGATE__V1__CODE__INTERNAL:
    default:
        return "internal_error";
    }
}
