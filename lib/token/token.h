/*
 * token: issues and verifies the HS256 JWT access tokens of paygate.
 *
 * The user service calls token_issue() at login; the HTTP gateway calls
 * token_verify() on every request and takes the acting user id only from a
 * token that verified. A token looks like (RFC 7519, JWS compact form):
 *
 *   base64url(header) "." base64url(payload) "." base64url(HMAC-SHA256)
 *
 *   header  {"alg":"HS256","kid":"k1","typ":"JWT"}
 *   payload {"aud":"paygate-api","exp":1700000900,"iat":1700000000,
 *            "iss":"paygate","jti":"<22 chars, 16 random bytes>","sub":"<user id>"}
 *
 * Keys live in a keyring: the current key (signs and verifies) and at most
 * one previous key (verifies only), each named by a key id ('kid') that the
 * token carries in its header, so a key can be rotated without logging
 * everybody out: deploy the new key as current with the old one as
 * previous, wait one TTL, then drop the previous key.
 *
 * Configuration (token_keyring_from_env):
 *   PAYGATE_JWT_SECRET           required, 32..512 bytes. The raw string is
 *                                the HMAC key; it is NOT base64-decoded.
 *                                `./dev up` generates the base64 text of 48
 *                                random bytes (64 characters) and that text,
 *                                as is, is the key.
 *   PAYGATE_JWT_KID              key id of that secret, default "k1".
 *   PAYGATE_JWT_PREVIOUS_SECRET  optional previous secret (verify only) ...
 *   PAYGATE_JWT_PREVIOUS_KID     ... and its key id; both or neither.
 *   PAYGATE_JWT_ISSUER           "iss" issued and required, default "paygate".
 *   PAYGATE_JWT_AUDIENCE         "aud" issued and required, default
 *                                "paygate-api".
 *   PAYGATE_JWT_TTL_S            token lifetime in seconds, default 900,
 *                                from 60 to 86400.
 *
 * This module must never: accept any algorithm but HS256 (not "none", not
 * "hs256", not HS512, not RS256/ES256 with the secret as a "public key");
 * trust a claim before the signature checked; compare a MAC with memcmp;
 * log or print a secret or a token; read the clock itself (callers pass
 * 'now' so tests and the gateway agree on time).
 */
#ifndef PAYGATE_TOKEN_H
#define PAYGATE_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A token longer than this is refused before any parsing. */
#define TOKEN_BYTES_MAX 4096
/* Secrets: at least 256 bits for HS256 (RFC 7518 3.2), and a sane ceiling. */
#define TOKEN_SECRET_BYTES_MIN 32
#define TOKEN_SECRET_BYTES_MAX 512
/* Key ids: 1..32 characters of [A-Za-z0-9._-]. */
#define TOKEN_KID_BYTES_MAX 32
/* Issuer and audience: 1..128 printable ASCII characters (no space). */
#define TOKEN_CLAIM_BYTES_MAX 128
/* User ids ("sub"): 1..64 characters of [A-Za-z0-9_-]. */
#define TOKEN_USER_ID_BYTES_MAX 64
/* Size of a buffer that holds any user id and its NUL. */
#define TOKEN_USER_ID_SIZE (TOKEN_USER_ID_BYTES_MAX + 1)
/* Clock skew tolerated between the issuing and the verifying host. */
#define TOKEN_CLOCK_LEEWAY_S 30
/* Token lifetime: default and accepted range of PAYGATE_JWT_TTL_S. */
#define TOKEN_TTL_S_DEFAULT 900
#define TOKEN_TTL_S_MIN     60
#define TOKEN_TTL_S_MAX     86400
/* Random bytes in a "jti" (token id); 128 bits make collisions negligible. */
#define TOKEN_JTI_RANDOM_BYTES 16
/* Largest 'now' accepted (9999-12-31T23:59:59Z), so time sums never overflow. */
#define TOKEN_UNIX_S_MAX INT64_C(253402300799)

typedef struct token_keyring token_keyring_t;

