/*
 * token: HS256 access tokens, issued with libjwt and verified in layers.
 * See token.h for the format, the configuration and what it must never do.
 *
 * token_verify() does not trust one parser or one MAC check. In order:
 *
 *   1. length <= TOKEN_BYTES_MAX, exactly three '.'-separated segments of
 *      base64url characters (nothing is decoded before that);
 *   2. our own decode of the header (libsodium base64url, strict; jansson,
 *      duplicate keys refused): "alg" must be exactly "HS256", "kid" must
 *      name a key of the keyring, "crit" must be absent;
 *   3. our own HMAC-SHA256 over "header.payload" with that key, compared
 *      with sodium_memcmp (constant time whatever libjwt build is linked);
 *   4. libjwt's jwt_decode() with that key, then jwt_get_alg() == HS256;
 *   5. the claims, read from our own strict decode of the payload (libjwt
 *      1.10 reads a wrong-typed integer claim as 0 and a missing one as -1,
 *      which cannot be told from real values), and "sub" must equal what
 *      libjwt decoded.
 *
 * The keyring is immutable once configured, so verification needs no lock.
 */
#include "token.h"

#include <assert.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <jwt.h>
#include <sodium.h>

#include "config/config.h"
#include "log/log.h"

_Static_assert(sizeof(long) >= sizeof(int64_t), "libjwt 1.x takes integer claims as long");
_Static_assert(TOKEN_SECRET_BYTES_MAX <= INT_MAX, "libjwt takes key lengths as int");

/* The only algorithm we issue or accept, as it appears in the header. */
static const char token_alg_name[] = "HS256";
/* An HMAC-SHA256 tag. */
#define TOKEN_MAC_BYTES crypto_auth_hmacsha256_BYTES
/* Decoded header or payload: never longer than the token itself. */
#define TOKEN_SEGMENT_BYTES_MAX TOKEN_BYTES_MAX
/* A "jti": base64url of TOKEN_JTI_RANDOM_BYTES, without padding. */
#define TOKEN_JTI_SIZE                                                                             \
    sodium_base64_ENCODED_LEN(TOKEN_JTI_RANDOM_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)
/* Longest "jti" we accept from a token. */
#define TOKEN_JTI_BYTES_MAX 64

typedef struct {
    char kid[TOKEN_KID_BYTES_MAX + 1];
    unsigned char secret[TOKEN_SECRET_BYTES_MAX];
    size_t secret_len;
} token_key_t;

struct token_keyring {
    token_key_t current;  /* signs and verifies */
    token_key_t previous; /* verifies only, when 'has_previous' */
    bool has_previous;
    char issuer[TOKEN_CLAIM_BYTES_MAX + 1];
    char audience[TOKEN_CLAIM_BYTES_MAX + 1];
    int64_t ttl_s;
};

/* The three segments of a compact JWS, pointing into the caller's token. */
typedef struct {
    const char *header;
    size_t header_len;
    const char *payload;
    size_t payload_len;
    const char *signature;
    size_t signature_len;
} token_parts_t;

/* ---- character classes ---------------------------------------------------- */

/* True for the base64url alphabet, which is also our user id alphabet. */
static bool is_base64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* True for characters allowed in a key id: base64url plus '.'. */
static bool is_kid_char(char c)
{
    return is_base64url_char(c) || c == '.';
}

/* True for printable ASCII other than space, allowed in "iss" and "aud". */
static bool is_claim_char(char c)
{
    return c > ' ' && c <= '~';
}

/* True when 's' (may be NULL) is 1..'bytes_max' bytes long and every byte
 * passes 'allowed'. Reads at most 'bytes_max' + 1 bytes of 's'. */
static bool text_is(const char *s, size_t bytes_max, bool (*allowed)(char))
{
    if (s == NULL)
        return false;
    size_t len = strnlen(s, bytes_max + 1);
    if (len == 0 || len > bytes_max)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!allowed(s[i]))
            return false;
    return true;
}

