/*
 * wire: decoding, validation and socket I/O of broker protocol messages.
 * See wire.h for the frame layout and broker/README.md for the protocol.
 */
#include "wire.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *wire_error_text(wire_error_t error)
{
    switch (error) {
    case WIRE_OK:
        return "ok";
    case WIRE_ERR_FRAMES:
        return "wrong number of frames";
    case WIRE_ERR_SIGNATURE:
        return "bad signature frame (expected \"PGW1\")";
    case WIRE_ERR_HEADER:
        return "header frame is not a valid paygate.v1.Header";
    case WIRE_ERR_COMMAND:
        return "unknown command";
    case WIRE_ERR_FIELD:
        return "missing or invalid field";
    case WIRE_ERR_TOO_BIG:
        return "message too big";
    }
    return "unknown wire error";
}

const char *wire_code_name(Paygate__V1__Code code)
{
    const ProtobufCEnumValue *value =
        protobuf_c_enum_descriptor_get_value(&paygate__v1__code__descriptor, (int)code);
    return value != NULL ? value->name : "UNKNOWN_CODE";
}

/* True when every byte of 'text' (before its NUL, at most 'bytes_max') is
 * in the set 'accept'-checker 'ok'; and the text is not empty. */
static bool wire_chars_valid(const char *text, size_t bytes_max, bool (*ok)(char c))
{
    if (text == NULL || *text == '\0')
        return false;
    size_t n = 0;
    for (; text[n] != '\0'; n++) {
        if (n >= bytes_max || !ok(text[n]))
            return false;
    }
    return true;
}

static bool wire_service_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

static bool wire_method_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.';
}

static bool wire_token_char(char c)
{
    return c > ' ' && c < 127;
}

bool wire_service_name_valid(const char *name)
{
    return wire_chars_valid(name, wire_service_bytes_max, wire_service_char);
}

void wire_identity_hex(const uint8_t *identity, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex[identity[i] >> 4];
        out[2 * i + 1] = hex[identity[i] & 15];
    }
    out[2 * len] = '\0';
}

