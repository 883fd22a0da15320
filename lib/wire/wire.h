/*
 * wire: the broker protocol's frames, decoded and validated in one place.
 *
 * Every message to or from the broker is a ZeroMQ multipart message:
 *
 *   +----------------+  frame 0: 4 bytes, signature + version "PGW1"
 *   | "PGW1"         |
 *   +----------------+  frame 1: paygate.v1.Header, protobuf (<= 64 KiB)
 *   | Header         |
 *   +----------------+  frame 2: optional body, opaque RPC payload;
 *   | body           |           only with REQUEST and REPLY
 *   +----------------+
 *
 * On a ROUTER socket one more frame, the peer's routing identity, comes
 * first. The full protocol is in broker/README.md.
 *
 * This module never trusts a peer: every field a command needs is checked
 * here, so that the broker and the RPC library only ever see well-formed
 * headers. It must never abort on input.
 */
#ifndef PAYGATE_WIRE_H
#define PAYGATE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "broker.pb-c.h"

#define WIRE_SIGNATURE "PGW1"
enum {
    wire_signature_bytes = 4,
    wire_header_bytes_max = 64 * 1024,
    wire_identity_bytes_max = 255,
    wire_service_bytes_max = 64,
    wire_method_bytes_max = 64,
    wire_instance_bytes_max = 128,
    wire_request_id_bytes_max = 64,
    wire_message_text_bytes_max = 1024, /* Status.message */
    wire_topic_bytes_max = 48,          /* topic and group names */
    wire_event_id_bytes_max = 128,
    wire_event_key_bytes_max = 256,
    wire_user_id_bytes_max = 64, /* ZAP User-Id: the peer's key name */
};

typedef enum {
    WIRE_OK = 0,
    WIRE_ERR_FRAMES,    /* wrong number of frames */
    WIRE_ERR_SIGNATURE, /* frame 0 is not "PGW1" */
    WIRE_ERR_HEADER,    /* frame 1 is not a valid Header */
    WIRE_ERR_COMMAND,   /* unknown command */
    WIRE_ERR_FIELD,     /* a field the command needs is missing or invalid */
    WIRE_ERR_TOO_BIG,   /* the whole message is over the configured maximum */
} wire_error_t;

/* A received message. 'header' is owned (free with wire_message_clear). */
typedef struct {
    uint8_t identity[wire_identity_bytes_max];
    size_t identity_len; /* 0 unless received on a ROUTER socket */
    Paygate__V1__Header *header;
    zmq_msg_t body; /* valid only when 'has_body' */
    bool has_body;
    size_t bytes; /* sum of all frame sizes, identity excluded */
    /* ROUTER only: the ZAP User-Id of the peer's connection (the name of
     * its authenticated key), "" without authentication. */
    char user_id[wire_user_id_bytes_max + 1];
} wire_message_t;

/* Human text for 'error'. Never NULL. */
const char *wire_error_text(wire_error_t error);

/* Stable upper-case name of a status code ("OK", "UNAVAILABLE", ...). */
const char *wire_code_name(Paygate__V1__Code code);

/* Decodes and validates a message from its frames: 'sig' (frame 0),
 * 'hdr' (frame 1) and whether a body frame follows. On WIRE_OK '*out' is a
 * header the caller frees with paygate__v1__header__free_unpacked. On error
 * '*out' is NULL, or, for WIRE_ERR_FIELD, the decoded header (so that the
 * caller can answer the sender's correlation id); '*detail' names the
 * problem. Pure: no I/O, safe on any bytes. */
wire_error_t wire_decode(const uint8_t *sig, size_t sig_len, const uint8_t *hdr, size_t hdr_len,
                         bool has_body, Paygate__V1__Header **out, const char **detail);

/* True when 'name' is a valid service name: 1..64 of [a-z0-9_.-]. */
bool wire_service_name_valid(const char *name);

/* Writes the 'len' bytes of a routing 'identity' as lower-case hex into
 * 'out' (2 * len + 1 bytes): the key of peer tables and logs. */
void wire_identity_hex(const uint8_t *identity, size_t len, char *out);

/* True when 'name' is a valid topic or group name: 1..48 of [a-z0-9_.-],
 * starting with a letter or digit (names become file names). */
bool wire_topic_name_valid(const char *name);

/* True when 'name' is a valid method name: 1..64 of [A-Za-z0-9_.]. */
bool wire_method_name_valid(const char *name);

/* True when 'text' is 1..'bytes_max' printable ASCII characters, no space. */
bool wire_token_valid(const char *text, size_t bytes_max);

/* Receives one whole multipart message from 'socket' into 'msg' (which
 * must be cleared with wire_message_clear afterwards, whatever the result).
 * 'routed' says the socket is a ROUTER (identity frame first). Messages
 * over 'bytes_max' are drained and reported as WIRE_ERR_TOO_BIG, with the
 * header decoded when possible. Returns -1 on a socket error (errno set,
 * e.g. EAGAIN with ZMQ_DONTWAIT, ETERM), otherwise a wire_error_t. On a
 * ROUTER, 'msg->user_id' is the connection's ZAP User-Id. */
int wire_recv(void *socket, bool routed, size_t bytes_max, int flags, wire_message_t *msg,
              const char **detail);

/* Frees what 'msg' holds and resets it; safe to call twice. */
void wire_message_clear(wire_message_t *msg);

/* Sends 'header' and, when 'body' is not NULL, the body frame, which is
 * moved (the caller's zmq_msg_t is left empty and must still be closed).
 * With 'identity_len' > 0 the identity frame goes first (ROUTER).
 * Returns 0, or -1 with errno (EHOSTUNREACH: peer gone, EAGAIN: HWM). */
int wire_send(void *socket, const uint8_t *identity, size_t identity_len,
              const Paygate__V1__Header *header, zmq_msg_t *body, int flags);

#endif
