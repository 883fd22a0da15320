/*
 * sse: the notification stream. See sse.h.
 *
 *   access handler            stream thread                 MHD pool thread
 *   --------------            -------------                 ---------------
 *   connect + SUBSCRIBE  -->  poll(redis fd, keep-alive)    content reader:
 *   (503 on failure)          message -> queue "event:.."     queued bytes? hand over
 *   start thread, queue       nothing for 15 s -> queue       nothing? suspend, return 0
 *   the response              ": keep-alive"                  ended/closing? end of stream
 *                             queued while suspended ->
 *                               MHD_resume_connection
 *
 *   client gone -> MHD destroys the response -> stream_free: mark closing,
 *   shutdown() the Redis socket (wakes the thread's poll), join, close.
 *
 * Locking: a stream's mutex guards its queue and flags; the hub's mutex
 * its list and count. Order: hub, then stream. The content reader and
 * the stream thread take only the stream's mutex; MHD_suspend_connection
 * and MHD_resume_connection are called under it, so a resume can never
 * come before its suspend.
 */
#include "sse.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock/clock.h"
#include "list/list.h"
#include "log/log.h"

enum {
    sse_keepalive_ms = 15000,
    sse_keepalive_min_ms = 500,
    sse_redis_timeout_ms = 1000,      /* connect and SUBSCRIBE, in the access handler */
    sse_buffer_bytes_max = 32 * 1024, /* queued for one client; beyond, its stream ends */
    sse_retry_ms = 2000,              /* EventSource reconnection delay we advise */
    sse_thread_stack_bytes = 256 * 1024,
    sse_channel_bytes_max = 128,
    sse_id_bytes_max = 128,
    sse_user_id_bytes_max = 64,
    sse_request_id_bytes_max = 64,
    sse_shutdown_wait_ms = 1000, /* for streams to send their last chunk */
};

struct sse {
    char redis_host[256];
    uint16_t redis_port;
    unsigned streams_max;
    int64_t keepalive_ms;
    pthread_mutex_t mutex; /* guards the three below */
    list_node_t streams;
    unsigned count; /* streams open or opening */
    bool stopping;
};

typedef struct {
    sse_t *hub;
    list_node_t link; /* in hub->streams */
    struct MHD_Connection *connection;
    redisContext *redis; /* subscribed; read by the thread only */
    pthread_t thread;
    bool thread_started;
    int64_t opened_at_ms;
    char user_id[sse_user_id_bytes_max + 1];
    char request_id[sse_request_id_bytes_max + 1];
    pthread_mutex_t mutex; /* guards the queue and the flags below */
    char queue[sse_buffer_bytes_max];
    size_t queue_start, queue_len; /* unsent bytes: queue[start .. start + len) */
    bool suspended;                /* the connection waits for us to resume it */
    bool ended;                    /* Redis lost or queue full: end after the queue */
    bool closing;                  /* the client left or the gateway stops: end now */
} sse_stream_t;

sse_t *sse_new(const sse_config_t *config)
{
    sse_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    snprintf(self->redis_host, sizeof self->redis_host, "%s", config->redis_host);
    self->redis_port = config->redis_port;
    self->streams_max = config->streams_max;
    /* An idle connection times out: say something well before it does. */
    self->keepalive_ms = sse_keepalive_ms;
    if (config->connection_timeout_s > 0 &&
        (int64_t)config->connection_timeout_s * 1000 / 2 < self->keepalive_ms)
        self->keepalive_ms = (int64_t)config->connection_timeout_s * 1000 / 2;
    if (self->keepalive_ms < sse_keepalive_min_ms)
        self->keepalive_ms = sse_keepalive_min_ms;
    list_init(&self->streams);
    if (pthread_mutex_init(&self->mutex, NULL) != 0) {
        free(self);
        return NULL;
    }
    return self;
}

void sse_shutdown(sse_t *self)
{
    pthread_mutex_lock(&self->mutex);
    self->stopping = true;
    for (list_node_t *n = self->streams.next; n != &self->streams; n = n->next) {
        sse_stream_t *s = list_entry(n, sse_stream_t, link);
        pthread_mutex_lock(&s->mutex);
        s->closing = true;
        if (s->suspended) {
            s->suspended = false;
            MHD_resume_connection(s->connection);
        }
        pthread_mutex_unlock(&s->mutex);
        if (s->redis != NULL)
            shutdown(s->redis->fd, SHUT_RDWR); /* wakes its thread */
    }
    pthread_mutex_unlock(&self->mutex);
    /* Let libmicrohttpd end the resumed streams properly (their clients
     * then see a clean end, not a cut), for a bounded time. */
    int64_t until = clock_now_ms() + sse_shutdown_wait_ms;
    for (;;) {
        pthread_mutex_lock(&self->mutex);
        unsigned open = self->count;
        pthread_mutex_unlock(&self->mutex);
        if (open == 0 || clock_now_ms() >= until)
            break;
        usleep(10 * 1000);
    }
}

