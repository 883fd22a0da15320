/*
 * http_client: blocking HTTP/1.1 over loopback TCP for tests. See
 * http_client.h.
 *
 * The socket is non-blocking and every wait is a poll() against one
 * deadline per exchange, so a server that stops answering costs a test
 * at most http_timeout_ms.
 */
#include "http_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock/clock.h"

/* Records why the exchange failed (printf-style) in 'out->error'. */
static bool fail(http_response_t *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool fail(http_response_t *out, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(out->error, sizeof out->error, fmt, args);
    va_end(args);
    return false;
}

/* Milliseconds left until 'deadline_ms' (monotonic), at least 0. */
static int time_left_ms(int64_t deadline_ms)
{
    int64_t left = deadline_ms - clock_now_ms();
    return left > 0 ? (int)left : 0;
}

/* Waits until 'fd' is ready for 'events' or 'deadline_ms' passes.
 * Returns true when ready (or in error: the next call reports it). */
static bool wait_ready(int fd, short events, int64_t deadline_ms)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, time_left_ms(deadline_ms));
        if (n > 0)
            return true;
        if (n == 0)
            return false;
        if (errno != EINTR)
            return true;
    }
}

/* This thread's source address (http_client_set_source); 0 = any. */
static _Thread_local in_addr_t source_address;

bool http_client_set_source(const char *ipv4)
{
    if (ipv4 == NULL) {
        source_address = 0;
        return true;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, ipv4, &a) != 1)
        return false;
    source_address = a.s_addr;
    return true;
}

