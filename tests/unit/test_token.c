/*
 * test_token: unit tests of lib/token, the HS256 access tokens.
 *
 * Attack tokens are crafted by hand: header and payload JSON written out,
 * base64url-encoded and signed with libsodium's HMAC under the right key,
 * so that exactly one thing (the claim or header field under test) is
 * wrong. test_crafted_token_verifies proves the crafting itself is right,
 * which is what makes every refusal below mean something.
 *
 * Time is a number (NOW); nothing reads the clock. The environment tests
 * set and unset PAYGATE_JWT_* and do not depend on the caller's
 * environment. Log lines are captured from fd 2 where a test checks them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "log/log.h"
#include "token/token.h"

/* 2023-11-14T22:13:20Z: any fixed time works. */
#define NOW INT64_C(1700000000)
/* Secrets shaped like ./dev up's: base64 text of 48 random bytes. */
static const char secret_a[] = "q1Vb3mYp8Jc0Zt2Rk5Wn7Hs9Dg4Lf6Xa1Ue3Io5Py7Tr9Ew2Qs4Ad6Fg8Hj0Kl2Zx";
static const char secret_b[] = "Mn8Bv6Cx4Zl2Kj0Hg8Fd6Sa4Po2Iu0Yt8Re6Wq4Ea2Sd0Fg8Hj6Kl4Zx2Cv0Bn8M";
static const char header_ok[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}";
/* Big enough for anything the tests build, including over-limit tokens. */
#define BUF_BYTES 16384

/* ---- helpers ---------------------------------------------------------------- */

/* A keyring like production's defaults: kid k1, secret_a, 900 s. */
static token_keyring_t *keyring_default(void)
{
    token_keyring_t *k =
        token_keyring_new("k1", secret_a, strlen(secret_a), "paygate", "paygate-api", 900);
    assert_non_null(k);
    return k;
}

