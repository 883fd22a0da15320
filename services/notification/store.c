/*
 * store: Redis for notifications, one hiredis connection per thread. See
 * store.h.
 */
#include "store.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "log/log.h"

struct store {
    char host[256];
    uint16_t port;
    struct timeval timeout;
    redisContext *redis; /* NULL while disconnected */
    bool down;           /* the last attempt failed (log transitions only) */
};

/* Exactly-once delivery, run atomically by Redis:
 *   KEYS[1] notification:seen:<id>   KEYS[2] notifications:user:<u>:latest
 *   ARGV[1] the JSON   ARGV[2] seen expiry (s)   ARGV[3] list length kept
 *   ARGV[4] the channel notifications:user:<u>
 * Returns 1 when it delivered, 0 when the id was seen before. Redis does
 * not undo the writes of a script that fails half-way, so the write that
 * can fail (LPUSH: the list key holds another type, or Redis is out of
 * memory, checked at a script's first write) comes first and the seen key
 * is set after it: a failed script leaves nothing, and the retry
 * delivers (were the seen key set first, the retry would answer "seen
 * before" and the notification would be lost). */
static const char deliver_script[] = "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
                                     "  return 0\n"
                                     "end\n"
                                     "redis.call('LPUSH', KEYS[2], ARGV[1])\n"
                                     "redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)\n"
                                     "redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])\n"
                                     "redis.call('PUBLISH', ARGV[4], ARGV[1])\n"
                                     "return 1\n";

store_t *store_new(const char *host, uint16_t port, uint32_t timeout_ms)
{
    store_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    snprintf(self->host, sizeof self->host, "%s", host);
    self->port = port;
    self->timeout.tv_sec = (time_t)(timeout_ms / 1000);
    self->timeout.tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000;
    return self;
}

void store_destroy(store_t **self)
{
    if (*self == NULL)
        return;
    if ((*self)->redis != NULL)
        redisFree((*self)->redis);
    free(*self);
    *self = NULL;
}

/* Notes that Redis failed ('what': why), logging only the first failure
 * of a series (at warn) so that an outage does not flood the log. */
static void store_failed(store_t *self, const char *what)
{
    if (!self->down)
        log_warn("store: Redis %s:%u: %s", self->host, (unsigned)self->port, what);
    else
        log_debug("store: Redis %s:%u: %s", self->host, (unsigned)self->port, what);
    self->down = true;
}

/* Connects when not connected. False when Redis is unreachable. */
static bool store_connect(store_t *self)
{
    if (self->redis != NULL)
        return true;
    redisContext *c = redisConnectWithTimeout(self->host, self->port, self->timeout);
    if (c == NULL || c->err != 0) {
        store_failed(self, c != NULL ? c->errstr : "out of memory");
        if (c != NULL)
            redisFree(c);
        return false;
    }
    if (redisSetTimeout(c, self->timeout) != REDIS_OK) {
        store_failed(self, "cannot set the command timeout");
        redisFree(c);
        return false;
    }
    self->redis = c;
    return true;
}

/* Runs one command ('format' as redisCommand). Returns the reply (free
 * with freeReplyObject), or NULL when Redis is unreachable or answered an
 * error. After a connection error the connection is dropped (a timed-out
 * hiredis context is unusable). A connection that was already open and
 * turns out closed (Redis restarted since) is stale, not a sign of an
 * outage: the command is sent once more on a new connection (never after
 * a timeout, which would double the wait). Every command here may run
 * twice: reads, and the delivery script, idempotent by its event id. */
static redisReply *store_command(store_t *self, const char *format, ...)
{
    redisReply *reply = NULL;
    for (int attempt = 0; attempt < 2 && reply == NULL; attempt++) {
        bool reused = self->redis != NULL;
        if (!store_connect(self))
            return NULL;
        va_list args;
        va_start(args, format);
        reply = redisvCommand(self->redis, format, args);
        int error = errno;
        va_end(args);
        if (reply == NULL) {
            int kind = self->redis->err;
            bool stale = reused && attempt == 0 &&
                         (kind == REDIS_ERR_EOF ||
                          (kind == REDIS_ERR_IO && (error == ECONNRESET || error == EPIPE)));
            if (stale)
                log_info("store: Redis %s:%u closed our connection (%s); reconnecting", self->host,
                         (unsigned)self->port, self->redis->errstr);
            else
                store_failed(self, self->redis->errstr[0] ? self->redis->errstr : "no reply");
            redisFree(self->redis);
            self->redis = NULL;
            if (!stale)
                return NULL;
        }
    }
    if (reply == NULL)
        return NULL;
    if (reply->type == REDIS_REPLY_ERROR) {
        store_failed(self, reply->str);
        freeReplyObject(reply);
        return NULL;
    }
    if (self->down)
        log_info("store: Redis %s:%u answers again", self->host, (unsigned)self->port);
    self->down = false;
    return reply;
}

