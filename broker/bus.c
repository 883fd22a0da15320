/*
 * bus: topics, consumer groups and delivery. See bus.h for the guarantees
 * and broker/README.md for the protocol.
 *
 * Layout on disk, under data_dir:
 *
 *   LOCK                       flock'ed while a broker uses the directory
 *   <topic>/                   one event log (eventlog.h): segment files
 *   <topic>/groups/<group>     the group's committed offset, decimal text,
 *                              replaced atomically (write, fsync, rename)
 *
 * A group's window, in memory:
 *
 *   committed                                   committed + len
 *   v                                           v
 *   [ ACKED? | IN_FLIGHT | WAITING | ... ]      <- filled from the log up to
 *     slot 0 (head of the ring)                    the topic's durable end
 *
 * Slots leave the head only when acknowledged, so 'committed' is always
 * the first unacknowledged offset. A WAITING slot is delivered when a
 * consumer has capacity and no earlier unacknowledged slot has its key.
 */
#include "bus.h"

#include <assert.h>
#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "arena/arena.h"
#include "eventlog.h"
#include "list/list.h"
#include "log/log.h"
#include "wire/wire.h"

enum {
    topic_name_bytes_max = 64, /* 48 for clients, plus ".dlq" */
    housekeeping_interval_ms = 50,
    offsets_flush_interval_ms = 200,
    retention_interval_ms = 60000,
    data_dir_bytes_max = 1024,
    path_bytes_max = 2048,
};

typedef enum { SLOT_WAITING = 0, SLOT_IN_FLIGHT, SLOT_ACKED } slot_state_t;

typedef struct consumer consumer_t;
typedef struct topic topic_t;

typedef struct {
    uint64_t offset;
    eventlog_position_t position;
    uint64_t key_hash; /* 0: no key */
    slot_state_t state;
    uint32_t deliveries;
    int64_t not_before; /* WAITING: not delivered before (after a NACK) */
    consumer_t *consumer;
    int64_t deadline_at;
} slot_t;

typedef struct {
    char name[wire_topic_bytes_max + 1];
    topic_t *topic;
    uint64_t committed;
    uint64_t persisted; /* what the offset file says */
    slot_t *window;     /* ring of group_window slots */
    uint32_t head;
    uint32_t len;
    eventlog_position_t read_position; /* of offset committed + len */
    bool read_position_valid;
    list_node_t consumers;
    list_node_t topic_link;
    uint32_t in_flight;
    uint32_t consumer_count;
    uint64_t redelivered;
    uint64_t dead_lettered;
    bool stalled_logged;
} group_t;

/* A peer socket that subscribed (possibly to several groups). */
typedef struct {
    uint8_t identity[wire_identity_bytes_max];
    size_t identity_len;
    char key[2 * wire_identity_bytes_max + 1];
    uint32_t heartbeat_interval_ms;
    int64_t last_seen_at;
    int64_t last_sent_at;
    list_node_t subscriptions; /* consumer_t.peer_link */
    list_node_t all_link;
} peer_t;

struct consumer {
    peer_t *peer;
    group_t *group;
    char consumer_id[wire_instance_bytes_max + 1];
    uint32_t max_in_flight;
    uint32_t in_flight;
    list_node_t group_link;
    list_node_t peer_link;
};

struct topic {
    char name[topic_name_bytes_max + 1];
    eventlog_t *log;
    uint64_t durable_end; /* records before it are fsynced */
    bool dirty;           /* appended since the last sync */
    bool sync_failed;
    list_node_t groups;
    uint32_t group_count;
    zhashx_t *recent;   /* event id -> offset + 1 */
    char **recent_ring; /* FIFO of the ids in 'recent' */
    uint32_t recent_next;
    uint64_t published;
    uint64_t duplicates;
    list_node_t all_link;
};

/* One topic's share of a sync batch. */
typedef struct {
    topic_t *topic;
    eventlog_sync_job_t job;
} sync_item_t;

typedef struct {
    uint8_t identity[wire_identity_bytes_max];
    size_t identity_len;
    uint64_t correlation;
    topic_t *topic;
    uint64_t offset;
    bool duplicate;
    bool failed;
} pending_ack_t;

struct bus {
    bus_config_t config;
    bus_sink_t sink;
    char data_dir[data_dir_bytes_max + 1];
    int lock_fd;
    list_node_t topics;
    uint32_t topic_count;
    list_node_t peers;
    uint32_t consumer_count;
    zhashx_t *peers_by_identity;
    pending_ack_t *acks;
    size_t ack_count;
    size_t ack_capacity;
    size_t acks_answered_last; /* publishes answered by the last flush that answered any */
    /* The sync thread: the loop hands it a batch of fsyncs (one item per
     * dirty topic) and goes on routing; the thread signals 'sync_event_fd'
     * when the batch is done. Fields under 'sync_mutex': sync_requested,
     * sync_done, sync_stop. The items belong to the thread while
     * 'sync_in_flight' and the batch is not done. */
    pthread_t sync_thread;
    bool sync_thread_started;
    pthread_mutex_t sync_mutex;
    pthread_cond_t sync_cond;
    bool sync_requested;
    bool sync_done;
    bool sync_stop;
    bool sync_in_flight; /* the loop's view: a batch was handed over and not yet applied */
    int sync_event_fd;
    sync_item_t *sync_items; /* topics_max + its dead-letter topics */
    size_t sync_count;
    int64_t next_housekeeping_at;
    int64_t next_offsets_flush_at;
    int64_t next_retention_at;
};

bus_config_t bus_config_default(void)
{
    bus_config_t c = {
        .data_dir = NULL,
        .segment_bytes_max = 64ull * 1024 * 1024,
        .retention_ms = 7ll * 24 * 3600 * 1000,
        .retention_bytes = 1024ull * 1024 * 1024,
        .ack_timeout_ms = 30000,
        .max_deliveries = 10,
        .nack_delay_ms = 1000,
        .dedup_window = 10000,
        .group_window = 256,
        .topics_max = 64,
        .groups_max = 64,
        .consumers_max = 1024,
        .heartbeat_interval_ms = 1000,
        .heartbeat_liveness = 3,
    };
    return c;
}

static int64_t wall_clock_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* FNV-1a of 'key'; 0 is reserved for "no key". */
static uint64_t key_hash(const char *key)
{
    if (key == NULL || key[0] == '\0')
        return 0;
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *c = (const unsigned char *)key; *c; c++) {
        h ^= *c;
        h *= 1099511628211ull;
    }
    return h == 0 ? 1 : h;
}

