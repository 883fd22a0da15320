/*
 * credentials: email/password/name rules and Argon2id hashing. See
 * credentials.h.
 */
#include "credentials.h"

#include "text/utf8.h"

#include <ctype.h>
#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <string.h>

/* Copies 'text' without leading and trailing ASCII spaces into 'out'.
 * Returns false when it does not fit. */
static bool trim_copy(const char *text, char *out, size_t out_size)
{
    while (*text == ' ' || *text == '\t')
        text++;
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == ' ' || text[n - 1] == '\t'))
        n--;
    if (n + 1 > out_size)
        return false;
    memcpy(out, text, n);
    out[n] = '\0';
    return true;
}

const char *credentials_email_normalise(const char *email, char *out, size_t out_size)
{
    if (out_size < email_bytes_max + 1)
        return "internal: buffer too small";
    if (email == NULL || !trim_copy(email, out, out_size) || strlen(out) > email_bytes_max)
        return "email must be at most 254 characters";
    if (out[0] == '\0')
        return "email is required";
    const char *at = strchr(out, '@');
    if (at == NULL || strchr(at + 1, '@') != NULL)
        return "email must contain exactly one @";
    size_t local = (size_t)(at - out);
    const char *domain = at + 1;
    if (local == 0 || local > 64)
        return "email's part before @ must be 1..64 characters";
    if (strlen(domain) < 3 || strchr(domain, '.') == NULL || domain[0] == '.' ||
        domain[strlen(domain) - 1] == '.' || strstr(domain, "..") != NULL)
        return "email's domain is not valid";
    for (char *c = out; *c; c++) {
        unsigned char u = (unsigned char)*c;
        if (u <= ' ' || u >= 0x7f || strchr("()<>,;:\\\"[]", u) != NULL)
            return "email contains a character that is not allowed";
        *c = (char)tolower(u);
    }
    return NULL;
}

const char *credentials_password_check(const char *password)
{
    if (password == NULL || password[0] == '\0')
        return "password is required";
    if (strlen(password) > 4 * password_chars_max)
        return "password must be at most 128 characters";
    long chars = utf8_chars(password, false);
    if (chars < 0)
        return "password is not valid UTF-8";
    if (chars < password_chars_min)
        return "password must be at least 8 characters";
    if (chars > password_chars_max)
        return "password must be at most 128 characters";
    return NULL;
}

const char *credentials_name_normalise(const char *name, char *out, size_t out_size)
{
    if (name == NULL || !trim_copy(name, out, out_size))
        return "name must be at most 100 characters";
    if (out[0] == '\0')
        return "name is required";
    long chars = utf8_chars(out, true);
    if (chars < 0)
        return "name must be valid UTF-8 without control characters";
    if (chars > name_chars_max)
        return "name must be at most 100 characters";
    return NULL;
}

bool credentials_hash(const char *password, char out[password_hash_bytes])
{
    _Static_assert(password_hash_bytes == crypto_pwhash_STRBYTES, "hash size");
    return crypto_pwhash_str(out, password, strlen(password), password_hash_passes,
                             password_hash_memory_bytes) == 0;
}

bool credentials_verify(const char *password, const char *hash)
{
    return crypto_pwhash_str_verify(hash, password, strlen(password)) == 0;
}

static char dummy_hash[password_hash_bytes];
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static void dummy_hash_init(void)
{
    if (!credentials_hash("paygate dummy password", dummy_hash))
        dummy_hash[0] = '\0';
}

void credentials_verify_dummy(const char *password)
{
    pthread_once(&dummy_once, dummy_hash_init);
    if (dummy_hash[0] != '\0')
        (void)credentials_verify(password, dummy_hash);
}
