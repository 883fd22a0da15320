/*
 * rpc client: one DEALER socket to the broker, requests matched to replies
 * by correlation id.
 *
 * The client never waits forever: every call has a deadline, the broker
 * answers DEADLINE_EXCEEDED itself when it passes, and the client gives up
 * a little later (client_margin_ms) in case the broker is gone. Replies to
 * calls that were given up on are recognised by their correlation id and
 * dropped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "clock/clock.h"
#include "log/log.h"
#include "rpc.h"
#include "wire/wire.h"

enum {
    client_margin_ms = 1000,
    client_hwm = 10000,
    client_reconnect_ivl_ms = 100,
    client_reconnect_ivl_max_ms = 1000,
    client_message_bytes_max = 16 * 1024 * 1024,
};

struct rpc_client {
    void *zmq_ctx;
    bool owns_ctx;
    void *socket;
    uint64_t next_correlation;
    char endpoint[256];
};

rpc_client_t *rpc_client_new(void *zmq_ctx, const char *endpoint)
{
    const curve_identity_t *identity = curve_process_identity();
    if (identity == NULL)
        return NULL; /* no broker credentials: curve logged which */
    return rpc_client_new_as(zmq_ctx, endpoint, identity);
}

rpc_client_t *rpc_client_new_as(void *zmq_ctx, const char *endpoint,
                                const curve_identity_t *identity)
{
    rpc_client_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    self->zmq_ctx = zmq_ctx;
    if (self->zmq_ctx == NULL) {
        self->zmq_ctx = zmq_ctx_new();
        self->owns_ctx = true;
    }
    self->socket = self->zmq_ctx ? zmq_socket(self->zmq_ctx, ZMQ_DEALER) : NULL;
    if (self->socket == NULL) {
        rpc_client_destroy(&self);
        return NULL;
    }
    int zero = 0, one = 1, hwm = client_hwm;
    int ivl = client_reconnect_ivl_ms, ivl_max = client_reconnect_ivl_max_ms;
    zmq_setsockopt(self->socket, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(self->socket, ZMQ_IMMEDIATE, &one, sizeof one);
    zmq_setsockopt(self->socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->socket, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(self->socket, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    if (curve_client_apply(identity, self->socket) != 0) {
        log_error("rpc client: CURVE keys refused: %s", zmq_strerror(errno));
        rpc_client_destroy(&self);
        return NULL;
    }
    if (zmq_connect(self->socket, endpoint) != 0) {
        log_error("rpc client: cannot connect to '%s': %s", endpoint, zmq_strerror(errno));
        rpc_client_destroy(&self);
        return NULL;
    }
    if (getrandom(&self->next_correlation, sizeof self->next_correlation, 0) < 0)
        self->next_correlation = (uint64_t)clock_now_us();
    self->next_correlation >>= 1; /* keep far from wrapping */
    return self;
}

void rpc_client_destroy(rpc_client_t **self)
{
    if (*self == NULL)
        return;
    if ((*self)->socket != NULL)
        zmq_close((*self)->socket);
    if ((*self)->owns_ctx && (*self)->zmq_ctx != NULL)
        zmq_ctx_term((*self)->zmq_ctx);
    free(*self);
    *self = NULL;
}

/* Writes a fresh random tracing id ("req_" + 16 hex digits) to 'out'. */
static void client_request_id(char out[32])
{
    uint64_t bits = 0;
    if (getrandom(&bits, sizeof bits, 0) < 0)
        bits = (uint64_t)clock_now_us();
    snprintf(out, 32, "req_%016llx", (unsigned long long)bits);
}

/* Sends 'header' and a body frame with a copy of 'body_len' bytes at
 * 'body' ('body' may be NULL when 'body_len' is 0). Tries at once, the
 * usual case (a connection is up and its queue has room), and only when
 * that would block waits up to 'wait_ms' for the socket to become
 * writable (with ZMQ_IMMEDIATE it is not while no connection to the
 * broker is up), then tries once more: no poll per call when the broker
 * is there. Returns 0, or -1 with 'status' set to UNAVAILABLE. */
static int client_send_frames(rpc_client_t *self, const Paygate__V1__Header *header,
                              const void *body, size_t body_len, uint32_t wait_ms,
                              rpc_status_t *status)
{
    zmq_msg_t frame;
    zmq_msg_init_size(&frame, body_len);
    if (body_len > 0)
        memcpy(zmq_msg_data(&frame), body, body_len);
    /* A DEALER takes a multipart message whole or not at all: EAGAIN on
     * the first frame means nothing was sent (and 'frame' is still ours). */
    int rc = wire_send(self->socket, NULL, 0, header, &frame, ZMQ_DONTWAIT);
    if (rc != 0 && errno == EAGAIN) {
        zmq_pollitem_t item = {.socket = self->socket, .events = ZMQ_POLLOUT};
        if (zmq_poll(&item, 1, (long)wait_ms) <= 0) {
            zmq_msg_close(&frame);
            rpc_status_set(status, PAYGATE__V1__CODE__UNAVAILABLE, "broker not reachable at %s",
                           self->endpoint);
            return -1;
        }
        rc = wire_send(self->socket, NULL, 0, header, &frame, ZMQ_DONTWAIT);
    }
    int saved = errno;
    zmq_msg_close(&frame);
    if (rc != 0) {
        rpc_status_set(status, PAYGATE__V1__CODE__UNAVAILABLE, "cannot send to broker: %s",
                       zmq_strerror(saved));
        return -1;
    }
    return 0;
}

int rpc_client_send(rpc_client_t *self, const char *service, const char *method, const void *body,
                    size_t body_len, const rpc_call_opts_t *opts, uint64_t *correlation_id,
                    rpc_status_t *status)
{
    rpc_call_opts_t defaults = {0};
    if (opts == NULL)
        opts = &defaults;
    uint32_t deadline_ms = opts->deadline_ms ? opts->deadline_ms : rpc_deadline_default_ms;
    /* The request id: the caller's, else the one this thread is handling
     * (a service calling another on behalf of a request), else new. */
    char generated[32];
    const char *request_id = opts->request_id;
    if (request_id == NULL || *request_id == '\0')
        request_id = log_request_id();
    if (*request_id == '\0') {
        client_request_id(generated);
        request_id = generated;
    }

    Paygate__V1__Caller caller = PAYGATE__V1__CALLER__INIT;
    caller.user_id = (char *)(opts->user_id ? opts->user_id : "");
    caller.principal = (char *)(opts->principal ? opts->principal : "");
    Paygate__V1__CallMeta meta = PAYGATE__V1__CALL_META__INIT;
    meta.request_id = (char *)request_id;
    meta.deadline_ms = deadline_ms;
    meta.caller = &caller;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REQUEST;
    header.correlation_id = self->next_correlation++;
    header.service = (char *)service;
    header.method = (char *)method;
    header.meta = &meta;

    /* Waits (within the deadline) for a live connection if there is none:
     * ZMQ_IMMEDIATE makes the socket unwritable while the broker is
     * unreachable. */
    if (client_send_frames(self, &header, body, body_len, deadline_ms, status) != 0)
        return -1;
    *correlation_id = header.correlation_id;
    return 0;
}

int rpc_client_recv(rpc_client_t *self, int timeout_ms, uint64_t *correlation_id,
                    zmq_msg_t *reply_body, rpc_status_t *status)
{
    int64_t until = clock_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = until - clock_now_ms();
        if (left < 0)
            left = 0;
        /* A blocking receive bounded by ZMQ_RCVTIMEO: libzmq then sleeps
         * on its mailbox directly, about half the system calls of a
         * zmq_poll followed by a non-blocking receive (this runs once or
         * more per call). The other frames of a message arrive with its
         * first (ZeroMQ delivers a multipart message whole). */
        int wait_ms = (int)left;
        zmq_setsockopt(self->socket, ZMQ_RCVTIMEO, &wait_ms, sizeof wait_ms);
        wire_message_t msg;
        const char *detail = NULL;
        int rc = wire_recv(self->socket, false, client_message_bytes_max, 0, &msg, &detail);
        if (rc < 0) {
            int saved = errno;
            wire_message_clear(&msg);
            if (saved == EAGAIN) { /* nothing within 'wait_ms' */
                if (clock_now_ms() >= until)
                    return 0;
                continue;
            }
            if (saved == EINTR)
                continue;
            errno = saved;
            return -1;
        }
        if (rc != WIRE_OK || msg.header->command != PAYGATE__V1__COMMAND__REPLY) {
            log_warn("rpc client: dropped a message from the broker: %s",
                     rc != WIRE_OK ? detail : "not a REPLY");
            wire_message_clear(&msg);
            continue;
        }
        *correlation_id = msg.header->correlation_id;
        rpc_status_from_wire(status, msg.header->status);
        if (reply_body != NULL && status->code == PAYGATE__V1__CODE__OK) {
            if (msg.has_body)
                zmq_msg_move(reply_body, &msg.body);
            else {
                zmq_msg_close(reply_body);
                zmq_msg_init(reply_body);
            }
        }
        wire_message_clear(&msg);
        return 1;
    }
}

/* Waits until 'give_up_at' for the REPLY to 'sent', dropping late replies
 * to earlier calls. Returns the status code (DEADLINE_EXCEEDED when the
 * broker never answered). */
static Paygate__V1__Code client_wait(rpc_client_t *self, uint64_t sent, int64_t give_up_at,
                                     uint32_t waited_ms, zmq_msg_t *reply_body,
                                     rpc_status_t *status)
{
    for (;;) {
        int64_t left = give_up_at - clock_now_ms();
        if (left <= 0)
            break;
        uint64_t got = 0;
        int rc = rpc_client_recv(self, (int)left, &got, reply_body, status);
        if (rc < 0) {
            rpc_status_set(status, PAYGATE__V1__CODE__UNAVAILABLE, "broker socket error: %s",
                           zmq_strerror(errno));
            return status->code;
        }
        if (rc == 0)
            break;
        if (got == sent)
            return status->code;
        /* a late reply to an earlier call that was given up on: drop it */
    }
    rpc_status_set(status, PAYGATE__V1__CODE__DEADLINE_EXCEEDED,
                   "no reply from broker %s within %u ms", self->endpoint, (unsigned)waited_ms);
    return status->code;
}

Paygate__V1__Code rpc_client_call_raw(rpc_client_t *self, const char *service, const char *method,
                                      const void *body, size_t body_len,
                                      const rpc_call_opts_t *opts, zmq_msg_t *reply_body,
                                      rpc_status_t *status)
{
    rpc_status_t local;
    if (status == NULL)
        status = &local;
    uint32_t deadline_ms =
        opts && opts->deadline_ms ? opts->deadline_ms : (uint32_t)rpc_deadline_default_ms;
    int64_t give_up_at = clock_now_ms() + deadline_ms + client_margin_ms;
    uint64_t sent = 0;
    if (rpc_client_send(self, service, method, body, body_len, opts, &sent, status) != 0)
        return status->code;
    return client_wait(self, sent, give_up_at, deadline_ms + client_margin_ms, reply_body, status);
}

/* The PublishAck in 'reply' into '*offset' and '*duplicate'. False when
 * it is not one. */
static bool publish_ack_read(zmq_msg_t *reply, uint64_t *offset, bool *duplicate)
{
    Paygate__V1__PublishAck *ack =
        paygate__v1__publish_ack__unpack(NULL, zmq_msg_size(reply), zmq_msg_data(reply));
    if (ack == NULL)
        return false;
    if (offset != NULL)
        *offset = ack->offset;
    if (duplicate != NULL)
        *duplicate = ack->duplicate;
    paygate__v1__publish_ack__free_unpacked(ack, NULL);
    return true;
}

Paygate__V1__Code rpc_client_publish(rpc_client_t *self, const char *topic, const char *event_id,
                                     const char *key, const void *payload, size_t payload_len,
                                     uint32_t deadline_ms, uint64_t *offset, bool *duplicate,
                                     rpc_status_t *status)
{
    rpc_status_t local;
    if (status == NULL)
        status = &local;
    if (deadline_ms == 0)
        deadline_ms = rpc_deadline_default_ms;
    Paygate__V1__Event event = PAYGATE__V1__EVENT__INIT;
    event.topic = (char *)topic;
    event.event_id = (char *)event_id;
    event.key = (char *)(key ? key : "");
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__PUBLISH;
    header.correlation_id = self->next_correlation++;
    header.event = &event;
    if (client_send_frames(self, &header, payload, payload_len, deadline_ms, status) != 0)
        return status->code;
    zmq_msg_t reply;
    zmq_msg_init(&reply);
    Paygate__V1__Code code = client_wait(self, header.correlation_id, clock_now_ms() + deadline_ms,
                                         deadline_ms, &reply, status);
    if (code == PAYGATE__V1__CODE__OK && !publish_ack_read(&reply, offset, duplicate)) {
        rpc_status_set(status, PAYGATE__V1__CODE__INTERNAL,
                       "publish answer is not a paygate.v1.PublishAck");
        code = status->code;
    }
    zmq_msg_close(&reply);
    return code;
}

size_t rpc_client_publish_many(rpc_client_t *self, rpc_publish_item_t *items, size_t count,
                               uint32_t deadline_ms)
{
    if (deadline_ms == 0)
        deadline_ms = rpc_deadline_default_ms;
    int64_t give_up_at = clock_now_ms() + deadline_ms;
    size_t sent = 0, waiting = 0, ok = 0;
    for (; sent < count; sent++) {
        rpc_publish_item_t *item = &items[sent];
        Paygate__V1__Event event = PAYGATE__V1__EVENT__INIT;
        event.topic = (char *)item->topic;
        event.event_id = (char *)item->event_id;
        event.key = (char *)(item->key ? item->key : "");
        Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
        header.command = PAYGATE__V1__COMMAND__PUBLISH;
        header.correlation_id = self->next_correlation++;
        header.event = &event;
        rpc_status_t status;
        int64_t left = give_up_at - clock_now_ms();
        if (left <= 0 || client_send_frames(self, &header, item->payload, item->payload_len,
                                            (uint32_t)left, &status) != 0)
            break;
        item->correlation_id = header.correlation_id;
        item->code = PAYGATE__V1__CODE__DEADLINE_EXCEEDED; /* until answered */
        waiting++;
    }
    for (size_t i = sent; i < count; i++)
        items[i].code = PAYGATE__V1__CODE__UNAVAILABLE;
    zmq_msg_t reply;
    zmq_msg_init(&reply);
    while (waiting > 0) {
        int64_t left = give_up_at - clock_now_ms();
        if (left <= 0)
            break;
        uint64_t got = 0;
        rpc_status_t status;
        int rc = rpc_client_recv(self, (int)left, &got, &reply, &status);
        if (rc < 0) {
            for (size_t i = 0; i < sent; i++)
                if (items[i].code == PAYGATE__V1__CODE__DEADLINE_EXCEEDED)
                    items[i].code = PAYGATE__V1__CODE__UNAVAILABLE;
            break;
        }
        if (rc == 0)
            break;
        /* ids were given in order: the reply's item, if it is one of ours */
        if (got < items[0].correlation_id || got - items[0].correlation_id >= sent)
            continue; /* a late reply to an earlier call: dropped */
        rpc_publish_item_t *item = &items[got - items[0].correlation_id];
        if (item->code != PAYGATE__V1__CODE__DEADLINE_EXCEEDED)
            continue; /* answered already (cannot happen: one reply per id) */
        item->code = status.code;
        if (status.code == PAYGATE__V1__CODE__OK &&
            !publish_ack_read(&reply, &item->offset, &item->duplicate))
            item->code = PAYGATE__V1__CODE__INTERNAL;
        if (item->code == PAYGATE__V1__CODE__OK)
            ok++;
        waiting--;
    }
    zmq_msg_close(&reply);
    return ok;
}

Paygate__V1__Code rpc_client_call(rpc_client_t *self, const char *service, const char *method,
                                  const ProtobufCMessage *request,
                                  const ProtobufCMessageDescriptor *reply_desc,
                                  ProtobufCMessage **reply, const rpc_call_opts_t *opts,
                                  rpc_status_t *status)
{
    rpc_status_t local;
    if (status == NULL)
        status = &local;
    *reply = NULL;
    size_t size = protobuf_c_message_get_packed_size(request);
    uint8_t stack[1024];
    uint8_t *buffer = size <= sizeof stack ? stack : malloc(size);
    if (buffer == NULL) {
        rpc_status_set(status, PAYGATE__V1__CODE__INTERNAL, "out of memory");
        return status->code;
    }
    size_t packed = protobuf_c_message_pack(request, buffer);
    zmq_msg_t body;
    zmq_msg_init(&body);
    Paygate__V1__Code code =
        rpc_client_call_raw(self, service, method, buffer, packed, opts, &body, status);
    if (buffer != stack)
        free(buffer);
    if (code == PAYGATE__V1__CODE__OK) {
        *reply =
            protobuf_c_message_unpack(reply_desc, NULL, zmq_msg_size(&body), zmq_msg_data(&body));
        if (*reply == NULL) {
            rpc_status_set(status, PAYGATE__V1__CODE__INTERNAL,
                           "reply from %s.%s is not a valid %s", service, method, reply_desc->name);
            code = status->code;
        }
    }
    zmq_msg_close(&body);
    return code;
}

/* Sets every item's status to 'status' (the batch's failure). */
static void batch_fail_all(rpc_batch_item_t *items, size_t count, const rpc_status_t *status)
{
    for (size_t i = 0; i < count; i++)
        items[i].status = *status;
}

/* Decodes the BatchReply in 'body' into the items. Returns OK, or
 * INTERNAL (in 'status') when it is not one answer per item. */
static Paygate__V1__Code batch_take_reply(const zmq_msg_t *body, rpc_batch_item_t *items,
                                          size_t count,
                                          const ProtobufCMessageDescriptor *reply_desc,
                                          const char *service, const char *method,
                                          rpc_status_t *status)
{
    Paygate__V1__BatchReply *reply = paygate__v1__batch_reply__unpack(
        NULL, zmq_msg_size((zmq_msg_t *)body), zmq_msg_data((zmq_msg_t *)body));
    if (reply == NULL || reply->n_results != count) {
        rpc_status_set(status, PAYGATE__V1__CODE__INTERNAL,
                       "batch reply from %s.%s does not answer each of its %zu calls", service,
                       method, count);
        if (reply != NULL)
            paygate__v1__batch_reply__free_unpacked(reply, NULL);
        return status->code;
    }
    for (size_t i = 0; i < count; i++) {
        const Paygate__V1__BatchResult *result = reply->results[i];
        rpc_status_from_wire(&items[i].status, result->status);
        if (items[i].status.code != PAYGATE__V1__CODE__OK)
            continue;
        items[i].reply =
            protobuf_c_message_unpack(reply_desc, NULL, result->body.len, result->body.data);
        if (items[i].reply == NULL)
            rpc_status_set(&items[i].status, PAYGATE__V1__CODE__INTERNAL,
                           "reply from %s.%s is not a valid %s", service, method, reply_desc->name);
    }
    paygate__v1__batch_reply__free_unpacked(reply, NULL);
    return PAYGATE__V1__CODE__OK;
}

Paygate__V1__Code rpc_client_call_batch(rpc_client_t *self, const char *service, const char *method,
                                        rpc_batch_item_t *items, size_t count,
                                        const ProtobufCMessageDescriptor *reply_desc,
                                        const rpc_call_opts_t *opts, rpc_status_t *status)
{
    rpc_status_t local;
    if (status == NULL)
        status = &local;
    for (size_t i = 0; i < count; i++)
        items[i].reply = NULL;
    char batch_method[wire_method_bytes_max + 1];
    if (count == 0 || count > rpc_batch_items_max) {
        rpc_status_set(status, PAYGATE__V1__CODE__INVALID_ARGUMENT,
                       "a batch of %s.%s needs 1..%d calls, not %zu", service, method,
                       rpc_batch_items_max, count);
        batch_fail_all(items, count, status);
        return status->code;
    }
    if (snprintf(batch_method, sizeof batch_method, "batch.%s", method) >=
        (int)sizeof batch_method) {
        rpc_status_set(status, PAYGATE__V1__CODE__INVALID_ARGUMENT,
                       "method name %.64s... is too long for a batch (batch.<method>: at most %d "
                       "bytes)",
                       method, wire_method_bytes_max);
        batch_fail_all(items, count, status);
        return status->code;
    }
    /* Each call's body, packed one after another in one buffer. */
    size_t total = 0;
    for (size_t i = 0; i < count; i++)
        total += protobuf_c_message_get_packed_size(items[i].request);
    Paygate__V1__BatchItem wire_items[rpc_batch_items_max];
    Paygate__V1__BatchItem *wire_item_ptrs[rpc_batch_items_max];
    uint8_t *bodies = malloc(total > 0 ? total : 1);
    Paygate__V1__Code code = PAYGATE__V1__CODE__INTERNAL;
    uint8_t *packed = NULL;
    if (bodies == NULL) {
        rpc_status_set(status, code, "out of memory");
        goto done;
    }
    size_t at = 0;
    for (size_t i = 0; i < count; i++) {
        paygate__v1__batch_item__init(&wire_items[i]);
        size_t len = protobuf_c_message_pack(items[i].request, bodies + at);
        wire_items[i].body.data = bodies + at;
        wire_items[i].body.len = len;
        wire_items[i].user_id = (char *)(items[i].user_id ? items[i].user_id : "");
        wire_items[i].request_id = (char *)(items[i].request_id ? items[i].request_id : "");
        wire_item_ptrs[i] = &wire_items[i];
        at += len;
    }
    Paygate__V1__BatchRequest request = PAYGATE__V1__BATCH_REQUEST__INIT;
    request.n_items = count;
    request.items = wire_item_ptrs;
    size_t size = paygate__v1__batch_request__get_packed_size(&request);
    packed = malloc(size > 0 ? size : 1);
    if (packed == NULL) {
        rpc_status_set(status, code, "out of memory");
        goto done;
    }
    paygate__v1__batch_request__pack(&request, packed);
    rpc_call_opts_t batch_opts = opts != NULL ? *opts : (rpc_call_opts_t){0};
    /* Each item's user id rides in the body, where the broker cannot see
     * it: the batch carries the first of them as its own, so that the
     * broker refuses the batch from a key that may not act for users (and
     * a worker refuses item user ids on a batch without one). */
    batch_opts.user_id = NULL;
    for (size_t i = 0; i < count && batch_opts.user_id == NULL; i++)
        if (items[i].user_id != NULL && items[i].user_id[0] != '\0')
            batch_opts.user_id = items[i].user_id;
    zmq_msg_t body;
    zmq_msg_init(&body);
    code =
        rpc_client_call_raw(self, service, batch_method, packed, size, &batch_opts, &body, status);
    if (code == PAYGATE__V1__CODE__OK)
        code = batch_take_reply(&body, items, count, reply_desc, service, method, status);
    zmq_msg_close(&body);
done:
    free(bodies);
    free(packed);
    if (code != PAYGATE__V1__CODE__OK)
        batch_fail_all(items, count, status);
    return code;
}