/* True when 'user_id' is a sane subject: 1..64 chars of [A-Za-z0-9_-]. */
static bool user_id_is_valid(const char *user_id)
{
    return text_is(user_id, TOKEN_USER_ID_BYTES_MAX, is_base64url_char);
}

/* ---- keyring -------------------------------------------------------------- */

/* Checks secret 'secret' of 'len' bytes; 'name' says which one in the
 * error (a variable or argument name). Never logs the secret itself. */
static bool secret_check(const char *name, const char *secret, size_t len)
{
    if (secret == NULL) {
        log_error("token: %s is missing: it must hold %d to %d bytes", name, TOKEN_SECRET_BYTES_MIN,
                  TOKEN_SECRET_BYTES_MAX);
        return false;
    }
    if (len < TOKEN_SECRET_BYTES_MIN) {
        log_error("token: %s is too short: %zu bytes, at least %d", name, len,
                  TOKEN_SECRET_BYTES_MIN);
        return false;
    }
    if (len > TOKEN_SECRET_BYTES_MAX) {
        log_error("token: %s is too long: %zu bytes, at most %d", name, len,
                  TOKEN_SECRET_BYTES_MAX);
        return false;
    }
    return true;
}

/* Checks key id 'kid'; 'name' says which one in the error. */
static bool kid_check(const char *name, const char *kid)
{
    if (!text_is(kid, TOKEN_KID_BYTES_MAX, is_kid_char)) {
        log_error("token: %s is invalid: expected 1 to %d characters of [A-Za-z0-9._-]", name,
                  TOKEN_KID_BYTES_MAX);
        return false;
    }
    return true;
}

/* Checks issuer or audience 'value'; 'name' says which one in the error. */
static bool claim_check(const char *name, const char *value)
{
    if (!text_is(value, TOKEN_CLAIM_BYTES_MAX, is_claim_char)) {
        log_error("token: %s is invalid: expected 1 to %d printable ASCII characters, no spaces",
                  name, TOKEN_CLAIM_BYTES_MAX);
        return false;
    }
    return true;
}

/* Copies a checked 'kid' and 'secret' ('secret_len' bytes) into 'key'. */
static void key_set(token_key_t *key, const char *kid, const char *secret, size_t secret_len)
{
    assert(strlen(kid) <= TOKEN_KID_BYTES_MAX);
    assert(secret_len >= TOKEN_SECRET_BYTES_MIN && secret_len <= TOKEN_SECRET_BYTES_MAX);
    sodium_memzero(key, sizeof *key);
    memcpy(key->kid, kid, strlen(kid) + 1);
    memcpy(key->secret, secret, secret_len);
    key->secret_len = secret_len;
}

token_keyring_t *token_keyring_new(const char *kid, const char *secret, size_t secret_len,
                                   const char *issuer, const char *audience, int64_t ttl_s)
{
    if (sodium_init() < 0) {
        log_error("token: libsodium failed to initialise");
        return NULL;
    }
    if (!kid_check("kid", kid) || !secret_check("secret", secret, secret_len) ||
        !claim_check("issuer", issuer) || !claim_check("audience", audience))
        return NULL;
    if (ttl_s < TOKEN_TTL_S_MIN || ttl_s > TOKEN_TTL_S_MAX) {
        log_error("token: ttl_s %lld is out of range: expected %d to %d seconds", (long long)ttl_s,
                  TOKEN_TTL_S_MIN, TOKEN_TTL_S_MAX);
        return NULL;
    }
    token_keyring_t *k = calloc(1, sizeof *k);
    if (k == NULL) {
        log_error("token: out of memory for the keyring");
        return NULL;
    }
    key_set(&k->current, kid, secret, secret_len);
    memcpy(k->issuer, issuer, strlen(issuer) + 1);
    memcpy(k->audience, audience, strlen(audience) + 1);
    k->ttl_s = ttl_s;
    return k;
}

