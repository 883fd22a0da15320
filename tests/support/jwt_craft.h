/*
 * jwt_craft: tokens made by hand, for tests of how the gateway and the
 * services treat tokens they did not issue (forged, tampered, expired,
 * with other algorithms or claims).
 *
 * It writes whatever header and payload it is given, byte for byte: it
 * must never check or fix them (that is what the code under test does).
 */
#ifndef PAYGATE_TEST_JWT_CRAFT_H
#define PAYGATE_TEST_JWT_CRAFT_H

#include <stdbool.h>
#include <stddef.h>

/* Writes "b64url(header).b64url(payload).b64url(HMAC-SHA256(secret))" into
 * 'out' ('out_size' bytes with the NUL); a NULL 'secret' leaves the
 * signature empty ("b64url(header).b64url(payload)."). 'header' and
 * 'payload' are NUL-terminated JSON text (or anything else). Returns false,
 * with 'out' empty, when the token does not fit. */
bool jwt_craft(char *out, size_t out_size, const char *header, const char *payload,
               const char *secret);

/* Appends base64url (no padding) of 'len' bytes 'data' to the string in
 * 'out' ('out_size' bytes with the NUL), for a token put together piece by
 * piece (a tampered payload between a real header and signature). Returns
 * false, leaving 'out' as it was, when it does not fit. */
bool jwt_b64url_append(char *out, size_t out_size, const void *data, size_t len);

#endif