/* A non-blocking socket connected to 127.0.0.1:'port', or -1. */
static int connect_loopback(http_response_t *out, int port, int64_t deadline_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail(out, "socket: %s", strerror(errno));
        return -1;
    }
    if (source_address != 0) {
        struct sockaddr_in from = {.sin_family = AF_INET, .sin_addr.s_addr = source_address};
        if (bind(fd, (struct sockaddr *)&from, sizeof from) != 0) {
            fail(out, "bind to the source address: %s", strerror(errno));
            close(fd);
            return -1;
        }
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS) {
        fail(out, "connect to port %d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    int so_error = 0;
    socklen_t len = sizeof so_error;
    if (!wait_ready(fd, POLLOUT, deadline_ms)) {
        fail(out, "connect to port %d: timed out", port);
        close(fd);
        return -1;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0 || so_error != 0) {
        fail(out, "connect to port %d: %s", port, strerror(so_error ? so_error : errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends all 'len' bytes of 'bytes'. Returns 0, or the errno that stopped
 * it (ETIMEDOUT when the deadline passed). */
static int send_all(int fd, const char *bytes, size_t len, int64_t deadline_ms)
{
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(fd, bytes + sent, len - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_ready(fd, POLLOUT, deadline_ms))
                return ETIMEDOUT;
            continue;
        }
        return n < 0 ? errno : EPIPE;
    }
    return 0;
}

/* Finds "\r\n\r\n" in the first 'len' bytes of 'data'; returns the offset
 * just past it, or 0. */
static size_t head_end(const char *data, size_t len)
{
    for (size_t i = 3; i < len; i++) {
        if (data[i - 3] == '\r' && data[i - 2] == '\n' && data[i - 1] == '\r' && data[i] == '\n')
            return i + 1;
    }
    return 0;
}

/* Copies 'len' bytes of 'text' into 'dst' ('size' bytes), without the
 * spaces and tabs around it, truncated. */
static void copy_trimmed(char *dst, size_t size, const char *text, size_t len)
{
    while (len > 0 && (*text == ' ' || *text == '\t')) {
        text++;
        len--;
    }
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\t'))
        len--;
    if (len > size - 1)
        len = size - 1;
    memcpy(dst, text, len);
    dst[len] = '\0';
}

/* Parses the status line and headers in 'head' ('len' bytes, ending with
 * the blank line) into 'out'. */
static bool parse_head(http_response_t *out, const char *head, size_t len)
{
    const char *line_end = memchr(head, '\r', len);
    if (line_end == NULL || len < 12 || strncmp(head, "HTTP/1.", 7) != 0)
        return fail(out, "not an HTTP/1.x status line");
    int status = 0;
    for (size_t i = 9; i < 12; i++) {
        if (head[i] < '0' || head[i] > '9')
            return fail(out, "malformed status code");
        status = status * 10 + (head[i] - '0');
    }
    out->status = status;
    const char *p = line_end + 2;
    const char *end = head + len;
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (eol == NULL || eol == p)
            break; /* the blank line */
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon != NULL && out->header_count < http_headers_max) {
            http_header_t *h = &out->headers[out->header_count++];
            copy_trimmed(h->name, sizeof h->name, p, (size_t)(colon - p));
            copy_trimmed(h->value, sizeof h->value, colon + 1, (size_t)(eol - colon - 1));
        }
        p = eol + 2;
    }
    return true;
}

/* Reads the response on 'fd' into 'out' until Content-Length bytes of
 * body (or end of file without one) or 'deadline_ms'. */
static bool read_response(http_response_t *out, int fd, int64_t deadline_ms)
{
    size_t cap = 16384, len = 0, body_start = 0;
    long long content_length = -1;
    char *data = malloc(cap + 1);
    if (data == NULL)
        return fail(out, "out of memory");
    bool eof = false;
    for (;;) {
        if (body_start == 0) {
            body_start = head_end(data, len);
            if (body_start > 0) {
                if (!parse_head(out, data, body_start)) {
                    free(data);
                    return false;
                }
                const char *cl = http_header(out, "Content-Length");
                if (cl != NULL) {
                    char *rest = NULL;
                    content_length = strtoll(cl, &rest, 10);
                    if (rest == cl || *rest != '\0' || content_length < 0 ||
                        content_length > http_response_bytes_max) {
                        free(data);
                        return fail(out, "bad Content-Length '%s'", cl);
                    }
                }
            }
        }
        if (body_start > 0 && content_length >= 0 && len - body_start >= (size_t)content_length)
            break;
        if (eof)
            break;
        if (len == cap) {
            if (cap >= http_response_bytes_max) {
                free(data);
                return fail(out, "response over %d bytes", http_response_bytes_max);
            }
            cap *= 2;
            char *grown = realloc(data, cap + 1);
            if (grown == NULL) {
                free(data);
                return fail(out, "out of memory");
            }
            data = grown;
        }
        ssize_t n = recv(fd, data + len, cap - len, 0);
        if (n > 0) {
            len += (size_t)n;
        } else if (n == 0 || errno == ECONNRESET) {
            eof = true;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (!wait_ready(fd, POLLIN, deadline_ms)) {
                free(data);
                return fail(out, "no complete response within %d ms (%zu bytes read)",
                            http_timeout_ms, len);
            }
        } else {
            int err = errno;
            free(data);
            return fail(out, "recv: %s", strerror(err));
        }
    }
    if (body_start == 0) {
        free(data);
        return fail(out, len == 0 ? "connection closed without a response"
                                  : "connection closed in the middle of the head");
    }
    size_t body_len = len - body_start;
    if (content_length >= 0) {
        if (body_len < (size_t)content_length) {
            free(data);
            return fail(out, "body cut short: %zu of %lld bytes", body_len, content_length);
        }
        body_len = (size_t)content_length;
    }
    out->body = malloc(body_len + 1);
    if (out->body == NULL) {
        free(data);
        return fail(out, "out of memory");
    }
    memcpy(out->body, data + body_start, body_len);
    out->body[body_len] = '\0';
    out->body_len = body_len;
    free(data);
    if (body_len > 0)
        out->json = json_loadb(out->body, body_len, JSON_REJECT_DUPLICATES, NULL);
    return true;
}

/* Connects, sends 'bytes', reads the response. A send that the server
 * cut short still counts when a response was read. */
static bool exchange(http_response_t *out, int port, const char *bytes, size_t len)
{
    memset(out, 0, sizeof *out);
    int64_t start_ms = clock_now_ms();
    int64_t deadline_ms = start_ms + http_timeout_ms;
    int fd = connect_loopback(out, port, deadline_ms);
    if (fd < 0)
        return false;
    int send_error = send_all(fd, bytes, len, deadline_ms);
    if (send_error == ETIMEDOUT) {
        close(fd);
        return fail(out, "send: timed out after %d ms", http_timeout_ms);
    }
    bool ok = read_response(out, fd, deadline_ms);
    close(fd);
    out->elapsed_ms = (long)(clock_now_ms() - start_ms);
    if (!ok && send_error != 0) {
        char why[sizeof out->error];
        snprintf(why, sizeof why, "%s", out->error);
        return fail(out, "send: %s; then %s", strerror(send_error), why);
    }
    return ok;
}

bool http_request(http_response_t *out, int port, const char *method, const char *path,
                  const char *const headers[], const char *body)
{
    size_t body_len = body != NULL ? strlen(body) : 0;
    size_t head_len = strlen(method) + strlen(path) + 128;
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        head_len += strlen(headers[i]) + 2;
    char *request = malloc(head_len + body_len + 1);
    if (request == NULL) {
        memset(out, 0, sizeof *out);
        return fail(out, "out of memory");
    }
    int n =
        snprintf(request, head_len, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n", method, path, port);
    size_t used = n > 0 ? (size_t)n : 0;
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        used += (size_t)snprintf(request + used, head_len - used, "%s\r\n", headers[i]);
    if (body != NULL)
        used +=
            (size_t)snprintf(request + used, head_len - used, "Content-Length: %zu\r\n", body_len);
    used += (size_t)snprintf(request + used, head_len - used, "Connection: close\r\n\r\n");
    memcpy(request + used, body != NULL ? body : "", body_len);
    bool ok = exchange(out, port, request, used + body_len);
    free(request);
    return ok;
}

bool http_raw(http_response_t *out, int port, const void *bytes, size_t len)
{
    return exchange(out, port, bytes, len);
}

const char *http_header(const http_response_t *response, const char *name)
{
    for (size_t i = 0; i < response->header_count; i++) {
        if (strcasecmp(response->headers[i].name, name) == 0)
            return response->headers[i].value;
    }
    return NULL;
}

void http_response_free(http_response_t *response)
{
    free(response->body);
    response->body = NULL;
    response->body_len = 0;
    json_decref(response->json);
    response->json = NULL;
}

bool http_api_request(http_response_t *out, int port, const char *method, const char *path,
                      const char *token, const char *key, const char *body,
                      const char *const extra[])
{
    char auth[http_token_bytes_max + 32], idem[http_idempotency_key_bytes_max + 32];
    const char *headers[http_extra_headers_max + 4];
    size_t n = 0;
    bool fits = true;
    if (token != NULL) {
        fits &= strlen(token) <= http_token_bytes_max;
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        headers[n++] = auth;
    }
    if (key != NULL) {
        fits &= strlen(key) <= http_idempotency_key_bytes_max;
        snprintf(idem, sizeof idem, "Idempotency-Key: %s", key);
        headers[n++] = idem;
    }
    if (body != NULL)
        headers[n++] = "Content-Type: application/json";
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++) {
        if (i >= http_extra_headers_max) {
            fits = false;
            break;
        }
        headers[n++] = extra[i];
    }
    headers[n] = NULL;
    if (!fits) {
        memset(out, 0, sizeof *out);
        snprintf(out->error, sizeof out->error,
                 "http_api_request: a token, key or header list over its limit");
        return false;
    }
    return http_request(out, port, method, path, headers, body);
}