/* ---- group offsets on disk -------------------------------------------- */

static void group_offset_path(const bus_t *self, const group_t *g, char *out, size_t size)
{
    snprintf(out, size, "%s/%s/groups/%s", self->data_dir, g->topic->name, g->name);
}

/* Writes the committed offset of 'g' atomically. */
static bool group_persist(bus_t *self, group_t *g)
{
    if (g->persisted == g->committed)
        return true;
    char path[path_bytes_max], tmp[path_bytes_max + 8], dir[path_bytes_max];
    group_offset_path(self, g, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s/%s/groups/.%s.tmp", self->data_dir, g->topic->name, g->name);
    snprintf(dir, sizeof dir, "%s/%s/groups", self->data_dir, g->topic->name);
    mkdir(dir, 0755);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_error("bus: cannot write %s: %s", tmp, strerror(errno));
        return false;
    }
    char text[32];
    int n = snprintf(text, sizeof text, "%" PRIu64 "\n", g->committed);
    bool ok = write(fd, text, (size_t)n) == n && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) != 0) {
        log_error("bus: cannot persist the offset of %s/%s: %s", g->topic->name, g->name,
                  strerror(errno));
        return false;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    g->persisted = g->committed;
    return true;
}

/* Reads a group's committed offset; false when there is no valid file. */
static bool group_load_offset(const char *path, uint64_t *out)
{
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return false;
    unsigned long long value = 0;
    bool ok = fscanf(file, "%llu", &value) == 1;
    fclose(file);
    if (ok)
        *out = value;
    return ok;
}

/* ---- topics -------------------------------------------------------------- */

static topic_t *topic_find(bus_t *self, const char *name)
{
    for (list_node_t *n = self->topics.next; n != &self->topics; n = n->next) {
        topic_t *t = list_entry(n, topic_t, all_link);
        if (strcmp(t->name, name) == 0)
            return t;
    }
    return NULL;
}

static group_t *group_find(topic_t *t, const char *name)
{
    for (list_node_t *n = t->groups.next; n != &t->groups; n = n->next) {
        group_t *g = list_entry(n, group_t, topic_link);
        if (strcmp(g->name, name) == 0)
            return g;
    }
    return NULL;
}

/* Remembers 'event_id' -> 'offset' in the topic's dedup window. */
static void topic_remember(bus_t *self, topic_t *t, const char *event_id, uint64_t offset)
{
    if (self->config.dedup_window == 0)
        return;
    char **slot = &t->recent_ring[t->recent_next];
    if (*slot != NULL) {
        zhashx_delete(t->recent, *slot);
        free(*slot);
    }
    *slot = strdup(event_id);
    t->recent_next = (t->recent_next + 1) % self->config.dedup_window;
    zhashx_update(t->recent, event_id, (void *)(uintptr_t)(offset + 1));
}

/* Refills the dedup window from the newest records of the log. */
static void topic_load_recent(bus_t *self, topic_t *t)
{
    uint64_t end = eventlog_end_offset(t->log), start = eventlog_start_offset(t->log);
    if (end == start || self->config.dedup_window == 0)
        return;
    uint64_t from =
        end - start > self->config.dedup_window ? end - self->config.dedup_window : start;
    eventlog_position_t position;
    if (eventlog_seek(t->log, from, &position) != 0)
        return;
    eventlog_entry_t entry;
    memset(&entry, 0, sizeof entry);
    while (eventlog_read(t->log, position, &entry) == 1) {
        topic_remember(self, t, entry.event_id, entry.offset);
        position = entry.next_position;
        eventlog_entry_clear(&entry);
    }
    eventlog_entry_clear(&entry);
}

static void group_free(group_t *g)
{
    list_remove(&g->topic_link);
    free(g->window);
    free(g);
}

/* Opens (creating) topic 'name'. NULL at topics_max or on I/O errors. */
static topic_t *topic_open(bus_t *self, const char *name)
{
    topic_t *t = topic_find(self, name);
    if (t != NULL)
        return t;
    if (self->topic_count >= self->config.topics_max) {
        log_warn("bus: topic limit (%u) reached; refusing topic %s", self->config.topics_max, name);
        return NULL;
    }
    t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    snprintf(t->name, sizeof t->name, "%s", name);
    list_init(&t->groups);
    list_init(&t->all_link);
    char dir[path_bytes_max];
    snprintf(dir, sizeof dir, "%s/%s", self->data_dir, name);
    eventlog_config_t log_config = {.dir = dir,
                                    .segment_bytes_max = self->config.segment_bytes_max,
                                    .retention_ms = self->config.retention_ms,
                                    .retention_bytes = self->config.retention_bytes};
    t->log = eventlog_open(&log_config);
    t->recent = zhashx_new();
    t->recent_ring = calloc(self->config.dedup_window + 1, sizeof *t->recent_ring);
    if (t->log == NULL || t->recent == NULL || t->recent_ring == NULL) {
        eventlog_close(&t->log);
        zhashx_destroy(&t->recent);
        free(t->recent_ring);
        free(t);
        return NULL;
    }
    t->durable_end = eventlog_end_offset(t->log);
    topic_load_recent(self, t);
    list_push_back(&self->topics, &t->all_link);
    self->topic_count++;
    return t;
}

static void topic_close(bus_t *self, topic_t *t)
{
    while (!list_empty(&t->groups)) {
        group_t *g = list_entry(list_front(&t->groups), group_t, topic_link);
        group_persist(self, g);
        group_free(g);
    }
    for (uint32_t i = 0; i < self->config.dedup_window; i++)
        free(t->recent_ring[i]);
    free(t->recent_ring);
    zhashx_destroy(&t->recent);
    eventlog_close(&t->log);
    list_remove(&t->all_link);
    free(t);
}

