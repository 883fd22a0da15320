/*
 * gateway: the request life cycle. See gateway.h.
 *
 *   head arrives -> client address; rate limits per address, and for
 *                   register and login per address (429 when spent)
 *                -> route match (404/405), size check (413)
 *   body chunks  -> buffered up to body_bytes_max (413 beyond); a body
 *                   still arriving timeout_s after its head: connection
 *                   closed
 *   complete     -> token check (401) -> rate limits per user, and for
 *                   payments per user (429) -> JSON parse (400 invalid_json)
 *                -> login: rate limit per email (429)
 *                -> transcode into the request message (400, naming the
 *                   field) -> path, query and Idempotency-Key fields
 *                -> RPC through the broker with deadline, request id and
 *                   caller -> reply transcoded to JSON, or the status
 *                   mapped to an HTTP error
 *
 * Every request is counted (gateway_metrics.c) from its head to its end
 * under its route template and final status; GET /metrics serves them.
 *
 * Each libmicrohttpd thread owns one RPC client (created on first use,
 * closed when the thread ends), so calls need no locks.
 */
#include "gateway.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "arena/arena.h"
#include "clock/clock.h"
#include "gateway_metrics.h"
#include "http_status.h"
#include "json/transcode.h"
#include "log/log.h"
#include "ratelimit.h"
#include "routes.h"
#include "rpc/rpc.h"
#include "sse.h"
#include "static_files.h"
#include "wire/wire.h"

enum {
    request_id_bytes_max = 64,
    idempotency_key_bytes_max = 255,
    readiness_deadline_ms = 1000,
    arena_block_bytes = 16 * 1024,
    client_address_bytes_max = INET6_ADDRSTRLEN, /* text form, with its NUL */
    forwarded_for_bytes_max = 1024,              /* X-Forwarded-For read; longer: socket address */
    login_email_key_bytes_max = 254,             /* as the user service's email limit */
    refusal_log_interval_ms = 1000,              /* at most one rate-limit log line per interval */
    drain_margin_ms = 1000, /* beyond the call deadline, for the answer to be sent */
    drain_idle_ms = 1000,   /* then for idle keep-alive connections to go */
    drain_poll_ms = 10,
};

struct gateway {
    gateway_config_t config;
    struct MHD_Daemon *daemon;
    void *zmq_ctx;
    pthread_key_t client_key;
    sse_t *streams;                    /* GET /v1/notifications/stream (sse.c) */
    ratelimit_t *limits;               /* 429s (ratelimit.c) */
    _Atomic int64_t refusal_logged_ms; /* last refusal logged (log_refusal) */
    atomic_uint_fast64_t refusals_unlogged;
    gateway_metrics_t *metrics; /* GET /metrics (gateway_metrics.c) */
    atomic_bool draining;       /* stopping: answer what came, then close each connection */
    atomic_uint in_flight;      /* requests begun and not yet completed (answer sent) */
    /* routes_v1[i].gather: route i's caller (its calls, gathered) */
    struct route_caller *callers;
    atomic_uint suspended; /* requests handed to a caller and not yet completed */
};

enum { access_path_bytes_max = 255 };

typedef struct request {
    route_match_t match;
    bool matched;
    char *body;
    size_t body_len;
    size_t body_cap;
    bool too_large;
    int64_t started_us;
    char client[client_address_bytes_max]; /* the client's address (text) */
    bool limited;                          /* refused by a rate limit at the head */
    ratelimit_class_t limited_class;
    ratelimit_verdict_t verdict;
    const char *route_label; /* gateway_metrics_route_label(); also the access log's route */
    char method[16];         /* for the metrics; longer methods are "other" there */
    /* for the access log line (access_log) */
    char path[access_path_bytes_max + 1];
    char request_id[request_id_bytes_max + 1];
    /* A call handed to its route's caller (route_t.gather): the
     * connection is suspended until the caller has the answer. */
    struct MHD_Connection *connection;
    arena_t *arena; /* holds 'call_request' while it waits */
    const ProtobufCMessage *call_request;
    int64_t call_deadline_at_ms; /* handed over + the deadline (clock_now_ms) */
    int64_t call_handed_us;      /* when it was handed over (clock_now_us) */
    char user_id[TOKEN_USER_ID_SIZE];
    bool call_done;
    Paygate__V1__Code call_code;
    rpc_status_t call_status;
    ProtobufCMessage *call_reply; /* on OK; freed once answered */
    struct request *call_next;
} request_t;

typedef struct {
    const char *name;
    const char *value;
} header_t;

/* ---- small helpers ---------------------------------------------------- */

static void client_close(void *client)
{
    rpc_client_t *c = client;
    rpc_client_destroy(&c);
}

/* This thread's RPC client, created on first use. */
static rpc_client_t *thread_client(gateway_t *self)
{
    rpc_client_t *client = pthread_getspecific(self->client_key);
    if (client == NULL) {
        client = rpc_client_new(self->zmq_ctx, self->config.broker_endpoint);
        if (client != NULL)
            pthread_setspecific(self->client_key, client);
    }
    return client;
}

/* The request id: the client's X-Request-Id when it is a sane token,
 * else a new one. */
static void request_id_for(struct MHD_Connection *connection, char out[request_id_bytes_max + 1])
{
    const char *given = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Request-Id");
    if (given != NULL && wire_token_valid(given, request_id_bytes_max)) {
        snprintf(out, request_id_bytes_max + 1, "%s", given);
        return;
    }
    uint64_t bits = 0;
    if (getrandom(&bits, sizeof bits, 0) < 0)
        bits = (uint64_t)clock_now_us();
    snprintf(out, request_id_bytes_max + 1, "req_%016" PRIx64, bits);
}

/* Sends 'body' (consumed) with 'status', the headers every response
 * carries and the 'extra_count' headers of 'extra'. */
