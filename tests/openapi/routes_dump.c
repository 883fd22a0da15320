/*
 * routes_dump: prints the gateway's real routes as JSON, for the
 * openapi_routes test (routes.mjs), which compares them with
 * gateway-http/openapi.yaml in both directions.
 *
 * It links the gateway's own table (routes_v1 in routes.c), so it can never
 * disagree with what the gateway serves, and describes each route's request
 * and reply messages from their protobuf-c descriptors: the fields that the
 * JSON transcoder (lib/json/transcode.h) reads and writes, with their JSON
 * types. The built-in endpoints that gateway.c answers before the table
 * (probes, the notification stream, this description) are listed from the
 * constants below; the openapi_responses test calls each of them on a real
 * gateway, so a built-in that goes away fails there.
 *
 *   {"routes": [{"method", "path", "service", "rpc", "auth", "success_status",
 *                "has_body", "idempotency_field", "query_fields": [...],
 *                "path_params": [...], "request": "paygate.v1.X",
 *                "reply": "paygate.v1.Y"}],
 *    "builtin": [{"method", "path", "auth"}],
 *    "messages": {"paygate.v1.X": [{"name", "json_type", "proto_type",
 *                                   "repeated", "enum_values"?, "message"?}]}}
 *
 * Must never print anything but that JSON on stdout (the test parses it).
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "gateway_metrics.h"
#include "routes.h"
#include "sse.h"

/* The endpoints gateway.c serves itself (finish()), not from routes_v1. */
static const struct {
    const char *method;
    const char *path;
    bool auth;
} builtin_routes[] = {
    {"GET", "/healthz", false},           {"GET", "/readyz", false}, {"GET", SSE_STREAM_PATH, true},
    {"GET", "/openapi.yaml", false}, /* PAYGATE_GATEWAY_OPENAPI_FILE */
    {"GET", GATEWAY_METRICS_PATH, false},
};

/* The JSON type the transcoder uses for a protobuf field type. */
static const char *json_type_of(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return "integer";
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        return "number";
    case PROTOBUF_C_TYPE_BOOL:
        return "boolean";
    case PROTOBUF_C_TYPE_ENUM:
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
        return "string";
    case PROTOBUF_C_TYPE_MESSAGE:
        return "object";
    }
    return "unknown";
}

static const char *proto_type_of(ProtobufCType type)
{
    static const char *const names[] = {
        [PROTOBUF_C_TYPE_INT32] = "int32",       [PROTOBUF_C_TYPE_SINT32] = "sint32",
        [PROTOBUF_C_TYPE_SFIXED32] = "sfixed32", [PROTOBUF_C_TYPE_INT64] = "int64",
        [PROTOBUF_C_TYPE_SINT64] = "sint64",     [PROTOBUF_C_TYPE_SFIXED64] = "sfixed64",
        [PROTOBUF_C_TYPE_UINT32] = "uint32",     [PROTOBUF_C_TYPE_FIXED32] = "fixed32",
        [PROTOBUF_C_TYPE_UINT64] = "uint64",     [PROTOBUF_C_TYPE_FIXED64] = "fixed64",
        [PROTOBUF_C_TYPE_FLOAT] = "float",       [PROTOBUF_C_TYPE_DOUBLE] = "double",
        [PROTOBUF_C_TYPE_BOOL] = "bool",         [PROTOBUF_C_TYPE_ENUM] = "enum",
        [PROTOBUF_C_TYPE_STRING] = "string",     [PROTOBUF_C_TYPE_BYTES] = "bytes",
        [PROTOBUF_C_TYPE_MESSAGE] = "message",
    };
    if ((size_t)type < sizeof names / sizeof names[0] && names[type] != NULL)
        return names[type];
    return "unknown";
}

/* Adds 'desc' and every message it contains to 'messages' (by full name),
 * each as its list of fields. */
static void describe_message(json_t *messages, const ProtobufCMessageDescriptor *desc)
{
    if (json_object_get(messages, desc->name) != NULL)
        return;
    json_t *fields = json_array();
    json_object_set_new(messages, desc->name, fields); /* before recursing: cycles end */
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        json_t *field = json_pack("{s:s, s:s, s:s, s:b}", "name", f->name, "json_type",
                                  json_type_of(f->type), "proto_type", proto_type_of(f->type),
                                  "repeated", f->label == PROTOBUF_C_LABEL_REPEATED);
        if (f->type == PROTOBUF_C_TYPE_ENUM) {
            const ProtobufCEnumDescriptor *e = f->descriptor;
            json_t *values = json_array();
            for (unsigned k = 0; k < e->n_values; k++)
                json_array_append_new(values, json_string(e->values[k].name));
            json_object_set_new(field, "enum", json_string(e->name));
            json_object_set_new(field, "enum_values", values);
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            const ProtobufCMessageDescriptor *m = f->descriptor;
            json_object_set_new(field, "message", json_string(m->name));
            describe_message(messages, m);
        }
        json_array_append_new(fields, field);
    }
}

/* The {name} segments of a path template, in order. */
static json_t *path_params_of(const char *path)
{
    json_t *params = json_array();
    for (const char *open = strchr(path, '{'); open != NULL; open = strchr(open + 1, '{')) {
        const char *close = strchr(open, '}');
        if (close == NULL)
            break;
        json_array_append_new(params, json_stringn(open + 1, (size_t)(close - open - 1)));
    }
    return params;
}

int main(void)
{
    json_t *routes = json_array();
    json_t *messages = json_object();
    for (size_t i = 0; i < routes_v1_count; i++) {
        const route_t *r = &routes_v1[i];
        json_t *query = json_array();
        for (const char *const *q = r->query_fields; q != NULL && *q != NULL; q++)
            json_array_append_new(query, json_string(*q));
        json_t *route = json_object();
        json_object_set_new(route, "method", json_string(r->method));
        json_object_set_new(route, "path", json_string(r->path));
        json_object_set_new(route, "service", json_string(r->service));
        json_object_set_new(route, "rpc", json_string(r->rpc));
        json_object_set_new(route, "auth", json_boolean(r->auth));
        json_object_set_new(route, "success_status", json_integer(r->success_status));
        json_object_set_new(route, "has_body", json_boolean(r->has_body));
        json_object_set_new(route, "idempotency_field",
                            r->idempotency_field ? json_string(r->idempotency_field) : json_null());
        json_object_set_new(route, "query_fields", query);
        json_object_set_new(route, "path_params", path_params_of(r->path));
        json_object_set_new(route, "request", json_string(r->request->name));
        json_object_set_new(route, "reply", json_string(r->reply->name));
        json_array_append_new(routes, route);
        describe_message(messages, r->request);
        describe_message(messages, r->reply);
    }
    json_t *builtin = json_array();
    for (size_t i = 0; i < sizeof builtin_routes / sizeof builtin_routes[0]; i++)
        json_array_append_new(
            builtin, json_pack("{s:s, s:s, s:b}", "method", builtin_routes[i].method, "path",
                               builtin_routes[i].path, "auth", builtin_routes[i].auth));
    json_t *all =
        json_pack("{s:o, s:o, s:o}", "routes", routes, "builtin", builtin, "messages", messages);
    int rc = json_dumpf(all, stdout, JSON_INDENT(2)) == 0 && putchar('\n') != EOF ? 0 : 1;
    json_decref(all);
    return rc;
}
