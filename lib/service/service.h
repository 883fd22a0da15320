/*
 * service: what every service process reads and does before it serves.
 *
 * The settings all services share (broker, database, instance id, worker
 * threads, requests in flight), read strictly from the environment with
 * the service's name in the variable names, and the schema migration that
 * must finish before any instance registers with the broker.
 */
#ifndef PAYGATE_SERVICE_H
#define PAYGATE_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pg/pg.h"

typedef struct {
    const char *broker_endpoint; /* PAYGATE_BROKER_ENDPOINT */
    const char *pg_dsn;          /* PAYGATE_PG_DSN (required when asked for) */
    const char *instance;        /* PAYGATE_INSTANCE_ID, NULL: derived */
    unsigned threads;            /* PAYGATE_<NAME>_THREADS, 1..64 (default: the caller's) */
    uint32_t max_in_flight;      /* PAYGATE_<NAME>_MAX_IN_FLIGHT, 1..1024, default 4 */
} service_config_t;

/* Reads the common settings of service 'name' ("order" reads
 * PAYGATE_ORDER_THREADS, ...), 'default_threads' when that is unset.
 * With 'needs_pg', PAYGATE_PG_DSN must be set. Returns false after logging which setting is wrong.
 */
bool service_config_read(const char *name, bool needs_pg, unsigned default_threads,
                         service_config_t *out);

/* Brings 'schema' up to date with 'migrations' on a connection of its own
 * (pg_migrate), so that no instance serves before the tables are right.
 * Returns false after logging. */
bool service_migrate(const char *pg_dsn, const char *schema, const pg_migration_t *migrations,
                     size_t count);

#endif