static enum MHD_Result respond_with(struct MHD_Connection *connection, unsigned status,
                                    json_t *body, const char *request_id, const header_t *extra,
                                    size_t extra_count)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (text == NULL)
        return MHD_NO;
    struct MHD_Response *response =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (response == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(response, "Content-Type", "application/json");
    MHD_add_response_header(response, "X-Request-Id", request_id);
    MHD_add_response_header(response, "Cache-Control", "no-store");
    MHD_add_response_header(response, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(response, "X-Frame-Options", "DENY");
    MHD_add_response_header(response, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(response, "Content-Security-Policy",
                            "default-src 'none'; frame-ancestors 'none'");
    for (size_t i = 0; i < extra_count; i++)
        MHD_add_response_header(response, extra[i].name, extra[i].value);
    /* While the gateway drains, each connection ends with its answer, so
     * that a keep-alive client goes to another instance for the next. */
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    const gateway_t *gateway = info != NULL ? info->socket_context : NULL;
    if (gateway != NULL && atomic_load(&gateway->draining))
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result result = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return result;
}

/* respond_with() with at most one extra header ('extra_name' NULL: none). */
static enum MHD_Result respond(struct MHD_Connection *connection, unsigned status, json_t *body,
                               const char *request_id, const char *extra_name,
                               const char *extra_value)
{
    header_t extra = {extra_name, extra_value};
    return respond_with(connection, status, body, request_id, &extra, extra_name != NULL ? 1 : 0);
}

/* Responds {"error": {"code", "message", "request_id", ...details}}. */
static enum MHD_Result respond_error(struct MHD_Connection *connection, unsigned status,
                                     const char *code, const char *message, const char *request_id,
                                     json_t *details, const char *extra_name,
                                     const char *extra_value)
{
    json_t *error = details != NULL ? details : json_object();
    json_object_set_new(error, "code", json_string(code));
    json_object_set_new(error, "message", json_string(message));
    json_object_set_new(error, "request_id", json_string(request_id));
    json_t *body = json_object();
    json_object_set_new(body, "error", error);
    return respond(connection, status, body, request_id, extra_name, extra_value);
}

/* Responds 429 rate_limited for a refusal of 'class': Retry-After (whole
 * seconds until a token is back) and the RateLimit-Limit/-Remaining/-Reset
 * headers of draft-ietf-httpapi-ratelimit-headers; the error names the
 * limit in "limit". Counted in the gateway's metrics. */
static enum MHD_Result respond_rate_limited(gateway_t *self, struct MHD_Connection *connection,
                                            ratelimit_class_t class,
                                            const ratelimit_verdict_t *verdict,
                                            const char *request_id)
{
    gateway_metrics_rate_limited(self->metrics);
    char retry[24], limit[24], message[128];
    snprintf(retry, sizeof retry, "%lld", (long long)verdict->retry_after_s);
    snprintf(limit, sizeof limit, "%lld", (long long)verdict->limit);
    snprintf(message, sizeof message, "too many requests (%s limit); retry after %lld s",
             ratelimit_class_name(class), (long long)verdict->retry_after_s);
    json_t *error = json_object();
    json_object_set_new(error, "code", json_string("rate_limited"));
    json_object_set_new(error, "message", json_string(message));
    json_object_set_new(error, "request_id", json_string(request_id));
    json_object_set_new(error, "limit", json_string(ratelimit_class_name(class)));
    json_t *body = json_object();
    json_object_set_new(body, "error", error);
    const header_t extra[] = {{"Retry-After", retry},
                              {"RateLimit-Limit", limit},
                              {"RateLimit-Remaining", "0"},
                              {"RateLimit-Reset", retry}};
    return respond_with(connection, 429, body, request_id, extra, sizeof extra / sizeof extra[0]);
}

/* Logs a refusal by limit 'class' of a request from 'client' (an
 * address; never an email or a token), at most once a second for the
 * whole gateway: a flood of 429s must not become a flood of log lines.
 * The line counts the refusals left unlogged since the last one. */
static void log_refusal(gateway_t *self, ratelimit_class_t class, const char *client,
                        const char *request_id, int64_t retry_after_s)
{
    int64_t now = clock_now_ms();
    int64_t last = atomic_load(&self->refusal_logged_ms);
    if (now - last < refusal_log_interval_ms ||
        !atomic_compare_exchange_strong(&self->refusal_logged_ms, &last, now)) {
        atomic_fetch_add(&self->refusals_unlogged, 1);
        return;
    }
    uint64_t unlogged = atomic_exchange(&self->refusals_unlogged, 0);
    log_info("gateway: rate limit %s refused a request from %s (request %s, retry after %lld s; "
             "%" PRIu64 " more refusals since the last line)",
             ratelimit_class_name(class), client, request_id, (long long)retry_after_s, unlogged);
}

/* Takes a token of 'class' for 'key' ('key_len' bytes); on a refusal
 * logs it (log_refusal) and fills 'verdict'. Returns true when allowed. */
static bool limit_take(gateway_t *self, ratelimit_class_t class, const char *key, size_t key_len,
                       const char *client, const char *request_id, ratelimit_verdict_t *verdict)
{
    if (ratelimit_take(self->limits, class, key, key_len, clock_now_us(), verdict))
        return true;
    log_refusal(self, class, client, request_id, verdict->retry_after_s);
    return false;
}

/* The client's address as text into 'out': the peer of the connection,
 * or, behind 'forwarded_hops' trusted proxies, the address the outermost
 * of them saw (that many entries from the right of X-Forwarded-For; the
 * peer when the header is missing, too long, too short or not an address
 * there). Entries left of it are the client's own word and never used. */
static void client_address(const gateway_t *self, struct MHD_Connection *connection,
                           char out[client_address_bytes_max])
{
    snprintf(out, client_address_bytes_max, "unknown");
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (info != NULL && info->client_addr != NULL && info->client_addr->sa_family == AF_INET) {
        const struct sockaddr_in *peer = (const struct sockaddr_in *)info->client_addr;
        inet_ntop(AF_INET, &peer->sin_addr, out, client_address_bytes_max);
    }
    if (self->config.forwarded_hops == 0)
        return;
    const char *header =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Forwarded-For");
    if (header == NULL || strlen(header) > forwarded_for_bytes_max)
        return;
    /* Walk the entries from the right. */
    const char *end = header + strlen(header);
    for (unsigned hop = 1; end > header; hop++) {
        const char *start = end;
        while (start > header && start[-1] != ',')
            start--;
        if (hop == self->config.forwarded_hops) {
            char entry[client_address_bytes_max];
            while (start < end && (*start == ' ' || *start == '\t'))
                start++;
            size_t len = (size_t)(end - start);
            while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t'))
                len--;
            if (len == 0 || len >= sizeof entry)
                return;
            memcpy(entry, start, len);
            entry[len] = '\0';
            unsigned char bytes[sizeof(struct in6_addr)];
            if (inet_pton(AF_INET, entry, bytes) == 1)
                inet_ntop(AF_INET, bytes, out, client_address_bytes_max);
            else if (inet_pton(AF_INET6, entry, bytes) == 1)
                inet_ntop(AF_INET6, bytes, out, client_address_bytes_max);
            return;
        }
        end = start > header ? start - 1 : header;
    }
}

/* ---- probes ------------------------------------------------------------ */

/* /readyz: the broker answers and every required service has a worker. */
static enum MHD_Result readiness(gateway_t *self, struct MHD_Connection *connection,
                                 const char *request_id)
{
    rpc_client_t *client = thread_client(self);
    Paygate__V1__ListServicesRequest request = PAYGATE__V1__LIST_SERVICES_REQUEST__INIT;
    ProtobufCMessage *reply_msg = NULL;
    rpc_call_opts_t opts = {
        .deadline_ms = readiness_deadline_ms, .request_id = request_id, .principal = "gateway"};
    rpc_status_t status;
    if (client == NULL || rpc_client_call(client, "broker.services", "List", &request.base,
                                          &paygate__v1__list_services_reply__descriptor, &reply_msg,
                                          &opts, &status) != PAYGATE__V1__CODE__OK)
        return respond_error(connection, 503, "not_ready", "the broker does not answer", request_id,
                             NULL, NULL, NULL);
    Paygate__V1__ListServicesReply *reply = (Paygate__V1__ListServicesReply *)reply_msg;
    json_t *missing = json_array();
    char names[256];
    snprintf(names, sizeof names, "%s", self->config.required_services);
    char *saveptr = NULL;
    for (char *name = strtok_r(names, ",", &saveptr); name != NULL;
         name = strtok_r(NULL, ",", &saveptr)) {
        bool found = false;
        for (size_t i = 0; i < reply->n_services; i++) {
            if (strcmp(reply->services[i]->name, name) == 0 && reply->services[i]->n_instances > 0)
                found = true;
        }
        if (!found)
            json_array_append_new(missing, json_string(name));
    }
    protobuf_c_message_free_unpacked(reply_msg, NULL);
    if (json_array_size(missing) > 0) {
        json_t *details = json_object();
        json_object_set_new(details, "missing_services", missing);
        return respond_error(connection, 503, "not_ready", "required services are not registered",
                             request_id, details, NULL, NULL);
    }
    json_decref(missing);
    json_t *body = json_pack("{s:s}", "status", "ready");
    return respond(connection, 200, body, request_id, NULL, NULL);
}

/* ---- the RPC path -------------------------------------------------------- */

typedef struct {
    const route_t *route;
    ProtobufCMessage *message;
    arena_t *arena;
    transcode_error_t error;
    bool failed;
} query_ctx_t;

/* Sets a request field from one query parameter; refuses unknown ones. */
static enum MHD_Result query_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    (void)kind;
    query_ctx_t *q = cls;
    bool allowed = false;
    for (const char *const *f = q->route->query_fields; f != NULL && *f != NULL; f++) {
        if (strcmp(*f, key) == 0)
            allowed = true;
    }
    if (!allowed) {
        snprintf(q->error.field, sizeof q->error.field, "%s", key);
        snprintf(q->error.message, sizeof q->error.message, "unknown query parameter \"%s\"", key);
        q->failed = true;
        return MHD_NO;
    }
    if (!transcode_set_field(q->message, key, value ? value : "", q->arena, &q->error)) {
        q->failed = true;
        return MHD_NO;
    }
    return MHD_YES;
}

/* Responds 400 for a transcoding error. */
static enum MHD_Result respond_bad_field(struct MHD_Connection *connection,
                                         const transcode_error_t *error, const char *request_id)
{
    json_t *details = json_object();
    if (error->field[0] != '\0')
        json_object_set_new(details, "field", json_string(error->field));
    return respond_error(connection, 400, "invalid_argument", error->message, request_id, details,
                         NULL, NULL);
}

/* Answers a call of 'route': the error for a failed one ('code',
 * 'status'), else 'reply' as JSON (NULL: the service's body was not a
 * reply). */
static enum MHD_Result respond_call(struct MHD_Connection *connection, const route_t *route,
                                    const char *request_id, Paygate__V1__Code code,
                                    const rpc_status_t *status, const ProtobufCMessage *reply)
{
    if (code != PAYGATE__V1__CODE__OK) {
        unsigned http = http_status_for(code, status->reason);
        const char *message_text = status->message;
        if (http >= 500 && code != PAYGATE__V1__CODE__UNAVAILABLE &&
            code != PAYGATE__V1__CODE__DEADLINE_EXCEEDED) {
            log_warn("gateway: %s %s -> %s: %s (request %s)", route->service, route->rpc,
                     wire_code_name(code), status->message, request_id);
            message_text = "internal error"; /* never leak internals */
        } else if (code == PAYGATE__V1__CODE__UNAVAILABLE) {
            message_text = "the service is temporarily unavailable; retry later";
        } else if (code == PAYGATE__V1__CODE__DEADLINE_EXCEEDED) {
            message_text = "the service did not answer in time";
        }
        json_t *details = json_object();
        for (size_t i = 0; http != 500 && i < status->detail_count; i++)
            json_object_set_new(details, status->details[i].key,
                                json_string(status->details[i].value));
        const char *extra_name = NULL, *extra_value = NULL;
        if (http == 429 || http == 503) {
            extra_name = "Retry-After";
            extra_value = "1";
        } else if (http == 401) {
            extra_name = "WWW-Authenticate";
            extra_value = "Bearer";
        }
        return respond_error(connection, http, http_error_code(code, status->reason), message_text,
                             request_id, details, extra_name, extra_value);
    }
    json_t *json = reply ? transcode_to_json(reply) : NULL;
    if (json == NULL) {
        log_error("gateway: %s %s answered a body that is not a %s (request %s)", route->service,
                  route->rpc, route->reply->name, request_id);
        return respond_error(connection, 500, "internal_error", "internal error", request_id, NULL,
                             NULL, NULL);
    }
    return respond(connection, route->success_status, json, request_id, NULL, NULL);
}

/* ---- route callers: gathered calls without blocking a thread ----------- */

/* The caller of a route marked 'gather': a thread (or route_t.callers
 * threads) with its own client takes the calls the HTTP threads hand it
 * (their connections suspended) and makes them, several at once as one
 * lib/rpc batch, then resumes the connections. An HTTP thread thus never
 * waits for such a call, however many are in flight, and calls that
 * arrive while a batch is out make the next batch (taken by another
 * caller thread, if there is one waiting). */
typedef struct route_caller {
    gateway_t *gateway;
    const route_t *route;
    pthread_mutex_t lock; /* the queue; suspend and resume happen under it */
    pthread_cond_t wake;
    request_t *head;
    request_t **tail;
    bool accepting; /* its thread runs with a client: route_caller_take hands over */
    bool stopping;
    unsigned threads_made; /* to join */
    pthread_t threads[route_callers_max];
} route_caller_t;

/* Hands 'req' (its message 'message' in 'arena', which it keeps) to its
 * route's caller and suspends its connection. False when the caller is
 * stopping: the HTTP thread makes the call itself. */
static bool route_caller_take(gateway_t *self, struct MHD_Connection *connection, request_t *req,
                              const ProtobufCMessage *message, const char *user_id, arena_t *arena)
{
    route_caller_t *caller = &self->callers[req->match.route - routes_v1];
    pthread_mutex_lock(&caller->lock);
    if (caller->stopping || !caller->accepting) {
        pthread_mutex_unlock(&caller->lock);
        return false;
    }
    req->connection = connection;
    req->arena = arena;
    req->call_request = message;
    req->call_handed_us = clock_now_us();
    req->call_deadline_at_ms = req->call_handed_us / 1000 + self->config.deadline_ms;
    snprintf(req->user_id, sizeof req->user_id, "%s", user_id);
    req->call_done = false;
    req->call_next = NULL;
    *caller->tail = req;
    caller->tail = &req->call_next;
    atomic_fetch_add(&self->suspended, 1);
    MHD_suspend_connection(connection); /* before the caller can resume it */
    pthread_cond_signal(&caller->wake);
    pthread_mutex_unlock(&caller->lock);
    return true;
}

static void route_caller_call_in_time(route_caller_t *caller, rpc_client_t *client,
                                      request_t **reqs, size_t count);

/* Makes the calls of 'reqs' (1..rpc_batch_items_max) with 'client':
 * alone, or as one batch, with 'deadline_ms' (what is left of the
 * earliest one's). */
static void route_caller_call(route_caller_t *caller, rpc_client_t *client, request_t **reqs,
                              size_t count, uint32_t deadline_ms)
{
    const route_t *route = caller->route;
    if (count == 1) {
        request_t *req = reqs[0];
        rpc_call_opts_t opts = {.deadline_ms = deadline_ms,
                                .request_id = req->request_id,
                                .user_id = req->user_id,
                                .principal = "gateway"};
        req->call_code = rpc_client_call(client, route->service, route->rpc, req->call_request,
                                         route->reply, &req->call_reply, &opts, &req->call_status);
        return;
    }
    rpc_batch_item_t items[rpc_batch_items_max];
    for (size_t i = 0; i < count; i++)
        items[i] = (rpc_batch_item_t){.request = reqs[i]->call_request,
                                      .user_id = reqs[i]->user_id,
                                      .request_id = reqs[i]->request_id};
    rpc_call_opts_t opts = {.deadline_ms = deadline_ms, .principal = "gateway"};
    rpc_status_t status;
    Paygate__V1__Code code = rpc_client_call_batch(client, route->service, route->rpc, items, count,
                                                   route->reply, &opts, &status);
    if (code == PAYGATE__V1__CODE__UNIMPLEMENTED) { /* a service from before batches */
        for (size_t i = 0; i < count; i++)
            route_caller_call_in_time(caller, client, &reqs[i], 1);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        reqs[i]->call_code = items[i].status.code;
        reqs[i]->call_status = items[i].status;
        reqs[i]->call_reply = items[i].reply;
    }
}

/* Makes the calls of 'reqs' (1..rpc_batch_items_max) within each one's
 * deadline, counted from when it was handed over: those that waited it
 * out behind earlier batches are answered DEADLINE_EXCEEDED without a
 * call, the others go with what is left of the earliest deadline among
 * them. So no read waits longer than the gateway's deadline (which the
 * drain on stop counts on), however many are queued. */
static void route_caller_call_in_time(route_caller_t *caller, rpc_client_t *client,
                                      request_t **reqs, size_t count)
{
    request_t *live[rpc_batch_items_max];
    size_t n = 0;
    int64_t now = clock_now_ms(), earliest = INT64_MAX;
    for (size_t i = 0; i < count; i++) {
        if (reqs[i]->call_deadline_at_ms <= now) {
            reqs[i]->call_code = PAYGATE__V1__CODE__DEADLINE_EXCEEDED;
            rpc_status_set(&reqs[i]->call_status, PAYGATE__V1__CODE__DEADLINE_EXCEEDED,
                           "the call's deadline passed while it was queued");
            continue;
        }
        if (reqs[i]->call_deadline_at_ms < earliest)
            earliest = reqs[i]->call_deadline_at_ms;
        live[n++] = reqs[i];
    }
    if (n > 0)
        route_caller_call(caller, client, live, n, (uint32_t)(earliest - now));
}

/* The caller's thread: calls until stopped, then answers what is still
 * queued UNAVAILABLE (the gateway drains before it stops them). */
static void *route_caller_main(void *arg)
{
    route_caller_t *caller = arg;
    log_set_thread_instance("gateway-caller");
    rpc_client_t *client =
        rpc_client_new(caller->gateway->zmq_ctx, caller->gateway->config.broker_endpoint);
    pthread_mutex_lock(&caller->lock);
    if (client == NULL) {
        /* the HTTP threads make these calls themselves from now on; what
         * was handed over already is answered below (stopping) */
        log_error("gateway: no client for the caller of %s %s; its HTTP threads call instead",
                  caller->route->method, caller->route->path);
        caller->accepting = false;
        caller->stopping = true;
        pthread_cond_broadcast(&caller->wake); /* its other threads stop too */
    }
    for (;;) {
        while (caller->head == NULL && !caller->stopping)
            pthread_cond_wait(&caller->wake, &caller->lock);
        if (caller->head == NULL)
            break;
        request_t *reqs[rpc_batch_items_max];
        size_t count = 0;
        while (caller->head != NULL && count < rpc_batch_items_max) {
            reqs[count++] = caller->head;
            caller->head = caller->head->call_next;
        }
        if (caller->head == NULL)
            caller->tail = &caller->head;
        bool stopping = caller->stopping;
        pthread_mutex_unlock(&caller->lock);
        if (client != NULL && !stopping) {
            int64_t waits_us[rpc_batch_items_max], now_us = clock_now_us();
            for (size_t i = 0; i < count; i++)
                waits_us[i] = now_us - reqs[i]->call_handed_us;
            gateway_metrics_gathered(caller->gateway->metrics, caller->route->path, count,
                                     waits_us);
            route_caller_call_in_time(caller, client, reqs, count);
        } else {
            for (size_t i = 0; i < count; i++) {
                reqs[i]->call_code = PAYGATE__V1__CODE__UNAVAILABLE;
                rpc_status_set(&reqs[i]->call_status, PAYGATE__V1__CODE__UNAVAILABLE,
                               "the gateway is stopping");
            }
        }
        pthread_mutex_lock(&caller->lock);
        for (size_t i = 0; i < count; i++) {
            reqs[i]->call_done = true;
            MHD_resume_connection(reqs[i]->connection);
        }
    }
    pthread_mutex_unlock(&caller->lock);
    rpc_client_destroy(&client);
    return NULL;
}

/* Starts the callers of the gathered routes. False when a thread could
 * not start (those started are stopped). */
static bool route_callers_start(gateway_t *self)
{
    self->callers = calloc(routes_v1_count, sizeof *self->callers);
    if (self->callers == NULL)
        return false;
    for (size_t i = 0; i < routes_v1_count; i++) {
        route_caller_t *caller = &self->callers[i];
        caller->gateway = self;
        caller->route = &routes_v1[i];
        caller->tail = &caller->head;
        pthread_mutex_init(&caller->lock, NULL);
        pthread_cond_init(&caller->wake, NULL);
    }
    for (size_t i = 0; i < routes_v1_count; i++) {
        route_caller_t *caller = &self->callers[i];
        if (!routes_v1[i].gather)
            continue;
        unsigned threads = routes_v1[i].callers == 0 ? 1 : routes_v1[i].callers;
        if (threads > route_callers_max)
            threads = route_callers_max;
        pthread_mutex_lock(&caller->lock);
        while (caller->threads_made < threads &&
               pthread_create(&caller->threads[caller->threads_made], NULL, route_caller_main,
                              caller) == 0)
            caller->threads_made++;
        bool made = caller->threads_made == threads;
        caller->accepting = made && !caller->stopping;
        pthread_mutex_unlock(&caller->lock);
        if (!made)
            return false;
    }
    return true;
}

/* Stops the callers: each answers what is queued and resumes it, and
 * from then on the HTTP threads make these calls themselves. Their
 * memory stays until route_callers_free (an HTTP thread may still look
 * at it until libmicrohttpd has stopped). */
static void route_callers_stop(gateway_t *self)
{
    for (size_t i = 0; self->callers != NULL && i < routes_v1_count; i++) {
        route_caller_t *caller = &self->callers[i];
        pthread_mutex_lock(&caller->lock);
        caller->stopping = true;
        caller->accepting = false;
        pthread_cond_broadcast(&caller->wake);
        unsigned join = caller->threads_made;
        caller->threads_made = 0;
        pthread_mutex_unlock(&caller->lock);
        for (unsigned t = 0; t < join; t++)
            pthread_join(caller->threads[t], NULL);
    }
}

/* Stops the callers if they are not, and frees them. */
static void route_callers_free(gateway_t *self)
{
    route_callers_stop(self);
    for (size_t i = 0; self->callers != NULL && i < routes_v1_count; i++) {
        pthread_mutex_destroy(&self->callers[i].lock);
        pthread_cond_destroy(&self->callers[i].wake);
    }
    free(self->callers);
    self->callers = NULL;
}

/* Builds the request message from body, path, query and headers, calls
 * the service, and responds. */
static enum MHD_Result call_route(gateway_t *self, struct MHD_Connection *connection,
                                  request_t *req, const char *request_id, const char *user_id,
                                  arena_t *arena)
{
    const route_t *route = req->match.route;
    json_t *body = NULL;
    if (route->has_body && req->body_len > 0) {
        json_error_t parse_error;
        body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &parse_error);
        if (body == NULL) {
            char message[256];
            snprintf(message, sizeof message, "request body is not valid JSON: %s (line %d)",
                     parse_error.text, parse_error.line);
            return respond_error(connection, 400, "invalid_json", message, request_id, NULL, NULL,
                                 NULL);
        }
        if (!json_is_object(body)) {
            json_decref(body);
            return respond_error(connection, 400, "invalid_json",
                                 "request body must be a JSON object", request_id, NULL, NULL,
                                 NULL);
        }
    } else if (!route->has_body && req->body_len > 0) {
        return respond_error(connection, 400, "invalid_argument",
                             "this endpoint takes no request body", request_id, NULL, NULL, NULL);
    }
    if (body == NULL)
        body = json_object();

    /* Credential stuffing spreads over addresses; one account's guesses
     * are bounded per email, whoever sends them. */
    const char *email = json_string_value(json_object_get(body, "email"));
    if (route->limit == ROUTE_LIMIT_LOGIN && email != NULL) {
        char key[login_email_key_bytes_max + 1];
        while (*email == ' ' || *email == '\t')
            email++;
        size_t len = 0;
        for (; email[len] != '\0' && len < login_email_key_bytes_max; len++)
            key[len] = (char)tolower((unsigned char)email[len]);
        while (len > 0 && (key[len - 1] == ' ' || key[len - 1] == '\t'))
            len--;
        ratelimit_verdict_t verdict;
        if (!limit_take(self, RATELIMIT_LOGIN_EMAIL, key, len, req->client, request_id, &verdict)) {
            json_decref(body);
            return respond_rate_limited(self, connection, RATELIMIT_LOGIN_EMAIL, &verdict,
                                        request_id);
        }
    }

    /* Fields bound to the path or a header may not come from the body. */
    transcode_error_t error;
    memset(&error, 0, sizeof error);
    for (size_t i = 0; i < req->match.param_count; i++) {
        if (json_object_get(body, req->match.params[i].name) != NULL) {
            snprintf(error.field, sizeof error.field, "%s", req->match.params[i].name);
            snprintf(error.message, sizeof error.message, "unknown field \"%s\"",
                     req->match.params[i].name);
            json_decref(body);
            return respond_bad_field(connection, &error, request_id);
        }
    }
    if (route->idempotency_field != NULL &&
        json_object_get(body, route->idempotency_field) != NULL) {
        snprintf(error.field, sizeof error.field, "%s", route->idempotency_field);
        snprintf(error.message, sizeof error.message,
                 "unknown field \"%s\" (send the Idempotency-Key header)",
                 route->idempotency_field);
        json_decref(body);
        return respond_bad_field(connection, &error, request_id);
    }
    ProtobufCMessage *message = transcode_from_json(body, route->request, arena, &error);
    json_decref(body);
    if (message == NULL)
        return respond_bad_field(connection, &error, request_id);

    for (size_t i = 0; i < req->match.param_count; i++) {
        if (!transcode_set_field(message, req->match.params[i].name, req->match.params[i].value,
                                 arena, &error))
            return respond_bad_field(connection, &error, request_id);
    }
    query_ctx_t query = {.route = route, .message = message, .arena = arena};
    MHD_get_connection_values(connection, MHD_GET_ARGUMENT_KIND, query_field, &query);
    if (query.failed)
        return respond_bad_field(connection, &query.error, request_id);
    if (route->idempotency_field != NULL) {
        const char *key =
            MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Idempotency-Key");
        if (key == NULL || !wire_token_valid(key, idempotency_key_bytes_max))
            return respond_error(connection, 400, "idempotency_key_required",
                                 "an Idempotency-Key header of 1..255 printable characters is "
                                 "required",
                                 request_id, NULL, NULL, NULL);
        if (!transcode_set_field(message, route->idempotency_field, key, arena, &error))
            return respond_bad_field(connection, &error, request_id);
    }

    size_t size = protobuf_c_message_get_packed_size(message);
    uint8_t *packed = arena_alloc(arena, size + 1);
    rpc_client_t *client = thread_client(self);
    if (packed == NULL || client == NULL)
        return respond_error(connection, 500, "internal_error", "internal error", request_id, NULL,
                             NULL, NULL);
    protobuf_c_message_pack(message, packed);
    rpc_call_opts_t opts = {.deadline_ms = self->config.deadline_ms,
                            .request_id = request_id,
                            .user_id = user_id,
                            .principal = "gateway"};
    if (route->gather && route_caller_take(self, connection, req, message, user_id, arena))
        return MHD_YES; /* suspended: answered when the caller has the reply */
    zmq_msg_t reply_body;
    zmq_msg_init(&reply_body);
    rpc_status_t status;
    Paygate__V1__Code code = rpc_client_call_raw(client, route->service, route->rpc, packed, size,
                                                 &opts, &reply_body, &status);
    ProtobufCMessage *reply = NULL;
    if (code == PAYGATE__V1__CODE__OK) {
        ProtobufCAllocator allocator = arena_protobuf_allocator(arena);
        reply = protobuf_c_message_unpack(route->reply, &allocator, zmq_msg_size(&reply_body),
                                          zmq_msg_data(&reply_body));
    }
    zmq_msg_close(&reply_body);
    return respond_call(connection, route, request_id, code, &status, reply);
}

