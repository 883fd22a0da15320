/*
 * ratelimit: fixed-size token-bucket table. See ratelimit.h.
 *
 * Tokens are counted in integer units, token_units to a token, so that a
 * rule of 'per_min' tokens a minute refills exactly 'per_min' units a
 * microsecond (a minute is 60,000,000 us):
 *
 *   units(now) = min(burst * token_units, units(then) + (now - then) * per_min)
 *
 * With per_min <= 1e9 and burst <= 1e6 no sum exceeds 6e13 before the
 * comparison that caps it, far from INT64_MAX.
 *
 *   table: sets of ratelimit_ways entries; set = hash & (sets - 1);
 *          set i is guarded by stripes[i % stripe_count]
 *   entry: {hash (0 = empty), class, units, updated_us}
 */
#include "ratelimit.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"

enum {
    stripe_count = 64,
};

static const int64_t token_units = 60 * 1000 * 1000; /* units per token: us per minute */

typedef struct {   /* 32 bytes */
    uint64_t hash; /* of (class, key); 0 = empty */
    int64_t units;
    int64_t updated_us;
    uint8_t class;
} entry_t;

struct ratelimit {
    ratelimit_config_t config;
    size_t set_count; /* a power of two */
    entry_t *entries; /* set_count * ratelimit_ways */
    unsigned char hash_key[crypto_shorthash_KEYBYTES];
    pthread_mutex_t stripes[stripe_count];
    atomic_uint_fast64_t rejected[RATELIMIT_CLASS_COUNT];
};

static const char *const class_names[RATELIMIT_CLASS_COUNT] = {
    [RATELIMIT_ADDRESS] = "address",
    [RATELIMIT_USER] = "user",
    [RATELIMIT_REGISTER_ADDRESS] = "register_address",
    [RATELIMIT_LOGIN_ADDRESS] = "login_address",
    [RATELIMIT_LOGIN_EMAIL] = "login_email",
    [RATELIMIT_PAYMENT_USER] = "payment_user",
};

const char *ratelimit_class_name(ratelimit_class_t class)
{
    return (unsigned)class < RATELIMIT_CLASS_COUNT ? class_names[class] : "unknown";
}

ratelimit_t *ratelimit_new(const ratelimit_config_t *config)
{
    for (int c = 0; c < RATELIMIT_CLASS_COUNT; c++) {
        const ratelimit_rule_t *rule = &config->rules[c];
        if (rule->per_min < 0 || rule->per_min > ratelimit_per_min_max || rule->burst < 1 ||
            rule->burst > ratelimit_burst_max) {
            log_error("ratelimit: rule %s (%lld a minute, burst %lld) is out of range",
                      class_names[c], (long long)rule->per_min, (long long)rule->burst);
            return NULL;
        }
    }
    if (config->entries_max < ratelimit_entries_min ||
        config->entries_max > ratelimit_entries_max) {
        log_error("ratelimit: %zu entries is out of range %d..%d", config->entries_max,
                  ratelimit_entries_min, ratelimit_entries_max);
        return NULL;
    }
    if (sodium_init() < 0) {
        log_error("ratelimit: libsodium cannot start");
        return NULL;
    }
    ratelimit_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->config = *config;
    size_t entries = ratelimit_entries_min;
    while (entries * 2 <= config->entries_max)
        entries *= 2;
    self->set_count = entries / ratelimit_ways;
    self->entries = calloc(entries, sizeof *self->entries);
    if (self->entries == NULL) {
        free(self);
        return NULL;
    }
    crypto_shorthash_keygen(self->hash_key);
    for (int i = 0; i < stripe_count; i++)
        pthread_mutex_init(&self->stripes[i], NULL);
    for (int c = 0; c < RATELIMIT_CLASS_COUNT; c++)
        atomic_init(&self->rejected[c], 0);
    return self;
}

void ratelimit_destroy(ratelimit_t **self_p)
{
    ratelimit_t *self = *self_p;
    if (self == NULL)
        return;
    for (int i = 0; i < stripe_count; i++)
        pthread_mutex_destroy(&self->stripes[i]);
    free(self->entries);
    free(self);
    *self_p = NULL;
}

bool ratelimit_enabled(const ratelimit_t *self, ratelimit_class_t class)
{
    return (unsigned)class < RATELIMIT_CLASS_COUNT && self->config.rules[class].per_min > 0;
}

/* SipHash-2-4 of the class byte followed by 'key'; never 0 (0 marks an
 * empty entry). */
