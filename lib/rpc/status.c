/*
 * rpc status: copying call outcomes into caller-owned, pointer-free form.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "rpc.h"

void rpc_status_set(rpc_status_t *status, Paygate__V1__Code code, const char *fmt, ...)
{
    memset(status, 0, sizeof *status);
    status->code = code;
    va_list args;
    va_start(args, fmt);
    vsnprintf(status->message, sizeof status->message, fmt, args);
    va_end(args);
}

void rpc_status_from_wire(rpc_status_t *status, const Paygate__V1__Status *wire)
{
    memset(status, 0, sizeof *status);
    if (wire == NULL)
        return; /* no status means OK */
    status->code = wire->code;
    snprintf(status->message, sizeof status->message, "%s", wire->message ? wire->message : "");
    snprintf(status->reason, sizeof status->reason, "%s", wire->reason ? wire->reason : "");
    for (size_t i = 0; i < wire->n_details && status->detail_count < rpc_details_max; i++) {
        const Paygate__V1__Status__DetailsEntry *entry = wire->details[i];
        size_t k = status->detail_count++;
        snprintf(status->details[k].key, sizeof status->details[k].key, "%s",
                 entry->key ? entry->key : "");
        snprintf(status->details[k].value, sizeof status->details[k].value, "%s",
                 entry->value ? entry->value : "");
    }
}

const char *rpc_status_detail(const rpc_status_t *status, const char *key)
{
    for (size_t i = 0; i < status->detail_count; i++) {
        if (strcmp(status->details[i].key, key) == 0)
            return status->details[i].value;
    }
    return NULL;
}
