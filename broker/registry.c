/*
 * registry: services, workers, waiting and in-flight requests, and the
 * rules that move requests between them. See registry.h for the contract
 * and broker/README.md for the behaviour seen by peers.
 *
 * Data layout:
 *
 *   services (by name) --> service --+-- workers: all its instances
 *                                    +-- ready:   instances with capacity,
 *                                    |            least recently used first
 *                                    +-- queue:   waiting requests, FIFO
 *   workers (by identity) --> worker --- requests: its in-flight requests
 *   pool: slot -> pending      heap: pendings ordered by their next timer
 *
 * A pending's broker correlation id is (generation << 32 | slot): a REPLY
 * finds its request in O(1), and a late reply for a reused slot is told
 * apart by the generation.
 */
#include "registry.h"

#include <assert.h>
#include <czmq.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena/arena.h"
#include "log/log.h"

enum { housekeeping_interval_ms = 50, tick_max_ms = 100 };

struct registry {
    registry_config_t config;
    registry_sink_t sink;
    zhashx_t *services_by_name;
    zhashx_t *workers_by_identity;
    list_node_t services_all; /* holds service_t via ... (see service_node_t) */
    list_node_t workers_all;
    uint32_t service_count;
    uint32_t worker_count;
    /* pending pool */
    pending_t **slots;
    uint32_t slot_count;    /* slots created */
    uint32_t slot_capacity; /* length of 'slots' */
    uint32_t *free_slots;
    uint32_t free_count;
    uint32_t request_count; /* pendings in use */
    /* timers */
    pending_t **heap;
    size_t heap_len;
    size_t heap_capacity;
    int64_t next_housekeeping_at;
    registry_stats_t stats;
};

/* A service with its link on registry->services_all. */
typedef struct {
    service_t service;
    list_node_t all_link;
    uint32_t live_count; /* workers not draining */
} service_node_t;

/* A worker with its link on registry->workers_all. */
typedef struct {
    worker_t worker;
    list_node_t all_link;
} worker_node_t;

static service_node_t *service_node(service_t *s)
{
    return (service_node_t *)s;
}

static worker_node_t *worker_node(worker_t *w)
{
    return (worker_node_t *)w;
}

registry_config_t registry_config_default(void)
{
    registry_config_t c = {
        .heartbeat_interval_ms = 1000,
        .heartbeat_liveness = 3,
        .queue_max = 1000,
        .unavailable_grace_ms = 2000,
        .deadline_default_ms = 5000,
        .deadline_max_ms = 60000,
        .orphan_timeout_ms = 30000,
        .workers_max = 1024,
        .services_max = 256,
        .requests_max = 100000,
    };
    return c;
}

/* ---- timers: a binary min-heap of pendings by timer_at --------------- */

static void heap_swap(registry_t *self, size_t a, size_t b)
{
    pending_t *tmp = self->heap[a];
    self->heap[a] = self->heap[b];
    self->heap[b] = tmp;
    self->heap[a]->heap_index = a;
    self->heap[b]->heap_index = b;
}

static void heap_up(registry_t *self, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (self->heap[parent]->timer_at <= self->heap[i]->timer_at)
            break;
        heap_swap(self, parent, i);
        i = parent;
    }
}

static void heap_down(registry_t *self, size_t i)
{
    for (;;) {
        size_t left = 2 * i + 1, right = left + 1, smallest = i;
        if (left < self->heap_len && self->heap[left]->timer_at < self->heap[smallest]->timer_at)
            smallest = left;
        if (right < self->heap_len && self->heap[right]->timer_at < self->heap[smallest]->timer_at)
            smallest = right;
        if (smallest == i)
            return;
        heap_swap(self, i, smallest);
        i = smallest;
    }
}

/* Removes 'p' from the heap (it must be on it). */
static void heap_remove(registry_t *self, pending_t *p)
{
    size_t i = p->heap_index;
    assert(i < self->heap_len && self->heap[i] == p);
    self->heap_len--;
    if (i != self->heap_len) {
        self->heap[i] = self->heap[self->heap_len];
        self->heap[i]->heap_index = i;
        heap_up(self, i);
        heap_down(self, self->heap[i]->heap_index);
    }
    p->heap_index = SIZE_MAX;
}

/* Puts 'p' on the heap at 'at', or moves it there. Returns false on OOM. */
static bool heap_set(registry_t *self, pending_t *p, int64_t at)
{
    if (p->heap_index != SIZE_MAX)
        heap_remove(self, p);
    if (self->heap_len == self->heap_capacity) {
        size_t capacity = self->heap_capacity ? self->heap_capacity * 2 : 256;
        pending_t **grown = realloc(self->heap, capacity * sizeof *grown);
        if (grown == NULL)
            return false;
        self->heap = grown;
        self->heap_capacity = capacity;
    }
    p->timer_at = at;
    p->heap_index = self->heap_len;
    self->heap[self->heap_len++] = p;
    heap_up(self, p->heap_index);
    return true;
}