/* Appends base64url('len' bytes at 'data') to 'out' (of 'out_size'). */
static void b64url_append(char *out, size_t out_size, const void *data, size_t len)
{
    size_t used = strlen(out);
    size_t need = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    assert_true(used + need <= out_size);
    sodium_bin2base64(out + used, out_size - used, data, len,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* Writes "b64(header).b64(payload)." into 'out'. */
static void craft_unsigned(char *out, size_t out_size, const char *header, const char *payload)
{
    out[0] = '\0';
    b64url_append(out, out_size, header, strlen(header));
    strcat(out, ".");
    b64url_append(out, out_size, payload, strlen(payload));
    strcat(out, ".");
}

/* Writes "b64(header).b64(payload).b64(HMAC-SHA256(secret))" into 'out';
 * a NULL 'secret' leaves the signature empty. Uses init/update/final
 * because crypto_auth_hmacsha256() takes a fixed 32-byte key. */
static void craft(char *out, size_t out_size, const char *header, const char *payload,
                  const char *secret)
{
    craft_unsigned(out, out_size, header, payload);
    if (secret == NULL)
        return;
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init(&state, (const unsigned char *)secret, strlen(secret));
    crypto_auth_hmacsha256_update(&state, (const unsigned char *)out, strlen(out) - 1);
    crypto_auth_hmacsha256_final(&state, mac);
    b64url_append(out, out_size, mac, sizeof mac);
}

/* Like craft() but signs with HMAC-SHA512 (a genuine HS512 token). */
static void craft_hs512(char *out, size_t out_size, const char *header, const char *payload,
                        const char *secret)
{
    craft_unsigned(out, out_size, header, payload);
    unsigned char mac[crypto_auth_hmacsha512_BYTES];
    crypto_auth_hmacsha512_state state;
    crypto_auth_hmacsha512_init(&state, (const unsigned char *)secret, strlen(secret));
    crypto_auth_hmacsha512_update(&state, (const unsigned char *)out, strlen(out) - 1);
    crypto_auth_hmacsha512_final(&state, mac);
    b64url_append(out, out_size, mac, sizeof mac);
}

/* Writes a payload with every claim right for keyring_default() at
 * 'iat'/'exp', plus 'extra' (JSON members starting with ',', or ""). */
static void payload_std(char *out, size_t out_size, int64_t iat, int64_t exp, const char *extra)
{
    int n = snprintf(out, out_size,
                     "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-api\","
                     "\"iat\":%lld,\"exp\":%lld,\"jti\":\"jti-1\"%s}",
                     (long long)iat, (long long)exp, extra);
    assert_true(n > 0 && (size_t)n < out_size);
}

/* Verifies 'token' at 'now' and fails the test unless the status is
 * 'expected'; checks 'user_id' is "user_42" on OK and "" otherwise. */
static void expect_status_at(const token_keyring_t *k, const char *token, int64_t now,
                             token_status_t expected, const char *what)
{
    char user_id[TOKEN_USER_ID_SIZE];
    memcpy(user_id, "stale", 6); /* must be overwritten either way */
    token_status_t got = token_verify(k, token, now, user_id, sizeof user_id);
    if (got != expected)
        fail_msg("%s: expected %s, got %s", what, token_status_text(expected),
                 token_status_text(got));
    if (expected == TOKEN_OK)
        assert_string_equal(user_id, "user_42");
    else
        assert_string_equal(user_id, "");
}

#define expect_status(k, token, expected) expect_status_at(k, token, NOW, expected, #expected)

/* Crafts header_ok + payload_std(NOW, NOW + 900, 'extra') signed with
 * secret_a into 'out' and expects 'expected'. */
static void expect_claims(const token_keyring_t *k, const char *payload, token_status_t expected,
                          const char *what)
{
    char token[BUF_BYTES];
    craft(token, sizeof token, header_ok, payload, secret_a);
    expect_status_at(k, token, NOW, expected, what);
}

/* Decodes segment 'index' (0 header, 1 payload) of 'token' as JSON. */
static json_t *segment_decode(const char *token, int index)
{
    const char *start = token;
    for (int i = 0; i < index; i++) {
        start = strchr(start, '.');
        assert_non_null(start);
        start++;
    }
    const char *end = strchr(start, '.');
    assert_non_null(end);
    unsigned char bytes[BUF_BYTES];
    size_t len = 0;
    assert_int_equal(sodium_base642bin(bytes, sizeof bytes, start, (size_t)(end - start), NULL,
                                       &len, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                     0);
    json_t *json = json_loadb((const char *)bytes, len, 0, NULL);
    assert_non_null(json);
    return json;
}

/* ---- issue and verify ------------------------------------------------------ */

static void test_round_trip(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    assert_int_equal(token_ttl_s(k), 900);
    char token[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, token, sizeof token));
    expect_status(k, token, TOKEN_OK);

    json_t *header = segment_decode(token, 0);
    assert_string_equal(json_string_value(json_object_get(header, "alg")), "HS256");
    assert_string_equal(json_string_value(json_object_get(header, "kid")), "k1");
    json_decref(header);

    json_t *payload = segment_decode(token, 1);
    assert_string_equal(json_string_value(json_object_get(payload, "sub")), "user_42");
    assert_string_equal(json_string_value(json_object_get(payload, "iss")), "paygate");
    assert_string_equal(json_string_value(json_object_get(payload, "aud")), "paygate-api");
    assert_true(json_is_integer(json_object_get(payload, "iat")));
    assert_int_equal(json_integer_value(json_object_get(payload, "iat")), NOW);
    assert_int_equal(json_integer_value(json_object_get(payload, "exp")), NOW + 900);
    const char *jti = json_string_value(json_object_get(payload, "jti"));
    assert_non_null(jti);
    assert_true(strlen(jti) >= 22); /* 16 random bytes */

    char second[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, second, sizeof second));
    assert_string_not_equal(token, second);
    json_t *payload2 = segment_decode(second, 1);
    assert_string_not_equal(jti, json_string_value(json_object_get(payload2, "jti")));
    json_decref(payload2);
    json_decref(payload);
    token_keyring_destroy(&k);
    assert_null(k);
}

static void test_issue_refuses_bad_input(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char out[TOKEN_BYTES_MAX + 1];
    char too_long[TOKEN_USER_ID_BYTES_MAX + 2];
    memset(too_long, 'a', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    const char *bad[] = {NULL, "", "a b", "a/b", "user\n", "ü", too_long};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(out, "stale", 6);
        if (token_issue(k, bad[i], NOW, out, sizeof out))
            fail_msg("issued a token for bad user id #%zu", i);
        assert_string_equal(out, "");
    }
    too_long[TOKEN_USER_ID_BYTES_MAX] = '\0'; /* exactly 64: fine */
    assert_true(token_issue(k, too_long, NOW, out, sizeof out));
    char small[64];
    assert_false(token_issue(k, "user_42", NOW, small, sizeof small));
    assert_string_equal(small, "");
    token_keyring_destroy(&k);
}

static void test_crafted_token_verifies(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char payload[512];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");
    expect_claims(k, payload, TOKEN_OK, "hand-crafted control token");
    /* typ is optional; nbf in the past is fine. */
    char token[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, ",\"nbf\":1699999000");
    craft(token, sizeof token, "{\"alg\":\"HS256\",\"kid\":\"k1\"}", payload, secret_a);
    expect_status(k, token, TOKEN_OK);
    token_keyring_destroy(&k);
}

/* ---- time ------------------------------------------------------------------ */

static void test_expired(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char token[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, token, sizeof token));
    int64_t exp = NOW + 900;
    expect_status_at(k, token, exp - 1, TOKEN_OK, "just before exp");
    expect_status_at(k, token, exp + TOKEN_CLOCK_LEEWAY_S - 1, TOKEN_OK, "inside the leeway");
    expect_status_at(k, token, exp + TOKEN_CLOCK_LEEWAY_S, TOKEN_EXPIRED, "exp + leeway");
    expect_status_at(k, token, exp + 86400, TOKEN_EXPIRED, "a day later");

    char payload[512];
    payload_std(payload, sizeof payload, NOW - 2000, NOW - 1000, "");
    expect_claims(k, payload, TOKEN_EXPIRED, "crafted, expired 1000 s ago");
    token_keyring_destroy(&k);
}