/* Checks "Authorization: Bearer <token>"; on success fills 'user_id'. */
static bool authenticate(gateway_t *self, struct MHD_Connection *connection,
                         char user_id[TOKEN_USER_ID_SIZE], const char **problem)
{
    const char *header = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Authorization");
    if (header == NULL || strncasecmp(header, "Bearer ", 7) != 0) {
        *problem = "an Authorization: Bearer token is required";
        return false;
    }
    const char *start = header + 7;
    while (*start == ' ')
        start++;
    char token[TOKEN_BYTES_MAX + 1];
    size_t len = strlen(start);
    while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t'))
        len--;
    if (len == 0 || len > TOKEN_BYTES_MAX) {
        *problem = "malformed";
        return false;
    }
    memcpy(token, start, len);
    token[len] = '\0';
    token_status_t result =
        token_verify(self->config.keys, token, (int64_t)time(NULL), user_id, TOKEN_USER_ID_SIZE);
    if (result != TOKEN_OK) {
        *problem = token_status_text(result);
        return false;
    }
    return true;
}

/* The complete request: answer it. */
static enum MHD_Result finish(gateway_t *self, struct MHD_Connection *connection, request_t *req,
                              const char *url, const char *method, const char *request_id)
{
    if (strcmp(url, "/healthz") == 0 && strcmp(method, "GET") == 0)
        return respond(connection, 200, json_pack("{s:s}", "status", "ok"), request_id, NULL, NULL);
    if (strcmp(url, "/readyz") == 0 && strcmp(method, "GET") == 0)
        return readiness(self, connection, request_id);
    if (req->limited) {
        log_refusal(self, req->limited_class, req->client, request_id, req->verdict.retry_after_s);
        return respond_rate_limited(self, connection, req->limited_class, &req->verdict,
                                    request_id);
    }
    if (strcmp(url, GATEWAY_METRICS_PATH) == 0 && strcmp(method, "GET") == 0)
        return gateway_metrics_serve(self->metrics, connection, request_id);
    if (strcmp(url, SSE_STREAM_PATH) == 0) {
        char user_id[TOKEN_USER_ID_SIZE] = "";
        const char *problem = NULL;
        if (strcmp(method, "GET") != 0)
            return respond_error(connection, 405, "method_not_allowed",
                                 "this method is not allowed here", request_id, NULL, "Allow",
                                 "GET");
        if (!authenticate(self, connection, user_id, &problem))
            return respond_error(connection, 401, "unauthenticated", problem, request_id, NULL,
                                 "WWW-Authenticate", "Bearer");
        ratelimit_verdict_t verdict;
        if (!limit_take(self, RATELIMIT_USER, user_id, strlen(user_id), req->client, request_id,
                        &verdict))
            return respond_rate_limited(self, connection, RATELIMIT_USER, &verdict, request_id);
        return sse_stream_open(self->streams, connection, user_id, request_id);
    }
    if (static_files_wanted(&self->config, method, url))
        return static_files_serve(&self->config, connection, url, request_id);
    if (!req->matched) {
        if (req->match.method_not_allowed)
            return respond_error(connection, 405, "method_not_allowed",
                                 "this method is not allowed here", request_id, NULL, "Allow",
                                 req->match.allow);
        return respond_error(connection, 404, "not_found", "no such endpoint", request_id, NULL,
                             NULL, NULL);
    }
    if (req->too_large) {
        char message[128];
        snprintf(message, sizeof message, "request body is over %zu bytes",
                 self->config.body_bytes_max);
        return respond_error(connection, 413, "body_too_large", message, request_id, NULL, NULL,
                             NULL);
    }
    const route_t *route = req->match.route;
    if (route->has_body && req->body_len > 0) {
        const char *type = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Content-Type");
        if (type == NULL || strncasecmp(type, "application/json", 16) != 0 ||
            (type[16] != '\0' && type[16] != ';'))
            return respond_error(connection, 415, "unsupported_media_type",
                                 "Content-Type must be application/json", request_id, NULL, NULL,
                                 NULL);
    }
    char user_id[TOKEN_USER_ID_SIZE] = "";
    if (route->auth) {
        const char *problem = NULL;
        if (!authenticate(self, connection, user_id, &problem))
            return respond_error(connection, 401, "unauthenticated", problem, request_id, NULL,
                                 "WWW-Authenticate", "Bearer");
        ratelimit_verdict_t verdict;
        if (!limit_take(self, RATELIMIT_USER, user_id, strlen(user_id), req->client, request_id,
                        &verdict))
            return respond_rate_limited(self, connection, RATELIMIT_USER, &verdict, request_id);
        if (route->limit == ROUTE_LIMIT_PAYMENT &&
            !limit_take(self, RATELIMIT_PAYMENT_USER, user_id, strlen(user_id), req->client,
                        request_id, &verdict))
            return respond_rate_limited(self, connection, RATELIMIT_PAYMENT_USER, &verdict,
                                        request_id);
    }
    arena_t *arena = arena_new(arena_block_bytes);
    if (arena == NULL)
        return MHD_NO;
    enum MHD_Result result = call_route(self, connection, req, request_id, user_id, arena);
    if (req->arena != arena) /* else the route's caller holds its message in it */
        arena_destroy(&arena);
    return result;
}