/* ---- the pending pool ------------------------------------------------ */

/* A fresh pending from the pool, or NULL when requests_max are in use. */
static pending_t *pending_alloc(registry_t *self)
{
    if (self->request_count >= self->config.requests_max)
        return NULL;
    pending_t *p = NULL;
    if (self->free_count > 0) {
        p = self->slots[self->free_slots[--self->free_count]];
    } else {
        if (self->slot_count == self->slot_capacity) {
            uint32_t capacity = self->slot_capacity ? self->slot_capacity * 2 : 256;
            if (capacity > self->config.requests_max)
                capacity = self->config.requests_max;
            pending_t **slots = realloc(self->slots, capacity * sizeof *slots);
            if (slots == NULL)
                return NULL;
            self->slots = slots;
            uint32_t *free_slots = realloc(self->free_slots, capacity * sizeof *free_slots);
            if (free_slots == NULL)
                return NULL;
            self->free_slots = free_slots;
            self->slot_capacity = capacity;
        }
        p = calloc(1, sizeof *p);
        if (p == NULL)
            return NULL;
        p->slot = self->slot_count;
        self->slots[self->slot_count++] = p;
    }
    uint32_t slot = p->slot, generation = p->generation + 1;
    memset(p, 0, sizeof *p);
    p->slot = slot;
    p->generation = generation;
    p->heap_index = SIZE_MAX;
    list_init(&p->link);
    self->request_count++;
    return p;
}

/* Releases 'p' and everything it holds back to the pool. */
static void pending_free(registry_t *self, pending_t *p)
{
    if (p->heap_index != SIZE_MAX)
        heap_remove(self, p);
    list_remove(&p->link);
    if (p->header != NULL)
        paygate__v1__header__free_unpacked(p->header, NULL);
    p->header = NULL;
    if (p->has_body)
        zmq_msg_close(&p->body);
    p->has_body = false;
    p->worker = NULL;
    p->generation++; /* a late reply with the old id no longer matches */
    assert(self->request_count > 0);
    self->request_count--;
    self->free_slots[self->free_count++] = p->slot;
}

/* The request id of 'p' ("" when it came without one). */
static const char *pending_request_id(const pending_t *p)
{
    const Paygate__V1__CallMeta *meta = p->header != NULL ? p->header->meta : NULL;
    return meta != NULL && meta->request_id != NULL ? meta->request_id : "";
}

/* Answers the client of 'p' with a broker status (once), and logs it with
 * the request's id: these are the broker's own verdicts on a request
 * (deadline, worker lost, no worker, queue full), which a reader of the
 * gateway's and services' logs otherwise cannot see. A full queue is
 * logged at debug: under overload it would flood the log. */
static void pending_answer(registry_t *self, pending_t *p, Paygate__V1__Code code,
                           const char *reason, const char *message)
{
    if (p->answered)
        return;
    p->answered = true;
    log_level_t level =
        code == PAYGATE__V1__CODE__RESOURCE_EXHAUSTED ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO;
    if (log_enabled(level) && p->header != NULL) {
        log_set_request_id(pending_request_id(p));
        log_write_fields(
            level,
            LOG_FIELDS(LOG_STR("service", p->header->service), LOG_STR("method", p->header->method),
                       LOG_STR("status", wire_code_name(code)), LOG_STR("reason", reason)),
            "registry: answered %s.%s itself: %s", p->header->service, p->header->method, message);
        log_set_request_id(NULL);
    }
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = code;
    status.reason = (char *)reason;
    status.message = (char *)message;
    if (self->sink.send_reply(self->sink.ctx, p->client, p->client_len, p->client_correlation,
                              &status, NULL) != 0)
        self->stats.sends_failed++;
    switch (code) {
    case PAYGATE__V1__CODE__DEADLINE_EXCEEDED:
        self->stats.requests_expired++;
        break;
    case PAYGATE__V1__CODE__UNAVAILABLE:
        self->stats.requests_unavailable++;
        break;
    case PAYGATE__V1__CODE__RESOURCE_EXHAUSTED:
        self->stats.requests_rejected_full++;
        break;
    default:
        break;
    }
}

/* Answers a request that never became a pending (no header kept). */
static void answer_client(registry_t *self, const uint8_t *client, size_t client_len,
                          uint64_t correlation, Paygate__V1__Code code, const char *reason,
                          const char *message)
{
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = code;
    status.reason = (char *)reason;
    status.message = (char *)message;
    if (self->sink.send_reply(self->sink.ctx, client, client_len, correlation, &status, NULL) != 0)
        self->stats.sends_failed++;
    if (code == PAYGATE__V1__CODE__RESOURCE_EXHAUSTED)
        self->stats.requests_rejected_full++;
    else if (code == PAYGATE__V1__CODE__UNAVAILABLE)
        self->stats.requests_unavailable++;
}

