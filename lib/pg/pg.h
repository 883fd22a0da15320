/*
 * pg: PostgreSQL access for service worker threads, and schema migrations.
 *
 * A pg_conn_t is one libpq connection owned by one thread: it is never
 * shared, so it needs no locks. It connects lazily, sets search_path to
 * its service's schema, caches prepared statements, and after the server
 * restarted it reconnects by itself on the next call. Every failure is
 * classified into a pg_result_t the caller can act on (answer
 * UNAVAILABLE, report a duplicate, retry a serialization failure) with
 * the SQLSTATE and constraint name kept for details.
 *
 * This module must never:
 *   - build SQL from input: every value goes as a parameter ($1, ...);
 *   - retry a statement whose outcome is unknown (the connection dropped
 *     after it was sent): that could apply a payment twice;
 *   - silently reconnect inside an open transaction: the statements
 *     already run in it are gone, so every call fails until the caller
 *     rolls back;
 *   - log parameter values or error DETAIL text (they may hold secrets
 *     such as password hashes, or card and account numbers).
 *
 * Migrations are SQL files services/<name>/migrations/NNNN_*.sql embedded
 * into the binary by cmake/paygate_migrations.cmake and applied at start
 * by pg_migrate(), each in its own transaction, under an advisory lock so
 * that several instances starting at once apply each file exactly once.
 */
#ifndef PAYGATE_PG_H
#define PAYGATE_PG_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

enum {
    /* How long one connection attempt may take before the call answers
     * PG_UNAVAILABLE (libpq's minimum is 2 s). */
    pg_connect_timeout_s = 2,
    /* Prepared statements one connection caches; more is a bug. */
    pg_statements_max = 128,
    /* PostgreSQL truncates identifiers (statement, constraint, schema
     * names) to NAMEDATALEN - 1 = 63 bytes; we refuse longer ones. */
    pg_name_bytes_max = 63,
    /* Room kept for the last error's human message. */
    pg_message_bytes_max = 255,
    /* How long pg_migrate waits for another instance's migration lock. */
    pg_migrate_lock_wait_ms = 120000,
};

typedef enum {
    PG_OK = 0,
    /* Connection lost, server down or shutting down (SQLSTATE class 08
     * except 08P01, 57P01..57P03, or a libpq-level connection failure).
     * The caller answers UNAVAILABLE. If a statement was in flight its
     * outcome is unknown. */
    PG_UNAVAILABLE,
    /* Integrity violation (class 23: unique 23505, check 23514, foreign
     * key 23503, not null 23502); see pg_error_sqlstate/_constraint. */
    PG_CONSTRAINT,
    /* Serialization failure 40001 or deadlock 40P01: the transaction was
     * rolled back and may be retried from its start. */
    PG_SERIALIZATION,
    /* Anything else: a bug in the SQL or the schema. It is logged. */
    PG_ERROR,
} pg_result_t;

typedef struct pg_conn pg_conn_t;

/* One embedded migration: 'version' is the file name ("0001_init.sql"),
 * 'sql' its whole content (may hold several statements). */
typedef struct {
    const char *version;
    const char *sql;
} pg_migration_t;

/* Creates a connection handle for libpq conninfo 'dsn' (copied). It does
 * not connect yet: the first call does. 'schema' (copied; NULL keeps the
 * server's default search_path) becomes the session's search_path after
 * every (re)connect. Returns NULL when 'schema' is longer than
 * pg_name_bytes_max or memory runs out. */
pg_conn_t *pg_conn_new(const char *dsn, const char *schema);

/* Closes the connection (an open transaction is rolled back by the
 * server), frees the handle and sets '*self' to NULL. NULL is a no-op. */
void pg_conn_destroy(pg_conn_t **self);

/* Runs 'sql' with 'nparams' text parameters 'params' (an element may be
 * NULL for SQL NULL). Connects first if needed; a connection found closed
 * before sending (the server restarted) is replaced once, with a
 * connect timeout of pg_connect_timeout_s, unless a transaction was open
 * on it (then PG_UNAVAILABLE until pg_rollback). The statement itself is
 * never retried: if the connection drops after sending, the answer is
 * PG_UNAVAILABLE and the next call reconnects.
 * On PG_OK, if 'out' is not NULL, '*out' is the result the caller must
 * PQclear; on any other answer '*out' is NULL and the error is kept for
 * pg_error_*(). */