bool store_ping(store_t *self)
{
    redisReply *reply = store_command(self, "PING");
    bool ok = reply != NULL && reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "PONG") == 0;
    if (reply != NULL)
        freeReplyObject(reply);
    return ok;
}

/* The keys of notification 'id' for 'user_id'. False when they do not
 * fit (render.c checks lengths, so this is a bug: logged). */
typedef struct {
    char seen[store_key_bytes_max], list[store_key_bytes_max], channel[store_key_bytes_max];
} deliver_keys_t;

static bool deliver_keys(const char *id, const char *user_id, deliver_keys_t *k)
{
    int a = snprintf(k->seen, sizeof k->seen, "notification:seen:%s", id);
    int b = snprintf(k->list, sizeof k->list, "notifications:user:%s:latest", user_id);
    int c = snprintf(k->channel, sizeof k->channel, "notifications:user:%s", user_id);
    if (a < 0 || b < 0 || c < 0 || (size_t)a >= sizeof k->seen || (size_t)b >= sizeof k->list ||
        (size_t)c >= sizeof k->channel) {
        log_error("store: key for %s does not fit", id);
        return false;
    }
    return true;
}

/* The delivery script's answer 'reply' (freed here) as a result. */
static store_result_t deliver_result(redisReply *reply)
{
    store_result_t result = STORE_UNAVAILABLE;
    if (reply->type == REDIS_REPLY_INTEGER)
        result = reply->integer == 1 ? STORE_OK : STORE_DUPLICATE;
    else
        log_error("store: the delivery script answered type %d", reply->type);
    freeReplyObject(reply);
    return result;
}

/* The delivery script's command, as a printf format for hiredis: keys
 * seen and list, then the JSON, the expiry, the list length and the
 * channel. */
#define DELIVER_COMMAND "EVAL %s 2 %s %s %s %d %d %s"

store_result_t store_deliver(store_t *self, const char *id, const char *user_id, const char *json)
{
    deliver_keys_t k;
    if (!deliver_keys(id, user_id, &k))
        return STORE_UNAVAILABLE;
    redisReply *reply = store_command(self, DELIVER_COMMAND, deliver_script, k.seen, k.list, json,
                                      (int)store_seen_ttl_s, (int)store_latest_max, k.channel);
    if (reply == NULL)
        return STORE_UNAVAILABLE;
    return deliver_result(reply);
}

void store_deliver_many(store_t *self, const store_delivery_t *deliveries, size_t count,
                        store_result_t *results)
{
    bool *sent = calloc(count > 0 ? count : 1, sizeof *sent);
    for (size_t i = 0; i < count; i++)
        results[i] = STORE_UNAVAILABLE;
    if (sent == NULL || !store_connect(self)) {
        free(sent);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        deliver_keys_t k;
        if (!deliver_keys(deliveries[i].id, deliveries[i].user_id, &k))
            continue;
        if (redisAppendCommand(self->redis, DELIVER_COMMAND, deliver_script, k.seen, k.list,
                               deliveries[i].json, (int)store_seen_ttl_s, (int)store_latest_max,
                               k.channel) != REDIS_OK)
            break; /* out of memory: the rest are not sent */
        sent[i] = true;
    }
    bool answered = true;
    for (size_t i = 0; i < count; i++) {
        if (!sent[i])
            continue;
        redisReply *reply = NULL;
        if (redisGetReply(self->redis, (void **)&reply) != REDIS_OK || reply == NULL) {
            /* the connection is unusable now: the next command reconnects */
            store_failed(self, self->redis->errstr[0] ? self->redis->errstr : "no reply");
            redisFree(self->redis);
            self->redis = NULL;
            answered = false;
            break;
        }
        if (reply->type == REDIS_REPLY_ERROR) {
            store_failed(self, reply->str);
            freeReplyObject(reply);
            answered = false;
            continue;
        }
        results[i] = deliver_result(reply);
    }
    if (answered && self->down)
        log_info("store: Redis %s:%u answers again", self->host, (unsigned)self->port);
    if (answered)
        self->down = false;
    free(sent);
}

store_result_t store_latest(store_t *self, const char *user_id, int limit, store_each_fn each,
                            void *state)
{
    char list[store_key_bytes_max];
    int n = snprintf(list, sizeof list, "notifications:user:%s:latest", user_id);
    if (n < 0 || (size_t)n >= sizeof list || limit < 1 || limit > store_latest_max)
        return STORE_UNAVAILABLE;
    redisReply *reply = store_command(self, "LRANGE %s 0 %d", list, limit - 1);
    if (reply == NULL)
        return STORE_UNAVAILABLE;
    if (reply->type != REDIS_REPLY_ARRAY) {
        log_error("store: LRANGE %s answered type %d", list, reply->type);
        freeReplyObject(reply);
        return STORE_UNAVAILABLE;
    }
    for (size_t i = 0; i < reply->elements && i < (size_t)limit; i++) {
        const redisReply *item = reply->element[i];
        if (item->type == REDIS_REPLY_STRING)
            each(item->str, item->len, state);
    }
    freeReplyObject(reply);
    return STORE_OK;
}