/* ---- services -------------------------------------------------------- */

static service_t *service_find(const registry_t *self, const char *name)
{
    return zhashx_lookup(self->services_by_name, name);
}

/* The service 'name', created when missing; NULL at services_max. */
static service_t *service_get(registry_t *self, const char *name, int64_t now)
{
    service_t *s = service_find(self, name);
    if (s != NULL)
        return s;
    if (self->service_count >= self->config.services_max)
        return NULL;
    service_node_t *node = calloc(1, sizeof *node);
    if (node == NULL)
        return NULL;
    s = &node->service;
    snprintf(s->name, sizeof s->name, "%s", name);
    list_init(&s->workers);
    list_init(&s->ready);
    list_init(&s->queue);
    list_init(&node->all_link);
    s->empty_since = now;
    zhashx_insert(self->services_by_name, s->name, s);
    list_push_back(&self->services_all, &node->all_link);
    self->service_count++;
    return s;
}

static void service_free(registry_t *self, service_t *s)
{
    assert(s->worker_count == 0 && s->queue_len == 0);
    zhashx_delete(self->services_by_name, s->name);
    list_remove(&service_node(s)->all_link);
    self->service_count--;
    free(service_node(s));
}

/* ---- workers --------------------------------------------------------- */

static worker_t *worker_find(const registry_t *self, const uint8_t *identity, size_t len)
{
    char key[2 * wire_identity_bytes_max + 1];
    wire_identity_hex(identity, len, key);
    return zhashx_lookup(self->workers_by_identity, key);
}

/* Sends a command to 'w'; a failed send means the peer is gone. */
static int worker_command(registry_t *self, worker_t *w, Paygate__V1__Command command,
                          const Paygate__V1__Status *status, int64_t now)
{
    int rc = self->sink.send_command(self->sink.ctx, w->identity, w->identity_len, command, status);
    if (rc == 0)
        w->last_sent_at = now;
    else
        self->stats.sends_failed++;
    return rc;
}

/* Sets the UNAVAILABLE timer of the waiting requests of 's' when its last
 * live worker went away, so that they wait one grace period for another. */
static void service_lost_workers(registry_t *self, service_t *s, int64_t now)
{
    if (service_node(s)->live_count > 0)
        return;
    for (list_node_t *n = s->queue.next; n != &s->queue; n = n->next) {
        pending_t *p = list_entry(n, pending_t, link);
        p->unavailable_at = now + self->config.unavailable_grace_ms;
        int64_t at = p->unavailable_at < p->deadline_at ? p->unavailable_at : p->deadline_at;
        heap_set(self, p, at);
    }
}

/* Removes 'w': its in-flight requests are answered UNAVAILABLE ('why'),
 * and when 'tell' it gets a DISCONNECT with 'code'. */
static void worker_remove(registry_t *self, worker_t *w, bool tell, Paygate__V1__Code code,
                          const char *why, int64_t now)
{
    service_t *s = w->service;
    char message[256];
    snprintf(message, sizeof message, "worker %s of %s %s with the request in flight",
             w->instance_id, s->name, why);
    log_info("registry: %s of %s removed: %s (%u in flight)", w->instance_id, s->name, why,
             w->in_flight);
    while (!list_empty(&w->requests)) {
        pending_t *p = list_entry(list_front(&w->requests), pending_t, link);
        pending_answer(self, p, PAYGATE__V1__CODE__UNAVAILABLE, "worker_lost", message);
        pending_free(self, p);
    }
    if (tell) {
        Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
        status.code = code;
        status.message = (char *)why;
        worker_command(self, w, PAYGATE__V1__COMMAND__DISCONNECT, &status, now);
    }
    list_remove(&w->ready_link);
    list_remove(&w->service_link);
    list_remove(&worker_node(w)->all_link);
    if (!w->draining)
        service_node(s)->live_count--;
    s->worker_count--;
    self->worker_count--;
    zhashx_delete(self->workers_by_identity, w->identity_key);
    free(worker_node(w));
    service_lost_workers(self, s, now);
}

/* ---- routing --------------------------------------------------------- */

/* Sends 'p' to 'w'. Returns false when 'w' turned out to be gone (it is
 * removed; 'p' is untouched and may go elsewhere). */
