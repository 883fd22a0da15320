/*
 * id: random prefixed ids. See id.h.
 */
#include "id.h"

#include <sodium.h>
#include <string.h>

static const char id_alphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";

bool id_new(const char *prefix, char *out, size_t out_size)
{
    size_t prefix_len = strlen(prefix);
    if (out_size < prefix_len + 1 + id_random_chars + 1)
        return false;
    unsigned char random[id_random_chars];
    randombytes_buf(random, sizeof random);
    memcpy(out, prefix, prefix_len);
    out[prefix_len] = '_';
    for (size_t i = 0; i < id_random_chars; i++)
        out[prefix_len + 1 + i] = id_alphabet[random[i] & 31];
    out[prefix_len + 1 + id_random_chars] = '\0';
    return true;
}

bool id_valid(const char *prefix, const char *text)
{
    size_t prefix_len = strlen(prefix);
    if (text == NULL || strlen(text) != prefix_len + 1 + id_random_chars)
        return false;
    if (strncmp(text, prefix, prefix_len) != 0 || text[prefix_len] != '_')
        return false;
    for (size_t i = prefix_len + 1; text[i] != '\0'; i++) {
        if (strchr(id_alphabet, text[i]) == NULL)
            return false;
    }
    return true;
}
