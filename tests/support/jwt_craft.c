/*
 * jwt_craft: tokens made by hand for tests. See jwt_craft.h.
 */
#include "jwt_craft.h"

#include <sodium.h>
#include <string.h>

bool jwt_b64url_append(char *out, size_t out_size, const void *data, size_t len)
{
    size_t used = strlen(out);
    if (used + sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING) > out_size)
        return false;
    sodium_bin2base64(out + used, out_size - used, data, len,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return true;
}

/* Appends "." to the string in 'out'. Returns false when it does not fit. */
static bool dot_append(char *out, size_t out_size)
{
    size_t used = strlen(out);
    if (used + 2 > out_size)
        return false;
    out[used] = '.';
    out[used + 1] = '\0';
    return true;
}

bool jwt_craft(char *out, size_t out_size, const char *header, const char *payload,
               const char *secret)
{
    if (out_size == 0)
        return false;
    out[0] = '\0';
    bool fits =
        jwt_b64url_append(out, out_size, header, strlen(header)) && dot_append(out, out_size) &&
        jwt_b64url_append(out, out_size, payload, strlen(payload)) && dot_append(out, out_size);
    if (fits && secret != NULL) {
        /* init/update/final: crypto_auth_hmacsha256() takes a fixed 32-byte key. */
        unsigned char mac[crypto_auth_hmacsha256_BYTES];
        crypto_auth_hmacsha256_state state;
        crypto_auth_hmacsha256_init(&state, (const unsigned char *)secret, strlen(secret));
        crypto_auth_hmacsha256_update(&state, (const unsigned char *)out, strlen(out) - 1);
        crypto_auth_hmacsha256_final(&state, mac);
        fits = jwt_b64url_append(out, out_size, mac, sizeof mac);
    }
    if (!fits)
        out[0] = '\0';
    return fits;
}