static bool dispatch(registry_t *self, pending_t *p, worker_t *w, int64_t now)
{
    int64_t left = p->deadline_at - now;
    if (left < 1)
        left = 1; /* the timer answers it; the worker will see 1 ms */
    p->broker_correlation = ((uint64_t)p->generation << 32) | p->slot;
    if (self->sink.send_request(self->sink.ctx, w, p, (uint32_t)left) != 0) {
        self->stats.sends_failed++;
        worker_remove(self, w, false, PAYGATE__V1__CODE__UNAVAILABLE, "was unreachable", now);
        return false;
    }
    if (p->has_body) {
        zmq_msg_close(&p->body); /* the sink moved it; close the empty shell */
        p->has_body = false;
    }
    list_remove(&p->link);
    p->worker = w;
    list_push_back(&w->requests, &p->link);
    w->in_flight++;
    w->last_sent_at = now;
    list_remove(&w->ready_link);
    if (w->in_flight < w->max_in_flight)
        list_push_back(&w->service->ready, &w->ready_link);
    heap_set(self, p, p->deadline_at);
    self->stats.requests_routed++;
    return true;
}

/* Hands waiting requests of 's' to its workers with free capacity. */
static void service_dispatch(registry_t *self, service_t *s, int64_t now)
{
    while (!list_empty(&s->queue) && !list_empty(&s->ready)) {
        pending_t *p = list_entry(list_front(&s->queue), pending_t, link);
        worker_t *w = list_entry(list_front(&s->ready), worker_t, ready_link);
        list_remove(&p->link);
        s->queue_len--;
        if (!dispatch(self, p, w, now)) {
            /* 'w' is gone; when it was the last, 'p' must wait one grace
             * period like the others (worker_remove saw it off the queue). */
            list_push_front(&s->queue, &p->link);
            s->queue_len++;
            service_lost_workers(self, s, now);
        }
    }
}

/* Returns 'w' to its service's ready list if it can take more. */
static void worker_make_ready(worker_t *w)
{
    if (!w->draining && w->in_flight < w->max_in_flight && !list_linked(&w->ready_link))
        list_push_back(&w->service->ready, &w->ready_link);
}

/* ---- the public operations ------------------------------------------ */

registry_t *registry_new(const registry_config_t *config, const registry_sink_t *sink)
{
    registry_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    self->sink = *sink;
    self->services_by_name = zhashx_new();
    self->workers_by_identity = zhashx_new();
    if (self->services_by_name == NULL || self->workers_by_identity == NULL) {
        registry_destroy(&self);
        return NULL;
    }
    list_init(&self->services_all);
    list_init(&self->workers_all);
    return self;
}

void registry_destroy(registry_t **self_p)
{
    registry_t *self = *self_p;
    if (self == NULL)
        return;
    while (!list_empty(&self->workers_all)) {
        worker_node_t *node = list_entry(list_front(&self->workers_all), worker_node_t, all_link);
        list_remove(&node->all_link);
        free(node);
    }
    while (!list_empty(&self->services_all)) {
        service_node_t *node =
            list_entry(list_front(&self->services_all), service_node_t, all_link);
        list_remove(&node->all_link);
        free(node);
    }
    for (uint32_t i = 0; i < self->slot_count; i++) {
        pending_t *p = self->slots[i];
        if (p->header != NULL)
            paygate__v1__header__free_unpacked(p->header, NULL);
        if (p->has_body)
            zmq_msg_close(&p->body);
        free(p);
    }
    free(self->slots);
    free(self->free_slots);
    free(self->heap);
    zhashx_destroy(&self->services_by_name);
    zhashx_destroy(&self->workers_by_identity);
    free(self);
    *self_p = NULL;
}

void registry_worker_ready(registry_t *self, const uint8_t *identity, size_t identity_len,
                           const Paygate__V1__Ready *ready, int64_t now)
{
    registry_worker_ready_as(self, identity, identity_len, ready, "", now);
}

/* The live worker of 's' registered as 'instance_id', or NULL. */
static worker_t *service_instance(service_t *s, const char *instance_id)
{
    for (list_node_t *n = s->workers.next; n != &s->workers; n = n->next) {
        worker_t *w = list_entry(n, worker_t, service_link);
        if (strcmp(w->instance_id, instance_id) == 0)
            return w;
    }
    return NULL;
}

