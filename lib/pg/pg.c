/*
 * pg: PostgreSQL connections for worker threads, and migrations. See pg.h
 * for the contract.
 *
 * Reconnecting safely. A statement is sent at most once. Before sending,
 * a connection that sat idle is checked for a close by the server (after a
 * restart the old backend sent FATAL and closed the socket): nothing was
 * sent on it yet, so replacing it cannot repeat anything. Once a
 * statement is sent, a lost connection is only reported (PG_UNAVAILABLE),
 * never retried. When the lost connection carried session state the
 * caller relies on (an open transaction, or the migration lock) the
 * handle stays "session lost" and refuses work until the caller closes
 * that state (pg_rollback), so later statements can never run outside
 * the transaction they were meant for.
 *
 * This file must never put a parameter value or an error DETAIL into a
 * log line, nor build SQL text from input.
 */
#include "pg.h"

#include <assert.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"

enum {
    /* TCP keepalives, so a thread waiting on a vanished server (network
     * partition) learns it within about idle + interval * count seconds. A
     * DSN may override these. */
    pg_keepalive_idle_s = 10,
    pg_keepalive_interval_s = 5,
    pg_keepalive_count = 3,
    /* Reads done on an idle connection to find out whether the server
     * closed it (its FATAL message, then end of file). */
    pg_idle_reads_max = 4,
    /* Bytes of a statement's SQL text shown in a log line. */
    pg_sql_log_bytes_max = 60,
};

struct pg_conn {
    char *dsn;
    char *schema;      /* NULL: keep the server's search_path */
    PGconn *conn;      /* NULL while not connected */
    bool txn_open;     /* pg_begin succeeded; no commit/rollback yet */
    bool pinned;       /* pg_migrate holds a session lock: never reconnect */
    bool session_lost; /* connection lost under txn_open or pinned */
    size_t statement_count;
    struct {
        char name[pg_name_bytes_max + 1];
        char *sql; /* copy, to catch one name used for two statements */
    } statements[pg_statements_max];
    char sqlstate[6];
    char constraint[pg_name_bytes_max + 1];
    char message[pg_message_bytes_max + 1];
};

/* Copies 'text' into 'dst' of 'size' bytes, truncated, on one line: libpq
 * messages span lines ("...\n\tThis probably means...") and a log line
 * must not. Runs of white space become one space. NULL gives "". */
static void copy_one_line(char *dst, size_t size, const char *text)
{
    assert(size > 0);
    size_t n = 0;
    bool space = false;
    for (const char *p = text != NULL ? text : ""; *p != '\0' && n < size - 1; p++) {
        bool blank = *p == '\n' || *p == '\r' || *p == '\t' || *p == ' ';
        if (blank) {
            space = n > 0;
            continue;
        }
        if (space && n < size - 2)
            dst[n++] = ' ';
        space = false;
        dst[n++] = *p;
    }
    dst[n] = '\0';
}

/* Forgets the last error (each call reports only its own). */
static void error_clear(pg_conn_t *self)
{
    self->sqlstate[0] = '\0';
    self->constraint[0] = '\0';
    self->message[0] = '\0';
}

/* Records an error that has no SQLSTATE: 'message' from us or libpq. */
static void error_set_text(pg_conn_t *self, const char *message)
{
    error_clear(self);
    copy_one_line(self->message, sizeof self->message, message);
}

/* Records the error of 'res' (may be NULL: then libpq's connection error
 * text is used). Keeps only the primary message: DETAIL may hold values. */
static void error_set_result(pg_conn_t *self, const PGresult *res)
{
    error_clear(self);
    if (res == NULL) {
        copy_one_line(self->message, sizeof self->message,
                      self->conn != NULL ? PQerrorMessage(self->conn) : "not connected");
        return;
    }
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state != NULL && strlen(state) == 5)
        memcpy(self->sqlstate, state, 6);
    copy_one_line(self->constraint, sizeof self->constraint,
                  PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    copy_one_line(self->message, sizeof self->message,
                  primary != NULL ? primary : PQresultErrorMessage(res));
}

/* Maps SQLSTATE 'state' (5 chars) to a result class. 08P01 (protocol
 * violation: e.g. a wrong parameter count) is in class 08 but is our bug,
 * not an outage. */
static pg_result_t classify_sqlstate(const char *state)
{
    if (strncmp(state, "08", 2) == 0 && strcmp(state, "08P01") != 0)
        return PG_UNAVAILABLE;
    if (strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0)
        return PG_UNAVAILABLE;
    if (strncmp(state, "23", 2) == 0)
        return PG_CONSTRAINT;
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0)
        return PG_SERIALIZATION;
    return PG_ERROR;
}

