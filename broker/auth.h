/*
 * auth: who may talk to the broker, and what each key may do.
 *
 * The broker's endpoint is a CURVE server. Every peer presents a public
 * key during the handshake; this module answers libzmq's ZAP requests
 * (inproc://zeromq.zap.01, in the broker's own loop) from a table of
 * known client certificates: a known key is admitted with its
 * certificate's name as ZAP User-Id, every other key is refused and the
 * connection never carries a message. After that, each message carries
 * the User-Id (zmq_msg_gets) and the broker asks this module whether the
 * key may do what the message asks.
 *
 * A client certificate (CZMQ zcert format, written by paygate-certs) says
 * in its metadata what the key may do; lists are comma-separated names,
 * an entry ending in '*' matches every name with that prefix ("*": all):
 *
 *   name          = "payment"    the key's name: its principal (required,
 *                                [a-z0-9_.-]{1,64}, unique)
 *   role          = "service"    service, gateway or operator (for people)
 *   services      = "payment"    services it may register (READY)
 *   publish       = "payments"   topics it may publish to
 *   consume       = "payments"   topics it may subscribe to ...
 *   groups        = "transaction" ... in these groups (default: its name)
 *   principals    = "payment"    principals it may claim in a REQUEST's
 *                                caller (default: its name)
 *   act_for_users = "true"       it may put an end user's id in a REQUEST
 *                                (only the gateway and operator tools)
 *
 * This module must never admit a key that is not in the table, and never
 * widen a list: a missing or empty list allows nothing.
 */
#ifndef PAYGATE_AUTH_H
#define PAYGATE_AUTH_H

#include <stdbool.h>
#include <stdint.h>

typedef struct auth auth_t;
typedef struct auth_key auth_key_t;

/* Loads the broker's secret certificate 'cert_path' and every client
 * certificate '*.cert' in 'clients_dir', and binds the ZAP handler in
 * 'zmq_ctx' (which must happen before the broker's socket binds). NULL,
 * after logging why, when a file is unreadable, a certificate has no
 * valid name, a name or key appears twice, or there is no client. */
auth_t *auth_new(void *zmq_ctx, const char *cert_path, const char *clients_dir);

/* Closes the ZAP socket, frees the table, sets '*self' to NULL. */
void auth_destroy(auth_t **self);

/* Makes 'socket' (not yet bound) a CURVE server with the broker's key,
 * whose peers are checked by this handler. Returns 0, or -1 (errno). */
int auth_server_apply(auth_t *self, void *socket);

/* The ZAP socket, for the broker's poll. */
void *auth_zap_socket(auth_t *self);

/* Answers every ZAP request waiting on the ZAP socket (never blocks). */
void auth_zap_serve(auth_t *self);

/* The key whose name is 'user_id' (the ZAP User-Id of a message), or
 * NULL. */
const auth_key_t *auth_key_find(const auth_t *self, const char *user_id);

/* The key's name (its principal). */
const char *auth_key_name(const auth_key_t *key);

/* Whether 'key' may register 'service', publish to 'topic', subscribe to
 * 'topic' in 'group', claim 'principal' (non-empty), or carry an end
 * user's id. */
bool auth_may_register(const auth_key_t *key, const char *service);
bool auth_may_publish(const auth_key_t *key, const char *topic);
bool auth_may_consume(const auth_key_t *key, const char *topic, const char *group);
bool auth_may_claim(const auth_key_t *key, const char *principal);
bool auth_may_act_for_users(const auth_key_t *key);

/* Connections refused by the ZAP handler (unknown keys). */
uint64_t auth_peers_refused(const auth_t *self);

/* True when 'entry_list' (comma-separated, '*' suffix = prefix match)
 * matches 'name'. Exposed for unit tests. */
bool auth_list_matches(const char *entry_list, const char *name);

#endif