bool registry_worker_ready_as(registry_t *self, const uint8_t *identity, size_t identity_len,
                              const Paygate__V1__Ready *ready, const char *key_name, int64_t now)
{
    Paygate__V1__Status refusal = PAYGATE__V1__STATUS__INIT;
    char text[384];
    if (strncmp(ready->service, "broker.", 7) == 0) {
        refusal.code = PAYGATE__V1__CODE__PERMISSION_DENIED;
        refusal.message = (char *)"service names under broker. are reserved";
        self->sink.send_command(self->sink.ctx, identity, identity_len,
                                PAYGATE__V1__COMMAND__DISCONNECT, &refusal);
        return false;
    }
    service_t *s = service_find(self, ready->service);
    worker_t *holder = s != NULL ? service_instance(s, ready->instance_id) : NULL;
    bool same_peer = holder != NULL && holder->identity_len == identity_len &&
                     memcmp(holder->identity, identity, identity_len) == 0;
    if (holder != NULL && !same_peer && strcmp(holder->key_name, key_name) != 0) {
        snprintf(text, sizeof text,
                 "instance %s of %s is live and registered by key '%s'; key '%s' may not take "
                 "it over",
                 ready->instance_id, ready->service, holder->key_name, key_name);
        refusal.code = PAYGATE__V1__CODE__PERMISSION_DENIED;
        refusal.reason = (char *)"instance_id_taken";
        refusal.message = text;
        self->sink.send_command(self->sink.ctx, identity, identity_len,
                                PAYGATE__V1__COMMAND__DISCONNECT, &refusal);
        self->stats.registrations_refused++;
        log_warn("registry: refused READY: %s", text);
        return false;
    }
    worker_t *old = worker_find(self, identity, identity_len);
    if (old != NULL) /* the same peer registers again: it lost its state */
        worker_remove(self, old, false, PAYGATE__V1__CODE__UNAVAILABLE, "re-registered", now);
    /* An instance id is one live worker: a newer registration of the same
     * key wins (the old peer is presumed dead and reconnected). */
    holder = s != NULL ? service_instance(s, ready->instance_id) : NULL;
    if (holder != NULL)
        worker_remove(self, holder, true, PAYGATE__V1__CODE__UNAVAILABLE,
                      "was replaced by a newer registration", now);
    if (self->worker_count >= self->config.workers_max ||
        (s = service_get(self, ready->service, now)) == NULL) {
        refusal.code = PAYGATE__V1__CODE__RESOURCE_EXHAUSTED;
        refusal.message = (char *)"broker worker or service limit reached";
        self->sink.send_command(self->sink.ctx, identity, identity_len,
                                PAYGATE__V1__COMMAND__DISCONNECT, &refusal);
        log_warn("registry: refused %s for %s: %s", ready->instance_id, ready->service,
                 refusal.message);
        return false;
    }
    worker_node_t *node = calloc(1, sizeof *node);
    if (node == NULL)
        return false;
    worker_t *w = &node->worker;
    memcpy(w->identity, identity, identity_len);
    w->identity_len = identity_len;
    wire_identity_hex(identity, identity_len, w->identity_key);
    snprintf(w->instance_id, sizeof w->instance_id, "%s", ready->instance_id);
    snprintf(w->key_name, sizeof w->key_name, "%s", key_name);
    w->service = s;
    w->heartbeat_interval_ms = ready->heartbeat_interval_ms ? ready->heartbeat_interval_ms
                                                            : self->config.heartbeat_interval_ms;
    w->max_in_flight = ready->max_in_flight ? ready->max_in_flight : 1;
    w->registered_at = now;
    w->last_seen_at = now;
    w->last_sent_at = now;
    list_init(&w->ready_link);
    list_init(&w->service_link);
    list_init(&w->requests);
    list_init(&node->all_link);
    zhashx_insert(self->workers_by_identity, w->identity_key, w);
    list_push_back(&self->workers_all, &node->all_link);
    list_push_back(&s->workers, &w->service_link);
    list_push_back(&s->ready, &w->ready_link);
    s->worker_count++;
    service_node(s)->live_count++;
    s->empty_since = 0;
    self->worker_count++;
    log_info("registry: %s registered for %s (heartbeat %u ms, max in flight %u)", w->instance_id,
             s->name, w->heartbeat_interval_ms, w->max_in_flight);
    service_dispatch(self, s, now);
    return true;
}

void registry_worker_heartbeat(registry_t *self, const uint8_t *identity, size_t identity_len,
                               int64_t now)
{
    worker_t *w = worker_find(self, identity, identity_len);
    if (w != NULL) {
        w->last_seen_at = now;
        return;
    }
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__UNAVAILABLE;
    status.message = (char *)"unknown worker: register again";
    if (self->sink.send_command(self->sink.ctx, identity, identity_len,
                                PAYGATE__V1__COMMAND__DISCONNECT, &status) != 0)
        self->stats.sends_failed++;
}

void registry_worker_disconnect(registry_t *self, const uint8_t *identity, size_t identity_len,
                                int64_t now)
{
    worker_t *w = worker_find(self, identity, identity_len);
    if (w == NULL) {
        /* Confirm anyway, so that a draining worker exits promptly. */
        self->sink.send_command(self->sink.ctx, identity, identity_len,
                                PAYGATE__V1__COMMAND__DISCONNECT, NULL);
        return;
    }
    w->last_seen_at = now;
    if (!w->draining) {
        w->draining = true;
        service_node(w->service)->live_count--;
        list_remove(&w->ready_link);
        log_info("registry: %s of %s is draining (%u in flight)", w->instance_id, w->service->name,
                 w->in_flight);
    }
    if (w->in_flight == 0) {
        service_t *s = w->service;
        worker_remove(self, w, true, PAYGATE__V1__CODE__OK, "disconnected", now);
        (void)s;
    } else {
        service_lost_workers(self, w->service, now);
    }
}

