/*
 * stream_redis: Redis Streams as a stream_system_t (see stream_system.h),
 * through hiredis, the way a Redis application does it:
 *
 *   publisher   one connection per publisher, one command at a time:
 *                 XADD <stream> * id <event id> p <payload>
 *               The reply is the durable acknowledgement: the server runs
 *               with appendonly yes / appendfsync always, so it writes and
 *               fsyncs the append-only file before it sends the replies of
 *               an event-loop iteration (all the clients served in that
 *               iteration share the fsync: Redis's group commit).
 *   consumer    one connection:
 *                 XGROUP CREATE <stream> <group> 0 MKSTREAM   (once)
 *                 XREADGROUP GROUP <group> <consumer> COUNT <max in flight>
 *                            BLOCK 100 STREAMS <stream> >
 *               then the callback for each entry and one XACK per entry,
 *               sent together (pipelined) and their replies read after:
 *               like the ACKs of lib/events, which are sent without
 *               waiting for an answer. At most COUNT events are
 *               unacknowledged at once, as with max_in_flight.
 *
 * The event id goes into the entry (field "id") so that Redis stores as
 * much per event as our bus, which keeps the id for deduplication.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "stream_system.h"

enum {
    redis_connect_timeout_ms = 2000,
    redis_block_ms = 100, /* XREADGROUP waits at most this long */
    redis_count_max = 65536,
};

typedef struct {
    stream_system_t base; /* first: a stream_system_t * is a redis_system_t * */
    uint16_t port;
} redis_system_t;

struct stream_publisher {
    redisContext *redis;
    char stream[stream_name_bytes_max + 1];
};

struct stream_consumer {
    redisContext *redis;
    char stream[stream_name_bytes_max + 1];
    char group[stream_name_bytes_max + 1];
    char name[stream_name_bytes_max + 16];
    unsigned count; /* XREADGROUP COUNT: the most events unacknowledged */
    stream_event_fn on_event;
    void *state;
    atomic_int stopping;
};

/* A connection to the server, with every reply waited for at most the
 * publish deadline. NULL after saying why. */
static redisContext *redis_connect(const redis_system_t *self)
{
    struct timeval connect_timeout = {.tv_sec = redis_connect_timeout_ms / 1000,
                                      .tv_usec = (redis_connect_timeout_ms % 1000) * 1000};
    redisContext *redis = redisConnectWithTimeout("127.0.0.1", self->port, connect_timeout);
    if (redis == NULL || redis->err) {
        fprintf(stderr, "bench: redis: cannot connect to 127.0.0.1:%u: %s\n", self->port,
                redis != NULL ? redis->errstr : "out of memory");
        if (redis != NULL)
            redisFree(redis);
        return NULL;
    }
    struct timeval reply_timeout = {.tv_sec = stream_publish_deadline_ms / 1000,
                                    .tv_usec = (stream_publish_deadline_ms % 1000) * 1000};
    redisSetTimeout(redis, reply_timeout);
    return redis;
}

/* True when the server answers PING within 500 ms; quiet when it does
 * not (the server may still be starting). */
static bool redis_ready(stream_system_t *base)
{
    redis_system_t *self = (redis_system_t *)base;
    struct timeval timeout = {.tv_sec = 0, .tv_usec = 500 * 1000};
    redisContext *redis = redisConnectWithTimeout("127.0.0.1", self->port, timeout);
    if (redis == NULL)
        return false;
    bool ready = false;
    if (!redis->err) {
        redisSetTimeout(redis, timeout);
        redisReply *reply = redisCommand(redis, "PING");
        ready =
            reply != NULL && reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "PONG") == 0;
        if (reply != NULL)
            freeReplyObject(reply);
    }
    redisFree(redis);
    return ready;
}

