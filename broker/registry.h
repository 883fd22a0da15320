/*
 * registry: the broker's state and routing rules, without sockets.
 *
 * It knows the services, their registered worker instances, the requests
 * waiting for a free worker (a bounded FIFO per service) and the requests
 * in flight at each worker. It decides where each request goes, when a
 * request's deadline passes, when a worker is dead, and whom to tell. It
 * does no I/O: every outgoing message goes through the sink callbacks, so
 * the rules are unit-tested with a fake sink and a fake clock.
 *
 * Limits (all in registry_config_t): workers, services, requests (waiting
 * plus in flight), queue length per service, deadlines. A request is never
 * dropped silently: each one ends in exactly one answer to its client
 * (the worker's REPLY or a broker status), unless the client itself is gone.
 */
#ifndef PAYGATE_REGISTRY_H
#define PAYGATE_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "broker.pb-c.h"
#include "list/list.h"
#include "wire/wire.h"

typedef struct {
    uint32_t heartbeat_interval_ms; /* broker's default for workers */
    uint32_t heartbeat_liveness;    /* missed intervals before expiry */
    uint32_t queue_max;             /* waiting requests per service */
    uint32_t unavailable_grace_ms;  /* wait for a worker before UNAVAILABLE */
    uint32_t deadline_default_ms;   /* when a request has none */
    uint32_t deadline_max_ms;       /* longer deadlines are refused */
    uint32_t orphan_timeout_ms;     /* keep a worker slot after the deadline */
    uint32_t workers_max;
    uint32_t services_max;
    uint32_t requests_max; /* waiting + in flight, all services */
} registry_config_t;

/* The defaults documented in broker/README.md. */
registry_config_t registry_config_default(void);

typedef struct registry registry_t;
typedef struct service service_t;
typedef struct worker worker_t;

/* A client's request, from arrival to its one answer. */
typedef struct pending {
    uint8_t client[wire_identity_bytes_max];
    size_t client_len;
    uint64_t client_correlation; /* the client's id for it */
    uint64_t broker_correlation; /* our id towards the worker */
    Paygate__V1__Header *header; /* owned: service, method, meta */
    zmq_msg_t body;              /* owned; moved out when sent */
    bool has_body;
    service_t *service;
    worker_t *worker; /* while in flight */
    bool answered;    /* the client got a broker status */
    int64_t arrived_at;
    int64_t deadline_at;
    int64_t unavailable_at; /* arrived_at + grace */
    int64_t timer_at;       /* heap key */
    size_t heap_index;
    list_node_t link; /* service queue or worker in-flight list */
    uint32_t slot;
    uint32_t generation;
} pending_t;

struct worker {
    uint8_t identity[wire_identity_bytes_max];
    size_t identity_len;
    char identity_key[2 * wire_identity_bytes_max + 1]; /* hex, for the index */
    char instance_id[wire_instance_bytes_max + 1];
    char key_name[wire_user_id_bytes_max + 1]; /* its CURVE key, "" when insecure */
    service_t *service;
    uint32_t heartbeat_interval_ms;
    uint32_t max_in_flight;
    uint32_t in_flight;
    bool draining; /* sent DISCONNECT: no new requests */
    int64_t registered_at;
    int64_t last_seen_at; /* anything received from it */
    int64_t last_sent_at; /* anything sent to it */
    uint64_t requests_done;
    list_node_t ready_link;   /* on service->ready while it has capacity */
    list_node_t service_link; /* on service->workers */
    list_node_t requests;     /* its in-flight pendings */
};

struct service {
    char name[wire_service_bytes_max + 1];
    list_node_t workers; /* all its workers */
    list_node_t ready;   /* workers with free capacity, least recently used first */
    list_node_t queue;   /* waiting pendings, oldest first */
    uint32_t worker_count;
    uint32_t queue_len;
    int64_t empty_since; /* no workers and no queue since; 0 when in use */
};

typedef struct {
    uint64_t requests_routed;
    uint64_t requests_expired;
    uint64_t requests_unavailable;
    uint64_t requests_rejected_full;
    uint64_t replies_late;
    uint64_t workers_expired;
    uint64_t sends_failed;
    uint64_t registrations_refused; /* instance id held by another key */
} registry_stats_t;

/* Where the registry's decisions go. Each returns 0 when the message was
 * handed to the network, -1 when the peer is gone (e.g. EHOSTUNREACH). */
