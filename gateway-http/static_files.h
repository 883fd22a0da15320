/*
 * static_files: the web app (web/) and the OpenAPI document, served by the
 * gateway as plain files.
 *
 * GET and HEAD of a path outside the API (/v1/..., /healthz, /readyz) are
 * answered from the directory PAYGATE_GATEWAY_STATIC_DIR ("/" is its
 * index.html); GET /openapi.yaml from the file PAYGATE_GATEWAY_OPENAPI_FILE.
 * Every file is sent with its content type, `Cache-Control: no-cache` and
 * an ETag (304 on If-None-Match), `nosniff`, and the app's
 * Content-Security-Policy.
 *
 * Must never: send a file from outside the static directory (no "..", no
 * dot-files, no encoded separators, no symlink leading out: the path is
 * resolved with realpath and its prefix checked), send a file of a type it
 * does not know, or render anything on the server.
 */
#ifndef PAYGATE_STATIC_FILES_H
#define PAYGATE_STATIC_FILES_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

#include "gateway.h"

enum {
    static_path_bytes_max = 255,              /* longest URL path we look up */
    static_file_bytes_max = 64 * 1024 * 1024, /* larger files are not served */
};

/* True when request 'method' 'url' is for static_files_serve(): GET or
 * HEAD of a path outside the API, and 'config' has a static directory or
 * an OpenAPI file. False leaves the request to the API's routing. */
bool static_files_wanted(const gateway_config_t *config, const char *method, const char *url);

/* Answers GET/HEAD 'url' (decoded path, no query) from 'config''s static
 * directory or OpenAPI file: 200 with the file, 304 when If-None-Match
 * names its ETag, or a JSON 404 {"error": {"code": "not_found", ...}}.
 * libmicrohttpd leaves out the body of a HEAD response itself. */
enum MHD_Result static_files_serve(const gateway_config_t *config,
                                   struct MHD_Connection *connection, const char *url,
                                   const char *request_id);

/* libmicrohttpd's MHD_OPTION_UNESCAPE_CALLBACK for every URL path and
 * query argument: percent-decodes 'text' in place like the default, except
 * that %2F ('/'), %5C ('\') and %00 stay encoded, so that no path segment
 * or parameter can smuggle a separator or cut a string short. Returns the
 * new length. */
size_t static_files_unescape(void *cls, struct MHD_Connection *connection, char *text);

#endif