bool token_keyring_add_previous(token_keyring_t *k, const char *kid, const char *secret,
                                size_t secret_len)
{
    assert(k != NULL);
    if (!kid_check("previous kid", kid) || !secret_check("previous secret", secret, secret_len))
        return false;
    if (strcmp(kid, k->current.kid) == 0) {
        log_error("token: previous kid '%s' is the current kid: a rotated key needs a new kid",
                  kid);
        return false;
    }
    key_set(&k->previous, kid, secret, secret_len);
    k->has_previous = true;
    return true;
}

void token_keyring_remove_previous(token_keyring_t *k)
{
    assert(k != NULL);
    sodium_memzero(&k->previous, sizeof k->previous);
    k->has_previous = false;
}

void token_keyring_destroy(token_keyring_t **k)
{
    if (k == NULL || *k == NULL)
        return;
    sodium_memzero(*k, sizeof **k);
    free(*k);
    *k = NULL;
}

int64_t token_ttl_s(const token_keyring_t *k)
{
    assert(k != NULL);
    return k->ttl_s;
}

token_keyring_t *token_keyring_from_env(void)
{
    const char *secret = NULL;
    if (!config_str("PAYGATE_JWT_SECRET", NULL, TOKEN_SECRET_BYTES_MAX, &secret))
        return NULL;
    if (secret == NULL) {
        log_error("token: PAYGATE_JWT_SECRET is not set: it must hold at least %d bytes "
                  "(./dev up generates one into its secrets.env)",
                  TOKEN_SECRET_BYTES_MIN);
        return NULL;
    }
    if (!secret_check("PAYGATE_JWT_SECRET", secret, strlen(secret)))
        return NULL;

    const char *kid = NULL;
    if (!config_str("PAYGATE_JWT_KID", "k1", TOKEN_KID_BYTES_MAX, &kid) ||
        !kid_check("PAYGATE_JWT_KID", kid))
        return NULL;

    const char *previous_secret = NULL;
    const char *previous_kid = NULL;
    if (!config_str("PAYGATE_JWT_PREVIOUS_SECRET", NULL, TOKEN_SECRET_BYTES_MAX,
                    &previous_secret) ||
        !config_str("PAYGATE_JWT_PREVIOUS_KID", NULL, TOKEN_KID_BYTES_MAX, &previous_kid))
        return NULL;
    if ((previous_secret == NULL) != (previous_kid == NULL)) {
        log_error("token: PAYGATE_JWT_PREVIOUS_SECRET and PAYGATE_JWT_PREVIOUS_KID go together: "
                  "set both or neither");
        return NULL;
    }
    if (previous_secret != NULL &&
        (!secret_check("PAYGATE_JWT_PREVIOUS_SECRET", previous_secret, strlen(previous_secret)) ||
         !kid_check("PAYGATE_JWT_PREVIOUS_KID", previous_kid)))
        return NULL;
    if (previous_kid != NULL && strcmp(previous_kid, kid) == 0) {
        log_error("token: PAYGATE_JWT_PREVIOUS_KID equals PAYGATE_JWT_KID ('%s'): a rotated key "
                  "needs a new kid",
                  kid);
        return NULL;
    }

    const char *issuer = NULL;
    const char *audience = NULL;
    if (!config_str("PAYGATE_JWT_ISSUER", "paygate", TOKEN_CLAIM_BYTES_MAX, &issuer) ||
        !claim_check("PAYGATE_JWT_ISSUER", issuer) ||
        !config_str("PAYGATE_JWT_AUDIENCE", "paygate-api", TOKEN_CLAIM_BYTES_MAX, &audience) ||
        !claim_check("PAYGATE_JWT_AUDIENCE", audience))
        return NULL;

    int64_t ttl_s = 0;
    if (!config_int("PAYGATE_JWT_TTL_S", TOKEN_TTL_S_DEFAULT, TOKEN_TTL_S_MIN, TOKEN_TTL_S_MAX,
                    &ttl_s))
        return NULL;

    token_keyring_t *k = token_keyring_new(kid, secret, strlen(secret), issuer, audience, ttl_s);
    if (k == NULL)
        return NULL;
    if (previous_secret != NULL &&
        !token_keyring_add_previous(k, previous_kid, previous_secret, strlen(previous_secret))) {
        token_keyring_destroy(&k);
        return NULL;
    }
    log_info("token: keyring ready: kid %s%s%s, issuer %s, audience %s, ttl %llds", kid,
             previous_kid != NULL ? ", previous kid " : "",
             previous_kid != NULL ? previous_kid : "", issuer, audience, (long long)ttl_s);
    return k;
}