static void test_not_yet_valid(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char payload[512];
    char extra[64];
    snprintf(extra, sizeof extra, ",\"nbf\":%lld", (long long)(NOW + TOKEN_CLOCK_LEEWAY_S + 1));
    payload_std(payload, sizeof payload, NOW, NOW + 900, extra);
    expect_claims(k, payload, TOKEN_NOT_YET_VALID, "nbf beyond the leeway");
    snprintf(extra, sizeof extra, ",\"nbf\":%lld", (long long)(NOW + TOKEN_CLOCK_LEEWAY_S));
    payload_std(payload, sizeof payload, NOW, NOW + 900, extra);
    expect_claims(k, payload, TOKEN_OK, "nbf inside the leeway");

    payload_std(payload, sizeof payload, NOW + TOKEN_CLOCK_LEEWAY_S + 1, NOW + 900, "");
    expect_claims(k, payload, TOKEN_NOT_YET_VALID, "iat beyond the leeway");

    /* A real token checked by a host whose clock is 31 s behind. */
    char token[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, token, sizeof token));
    expect_status_at(k, token, NOW - TOKEN_CLOCK_LEEWAY_S, TOKEN_OK, "clock 30 s behind");
    expect_status_at(k, token, NOW - TOKEN_CLOCK_LEEWAY_S - 1, TOKEN_NOT_YET_VALID,
                     "clock 31 s behind");
    token_keyring_destroy(&k);
}

/* libjwt 1.10 reads a string or fractional "exp" as 0 and a missing one as
 * -1; we must refuse them instead of comparing those numbers. */
static void test_claim_types(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    static const char *const payloads[] = {
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":\"9999999999\",\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":1700000900.5,\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-api\","
        "\"exp\":1700000900,\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":1700000900,\"jti\":\"j\",\"nbf\":\"later\"}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":1700000900}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":1700000900,\"exp\":9999999999,\"jti\":\"j\"}",
        "[\"sub\",\"user_42\"]",
        "not json",
    };
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "payload #%zu", i);
        expect_claims(k, payloads[i], TOKEN_MALFORMED, what);
    }
    token_keyring_destroy(&k);
}

/* ---- signature ------------------------------------------------------------- */

