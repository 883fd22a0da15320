/*
 * static_files: the web app and the OpenAPI document. See static_files.h.
 *
 *   GET/HEAD url -> "/" is "/index.html"; "/openapi.yaml" is the OpenAPI file
 *                -> path check: 1..255 bytes, segments of [A-Za-z0-9._-]
 *                   not starting with '.', no empty segment     (else 404)
 *                -> content type by extension, known ones only  (else 404)
 *                -> realpath(root + url) must lie under realpath(root)
 *                   and be a regular file                       (else 404)
 *                -> ETag from size, mtime and inode; If-None-Match -> 304
 *                -> 200, the file streamed from its descriptor
 *
 * Caching: every file is `no-cache` with an ETag, so a browser revalidates
 * each time (a 304 without a body when nothing changed). The app has no
 * build step, so its file names carry no content hash: a long max-age on
 * app.js would let a browser run an old script against a new index.html
 * after an upgrade. Revalidation costs one small round trip per file.
 *
 * The root is resolved again for each request (a few syscalls), so a
 * deployment may switch the directory by renaming a symlink.
 */
#include "static_files.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log/log.h"

/* What the app uses and nothing else: its own scripts, styles and images,
 * fetch() to its own origin (the API and the notification stream). No
 * inline script or style, no eval, no frames, no plugins, no <base>; forms
 * are submitted by script only (form-action 'none'), and the DOM is built
 * without HTML strings (Trusted Types required for script sinks). */
static const char app_csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                              "img-src 'self'; connect-src 'self'; manifest-src 'self'; "
                              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
                              "require-trusted-types-for 'script'";

/* A document, not a page: the API's own policy. */
static const char document_csp[] = "default-src 'none'; frame-ancestors 'none'";

static const char openapi_path[] = "/openapi.yaml";

typedef struct {
    const char *extension; /* after the last '.', compared exactly */
    const char *content_type;
} content_type_t;

static const content_type_t content_types[] = {
    {"html", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"json", "application/json"},
    {"webmanifest", "application/manifest+json"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"ico", "image/x-icon"},
    {"txt", "text/plain; charset=utf-8"},
    {"yaml", "application/yaml"},
};

/* ---- requests we answer ------------------------------------------------ */

static bool is_set(const char *text)
{
    return text != NULL && text[0] != '\0';
}

/* True when 'url' is 'prefix' itself or below it ("/v1" and "/v1/..."). */
static bool path_under(const char *url, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(url, prefix, n) == 0 && (url[n] == '\0' || url[n] == '/');
}

bool static_files_wanted(const gateway_config_t *config, const char *method, const char *url)
{
    if (!is_set(config->static_dir) && !is_set(config->openapi_file))
        return false;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return false;
    return url[0] == '/' && !path_under(url, "/v1") && strcmp(url, "/healthz") != 0 &&
           strcmp(url, "/readyz") != 0;
}

/* ---- the path ---------------------------------------------------------- */

static bool name_char_valid(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/* True when 'path' is "/" followed by '/'-separated segments that are not
 * empty, do not start with '.' (no "..", no dot-files) and hold only
 * [A-Za-z0-9._-] (so no '%', '\', control bytes or spaces). */
static bool path_valid(const char *path)
{
    size_t len = strlen(path);
    if (len < 2 || len > static_path_bytes_max || path[0] != '/')
        return false;
    bool segment_start = true;
    for (const char *c = path + 1; *c != '\0'; c++) {
        if (*c == '/') {
            if (segment_start)
                return false; /* "//" */
            segment_start = true;
            continue;
        }
        if (!name_char_valid(*c) || (segment_start && *c == '.'))
            return false;
        segment_start = false;
    }
    return !segment_start; /* no trailing '/' */
}

/* The content type for the extension of 'path', or NULL when unknown. */
static const char *content_type_for(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash != NULL ? slash : path, '.');
    if (dot == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof content_types / sizeof content_types[0]; i++) {
        if (strcmp(dot + 1, content_types[i].extension) == 0)
            return content_types[i].content_type;
    }
    return NULL;
}

/* Opens regular file 'url' below directory 'root'. On success returns the
 * descriptor and fills 'st'; -1 when it does not exist, lies outside
 * 'root' once resolved, or is not a regular file. */
