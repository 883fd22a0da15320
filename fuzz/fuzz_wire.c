/*
 * fuzz_wire: libFuzzer target for the broker protocol's frame parser
 * (lib/wire): wire_decode() on 1..4 frames cut from the input, and
 * wire_recv() on the same frames sent over an inproc ZeroMQ pair.
 *
 * Input layout (fuzz/corpus/wire/ holds real frames in it):
 *
 *   byte 0       control: bits 0-1: frame count - 1 (1..4 frames);
 *                bit 2: routed (the first frame is a ROUTER identity);
 *                bit 3: bytes_max of 64 instead of 1 MiB (WIRE_ERR_TOO_BIG)
 *   then         every frame but the last: u16 little-endian length, bytes
 *                (a length past the end takes what is left);
 *                the last frame: the rest of the input
 *
 * What every input must satisfy (else the target aborts: a finding):
 *   - no crash, leak, out-of-bounds access or undefined behaviour;
 *   - wire_decode()'s contract: a header out only with WIRE_OK or
 *     WIRE_ERR_FIELD, a detail exactly when it fails;
 *   - wire_recv() over a socket returns what wire_decode() says of the
 *     same frames, with the same header, body, identity and byte count;
 *   - a header that decodes WIRE_OK re-encodes: packed again it decodes
 *     WIRE_OK, and packing is stable (the same bytes a second time);
 *   - wire_send() of a decoded message reaches wire_recv() as the same
 *     message.
 *
 * Must never: block (every recv has a message waiting), or keep state from
 * one input to the next other than the two sockets.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "wire/wire.h"

enum {
    frames_max = 4,
    control_routed = 1 << 2,
    control_small_limit = 1 << 3,
    small_bytes_max = 64,
    large_bytes_max = 1024 * 1024,
};

/* One frame: a view into the input. */
typedef struct {
    const uint8_t *data;
    size_t len;
} frame_t;

/* The two ends of the inproc pair: what the fuzzer "sends" goes in at
 * 'peer' and wire_recv() reads it at 'local'. Made once per process. */
static void *zmq_context;
static void *peer_socket;
static void *local_socket;

/* Stops the run with 'what' when 'ok' is false: libFuzzer records the
 * input as a crash. */