static uint64_t key_hash(const ratelimit_t *self, ratelimit_class_t class, const void *key,
                         size_t key_len)
{
    unsigned char buffer[1 + 256];
    unsigned char out[crypto_shorthash_BYTES];
    size_t n = key_len < sizeof buffer - 1 ? key_len : sizeof buffer - 1;
    buffer[0] = (unsigned char)class;
    memcpy(buffer + 1, key, n);
    if (key_len > n) {
        /* A long key: hash it first, so every byte counts. */
        crypto_generichash(buffer + 1, 32, key, key_len, NULL, 0);
        n = 32;
    }
    crypto_shorthash(out, buffer, n + 1, self->hash_key);
    uint64_t hash;
    memcpy(&hash, out, sizeof hash);
    return hash != 0 ? hash : 1;
}

/* The units of 'e' at 'now_us' under 'rule' (the entry is not changed). */
static int64_t entry_units_at(const entry_t *e, const ratelimit_rule_t *rule, int64_t now_us)
{
    int64_t full = rule->burst * token_units;
    int64_t elapsed_us = now_us - e->updated_us;
    if (elapsed_us <= 0)
        return e->units < full ? e->units : full;
    int64_t missing = full - e->units;
    /* elapsed_us * per_min could overflow for a very old entry: compare
     * against the time a full refill takes instead. */
    if (missing <= 0 || elapsed_us >= (missing + rule->per_min - 1) / rule->per_min)
        return full;
    return e->units + elapsed_us * rule->per_min;
}

/* The way of 'set' to give to a new key: an empty one, else one whose
 * bucket is full again (forgetting it changes nothing), else the one
 * used least recently. */
static entry_t *victim_in(const ratelimit_t *self, entry_t *set, int64_t now_us)
{
    entry_t *oldest = &set[0];
    for (int w = 0; w < ratelimit_ways; w++) {
        entry_t *e = &set[w];
        if (e->hash == 0)
            return e;
        const ratelimit_rule_t *rule = &self->config.rules[e->class];
        if (entry_units_at(e, rule, now_us) >= rule->burst * token_units)
            return e;
        if (e->updated_us < oldest->updated_us)
            oldest = e;
    }
    return oldest;
}

bool ratelimit_take(ratelimit_t *self, ratelimit_class_t class, const void *key, size_t key_len,
                    int64_t now_us, ratelimit_verdict_t *verdict)
{
    memset(verdict, 0, sizeof *verdict);
    verdict->allowed = true;
    if (!ratelimit_enabled(self, class))
        return true;
    const ratelimit_rule_t *rule = &self->config.rules[class];
    verdict->limit = rule->burst;
    uint64_t hash = key_hash(self, class, key, key_len);
    size_t set_index = (size_t)(hash >> 32) & (self->set_count - 1);
    entry_t *set = &self->entries[set_index * ratelimit_ways];
    pthread_mutex_t *stripe = &self->stripes[set_index % stripe_count];

    pthread_mutex_lock(stripe);
    entry_t *e = NULL;
    for (int w = 0; w < ratelimit_ways && e == NULL; w++) {
        if (set[w].hash == hash)
            e = &set[w];
    }
    if (e == NULL) {
        e = victim_in(self, set, now_us);
        e->hash = hash;
        e->class = (uint8_t) class;
        e->units = rule->burst * token_units;
        e->updated_us = now_us;
    }
    e->units = entry_units_at(e, rule, now_us);
    if (now_us > e->updated_us)
        e->updated_us = now_us;
    if (e->units >= token_units) {
        e->units -= token_units;
        verdict->remaining = e->units / token_units;
    } else {
        int64_t wait_us = (token_units - e->units + rule->per_min - 1) / rule->per_min;
        verdict->allowed = false;
        verdict->retry_after_s = (wait_us + 999999) / 1000000;
        if (verdict->retry_after_s < 1)
            verdict->retry_after_s = 1;
    }
    pthread_mutex_unlock(stripe);

    if (!verdict->allowed)
        atomic_fetch_add(&self->rejected[class], 1);
    return verdict->allowed;
}

uint64_t ratelimit_rejected(const ratelimit_t *self, ratelimit_class_t class)
{
    if ((unsigned)class >= RATELIMIT_CLASS_COUNT)
        return 0;
    return atomic_load(&((ratelimit_t *)self)->rejected[class]);
}

uint64_t ratelimit_rejected_total(const ratelimit_t *self)
{
    uint64_t total = 0;
    for (int c = 0; c < RATELIMIT_CLASS_COUNT; c++)
        total += ratelimit_rejected(self, (ratelimit_class_t)c);
    return total;
}