/* Takes the rate-limit tokens a request owes when its head arrives: one
 * per client address (not the probes: orchestrators poll them), and for
 * register and login one more per address. Marks 'req' limited on a
 * refusal (answered in finish(), after the body is skipped). */
static void limit_head(gateway_t *self, request_t *req, const char *url)
{
    if (strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0)
        return;
    size_t len = strlen(req->client);
    ratelimit_class_t classes[2] = {RATELIMIT_ADDRESS, RATELIMIT_CLASS_COUNT};
    if (req->matched && req->match.route->limit == ROUTE_LIMIT_REGISTER)
        classes[1] = RATELIMIT_REGISTER_ADDRESS;
    else if (req->matched && req->match.route->limit == ROUTE_LIMIT_LOGIN)
        classes[1] = RATELIMIT_LOGIN_ADDRESS;
    for (size_t i = 0; i < 2 && classes[i] != RATELIMIT_CLASS_COUNT; i++) {
        if (!ratelimit_take(self->limits, classes[i], req->client, len, clock_now_us(),
                            &req->verdict)) {
            req->limited = true;
            req->limited_class = classes[i];
            return;
        }
    }
}

/* libmicrohttpd's access handler: called for the head, each body chunk,
 * and once more at the end. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    gateway_t *self = cls;
    request_t *req = *con_cls;
    if (req == NULL) {
        req = calloc(1, sizeof *req);
        if (req == NULL)
            return MHD_NO;
        atomic_fetch_add(&self->in_flight, 1);
        req->started_us = clock_now_us();
        snprintf(req->path, sizeof req->path, "%s", url);
        req->matched = routes_match(routes_v1, routes_v1_count, method, url, &req->match);
        req->route_label =
            gateway_metrics_route_label(req->matched ? req->match.route->path : NULL, url,
                                        static_files_wanted(&self->config, method, url));
        snprintf(req->method, sizeof req->method, "%s", method);
        gateway_metrics_request_started(self->metrics);
        const char *length =
            MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Content-Length");
        if (length != NULL && strtoull(length, NULL, 10) > self->config.body_bytes_max)
            req->too_large = true;
        client_address(self, connection, req->client);
        limit_head(self, req, url);
        *con_cls = req;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t chunk = *upload_data_size;
        *upload_data_size = 0;
        if (clock_now_us() - req->started_us > (int64_t)self->config.timeout_s * 1000000) {
            log_warn("gateway: %s %s from %s: the body is still arriving after %u s; "
                     "closing the connection",
                     method, url, req->client, self->config.timeout_s);
            return MHD_NO; /* a slow client holds no thread and no slot for longer */
        }
        if (req->limited || req->too_large || req->body_len + chunk > self->config.body_bytes_max) {
            if (req->limited)
                return MHD_YES;    /* refused already: keep nothing */
            req->too_large = true; /* keep reading, keep nothing */
            return MHD_YES;
        }
        if (req->body_len + chunk > req->body_cap) {
            size_t cap = req->body_cap ? req->body_cap * 2 : 1024;
            while (cap < req->body_len + chunk)
                cap *= 2;
            if (cap > self->config.body_bytes_max)
                cap = self->config.body_bytes_max;
            char *grown = realloc(req->body, cap);
            if (grown == NULL)
                return MHD_NO;
            req->body = grown;
            req->body_cap = cap;
        }
        memcpy(req->body + req->body_len, upload_data, chunk);
        req->body_len += chunk;
        return MHD_YES;
    }
    if (req->connection != NULL) { /* back from its route's caller (resumed) */
        log_set_request_id(req->request_id);
        enum MHD_Result answered = respond_call(connection, req->match.route, req->request_id,
                                                req->call_code, &req->call_status, req->call_reply);
        log_set_request_id(NULL);
        return answered;
    }
    request_id_for(connection, req->request_id);
    /* Every line written while answering carries the request id. */
    log_set_request_id(req->request_id);
    enum MHD_Result result = finish(self, connection, req, url, method, req->request_id);
    log_set_request_id(NULL);
    return result;
}

