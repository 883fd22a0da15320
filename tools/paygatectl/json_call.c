/*
 * json_call: one RPC with JSON in and out. See json_call.h.
 */
#include "json_call.h"

#include <string.h>

#include "arena/arena.h"
#include "wire/wire.h"

enum { json_call_arena_block_bytes = 16 * 1024 };

json_call_result_t json_call(rpc_client_t *client, const ctl_method_t *method,
                             const json_t *request, const rpc_call_opts_t *opts, json_t **reply,
                             rpc_status_t *status, transcode_error_t *error)
{
    *reply = NULL;
    memset(error, 0, sizeof *error);
    rpc_status_set(status, PAYGATE__V1__CODE__OK, "ok");
    arena_t *arena = arena_new(json_call_arena_block_bytes);
    if (arena == NULL) {
        rpc_status_set(status, PAYGATE__V1__CODE__INTERNAL, "out of memory");
        return JSON_CALL_FAILED;
    }
    ProtobufCMessage *message = transcode_from_json(request, method->request, arena, error);
    if (message == NULL) {
        arena_destroy(&arena);
        return JSON_CALL_BAD_REQUEST;
    }
    ProtobufCMessage *answer = NULL;
    Paygate__V1__Code code = rpc_client_call(client, method->service, method->method, message,
                                             method->reply, &answer, opts, status);
    arena_destroy(&arena);
    if (code != PAYGATE__V1__CODE__OK) {
        if (answer != NULL)
            protobuf_c_message_free_unpacked(answer, NULL);
        return JSON_CALL_FAILED;
    }
    if (answer == NULL)
        return JSON_CALL_BAD_REPLY;
    *reply = transcode_to_json(answer);
    protobuf_c_message_free_unpacked(answer, NULL);
    return *reply != NULL ? JSON_CALL_OK : JSON_CALL_BAD_REPLY;
}

void json_call_print_status(FILE *out, const char *prefix, const ctl_method_t *method,
                            const rpc_status_t *status)
{
    fprintf(out, "%s: %s.%s: %s%s%s: %s\n", prefix, method->service, method->method,
            wire_code_name(status->code), status->reason[0] ? " " : "", status->reason,
            status->message);
    for (size_t i = 0; i < status->detail_count; i++)
        fprintf(out, "  %s: %s\n", status->details[i].key, status->details[i].value);
}