static void test_wrong_signature(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char payload[512];
    char token[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");
    craft(token, sizeof token, header_ok, payload, secret_b);
    expect_status(k, token, TOKEN_BAD_SIGNATURE);

    char issued[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, issued, sizeof issued));
    char *sig = strrchr(issued, '.') + 1;
    assert_int_equal(strlen(sig), 43);

    /* Flip one character in the middle of the signature. */
    strcpy(token, issued);
    char *flip = strrchr(token, '.') + 10;
    *flip = *flip == 'A' ? 'B' : 'A';
    expect_status(k, token, TOKEN_BAD_SIGNATURE);

    /* Truncated, extended, empty signature. */
    strcpy(token, issued);
    token[strlen(token) - 1] = '\0';
    expect_status(k, token, TOKEN_BAD_SIGNATURE);
    snprintf(token, sizeof token, "%sAAAA", issued);
    expect_status(k, token, TOKEN_BAD_SIGNATURE);
    strcpy(token, issued);
    strrchr(token, '.')[1] = '\0';
    expect_status(k, token, TOKEN_BAD_SIGNATURE);

    /* Payload swapped for another user's, original signature kept. */
    char other[TOKEN_BYTES_MAX + 1];
    char tampered[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");
    char *admin = strstr(payload, "user_42");
    memcpy(admin, "admin_1", 7);
    craft_unsigned(other, sizeof other, header_ok, payload);
    snprintf(tampered, sizeof tampered, "%s%s", other, sig);
    expect_status(k, tampered, TOKEN_BAD_SIGNATURE);

    /* Same, but keeping the issued header segment exactly. */
    const char *dot = strchr(issued, '.');
    char payload_b64[1024] = "";
    b64url_append(payload_b64, sizeof payload_b64, payload, strlen(payload));
    snprintf(tampered, sizeof tampered, "%.*s.%s.%s", (int)(dot - issued), issued, payload_b64,
             sig);
    expect_status(k, tampered, TOKEN_BAD_SIGNATURE);
    token_keyring_destroy(&k);
}

static void test_alg_none(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char payload[512];
    char token[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");
    static const char *const headers[] = {
        "{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"k1\"}",
        "{\"alg\":\"None\",\"kid\":\"k1\"}",
        "{\"alg\":\"NONE\",\"kid\":\"k1\"}",
        "{\"alg\":\"none\"}",
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        craft(token, sizeof token, headers[i], payload, NULL); /* empty signature */
        expect_status(k, token, TOKEN_BAD_ALG);
        craft(token, sizeof token, headers[i], payload, secret_a); /* a valid HMAC */
        expect_status(k, token, TOKEN_BAD_ALG);
    }
    token_keyring_destroy(&k);
}

static void test_other_algs(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char payload[512];
    char token[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");

    craft_hs512(token, sizeof token, "{\"alg\":\"HS512\",\"kid\":\"k1\"}", payload, secret_a);
    expect_status(k, token, TOKEN_BAD_ALG);
    /* HS/RS and HS/ES confusion: the secret used as if it were a public key. */
    static const char *const headers[] = {
        "{\"alg\":\"HS512\",\"kid\":\"k1\"}",
        "{\"alg\":\"HS384\",\"kid\":\"k1\"}",
        "{\"alg\":\"RS256\",\"kid\":\"k1\"}",
        "{\"alg\":\"ES256\",\"kid\":\"k1\"}",
        "{\"alg\":\"PS256\",\"kid\":\"k1\"}",
        "{\"alg\":\"hs256\",\"kid\":\"k1\"}",
        "{\"alg\":\"HS256 \",\"kid\":\"k1\"}",
        "{\"alg\":256,\"kid\":\"k1\"}",
        "{\"alg\":null,\"kid\":\"k1\"}",
        "{\"alg\":[\"HS256\"],\"kid\":\"k1\"}",
        "{\"kid\":\"k1\"}",
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        craft(token, sizeof token, headers[i], payload, secret_a);
        expect_status_at(k, token, NOW, TOKEN_BAD_ALG, headers[i]);
    }
    token_keyring_destroy(&k);
}

/* ---- claims ---------------------------------------------------------------- */

static void test_wrong_issuer(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    static const char *const payloads[] = {
        "{\"sub\":\"user_42\",\"iss\":\"evil\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":1700000900,\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate \",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":1700000900,\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":1700000900,\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"iss\":7,\"aud\":\"paygate-api\",\"iat\":1700000000,"
        "\"exp\":1700000900,\"jti\":\"j\"}",
    };
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++)
        expect_claims(k, payloads[i], TOKEN_BAD_ISSUER, payloads[i]);

    /* A real token from a service configured with another issuer. */
    token_keyring_t *other =
        token_keyring_new("k1", secret_a, strlen(secret_a), "elsewhere", "paygate-api", 900);
    assert_non_null(other);
    char token[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(other, "user_42", NOW, token, sizeof token));
    expect_status(k, token, TOKEN_BAD_ISSUER);
    token_keyring_destroy(&other);
    token_keyring_destroy(&k);
}

static void test_wrong_audience(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    static const char *const payloads[] = {
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":\"paygate-admin\",\"iat\":1700000000,"
        "\"exp\":1700000900,\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"iat\":1700000000,"
        "\"exp\":1700000900,\"jti\":\"j\"}",
        "{\"sub\":\"user_42\",\"iss\":\"paygate\",\"aud\":[\"paygate-api\"],\"iat\":1700000000,"
        "\"exp\":1700000900,\"jti\":\"j\"}",
    };
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++)
        expect_claims(k, payloads[i], TOKEN_BAD_AUDIENCE, payloads[i]);
    token_keyring_destroy(&k);
}

static void test_bad_subject(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char long_sub[TOKEN_USER_ID_BYTES_MAX + 2];
    memset(long_sub, 'u', sizeof long_sub - 1);
    long_sub[sizeof long_sub - 1] = '\0';
    char sub_json[128];
    const char *subs[] = {NULL,           "\"\"", "\"a b\"", "\"../etc\"",
                          "\"u\\u00e9\"", "42",   "null",    sub_json};
    snprintf(sub_json, sizeof sub_json, "\"%s\"", long_sub);
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        char payload[512];
        char sub_member[160] = "";
        if (subs[i] != NULL)
            snprintf(sub_member, sizeof sub_member, "\"sub\":%s,", subs[i]);
        snprintf(payload, sizeof payload,
                 "{%s\"iss\":\"paygate\",\"aud\":\"paygate-api\",\"iat\":1700000000,"
                 "\"exp\":1700000900,\"jti\":\"j\"}",
                 sub_member);
        expect_claims(k, payload, TOKEN_BAD_SUBJECT, subs[i] ? subs[i] : "(no sub)");
    }
    token_keyring_destroy(&k);
}