typedef enum {
    TOKEN_OK = 0,
    TOKEN_MALFORMED,     /* not a JWS compact token we could read, or a claim of the wrong type */
    TOKEN_BAD_ALG,       /* header "alg" is not exactly "HS256" */
    TOKEN_UNKNOWN_KID,   /* header "kid" missing, not a string, or names no key we hold */
    TOKEN_BAD_SIGNATURE, /* HMAC does not match the key named by "kid" */
    TOKEN_EXPIRED,       /* now >= exp + leeway */
    TOKEN_NOT_YET_VALID, /* nbf or iat later than now + leeway */
    TOKEN_BAD_ISSUER,    /* "iss" missing or not the configured issuer */
    TOKEN_BAD_AUDIENCE,  /* "aud" missing or not the configured audience (string form only) */
    TOKEN_BAD_SUBJECT,   /* "sub" missing or not 1..64 chars of [A-Za-z0-9_-] */
} token_status_t;

/* Builds the keyring from the PAYGATE_JWT_* variables above. Returns NULL
 * after logging a precise error that names the variable (never its value
 * when it is a secret) when one is missing, too short, malformed or out of
 * range. The caller owns the result (token_keyring_destroy). */
token_keyring_t *token_keyring_from_env(void);

/* Builds a keyring whose current key is 'secret' ('secret_len' bytes,
 * copied; TOKEN_SECRET_BYTES_MIN..MAX) named 'kid', that issues and
 * requires 'issuer' and 'audience', and issues tokens living 'ttl_s'
 * seconds (TOKEN_TTL_S_MIN..MAX). Returns NULL, after logging which
 * argument is wrong, on any invalid argument. */
token_keyring_t *token_keyring_new(const char *kid, const char *secret, size_t secret_len,
                                   const char *issuer, const char *audience, int64_t ttl_s);

/* Adds (or replaces) the previous key of 'k': 'secret' ('secret_len' bytes,
 * copied) named 'kid', accepted by token_verify and never used to sign.
 * Returns false, after logging, when an argument is invalid or 'kid' is the
 * current key's id. Not thread-safe: configure before sharing 'k'. */
bool token_keyring_add_previous(token_keyring_t *k, const char *kid, const char *secret,
                                size_t secret_len);

/* Forgets the previous key of 'k' (scrubbing it); tokens signed with it no
 * longer verify. Does nothing when there is none. Not thread-safe. */
void token_keyring_remove_previous(token_keyring_t *k);

/* Scrubs the secrets, frees '*k' and sets '*k' to NULL. Accepts a NULL
 * '*k'. */
void token_keyring_destroy(token_keyring_t **k);

/* Lifetime in seconds of the tokens 'k' issues. */
int64_t token_ttl_s(const token_keyring_t *k);

/* Issues a token for 'user_id' (1..64 chars of [A-Za-z0-9_-]) at time 'now'
 * (unix seconds, 0..TOKEN_UNIX_S_MAX), signed with the current key, valid
 * until now + token_ttl_s(k). Writes it, NUL-terminated, into 'out' of
 * 'out_size' bytes (TOKEN_BYTES_MAX + 1 always suffices). Returns false,
 * after logging, on an invalid user id, a too small 'out' or a library
 * failure; 'out' then holds "". Thread-safe. */
bool token_issue(const token_keyring_t *k, const char *user_id, int64_t now, char *out,
                 size_t out_size);

/* Stable lower-case code for 's' ("ok", "expired", ...), for logs and for
 * the gateway's error body. Never NULL. */
const char *token_status_text(token_status_t s);

/* Verifies 'token' (NUL-terminated, untrusted) at time 'now' (unix seconds,
 * 0..TOKEN_UNIX_S_MAX) against 'k'. On TOKEN_OK copies the subject into
 * 'user_id', which must hold at least TOKEN_USER_ID_SIZE bytes
 * ('user_id_size'); on any other status 'user_id' holds "". A NULL 'token'
 * is TOKEN_MALFORMED. Logs nothing (the input is an attacker's): the caller
 * logs token_status_text(). Thread-safe while nobody modifies 'k'. */
token_status_t token_verify(const token_keyring_t *k, const char *token, int64_t now, char *user_id,
                            size_t user_id_size);

#endif
