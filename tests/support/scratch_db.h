/*
 * scratch_db: a database of its own for one integration test run.
 *
 * Integration tests run side by side (ctest -j) against one PostgreSQL.
 * Services that share a database also share their outbox tables, so one
 * test's relay could publish another test's events to the wrong broker.
 * A test that starts services gives them a scratch database instead.
 */
#ifndef PAYGATE_TEST_SCRATCH_DB_H
#define PAYGATE_TEST_SCRATCH_DB_H

#include <stdbool.h>
#include <stddef.h>

/* Creates database 'name' ([a-z0-9_]{1,48}) on the server of 'base_dsn'
 * (dropping a leftover of the same name first) and writes a DSN for it
 * into 'out'. Returns false, printing why, on failure. */
bool scratch_db_create(const char *base_dsn, const char *name, char *out, size_t out_size);

/* Drops database 'name' (FORCE: its sessions are ended). */
void scratch_db_drop(const char *base_dsn, const char *name);

#endif
