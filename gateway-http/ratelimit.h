/*
 * ratelimit: token buckets that bound how often one client may call the
 * gateway, keyed per client address, per user id and per login email.
 *
 * Each class of limit (ratelimit_class_t) has a rule: a bucket holds at
 * most 'burst' tokens, refills at 'per_min' tokens a minute, and a request
 * takes one token or is refused with the seconds until one is back. A rule
 * whose 'per_min' is 0 is off. The gateway answers a refusal with 429 and
 * Retry-After.
 *
 * Memory is fixed at construction: a table of 'entries_max' buckets,
 * 8-way set associative, keyed by a SipHash of (class, key) under a random
 * key (so nobody can aim many keys at one set). A new key takes an empty
 * way, else a way whose bucket has refilled completely (forgetting it
 * loses nothing: a new bucket starts full), else the least recently used
 * way. Under a flood of distinct keys a bucket may thus be forgotten
 * early and its key gets a fresh burst; the address limit bounds what one
 * client can gain that way. Sets are guarded by striped mutexes, so the
 * libmicrohttpd threads may call ratelimit_take() at once.
 *
 * It must never: allocate after construction, store the keys themselves
 * (emails stay out of memory dumps), or use floating point.
 */
#ifndef PAYGATE_GATEWAY_RATELIMIT_H
#define PAYGATE_GATEWAY_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    RATELIMIT_ADDRESS = 0,      /* every request from one client address */
    RATELIMIT_USER,             /* every authenticated request of one user */
    RATELIMIT_REGISTER_ADDRESS, /* POST /v1/users from one address */
    RATELIMIT_LOGIN_ADDRESS,    /* POST /v1/auth/login from one address */
    RATELIMIT_LOGIN_EMAIL,      /* POST /v1/auth/login for one email, from anywhere */
    RATELIMIT_PAYMENT_USER,     /* POST /v1/payments of one user */
    RATELIMIT_CLASS_COUNT,
} ratelimit_class_t;

enum {
    ratelimit_per_min_max = 1000000000, /* tokens a minute */
    ratelimit_burst_max = 1000000,      /* tokens a bucket holds */
    ratelimit_ways = 8,                 /* buckets per set */
    ratelimit_entries_min = 64,
    ratelimit_entries_max = 16 * 1024 * 1024,
};

typedef struct {
    int64_t per_min; /* refill, tokens a minute, 0..ratelimit_per_min_max; 0 = off */
    int64_t burst;   /* capacity, 1..ratelimit_burst_max */
} ratelimit_rule_t;

typedef struct {
    ratelimit_rule_t rules[RATELIMIT_CLASS_COUNT];
    size_t entries_max; /* ratelimit_entries_min..max; rounded down to a power of two */
} ratelimit_config_t;

/* What ratelimit_take() decided. */
typedef struct {
    bool allowed;
    int64_t limit;         /* the rule's burst */
    int64_t remaining;     /* whole tokens left after this request */
    int64_t retry_after_s; /* refused: seconds until a token is back (>= 1); else 0 */
} ratelimit_verdict_t;

typedef struct ratelimit ratelimit_t;

/* A table for 'config' (copied). NULL, after logging why, when a rule or
 * the size is out of range or memory is short. */
ratelimit_t *ratelimit_new(const ratelimit_config_t *config);

/* Frees '*self' and sets it to NULL. Accepts NULL. */
void ratelimit_destroy(ratelimit_t **self);

/* True when the rule of 'class' is on. */
bool ratelimit_enabled(const ratelimit_t *self, ratelimit_class_t class);

/* Takes one token from the bucket of 'key' ('key_len' bytes, any bytes)
 * in 'class' at 'now_us' (a monotonic clock; a time before the bucket's
 * last use counts as no time passed) and fills 'verdict'. Returns
 * verdict->allowed. A class whose rule is off always allows and touches
 * nothing. Thread-safe. */
bool ratelimit_take(ratelimit_t *self, ratelimit_class_t class, const void *key, size_t key_len,
                    int64_t now_us, ratelimit_verdict_t *verdict);

/* Requests refused so far, all classes (for the paygate_gateway_rate_limited_total
 * counter), and those of one 'class'. Thread-safe. */
uint64_t ratelimit_rejected_total(const ratelimit_t *self);
uint64_t ratelimit_rejected(const ratelimit_t *self, ratelimit_class_t class);

/* Stable snake_case name of 'class' ("login_email", ...): the error's
 * "limit" detail. */
const char *ratelimit_class_name(ratelimit_class_t class);

#endif