void sse_destroy(sse_t **self)
{
    if (*self == NULL)
        return;
    /* After MHD_stop_daemon every stream has been freed. */
    if (!list_empty(&(*self)->streams))
        log_error("sse: %u streams still open at destroy", (*self)->count);
    pthread_mutex_destroy(&(*self)->mutex);
    free(*self);
    *self = NULL;
}

/* ---- the queue (stream mutex held) ------------------------------------- */

/* Queues 'len' bytes of 'text' for the client and wakes its connection.
 * A client that owes too much is ended: it reconnects and reads the list
 * (GET /v1/notifications) for what it missed. */
static void stream_queue_locked(sse_stream_t *s, const char *text, size_t len)
{
    if (s->closing || s->ended)
        return;
    if (s->queue_len + len > sizeof s->queue) {
        log_warn("sse: stream of %s (request %s) owes over %zu bytes; ending it", s->user_id,
                 s->request_id, sizeof s->queue);
        s->ended = true;
    } else {
        if (s->queue_start + s->queue_len + len > sizeof s->queue) {
            memmove(s->queue, s->queue + s->queue_start, s->queue_len);
            s->queue_start = 0;
        }
        memcpy(s->queue + s->queue_start + s->queue_len, text, len);
        s->queue_len += len;
    }
    if (s->suspended) {
        s->suspended = false;
        MHD_resume_connection(s->connection);
    }
}

static void stream_queue(sse_stream_t *s, const char *text, size_t len)
{
    pthread_mutex_lock(&s->mutex);
    stream_queue_locked(s, text, len);
    pthread_mutex_unlock(&s->mutex);
}

/* Ends the stream after what is queued (Redis is gone). */
static void stream_end(sse_stream_t *s)
{
    pthread_mutex_lock(&s->mutex);
    if (!s->ended && !s->closing)
        log_info("sse: stream of %s (request %s) lost Redis; ending it", s->user_id, s->request_id);
    s->ended = true;
    if (s->suspended && !s->closing) {
        s->suspended = false;
        MHD_resume_connection(s->connection);
    }
    pthread_mutex_unlock(&s->mutex);
}

/* libmicrohttpd's content reader: never blocks. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    sse_stream_t *s = cls;
    pthread_mutex_lock(&s->mutex);
    ssize_t result;
    if (s->closing) {
        result = MHD_CONTENT_READER_END_OF_STREAM;
    } else if (s->queue_len > 0) {
        size_t n = s->queue_len < max ? s->queue_len : max;
        memcpy(buf, s->queue + s->queue_start, n);
        s->queue_start += n;
        s->queue_len -= n;
        if (s->queue_len == 0)
            s->queue_start = 0;
        result = (ssize_t)n;
    } else if (s->ended) {
        result = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Nothing yet: leave the event loop until the thread has bytes. */
        s->suspended = true;
        MHD_suspend_connection(s->connection);
        result = 0;
    }
    pthread_mutex_unlock(&s->mutex);
    return result;
}

/* ---- the stream's thread ------------------------------------------------ */

/* Queues one Redis Pub/Sub message (a notification's JSON) as an SSE
 * event. The JSON is parsed and written again compactly, so "data:" is
 * one line whatever was published; anything else is skipped. */
static void stream_forward(sse_stream_t *s, const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return; /* subscribe confirmations and the like */
    const redisReply *payload = reply->element[2];
    json_t *json = json_loadb(payload->str, payload->len, 0, NULL);
    const char *id = json_string_value(json_object_get(json, "id"));
    char *data = json_is_object(json) ? json_dumps(json, JSON_COMPACT) : NULL;
    bool id_ok = id != NULL && strlen(id) <= sse_id_bytes_max && strpbrk(id, "\r\n") == NULL;
    if (data != NULL && id_ok) {
        size_t size = strlen(data) + strlen(id) + 64;
        char *event = malloc(size);
        int n = event ? snprintf(event, size, "event: notification\nid: %s\ndata: %s\n\n", id, data)
                      : -1;
        if (n > 0 && (size_t)n < size)
            stream_queue(s, event, (size_t)n);
        free(event);
    } else {
        log_warn("sse: a message on the channel of %s is not a notification; skipped", s->user_id);
    }
    free(data);
    json_decref(json);
}