/* ---- keys ------------------------------------------------------------------ */

static void test_unknown_or_missing_kid(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char payload[512];
    char token[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");
    static const char *const headers[] = {
        "{\"alg\":\"HS256\",\"kid\":\"k9\"}",
        "{\"alg\":\"HS256\",\"kid\":\"K1\"}",
        "{\"alg\":\"HS256\"}",
        "{\"alg\":\"HS256\",\"kid\":\"\"}",
        "{\"alg\":\"HS256\",\"kid\":1}",
        "{\"alg\":\"HS256\",\"kid\":[\"k1\"]}",
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        craft(token, sizeof token, headers[i], payload, secret_a); /* right key, bad kid */
        expect_status_at(k, token, NOW, TOKEN_UNKNOWN_KID, headers[i]);
    }
    token_keyring_destroy(&k);
}

static void test_key_rotation(void **state)
{
    (void)state;
    /* Yesterday: k0/secret_b was the only key. */
    token_keyring_t *old =
        token_keyring_new("k0", secret_b, strlen(secret_b), "paygate", "paygate-api", 900);
    assert_non_null(old);
    char old_token[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(old, "user_42", NOW, old_token, sizeof old_token));

    /* Today: k1/secret_a signs, k0 still verifies. */
    token_keyring_t *k = keyring_default();
    expect_status(k, old_token, TOKEN_UNKNOWN_KID);
    assert_true(token_keyring_add_previous(k, "k0", secret_b, strlen(secret_b)));
    expect_status(k, old_token, TOKEN_OK);
    char new_token[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, new_token, sizeof new_token));
    json_t *header = segment_decode(new_token, 0);
    assert_string_equal(json_string_value(json_object_get(header, "kid")), "k1");
    json_decref(header);
    expect_status(old, new_token, TOKEN_UNKNOWN_KID);

    /* A kid must select its own key: the previous key under kid k1 fails. */
    char payload[512];
    char forged[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");
    craft(forged, sizeof forged, header_ok, payload, secret_b);
    expect_status(k, forged, TOKEN_BAD_SIGNATURE);

    /* One TTL later the previous key is dropped. */
    token_keyring_remove_previous(k);
    expect_status(k, old_token, TOKEN_UNKNOWN_KID);
    expect_status(k, new_token, TOKEN_OK);

    /* The previous key needs its own kid and a real secret. */
    assert_false(token_keyring_add_previous(k, "k1", secret_b, strlen(secret_b)));
    assert_false(token_keyring_add_previous(k, "k0", secret_b, TOKEN_SECRET_BYTES_MIN - 1));
    assert_false(token_keyring_add_previous(k, "bad kid", secret_b, strlen(secret_b)));
    expect_status(k, old_token, TOKEN_UNKNOWN_KID);
    token_keyring_destroy(&old);
    token_keyring_destroy(&k);
}

static void test_keyring_new_refuses(void **state)
{
    (void)state;
    const size_t len = strlen(secret_a);
    assert_null(token_keyring_new("k1", secret_a, 31, "paygate", "paygate-api", 900));
    assert_null(token_keyring_new("k1", NULL, 0, "paygate", "paygate-api", 900));
    assert_null(token_keyring_new("k1", secret_a, TOKEN_SECRET_BYTES_MAX + 1, "paygate", "a", 900));
    assert_null(token_keyring_new("", secret_a, len, "paygate", "paygate-api", 900));
    assert_null(token_keyring_new(NULL, secret_a, len, "paygate", "paygate-api", 900));
    assert_null(token_keyring_new("k/1", secret_a, len, "paygate", "paygate-api", 900));
    assert_null(token_keyring_new("k1", secret_a, len, "", "paygate-api", 900));
    assert_null(token_keyring_new("k1", secret_a, len, "paygate", "pay gate", 900));
    assert_null(token_keyring_new("k1", secret_a, len, "paygate", "paygate-api", 59));
    assert_null(token_keyring_new("k1", secret_a, len, "paygate", "paygate-api", 86401));
    token_keyring_t *k = token_keyring_new("k1", secret_a, 32, "paygate", "paygate-api", 60);
    assert_non_null(k);
    assert_int_equal(token_ttl_s(k), 60);
    token_keyring_destroy(&k);
    token_keyring_destroy(&k); /* NULL is fine */
    assert_null(k);
}

/* ---- malformed input ------------------------------------------------------- */

static void test_malformed(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char payload[512];
    char token[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");
    char issued[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, issued, sizeof issued));

    static const char *const junk[] = {
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "...",
        ".b.c",
        "a..c",
        "%%%.%%%.%%%",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0=.abc", /* padding */
        "eyJhbGciOiJIUzI1NiJ9 .eyJzdWIiOiJ4In0.abc",
        "\xff\xfe.\x01\x02.\x7f",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJ9.abc",
        "aGVsbG8.aGVsbG8.aGVsbG8",    /* header "hello": not JSON */
        "WzFd.e30.AAAA",              /* header [1]: not an object */
        "eyJhbGciOiJIUzI1NiJ9x.e30.", /* header not canonical base64 */
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        char what[32];
        snprintf(what, sizeof what, "junk #%zu", i);
        expect_status_at(k, junk[i], NOW, TOKEN_MALFORMED, what);
    }
    expect_status_at(k, NULL, NOW, TOKEN_MALFORMED, "NULL");

    /* A valid token with junk around it. */
    snprintf(token, sizeof token, "%s\n", issued);
    expect_status(k, token, TOKEN_MALFORMED);
    snprintf(token, sizeof token, " %s", issued);
    expect_status(k, token, TOKEN_MALFORMED);
    snprintf(token, sizeof token, "%s.", issued);
    expect_status(k, token, TOKEN_MALFORMED);

    /* Duplicate header members would let two parsers read two algs. */
    craft(token, sizeof token, "{\"alg\":\"HS256\",\"kid\":\"k1\",\"alg\":\"none\"}", payload,
          secret_a);
    expect_status(k, token, TOKEN_MALFORMED);
    /* "crit" names extensions we do not implement. */
    craft(token, sizeof token, "{\"alg\":\"HS256\",\"kid\":\"k1\",\"crit\":[\"exp\"]}", payload,
          secret_a);
    expect_status(k, token, TOKEN_MALFORMED);
    /* libjwt refuses a typ other than JWT even when the MAC is right. */
    craft(token, sizeof token, "{\"alg\":\"HS256\",\"kid\":\"k1\",\"typ\":\"xml\"}", payload,
          secret_a);
    expect_status(k, token, TOKEN_MALFORMED);

    /* 5000 bytes of base64url shaped like a token. */
    memset(token, 'A', 5000);
    token[100] = '.';
    token[200] = '.';
    token[5000] = '\0';
    expect_status(k, token, TOKEN_MALFORMED);

    /* The limit holds even for a correctly signed token ... */
    char big_payload[BUF_BYTES];
    char filler[3200];
    memset(filler, 'x', sizeof filler - 1);
    filler[sizeof filler - 1] = '\0';
    char extra[sizeof filler + 16];
    snprintf(extra, sizeof extra, ",\"pad\":\"%s\"", filler);
    payload_std(big_payload, sizeof big_payload, NOW, NOW + 900, extra);
    craft(token, sizeof token, header_ok, big_payload, secret_a);
    assert_true(strlen(token) > TOKEN_BYTES_MAX);
    expect_status(k, token, TOKEN_MALFORMED);
    /* ... and is not tighter than it says. */
    filler[2600] = '\0';
    snprintf(extra, sizeof extra, ",\"pad\":\"%s\"", filler);
    payload_std(big_payload, sizeof big_payload, NOW, NOW + 900, extra);
    craft(token, sizeof token, header_ok, big_payload, secret_a);
    assert_true(strlen(token) > 3500 && strlen(token) <= TOKEN_BYTES_MAX);
    expect_status(k, token, TOKEN_OK);
    token_keyring_destroy(&k);
}

/* ---- configuration from the environment ------------------------------------ */

static void env_clear(void)
{
    static const char *const names[] = {
        "PAYGATE_JWT_SECRET",       "PAYGATE_JWT_KID",    "PAYGATE_JWT_PREVIOUS_SECRET",
        "PAYGATE_JWT_PREVIOUS_KID", "PAYGATE_JWT_ISSUER", "PAYGATE_JWT_AUDIENCE",
        "PAYGATE_JWT_TTL_S",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unsetenv(names[i]);
}

/* Runs token_keyring_from_env() with fd 2 redirected, puts what it logged
 * into 'log' ('log_size' bytes) and returns its result. */
static token_keyring_t *from_env_logged(char *log, size_t log_size)
{
    FILE *file = tmpfile();
    assert_non_null(file);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(file), STDERR_FILENO) >= 0);
    token_keyring_t *k = token_keyring_from_env();
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    rewind(file);
    size_t n = fread(log, 1, log_size - 1, file);
    log[n] = '\0';
    fclose(file);
    return k;
}