/* Logs one line per request at info level when libmicrohttpd is done with
 * it (so a notification stream's duration is its lifetime): method,
 * route (the template, as the metrics label it), path, client address,
 * 'status' (0: no response was sent), duration_ms and whether the
 * response went out completely. Never the query, a header or a body:
 * those may hold tokens, passwords or keys. */
static void access_log(const request_t *req, unsigned status, int64_t duration_us,
                       enum MHD_RequestTerminationCode code)
{
    if (!log_enabled(LOG_LEVEL_INFO))
        return;
    log_set_request_id(req->request_id);
    log_write_fields(LOG_LEVEL_INFO,
                     LOG_FIELDS(LOG_STR("method", req->method), LOG_STR("route", req->route_label),
                                LOG_STR("path", req->path), LOG_STR("client", req->client),
                                LOG_INT("status", status),
                                LOG_DOUBLE("duration_ms", (double)duration_us / 1000.0),
                                LOG_BOOL("completed", code == MHD_REQUEST_TERMINATED_COMPLETED_OK)),
                     "http %s %s %u", req->method, req->path, status);
    log_set_request_id(NULL);
}

/* libmicrohttpd's own messages (MHD_USE_ERROR_LOG) as log lines, so that
 * stderr holds nothing but log lines. */
static void mhd_log(void *cls, const char *fmt, va_list args)
{
    (void)cls;
    char text[512];
    vsnprintf(text, sizeof text, fmt, args);
    size_t len = strlen(text);
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    log_warn("libmicrohttpd: %s", text);
}