/* Waits for messages and keep-alive times until the stream closes or
 * Redis is lost. */
static void *stream_main(void *arg)
{
    sse_stream_t *s = arg;
    const int64_t keepalive_ms = s->hub->keepalive_ms;
    int64_t keepalive_at = clock_now_ms() + keepalive_ms;
    static const char keepalive[] = ": keep-alive\n\n";
    for (;;) {
        /* hiredis may hold whole replies already read. */
        void *reply = NULL;
        while (redisGetReplyFromReader(s->redis, &reply) == REDIS_OK && reply != NULL) {
            stream_forward(s, reply);
            freeReplyObject(reply);
            reply = NULL;
            keepalive_at = clock_now_ms() + keepalive_ms;
        }
        if (s->redis->err != 0) {
            stream_end(s);
            break;
        }
        pthread_mutex_lock(&s->mutex);
        bool done = s->closing || s->ended;
        pthread_mutex_unlock(&s->mutex);
        if (done)
            break;
        int64_t wait_ms = keepalive_at - clock_now_ms();
        struct pollfd p = {.fd = s->redis->fd, .events = POLLIN};
        int rc = poll(&p, 1, wait_ms > 0 ? (int)wait_ms : 0);
        if (rc < 0 && errno != EINTR) {
            stream_end(s);
            break;
        }
        if (rc > 0 && redisBufferRead(s->redis) != REDIS_OK) {
            stream_end(s); /* closed by Redis, or by stream_free's shutdown() */
            break;
        }
        if (clock_now_ms() >= keepalive_at) {
            stream_queue(s, keepalive, sizeof keepalive - 1);
            keepalive_at = clock_now_ms() + keepalive_ms;
        }
    }
    return NULL;
}

/* ---- life cycle ------------------------------------------------------- */

/* Frees a stream: libmicrohttpd's free callback (the client is gone or
 * the response was never sent), also used before a response exists. */
static void stream_free(void *cls)
{
    sse_stream_t *s = cls;
    sse_t *hub = s->hub;
    pthread_mutex_lock(&hub->mutex);
    list_remove(&s->link); /* sse_shutdown no longer sees it */
    pthread_mutex_unlock(&hub->mutex);
    pthread_mutex_lock(&s->mutex);
    s->closing = true;
    pthread_mutex_unlock(&s->mutex);
    if (s->thread_started) {
        shutdown(s->redis->fd, SHUT_RDWR); /* its poll() returns at once */
        pthread_join(s->thread, NULL);
    }
    if (s->redis != NULL)
        redisFree(s->redis);
    pthread_mutex_lock(&hub->mutex);
    hub->count--;
    unsigned open = hub->count;
    pthread_mutex_unlock(&hub->mutex);
    if (s->thread_started)
        log_info("sse: stream of %s closed after %lld s (request %s, %u open)", s->user_id,
                 (long long)((clock_now_ms() - s->opened_at_ms) / 1000), s->request_id, open);
    pthread_mutex_destroy(&s->mutex);
    free(s);
}