static void test_keyring_from_env_refuses(void **state)
{
    (void)state;
    char log[4096];
    env_clear();
    assert_null(from_env_logged(log, sizeof log));
    assert_non_null(strstr(log, "PAYGATE_JWT_SECRET"));

    char short_secret[TOKEN_SECRET_BYTES_MIN];
    memcpy(short_secret, secret_a, sizeof short_secret - 1);
    short_secret[sizeof short_secret - 1] = '\0'; /* 31 bytes */
    setenv("PAYGATE_JWT_SECRET", short_secret, 1);
    assert_null(from_env_logged(log, sizeof log));
    assert_non_null(strstr(log, "PAYGATE_JWT_SECRET"));
    assert_non_null(strstr(log, "31 bytes"));
    assert_null(strstr(log, short_secret)); /* never the secret itself */

    setenv("PAYGATE_JWT_SECRET", secret_a, 1);
    static const char *const bad_ttls[] = {"59", "86401", "abc", "900s", "-900"};
    for (size_t i = 0; i < sizeof bad_ttls / sizeof bad_ttls[0]; i++) {
        setenv("PAYGATE_JWT_TTL_S", bad_ttls[i], 1);
        assert_null(from_env_logged(log, sizeof log));
        assert_non_null(strstr(log, "PAYGATE_JWT_TTL_S"));
    }
    unsetenv("PAYGATE_JWT_TTL_S");

    setenv("PAYGATE_JWT_KID", "k 1", 1);
    assert_null(from_env_logged(log, sizeof log));
    assert_non_null(strstr(log, "PAYGATE_JWT_KID"));
    unsetenv("PAYGATE_JWT_KID");

    setenv("PAYGATE_JWT_PREVIOUS_SECRET", secret_b, 1); /* without its kid */
    assert_null(from_env_logged(log, sizeof log));
    assert_non_null(strstr(log, "PAYGATE_JWT_PREVIOUS_KID"));
    setenv("PAYGATE_JWT_PREVIOUS_KID", "k1", 1); /* same as the current kid */
    assert_null(from_env_logged(log, sizeof log));
    assert_non_null(strstr(log, "PAYGATE_JWT_PREVIOUS_KID equals PAYGATE_JWT_KID"));
    setenv("PAYGATE_JWT_PREVIOUS_SECRET", short_secret, 1);
    setenv("PAYGATE_JWT_PREVIOUS_KID", "k0", 1);
    assert_null(from_env_logged(log, sizeof log));
    assert_non_null(strstr(log, "PAYGATE_JWT_PREVIOUS_SECRET"));
    assert_null(strstr(log, secret_a));
    assert_null(strstr(log, short_secret));
    env_clear();
}