static void require(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_wire: invariant broken: %s\n", what);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    zmq_context = zmq_ctx_new();
    peer_socket = zmq_socket(zmq_context, ZMQ_PAIR);
    local_socket = zmq_socket(zmq_context, ZMQ_PAIR);
    int linger_ms = 0;
    zmq_setsockopt(peer_socket, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    zmq_setsockopt(local_socket, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    require(zmq_bind(local_socket, "inproc://fuzz-wire") == 0 &&
                zmq_connect(peer_socket, "inproc://fuzz-wire") == 0,
            "inproc pair set up");
    return 0;
}

/* Cuts 'data' into 'count' frames by the layout above. */
static void split_frames(const uint8_t *data, size_t size, size_t count, frame_t *frames)
{
    size_t at = 0;
    for (size_t i = 0; i < count; i++) {
        if (i + 1 == count) {
            frames[i] = (frame_t){data + at, size - at};
            break;
        }
        size_t len = 0;
        if (size - at >= 2) {
            len = (size_t)data[at] | (size_t)data[at + 1] << 8;
            at += 2;
        } else {
            at = size;
        }
        if (len > size - at)
            len = size - at;
        frames[i] = (frame_t){data + at, len};
        at += len;
    }
}

/* 'header' packed into a new malloc'd buffer, its size in '*len'. */
static uint8_t *pack_header(const Paygate__V1__Header *header, size_t *len)
{
    *len = paygate__v1__header__get_packed_size(header);
    uint8_t *buffer = malloc(*len > 0 ? *len : 1);
    require(buffer != NULL, "malloc");
    require(paygate__v1__header__pack(header, buffer) == *len, "pack writes get_packed_size bytes");
    return buffer;
}

/* True when 'a' and 'b' pack to the same bytes. */
static bool same_header(const Paygate__V1__Header *a, const Paygate__V1__Header *b)
{
    size_t a_len, b_len;
    uint8_t *a_bytes = pack_header(a, &a_len);
    uint8_t *b_bytes = pack_header(b, &b_len);
    bool same = a_len == b_len && memcmp(a_bytes, b_bytes, a_len) == 0;
    free(a_bytes);
    free(b_bytes);
    return same;
}

/* Calls wire_decode() and checks its contract. Returns the result; the
 * header (when one came out) is the caller's. */
static wire_error_t decode_checked(const frame_t *sig, const frame_t *hdr, bool has_body,
                                   Paygate__V1__Header **header)
{
    const char *detail = "unset";
    wire_error_t result =
        wire_decode(sig->data, sig->len, hdr->data, hdr->len, has_body, header, &detail);
    require(result >= WIRE_OK && result <= WIRE_ERR_TOO_BIG, "a known wire_error_t");
    require((result == WIRE_OK) == (detail == NULL), "a detail exactly on failure");
    require((*header != NULL) == (result == WIRE_OK || result == WIRE_ERR_FIELD),
            "a header out only with WIRE_OK or WIRE_ERR_FIELD");
    return result;
}

/* A header that decoded WIRE_OK, packed and decoded again, is WIRE_OK, and
 * packing it is stable. */
static void check_reencodes(const Paygate__V1__Header *header, bool has_body)
{
    size_t len;
    uint8_t *packed = pack_header(header, &len);
    frame_t sig = {(const uint8_t *)WIRE_SIGNATURE, wire_signature_bytes};
    frame_t hdr = {packed, len};
    Paygate__V1__Header *again = NULL;
    require(decode_checked(&sig, &hdr, has_body, &again) == WIRE_OK,
            "a WIRE_OK header, packed again, decodes WIRE_OK");
    size_t again_len;
    uint8_t *again_packed = pack_header(again, &again_len);
    require(again_len == len && memcmp(again_packed, packed, len) == 0,
            "packing a decoded header is stable");
    free(again_packed);
    paygate__v1__header__free_unpacked(again, NULL);
    free(packed);
}

/* Sends 'frames' as one multipart message from the peer end. */
static void send_frames(const frame_t *frames, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        int flags = i + 1 < count ? ZMQ_SNDMORE : 0;
        require(zmq_send(peer_socket, frames[i].data, frames[i].len, flags) == (int)frames[i].len,
                "zmq_send on the inproc pair");
    }
}

/* wire_recv() of the frames just sent must agree with 'expected' (what
 * wire_decode() said) and 'expected_header'. */
static void check_recv(const frame_t *frames, size_t count, bool routed, size_t bytes_max,
                       int expected, const Paygate__V1__Header *expected_header)
{
    wire_message_t msg;
    const char *detail = NULL;
    int result = wire_recv(local_socket, routed, bytes_max, 0, &msg, &detail);
    require(result == expected, "wire_recv agrees with wire_decode");
    require((result == WIRE_OK) == (detail == NULL), "wire_recv: a detail exactly on failure");
    size_t first = routed ? 1 : 0;
    size_t bytes = 0;
    for (size_t i = first; i < count; i++)
        bytes += frames[i].len;
    require(msg.bytes == bytes, "wire_recv counts every frame but the identity");
    if (routed) {
        size_t n =
            frames[0].len < wire_identity_bytes_max ? frames[0].len : wire_identity_bytes_max;
        require(msg.identity_len == n && memcmp(msg.identity, frames[0].data, n) == 0,
                "wire_recv keeps the identity");
    }
    if (result == WIRE_OK) {
        require(msg.header != NULL && same_header(msg.header, expected_header),
                "wire_recv decodes the header wire_decode does");
        bool has_body = count - first == 3;
        require(msg.has_body == has_body, "wire_recv keeps the body frame");
        if (has_body) {
            const frame_t *body = &frames[first + 2];
            require(
                zmq_msg_size(&msg.body) == body->len &&
                    (body->len == 0 || memcmp(zmq_msg_data(&msg.body), body->data, body->len) == 0),
                "wire_recv keeps the body's bytes");
        }
    }
    wire_message_clear(&msg);
    wire_message_clear(&msg); /* documented as safe twice */
}

/* wire_send() of 'header' (+ 'body') from the peer end, then wire_recv()
 * at the local end, gives the same message back. */
static void check_send_round_trip(const Paygate__V1__Header *header, const frame_t *identity,
                                  const frame_t *body)
{
    size_t identity_len = 0;
    if (identity != NULL)
        identity_len =
            identity->len < wire_identity_bytes_max ? identity->len : wire_identity_bytes_max;
    /* An empty identity is not sent by wire_send(): only round trip ones
     * that are. */
    bool routed = identity_len > 0;
    zmq_msg_t body_msg;
    if (body != NULL) {
        require(zmq_msg_init_size(&body_msg, body->len) == 0, "zmq_msg_init_size");
        if (body->len > 0)
            memcpy(zmq_msg_data(&body_msg), body->data, body->len);
    }
    require(wire_send(peer_socket, routed ? identity->data : NULL, identity_len, header,
                      body != NULL ? &body_msg : NULL, 0) == 0,
            "wire_send on the inproc pair");
    if (body != NULL)
        zmq_msg_close(&body_msg);
    wire_message_t msg;
    const char *detail = NULL;
    require(wire_recv(local_socket, routed, SIZE_MAX, 0, &msg, &detail) == WIRE_OK,
            "what wire_send sends, wire_recv takes");
    require(same_header(msg.header, header), "wire_send/wire_recv keep the header");
    require(msg.identity_len == identity_len &&
                (identity_len == 0 || memcmp(msg.identity, identity->data, identity_len) == 0),
            "wire_send/wire_recv keep the identity");
    require(msg.has_body == (body != NULL), "wire_send/wire_recv keep the body frame");
    if (body != NULL)
        require(zmq_msg_size(&msg.body) == body->len &&
                    (body->len == 0 || memcmp(zmq_msg_data(&msg.body), body->data, body->len) == 0),
                "wire_send/wire_recv keep the body's bytes");
    wire_message_clear(&msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t control = data[0];
    size_t count = (size_t)(control & 3) + 1;
    bool routed = (control & control_routed) != 0;
    size_t bytes_max = (control & control_small_limit) ? small_bytes_max : large_bytes_max;
    frame_t frames[frames_max];
    split_frames(data + 1, size - 1, count, frames);

    /* wire_decode() alone, on the frames as they come: frame 0 the
     * signature, frame 1 the header (empty when missing), a body if more. */
    frame_t none = {(const uint8_t *)"", 0};
    Paygate__V1__Header *header = NULL;
    wire_error_t raw =
        decode_checked(&frames[0], count > 1 ? &frames[1] : &none, count > 2, &header);
    if (raw == WIRE_OK)
        check_reencodes(header, count > 2);
    if (header != NULL)
        paygate__v1__header__free_unpacked(header, NULL);

    /* What wire_recv() must make of the same frames on a socket: the
     * frame count first, then wire_decode(), then the size limit. */
    size_t first = routed ? 1 : 0;
    size_t frame_count = count - first;
    int expected = WIRE_ERR_FRAMES;
    header = NULL;
    if (count >= first + 2 && frame_count <= 3) {
        expected =
            (int)decode_checked(&frames[first], &frames[first + 1], frame_count == 3, &header);
        size_t bytes = 0;
        for (size_t i = first; i < count; i++)
            bytes += frames[i].len;
        if (expected == WIRE_OK && bytes > bytes_max)
            expected = WIRE_ERR_TOO_BIG;
    }
    send_frames(frames, count);
    check_recv(frames, count, routed, bytes_max, expected, header);
    if (expected == WIRE_OK)
        check_send_round_trip(header, routed ? &frames[0] : NULL,
                              frame_count == 3 ? &frames[first + 2] : NULL);
    if (header != NULL)
        paygate__v1__header__free_unpacked(header, NULL);
    return 0;
}