/* Returns the key of 'k' named 'kid' (current or previous), or NULL. */
static const token_key_t *keyring_find(const token_keyring_t *k, const char *kid)
{
    if (strcmp(kid, k->current.kid) == 0)
        return &k->current;
    if (k->has_previous && strcmp(kid, k->previous.kid) == 0)
        return &k->previous;
    return NULL;
}

/* ---- shared helpers ------------------------------------------------------- */

/* Writes HMAC-SHA256 of 'msg' ('msg_len' bytes) under 'key' into 'mac'.
 * Uses the init/update/final API because crypto_auth_hmacsha256() takes a
 * fixed 32-byte key and our secrets may be longer. */
static void hmac_sha256(const token_key_t *key, const char *msg, size_t msg_len,
                        unsigned char mac[TOKEN_MAC_BYTES])
{
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init(&state, key->secret, key->secret_len);
    crypto_auth_hmacsha256_update(&state, (const unsigned char *)msg, msg_len);
    crypto_auth_hmacsha256_final(&state, mac);
    sodium_memzero(&state, sizeof state);
}

/* Decodes unpadded base64url 'text' ('text_len' chars) into 'out'
 * ('out_size' bytes), setting '*out_len'. Returns false on any character
 * outside the alphabet, a non-canonical tail or a too small 'out'. */