static int open_below(const char *root, const char *url, struct stat *st)
{
    char root_real[PATH_MAX], wanted[PATH_MAX], resolved[PATH_MAX];
    if (realpath(root, root_real) == NULL)
        return -1;
    int n = snprintf(wanted, sizeof wanted, "%s%s", root_real, url);
    if (n < 0 || (size_t)n >= sizeof wanted || realpath(wanted, resolved) == NULL)
        return -1;
    size_t root_len = strlen(root_real);
    if (strncmp(resolved, root_real, root_len) != 0 || resolved[root_len] != '/')
        return -1; /* a symlink out of the directory */
    int fd = open(resolved, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Opens the OpenAPI document 'file' (any path the operator chose). */
static int open_document(const char *file, struct stat *st)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- the response ------------------------------------------------------ */

/* Adds the headers every static response carries. */
static void add_common_headers(struct MHD_Response *response, const char *request_id,
                               const char *csp)
{
    MHD_add_response_header(response, "X-Request-Id", request_id);
    MHD_add_response_header(response, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(response, "X-Frame-Options", "DENY");
    MHD_add_response_header(response, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(response, "Cross-Origin-Opener-Policy", "same-origin");
    MHD_add_response_header(response, "Cross-Origin-Resource-Policy", "same-origin");
    MHD_add_response_header(response, "Content-Security-Policy", csp);
}

/* 404 {"error": {"code": "not_found", "message", "request_id"}}, as the API. */
static enum MHD_Result respond_not_found(struct MHD_Connection *connection, const char *request_id)
{
    json_t *body = json_pack("{s:{s:s, s:s, s:s}}", "error", "code", "not_found", "message",
                             "no such file", "request_id", request_id);
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL)
        return MHD_NO;
    struct MHD_Response *response =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (response == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(response, "Content-Type", "application/json");
    MHD_add_response_header(response, "Cache-Control", "no-store");
    add_common_headers(response, request_id, document_csp);
    enum MHD_Result result = MHD_queue_response(connection, 404, response);
    MHD_destroy_response(response);
    return result;
}

/* True when header value 'if_none_match' lists 'etag' (weak comparison,
 * as RFC 9110 asks for If-None-Match) or is "*". */
static bool etag_listed(const char *if_none_match, const char *etag)
{
    size_t etag_len = strlen(etag);
    const char *p = if_none_match;
    while (*p != '\0') {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *start = p;
        while (*p != '\0' && *p != ',')
            p++;
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end - start == 1 && *start == '*')
            return true;
        if (end - start > 2 && start[0] == 'W' && start[1] == '/')
            start += 2;
        if ((size_t)(end - start) == etag_len && memcmp(start, etag, etag_len) == 0)
            return true;
    }
    return false;
}

/* Sends open file 'fd' (taken: closed here or by libmicrohttpd). */
static enum MHD_Result respond_file(struct MHD_Connection *connection, int fd,
                                    const struct stat *st, const char *content_type,
                                    const char *csp, const char *request_id)
{
    char etag[96];
    snprintf(etag, sizeof etag, "\"%" PRIx64 "-%" PRIx64 "-%lx-%" PRIx64 "\"",
             (uint64_t)st->st_size, (uint64_t)st->st_mtim.tv_sec,
             (unsigned long)st->st_mtim.tv_nsec, (uint64_t)st->st_ino);
    const char *if_none_match =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "If-None-Match");
    unsigned status = 200;
    struct MHD_Response *response;
    if (if_none_match != NULL && etag_listed(if_none_match, etag)) {
        close(fd);
        status = 304;
        response = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    } else if (st->st_size == 0) {
        close(fd);
        response = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    } else {
        response = MHD_create_response_from_fd((uint64_t)st->st_size, fd);
        if (response == NULL)
            close(fd);
    }
    if (response == NULL)
        return MHD_NO;
    if (status == 200)
        MHD_add_response_header(response, "Content-Type", content_type);
    MHD_add_response_header(response, "Cache-Control", "no-cache");
    MHD_add_response_header(response, "ETag", etag);
    add_common_headers(response, request_id, csp);
    enum MHD_Result result = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return result;
}

enum MHD_Result static_files_serve(const gateway_config_t *config,
                                   struct MHD_Connection *connection, const char *url,
                                   const char *request_id)
{
    struct stat st;
    int fd;
    const char *type;
    const char *csp = app_csp;
    if (strcmp(url, openapi_path) == 0) {
        if (!is_set(config->openapi_file))
            return respond_not_found(connection, request_id);
        type = "application/yaml";
        csp = document_csp;
        fd = open_document(config->openapi_file, &st);
    } else {
        const char *path = strcmp(url, "/") == 0 ? "/index.html" : url;
        type = content_type_for(path);
        if (!is_set(config->static_dir) || !path_valid(path) || type == NULL)
            return respond_not_found(connection, request_id);
        fd = open_below(config->static_dir, path, &st);
    }
    if (fd < 0)
        return respond_not_found(connection, request_id);
    if (st.st_size > static_file_bytes_max) {
        log_warn("gateway: %s is over %d bytes; not served (request %s)", url,
                 static_file_bytes_max, request_id);
        close(fd);
        return respond_not_found(connection, request_id);
    }
    return respond_file(connection, fd, &st, type, csp, request_id);
}

/* ---- URL decoding ------------------------------------------------------ */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t static_files_unescape(void *cls, struct MHD_Connection *connection, char *text)
{
    (void)cls;
    (void)connection;
    char *out = text;
    const char *in = text;
    while (*in != '\0') {
        if (in[0] == '%' && hex_value(in[1]) >= 0 && hex_value(in[2]) >= 0) {
            int byte = hex_value(in[1]) * 16 + hex_value(in[2]);
            if (byte != 0 && byte != '/' && byte != '\\') {
                *out++ = (char)byte;
                in += 3;
                continue;
            }
        }
        *out++ = *in++; /* as is: a plain byte, a kept escape, a bad '%' */
    }
    *out = '\0';
    return (size_t)(out - text);
}
