/*
 * scratch_db: per-test databases. See scratch_db.h.
 */
#include "scratch_db.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>

/* Runs the statement that format('<template> %I', 'name') builds on the
 * server: the identifier is quoted by PostgreSQL, not by us. */
static bool run_formatted(PGconn *conn, const char *template_sql, const char *name)
{
    const char *params[] = {template_sql, name};
    PGresult *built =
        PQexecParams(conn, "SELECT format($1::text, $2::text)", 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(built) != PGRES_TUPLES_OK) {
        fprintf(stderr, "scratch_db: %s", PQerrorMessage(conn));
        PQclear(built);
        return false;
    }
    PGresult *done = PQexec(conn, PQgetvalue(built, 0, 0));
    bool ok = PQresultStatus(done) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "scratch_db: %s: %s", PQgetvalue(built, 0, 0), PQerrorMessage(conn));
    PQclear(done);
    PQclear(built);
    return ok;
}

static bool name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 48)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

bool scratch_db_create(const char *base_dsn, const char *name, char *out, size_t out_size)
{
    if (!name_valid(name)) {
        fprintf(stderr, "scratch_db: bad name '%s'\n", name);
        return false;
    }
    PGconn *conn = PQconnectdb(base_dsn);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "scratch_db: cannot connect: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return false;
    }
    bool ok = run_formatted(conn, "DROP DATABASE IF EXISTS %I WITH (FORCE)", name) &&
              run_formatted(conn, "CREATE DATABASE %I", name);
    PQfinish(conn);
    if (ok)
        snprintf(out, out_size, "%s dbname=%s", base_dsn, name);
    return ok;
}

void scratch_db_drop(const char *base_dsn, const char *name)
{
    if (!name_valid(name))
        return;
    PGconn *conn = PQconnectdb(base_dsn);
    if (PQstatus(conn) == CONNECTION_OK)
        run_formatted(conn, "DROP DATABASE IF EXISTS %I WITH (FORCE)", name);
    PQfinish(conn);
}