static stream_publisher_t *redis_publisher_new(stream_system_t *base, const char *stream)
{
    redis_system_t *self = (redis_system_t *)base;
    stream_publisher_t *publisher = calloc(1, sizeof *publisher);
    if (publisher == NULL)
        return NULL;
    snprintf(publisher->stream, sizeof publisher->stream, "%s", stream);
    publisher->redis = redis_connect(self);
    if (publisher->redis == NULL) {
        free(publisher);
        return NULL;
    }
    return publisher;
}

static int redis_publish(stream_publisher_t *publisher, const char *event_id, const void *payload,
                         size_t payload_len, char error[stream_error_bytes_max])
{
    if (publisher->redis->err && redisReconnect(publisher->redis) != REDIS_OK) {
        snprintf(error, stream_error_bytes_max, "reconnect failed: %s", publisher->redis->errstr);
        return -1;
    }
    redisReply *reply = redisCommand(publisher->redis, "XADD %s * id %s p %b", publisher->stream,
                                     event_id, payload, payload_len);
    if (reply == NULL) {
        snprintf(error, stream_error_bytes_max, "XADD: %s", publisher->redis->errstr);
        return -1;
    }
    int rc = 0;
    if (reply->type != REDIS_REPLY_STRING) {
        snprintf(error, stream_error_bytes_max, "XADD answered %s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "not an entry id");
        rc = -1;
    }
    freeReplyObject(reply);
    return rc;
}

static void redis_publisher_destroy(stream_publisher_t **publisher)
{
    if (*publisher == NULL)
        return;
    redisFree((*publisher)->redis);
    free(*publisher);
    *publisher = NULL;
}

static stream_consumer_t *redis_consumer_new(stream_system_t *base, const char *stream,
                                             const char *group, unsigned max_in_flight,
                                             stream_event_fn on_event, void *state)
{
    redis_system_t *self = (redis_system_t *)base;
    if (max_in_flight < 1 || max_in_flight > redis_count_max)
        return NULL;
    stream_consumer_t *consumer = calloc(1, sizeof *consumer);
    if (consumer == NULL)
        return NULL;
    snprintf(consumer->stream, sizeof consumer->stream, "%s", stream);
    snprintf(consumer->group, sizeof consumer->group, "%s", group);
    snprintf(consumer->name, sizeof consumer->name, "%s-consumer", stream);
    consumer->count = max_in_flight;
    consumer->on_event = on_event;
    consumer->state = state;
    consumer->redis = redis_connect(self);
    if (consumer->redis == NULL) {
        free(consumer);
        return NULL;
    }
    /* The group, at the start of the stream (created here if need be). */
    redisReply *reply = redisCommand(consumer->redis, "XGROUP CREATE %s %s 0 MKSTREAM",
                                     consumer->stream, consumer->group);
    bool created = reply != NULL && reply->type == REDIS_REPLY_STATUS;
    if (!created)
        fprintf(stderr, "bench: redis: XGROUP CREATE %s %s failed: %s\n", stream, group,
                reply == NULL                      ? consumer->redis->errstr
                : reply->type == REDIS_REPLY_ERROR ? reply->str
                                                   : "unexpected reply");
    if (reply != NULL)
        freeReplyObject(reply);
    if (!created) {
        redisFree(consumer->redis);
        free(consumer);
        return NULL;
    }
    return consumer;
}

/* The value of field 'name' in the [field, value, ...] array 'fields',
 * or NULL. */
static const redisReply *redis_field(const redisReply *fields, const char *name)
{
    if (fields == NULL || fields->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *key = fields->element[i];
        if (key->type == REDIS_REPLY_STRING && strcmp(key->str, name) == 0 &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING)
            return fields->element[i + 1];
    }
    return NULL;
}

/* Hands the entries of one XREADGROUP 'reply' to the callback and sends
 * an XACK for each one it accepts. Returns the number of XACKs sent, or
 * -1 after saying why when the reply is not a stream read. */
static long redis_consume_batch(stream_consumer_t *consumer, const redisReply *reply)
{
    /* [[stream, [[id, [field, value, ...]], ...]]] */
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 1 ||
        reply->element[0]->type != REDIS_REPLY_ARRAY || reply->element[0]->elements != 2 ||
        reply->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        fprintf(stderr, "bench: redis: XREADGROUP answered %s\n",
                reply->type == REDIS_REPLY_ERROR ? reply->str : "something unexpected");
        return -1;
    }
    const redisReply *entries = reply->element[0]->element[1];
    long acks = 0;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *entry = entries->element[i];
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
            entry->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const redisReply *payload = redis_field(entry->element[1], "p");
        bool handled =
            payload != NULL
                ? consumer->on_event((const uint8_t *)payload->str, payload->len, consumer->state)
                : consumer->on_event((const uint8_t *)"", 0, consumer->state);
        if (!handled)
            continue;
        redisAppendCommand(consumer->redis, "XACK %s %s %s", consumer->stream, consumer->group,
                           entry->element[0]->str);
        acks++;
    }
    return acks;
}