static void test_keyring_from_env_defaults_and_rotation(void **state)
{
    (void)state;
    char log[4096];
    env_clear();
    setenv("PAYGATE_JWT_SECRET", secret_a, 1);
    token_keyring_t *env = from_env_logged(log, sizeof log);
    assert_non_null(env);
    assert_null(strstr(log, secret_a));
    assert_int_equal(token_ttl_s(env), TOKEN_TTL_S_DEFAULT);
    /* Defaults kid k1, iss paygate, aud paygate-api: it accepts our tokens. */
    token_keyring_t *k = keyring_default();
    char token[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, token, sizeof token));
    expect_status(env, token, TOKEN_OK);
    token_keyring_destroy(&env);

    /* Rotation: k2 is new, k1 (secret_a) is previous. */
    setenv("PAYGATE_JWT_SECRET", secret_b, 1);
    setenv("PAYGATE_JWT_KID", "k2", 1);
    setenv("PAYGATE_JWT_PREVIOUS_SECRET", secret_a, 1);
    setenv("PAYGATE_JWT_PREVIOUS_KID", "k1", 1);
    setenv("PAYGATE_JWT_TTL_S", "3600", 1);
    env = from_env_logged(log, sizeof log);
    assert_non_null(env);
    assert_int_equal(token_ttl_s(env), 3600);
    expect_status(env, token, TOKEN_OK);
    char fresh[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(env, "user_42", NOW, fresh, sizeof fresh));
    expect_status(k, fresh, TOKEN_UNKNOWN_KID); /* signed by k2 */
    json_t *payload = segment_decode(fresh, 1);
    assert_int_equal(json_integer_value(json_object_get(payload, "exp")), NOW + 3600);
    json_decref(payload);

    /* Another issuer and audience are required, not just issued. */
    setenv("PAYGATE_JWT_ISSUER", "paygate-staging", 1);
    token_keyring_t *staging = from_env_logged(log, sizeof log);
    assert_non_null(staging);
    expect_status(staging, token, TOKEN_BAD_ISSUER);
    token_keyring_destroy(&staging);
    unsetenv("PAYGATE_JWT_ISSUER");
    setenv("PAYGATE_JWT_AUDIENCE", "paygate-admin", 1);
    staging = from_env_logged(log, sizeof log);
    assert_non_null(staging);
    expect_status(staging, token, TOKEN_BAD_AUDIENCE);
    token_keyring_destroy(&staging);

    token_keyring_destroy(&env);
    token_keyring_destroy(&k);
    env_clear();
}

