/*
 * sse: GET /v1/notifications/stream, a Server-Sent Events stream of the
 * caller's live notifications. Each stream subscribes to the caller's
 * Redis channel "notifications:user:<user id>" (published by the
 * notification service, see proto/notification.proto) and forwards every
 * message as
 *
 *     event: notification
 *     id: <notification id>
 *     data: <the notification's JSON, one line>
 *     <blank line>
 *
 * with a ": keep-alive" comment when nothing was sent for 15 s.
 *
 * Design (why it is not a blocking content reader): libmicrohttpd's pool
 * threads each serve many connections from one event loop, so a content
 * reader that blocks, even for 1 s, stalls every other request of that
 * thread. Instead each stream has a small thread of its own that waits on
 * its Redis connection and queues bytes, and the content reader never
 * blocks: it hands over what is queued, or suspends the connection
 * (MHD_suspend_connection) until the stream's thread resumes it. This
 * needs the daemon flag MHD_ALLOW_SUSPEND_RESUME.
 *
 * It must never keep a Redis connection or a thread after its client is
 * gone (libmicrohttpd's free callback closes both), never serve more than
 * streams_max streams, and never let a slow client grow memory without
 * bound (a stream owes it at most sse_buffer_bytes_max, then it ends).
 */
#ifndef PAYGATE_GATEWAY_SSE_H
#define PAYGATE_GATEWAY_SSE_H

#include <microhttpd.h>
#include <stdint.h>

#define SSE_STREAM_PATH "/v1/notifications/stream"

typedef struct {
    const char *redis_host;
    uint16_t redis_port;
    unsigned streams_max;          /* open streams; beyond: 503 */
    unsigned connection_timeout_s; /* the daemon's idle timeout; keep-alives come sooner */
} sse_config_t;

typedef struct sse sse_t;

/* Copies 'config'. Does no I/O. NULL on OOM. */
sse_t *sse_new(const sse_config_t *config);

/* Answers GET /v1/notifications/stream for the authenticated 'user_id'
 * on 'connection' (from the access handler): subscribes to the user's
 * channel, then queues the event stream. Redis unreachable or the stream
 * limit reached: a 503 JSON error instead (with Retry-After). Returns
 * what MHD_queue_response returned. */
enum MHD_Result sse_stream_open(sse_t *self, struct MHD_Connection *connection, const char *user_id,
                                const char *request_id);

/* Ends every open stream and refuses new ones, waiting up to 1 s for
 * them to close. Call it before MHD_stop_daemon: libmicrohttpd must not
 * be stopped while a connection is suspended. */
void sse_shutdown(sse_t *self);

/* Frees 'self' (after MHD_stop_daemon: no stream is left) and sets
 * '*self' to NULL. */
void sse_destroy(sse_t **self);

#endif
