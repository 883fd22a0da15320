/*
 * credentials: the rules for emails, passwords and names, and password
 * hashing (Argon2id through libsodium).
 *
 * Pure functions apart from hashing; never logs a password or a hash.
 */
#ifndef PAYGATE_USER_CREDENTIALS_H
#define PAYGATE_USER_CREDENTIALS_H

#include <stdbool.h>
#include <stddef.h>

enum {
    email_bytes_max = 254,
    password_chars_min = 8,
    password_chars_max = 128,
    name_chars_max = 100,
    password_hash_bytes = 128, /* crypto_pwhash_STRBYTES */
};

/* Normalises 'email' (trims spaces, lower-cases) into 'out' (at least
 * email_bytes_max + 1 bytes) and checks its shape: one '@', a local part
 * of 1..64 characters and a domain with a dot, no spaces or controls.
 * Returns NULL when valid, else the reason for the client. */
const char *credentials_email_normalise(const char *email, char *out, size_t out_size);

/* NULL when 'password' is 8..128 characters (UTF-8 code points) of valid
 * UTF-8, else the reason. */
const char *credentials_password_check(const char *password);

/* Trims 'name' into 'out' and checks it is 1..100 characters of valid
 * UTF-8 without control characters. NULL when valid, else the reason. */
const char *credentials_name_normalise(const char *name, char *out, size_t out_size);

/* Argon2id parameters: OWASP's minimum, 19 MiB and 2 passes. */
enum { password_hash_memory_bytes = 19 * 1024 * 1024, password_hash_passes = 2 };

/* Hashes 'password' into 'out' (password_hash_bytes). False on OOM. */
bool credentials_hash(const char *password, char out[password_hash_bytes]);

/* True when 'password' matches 'hash'. Constant time in the password. */
bool credentials_verify(const char *password, const char *hash);

/* Spends the time of one verification without a real hash, so that a
 * login for an unknown email takes as long as one with a wrong password. */
void credentials_verify_dummy(const char *password);

#endif