static int redis_consumer_run(stream_consumer_t *consumer)
{
    while (!atomic_load(&consumer->stopping)) {
        redisReply *reply =
            redisCommand(consumer->redis, "XREADGROUP GROUP %s %s COUNT %u BLOCK %d STREAMS %s >",
                         consumer->group, consumer->name, consumer->count, (int)redis_block_ms,
                         consumer->stream);
        if (reply == NULL) {
            fprintf(stderr, "bench: redis: XREADGROUP failed: %s\n", consumer->redis->errstr);
            return -1;
        }
        long acks = reply->type == REDIS_REPLY_NIL ? 0 : redis_consume_batch(consumer, reply);
        freeReplyObject(reply);
        if (acks < 0)
            return -1;
        for (long i = 0; i < acks; i++) {
            void *ack = NULL;
            if (redisGetReply(consumer->redis, &ack) != REDIS_OK) {
                fprintf(stderr, "bench: redis: XACK failed: %s\n", consumer->redis->errstr);
                return -1;
            }
            redisReply *ack_reply = ack;
            bool acked = ack_reply->type == REDIS_REPLY_INTEGER && ack_reply->integer == 1;
            freeReplyObject(ack_reply);
            if (!acked) {
                fprintf(stderr, "bench: redis: XACK did not acknowledge an entry\n");
                return -1;
            }
        }
    }
    return 0;
}

static void redis_consumer_stop(stream_consumer_t *consumer)
{
    atomic_store(&consumer->stopping, 1);
}

static void redis_consumer_destroy(stream_consumer_t **consumer)
{
    if (*consumer == NULL)
        return;
    redisFree((*consumer)->redis);
    free(*consumer);
    *consumer = NULL;
}

static void redis_stream_drop(stream_system_t *base, const char *stream)
{
    redisContext *redis = redis_connect((redis_system_t *)base);
    if (redis == NULL)
        return;
    redisReply *reply = redisCommand(redis, "DEL %s", stream);
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER)
        fprintf(stderr, "bench: redis: DEL %s failed\n", stream);
    if (reply != NULL)
        freeReplyObject(reply);
    redisFree(redis);
}

static void redis_destroy(stream_system_t **base)
{
    if (*base == NULL)
        return;
    free((redis_system_t *)*base);
    *base = NULL;
}

stream_system_t *stream_redis_new(uint16_t port)
{
    redis_system_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->base = (stream_system_t){
        .name = "redis",
        .ready = redis_ready,
        .publisher_new = redis_publisher_new,
        .publish = redis_publish,
        .publisher_destroy = redis_publisher_destroy,
        .consumer_new = redis_consumer_new,
        .consumer_run = redis_consumer_run,
        .consumer_stop = redis_consumer_stop,
        .consumer_destroy = redis_consumer_destroy,
        .stream_drop = redis_stream_drop,
        .destroy = redis_destroy,
    };
    self->port = port;
    return &self->base;
}