/* True when the last error's message may quote a value we sent: data
 * exceptions (22: "invalid input syntax for type integer: "...""), and
 * messages raised by PL/pgSQL code (P0). */
static bool message_may_hold_values(const pg_conn_t *self)
{
    return strncmp(self->sqlstate, "22", 2) == 0 || strncmp(self->sqlstate, "P0", 2) == 0;
}

/* Logs the last error of 'what' (a statement name or short SQL text)
 * with a level fitting 'result': PG_ERROR is a bug (error), an outage is a
 * warning, constraint and serialization failures are normal outcomes
 * (debug). 'values_possible' false means the statement had no parameters,
 * so the message is shown even for data errors. */
static void error_log(const pg_conn_t *self, const char *what, pg_result_t result,
                      bool values_possible)
{
    const char *message = self->message;
    if (values_possible && message_may_hold_values(self))
        message = "(message withheld: it may quote a parameter value)";
    const char *state = self->sqlstate[0] != '\0' ? self->sqlstate : "-";
    switch (result) {
    case PG_OK:
        break;
    case PG_UNAVAILABLE:
        log_warn("pg: %s: database unavailable (SQLSTATE %s): %s", what, state, message);
        break;
    case PG_CONSTRAINT:
        log_debug("pg: %s: constraint %s violated (SQLSTATE %s)", what,
                  self->constraint[0] != '\0' ? self->constraint : "-", state);
        break;
    case PG_SERIALIZATION:
        log_debug("pg: %s: serialization failure (SQLSTATE %s)", what, state);
        break;
    case PG_ERROR:
        log_error("pg: %s: failed (SQLSTATE %s): %s", what, state, message);
        break;
    }
}

/* Writes into 'dst' of 'size' bytes how log lines name statement 'sql':
 * its first pg_sql_log_bytes_max bytes on one line. SQL text is ours and
 * static, never a value. */
static void sql_label(char *dst, size_t size, const char *sql)
{
    size_t n = 0;
    for (; sql[n] != '\0' && n < size - 1 && n < pg_sql_log_bytes_max; n++)
        dst[n] = (sql[n] == '\n' || sql[n] == '\r' || sql[n] == '\t') ? ' ' : sql[n];
    dst[n] = '\0';
}

/* Forgets every prepared statement (they died with the connection). */
static void statements_clear(pg_conn_t *self)
{
    for (size_t i = 0; i < self->statement_count; i++)
        free(self->statements[i].sql);
    self->statement_count = 0;
}

/* Closes the connection, if any. When 'in_txn' (a transaction was open on
 * it) or a session lock is held, the handle becomes "session lost". */
static void conn_drop(pg_conn_t *self, bool in_txn)
{
    if (self->conn != NULL) {
        PQfinish(self->conn);
        self->conn = NULL;
    }
    statements_clear(self);
    if (in_txn || self->pinned)
        self->session_lost = true;
}

/* libpq notice receiver: server NOTICE/WARNING messages (and the FATAL a
 * closing server sends to an idle connection) go to our debug log rather
 * than to stderr; severity and primary message only, never DETAIL. */
