/*
 * metrics_scrape: see metrics_scrape.h.
 */
#include "metrics_scrape.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http_client.h"

char *metrics_scrape(int port, const char *what)
{
    http_response_t r;
    if (!http_request(&r, port, "GET", "/metrics", NULL, NULL) || r.status != 200)
        fail_msg("GET /metrics of %s: %d %s", what, r.status, r.error);
    char *text = malloc(r.body_len + 2);
    if (text == NULL)
        fail_msg("GET /metrics of %s: out of memory", what);
    text[0] = '\n';
    memcpy(text + 1, r.body ? r.body : "", r.body_len);
    text[r.body_len + 1] = '\0';
    http_response_free(&r);
    return text;
}

double metrics_sample(const char *text, const char *key, bool *found)
{
    char needle[512];
    snprintf(needle, sizeof needle, "\n%s ", key);
    const char *at = strstr(text, needle);
    if (found != NULL)
        *found = at != NULL;
    return at ? strtod(at + strlen(needle), NULL) : 0;
}