/* Frees a request's state when libmicrohttpd is done with it. */
static void on_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode code)
{
    gateway_t *self = cls;
    request_t *req = *con_cls;
    if (req == NULL)
        return;
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_HTTP_STATUS);
    unsigned status = info != NULL ? info->http_status : 0;
    int64_t duration_us = clock_now_us() - req->started_us;
    gateway_metrics_request_finished(self->metrics, req->route_label, req->method, status,
                                     duration_us);
    access_log(req, status, duration_us, code);
    atomic_fetch_sub(&self->in_flight, 1);
    if (req->connection != NULL) /* it was handed to a route's caller */
        atomic_fetch_sub(&self->suspended, 1);
    if (req->call_reply != NULL)
        protobuf_c_message_free_unpacked(req->call_reply, NULL);
    arena_destroy(&req->arena);
    free(req->body);
    free(req);
    *con_cls = NULL;
}

/* ---- life cycle ---------------------------------------------------------- */

/* Remembers the gateway on each new connection (its socket context), for
 * respond() to see whether the gateway drains. */
static void on_connection(void *cls, struct MHD_Connection *connection, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)connection;
    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        *socket_context = cls;
}

gateway_t *gateway_new(const gateway_config_t *config)
{
    gateway_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    atomic_init(&self->refusal_logged_ms, 0);
    atomic_init(&self->refusals_unlogged, 0);
    self->zmq_ctx = zmq_ctx_new();
    if (self->zmq_ctx == NULL || pthread_key_create(&self->client_key, client_close) != 0) {
        free(self);
        return NULL;
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(config->port);
    if (inet_pton(AF_INET, config->bind_address, &addr.sin_addr) != 1) {
        log_error("gateway: bind address '%s' is not an IPv4 address", config->bind_address);
        zmq_ctx_term(self->zmq_ctx);
        free(self);
        return NULL;
    }
    self->metrics = gateway_metrics_new();
    if (self->metrics == NULL) {
        zmq_ctx_term(self->zmq_ctx);
        free(self);
        return NULL;
    }
    if (!route_callers_start(self)) {
        route_callers_free(self);
        gateway_metrics_destroy(&self->metrics);
        zmq_ctx_term(self->zmq_ctx);
        free(self);
        return NULL;
    }
    self->limits = ratelimit_new(&config->rate);
    if (self->limits == NULL) {
        gateway_metrics_destroy(&self->metrics);
        route_callers_free(self); /* their clients' sockets first: else zmq_ctx_term waits */
        zmq_ctx_term(self->zmq_ctx);
        free(self);
        return NULL;
    }
    sse_config_t streams = {config->redis_host, config->redis_port, config->streams_max,
                            config->timeout_s};
    self->streams = sse_new(&streams);
    if (self->streams == NULL) {
        ratelimit_destroy(&self->limits);
        gateway_metrics_destroy(&self->metrics);
        route_callers_free(self); /* their clients' sockets first: else zmq_ctx_term waits */
        zmq_ctx_term(self->zmq_ctx);
        free(self);
        return NULL;
    }
    /* suspend/resume: notification streams wait without blocking a thread */
    self->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
            MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC, /* ITC: for MHD_quiesce_daemon */
        config->port, NULL, NULL, on_request, self, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_THREAD_POOL_SIZE, config->threads, MHD_OPTION_CONNECTION_LIMIT,
        config->connections_max, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        config->connections_per_address_max, MHD_OPTION_CONNECTION_TIMEOUT, config->timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, config->header_bytes_max, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, self, MHD_OPTION_NOTIFY_CONNECTION, on_connection, self, MHD_OPTION_SOCK_ADDR,
        &addr, MHD_OPTION_UNESCAPE_CALLBACK, static_files_unescape, NULL, MHD_OPTION_END);
    if (self->daemon == NULL) {
        sse_destroy(&self->streams);
        ratelimit_destroy(&self->limits);
        gateway_metrics_destroy(&self->metrics);
        log_error("gateway: cannot listen on %s:%u: %s", config->bind_address,
                  (unsigned)config->port, strerror(errno));
        route_callers_free(self); /* their clients' sockets first: else zmq_ctx_term waits */
        zmq_ctx_term(self->zmq_ctx);
        free(self);
        return NULL;
    }
    log_info("gateway: listening on http://%s:%u (broker %s, %u threads)", config->bind_address,
             (unsigned)config->port, config->broker_endpoint, config->threads);
    return self;
}