void registry_request(registry_t *self, const uint8_t *client, size_t client_len,
                      Paygate__V1__Header *header, zmq_msg_t *body_in, int64_t now)
{
    char message[256];
    zmq_msg_t body_taken; /* ours from here on, whatever happens */
    zmq_msg_t *body = NULL;
    if (body_in != NULL) {
        zmq_msg_init(&body_taken);
        zmq_msg_move(&body_taken, body_in);
        body = &body_taken;
    }
    uint64_t correlation = header->correlation_id;
    uint32_t deadline_ms = header->meta ? header->meta->deadline_ms : 0;
    if (deadline_ms == 0)
        deadline_ms = self->config.deadline_default_ms;
    if (deadline_ms > self->config.deadline_max_ms) {
        snprintf(message, sizeof message, "deadline_ms %u is over the broker's maximum of %u",
                 deadline_ms, self->config.deadline_max_ms);
        answer_client(self, client, client_len, correlation, PAYGATE__V1__CODE__INVALID_ARGUMENT,
                      "deadline_too_long", message);
        paygate__v1__header__free_unpacked(header, NULL);
        if (body != NULL)
            zmq_msg_close(body);
        return;
    }
    service_t *s = service_get(self, header->service, now);
    pending_t *p = s != NULL ? pending_alloc(self) : NULL;
    if (p == NULL) {
        snprintf(message, sizeof message, "broker is at its limit of %s",
                 s == NULL ? "services" : "requests");
        answer_client(self, client, client_len, correlation, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED,
                      "broker_busy", message);
        paygate__v1__header__free_unpacked(header, NULL);
        if (body != NULL)
            zmq_msg_close(body);
        return;
    }
    memcpy(p->client, client, client_len);
    p->client_len = client_len;
    p->client_correlation = correlation;
    p->header = header;
    if (body != NULL) {
        zmq_msg_init(&p->body);
        zmq_msg_move(&p->body, body);
        zmq_msg_close(body); /* the empty shell */
        p->has_body = true;
    }
    p->service = s;
    p->arrived_at = now;
    p->deadline_at = now + deadline_ms;
    p->unavailable_at = now + self->config.unavailable_grace_ms;

    if (list_empty(&s->queue)) {
        while (!list_empty(&s->ready)) {
            worker_t *w = list_entry(list_front(&s->ready), worker_t, ready_link);
            if (dispatch(self, p, w, now))
                return;
        }
    }
    if (s->queue_len >= self->config.queue_max) {
        snprintf(message, sizeof message, "service %s has %u requests waiting (the maximum)",
                 s->name, s->queue_len);
        pending_answer(self, p, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "queue_full", message);
        pending_free(self, p);
        return;
    }
    list_push_back(&s->queue, &p->link);
    s->queue_len++;
    s->empty_since = 0;
    bool no_worker = service_node(s)->live_count == 0;
    int64_t at =
        no_worker && p->unavailable_at < p->deadline_at ? p->unavailable_at : p->deadline_at;
    if (!heap_set(self, p, at)) {
        list_remove(&p->link);
        s->queue_len--;
        pending_answer(self, p, PAYGATE__V1__CODE__RESOURCE_EXHAUSTED, "broker_busy",
                       "broker out of memory");
        pending_free(self, p);
    }
}

void registry_reply(registry_t *self, const uint8_t *identity, size_t identity_len,
                    const Paygate__V1__Header *header, zmq_msg_t *body, int64_t now)
{
    uint64_t id = header->correlation_id;
    uint32_t slot = (uint32_t)(id & 0xffffffffu), generation = (uint32_t)(id >> 32);
    pending_t *p = slot < self->slot_count ? self->slots[slot] : NULL;
    if (p == NULL || p->generation != generation || p->worker == NULL ||
        p->worker->identity_len != identity_len ||
        memcmp(p->worker->identity, identity, identity_len) != 0) {
        self->stats.replies_late++;
        worker_t *w = worker_find(self, identity, identity_len);
        if (w != NULL)
            w->last_seen_at = now;
        return;
    }
    worker_t *w = p->worker;
    w->last_seen_at = now;
    if (p->answered) {
        self->stats.replies_late++;
    } else {
        p->answered = true;
        if (self->sink.send_reply(self->sink.ctx, p->client, p->client_len, p->client_correlation,
                                  header->status, body) != 0)
            self->stats.sends_failed++;
    }
    w->in_flight--;
    w->requests_done++;
    service_t *s = w->service;
    pending_free(self, p);
    if (w->draining && w->in_flight == 0) {
        worker_remove(self, w, true, PAYGATE__V1__CODE__OK, "disconnected", now);
        return;
    }
    worker_make_ready(w);
    service_dispatch(self, s, now);
}