bool wire_topic_name_valid(const char *name)
{
    /* Names become file names: the first character may not be '.', '-'
     * or '_' (no ".", "..", hidden files or option-like names). */
    if (name == NULL || !((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')))
        return false;
    return wire_chars_valid(name, wire_topic_bytes_max, wire_service_char);
}

bool wire_method_name_valid(const char *name)
{
    return wire_chars_valid(name, wire_method_bytes_max, wire_method_char);
}

bool wire_token_valid(const char *text, size_t bytes_max)
{
    return wire_chars_valid(text, bytes_max, wire_token_char);
}

/* Checks the fields that 'header''s command needs. Returns NULL when
 * valid, else a description of the first problem. */
static const char *wire_check_fields(const Paygate__V1__Header *header, bool has_body)
{
    switch (header->command) {
    case PAYGATE__V1__COMMAND__READY: {
        const Paygate__V1__Ready *ready = header->ready;
        if (ready == NULL)
            return "READY without ready";
        if (!wire_service_name_valid(ready->service))
            return "READY: service must be 1..64 of [a-z0-9_.-]";
        if (!wire_token_valid(ready->instance_id, wire_instance_bytes_max))
            return "READY: instance_id must be 1..128 printable characters";
        if (ready->heartbeat_interval_ms > 60000)
            return "READY: heartbeat_interval_ms over 60000";
        if (ready->max_in_flight > 1024)
            return "READY: max_in_flight over 1024";
        break;
    }
    case PAYGATE__V1__COMMAND__REQUEST:
        if (!wire_service_name_valid(header->service))
            return "REQUEST: service must be 1..64 of [a-z0-9_.-]";
        if (!wire_method_name_valid(header->method))
            return "REQUEST: method must be 1..64 of [A-Za-z0-9_.]";
        if (header->meta != NULL && header->meta->request_id != NULL &&
            header->meta->request_id[0] != '\0' &&
            !wire_token_valid(header->meta->request_id, wire_request_id_bytes_max))
            return "REQUEST: meta.request_id must be 1..64 printable characters";
        break;
    case PAYGATE__V1__COMMAND__REPLY:
        if (header->status != NULL && header->status->message != NULL &&
            strlen(header->status->message) > wire_message_text_bytes_max)
            return "REPLY: status.message over 1024 bytes";
        break;
    case PAYGATE__V1__COMMAND__HEARTBEAT:
    case PAYGATE__V1__COMMAND__DISCONNECT:
        if (has_body)
            return "body frame not allowed with this command";
        break;
    case PAYGATE__V1__COMMAND__PUBLISH:
    case PAYGATE__V1__COMMAND__DELIVER: {
        const Paygate__V1__Event *event = header->event;
        if (event == NULL)
            return "PUBLISH/DELIVER without event";
        if (!wire_topic_name_valid(event->topic))
            return "event.topic must be 1..48 of [a-z0-9_.-]";
        if (!wire_token_valid(event->event_id, wire_event_id_bytes_max))
            return "event.event_id must be 1..128 printable characters";
        if (event->key != NULL && strlen(event->key) > wire_event_key_bytes_max)
            return "event.key over 256 bytes";
        break;
    }
    case PAYGATE__V1__COMMAND__SUBSCRIBE: {
        const Paygate__V1__Subscribe *sub = header->subscribe;
        if (sub == NULL)
            return "SUBSCRIBE without subscribe";
        if (!wire_topic_name_valid(sub->topic) || !wire_topic_name_valid(sub->group))
            return "SUBSCRIBE: topic and group must be 1..48 of [a-z0-9_.-]";
        if (!wire_token_valid(sub->consumer_id, wire_instance_bytes_max))
            return "SUBSCRIBE: consumer_id must be 1..128 printable characters";
        if (sub->max_in_flight > 1024 || sub->heartbeat_interval_ms > 60000)
            return "SUBSCRIBE: max_in_flight over 1024 or heartbeat over 60000";
        if (has_body)
            return "body frame not allowed with this command";
        break;
    }
    case PAYGATE__V1__COMMAND__ACK:
    case PAYGATE__V1__COMMAND__NACK: {
        const Paygate__V1__Event *event = header->event;
        if (event == NULL || !wire_topic_name_valid(event->topic) ||
            !wire_topic_name_valid(event->group))
            return "ACK/NACK needs event.topic and event.group";
        if (has_body)
            return "body frame not allowed with this command";
        break;
    }
    default:
        assert(0 && "wire_check_fields: command checked by caller");
        return "unknown command";
    }
    return NULL;
}

/* Frees and forgets the unknown fields of 'message' and of every message
 * inside it. The broker re-encodes what it forwards, and protobuf-c keeps
 * some unknown fields (a field number 0 in a two-byte tag) that it then
 * writes in a form no decoder accepts: a peer could make the broker send
 * frames its workers must refuse. Nothing here needs unknown fields. */
static void wire_strip_unknown(ProtobufCMessage *message)
{
    for (unsigned i = 0; i < message->n_unknown_fields; i++)
        free(message->unknown_fields[i].data);
    free(message->unknown_fields);
    message->unknown_fields = NULL;
    message->n_unknown_fields = 0;
    const ProtobufCMessageDescriptor *desc = message->descriptor;
    for (unsigned f = 0; f < desc->n_fields; f++) {
        const ProtobufCFieldDescriptor *field = &desc->fields[f];
        if (field->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        char *member = (char *)message + field->offset;
        if (field->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t count = *(size_t *)((char *)message + field->quantifier_offset);
            ProtobufCMessage **items = *(ProtobufCMessage ***)member;
            for (size_t k = 0; k < count; k++) {
                if (items[k] != NULL)
                    wire_strip_unknown(items[k]);
            }
        } else {
            ProtobufCMessage *sub = *(ProtobufCMessage **)member;
            if (sub != NULL)
                wire_strip_unknown(sub);
        }
    }
}

wire_error_t wire_decode(const uint8_t *sig, size_t sig_len, const uint8_t *hdr, size_t hdr_len,
                         bool has_body, Paygate__V1__Header **out, const char **detail)
{
    *out = NULL;
    *detail = NULL;
    if (sig_len != wire_signature_bytes || memcmp(sig, WIRE_SIGNATURE, wire_signature_bytes) != 0) {
        *detail = wire_error_text(WIRE_ERR_SIGNATURE);
        return WIRE_ERR_SIGNATURE;
    }
    if (hdr_len > wire_header_bytes_max) {
        *detail = "header frame over 64 KiB";
        return WIRE_ERR_HEADER;
    }
    Paygate__V1__Header *header = paygate__v1__header__unpack(NULL, hdr_len, hdr);
    if (header == NULL) {
        *detail = wire_error_text(WIRE_ERR_HEADER);
        return WIRE_ERR_HEADER;
    }
    wire_strip_unknown(&header->base);
    switch (header->command) {
    case PAYGATE__V1__COMMAND__READY:
    case PAYGATE__V1__COMMAND__HEARTBEAT:
    case PAYGATE__V1__COMMAND__REQUEST:
    case PAYGATE__V1__COMMAND__REPLY:
    case PAYGATE__V1__COMMAND__DISCONNECT:
    case PAYGATE__V1__COMMAND__PUBLISH:
    case PAYGATE__V1__COMMAND__SUBSCRIBE:
    case PAYGATE__V1__COMMAND__DELIVER:
    case PAYGATE__V1__COMMAND__ACK:
    case PAYGATE__V1__COMMAND__NACK:
        break;
    default:
        paygate__v1__header__free_unpacked(header, NULL);
        *detail = wire_error_text(WIRE_ERR_COMMAND);
        return WIRE_ERR_COMMAND;
    }
    const char *problem = wire_check_fields(header, has_body);
    *out = header;
    if (problem != NULL) {
        *detail = problem;
        return WIRE_ERR_FIELD;
    }
    return WIRE_OK;
}

void wire_message_clear(wire_message_t *msg)
{
    if (msg->header != NULL)
        paygate__v1__header__free_unpacked(msg->header, NULL);
    msg->header = NULL;
    if (msg->has_body)
        zmq_msg_close(&msg->body);
    msg->has_body = false;
    msg->identity_len = 0;
    msg->bytes = 0;
    msg->user_id[0] = '\0';
}

/* Receives and discards the rest of a multipart message after 'part'. */
static void wire_drain(void *socket, zmq_msg_t *part)
{
    while (zmq_msg_more(part)) {
        zmq_msg_close(part);
        zmq_msg_init(part);
        if (zmq_msg_recv(part, socket, 0) < 0)
            break;
    }
}

int wire_recv(void *socket, bool routed, size_t bytes_max, int flags, wire_message_t *msg,
              const char **detail)
{
    /* parts[0] identity (ROUTER only), then signature, header, body */
    enum { parts_max = 4 };
    zmq_msg_t parts[parts_max];
    size_t count = 0;
    size_t bytes = 0;
    int result = WIRE_OK;
    *detail = NULL;
    memset(msg, 0, sizeof *msg);
    size_t first = routed ? 1 : 0;

    for (;;) {
        zmq_msg_t *part = &parts[count];
        zmq_msg_init(part);
        if (zmq_msg_recv(part, socket, count == 0 ? flags : 0) < 0) {
            int saved = errno;
            zmq_msg_close(part);
            for (size_t i = 0; i < count; i++)
                zmq_msg_close(&parts[i]);
            errno = saved;
            return -1;
        }
        if (count >= first)
            bytes += zmq_msg_size(part);
        count++;
        if (!zmq_msg_more(part))
            break;
        if (count == parts_max) {
            /* Too many frames: drain the rest into the last slot. */
            wire_drain(socket, part);
            result = WIRE_ERR_FRAMES;
            break;
        }
    }

    if (routed) {
        size_t n = zmq_msg_size(&parts[0]);
        if (n > wire_identity_bytes_max)
            n = wire_identity_bytes_max;
        memcpy(msg->identity, zmq_msg_data(&parts[0]), n);
        msg->identity_len = n;
        /* Metadata rides on the frames that came from the wire. */
        const char *user_id = count > 1 ? zmq_msg_gets(&parts[1], "User-Id") : NULL;
        if (user_id != NULL)
            snprintf(msg->user_id, sizeof msg->user_id, "%s", user_id);
    }
    msg->bytes = bytes;
    size_t frames = count - first;
    if (result == WIRE_OK && (frames < 2 || frames > 3))
        result = WIRE_ERR_FRAMES;

    if (result == WIRE_OK) {
        zmq_msg_t *sig = &parts[first];
        zmq_msg_t *hdr = &parts[first + 1];
        bool has_body = frames == 3;
        result = (int)wire_decode(zmq_msg_data(sig), zmq_msg_size(sig), zmq_msg_data(hdr),
                                  zmq_msg_size(hdr), has_body, &msg->header, detail);
        if (result == WIRE_OK && bytes > bytes_max) {
            result = WIRE_ERR_TOO_BIG;
            *detail = wire_error_text(WIRE_ERR_TOO_BIG);
        }
        if (result == WIRE_OK && has_body) {
            zmq_msg_init(&msg->body);
            zmq_msg_move(&msg->body, &parts[first + 2]);
            msg->has_body = true;
        }
    } else {
        *detail = wire_error_text((wire_error_t)result);
    }
    for (size_t i = 0; i < count; i++)
        zmq_msg_close(&parts[i]);
    return result;
}

int wire_send(void *socket, const uint8_t *identity, size_t identity_len,
              const Paygate__V1__Header *header, zmq_msg_t *body, int flags)
{
    uint8_t stack[512];
    size_t size = paygate__v1__header__get_packed_size(header);
    uint8_t *buffer = size <= sizeof stack ? stack : malloc(size);
    if (buffer == NULL) {
        errno = ENOMEM;
        return -1;
    }
    size_t packed = paygate__v1__header__pack(header, buffer);
    assert(packed == size);

    int more = ZMQ_SNDMORE | flags;
    int rc = 0;
    if (identity_len > 0)
        rc = zmq_send(socket, identity, identity_len, more);
    if (rc >= 0)
        rc = zmq_send(socket, WIRE_SIGNATURE, wire_signature_bytes, more);
    if (rc >= 0)
        rc = zmq_send(socket, buffer, packed, body != NULL ? more : flags);
    if (rc >= 0 && body != NULL)
        rc = zmq_msg_send(body, socket, flags);
    int saved = errno;
    if (buffer != stack)
        free(buffer);
    errno = saved;
    return rc < 0 ? -1 : 0;
}