typedef struct {
    void *ctx;
    /* Send 'p' to 'w' as REQUEST with p->broker_correlation and
     * 'deadline_ms' left; the sink may move p->body. */
    int (*send_request)(void *ctx, const worker_t *w, pending_t *p, uint32_t deadline_ms);
    /* Answer a client: REPLY with 'correlation', 'status' (NULL: OK) and
     * 'body' (NULL: none; moved when given). */
    int (*send_reply)(void *ctx, const uint8_t *client, size_t client_len, uint64_t correlation,
                      const Paygate__V1__Status *status, zmq_msg_t *body);
    /* HEARTBEAT or DISCONNECT (with 'status' saying why, may be NULL). */
    int (*send_command)(void *ctx, const uint8_t *identity, size_t identity_len,
                        Paygate__V1__Command command, const Paygate__V1__Status *status);
} registry_sink_t;

/* A new, empty registry. NULL on OOM. */
registry_t *registry_new(const registry_config_t *config, const registry_sink_t *sink);

/* Frees everything, without answering anyone, and sets '*self' to NULL. */
void registry_destroy(registry_t **self);

/* READY from 'identity'. Registers (or re-registers) the instance and
 * hands it waiting requests. A refused READY gets a DISCONNECT with the
 * reason (PERMISSION_DENIED for broker.* names, RESOURCE_EXHAUSTED when
 * full). */
void registry_worker_ready(registry_t *self, const uint8_t *identity, size_t identity_len,
                           const Paygate__V1__Ready *ready, int64_t now);

/* Like registry_worker_ready for a peer authenticated as key 'key_name'
 * ("" when the broker runs without authentication). A live instance id
 * may be taken over only by a peer with the same key (a restarted or
 * reconnected instance): another key's READY for it is refused with
 * PERMISSION_DENIED (reason instance_id_taken). Returns false when the
 * READY was refused. */
bool registry_worker_ready_as(registry_t *self, const uint8_t *identity, size_t identity_len,
                              const Paygate__V1__Ready *ready, const char *key_name, int64_t now);

/* HEARTBEAT from 'identity': refreshes it, or, for an unknown peer, asks
 * it to register again (DISCONNECT). */
void registry_worker_heartbeat(registry_t *self, const uint8_t *identity, size_t identity_len,
                               int64_t now);

/* DISCONNECT from 'identity': no new requests; removed (and told so) once
 * its in-flight requests are answered. */
void registry_worker_disconnect(registry_t *self, const uint8_t *identity, size_t identity_len,
                                int64_t now);

/* REQUEST from a client. Takes ownership of 'header' and of 'body' (when
 * not NULL; the caller's message is left empty). Dispatches, queues, or
 * answers with a status. */
void registry_request(registry_t *self, const uint8_t *client, size_t client_len,
                      Paygate__V1__Header *header, zmq_msg_t *body, int64_t now);

/* REPLY from worker 'identity'. Forwards it to the client (moving 'body'),
 * frees the slot and dispatches the next waiting request. A reply that
 * matches nothing (late, or forged by another peer) is counted and
 * dropped. */
void registry_reply(registry_t *self, const uint8_t *identity, size_t identity_len,
                    const Paygate__V1__Header *header, zmq_msg_t *body, int64_t now);

/* Timers: deadlines, grace periods, worker expiry, heartbeats, idle
 * services. Returns the time of the next timer (<= now + 100 ms). */
int64_t registry_tick(registry_t *self, int64_t now);

/* Answers every request with UNAVAILABLE 'why' and tells every worker
 * DISCONNECT (used on shutdown). */
void registry_shutdown(registry_t *self, const char *why);

/* Fills 'reply' (services, instances, stats) for discovery; only 'filter'
 * when not NULL or empty. Returns the memory to free with
 * registry_list_free. */
void *registry_list(registry_t *self, const char *filter, int64_t now,
                    Paygate__V1__ListServicesReply *reply);
void registry_list_free(void *memory);

/* Read-only views for tests, metrics and assertions. */
const registry_stats_t *registry_stats(const registry_t *self);
const service_t *registry_service(const registry_t *self, const char *name);
const worker_t *registry_worker(const registry_t *self, const uint8_t *identity,
                                size_t identity_len);
uint32_t registry_worker_count(const registry_t *self);
uint32_t registry_request_count(const registry_t *self);

#endif