/* The group 'name' of 't', created at 'start' when missing. */
static group_t *group_open(bus_t *self, topic_t *t, const char *name, uint64_t start)
{
    group_t *g = group_find(t, name);
    if (g != NULL)
        return g;
    if (t->group_count >= self->config.groups_max)
        return NULL;
    g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->window = calloc(self->config.group_window, sizeof *g->window);
    if (g->window == NULL) {
        free(g);
        return NULL;
    }
    snprintf(g->name, sizeof g->name, "%s", name);
    g->topic = t;
    list_init(&g->consumers);
    list_init(&g->topic_link);
    char path[path_bytes_max];
    group_offset_path(self, g, path, sizeof path);
    uint64_t committed = start;
    bool known = group_load_offset(path, &committed);
    uint64_t log_start = eventlog_start_offset(t->log), log_end = eventlog_end_offset(t->log);
    if (committed < log_start) {
        log_warn("bus: group %s/%s was at offset %" PRIu64 ", before the oldest retained %" PRIu64
                 "; resuming there",
                 t->name, name, committed, log_start);
        committed = log_start;
    }
    if (committed > log_end)
        committed = log_end;
    g->committed = committed;
    g->persisted = known ? committed : UINT64_MAX;
    list_push_back(&t->groups, &g->topic_link);
    t->group_count++;
    group_persist(self, g);
    return g;
}

/* Opens every topic (and its groups) found in the data directory. */
static bool bus_load(bus_t *self)
{
    DIR *dir = opendir(self->data_dir);
    if (dir == NULL)
        return false;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.' || !wire_token_valid(entry->d_name, topic_name_bytes_max))
            continue;
        char path[path_bytes_max];
        snprintf(path, sizeof path, "%s/%s", self->data_dir, entry->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        topic_t *t = topic_open(self, entry->d_name);
        if (t == NULL) {
            closedir(dir);
            return false;
        }
        char groups[path_bytes_max + 8];
        snprintf(groups, sizeof groups, "%s/groups", path);
        DIR *gdir = opendir(groups);
        if (gdir == NULL)
            continue;
        struct dirent *gentry;
        while ((gentry = readdir(gdir)) != NULL) {
            if (wire_topic_name_valid(gentry->d_name))
                group_open(self, t, gentry->d_name, eventlog_start_offset(t->log));
        }
        closedir(gdir);
        log_info("bus: topic %s: offsets %" PRIu64 "..%" PRIu64 ", %u groups", t->name,
                 eventlog_start_offset(t->log), eventlog_end_offset(t->log), t->group_count);
    }
    closedir(dir);
    return true;
}

/* ---- the sync thread ------------------------------------------------------ */

/* The sync thread's body: waits for a batch, runs its fsyncs (touching
 * only the jobs' own descriptors, never a topic or a log), marks it done
 * and wakes the loop through the eventfd. Ends on sync_stop. */
static void *bus_sync_main(void *arg)
{
    bus_t *self = arg;
    pthread_mutex_lock(&self->sync_mutex);
    for (;;) {
        while (!self->sync_requested && !self->sync_stop)
            pthread_cond_wait(&self->sync_cond, &self->sync_mutex);
        if (!self->sync_requested)
            break; /* stopping, and nothing was handed over */
        size_t count = self->sync_count;
        pthread_mutex_unlock(&self->sync_mutex);
        for (size_t i = 0; i < count; i++)
            eventlog_sync_run(&self->sync_items[i].job);
        pthread_mutex_lock(&self->sync_mutex);
        self->sync_requested = false;
        self->sync_done = true;
        uint64_t one = 1;
        if (write(self->sync_event_fd, &one, sizeof one) != (ssize_t)sizeof one)
            log_warn("bus: waking the loop after a sync: %s", strerror(errno));
    }
    pthread_mutex_unlock(&self->sync_mutex);
    return NULL;
}

/* Starts the sync thread. Returns false (after logging why) on failure. */
static bool bus_sync_start(bus_t *self)
{
    self->sync_items = calloc(self->config.topics_max, sizeof *self->sync_items);
    self->sync_event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->sync_items == NULL || self->sync_event_fd < 0) {
        log_error("bus: cannot set up the sync thread: %s", strerror(errno));
        return false;
    }
    pthread_mutex_init(&self->sync_mutex, NULL);
    pthread_cond_init(&self->sync_cond, NULL);
    int rc = pthread_create(&self->sync_thread, NULL, bus_sync_main, self);
    if (rc != 0) {
        log_error("bus: cannot start the sync thread: %s", strerror(rc));
        pthread_mutex_destroy(&self->sync_mutex);
        pthread_cond_destroy(&self->sync_cond);
        return false;
    }
    self->sync_thread_started = true;
    return true;
}

/* Stops and joins the sync thread after its current batch, if any. */
static void bus_sync_stop(bus_t *self)
{
    if (self->sync_thread_started) {
        pthread_mutex_lock(&self->sync_mutex);
        self->sync_stop = true;
        pthread_cond_signal(&self->sync_cond);
        pthread_mutex_unlock(&self->sync_mutex);
        pthread_join(self->sync_thread, NULL);
        pthread_mutex_destroy(&self->sync_mutex);
        pthread_cond_destroy(&self->sync_cond);
        self->sync_thread_started = false;
    }
    if (self->sync_event_fd >= 0)
        close(self->sync_event_fd);
    self->sync_event_fd = -1;
    free(self->sync_items);
    self->sync_items = NULL;
}

/* ---- life cycle ----------------------------------------------------------- */