static void notice_to_log(void *arg, const PGresult *res)
{
    (void)arg;
    char line[pg_message_bytes_max + 1];
    copy_one_line(line, sizeof line, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    log_debug("pg: server %s: %s", severity != NULL ? severity : "notice", line);
}

/* True when the server closed the idle connection (restart, terminated
 * backend). Reads what it sent: nothing of ours is in flight, so a false
 * answer leaves the connection as it was. */
static bool conn_closed_by_server(pg_conn_t *self)
{
    for (int i = 0; i < pg_idle_reads_max; i++) {
        if (PQstatus(self->conn) != CONNECTION_OK)
            return true;
        struct pollfd pfd = {.fd = PQsocket(self->conn), .events = POLLIN};
        if (pfd.fd < 0)
            return true;
        if (poll(&pfd, 1, 0) <= 0)
            return false; /* nothing to read: still open */
        if (!PQconsumeInput(self->conn))
            return true;
        (void)PQisBusy(self->conn); /* parses: an unsolicited FATAL goes to notice_to_log */
        PGnotify *note;
        while ((note = PQnotifies(self->conn)) != NULL)
            PQfreemem(note); /* we LISTEN to nothing */
    }
    return PQstatus(self->conn) != CONNECTION_OK;
}

/* Opens the connection (at most pg_connect_timeout_s) and sets the
 * search_path. Returns PG_UNAVAILABLE when the server cannot be reached;
 * the handle is then still unconnected. */
static pg_result_t conn_open(pg_conn_t *self)
{
    assert(self->conn == NULL);
    /* Keepalives come before the DSN (it may override them); the connect
     * timeout after it, so every attempt stays bounded. */
    char idle[16], interval[16], count[16], timeout[16];
    snprintf(idle, sizeof idle, "%d", pg_keepalive_idle_s);
    snprintf(interval, sizeof interval, "%d", pg_keepalive_interval_s);
    snprintf(count, sizeof count, "%d", pg_keepalive_count);
    snprintf(timeout, sizeof timeout, "%d", pg_connect_timeout_s);
    const char *const keys[] = {"keepalives_idle", "keepalives_interval", "keepalives_count",
                                "dbname",          "connect_timeout",     NULL};
    const char *const values[] = {idle, interval, count, self->dsn, timeout, NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        error_set_text(self, conn != NULL ? PQerrorMessage(conn) : "out of memory");
        log_warn("pg: connect failed: %s", self->message);
        PQfinish(conn);
        return PG_UNAVAILABLE;
    }
    PQsetNoticeReceiver(conn, notice_to_log, NULL);
    self->conn = conn;
    if (self->schema == NULL)
        return PG_OK;
    /* quote_ident: the schema name is one identifier, whatever its case. */
    const char *params[] = {self->schema};
    PGresult *res = PQexecParams(
        conn, "SELECT pg_catalog.set_config('search_path', pg_catalog.quote_ident($1), false)", 1,
        NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        PQclear(res);
        return PG_OK;
    }
    error_set_result(self, res);
    PQclear(res);
    pg_result_t result =
        self->sqlstate[0] != '\0' ? classify_sqlstate(self->sqlstate) : PG_UNAVAILABLE;
    error_log(self, "set search_path", result, false);
    conn_drop(self, false);
    return result;
}

/* Makes the handle ready to send: refuses while "session lost", replaces
 * a connection the server closed while it was idle (once), connects if
 * unconnected. */
static pg_result_t conn_ready(pg_conn_t *self)
{
    if (self->session_lost) {
        error_set_text(self, self->pinned ? "connection lost while migrating"
                                          : "connection lost inside a transaction: roll back");
        return PG_UNAVAILABLE;
    }
    if (self->conn != NULL) {
        PGTransactionStatusType before = PQtransactionStatus(self->conn);
        if (conn_closed_by_server(self)) {
            bool in_txn = self->txn_open || before == PQTRANS_INTRANS || before == PQTRANS_INERROR;
            conn_drop(self, in_txn);
            if (self->session_lost) {
                error_set_text(self, self->pinned
                                         ? "connection lost while migrating"
                                         : "connection lost inside a transaction: roll back");
                log_warn("pg: the server closed the connection inside a transaction or "
                         "migration; not reconnecting");
                return PG_UNAVAILABLE;
            }
            log_info("pg: the server closed the idle connection; reconnecting");
        }
    }
    if (self->conn == NULL)
        return conn_open(self);
    return PG_OK;
}

/* Turns 'res' (taken over: cleared or handed out) of the statement named
 * 'what' into a result. 'in_txn' says whether a transaction was open when
 * it was sent. On PG_OK, '*out' (if 'out' is not NULL) gets 'res'. A lost
 * connection is dropped, never retried. */
static pg_result_t conn_finish(pg_conn_t *self, PGresult *res, const char *what, bool in_txn,
                               bool values_possible, PGresult **out)
{
    ExecStatusType status = PQresultStatus(res);
    if (res != NULL && (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK)) {
        if (out != NULL)
            *out = res;
        else
            PQclear(res);
        return PG_OK;
    }
    error_set_result(self, res);
    pg_result_t result;
    if (PQstatus(self->conn) != CONNECTION_OK)
        result = PG_UNAVAILABLE; /* whatever the server said before it went */
    else if (self->sqlstate[0] != '\0')
        result = classify_sqlstate(self->sqlstate);
    else
        result = PG_ERROR; /* a libpq-side error on a live connection */
    if (res != NULL && status != PGRES_FATAL_ERROR && status != PGRES_NONFATAL_ERROR)
        /* e.g. COPY, which this module does not speak */
        snprintf(self->message, sizeof self->message, "unexpected result status %s",
                 PQresStatus(status));
    PQclear(res);
    error_log(self, what, result, values_possible);
    if (result == PG_UNAVAILABLE)
        conn_drop(self, in_txn);
    return result;
}

/* True when a transaction is open on the connection (ours or one the
 * caller began with a plain "BEGIN"). */
static bool conn_in_txn(const pg_conn_t *self)
{
    if (self->txn_open)
        return true;
    PGTransactionStatusType status = PQtransactionStatus(self->conn);
    return status == PQTRANS_INTRANS || status == PQTRANS_INERROR;
}

pg_conn_t *pg_conn_new(const char *dsn, const char *schema)
{
    assert(dsn != NULL);
    if (schema != NULL && (schema[0] == '\0' || strlen(schema) > pg_name_bytes_max)) {
        log_error("pg: schema name must be 1 to %d bytes", pg_name_bytes_max);
        return NULL;
    }
    pg_conn_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->dsn = strdup(dsn);
    self->schema = schema != NULL ? strdup(schema) : NULL;
    if (self->dsn == NULL || (schema != NULL && self->schema == NULL)) {
        pg_conn_destroy(&self);
        return NULL;
    }
    return self;
}

void pg_conn_destroy(pg_conn_t **self_p)
{
    assert(self_p != NULL);
    pg_conn_t *self = *self_p;
    if (self == NULL)
        return;
    self->pinned = false;
    conn_drop(self, false);
    free(self->dsn);
    free(self->schema);
    free(self);
    *self_p = NULL;
}

pg_result_t pg_exec(pg_conn_t *self, const char *sql, int nparams, const char *const *params,
                    PGresult **out)
{
    assert(self != NULL && sql != NULL && nparams >= 0 && (nparams == 0 || params != NULL));
    if (out != NULL)
        *out = NULL;
    error_clear(self);
    pg_result_t result = conn_ready(self);
    if (result != PG_OK)
        return result;
    char label[pg_sql_log_bytes_max + 1];
    sql_label(label, sizeof label, sql);
    bool in_txn = conn_in_txn(self);
    PGresult *res = PQexecParams(self->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    return conn_finish(self, res, label, in_txn, nparams > 0, out);
}

/* The cache slot of statement 'name', or -1. */
static int statement_find(const pg_conn_t *self, const char *name)
{
    for (size_t i = 0; i < self->statement_count; i++)
        if (strcmp(self->statements[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Makes the connection ready and statement 'name' prepared on it (once
 * per connection). */
static pg_result_t statement_ready(pg_conn_t *self, const char *name, const char *sql, int nparams)
{
    if (name[0] == '\0' || strlen(name) > pg_name_bytes_max) {
        error_set_text(self, "prepared statement name must be 1 to 63 bytes");
        log_error("pg: %s", self->message);
        return PG_ERROR;
    }
    pg_result_t result = conn_ready(self);
    if (result != PG_OK)
        return result;
    int slot = statement_find(self, name);
    if (slot >= 0 && strcmp(self->statements[slot].sql, sql) != 0) {
        error_set_text(self, "prepared statement name reused for different SQL");
        log_error("pg: %s: %s", name, self->message);
        return PG_ERROR;
    }
    bool in_txn = conn_in_txn(self);
    if (slot < 0) {
        if (self->statement_count == pg_statements_max) {
            error_set_text(self, "too many prepared statements on one connection");
            log_error("pg: %s: %s (pg_statements_max %d)", name, self->message, pg_statements_max);
            return PG_ERROR;
        }
        char *sql_copy = strdup(sql);
        if (sql_copy == NULL) {
            error_set_text(self, "out of memory");
            return PG_ERROR;
        }
        PGresult *res = PQprepare(self->conn, name, sql, nparams, NULL);
        result = conn_finish(self, res, name, in_txn, false, NULL);
        if (result != PG_OK) {
            free(sql_copy);
            return result;
        }
        slot = (int)self->statement_count++;
        snprintf(self->statements[slot].name, sizeof self->statements[slot].name, "%s", name);
        self->statements[slot].sql = sql_copy;
    }
    return PG_OK;
}

pg_result_t pg_exec_prepared(pg_conn_t *self, const char *name, const char *sql, int nparams,
                             const char *const *params, PGresult **out)
{
    assert(self != NULL && name != NULL && sql != NULL && nparams >= 0 &&
           (nparams == 0 || params != NULL));
    if (out != NULL)
        *out = NULL;
    error_clear(self);
    pg_result_t result = statement_ready(self, name, sql, nparams);
    if (result != PG_OK)
        return result;
    bool in_txn = conn_in_txn(self);
    PGresult *res = PQexecPrepared(self->conn, name, nparams, params, NULL, NULL, 0);
    return conn_finish(self, res, name, in_txn, nparams > 0, out);
}

/* The array literal of column 'column' of 'rows' ("{\"a\",NULL}"),
 * malloc'd; NULL when memory runs out. */
static char *rows_column_literal(const char *const *const *rows, size_t count, int column)
{
    size_t size = 3;
    for (size_t i = 0; i < count; i++)
        size += rows[i][column] == NULL ? 5 : 2 * strlen(rows[i][column]) + 3;
    char *literal = malloc(size), *p = literal;
    if (literal == NULL)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; i < count; i++) {
        if (i > 0)
            *p++ = ',';
        const char *value = rows[i][column];
        if (value == NULL) {
            memcpy(p, "NULL", 4);
            p += 4;
            continue;
        }
        *p++ = '"';
        for (; *value != '\0'; value++) {
            if (*value == '"' || *value == '\\')
                *p++ = '\\';
            *p++ = *value;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return literal;
}

pg_result_t pg_exec_prepared_rows(pg_conn_t *self, const char *name, const char *sql, int ncolumns,
                                  size_t count, const char *const *const *rows, PGresult **out)
{
    assert(self != NULL && ncolumns > 0 && count > 0 && rows != NULL);
    if (out != NULL)
        *out = NULL;
    char **columns = calloc((size_t)ncolumns, sizeof *columns);
    bool built = columns != NULL;
    for (int j = 0; built && j < ncolumns; j++)
        built = (columns[j] = rows_column_literal(rows, count, j)) != NULL;
    pg_result_t result = PG_ERROR;
    if (built)
        result = pg_exec_prepared(self, name, sql, ncolumns, (const char *const *)columns, out);
    else
        error_set_text(self, "out of memory");
    for (int j = 0; columns != NULL && j < ncolumns; j++)
        free(columns[j]);
    free(columns);
    return result;
}

/* Reads the results of the pipeline pg_exec_prepared_batch sent: BEGIN,
 * 'count' statements, COMMIT, then the sync. Returns the first failure
 * (PG_OK: committed). */
static pg_result_t batch_collect(pg_conn_t *self, const char *name, size_t count, PGresult **out)
{
    pg_result_t first = PG_OK;
    for (size_t q = 0; q < count + 2; q++) {
        PGresult *res = PQgetResult(self->conn);
        if (res == NULL) { /* the connection failed: no more results */
            if (first == PG_OK) {
                error_set_text(self, PQerrorMessage(self->conn));
                first = PG_UNAVAILABLE;
            }
            return first;
        }
        ExecStatusType status = PQresultStatus(res);
        const char *what = q == 0 ? "BEGIN" : q == count + 1 ? "COMMIT" : name;
        if (status == PGRES_PIPELINE_ABORTED) { /* after the failure already kept */
            PQclear(res);
        } else if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
            if (q == count + 1 && strcmp(PQcmdStatus(res), "COMMIT") != 0 && first == PG_OK) {
                error_set_text(self, "transaction was rolled back: a statement in it had failed");
                first = PG_ERROR;
            }
            if (q >= 1 && q <= count)
                out[q - 1] = res;
            else
                PQclear(res);
        } else {
            pg_result_t result = conn_finish(self, res, what, true, q >= 1 && q <= count, NULL);
            if (first == PG_OK)
                first = result;
            if (result == PG_UNAVAILABLE || self->conn == NULL)
                return first; /* conn_finish dropped the connection */
        }
        PGresult *extra = PQgetResult(self->conn); /* each query's results end with NULL */
        if (extra != NULL) {
            PQclear(extra);
            error_set_text(self, "unexpected extra result in a pipeline");
            return first == PG_OK ? PG_ERROR : first;
        }
    }
    PGresult *sync = PQgetResult(self->conn);
    if (PQresultStatus(sync) != PGRES_PIPELINE_SYNC && first == PG_OK) {
        /* COMMIT was answered: a connection that went before the sync
         * leaves the outcome unknown, not failed */
        bool lost = PQstatus(self->conn) != CONNECTION_OK;
        error_set_text(self, lost ? "connection lost at the end of a pipeline"
                                  : "pipeline ended without its sync");
        first = lost ? PG_UNAVAILABLE : PG_ERROR;
    }
    PQclear(sync);
    return first;
}

pg_result_t pg_exec_prepared_batch(pg_conn_t *self, const char *name, const char *sql, int nparams,
                                   size_t count, const char *const *const *params, PGresult **out)
{
    assert(self != NULL && name != NULL && sql != NULL && nparams >= 0 && count > 0 &&
           params != NULL && out != NULL);
    for (size_t i = 0; i < count; i++)
        out[i] = NULL;
    error_clear(self);
    pg_result_t result = statement_ready(self, name, sql, nparams);
    if (result != PG_OK)
        return result;
    if (conn_in_txn(self)) {
        error_set_text(self, "a transaction is already open on this connection");
        log_error("pg: batch: %s", self->message);
        return PG_ERROR;
    }
    if (PQenterPipelineMode(self->conn) != 1) {
        error_set_text(self, PQerrorMessage(self->conn));
        log_error("pg: batch: cannot enter pipeline mode: %s", self->message);
        return PG_ERROR;
    }
    bool sent = PQsendQueryParams(self->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1;
    for (size_t i = 0; sent && i < count; i++)
        sent = PQsendQueryPrepared(self->conn, name, nparams, params[i], NULL, NULL, 0) == 1;
    sent = sent && PQsendQueryParams(self->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1;
    sent = sent && PQpipelineSync(self->conn) == 1;
    if (!sent) {
        error_set_text(self, PQerrorMessage(self->conn));
        result = PG_UNAVAILABLE;
    } else {
        result = batch_collect(self, name, count, out);
    }
    if (self->conn != NULL && PQstatus(self->conn) == CONNECTION_OK &&
        PQexitPipelineMode(self->conn) == 1) {
        if (PQtransactionStatus(self->conn) != PQTRANS_IDLE) /* failed inside: end it */
            pg_rollback(self);
    } else if (self->conn != NULL) {
        conn_drop(self, false); /* a pipeline that cannot end: start afresh */
        if (result == PG_OK)
            result = PG_UNAVAILABLE;
    }
    if (self->conn == NULL && !self->pinned)
        self->session_lost = false; /* the transaction lost was this call's own */
    if (result != PG_OK) {
        for (size_t i = 0; i < count; i++) {
            PQclear(out[i]);
            out[i] = NULL;
        }
        if (result == PG_UNAVAILABLE)
            log_warn("pg: batch of %zu %s: connection lost: %s", count, name, self->message);
    }
    return result;
}

pg_result_t pg_begin(pg_conn_t *self)
{
    assert(self != NULL);
    error_clear(self);
    if (self->txn_open) {
        error_set_text(self, "a transaction is already open on this connection");
        log_error("pg: begin: %s", self->message);
        return PG_ERROR;
    }
    pg_result_t result = conn_ready(self);
    if (result != PG_OK)
        return result;
    if (conn_in_txn(self)) {
        error_set_text(self, "a transaction is already open on this connection");
        log_error("pg: begin: %s", self->message);
        return PG_ERROR;
    }
    result = conn_finish(self, PQexec(self->conn, "BEGIN"), "BEGIN", false, false, NULL);
    if (result == PG_OK)
        self->txn_open = true;
    return result;
}

pg_result_t pg_commit(pg_conn_t *self)
{
    assert(self != NULL);
    error_clear(self);
    if (!self->txn_open && !self->session_lost) {
        error_set_text(self, "no transaction is open");
        log_error("pg: commit: %s", self->message);
        return PG_ERROR;
    }
    pg_result_t result = conn_ready(self);
    if (result != PG_OK) {
        pg_rollback(self); /* closes our side: the server side died with the connection */
        return result;
    }
    PGresult *res = PQexec(self->conn, "COMMIT");
    bool committed =
        PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;
    bool rolled_back = PQresultStatus(res) == PGRES_COMMAND_OK && !committed;
    result = conn_finish(self, res, "COMMIT", true, false, NULL);
    self->txn_open = false;
    if (!self->pinned)
        self->session_lost = false;
    if (result == PG_OK && rolled_back) {
        /* COMMIT of a failed transaction answers ROLLBACK, not an error. */
        error_set_text(self, "transaction was rolled back: a statement in it had failed");
        log_error("pg: commit: %s", self->message);
        return PG_ERROR;
    }
    return result;
}

bool pg_transaction_failed(const pg_conn_t *self)
{
    if (self->session_lost)
        return true;
    if (!self->txn_open)
        return false;
    return self->conn == NULL || PQstatus(self->conn) != CONNECTION_OK ||
           PQtransactionStatus(self->conn) != PQTRANS_INTRANS;
}

void pg_rollback(pg_conn_t *self)
{
    assert(self != NULL);
    self->txn_open = false;
    if (!self->pinned)
        self->session_lost = false;
    if (self->conn == NULL || PQtransactionStatus(self->conn) == PQTRANS_IDLE)
        return;
    PGresult *res = PQexec(self->conn, "ROLLBACK");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        /* The server rolls back when the session ends: end it. */
        log_warn("pg: rollback failed; closing the connection");
        conn_drop(self, false);
    }
    PQclear(res);
}

const char *pg_error_sqlstate(const pg_conn_t *self)
{
    return self->sqlstate;
}

const char *pg_error_constraint(const pg_conn_t *self)
{
    return self->constraint;
}

const char *pg_error_message(const pg_conn_t *self)
{
    return self->message;
}

/* --- migrations ------------------------------------------------------------ */

/* Checks that 'migrations' are complete and strictly sorted by version.
 * Returns false after logging the first problem. */
static bool migrations_valid(const pg_migration_t *migrations, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (migrations[i].version == NULL || migrations[i].sql == NULL) {
            log_error("pg: migrate: migration #%zu has no version or no SQL", i);
            return false;
        }
        if (i > 0 && strcmp(migrations[i - 1].version, migrations[i].version) >= 0) {
            log_error("pg: migrate: versions out of order or repeated: %s then %s",
                      migrations[i - 1].version, migrations[i].version);
            return false;
        }
    }
    return true;
}

/* Takes the session advisory lock of our schema, waiting at most
 * pg_migrate_lock_wait_ms. The lock_timeout is set for this transaction
 * only; the lock itself is session-level and outlives the COMMIT. */
static pg_result_t migrate_lock(pg_conn_t *self)
{
    char wait_ms[24];
    snprintf(wait_ms, sizeof wait_ms, "%d", pg_migrate_lock_wait_ms);
    const char *timeout_params[] = {wait_ms};
    const char *schema_params[] = {self->schema};
    pg_result_t result = pg_begin(self);
    if (result == PG_OK)
        result = pg_exec(self, "SELECT pg_catalog.set_config('lock_timeout', $1, true)", 1,
                         timeout_params, NULL);
    if (result == PG_OK)
        result = pg_exec(self,
                         "SELECT pg_catalog.pg_advisory_lock("
                         "pg_catalog.hashtext('paygate.migrate.' || $1))",
                         1, schema_params, NULL);
    if (result == PG_OK)
        return pg_commit(self);
    if (strcmp(self->sqlstate, "55P03") == 0)
        log_error("pg: migrate: schema %s: another instance held the migration lock for over "
                  "%d ms",
                  self->schema, pg_migrate_lock_wait_ms);
    pg_rollback(self);
    return result;
}

/* Releases the advisory lock (a lost connection has released it). */
static void migrate_unlock(pg_conn_t *self)
{
    if (self->conn == NULL || self->session_lost)
        return;
    const char *params[] = {self->schema};
    (void)pg_exec(self,
                  "SELECT pg_catalog.pg_advisory_unlock("
                  "pg_catalog.hashtext('paygate.migrate.' || $1))",
                  1, params, NULL);
}

/* Creates our schema and its schema_migrations table if missing, and
 * points search_path at the schema. The schema name reaches the server
 * only as a parameter: format('%I') quotes it there. */
static pg_result_t migrate_prepare_schema(pg_conn_t *self)
{
    const char *params[] = {self->schema};
    pg_result_t result =
        pg_exec(self, "SELECT pg_catalog.set_config('paygate.schema', $1, false)", 1, params, NULL);
    if (result == PG_OK)
        result = pg_exec(self,
                         "DO $$ BEGIN EXECUTE pg_catalog.format('CREATE SCHEMA IF NOT EXISTS %I', "
                         "pg_catalog.current_setting('paygate.schema')); END $$",
                         0, NULL, NULL);
    if (result == PG_OK)
        result = pg_exec(self,
                         "SELECT pg_catalog.set_config('search_path', pg_catalog.quote_ident($1), "
                         "false)",
                         1, params, NULL);
    if (result == PG_OK)
        result = pg_exec(self,
                         "CREATE TABLE IF NOT EXISTS schema_migrations ("
                         "version text PRIMARY KEY, "
                         "applied_at timestamptz NOT NULL DEFAULT now())",
                         0, NULL, NULL);
    return result;
}

/* True when 'version' is among the 'applied' rows (column 0). */
static bool migration_applied(const PGresult *applied, const char *version)
{
    int rows = PQntuples(applied);
    for (int row = 0; row < rows; row++)
        if (strcmp(PQgetvalue(applied, row, 0), version) == 0)
            return true;
    return false;
}

/* Applies 'migration' and records its version in one transaction. Its
 * body is static SQL shipped in the binary and may hold several
 * statements, so it goes through PQexec (the simple protocol); it must
 * not COMMIT or ROLLBACK by itself. On failure everything is rolled back
 * and the error logged with the version. */
static pg_result_t migrate_apply(pg_conn_t *self, const pg_migration_t *migration)
{
    pg_result_t result = pg_begin(self);
    if (result != PG_OK)
        return result;
    result = conn_finish(self, PQexec(self->conn, migration->sql), migration->version, true, false,
                         NULL);
    if (result == PG_OK && PQtransactionStatus(self->conn) != PQTRANS_INTRANS) {
        error_set_text(self, "a migration must not end the transaction (COMMIT/ROLLBACK)");
        result = PG_ERROR;
    }
    if (result == PG_OK) {
        const char *params[] = {migration->version};
        result =
            pg_exec(self, "INSERT INTO schema_migrations (version) VALUES ($1)", 1, params, NULL);
    }
    if (result == PG_OK)
        result = pg_commit(self);
    else
        pg_rollback(self);
    if (result != PG_OK) {
        log_error("pg: migrate: schema %s: migration %s failed (SQLSTATE %s): %s", self->schema,
                  migration->version, self->sqlstate[0] != '\0' ? self->sqlstate : "-",
                  self->message);
        return result;
    }
    log_info("pg: migrate: schema %s: applied %s", self->schema, migration->version);
    return PG_OK;
}

pg_result_t pg_migrate(pg_conn_t *self, const pg_migration_t *migrations, size_t count)
{
    assert(self != NULL && (migrations != NULL || count == 0));
    error_clear(self);
    if (self->schema == NULL) {
        error_set_text(self, "pg_migrate needs a connection made with a schema");
        log_error("pg: migrate: %s", self->message);
        return PG_ERROR;
    }
    if (self->txn_open || self->session_lost) {
        error_set_text(self, "pg_migrate called inside a transaction");
        log_error("pg: migrate: %s", self->message);
        return PG_ERROR;
    }
    if (!migrations_valid(migrations, count)) {
        error_set_text(self, "invalid migration list");
        return PG_ERROR;
    }
    /* Connect (or reconnect) now, before the lock pins the session. */
    pg_result_t result = conn_ready(self);
    if (result != PG_OK)
        return result;
    self->pinned = true;
    result = migrate_lock(self);
    if (result != PG_OK) {
        self->pinned = false;
        self->session_lost = false;
        return result;
    }
    PGresult *applied = NULL;
    result = migrate_prepare_schema(self);
    if (result == PG_OK)
        result = pg_exec(self, "SELECT version FROM schema_migrations ORDER BY version", 0, NULL,
                         &applied);
    size_t applied_now = 0;
    for (size_t i = 0; result == PG_OK && i < count; i++) {
        if (migration_applied(applied, migrations[i].version))
            continue;
        result = migrate_apply(self, &migrations[i]);
        if (result == PG_OK)
            applied_now++;
    }
    if (result == PG_OK) {
        int rows = PQntuples(applied);
        for (int row = 0; row < rows; row++) {
            const char *version = PQgetvalue(applied, row, 0);
            bool known = false;
            for (size_t i = 0; i < count && !known; i++)
                known = strcmp(migrations[i].version, version) == 0;
            if (!known)
                log_warn("pg: migrate: schema %s: applied migration %s is unknown to this "
                         "binary (a newer version ran here?)",
                         self->schema, version);
        }
        log_info("pg: migrate: schema %s: %zu applied now, %zu known, all up to date", self->schema,
                 applied_now, count);
    }
    PQclear(applied);
    /* Keep the failing migration's error for the caller, not the unlock's. */
    char sqlstate[sizeof self->sqlstate];
    char constraint[sizeof self->constraint];
    char message[sizeof self->message];
    memcpy(sqlstate, self->sqlstate, sizeof sqlstate);
    memcpy(constraint, self->constraint, sizeof constraint);
    memcpy(message, self->message, sizeof message);
    migrate_unlock(self);
    memcpy(self->sqlstate, sqlstate, sizeof sqlstate);
    memcpy(self->constraint, constraint, sizeof constraint);
    memcpy(self->message, message, sizeof message);
    self->pinned = false;
    self->session_lost = false;
    return result;
}