/* Fires the timer of 'p' (its timer_at has come). */
static void pending_timer(registry_t *self, pending_t *p, int64_t now)
{
    char message[256];
    if (p->worker != NULL) {
        worker_t *w = p->worker;
        if (!p->answered) {
            snprintf(message, sizeof message, "deadline of %lld ms passed while %s.%s ran on %s",
                     (long long)(p->deadline_at - p->arrived_at), p->header->service,
                     p->header->method, w->instance_id);
            pending_answer(self, p, PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded",
                           message);
            heap_set(self, p, p->deadline_at + self->config.orphan_timeout_ms);
            return;
        }
        /* The worker never answered: give its slot back. */
        log_set_request_id(pending_request_id(p));
        log_warn("registry: %s held a request %u ms past its deadline; slot released",
                 w->instance_id, self->config.orphan_timeout_ms);
        log_set_request_id(NULL);
        w->in_flight--;
        service_t *s = w->service;
        pending_free(self, p);
        if (w->draining && w->in_flight == 0) {
            worker_remove(self, w, true, PAYGATE__V1__CODE__OK, "disconnected", now);
            return;
        }
        worker_make_ready(w);
        service_dispatch(self, s, now);
        return;
    }
    service_t *s = p->service;
    if (now >= p->deadline_at) {
        snprintf(message, sizeof message,
                 "deadline of %lld ms passed while waiting for a %s worker",
                 (long long)(p->deadline_at - p->arrived_at), s->name);
        pending_answer(self, p, PAYGATE__V1__CODE__DEADLINE_EXCEEDED, "deadline_exceeded", message);
    } else if (service_node(s)->live_count == 0) {
        snprintf(message, sizeof message, "no worker for service %s is registered", s->name);
        pending_answer(self, p, PAYGATE__V1__CODE__UNAVAILABLE, "no_worker", message);
    } else {
        heap_set(self, p, p->deadline_at); /* workers exist, just busy */
        return;
    }
    s->queue_len--;
    pending_free(self, p);
}

/* How often 'w' gets a HEARTBEAT when nothing else is sent to it. A
 * worker holding requests is probed four times as often: a send to a peer
 * whose connection is gone fails at once (ZMQ_ROUTER_MANDATORY), so the
 * clients of a dead worker hear UNAVAILABLE within a quarter interval. */
static int64_t worker_probe_interval_ms(const worker_t *w)
{
    return w->in_flight > 0 ? w->heartbeat_interval_ms / 4 + 1 : w->heartbeat_interval_ms;
}

/* Expires silent workers, heartbeats idle ones, frees empty services. */
static void housekeeping(registry_t *self, int64_t now)
{
    list_node_t *n = self->workers_all.next;
    while (n != &self->workers_all) {
        list_node_t *next = n->next;
        worker_t *w = &list_entry(n, worker_node_t, all_link)->worker;
        int64_t silent = now - w->last_seen_at;
        /* A worker holding requests may be silent for as long as its
         * handler runs (its thread cannot heartbeat meanwhile): it stays
         * while its connection does (the probes below fail at once on a
         * closed one, and ZMTP heartbeats close the connection of a
         * frozen or vanished peer); what it holds is bounded by the
         * requests' deadlines (pending_timer releases the slots). */
        if (w->in_flight == 0 &&
            silent > (int64_t)w->heartbeat_interval_ms * self->config.heartbeat_liveness) {
            log_warn("registry: %s of %s expired after %lld ms of silence (%u in flight)",
                     w->instance_id, w->service->name, (long long)silent, w->in_flight);
            self->stats.workers_expired++;
            worker_remove(self, w, true, PAYGATE__V1__CODE__UNAVAILABLE, "expired", now);
        } else if (now - w->last_sent_at >= worker_probe_interval_ms(w)) {
            if (worker_command(self, w, PAYGATE__V1__COMMAND__HEARTBEAT, NULL, now) != 0)
                worker_remove(self, w, false, PAYGATE__V1__CODE__UNAVAILABLE, "was unreachable",
                              now);
        }
        n = next;
    }
    n = self->services_all.next;
    while (n != &self->services_all) {
        list_node_t *next = n->next;
        service_t *s = &list_entry(n, service_node_t, all_link)->service;
        if (s->worker_count == 0 && s->queue_len == 0)
            service_free(self, s);
        n = next;
    }
}

int64_t registry_tick(registry_t *self, int64_t now)
{
    while (self->heap_len > 0 && self->heap[0]->timer_at <= now)
        pending_timer(self, self->heap[0], now);
    if (now >= self->next_housekeeping_at) {
        housekeeping(self, now);
        self->next_housekeeping_at = now + housekeeping_interval_ms;
    }
    int64_t next = self->next_housekeeping_at;
    if (self->heap_len > 0 && self->heap[0]->timer_at < next)
        next = self->heap[0]->timer_at;
    if (next > now + tick_max_ms)
        next = now + tick_max_ms;
    return next;
}