bus_t *bus_new(const bus_config_t *config, const bus_sink_t *sink)
{
    bus_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    self->sink = *sink;
    self->lock_fd = -1;
    self->sync_event_fd = -1;
    list_init(&self->topics);
    list_init(&self->peers);
    self->peers_by_identity = zhashx_new();
    if (self->peers_by_identity == NULL) {
        free(self);
        return NULL;
    }
    if (config->data_dir == NULL || config->data_dir[0] == '\0')
        return self; /* disabled */
    if (strlen(config->data_dir) > data_dir_bytes_max) {
        log_error("bus: data directory path over %d bytes", data_dir_bytes_max);
        bus_destroy(&self);
        return NULL;
    }
    snprintf(self->data_dir, sizeof self->data_dir, "%s", config->data_dir);
    self->config.data_dir = self->data_dir;
    if (self->config.group_window == 0)
        self->config.group_window = 1;
    if (mkdir(self->data_dir, 0755) != 0 && errno != EEXIST) {
        log_error("bus: cannot create %s: %s", self->data_dir, strerror(errno));
        bus_destroy(&self);
        return NULL;
    }
    char lock_path[path_bytes_max];
    snprintf(lock_path, sizeof lock_path, "%s/LOCK", self->data_dir);
    self->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (self->lock_fd < 0 || flock(self->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        log_error("bus: %s is in use by another broker (or cannot be locked)", self->data_dir);
        bus_destroy(&self);
        return NULL;
    }
    if (!bus_load(self)) {
        log_error("bus: cannot open the topics in %s", self->data_dir);
        bus_destroy(&self);
        return NULL;
    }
    if (!bus_sync_start(self)) {
        bus_destroy(&self);
        return NULL;
    }
    log_info("bus: data in %s, %u topics", self->data_dir, self->topic_count);
    return self;
}

static void peer_free(bus_t *self, peer_t *p);

void bus_destroy(bus_t **self_p)
{
    bus_t *self = *self_p;
    if (self == NULL)
        return;
    bus_sync_stop(self); /* before any topic (whose logs its jobs came from) goes */
    while (!list_empty(&self->peers))
        peer_free(self, list_entry(list_front(&self->peers), peer_t, all_link));
    while (!list_empty(&self->topics))
        topic_close(self, list_entry(list_front(&self->topics), topic_t, all_link));
    zhashx_destroy(&self->peers_by_identity);
    free(self->acks);
    if (self->lock_fd >= 0)
        close(self->lock_fd);
    free(self);
    *self_p = NULL;
}

bool bus_enabled(const bus_t *self)
{
    return self->data_dir[0] != '\0';
}

/* ---- answering ------------------------------------------------------------- */

/* REPLY to 'identity' with 'code' (and no body). */
static void bus_reply_status(bus_t *self, const uint8_t *identity, size_t identity_len,
                             uint64_t correlation, Paygate__V1__Code code, const char *reason,
                             const char *message)
{
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = code;
    status.reason = (char *)reason;
    status.message = (char *)message;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__REPLY;
    header.correlation_id = correlation;
    header.status = &status;
    self->sink.send(self->sink.ctx, identity, identity_len, &header, NULL);
}

/* DISCONNECT to 'identity' with 'code' and 'message'. */
static void bus_disconnect(bus_t *self, const uint8_t *identity, size_t identity_len,
                           Paygate__V1__Code code, const char *message)
{
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = code;
    status.message = (char *)message;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__DISCONNECT;
    header.status = &status;
    self->sink.send(self->sink.ctx, identity, identity_len, &header, NULL);
}

/* ---- publishing -------------------------------------------------------------- */

static bool ack_push(bus_t *self, const pending_ack_t *ack)
{
    if (self->ack_count == self->ack_capacity) {
        size_t capacity = self->ack_capacity ? self->ack_capacity * 2 : 64;
        pending_ack_t *grown = realloc(self->acks, capacity * sizeof *grown);
        if (grown == NULL)
            return false;
        self->acks = grown;
        self->ack_capacity = capacity;
    }
    self->acks[self->ack_count++] = *ack;
    return true;
}

void bus_publish(bus_t *self, const uint8_t *identity, size_t identity_len,
                 const Paygate__V1__Header *header, zmq_msg_t *body, int64_t now)
{
    (void)now;
    const Paygate__V1__Event *event = header->event;
    if (!bus_enabled(self)) {
        bus_reply_status(self, identity, identity_len, header->correlation_id,
                         PAYGATE__V1__CODE__UNIMPLEMENTED, "bus_disabled",
                         "this broker has no event bus (PAYGATE_BROKER_DATA_DIR is not set)");
        return;
    }
    topic_t *t = topic_open(self, event->topic);
    if (t == NULL) {
        bus_reply_status(self, identity, identity_len, header->correlation_id,
                         PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "topic_limit",
                         "the broker cannot open another topic");
        return;
    }
    pending_ack_t ack = {
        .identity_len = identity_len, .correlation = header->correlation_id, .topic = t};
    memcpy(ack.identity, identity, identity_len);
    void *seen = zhashx_lookup(t->recent, event->event_id);
    if (seen != NULL) {
        ack.offset = (uint64_t)(uintptr_t)seen - 1;
        ack.duplicate = true;
        t->duplicates++;
    } else {
        const void *payload = body != NULL ? zmq_msg_data(body) : "";
        size_t payload_len = body != NULL ? zmq_msg_size(body) : 0;
        if (t->sync_failed ||
            eventlog_append(t->log, event->event_id, event->key ? event->key : "", payload,
                            payload_len, wall_clock_ms(), &ack.offset) != 0) {
            bus_reply_status(self, identity, identity_len, header->correlation_id,
                             PAYGATE__V1__CODE__UNAVAILABLE, "storage_error",
                             "the broker could not store the event");
            return;
        }
        t->dirty = true;
        t->published++;
        topic_remember(self, t, event->event_id, ack.offset);
    }
    if (!ack_push(self, &ack))
        bus_reply_status(self, identity, identity_len, header->correlation_id,
                         PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "broker_busy", "out of memory");
}

/* ---- consumers --------------------------------------------------------------- */

static peer_t *peer_find(const bus_t *self, const uint8_t *identity, size_t identity_len)
{
    char key[2 * wire_identity_bytes_max + 1];
    wire_identity_hex(identity, identity_len, key);
    return zhashx_lookup(self->peers_by_identity, key);
}

/* Sends to a consumer's peer; a failure means the peer is gone. */
static int peer_send(bus_t *self, peer_t *p, const Paygate__V1__Header *header, zmq_msg_t *body,
                     int64_t now)
{
    int rc = self->sink.send(self->sink.ctx, p->identity, p->identity_len, header, body);
    if (rc == 0)
        p->last_sent_at = now;
    return rc;
}

static void group_pump(bus_t *self, group_t *g, int64_t now);

/* The slot at window index 'i' (0 = committed) of 'g'. */
static slot_t *group_slot(const bus_t *self, const group_t *g, uint32_t i)
{
    return &g->window[(g->head + i) % self->config.group_window];
}

/* Puts the in-flight slots of 'c' back to WAITING. */
static void consumer_return_slots(bus_t *self, consumer_t *c)
{
    group_t *g = c->group;
    for (uint32_t i = 0; i < g->len; i++) {
        slot_t *s = group_slot(self, g, i);
        if (s->state == SLOT_IN_FLIGHT && s->consumer == c) {
            s->state = SLOT_WAITING;
            s->consumer = NULL;
            g->in_flight--;
            g->redelivered++;
        }
    }
    c->in_flight = 0;
}

static void consumer_free(bus_t *self, consumer_t *c)
{
    consumer_return_slots(self, c);
    list_remove(&c->group_link);
    list_remove(&c->peer_link);
    c->group->consumer_count--;
    self->consumer_count--;
    free(c);
}

static void peer_free(bus_t *self, peer_t *p)
{
    while (!list_empty(&p->subscriptions)) {
        consumer_t *c = list_entry(list_front(&p->subscriptions), consumer_t, peer_link);
        consumer_free(self, c);
    }
    zhashx_delete(self->peers_by_identity, p->key);
    list_remove(&p->all_link);
    free(p);
}

/* Removes peer 'p' and gives its events to the other consumers. */
static void peer_remove(bus_t *self, peer_t *p, const char *why, int64_t now)
{
    log_info("bus: consumer peer %s removed: %s", p->key, why);
    /* remember the groups to pump after the slots were returned */
    group_t *groups[16];
    size_t count = 0;
    for (list_node_t *n = p->subscriptions.next; n != &p->subscriptions; n = n->next) {
        consumer_t *c = list_entry(n, consumer_t, peer_link);
        if (count < 16)
            groups[count++] = c->group;
    }
    peer_free(self, p);
    for (size_t i = 0; i < count; i++)
        group_pump(self, groups[i], now);
}

void bus_subscribe(bus_t *self, const uint8_t *identity, size_t identity_len,
                   const Paygate__V1__Subscribe *sub, int64_t now)
{
    if (!bus_enabled(self)) {
        bus_disconnect(self, identity, identity_len, PAYGATE__V1__CODE__UNIMPLEMENTED,
                       "this broker has no event bus (PAYGATE_BROKER_DATA_DIR is not set)");
        return;
    }
    topic_t *t = topic_open(self, sub->topic);
    group_t *g = NULL;
    if (t != NULL)
        g = group_open(self, t, sub->group,
                       sub->start_at_end ? eventlog_end_offset(t->log)
                                         : eventlog_start_offset(t->log));
    peer_t *p = peer_find(self, identity, identity_len);
    if (g == NULL || (p == NULL && self->consumer_count >= self->config.consumers_max)) {
        bus_disconnect(self, identity, identity_len, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED,
                       "the broker's topic, group or consumer limit is reached");
        return;
    }
    if (p == NULL) {
        p = calloc(1, sizeof *p);
        if (p == NULL)
            return;
        memcpy(p->identity, identity, identity_len);
        p->identity_len = identity_len;
        wire_identity_hex(identity, identity_len, p->key);
        list_init(&p->subscriptions);
        list_init(&p->all_link);
        list_push_back(&self->peers, &p->all_link);
        zhashx_insert(self->peers_by_identity, p->key, p);
    }
    p->heartbeat_interval_ms = sub->heartbeat_interval_ms ? sub->heartbeat_interval_ms
                                                          : self->config.heartbeat_interval_ms;
    p->last_seen_at = now;
    p->last_sent_at = now;
    consumer_t *c = NULL;
    for (list_node_t *n = p->subscriptions.next; n != &p->subscriptions; n = n->next) {
        consumer_t *existing = list_entry(n, consumer_t, peer_link);
        if (existing->group == g)
            c = existing;
    }
    if (c == NULL) {
        c = calloc(1, sizeof *c);
        if (c == NULL)
            return;
        c->peer = p;
        c->group = g;
        list_init(&c->group_link);
        list_init(&c->peer_link);
        list_push_back(&g->consumers, &c->group_link);
        list_push_back(&p->subscriptions, &c->peer_link);
        g->consumer_count++;
        self->consumer_count++;
    }
    snprintf(c->consumer_id, sizeof c->consumer_id, "%s", sub->consumer_id);
    c->max_in_flight = sub->max_in_flight ? sub->max_in_flight : 1;
    log_info("bus: %s joined %s/%s at offset %" PRIu64 " (max in flight %u)", c->consumer_id,
             t->name, g->name, g->committed, c->max_in_flight);
    group_pump(self, g, now);
}

bool bus_peer_heartbeat(bus_t *self, const uint8_t *identity, size_t identity_len, int64_t now)
{
    peer_t *p = peer_find(self, identity, identity_len);
    if (p == NULL)
        return false;
    p->last_seen_at = now;
    return true;
}

bool bus_peer_disconnect(bus_t *self, const uint8_t *identity, size_t identity_len, int64_t now)
{
    peer_t *p = peer_find(self, identity, identity_len);
    if (p == NULL)
        return false;
    peer_remove(self, p, "disconnected", now);
    bus_disconnect(self, identity, identity_len, PAYGATE__V1__CODE__OK, "unsubscribed");
    return true;
}

/* ---- delivery ---------------------------------------------------------------- */

/* True when an unacknowledged slot before index 'i' has the key of 'i'. */
static bool slot_blocked(const bus_t *self, const group_t *g, uint32_t i)
{
    uint64_t hash = group_slot(self, g, i)->key_hash;
    if (hash == 0)
        return false;
    for (uint32_t k = 0; k < i; k++) {
        const slot_t *s = group_slot(self, g, k);
        if (s->key_hash == hash && s->state != SLOT_ACKED)
            return true;
    }
    return false;
}

/* The next consumer of 'g' with free capacity, round robin. */
static consumer_t *group_next_consumer(group_t *g)
{
    list_node_t *n = list_front(&g->consumers);
    size_t tried = 0;
    while (n != NULL && tried < g->consumer_count) {
        consumer_t *c = list_entry(n, consumer_t, group_link);
        /* rotate: the one we look at goes to the back */
        list_remove(n);
        list_push_back(&g->consumers, n);
        if (c->in_flight < c->max_in_flight)
            return c;
        n = list_front(&g->consumers);
        tried++;
    }
    return NULL;
}

/* Sends the event of slot 's' to 'c'. False when the peer is gone. */
static bool slot_deliver(bus_t *self, group_t *g, slot_t *s, consumer_t *c, int64_t now)
{
    eventlog_entry_t entry;
    memset(&entry, 0, sizeof entry);
    if (eventlog_read(g->topic->log, s->position, &entry) != 1 || entry.offset != s->offset) {
        eventlog_entry_clear(&entry);
        if (!g->stalled_logged)
            log_error("bus: %s offset %" PRIu64 " cannot be read back; group %s stalls there",
                      g->topic->name, s->offset, g->name);
        g->stalled_logged = true;
        return true;
    }
    Paygate__V1__Event event = PAYGATE__V1__EVENT__INIT;
    event.topic = g->topic->name;
    event.event_id = entry.event_id;
    event.key = entry.key;
    event.offset = entry.offset;
    event.timestamp_ms = entry.timestamp_ms;
    event.group = g->name;
    event.delivery_count = s->deliveries + 1;
    Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
    header.command = PAYGATE__V1__COMMAND__DELIVER;
    header.event = &event;
    zmq_msg_t body;
    zmq_msg_init_size(&body, entry.payload_len);
    if (entry.payload_len > 0)
        memcpy(zmq_msg_data(&body), entry.payload, entry.payload_len);
    int rc = peer_send(self, c->peer, &header, &body, now);
    zmq_msg_close(&body);
    eventlog_entry_clear(&entry);
    if (rc != 0)
        return false;
    s->state = SLOT_IN_FLIGHT;
    s->consumer = c;
    s->deliveries++;
    s->deadline_at = now + self->config.ack_timeout_ms;
    c->in_flight++;
    g->in_flight++;
    return true;
}

/* Moves the head of the window past acknowledged slots. */
static void group_advance(bus_t *self, group_t *g)
{
    while (g->len > 0 && group_slot(self, g, 0)->state == SLOT_ACKED) {
        g->head = (g->head + 1) % self->config.group_window;
        g->len--;
        g->committed++;
    }
}

/* Reads durable records into the window after its last slot. */
static void group_fill(bus_t *self, group_t *g)
{
    topic_t *t = g->topic;
    while (g->len < self->config.group_window && g->committed + g->len < t->durable_end) {
        uint64_t offset = g->committed + g->len;
        if (!g->read_position_valid) {
            if (eventlog_seek(t->log, offset, &g->read_position) != 0)
                return;
            g->read_position_valid = true;
        }
        /* The key and the next position only: the payload is read (and
         * its checksum checked) when the slot is delivered. */
        eventlog_peek_t entry;
        int rc = eventlog_peek(t->log, g->read_position, &entry);
        if (rc != 1 || entry.offset != offset) {
            if (!g->stalled_logged)
                log_error("bus: %s offset %" PRIu64 " cannot be read; group %s stalls there",
                          t->name, offset, g->name);
            g->stalled_logged = true;
            g->read_position_valid = false;
            return;
        }
        slot_t *s = group_slot(self, g, g->len);
        memset(s, 0, sizeof *s);
        s->offset = offset;
        s->position = entry.position;
        s->key_hash = key_hash(entry.key);
        s->state = SLOT_WAITING;
        g->read_position = entry.next_position;
        g->len++;
    }
}

/* Fills the window and delivers what can go now. */
static void group_pump(bus_t *self, group_t *g, int64_t now)
{
    group_advance(self, g);
    group_fill(self, g);
    for (uint32_t i = 0; i < g->len; i++) {
        slot_t *s = group_slot(self, g, i);
        if (s->state != SLOT_WAITING || s->not_before > now || slot_blocked(self, g, i))
            continue;
        consumer_t *c = group_next_consumer(g);
        if (c == NULL)
            return;
        if (!slot_deliver(self, g, s, c, now)) {
            peer_remove(self, c->peer, "unreachable", now);
            return; /* peer_remove pumped again */
        }
        if (s->state == SLOT_WAITING)
            return; /* unreadable (logged): the group stalls here, nothing after it goes */
    }
}

void bus_ack(bus_t *self, const uint8_t *identity, size_t identity_len,
             const Paygate__V1__Event *event, int64_t now)
{
    peer_t *p = peer_find(self, identity, identity_len);
    topic_t *t = bus_enabled(self) ? topic_find(self, event->topic) : NULL;
    group_t *g = t != NULL ? group_find(t, event->group) : NULL;
    if (p == NULL || g == NULL)
        return;
    p->last_seen_at = now;
    if (event->offset < g->committed || event->offset - g->committed >= g->len)
        return; /* stale: already acknowledged, or never delivered */
    slot_t *s = group_slot(self, g, (uint32_t)(event->offset - g->committed));
    if (s->state != SLOT_IN_FLIGHT || s->consumer == NULL || s->consumer->peer != p)
        return; /* not this peer's (it was redelivered elsewhere) */
    s->state = SLOT_ACKED;
    s->consumer->in_flight--;
    s->consumer = NULL;
    g->in_flight--;
    group_pump(self, g, now);
}

void bus_nack(bus_t *self, const uint8_t *identity, size_t identity_len,
              const Paygate__V1__Event *event, int64_t now)
{
    peer_t *p = peer_find(self, identity, identity_len);
    topic_t *t = bus_enabled(self) ? topic_find(self, event->topic) : NULL;
    group_t *g = t != NULL ? group_find(t, event->group) : NULL;
    if (p == NULL || g == NULL)
        return;
    p->last_seen_at = now;
    if (event->offset < g->committed || event->offset - g->committed >= g->len)
        return;
    slot_t *s = group_slot(self, g, (uint32_t)(event->offset - g->committed));
    if (s->state != SLOT_IN_FLIGHT || s->consumer == NULL || s->consumer->peer != p)
        return;
    s->state = SLOT_WAITING;
    s->consumer->in_flight--;
    s->consumer = NULL;
    g->in_flight--;
    if (s->deliveries > 0)
        s->deliveries--; /* a refusal is not a failed delivery */
    s->not_before = now + self->config.nack_delay_ms;
    g->redelivered++;
    group_pump(self, g, now);
}

/* Appends a dead event to "<topic>.dlq" and logs it. */
static void slot_dead_letter(bus_t *self, group_t *g, slot_t *s)
{
    char name[topic_name_bytes_max + 1];
    snprintf(name, sizeof name, "%.44s.dlq", g->topic->name);
    topic_t *dlq = topic_open(self, name);
    eventlog_entry_t entry;
    memset(&entry, 0, sizeof entry);
    if (dlq != NULL && eventlog_read(g->topic->log, s->position, &entry) == 1) {
        char event_id[eventlog_event_id_bytes_max + 1];
        snprintf(event_id, sizeof event_id, "%s:%" PRIu64, g->name, s->offset);
        uint64_t offset = 0;
        if (eventlog_append(dlq->log, event_id, entry.key, entry.payload, entry.payload_len,
                            wall_clock_ms(), &offset) == 0) {
            dlq->dirty = true;
            dlq->published++;
        }
        log_warn("bus: %s offset %" PRIu64 " (event %s) dead-lettered by group %s after %u "
                 "deliveries",
                 g->topic->name, s->offset, entry.event_id, g->name, s->deliveries);
    } else {
        log_error("bus: %s offset %" PRIu64 " could not be dead-lettered", g->topic->name,
                  s->offset);
    }
    eventlog_entry_clear(&entry);
    g->dead_lettered++;
}

/* Redelivers (or dead-letters) the events whose ack deadline passed. */
static void group_timers(bus_t *self, group_t *g, int64_t now)
{
    bool changed = false;
    for (uint32_t i = 0; i < g->len; i++) {
        slot_t *s = group_slot(self, g, i);
        if (s->state == SLOT_WAITING && s->not_before != 0 && s->not_before <= now) {
            s->not_before = 0; /* its NACK delay is over */
            changed = true;
            continue;
        }
        if (s->state != SLOT_IN_FLIGHT || s->deadline_at > now)
            continue;
        s->consumer->in_flight--;
        s->consumer = NULL;
        g->in_flight--;
        changed = true;
        if (s->deliveries >= self->config.max_deliveries) {
            slot_dead_letter(self, g, s);
            s->state = SLOT_ACKED;
        } else {
            s->state = SLOT_WAITING;
            g->redelivered++;
        }
    }
    if (changed)
        group_pump(self, g, now);
}

/* Applies the sync thread's finished batch, if there is one: the synced
 * records become durable (or their topics fail). Returns true when a
 * batch was applied. */
static bool bus_sync_collect(bus_t *self)
{
    if (!self->sync_in_flight)
        return false;
    pthread_mutex_lock(&self->sync_mutex);
    bool done = self->sync_done;
    self->sync_done = false;
    pthread_mutex_unlock(&self->sync_mutex);
    if (!done)
        return false;
    uint64_t count;
    if (read(self->sync_event_fd, &count, sizeof count) < 0 && errno != EAGAIN)
        log_warn("bus: reading the sync eventfd: %s", strerror(errno));
    for (size_t i = 0; i < self->sync_count; i++) {
        topic_t *t = self->sync_items[i].topic;
        if (eventlog_sync_end(t->log, &self->sync_items[i].job) != 0) {
            log_error("bus: fsync of topic %s failed; refusing its publishes", t->name);
            t->sync_failed = true;
            continue;
        }
        t->durable_end = eventlog_durable_end_offset(t->log);
    }
    self->sync_count = 0;
    self->sync_in_flight = false;
    return true;
}

/* Hands every topic appended to since the last batch to the sync thread,
 * unless a batch is still running (its successor then waits for it, and
 * gathers everything appended meanwhile: group commit). */
static void bus_sync_dispatch(bus_t *self)
{
    if (self->sync_in_flight)
        return;
    size_t count = 0;
    for (list_node_t *n = self->topics.next; n != &self->topics; n = n->next) {
        topic_t *t = list_entry(n, topic_t, all_link);
        if (!t->dirty)
            continue;
        t->dirty = false;
        assert(count < self->config.topics_max);
        sync_item_t *item = &self->sync_items[count];
        item->topic = t;
        if (eventlog_sync_begin(t->log, &item->job) != 0) {
            log_error("bus: cannot sync topic %s; refusing its publishes", t->name);
            t->sync_failed = true;
            continue;
        }
        count++;
    }
    if (count == 0)
        return;
    pthread_mutex_lock(&self->sync_mutex);
    self->sync_count = count;
    self->sync_requested = true;
    pthread_cond_signal(&self->sync_cond);
    pthread_mutex_unlock(&self->sync_mutex);
    self->sync_in_flight = true;
}

/* Syncs every topic appended to since the last sync here, on the loop's
 * own thread (waiting for the disk), when the sync thread holds no batch.
 * Returns true when a topic was synced (or failed): then new records may
 * be durable. */
static bool bus_sync_inline(bus_t *self)
{
    assert(!self->sync_in_flight); /* a job of these logs may be running */
    bool synced = false;
    for (list_node_t *n = self->topics.next; n != &self->topics; n = n->next) {
        topic_t *t = list_entry(n, topic_t, all_link);
        if (!t->dirty)
            continue;
        t->dirty = false;
        synced = true;
        if (eventlog_sync(t->log) != 0) {
            log_error("bus: fsync of topic %s failed; refusing its publishes", t->name);
            t->sync_failed = true;
            continue;
        }
        t->durable_end = eventlog_durable_end_offset(t->log);
    }
    return synced;
}

/* Answers the publishes whose events are durable now (or can never be),
 * keeping the others, in order, for a later batch. */
static void bus_answer_publishes(bus_t *self)
{
    size_t kept = 0;
    for (size_t i = 0; i < self->ack_count; i++) {
        pending_ack_t *a = &self->acks[i];
        if (a->topic->sync_failed) {
            bus_reply_status(self, a->identity, a->identity_len, a->correlation,
                             PAYGATE__V1__CODE__UNAVAILABLE, "storage_error",
                             "the broker could not store the event durably");
            continue;
        }
        if (a->offset >= a->topic->durable_end) {
            self->acks[kept++] = *a; /* not durable yet: its sync is pending */
            continue;
        }
        Paygate__V1__PublishAck body_msg = PAYGATE__V1__PUBLISH_ACK__INIT;
        body_msg.offset = a->offset;
        body_msg.duplicate = a->duplicate;
        zmq_msg_t body;
        zmq_msg_init_size(&body, paygate__v1__publish_ack__get_packed_size(&body_msg));
        paygate__v1__publish_ack__pack(&body_msg, zmq_msg_data(&body));
        Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
        header.command = PAYGATE__V1__COMMAND__REPLY;
        header.correlation_id = a->correlation;
        self->sink.send(self->sink.ctx, a->identity, a->identity_len, &header, &body);
        zmq_msg_close(&body);
    }
    if (kept < self->ack_count)
        self->acks_answered_last = self->ack_count - kept;
    self->ack_count = kept;
}

int bus_sync_fd(const bus_t *self)
{
    return self->sync_event_fd;
}

void bus_flush(bus_t *self, bool input_waiting, int64_t now)
{
    if (!bus_enabled(self))
        return;
    bool synced = bus_sync_collect(self);
    /* Adaptive: with the sync thread idle and nothing else to route, the
     * loop fsyncs itself (no wake-up of the thread, none of the loop when
     * it is done); with input waiting, the thread does it and the loop
     * goes on routing. */
    if (!self->sync_in_flight && !input_waiting) {
        if (bus_sync_inline(self))
            synced = true;
    } else {
        bus_sync_dispatch(self);
    }
    /* A duplicate of a durable event is answered at once. */
    if (self->ack_count > 0)
        bus_answer_publishes(self);
    if (!synced)
        return; /* nothing new is durable: nothing more to deliver */
    for (list_node_t *n = self->topics.next; n != &self->topics; n = n->next) {
        topic_t *t = list_entry(n, topic_t, all_link);
        for (list_node_t *m = t->groups.next; m != &t->groups; m = m->next)
            group_pump(self, list_entry(m, group_t, topic_link), now);
    }
}

bool bus_expects_publishes(const bus_t *self)
{
    return bus_enabled(self) && !self->sync_in_flight && self->ack_count > 0 &&
           self->ack_count < self->acks_answered_last;
}

void bus_flush_all(bus_t *self, int64_t now)
{
    if (!bus_enabled(self))
        return;
    for (;;) {
        bus_flush(self, true, now);
        if (!self->sync_in_flight)
            break;
        struct pollfd pfd = {.fd = self->sync_event_fd, .events = POLLIN};
        if (poll(&pfd, 1, 1000) < 0 && errno != EINTR)
            break;
    }
}

int64_t bus_tick(bus_t *self, int64_t now)
{
    if (!bus_enabled(self))
        return now + 1000;
    if (now >= self->next_housekeeping_at) {
        self->next_housekeeping_at = now + housekeeping_interval_ms;
        /* Removing a peer hands its events to others, and a failed send
         * to one of them removes that peer too: after any removal the list
         * may have lost more than one node, so the walk starts over. Each
         * restart follows a removal, so this ends. */
    restart:
        for (list_node_t *n = self->peers.next; n != &self->peers; n = n->next) {
            peer_t *p = list_entry(n, peer_t, all_link);
            int64_t silent = now - p->last_seen_at;
            if (silent > (int64_t)p->heartbeat_interval_ms * self->config.heartbeat_liveness) {
                bus_disconnect(self, p->identity, p->identity_len, PAYGATE__V1__CODE__UNAVAILABLE,
                               "expired");
                peer_remove(self, p, "expired", now);
                goto restart;
            }
            if (now - p->last_sent_at >= p->heartbeat_interval_ms) {
                Paygate__V1__Header header = PAYGATE__V1__HEADER__INIT;
                header.command = PAYGATE__V1__COMMAND__HEARTBEAT;
                if (peer_send(self, p, &header, NULL, now) != 0) {
                    peer_remove(self, p, "unreachable", now);
                    goto restart;
                }
            }
        }
        for (list_node_t *t = self->topics.next; t != &self->topics; t = t->next) {
            topic_t *topic = list_entry(t, topic_t, all_link);
            for (list_node_t *m = topic->groups.next; m != &topic->groups; m = m->next)
                group_timers(self, list_entry(m, group_t, topic_link), now);
        }
    }
    if (now >= self->next_offsets_flush_at) {
        self->next_offsets_flush_at = now + offsets_flush_interval_ms;
        for (list_node_t *t = self->topics.next; t != &self->topics; t = t->next) {
            topic_t *topic = list_entry(t, topic_t, all_link);
            for (list_node_t *m = topic->groups.next; m != &topic->groups; m = m->next)
                group_persist(self, list_entry(m, group_t, topic_link));
        }
    }
    if (now >= self->next_retention_at) {
        self->next_retention_at = now + retention_interval_ms;
        for (list_node_t *t = self->topics.next; t != &self->topics; t = t->next) {
            topic_t *topic = list_entry(t, topic_t, all_link);
            int deleted = eventlog_apply_retention(topic->log, wall_clock_ms());
            if (deleted <= 0)
                continue;
            log_info("bus: retention deleted %d segments of %s", deleted, topic->name);
            uint64_t start = eventlog_start_offset(topic->log);
            for (list_node_t *m = topic->groups.next; m != &topic->groups; m = m->next) {
                group_t *g = list_entry(m, group_t, topic_link);
                if (g->committed < start && g->in_flight == 0) {
                    log_warn("bus: group %s/%s lost offsets %" PRIu64 "..%" PRIu64 " to retention",
                             topic->name, g->name, g->committed, start - 1);
                    g->committed = start;
                    g->len = 0;
                    g->read_position_valid = false;
                }
            }
        }
    }
    int64_t next = self->next_housekeeping_at;
    return next;
}

void *bus_list(bus_t *self, Paygate__V1__ListServicesReply *reply)
{
    arena_t *arena = arena_new(8 * 1024);
    if (arena == NULL)
        return NULL;
    Paygate__V1__TopicInfo **topics = arena_alloc(arena, (self->topic_count + 1) * sizeof *topics);
    size_t count = 0;
    for (list_node_t *n = self->topics.next; topics != NULL && n != &self->topics; n = n->next) {
        topic_t *t = list_entry(n, topic_t, all_link);
        Paygate__V1__TopicInfo *info = arena_alloc(arena, sizeof *info);
        Paygate__V1__GroupInfo **groups = arena_alloc(arena, (t->group_count + 1) * sizeof *groups);
        if (info == NULL || groups == NULL)
            break;
        paygate__v1__topic_info__init(info);
        info->name = t->name;
        info->start_offset = eventlog_start_offset(t->log);
        info->end_offset = t->durable_end;
        info->bytes = eventlog_bytes(t->log);
        info->published = t->published;
        info->duplicates = t->duplicates;
        size_t k = 0;
        for (list_node_t *m = t->groups.next; m != &t->groups; m = m->next) {
            group_t *g = list_entry(m, group_t, topic_link);
            Paygate__V1__GroupInfo *gi = arena_alloc(arena, sizeof *gi);
            if (gi == NULL)
                break;
            paygate__v1__group_info__init(gi);
            gi->name = g->name;
            gi->committed_offset = g->committed;
            gi->lag = t->durable_end > g->committed ? t->durable_end - g->committed : 0;
            gi->in_flight = g->in_flight;
            gi->consumers = g->consumer_count;
            gi->redelivered = g->redelivered;
            gi->dead_lettered = g->dead_lettered;
            groups[k++] = gi;
        }
        info->groups = groups;
        info->n_groups = k;
        topics[count++] = info;
    }
    reply->topics = topics;
    reply->n_topics = count;
    return arena;
}

void bus_list_free(void *memory)
{
    arena_t *arena = memory;
    arena_destroy(&arena);
}