void gateway_destroy(gateway_t **self_p)
{
    gateway_t *self = *self_p;
    if (self == NULL)
        return;
    /* Drain: refuse new connections; answer every request that came (each
     * ends its connection), within the call deadline and a margin; only
     * then close what is left (idle keep-alive connections). Stopping at
     * once would drop answers that are computed but not yet sent: a
     * client would not know whether its payment happened. */
    atomic_store(&self->draining, true);
    MHD_socket listener = MHD_quiesce_daemon(self->daemon);
    /* Quiesced, the socket still listens: the kernel would complete new
     * connections into its backlog and reset them when it closes. Stop
     * listening now, so that they are refused at once (a client tries
     * another instance); the descriptor stays open until the threads are
     * gone, as libmicrohttpd requires. */
    if (listener != MHD_INVALID_SOCKET)
        shutdown(listener, SHUT_RDWR);
    sse_shutdown(self->streams); /* no connection may stay suspended */
    int64_t until = clock_now_ms() + self->config.deadline_ms + drain_margin_ms;
    while (atomic_load(&self->in_flight) > 0 && clock_now_ms() < until)
        usleep(drain_poll_ms * 1000);
    unsigned left = atomic_load(&self->in_flight);
    if (left > 0)
        log_warn("gateway: %u requests still in progress after the drain; closing them", left);
    /* Idle keep-alive connections: a client that sends on one as it is
     * closed gets no answer. Give them a moment to be used (and closed
     * after that answer) or closed by their clients. */
    int64_t idle_until = clock_now_ms() + drain_idle_ms;
    while (left == 0 && clock_now_ms() < idle_until) {
        const union MHD_DaemonInfo *info =
            MHD_get_daemon_info(self->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (info == NULL || info->num_connections == 0)
            break;
        usleep(drain_poll_ms * 1000);
    }
    route_callers_stop(self); /* answers (resumes) anything still with them */
    /* libmicrohttpd must not stop with a connection still suspended: let
     * the pool threads finish the ones just resumed */
    int64_t resumed_until = clock_now_ms() + drain_idle_ms;
    while (atomic_load(&self->suspended) > 0 && clock_now_ms() < resumed_until)
        usleep(drain_poll_ms * 1000);
    MHD_stop_daemon(self->daemon); /* joins the pool threads: their clients close */
    route_callers_free(self);
    if (listener != MHD_INVALID_SOCKET)
        close(listener);
    sse_destroy(&self->streams);
    ratelimit_destroy(&self->limits);
    gateway_metrics_destroy(&self->metrics); /* after the threads that count */
    pthread_key_delete(self->client_key);
    zmq_ctx_term(self->zmq_ctx);
    free(self);
    *self_p = NULL;
}

uint64_t gateway_rate_limited_total(const gateway_t *self)
{
    return ratelimit_rejected_total(self->limits);
}