/* Adds the headers every response of ours carries (as gateway.c does). */
static void add_common_headers(struct MHD_Response *response, const char *request_id)
{
    MHD_add_response_header(response, "X-Request-Id", request_id);
    MHD_add_response_header(response, "Cache-Control", "no-store");
    MHD_add_response_header(response, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(response, "X-Frame-Options", "DENY");
    MHD_add_response_header(response, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(response, "Content-Security-Policy",
                            "default-src 'none'; frame-ancestors 'none'");
}

/* Responds 'status' {"error": {"code", "message", "request_id"}}, like
 * the gateway's other errors; a 503 with Retry-After: 1. */
static enum MHD_Result respond_error(struct MHD_Connection *connection, unsigned status,
                                     const char *code, const char *message, const char *request_id)
{
    json_t *body = json_pack("{s:{s:s, s:s, s:s}}", "error", "code", code, "message", message,
                             "request_id", request_id);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
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
    add_common_headers(response, request_id);
    if (status == 503)
        MHD_add_response_header(response, "Retry-After", "1");
    enum MHD_Result result = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return result;
}

/* Connects to Redis and subscribes to 'user_id''s channel. NULL, after
 * logging why, when Redis is unreachable or refuses. */
static redisContext *subscribe(sse_t *self, const char *user_id, const char *request_id)
{
    struct timeval timeout = {.tv_sec = sse_redis_timeout_ms / 1000,
                              .tv_usec = (sse_redis_timeout_ms % 1000) * 1000};
    redisContext *redis = redisConnectWithTimeout(self->redis_host, self->redis_port, timeout);
    if (redis == NULL || redis->err != 0 || redisSetTimeout(redis, timeout) != REDIS_OK) {
        log_warn("sse: Redis %s:%u unreachable (request %s): %s", self->redis_host,
                 (unsigned)self->redis_port, request_id, redis ? redis->errstr : "out of memory");
        if (redis != NULL)
            redisFree(redis);
        return NULL;
    }
    char channel[sse_channel_bytes_max];
    snprintf(channel, sizeof channel, "notifications:user:%s", user_id);
    redisReply *reply = redisCommand(redis, "SUBSCRIBE %s", channel);
    bool subscribed = reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
                      reply->element[0]->type == REDIS_REPLY_STRING &&
                      strcmp(reply->element[0]->str, "subscribe") == 0;
    if (!subscribed)
        log_warn("sse: SUBSCRIBE %s failed (request %s): %s", channel, request_id,
                 reply == NULL                      ? redis->errstr
                 : reply->type == REDIS_REPLY_ERROR ? reply->str
                                                    : "unexpected reply");
    if (reply != NULL)
        freeReplyObject(reply);
    if (!subscribed) {
        redisFree(redis);
        return NULL;
    }
    return redis;
}

/* Takes a stream slot. False when the limit is reached or we stop. */
static bool slot_take(sse_t *self)
{
    pthread_mutex_lock(&self->mutex);
    bool taken = !self->stopping && self->count < self->streams_max;
    if (taken)
        self->count++;
    pthread_mutex_unlock(&self->mutex);
    return taken;
}

static void slot_give_back(sse_t *self)
{
    pthread_mutex_lock(&self->mutex);
    self->count--;
    pthread_mutex_unlock(&self->mutex);
}

enum MHD_Result sse_stream_open(sse_t *self, struct MHD_Connection *connection, const char *user_id,
                                const char *request_id)
{
    if (strlen(user_id) > sse_user_id_bytes_max || strlen(request_id) > sse_request_id_bytes_max)
        return respond_error(connection, 500, "internal_error", "internal error", request_id);
    if (!slot_take(self)) {
        log_warn("sse: %u streams open; refusing another (request %s)", self->streams_max,
                 request_id);
        return respond_error(connection, 503, "too_many_streams",
                             "too many notification streams are open; retry later", request_id);
    }
    redisContext *redis = subscribe(self, user_id, request_id);
    sse_stream_t *s = redis ? calloc(1, sizeof *s) : NULL;
    if (s == NULL || pthread_mutex_init(&s->mutex, NULL) != 0) {
        free(s);
        if (redis != NULL)
            redisFree(redis);
        slot_give_back(self);
        return respond_error(connection, 503, "notifications_unavailable",
                             "notifications are temporarily unavailable; retry later", request_id);
    }
    s->hub = self;
    s->connection = connection;
    s->redis = redis;
    s->opened_at_ms = clock_now_ms();
    snprintf(s->user_id, sizeof s->user_id, "%s", user_id);
    snprintf(s->request_id, sizeof s->request_id, "%s", request_id);
    /* The first bytes: how soon an EventSource should reconnect. */
    s->queue_len = (size_t)snprintf(s->queue, sizeof s->queue, "retry: %d\n\n", sse_retry_ms);

    /* Register (unless stopping began meanwhile), then start the thread:
     * from here on stream_free undoes everything. */
    pthread_mutex_lock(&self->mutex);
    bool stopping = self->stopping;
    list_init(&s->link);
    if (!stopping)
        list_push_back(&self->streams, &s->link);
    pthread_mutex_unlock(&self->mutex);
    pthread_attr_t attr;
    bool started = false;
    if (!stopping && pthread_attr_init(&attr) == 0) {
        pthread_attr_setstacksize(&attr, sse_thread_stack_bytes);
        started = pthread_create(&s->thread, &attr, stream_main, s) == 0;
        pthread_attr_destroy(&attr);
    }
    s->thread_started = started;
    struct MHD_Response *response =
        started
            ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, s, stream_free)
            : NULL;
    if (response == NULL) {
        stream_free(s);
        return respond_error(connection, 503, "notifications_unavailable",
                             "notifications are temporarily unavailable; retry later", request_id);
    }
    MHD_add_response_header(response, "Content-Type", "text/event-stream");
    add_common_headers(response, request_id);
    MHD_add_response_header(response, "X-Accel-Buffering", "no"); /* proxies: do not buffer */
    enum MHD_Result result = MHD_queue_response(connection, 200, response);
    MHD_destroy_response(response); /* on failure this frees the stream */
    if (result == MHD_YES)
        log_info("sse: stream of %s opened (request %s)", user_id, request_id);
    return result;
}
