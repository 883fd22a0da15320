/*
 * service: the shared start-up of service processes. See service.h.
 */
#include "service.h"

#include <ctype.h>
#include <stdio.h>

#include "config/config.h"
#include "log/log.h"

bool service_config_read(const char *name, bool needs_pg, unsigned default_threads,
                         service_config_t *out)
{
    char upper[32], threads_name[64], in_flight_name[64];
    size_t n = 0;
    for (; name[n] != '\0' && n + 1 < sizeof upper; n++)
        upper[n] = (char)toupper((unsigned char)name[n]);
    upper[n] = '\0';
    snprintf(threads_name, sizeof threads_name, "PAYGATE_%s_THREADS", upper);
    snprintf(in_flight_name, sizeof in_flight_name, "PAYGATE_%s_MAX_IN_FLIGHT", upper);
    int64_t threads, max_in_flight;
    bool ok =
        config_str("PAYGATE_BROKER_ENDPOINT", "tcp://127.0.0.1:55555", 255, &out->broker_endpoint);
    ok &= config_str("PAYGATE_PG_DSN", NULL, 1024, &out->pg_dsn);
    ok &= config_str("PAYGATE_INSTANCE_ID", NULL, 100, &out->instance);
    ok &= config_int(threads_name, (int64_t)default_threads, 1, 64, &threads);
    ok &= config_int(in_flight_name, 4, 1, 1024, &max_in_flight);
    if (!ok)
        return false;
    if (needs_pg && out->pg_dsn == NULL) {
        log_error("config: PAYGATE_PG_DSN is required");
        return false;
    }
    log_set_instance(out->instance); /* NULL: keep "<service>-<host>-<pid>" */
    out->threads = (unsigned)threads;
    out->max_in_flight = (uint32_t)max_in_flight;
    return true;
}

bool service_migrate(const char *pg_dsn, const char *schema, const pg_migration_t *migrations,
                     size_t count)
{
    pg_conn_t *migrator = pg_conn_new(pg_dsn, schema);
    pg_result_t migrated = migrator ? pg_migrate(migrator, migrations, count) : PG_ERROR;
    pg_conn_destroy(&migrator);
    if (migrated != PG_OK) {
        log_error("schema %s: database migration failed; not starting", schema);
        return false;
    }
    return true;
}