void registry_shutdown(registry_t *self, const char *why)
{
    for (uint32_t i = 0; i < self->slot_count; i++) {
        pending_t *p = self->slots[i];
        if (p->header == NULL)
            continue; /* free slot */
        pending_answer(self, p, PAYGATE__V1__CODE__UNAVAILABLE, "broker_stopping", why);
    }
    /* Workers register again at once; their READY waits in their socket
     * until a broker is back on the endpoint. */
    Paygate__V1__Status status = PAYGATE__V1__STATUS__INIT;
    status.code = PAYGATE__V1__CODE__UNAVAILABLE;
    status.message = (char *)why;
    for (list_node_t *n = self->workers_all.next; n != &self->workers_all; n = n->next) {
        worker_t *w = &list_entry(n, worker_node_t, all_link)->worker;
        if (self->sink.send_command(self->sink.ctx, w->identity, w->identity_len,
                                    PAYGATE__V1__COMMAND__DISCONNECT, &status) != 0)
            self->stats.sends_failed++;
    }
}

void *registry_list(registry_t *self, const char *filter, int64_t now,
                    Paygate__V1__ListServicesReply *reply)
{
    arena_t *arena = arena_new(16 * 1024);
    if (arena == NULL)
        return NULL;
    size_t count = 0;
    for (list_node_t *n = self->services_all.next; n != &self->services_all; n = n->next)
        count++;
    Paygate__V1__ServiceInfo **services = arena_alloc(arena, (count + 1) * sizeof *services);
    Paygate__V1__BrokerStats *stats = arena_alloc(arena, sizeof *stats);
    if (services == NULL || stats == NULL) {
        arena_destroy(&arena);
        return NULL;
    }
    size_t used = 0;
    for (list_node_t *n = self->services_all.next; n != &self->services_all; n = n->next) {
        service_t *s = &list_entry(n, service_node_t, all_link)->service;
        if (filter != NULL && *filter != '\0' && strcmp(filter, s->name) != 0)
            continue;
        if (s->worker_count == 0 && s->queue_len == 0)
            continue;
        Paygate__V1__ServiceInfo *info = arena_alloc(arena, sizeof *info);
        Paygate__V1__InstanceInfo **instances =
            arena_alloc(arena, (s->worker_count + 1) * sizeof *instances);
        if (info == NULL || instances == NULL)
            break;
        paygate__v1__service_info__init(info);
        info->name = s->name;
        info->queue_depth = s->queue_len;
        size_t k = 0;
        for (list_node_t *m = s->workers.next; m != &s->workers; m = m->next) {
            worker_t *w = list_entry(m, worker_t, service_link);
            Paygate__V1__InstanceInfo *inst = arena_alloc(arena, sizeof *inst);
            if (inst == NULL)
                break;
            paygate__v1__instance_info__init(inst);
            inst->instance_id = w->instance_id;
            inst->heartbeat_age_ms = (uint64_t)(now - w->last_seen_at);
            inst->in_flight = w->in_flight;
            inst->max_in_flight = w->max_in_flight;
            inst->requests_done = w->requests_done;
            inst->registered_age_ms = (uint64_t)(now - w->registered_at);
            inst->heartbeat_interval_ms = w->heartbeat_interval_ms;
            instances[k++] = inst;
        }
        info->instances = instances;
        info->n_instances = k;
        services[used++] = info;
    }
    paygate__v1__broker_stats__init(stats);
    stats->requests_routed = self->stats.requests_routed;
    stats->requests_expired = self->stats.requests_expired;
    stats->requests_unavailable = self->stats.requests_unavailable;
    stats->requests_rejected_full = self->stats.requests_rejected_full;
    stats->replies_late = self->stats.replies_late;
    stats->workers_expired = self->stats.workers_expired;
    stats->sends_failed = self->stats.sends_failed;
    reply->services = services;
    reply->n_services = used;
    reply->stats = stats;
    return arena;
}

void registry_list_free(void *memory)
{
    arena_t *arena = memory;
    arena_destroy(&arena);
}

const registry_stats_t *registry_stats(const registry_t *self)
{
    return &self->stats;
}

const service_t *registry_service(const registry_t *self, const char *name)
{
    return service_find(self, name);
}

const worker_t *registry_worker(const registry_t *self, const uint8_t *identity,
                                size_t identity_len)
{
    return worker_find(self, identity, identity_len);
}

uint32_t registry_worker_count(const registry_t *self)
{
    return self->worker_count;
}

uint32_t registry_request_count(const registry_t *self)
{
    return self->request_count;
}