/* ---- odds and ends --------------------------------------------------------- */

static void test_status_text(void **state)
{
    (void)state;
    const char *seen[TOKEN_BAD_SUBJECT + 1];
    for (int s = TOKEN_OK; s <= TOKEN_BAD_SUBJECT; s++) {
        seen[s] = token_status_text((token_status_t)s);
        assert_non_null(seen[s]);
        for (int t = 0; t < s; t++)
            assert_string_not_equal(seen[s], seen[t]);
    }
    assert_string_equal(token_status_text(TOKEN_OK), "ok");
    assert_string_equal(token_status_text(TOKEN_EXPIRED), "expired");
}

enum { threads_count = 4, verifies_per_thread = 300 };

typedef struct {
    const token_keyring_t *k;
    const char *good;
    const char *bad;
    int wrong;
} verify_job_t;

/* Verifies a good and a bad token many times; counts wrong answers. */
static void *verify_many(void *arg)
{
    verify_job_t *job = arg;
    char user_id[TOKEN_USER_ID_SIZE];
    for (int i = 0; i < verifies_per_thread; i++) {
        if (token_verify(job->k, job->good, NOW, user_id, sizeof user_id) != TOKEN_OK ||
            strcmp(user_id, "user_42") != 0)
            job->wrong++;
        if (token_verify(job->k, job->bad, NOW, user_id, sizeof user_id) != TOKEN_BAD_SIGNATURE)
            job->wrong++;
    }
    return NULL;
}

static void test_verify_from_threads(void **state)
{
    (void)state;
    token_keyring_t *k = keyring_default();
    char good[TOKEN_BYTES_MAX + 1];
    assert_true(token_issue(k, "user_42", NOW, good, sizeof good));
    char payload[512];
    char bad[BUF_BYTES];
    payload_std(payload, sizeof payload, NOW, NOW + 900, "");
    craft(bad, sizeof bad, header_ok, payload, secret_b);

    pthread_t threads[threads_count];
    verify_job_t jobs[threads_count];
    for (int i = 0; i < threads_count; i++) {
        jobs[i] = (verify_job_t){.k = k, .good = good, .bad = bad, .wrong = 0};
        assert_int_equal(pthread_create(&threads[i], NULL, verify_many, &jobs[i]), 0);
    }
    for (int i = 0; i < threads_count; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        assert_int_equal(jobs[i].wrong, 0);
    }
    token_keyring_destroy(&k);
}

int main(void)
{
    log_init("test_token");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_issue_refuses_bad_input),
        cmocka_unit_test(test_crafted_token_verifies),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_not_yet_valid),
        cmocka_unit_test(test_claim_types),
        cmocka_unit_test(test_wrong_signature),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_other_algs),
        cmocka_unit_test(test_wrong_issuer),
        cmocka_unit_test(test_wrong_audience),
        cmocka_unit_test(test_bad_subject),
        cmocka_unit_test(test_unknown_or_missing_kid),
        cmocka_unit_test(test_key_rotation),
        cmocka_unit_test(test_keyring_new_refuses),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_keyring_from_env_refuses),
        cmocka_unit_test(test_keyring_from_env_defaults_and_rotation),
        cmocka_unit_test(test_status_text),
        cmocka_unit_test(test_verify_from_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