pg_result_t pg_exec(pg_conn_t *self, const char *sql, int nparams, const char *const *params,
                    PGresult **out);

/* As pg_exec, with 'sql' prepared as statement 'name' on first use on
 * this connection (and again after a reconnect), then executed by name.
 * 'name' must be at most pg_name_bytes_max bytes and always go with the
 * same 'sql' (a different 'sql' is PG_ERROR: a bug). */
pg_result_t pg_exec_prepared(pg_conn_t *self, const char *name, const char *sql, int nparams,
                             const char *const *params, PGresult **out);

/* Runs prepared statement 'name' (as pg_exec_prepared prepares it) once
 * for each of the 'count' parameter sets 'params[i]', all in one
 * transaction sent in one round trip (libpq's pipeline mode): BEGIN, the
 * statements, COMMIT. PG_OK only when that transaction committed; then
 * 'out[i]' is statement i's result (the caller PQclears each).
 * Otherwise every 'out[i]' is NULL and the error is kept as for pg_exec:
 * a statement failed and nothing happened, or (PG_UNAVAILABLE) the
 * connection dropped and the outcome is unknown. Not inside a
 * transaction (PG_ERROR). */
pg_result_t pg_exec_prepared_batch(pg_conn_t *self, const char *name, const char *sql, int nparams,
                                   size_t count, const char *const *const *params, PGresult **out);

/* Runs prepared statement 'name' (as pg_exec_prepared) once for 'count'
 * rows at a time: parameter j is a text array literal of column j of
 * rows[0..count-1] ('rows[i][j]'; NULL is SQL NULL), which the statement
 * unnests, e.g. "INSERT ... SELECT * FROM unnest($1::text[],
 * $2::bigint[])". One statement for many rows: PostgreSQL sets up the
 * statement (its executor, its tables' CHECK constraints) once, not once
 * per row as for pg_exec_prepared_batch. Answers as pg_exec_prepared;
 * PG_ERROR when memory runs out. */
pg_result_t pg_exec_prepared_rows(pg_conn_t *self, const char *name, const char *sql, int ncolumns,
                                  size_t count, const char *const *const *rows, PGresult **out);

/* Opens a transaction (connecting if needed) at the server's default
 * isolation level; run "SET TRANSACTION ISOLATION LEVEL ..." next for
 * another. Fails with PG_ERROR if one is already open on this handle. */
pg_result_t pg_begin(pg_conn_t *self);

/* Commits the open transaction. PG_OK only if the server reported
 * COMMIT: a transaction that had failed is rolled back by the server and
 * answered PG_ERROR; a deferred constraint or serialization failure at
 * commit is classified as usual. PG_UNAVAILABLE means the connection
 * dropped and the outcome is unknown. The transaction is closed after
 * any answer. */
pg_result_t pg_commit(pg_conn_t *self);

/* Whether the open transaction can no longer commit: a statement in it
 * failed, or the connection was lost. False when none is open. */
bool pg_transaction_failed(const pg_conn_t *self);

/* Rolls back the open transaction, if any; never fails (a lost
 * connection has rolled back by itself). Safe to call when none is open. */
void pg_rollback(pg_conn_t *self);

/* The last error's SQLSTATE: 5 characters, or "" when there was none
 * or it came from libpq (e.g. connection refused). */
const char *pg_error_sqlstate(const pg_conn_t *self);

/* The constraint the last error names (class 23), or "". */
const char *pg_error_constraint(const pg_conn_t *self);

/* The last error's primary message, or "". For humans and tests only:
 * for data errors (class 22) it may quote a parameter value, so do not
 * log it or pass it to end users verbatim. */
const char *pg_error_message(const pg_conn_t *self);

/* Brings the connection's schema (its pg_conn_new 'schema', required) up
 * to date: takes a session advisory lock for the schema (waiting at most
 * pg_migrate_lock_wait_ms for another instance), creates the schema and
 * its schema_migrations table if missing, then applies, in array order,
 * each of the 'count' 'migrations' whose version is not recorded yet,
 * each in its own transaction together with the record of its version.
 * 'migrations' must be sorted by strictly increasing version. A failing
 * migration is rolled back, logged with its version, and returned (the
 * service must refuse to start); earlier ones stay applied. Must be
 * called outside a transaction. Releases the lock before returning. */
pg_result_t pg_migrate(pg_conn_t *self, const pg_migration_t *migrations, size_t count);

#endif
