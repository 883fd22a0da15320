/*
 * test_wire_fuzz_regressions: inputs that fuzz/fuzz_wire (and
 * fuzz/fuzz_protobuf) found, kept as unit tests of lib/wire.
 *
 * The finding: protobuf-c 1.4.1 rejects a tag whose first byte says field
 * number 0 ("\x00"), but accepts the same tag written in two bytes
 * ("\x80\x00": field 0, varint) and keeps it as an unknown field. Packing
 * writes that unknown field back with its minimal tag, "\x00", which no
 * decoder accepts. So wire_decode() accepts a header that, once packed
 * again, is not a header any more. The broker packs again what it forwards:
 * broker.c copies a REQUEST's meta (unknown fields included) into the
 * header it sends the worker, whose wire_recv() then fails
 * (WIRE_ERR_HEADER): the worker drops the request and the client waits
 * for its deadline (DEADLINE_EXCEEDED) while the request holds one of the
 * worker's in-flight slots. Three extra bytes from any peer of the broker.
 *
 * The rule these tests hold lib/wire to: every header wire_decode()
 * accepts packs into bytes that wire_decode() accepts again. Either fix
 * passes them: refusing such headers, or dropping what cannot be packed.
 * The same inputs are in fuzz/corpus/wire/ (regress_unknown_field_0*).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "broker.pb-c.h"
#include "wire/wire.h"

/* Decodes 'header_bytes' as frame 1 (frame 0 "PGW1", no body). When
 * wire_decode() accepts it, the header is packed again and must be
 * accepted again, to the same command and correlation id. */
static void expect_refused_or_reencodable(const uint8_t *header_bytes, size_t len)
{
    Paygate__V1__Header *header = NULL;
    const char *detail = NULL;
    wire_error_t result = wire_decode((const uint8_t *)WIRE_SIGNATURE, wire_signature_bytes,
                                      header_bytes, len, false, &header, &detail);
    if (result != WIRE_OK) {
        if (header != NULL)
            paygate__v1__header__free_unpacked(header, NULL);
        return; /* refused: fine */
    }
    size_t packed_len = paygate__v1__header__get_packed_size(header);
    uint8_t *packed = malloc(packed_len + 1);
    assert_non_null(packed);
    assert_int_equal(paygate__v1__header__pack(header, packed), packed_len);

    Paygate__V1__Header *again = NULL;
    result = wire_decode((const uint8_t *)WIRE_SIGNATURE, wire_signature_bytes, packed, packed_len,
                         false, &again, &detail);
    bool same = again != NULL && again->command == header->command &&
                again->correlation_id == header->correlation_id;
    /* Freed before asserting: a failed assert leaves the test. */
    if (again != NULL)
        paygate__v1__header__free_unpacked(again, NULL);
    paygate__v1__header__free_unpacked(header, NULL);
    free(packed);
    if (result != WIRE_OK)
        print_error("accepted header, packed again, is refused: %s\n", detail);
    assert_int_equal(result, WIRE_OK);
    assert_true(same);
}

/* The minimised fuzz_wire input: HEARTBEAT, then an unknown varint field
 * numbered 0 in a two-byte tag. */
static void test_unknown_field_0_in_header(void **state)
{
    (void)state;
    static const uint8_t header[] = {
        0x08, 0x02,       /* command = HEARTBEAT */
        0x80, 0x00, 0x00, /* tag "field 0, varint" in two bytes, value 0 */
    };
    expect_refused_or_reencodable(header, sizeof header);
}

/* The same unknown field inside a REQUEST's meta: what the broker copies
 * into the header it forwards to a worker (broker.c, sink_send_request). */
static void test_unknown_field_0_in_request_meta(void **state)
{
    (void)state;
    static const uint8_t header[] = {
        0x08, 0x03,                      /* command = REQUEST */
        0x10, 0x02,                      /* correlation_id = 2 */
        0x1a, 0x04, 'e',  'c', 'h', 'o', /* service = "echo" */
        0x22, 0x04, 'E',  'c', 'h', 'o', /* method = "Echo" */
        0x2a, 0x0a,                      /* meta, 10 bytes: */
        0x0a, 0x02, 'r',  '1',           /*   request_id = "r1" */
        0x10, 0xb8, 0x17,                /*   deadline_ms = 3000 */
        0x80, 0x00, 0x00,                /*   field 0, two-byte tag, value 0 */
    };
    expect_refused_or_reencodable(header, sizeof header);
}

/* A length-delimited field 0 ("\x82\x00": wire type 2, two-byte tag):
 * fuzz_protobuf's minimised input, here in a REPLY's status. */
static void test_unknown_bytes_field_0_in_reply_status(void **state)
{
    (void)state;
    static const uint8_t header[] = {
        0x08, 0x04,       /* command = REPLY */
        0x10, 0x07,       /* correlation_id = 7 */
        0x32, 0x05,       /* status, 5 bytes: */
        0x08, 0x02,       /*   code = NOT_FOUND */
        0x82, 0x00, 0x00, /*   field 0, length-delimited, two-byte tag, empty */
    };
    expect_refused_or_reencodable(header, sizeof header);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_field_0_in_header),
        cmocka_unit_test(test_unknown_field_0_in_request_meta),
        cmocka_unit_test(test_unknown_bytes_field_0_in_reply_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
