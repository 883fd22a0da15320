/*
 * http_client: a small blocking HTTP/1.1 client for integration tests.
 *
 * One request per connection (it always sends "Connection: close") to
 * 127.0.0.1:<port>. It reads the status line, the headers and a body of
 * Content-Length bytes (or up to end of file when there is none), and
 * parses a JSON body with jansson. http_raw() sends arbitrary bytes, for
 * malformed requests and oversized heads.
 *
 * Everything is bounded: each request gives up after http_timeout_ms, a
 * response may be at most http_response_bytes_max, and headers beyond
 * http_headers_max are dropped. It must never hang a test, and never
 * abort on whatever a server sends back.
 */
#ifndef PAYGATE_TEST_HTTP_CLIENT_H
#define PAYGATE_TEST_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

enum {
    http_timeout_ms = 10000,                   /* connect, send and receive, in total */
    http_response_bytes_max = 4 * 1024 * 1024, /* head and body */
    http_headers_max = 64,
    http_header_name_bytes_max = 127,
    http_header_value_bytes_max = 2047,
    http_token_bytes_max = 8192, /* http_api_request's bearer token (tests send oversized ones) */
    http_idempotency_key_bytes_max = 1024, /* http_api_request's Idempotency-Key (likewise) */
    http_extra_headers_max = 16,           /* http_api_request's 'extra' */
};

typedef struct {
    char name[http_header_name_bytes_max + 1];
    char value[http_header_value_bytes_max + 1];
} http_header_t;

typedef struct {
    int status; /* e.g. 201; 0 when no response was read */
    size_t header_count;
    http_header_t headers[http_headers_max];
    char *body; /* NUL-terminated (the NUL is not counted); NULL when none */
    size_t body_len;
    json_t *json;    /* 'body' parsed as JSON, or NULL when it is not JSON */
    long elapsed_ms; /* from connect to the last byte read */
    char error[256]; /* why the exchange failed, when it did */
} http_response_t;

/* Sends 'method' 'path' to 127.0.0.1:'port' with 'headers' ("Name: value"
 * strings, NULL-ended; may be NULL) and 'body' (NUL-terminated; NULL for
 * none; a Content-Length is added when not NULL), and reads the response
 * into 'out' (initialised here; release it with http_response_free).
 * Returns false, with 'out->error' set, when no complete response came
 * within http_timeout_ms. */
bool http_request(http_response_t *out, int port, const char *method, const char *path,
                  const char *const headers[], const char *body);

/* http_request in the gateway API's conventions: 'token' (or NULL) goes as
 * "Authorization: Bearer <token>" (at most http_token_bytes_max bytes),
 * 'key' (or NULL) as the Idempotency-Key (at most
 * http_idempotency_key_bytes_max), 'body' (or NULL) as application/json,
 * then 'extra' whole headers ("Name: value", NULL-ended; may be NULL; at
 * most http_extra_headers_max). Returns like http_request; a token, key or
 * header list over its limit is not sent: false, with 'out->error' set. */
bool http_api_request(http_response_t *out, int port, const char *method, const char *path,
                      const char *token, const char *key, const char *body,
                      const char *const extra[]);

/* Sends 'len' raw bytes 'bytes' to 127.0.0.1:'port' as they are, then reads
 * a response like http_request. A server that closes the connection while
 * the bytes are still being sent is not an error as long as it answered.
 * Returns false, with 'out->error' set, when no complete response came. */
bool http_raw(http_response_t *out, int port, const void *bytes, size_t len);

/* Makes this thread's later requests come from 'ipv4' (a loopback
 * address such as "127.0.0.2", so a server sees another client address),
 * or from any address again when NULL. Returns false when 'ipv4' is not
 * an IPv4 address. */
bool http_client_set_source(const char *ipv4);

/* The value of header 'name' (case-insensitive) of 'response', or NULL. */
const char *http_header(const http_response_t *response, const char *name);

/* Frees the body and the JSON of 'response'. Safe to call twice. */
void http_response_free(http_response_t *response);

#endif