static bool base64url_decode(const char *text, size_t text_len, unsigned char *out, size_t out_size,
                             size_t *out_len)
{
    return sodium_base642bin(out, out_size, text, text_len, NULL, out_len, NULL,
                             sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0;
}

/* Decodes segment 'text' ('text_len' chars) as base64url JSON and returns
 * the object (caller decrefs), or NULL when it is not base64url, not JSON,
 * has a duplicate key or is not an object. */
static json_t *segment_json(const char *text, size_t text_len)
{
    unsigned char bytes[TOKEN_SEGMENT_BYTES_MAX];
    size_t len = 0;
    if (!base64url_decode(text, text_len, bytes, sizeof bytes, &len))
        return NULL;
    json_error_t error;
    json_t *json = json_loadb((const char *)bytes, len, JSON_REJECT_DUPLICATES, &error);
    if (json != NULL && !json_is_object(json)) {
        json_decref(json);
        return NULL;
    }
    return json;
}

/* ---- issue ---------------------------------------------------------------- */

/* Writes a fresh random token id (unpadded base64url) into 'jti'. */
static void jti_make(char jti[TOKEN_JTI_SIZE])
{
    unsigned char random[TOKEN_JTI_RANDOM_BYTES];
    randombytes_buf(random, sizeof random);
    sodium_bin2base64(jti, TOKEN_JTI_SIZE, random, sizeof random,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* Fills the (empty) 'jwt' with our header and claims for 'user_id' at
 * 'now' under 'k'. Returns libjwt's first non-zero error, or 0. */
static int issue_fill(jwt_t *jwt, const token_keyring_t *k, const char *user_id, int64_t now)
{
    char jti[TOKEN_JTI_SIZE];
    jti_make(jti);
    int rc = jwt_set_alg(jwt, JWT_ALG_HS256, k->current.secret, (int)k->current.secret_len);
    if (rc == 0)
        rc = jwt_add_header(jwt, "kid", k->current.kid);
    if (rc == 0)
        rc = jwt_add_grant(jwt, "sub", user_id);
    if (rc == 0)
        rc = jwt_add_grant(jwt, "iss", k->issuer);
    if (rc == 0)
        rc = jwt_add_grant(jwt, "aud", k->audience);
    if (rc == 0)
        rc = jwt_add_grant(jwt, "jti", jti);
    if (rc == 0)
        rc = jwt_add_grant_int(jwt, "iat", (long)now);
    if (rc == 0)
        rc = jwt_add_grant_int(jwt, "exp", (long)(now + k->ttl_s));
    return rc;
}

bool token_issue(const token_keyring_t *k, const char *user_id, int64_t now, char *out,
                 size_t out_size)
{
    assert(k != NULL);
    assert(out != NULL && out_size > 0);
    out[0] = '\0';
    if (now < 0 || now > TOKEN_UNIX_S_MAX) {
        log_error("token: cannot issue: time %lld is out of range", (long long)now);
        return false;
    }
    if (!user_id_is_valid(user_id)) {
        log_error("token: cannot issue: user id is not 1 to %d characters of [A-Za-z0-9_-]",
                  TOKEN_USER_ID_BYTES_MAX);
        return false;
    }

    jwt_t *jwt = NULL;
    char *encoded = NULL;
    bool ok = false;
    int rc = jwt_new(&jwt);
    if (rc == 0)
        rc = issue_fill(jwt, k, user_id, now);
    if (rc != 0) {
        log_error("token: cannot issue: libjwt error %d", rc);
        goto done;
    }
    encoded = jwt_encode_str(jwt);
    if (encoded == NULL) {
        log_error("token: cannot issue: jwt_encode_str failed");
        goto done;
    }
    size_t len = strlen(encoded);
    assert(len <= TOKEN_BYTES_MAX); /* every input is bounded well below it */
    if (len >= out_size) {
        log_error("token: cannot issue: the token is %zu bytes, the buffer holds %zu", len,
                  out_size - 1);
        goto done;
    }
    memcpy(out, encoded, len + 1);
    ok = true;

done:
    if (encoded != NULL) {
        sodium_memzero(encoded, strlen(encoded));
        free(encoded); /* libjwt 1.10 allocates with malloc and has no jwt_free_str */
    }
    jwt_free(jwt);
    if (!ok)
        return false;

    /* Post-condition: what we hand out verifies, for this very user. */
    char subject[TOKEN_USER_ID_SIZE];
    token_status_t self = token_verify(k, out, now, subject, sizeof subject);
    assert(self == TOKEN_OK && strcmp(subject, user_id) == 0);
    if (self != TOKEN_OK || strcmp(subject, user_id) != 0) {
        log_error("token: cannot issue: the new token does not verify (%s)",
                  token_status_text(self));
        out[0] = '\0';
        return false;
    }
    return true;
}

/* ---- verify --------------------------------------------------------------- */

const char *token_status_text(token_status_t s)
{
    switch (s) {
    case TOKEN_OK:
        return "ok";
    case TOKEN_MALFORMED:
        return "malformed";
    case TOKEN_BAD_ALG:
        return "bad_alg";
    case TOKEN_UNKNOWN_KID:
        return "unknown_kid";
    case TOKEN_BAD_SIGNATURE:
        return "bad_signature";
    case TOKEN_EXPIRED:
        return "expired";
    case TOKEN_NOT_YET_VALID:
        return "not_yet_valid";
    case TOKEN_BAD_ISSUER:
        return "bad_issuer";
    case TOKEN_BAD_AUDIENCE:
        return "bad_audience";
    case TOKEN_BAD_SUBJECT:
        return "bad_subject";
    }
    return "unknown_status";
}

/* Splits 'token' ('len' bytes, 'len' <= TOKEN_BYTES_MAX) into 'parts'.
 * Returns false unless it is exactly three segments, the first two
 * non-empty, all of base64url characters. */
static bool token_split(const char *token, size_t len, token_parts_t *parts)
{
    const char *dot[2];
    size_t dots = 0;
    for (size_t i = 0; i < len; i++) {
        if (token[i] == '.') {
            if (dots == 2)
                return false;
            dot[dots++] = token + i;
        } else if (!is_base64url_char(token[i])) {
            return false;
        }
    }
    if (dots != 2)
        return false;
    parts->header = token;
    parts->header_len = (size_t)(dot[0] - token);
    parts->payload = dot[0] + 1;
    parts->payload_len = (size_t)(dot[1] - parts->payload);
    parts->signature = dot[1] + 1;
    parts->signature_len = (size_t)(token + len - parts->signature);
    return parts->header_len > 0 && parts->payload_len > 0;
}

/* Checks the decoded 'header' and sets '*key' to the key its "kid" names.
 * "alg" must be exactly "HS256" (libjwt itself would take "hs256"); "crit"
 * asks us to understand extensions we do not know, so it is refused. */
static token_status_t header_check(const token_keyring_t *k, json_t *header,
                                   const token_key_t **key)
{
    const char *alg = json_string_value(json_object_get(header, "alg"));
    if (alg == NULL || strcmp(alg, token_alg_name) != 0)
        return TOKEN_BAD_ALG;
    if (json_object_get(header, "crit") != NULL)
        return TOKEN_MALFORMED;
    json_t *kid = json_object_get(header, "kid");
    if (!json_is_string(kid) || json_string_length(kid) == 0 ||
        json_string_length(kid) > TOKEN_KID_BYTES_MAX ||
        strlen(json_string_value(kid)) != json_string_length(kid))
        return TOKEN_UNKNOWN_KID;
    *key = keyring_find(k, json_string_value(kid));
    return *key != NULL ? TOKEN_OK : TOKEN_UNKNOWN_KID;
}

/* Checks the signature segment of 'parts' against our own HMAC-SHA256 of
 * "header.payload" under 'key', in constant time. */
static token_status_t signature_check(const token_key_t *key, const token_parts_t *parts)
{
    unsigned char given[TOKEN_MAC_BYTES + 1]; /* room to notice a longer one */
    size_t given_len = 0;
    if (!base64url_decode(parts->signature, parts->signature_len, given, sizeof given,
                          &given_len) ||
        given_len != TOKEN_MAC_BYTES)
        return TOKEN_BAD_SIGNATURE;
    unsigned char expected[TOKEN_MAC_BYTES];
    size_t signed_len = parts->header_len + 1 + parts->payload_len;
    hmac_sha256(key, parts->header, signed_len, expected);
    bool same = sodium_memcmp(given, expected, TOKEN_MAC_BYTES) == 0;
    sodium_memzero(expected, sizeof expected);
    return same ? TOKEN_OK : TOKEN_BAD_SIGNATURE;
}

/* Reads integer claim 'name' of 'payload' into '*out'. Returns false when
 * it is absent or not a JSON integer (a string or a fraction is an error,
 * not a zero). */
static bool claim_int(json_t *payload, const char *name, int64_t *out)
{
    json_t *value = json_object_get(payload, name);
    if (!json_is_integer(value))
        return false;
    *out = (int64_t)json_integer_value(value);
    return true;
}

/* Returns string claim 'name' of 'payload', or NULL when absent, not a
 * string, or holding a NUL. */
static const char *claim_str(json_t *payload, const char *name)
{
    json_t *value = json_object_get(payload, name);
    const char *text = json_string_value(value);
    if (text == NULL || strlen(text) != json_string_length(value))
        return NULL;
    return text;
}

/* Checks the claims of the verified 'payload' against 'k' at 'now' and
 * sets '*subject' (pointing into 'payload') on TOKEN_OK. Time comparisons
 * are written so they cannot overflow with any claim value. */
static token_status_t claims_check(const token_keyring_t *k, json_t *payload, int64_t now,
                                   const char **subject)
{
    int64_t exp = 0;
    int64_t iat = 0;
    int64_t nbf = 0;
    bool has_nbf = json_object_get(payload, "nbf") != NULL;
    if (!claim_int(payload, "exp", &exp) || !claim_int(payload, "iat", &iat) ||
        (has_nbf && !claim_int(payload, "nbf", &nbf)))
        return TOKEN_MALFORMED;
    if (!text_is(claim_str(payload, "jti"), TOKEN_JTI_BYTES_MAX, is_base64url_char))
        return TOKEN_MALFORMED;

    const char *iss = claim_str(payload, "iss");
    if (iss == NULL || strcmp(iss, k->issuer) != 0)
        return TOKEN_BAD_ISSUER;
    const char *aud = claim_str(payload, "aud");
    if (aud == NULL || strcmp(aud, k->audience) != 0)
        return TOKEN_BAD_AUDIENCE;

    if (now - TOKEN_CLOCK_LEEWAY_S >= exp)
        return TOKEN_EXPIRED;
    if (has_nbf && nbf > now + TOKEN_CLOCK_LEEWAY_S)
        return TOKEN_NOT_YET_VALID;
    if (iat > now + TOKEN_CLOCK_LEEWAY_S)
        return TOKEN_NOT_YET_VALID;

    const char *sub = claim_str(payload, "sub");
    if (!user_id_is_valid(sub))
        return TOKEN_BAD_SUBJECT;
    *subject = sub;
    return TOKEN_OK;
}

/* Steps 4 and 5 of the file comment, for a token whose header and MAC
 * already checked under 'key': libjwt's own verification, then the claims.
 * Copies the subject into 'user_id' on TOKEN_OK. */
static token_status_t verify_signed(const token_keyring_t *k, const token_key_t *key,
                                    const char *token, const token_parts_t *parts, int64_t now,
                                    char *user_id, size_t user_id_size)
{
    json_t *payload = segment_json(parts->payload, parts->payload_len);
    if (payload == NULL)
        return TOKEN_MALFORMED;

    jwt_t *jwt = NULL;
    token_status_t status = TOKEN_OK;
    /* Our MAC matched, so a refusal here is of the form (for instance a
     * "typ" other than "JWT"), not of the signature. */
    if (jwt_decode(&jwt, token, key->secret, (int)key->secret_len) != 0 || jwt == NULL)
        status = TOKEN_MALFORMED;
    else if (jwt_get_alg(jwt) != JWT_ALG_HS256)
        status = TOKEN_BAD_ALG;

    const char *subject = NULL;
    if (status == TOKEN_OK)
        status = claims_check(k, payload, now, &subject);
    if (status == TOKEN_OK) {
        const char *library_subject = jwt_get_grant(jwt, "sub");
        if (library_subject == NULL || strcmp(library_subject, subject) != 0)
            status = TOKEN_MALFORMED; /* the two parsers disagree: trust neither */
    }
    if (status == TOKEN_OK) {
        size_t len = strlen(subject);
        if (len < user_id_size) /* claims_check bounded it; never overflow anyway */
            memcpy(user_id, subject, len + 1);
        else
            status = TOKEN_BAD_SUBJECT;
    }
    jwt_free(jwt);
    json_decref(payload);
    return status;
}

token_status_t token_verify(const token_keyring_t *k, const char *token, int64_t now, char *user_id,
                            size_t user_id_size)
{
    assert(k != NULL);
    assert(user_id != NULL && user_id_size >= TOKEN_USER_ID_SIZE);
    assert(now >= 0 && now <= TOKEN_UNIX_S_MAX);
    if (k == NULL || user_id == NULL || user_id_size < TOKEN_USER_ID_SIZE)
        return TOKEN_MALFORMED; /* release builds: refuse rather than overflow */
    user_id[0] = '\0';
    if (now < 0 || now > TOKEN_UNIX_S_MAX)
        return TOKEN_MALFORMED;

    if (token == NULL)
        return TOKEN_MALFORMED;
    size_t len = strnlen(token, TOKEN_BYTES_MAX + 1);
    if (len > TOKEN_BYTES_MAX)
        return TOKEN_MALFORMED;
    token_parts_t parts;
    if (!token_split(token, len, &parts))
        return TOKEN_MALFORMED;

    json_t *header = segment_json(parts.header, parts.header_len);
    if (header == NULL)
        return TOKEN_MALFORMED;
    const token_key_t *key = NULL;
    token_status_t status = header_check(k, header, &key);
    json_decref(header);
    if (status != TOKEN_OK)
        return status;

    status = signature_check(key, &parts);
    if (status != TOKEN_OK)
        return status;
    return verify_signed(k, key, token, &parts, now, user_id, user_id_size);
}
