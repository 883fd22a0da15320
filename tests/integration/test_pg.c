/*
 * Integration tests of lib/pg against a real PostgreSQL 15: the one
 * ./dev test starts and names in PAYGATE_TEST_PG_DSN. Without it the test
 * fails (it is never skipped).
 *
 * Everything lives in throw-away schemas named pgtest_<pid>_*, dropped at
 * the end. One test stops and restarts the server itself (pg_ctl as the
 * postgres user, PAYGATE_PG_BIN); it always starts it again, even when the
 * test fails. ctest runs this test alone (RUN_SERIAL) for that reason.
 *
 * It must never touch schemas other than its own, nor leave the server
 * stopped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock/clock.h"
#include "log/log.h"
#include "pg/pg.h"
#include "pg_test_migrations.h"

enum {
    /* How fast a call must answer PG_UNAVAILABLE when the server is down
     * (connection refused is immediate; the bound is for slow machines). */
    unavailable_answer_ms_max = 3000,
    /* A connect that gets no answer must give up after about
     * pg_connect_timeout_s (libpq counts whole seconds). */
    connect_timeout_ms_min = 900,
    connect_timeout_ms_max = 4500,
    /* pg_ctl waits for start and stop at most this long. */
    pg_ctl_wait_s = 60,
    schema_bytes_max = 63,
    cell_bytes_max = 512,
    file_bytes_max = 65536,
};

static struct {
    const char *dsn;
    char prefix[32];                   /* "pgtest_<pid>_" */
    char schema[schema_bytes_max + 1]; /* prefix + "main": the shared tables */
    char data_dir[1024];               /* the server's data directory */
    pg_conn_t *db;                     /* on 'schema' */
} g;

/* --- helpers ------------------------------------------------------------- */

/* Writes the schema name 'suffix' of this run into 'out'. */
static void schema_name(char out[schema_bytes_max + 1], const char *suffix)
{
    int n = snprintf(out, schema_bytes_max + 1, "%s%s", g.prefix, suffix);
    assert_true(n > 0 && n <= schema_bytes_max);
}

/* Runs 'sql' on 'conn' and fails the test unless it is PG_OK. */
static void exec_ok(pg_conn_t *conn, const char *sql, int nparams, const char *const *params)
{
    pg_result_t result = pg_exec(conn, sql, nparams, params, NULL);
    if (result != PG_OK)
        fail_msg("'%s' answered %d: SQLSTATE %s: %s", sql, result, pg_error_sqlstate(conn),
                 pg_error_message(conn));
}

/* Runs 'sql' on 'conn' and copies the single cell it returns into 'out'
 * ("NULL" for SQL NULL); fails the test on any other outcome. */
static void query_cell(pg_conn_t *conn, const char *sql, int nparams, const char *const *params,
                       char out[cell_bytes_max])
{
    PGresult *res = NULL;
    pg_result_t result = pg_exec(conn, sql, nparams, params, &res);
    if (result != PG_OK)
        fail_msg("'%s' answered %d: SQLSTATE %s: %s", sql, result, pg_error_sqlstate(conn),
                 pg_error_message(conn));
    assert_int_equal(PQntuples(res), 1);
    assert_int_equal(PQnfields(res), 1);
    snprintf(out, cell_bytes_max, "%s", PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* Sleeps 'ms' milliseconds. */
static void sleep_ms_pg(int ms)
{
    struct timespec pause = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

/* The backend pid serving 'conn', as text. */
static void backend_pid(pg_conn_t *conn, char out[cell_bytes_max])
{
    query_cell(conn, "SELECT pg_backend_pid()", 0, NULL, out);
}

/* Terminates backend 'pid' (from another connection) and waits for it
 * to be gone, as a server restart or an administrator would. */
static void terminate_backend(const char *pid)
{
    char cell[cell_bytes_max];
    const char *params[] = {pid};
    query_cell(g.db, "SELECT pg_terminate_backend($1::int, 5000)", 1, params, cell);
    assert_string_equal(cell, "t");
}

/* Creates schema 'name' (quoted server-side, like pg_migrate does). */
static void schema_create(pg_conn_t *conn, const char *name)
{
    const char *params[] = {name};
    exec_ok(conn, "SELECT set_config('paygate.test_schema', $1, false)", 1, params);
    exec_ok(conn,
            "DO $$ BEGIN EXECUTE format('CREATE SCHEMA %I', "
            "current_setting('paygate.test_schema')); END $$",
            0, NULL);
}

/* True when table 'table' exists in schema 'schema'. */
static bool table_exists(const char *schema, const char *table)
{
    char cell[cell_bytes_max];
    const char *params[] = {schema, table};
    query_cell(g.db, "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = $2", 2,
               params, cell);
    return strcmp(cell, "1") == 0;
}

/* Reads file 'dir'/'name' into 'out' (NUL-terminated). */
static void file_read(const char *dir, const char *name, char out[file_bytes_max])
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    size_t n = fread(out, 1, file_bytes_max - 1, f);
    assert_true(feof(f));
    fclose(f);
    out[n] = '\0';
}

/* Runs "runuser -u postgres -- 'argv'..." from "/" (postgres may not read
 * our cwd) without our open descriptors (a daemon it leaves behind must
 * not hold them); 'quiet' sends its stdout to /dev/null. Returns the exit
 * status, or -1. */
static int run_as_postgres(const char *const argv[], bool quiet)
{
    const char *args[16] = {"runuser", "-u", "postgres", "--"};
    size_t n = 4;
    for (size_t i = 0; argv[i] != NULL && n < 15; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (chdir("/") != 0)
            _exit(127);
        if (quiet && freopen("/dev/null", "w", stdout) == NULL)
            _exit(127);
        close_range(3, ~0U, 0);
        execvp(args[0], (char *const *)args);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Path of pg_ctl from PAYGATE_PG_BIN. */
static const char *pg_ctl_path(void)
{
    static char path[512];
    const char *bin = getenv("PAYGATE_PG_BIN");
    if (bin == NULL || *bin == '\0')
        fail_msg("PAYGATE_PG_BIN is not set (./dev test sets it)");
    snprintf(path, sizeof path, "%s/pg_ctl", bin);
    return path;
}

/* True when the test server runs ("pg_ctl status" exits 0). */
static bool server_running(void)
{
    const char *argv[] = {pg_ctl_path(), "-D", g.data_dir, "status", NULL};
    return run_as_postgres(argv, true) == 0;
}

/* Stops the test server the way ./dev does (fast mode, waiting). */
static void server_stop(void)
{
    char wait_s[16];
    snprintf(wait_s, sizeof wait_s, "%d", pg_ctl_wait_s);
    const char *argv[] = {pg_ctl_path(), "-D", g.data_dir, "-m",   "fast",
                          "-w",          "-t", wait_s,     "stop", NULL};
    assert_int_equal(run_as_postgres(argv, false), 0);
}

/* Starts the test server again with its own config and ./dev's log file
 * (next to the data directory). Returns false when pg_ctl failed. */
static bool server_start(void)
{
    char wait_s[16];
    char log_path[1100];
    snprintf(wait_s, sizeof wait_s, "%d", pg_ctl_wait_s);
    snprintf(log_path, sizeof log_path, "%s/../postgres.log", g.data_dir);
    const char *argv[] = {pg_ctl_path(), "-D", g.data_dir, "-l",    log_path,
                          "-w",          "-t", wait_s,     "start", NULL};
    return run_as_postgres(argv, false) == 0;
}

/* Finds the server's data directory: PAYGATE_TEST_PG_DATA when set, else
 * the server's own answer to a superuser (./dev's test server trusts
 * 'postgres' on loopback). */
static void data_dir_find(void)
{
    const char *env = getenv("PAYGATE_TEST_PG_DATA");
    if (env != NULL && *env != '\0') {
        snprintf(g.data_dir, sizeof g.data_dir, "%s", env);
        return;
    }
    const char *const keys[] = {"dbname", "user", "connect_timeout", NULL};
    const char *const values[] = {g.dsn, "postgres", "5", NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("set PAYGATE_TEST_PG_DATA: cannot ask the server as 'postgres': %s",
                 PQerrorMessage(conn));
    PGresult *res = PQexec(conn, "SHOW data_directory");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(g.data_dir, sizeof g.data_dir, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(conn);
}

/* --- group setup and teardown -------------------------------------------- */

/* Creates this run's main schema and its tables. */
static int group_setup(void **state)
{
    (void)state;
    snprintf(g.prefix, sizeof g.prefix, "pgtest_%d_", (int)getpid());
    schema_name(g.schema, "main");
    pg_conn_t *admin = pg_conn_new(g.dsn, NULL);
    assert_non_null(admin);
    schema_create(admin, g.schema);
    pg_conn_destroy(&admin);
    assert_null(admin);

    g.db = pg_conn_new(g.dsn, g.schema);
    assert_non_null(g.db);
    exec_ok(g.db,
            "CREATE TABLE accounts ("
            " id bigint PRIMARY KEY,"
            " email text CONSTRAINT accounts_email_key UNIQUE,"
            " balance_minor bigint NOT NULL DEFAULT 0"
            "  CONSTRAINT accounts_balance_nonnegative CHECK (balance_minor >= 0))",
            0, NULL);
    exec_ok(g.db, "CREATE SEQUENCE attempts_seq", 0, NULL);
    return 0;
}

/* Restarts the server if a test left it down, and drops every schema of
 * this run. */
static int group_teardown(void **state)
{
    (void)state;
    if (g.data_dir[0] != '\0' && !server_running() && !server_start())
        fprintf(stderr, "test_pg: could not restart PostgreSQL in %s\n", g.data_dir);
    pg_conn_destroy(&g.db);
    pg_conn_t *admin = pg_conn_new(g.dsn, NULL);
    const char *params[] = {g.prefix};
    if (pg_exec(admin, "SELECT set_config('paygate.test_prefix', $1, false)", 1, params, NULL) !=
            PG_OK ||
        pg_exec(admin,
                "DO $$ DECLARE s text; BEGIN"
                " FOR s IN SELECT nspname FROM pg_namespace"
                "  WHERE left(nspname, length(current_setting('paygate.test_prefix')))"
                "        = current_setting('paygate.test_prefix')"
                " LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; END $$",
                0, NULL, NULL) != PG_OK)
        fprintf(stderr, "test_pg: could not drop schemas %s*: %s\n", g.prefix,
                pg_error_message(admin));
    pg_conn_destroy(&admin);
    return 0;
}

/* --- statements ---------------------------------------------------------- */

static void test_exec_params_and_results(void **state)
{
    (void)state;
    const char *insert[] = {"101", "alice@example.com", "500"};
    assert_int_equal(pg_exec(g.db,
                             "INSERT INTO accounts (id, email, balance_minor) VALUES ($1, $2, $3)",
                             3, insert, NULL),
                     PG_OK);

    PGresult *res = NULL;
    const char *id[] = {"101"};
    assert_int_equal(
        pg_exec(g.db, "SELECT email, balance_minor FROM accounts WHERE id = $1", 1, id, &res),
        PG_OK);
    assert_non_null(res);
    assert_int_equal(PQntuples(res), 1);
    assert_string_equal(PQgetvalue(res, 0, 0), "alice@example.com");
    assert_string_equal(PQgetvalue(res, 0, 1), "500");
    PQclear(res);

    /* No rows is success with an empty result. */
    const char *missing[] = {"999"};
    assert_int_equal(pg_exec(g.db, "SELECT email FROM accounts WHERE id = $1", 1, missing, &res),
                     PG_OK);
    assert_int_equal(PQntuples(res), 0);
    PQclear(res);

    /* A NULL parameter is SQL NULL; a value is never spliced into SQL. */
    char cell[cell_bytes_max];
    const char *null_param[] = {NULL};
    query_cell(g.db, "SELECT $1::text IS NULL", 1, null_param, cell);
    assert_string_equal(cell, "t");
    const char *hostile[] = {"x'); DROP TABLE accounts; --"};
    query_cell(g.db, "SELECT length($1::text)", 1, hostile, cell);
    assert_string_equal(cell, "28");
    query_cell(g.db, "SELECT count(*) FROM accounts WHERE id = 101", 0, NULL, cell);
    assert_string_equal(cell, "1");

    /* A bug in the SQL is PG_ERROR with its SQLSTATE, and no result. */
    res = (PGresult *)(uintptr_t)1; /* must be reset to NULL */
    assert_int_equal(pg_exec(g.db, "SELEC 1", 0, NULL, &res), PG_ERROR);
    assert_null(res);
    assert_string_equal(pg_error_sqlstate(g.db), "42601");
    assert_true(strlen(pg_error_message(g.db)) > 0);

    /* A data error too; the connection stays usable; success clears it. */
    const char *not_int[] = {"secret-hash"};
    assert_int_equal(pg_exec(g.db, "SELECT $1::int", 1, not_int, NULL), PG_ERROR);
    assert_string_equal(pg_error_sqlstate(g.db), "22P02");
    query_cell(g.db, "SELECT 1", 0, NULL, cell);
    assert_string_equal(pg_error_sqlstate(g.db), "");
    assert_string_equal(pg_error_message(g.db), "");
}

static void test_unique_violation_is_constraint(void **state)
{
    (void)state;
    const char *first[] = {"201", "bob@example.com"};
    exec_ok(g.db, "INSERT INTO accounts (id, email) VALUES ($1, $2)", 2, first);

    const char *same_email[] = {"202", "bob@example.com"};
    assert_int_equal(
        pg_exec(g.db, "INSERT INTO accounts (id, email) VALUES ($1, $2)", 2, same_email, NULL),
        PG_CONSTRAINT);
    assert_string_equal(pg_error_sqlstate(g.db), "23505");
    assert_string_equal(pg_error_constraint(g.db), "accounts_email_key");

    const char *same_id[] = {"201", "other@example.com"};
    assert_int_equal(
        pg_exec(g.db, "INSERT INTO accounts (id, email) VALUES ($1, $2)", 2, same_id, NULL),
        PG_CONSTRAINT);
    assert_string_equal(pg_error_sqlstate(g.db), "23505");
    assert_string_equal(pg_error_constraint(g.db), "accounts_pkey");

    const char *no_balance[] = {"203", NULL};
    assert_int_equal(pg_exec(g.db, "INSERT INTO accounts (id, balance_minor) VALUES ($1, $2)", 2,
                             no_balance, NULL),
                     PG_CONSTRAINT);
    assert_string_equal(pg_error_sqlstate(g.db), "23502");

    char cell[cell_bytes_max];
    query_cell(g.db, "SELECT count(*) FROM accounts WHERE id BETWEEN 201 AND 203", 0, NULL, cell);
    assert_string_equal(cell, "1");
}

static void test_check_violation_is_constraint(void **state)
{
    (void)state;
    const char *negative[] = {"301", "-1"};
    assert_int_equal(pg_exec(g.db, "INSERT INTO accounts (id, balance_minor) VALUES ($1, $2)", 2,
                             negative, NULL),
                     PG_CONSTRAINT);
    assert_string_equal(pg_error_sqlstate(g.db), "23514");
    assert_string_equal(pg_error_constraint(g.db), "accounts_balance_nonnegative");

    const char *ok[] = {"302", "10"};
    exec_ok(g.db, "INSERT INTO accounts (id, balance_minor) VALUES ($1, $2)", 2, ok);
    const char *debit[] = {"302", "11"};
    assert_int_equal(pg_exec(g.db,
                             "UPDATE accounts SET balance_minor = balance_minor - $2 WHERE id = $1",
                             2, debit, NULL),
                     PG_CONSTRAINT);
    assert_string_equal(pg_error_sqlstate(g.db), "23514");
    assert_string_equal(pg_error_constraint(g.db), "accounts_balance_nonnegative");
}

static void test_prepared_reused_and_reprepared_after_reconnect(void **state)
{
    (void)state;
    static const char *const sql = "SELECT email FROM accounts WHERE id = $1";
    const char *insert[] = {"401", "carol@example.com"};
    exec_ok(g.db, "INSERT INTO accounts (id, email) VALUES ($1, $2)", 2, insert);

    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    assert_non_null(conn);
    const char *id[] = {"401"};
    for (int i = 0; i < 3; i++) {
        PGresult *res = NULL;
        assert_int_equal(pg_exec_prepared(conn, "acct_email", sql, 1, id, &res), PG_OK);
        assert_int_equal(PQntuples(res), 1);
        assert_string_equal(PQgetvalue(res, 0, 0), "carol@example.com");
        PQclear(res);
    }
    /* Prepared once, executed three times (preparing twice would fail). */
    char cell[cell_bytes_max];
    query_cell(conn,
               "SELECT count(*) || '/' || sum(generic_plans + custom_plans)"
               " FROM pg_prepared_statements WHERE name = 'acct_email'",
               0, NULL, cell);
    assert_string_equal(cell, "1/3");

    /* One name is one statement: reusing it for other SQL is a bug. */
    assert_int_equal(pg_exec_prepared(conn, "acct_email", "SELECT 1", 0, NULL, NULL), PG_ERROR);

    /* The server drops the connection: the next call reconnects (nothing
     * was in flight) and prepares again on the new session. */
    char pid_before[cell_bytes_max], pid_after[cell_bytes_max];
    backend_pid(conn, pid_before);
    terminate_backend(pid_before);
    PGresult *res = NULL;
    assert_int_equal(pg_exec_prepared(conn, "acct_email", sql, 1, id, &res), PG_OK);
    assert_string_equal(PQgetvalue(res, 0, 0), "carol@example.com");
    PQclear(res);
    backend_pid(conn, pid_after);
    assert_string_not_equal(pid_before, pid_after);
    query_cell(conn,
               "SELECT count(*) || '/' || sum(generic_plans + custom_plans)"
               " FROM pg_prepared_statements WHERE name = 'acct_email'",
               0, NULL, cell);
    assert_string_equal(cell, "1/1");
    pg_conn_destroy(&conn);
}

/* --- transactions -------------------------------------------------------- */

static void test_transaction_commit_and_rollback(void **state)
{
    (void)state;
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max];

    assert_int_equal(pg_begin(conn), PG_OK);
    const char *a[] = {"501"};
    exec_ok(conn, "INSERT INTO accounts (id) VALUES ($1)", 1, a);
    query_cell(g.db, "SELECT count(*) FROM accounts WHERE id = 501", 0, NULL, cell);
    assert_string_equal(cell, "0");             /* not visible before commit */
    assert_int_equal(pg_begin(conn), PG_ERROR); /* no nesting */
    assert_int_equal(pg_commit(conn), PG_OK);
    query_cell(g.db, "SELECT count(*) FROM accounts WHERE id = 501", 0, NULL, cell);
    assert_string_equal(cell, "1");

    assert_int_equal(pg_begin(conn), PG_OK);
    const char *b[] = {"502"};
    exec_ok(conn, "INSERT INTO accounts (id) VALUES ($1)", 1, b);
    pg_rollback(conn);
    query_cell(g.db, "SELECT count(*) FROM accounts WHERE id = 502", 0, NULL, cell);
    assert_string_equal(cell, "0");

    /* A failed statement spoils the transaction: COMMIT does not commit
     * the statements before it, and says so. */
    assert_int_equal(pg_begin(conn), PG_OK);
    const char *c[] = {"503"};
    exec_ok(conn, "INSERT INTO accounts (id) VALUES ($1)", 1, c);
    assert_int_equal(pg_exec(conn, "INSERT INTO accounts (id) VALUES ($1)", 1, c, NULL),
                     PG_CONSTRAINT);
    assert_int_equal(pg_exec(conn, "SELECT 1", 0, NULL, NULL), PG_ERROR);
    assert_string_equal(pg_error_sqlstate(conn), "25P02");
    assert_int_equal(pg_commit(conn), PG_ERROR);
    query_cell(g.db, "SELECT count(*) FROM accounts WHERE id = 503", 0, NULL, cell);
    assert_string_equal(cell, "0");

    assert_int_equal(pg_commit(conn), PG_ERROR); /* none open */
    pg_rollback(conn);                           /* none open: a no-op */
    query_cell(conn, "SELECT 1", 0, NULL, cell);
    pg_conn_destroy(&conn);
}

static void test_serialization_failure(void **state)
{
    (void)state;
    const char *row[] = {"601", "10"};
    exec_ok(g.db, "INSERT INTO accounts (id, balance_minor) VALUES ($1, $2)", 2, row);
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max];
    assert_int_equal(pg_begin(conn), PG_OK);
    exec_ok(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", 0, NULL);
    query_cell(conn, "SELECT balance_minor FROM accounts WHERE id = 601", 0, NULL, cell);
    assert_string_equal(cell, "10");
    exec_ok(g.db, "UPDATE accounts SET balance_minor = 20 WHERE id = 601", 0, NULL);
    assert_int_equal(pg_exec(conn,
                             "UPDATE accounts SET balance_minor = balance_minor + 1 WHERE id = 601",
                             0, NULL, NULL),
                     PG_SERIALIZATION);
    assert_string_equal(pg_error_sqlstate(conn), "40001");
    pg_rollback(conn);
    query_cell(g.db, "SELECT balance_minor FROM accounts WHERE id = 601", 0, NULL, cell);
    assert_string_equal(cell, "20");
    pg_conn_destroy(&conn);
}

static void test_statement_not_retried_when_connection_drops(void **state)
{
    (void)state;
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max];
    /* The backend dies while running the statement (after nextval, which
     * no rollback undoes): the outcome is unknown to the client. */
    assert_int_equal(pg_exec(conn,
                             "SELECT nextval('attempts_seq'),"
                             " pg_terminate_backend(pg_backend_pid()), pg_sleep(5)",
                             0, NULL, NULL),
                     PG_UNAVAILABLE);
    query_cell(g.db, "SELECT last_value FROM attempts_seq", 0, NULL, cell);
    assert_string_equal(cell, "1"); /* ran once: not retried */
    /* The next call gets a fresh connection. */
    query_cell(conn, "SELECT 1", 0, NULL, cell);
    assert_string_equal(cell, "1");
    pg_conn_destroy(&conn);
}

static void test_connection_lost_inside_transaction(void **state)
{
    (void)state;
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max], pid[cell_bytes_max];
    assert_int_equal(pg_begin(conn), PG_OK);
    const char *a[] = {"701"};
    exec_ok(conn, "INSERT INTO accounts (id) VALUES ($1)", 1, a);
    backend_pid(conn, pid);
    terminate_backend(pid);

    /* No silent reconnect: 702 must not commit on its own without 701. */
    const char *b[] = {"702"};
    assert_int_equal(pg_exec(conn, "INSERT INTO accounts (id) VALUES ($1)", 1, b, NULL),
                     PG_UNAVAILABLE);
    assert_int_equal(pg_exec(conn, "SELECT 1", 0, NULL, NULL), PG_UNAVAILABLE);
    assert_int_equal(pg_commit(conn), PG_UNAVAILABLE);
    query_cell(g.db, "SELECT count(*) FROM accounts WHERE id IN (701, 702)", 0, NULL, cell);
    assert_string_equal(cell, "0");

    /* Once the transaction is closed, the handle works again. */
    query_cell(conn, "SELECT 1", 0, NULL, cell);
    assert_int_equal(pg_begin(conn), PG_OK);
    backend_pid(conn, pid);
    terminate_backend(pid);
    assert_int_equal(pg_exec(conn, "SELECT 1", 0, NULL, NULL), PG_UNAVAILABLE);
    pg_rollback(conn);
    query_cell(conn, "SELECT 1", 0, NULL, cell);
    pg_conn_destroy(&conn);
}

static void test_connect_timeout_is_bounded(void **state)
{
    (void)state;
    /* A listener that never answers: TCP connects, the startup packet
     * gets no reply. The DSN asks for 30 s; pg caps it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(listen(fd, 4), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    char dsn[128];
    snprintf(dsn, sizeof dsn, "host=127.0.0.1 port=%d dbname=x user=x connect_timeout=30",
             ntohs(addr.sin_port));

    pg_conn_t *conn = pg_conn_new(dsn, NULL);
    int64_t start_ms = clock_now_ms();
    assert_int_equal(pg_exec(conn, "SELECT 1", 0, NULL, NULL), PG_UNAVAILABLE);
    int64_t took_ms = clock_now_ms() - start_ms;
    assert_in_range(took_ms, connect_timeout_ms_min, connect_timeout_ms_max);
    assert_string_equal(pg_error_sqlstate(conn), "");
    assert_true(strlen(pg_error_message(conn)) > 0);
    pg_conn_destroy(&conn);
    close(fd);
}

/* --- pipelined batches and pg_transaction_failed -------------------------- */

/* The table of the batch tests (in the run's main schema). */
static void batch_table_create(void)
{
    static bool created;
    if (created)
        return;
    exec_ok(g.db, "CREATE TABLE batch_rows (id bigint PRIMARY KEY, note text NOT NULL)", 0, NULL);
    exec_ok(g.db, "CREATE TABLE batch_locks (id bigint PRIMARY KEY, n bigint NOT NULL)", 0, NULL);
    exec_ok(g.db, "INSERT INTO batch_locks (id, n) VALUES (1, 0), (2, 0), (3, 0)", 0, NULL);
    created = true;
}

static const char *const batch_insert_sql =
    "INSERT INTO batch_rows (id, note) VALUES ($1, $2) RETURNING id, upper(note)";

static void test_prepared_batch_commits_together(void **state)
{
    (void)state;
    batch_table_create();
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max];
    const char *rows[][2] = {{"1001", "a"}, {"1002", "b"}, {"1003", "c"}, {"1004", "d"}};
    const char *const *params[] = {rows[0], rows[1], rows[2], rows[3]};
    PGresult *out[4];
    assert_int_equal(
        pg_exec_prepared_batch(conn, "batch_insert", batch_insert_sql, 2, 4, params, out), PG_OK);
    for (int i = 0; i < 4; i++) {
        assert_non_null(out[i]);
        assert_int_equal(PQresultStatus(out[i]), PGRES_TUPLES_OK);
        assert_int_equal(PQntuples(out[i]), 1);
        assert_string_equal(PQgetvalue(out[i], 0, 0), rows[i][0]);
        char upper[2] = {(char)(rows[i][1][0] - 'a' + 'A'), '\0'};
        assert_string_equal(PQgetvalue(out[i], 0, 1), upper);
        PQclear(out[i]);
    }
    /* Committed (another session sees them), in one transaction. */
    query_cell(g.db, "SELECT count(*) FROM batch_rows WHERE id BETWEEN 1001 AND 1004", 0, NULL,
               cell);
    assert_string_equal(cell, "4");
    query_cell(g.db,
               "SELECT count(DISTINCT xmin::text) FROM batch_rows WHERE id BETWEEN 1001 AND 1004",
               0, NULL, cell);
    assert_string_equal(cell, "1");
    assert_false(pg_transaction_failed(conn));

    /* The statement stays prepared: a single call and a batch of one. */
    const char *one[] = {"1005", "e"};
    const char *const *one_params[] = {one};
    assert_int_equal(pg_exec_prepared(conn, "batch_insert", batch_insert_sql, 2, one, NULL), PG_OK);
    one[0] = "1006";
    assert_int_equal(
        pg_exec_prepared_batch(conn, "batch_insert", batch_insert_sql, 2, 1, one_params, out),
        PG_OK);
    assert_string_equal(PQgetvalue(out[0], 0, 0), "1006");
    PQclear(out[0]);
    query_cell(conn,
               "SELECT count(*) || '/' || sum(generic_plans + custom_plans)"
               " FROM pg_prepared_statements WHERE name = 'batch_insert'",
               0, NULL, cell);
    assert_string_equal(cell, "1/6");
    pg_conn_destroy(&conn);
}

static const char rows_insert_sql[] =
    "INSERT INTO rows_notes (id, note) SELECT * FROM unnest($1::bigint[], $2::text[])"
    " RETURNING id, note";

/* pg_exec_prepared_rows: one statement for all rows, each value exactly
 * as given (quotes, backslashes, braces, commas, "NULL" the text) and
 * NULL as SQL NULL; a failing row fails the statement whole. */
static void test_prepared_rows(void **state)
{
    (void)state;
    exec_ok(g.db, "CREATE TABLE rows_notes (id bigint PRIMARY KEY, note text)", 0, NULL);
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max];
    const char *rows[][2] = {{"1201", "plain"},
                             {"1202", "\"quoted\", {braces}, a\\b and \\\""},
                             {"1203", NULL},
                             {"1204", "NULL"},
                             {"1205", ""}};
    const char *const *params[] = {rows[0], rows[1], rows[2], rows[3], rows[4]};
    PGresult *out = NULL;
    assert_int_equal(
        pg_exec_prepared_rows(conn, "rows_insert", rows_insert_sql, 2, 5, params, &out), PG_OK);
    assert_int_equal(PQntuples(out), 5);
    PQclear(out);
    for (int i = 0; i < 5; i++) {
        const char *id[] = {rows[i][0]};
        PGresult *row = NULL;
        assert_int_equal(
            pg_exec(g.db, "SELECT note FROM rows_notes WHERE id = $1::bigint", 1, id, &row), PG_OK);
        assert_int_equal(PQntuples(row), 1);
        if (rows[i][1] == NULL) {
            assert_true(PQgetisnull(row, 0, 0));
        } else {
            assert_false(PQgetisnull(row, 0, 0));
            assert_string_equal(PQgetvalue(row, 0, 0), rows[i][1]);
        }
        PQclear(row);
    }
    /* One statement: one transaction for all five. */
    query_cell(g.db,
               "SELECT count(DISTINCT xmin::text) FROM rows_notes WHERE id BETWEEN 1201 AND 1205",
               0, NULL, cell);
    assert_string_equal(cell, "1");

    /* A duplicate among new rows: nothing of the statement stays. */
    const char *more[][2] = {{"1206", "new"}, {"1201", "again"}, {"1207", "new"}};
    const char *const *more_params[] = {more[0], more[1], more[2]};
    out = (PGresult *)(uintptr_t)1; /* must be reset to NULL */
    assert_int_equal(
        pg_exec_prepared_rows(conn, "rows_insert", rows_insert_sql, 2, 3, more_params, &out),
        PG_CONSTRAINT);
    assert_null(out);
    assert_string_equal(pg_error_constraint(conn), "rows_notes_pkey");
    query_cell(g.db, "SELECT count(*) FROM rows_notes WHERE id IN (1206, 1207)", 0, NULL, cell);
    assert_string_equal(cell, "0");
    pg_conn_destroy(&conn);
}

static void test_prepared_batch_failure_leaves_nothing(void **state)
{
    (void)state;
    batch_table_create();
    const char *taken[] = {"1100", "taken"};
    exec_ok(g.db, "INSERT INTO batch_rows (id, note) VALUES ($1, $2)", 2, taken);
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max];
    const char *rows[][2] = {{"1101", "a"}, {"1102", "b"}, {"1100", "dup"}, {"1103", "d"}};
    const char *const *params[] = {rows[0], rows[1], rows[2], rows[3]};
    PGresult *out[4];
    for (int i = 0; i < 4; i++)
        out[i] = (PGresult *)(uintptr_t)1; /* must be reset to NULL */
    assert_int_equal(
        pg_exec_prepared_batch(conn, "batch_insert", batch_insert_sql, 2, 4, params, out),
        PG_CONSTRAINT);
    for (int i = 0; i < 4; i++)
        assert_null(out[i]);
    assert_string_equal(pg_error_sqlstate(conn), "23505");
    assert_string_equal(pg_error_constraint(conn), "batch_rows_pkey");
    query_cell(g.db, "SELECT count(*) FROM batch_rows WHERE id BETWEEN 1101 AND 1103", 0, NULL,
               cell);
    assert_string_equal(cell, "0"); /* nor those before the failure */

    /* The connection is usable: out of the pipeline, no transaction. */
    assert_false(pg_transaction_failed(conn));
    query_cell(conn, "SELECT 1", 0, NULL, cell);
    assert_string_equal(cell, "1");
    assert_string_equal(pg_error_sqlstate(conn), "");
    assert_int_equal(pg_begin(conn), PG_OK);
    pg_rollback(conn);

    /* A NOT NULL violation in the first statement: the same. */
    const char *null_note[] = {"1104", NULL};
    params[0] = null_note;
    assert_int_equal(
        pg_exec_prepared_batch(conn, "batch_insert", batch_insert_sql, 2, 2, params, out),
        PG_CONSTRAINT);
    assert_string_equal(pg_error_sqlstate(conn), "23502");
    assert_null(out[0]);
    assert_null(out[1]);

    /* Without the bad rows, the batch commits. */
    params[0] = rows[0];
    params[2] = rows[3];
    assert_int_equal(
        pg_exec_prepared_batch(conn, "batch_insert", batch_insert_sql, 2, 3, params, out), PG_OK);
    for (int i = 0; i < 3; i++)
        PQclear(out[i]);
    query_cell(g.db,
               "SELECT string_agg(id::text, ',' ORDER BY id) FROM batch_rows"
               " WHERE id BETWEEN 1100 AND 1104",
               0, NULL, cell);
    assert_string_equal(cell, "1100,1101,1102,1103");
    pg_conn_destroy(&conn);
}

static void test_prepared_batch_refused_inside_transaction(void **state)
{
    (void)state;
    batch_table_create();
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max];
    const char *row[] = {"1201", "a"};
    const char *const *params[] = {row};
    PGresult *out[1];
    assert_int_equal(pg_begin(conn), PG_OK);
    const char *before[] = {"1200", "in txn"};
    exec_ok(conn, "INSERT INTO batch_rows (id, note) VALUES ($1, $2)", 2, before);
    assert_int_equal(
        pg_exec_prepared_batch(conn, "batch_insert", batch_insert_sql, 2, 1, params, out),
        PG_ERROR);
    assert_null(out[0]);
    /* The caller's transaction is untouched: still open, still healthy. */
    assert_false(pg_transaction_failed(conn));
    query_cell(g.db, "SELECT count(*) FROM batch_rows WHERE id IN (1200, 1201)", 0, NULL, cell);
    assert_string_equal(cell, "0");
    assert_int_equal(pg_commit(conn), PG_OK);
    query_cell(g.db, "SELECT string_agg(id::text, ',') FROM batch_rows WHERE id IN (1200, 1201)", 0,
               NULL, cell);
    assert_string_equal(cell, "1200");

    /* So is a transaction begun with a plain BEGIN. */
    exec_ok(conn, "BEGIN", 0, NULL);
    assert_int_equal(
        pg_exec_prepared_batch(conn, "batch_insert", batch_insert_sql, 2, 1, params, out),
        PG_ERROR);
    exec_ok(conn, "ROLLBACK", 0, NULL);
    assert_int_equal(
        pg_exec_prepared_batch(conn, "batch_insert", batch_insert_sql, 2, 1, params, out), PG_OK);
    PQclear(out[0]);
    pg_conn_destroy(&conn);
}

typedef struct {
    const char *victim_pid; /* the backend to terminate once it waits for a lock */
    bool terminated;
} killer_job_t;

/* Thread body: waits (up to 10 s) for backend 'victim_pid' to wait for a
 * lock, then terminates it from a connection of its own. */
static void *lock_waiter_killer(void *arg)
{
    killer_job_t *job = arg;
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    const char *params[] = {job->victim_pid};
    for (int i = 0; i < 500 && !job->terminated; i++) {
        PGresult *res = NULL;
        if (pg_exec(conn,
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                    " WHERE pid = $1::int AND wait_event_type = 'Lock'",
                    1, params, &res) == PG_OK) {
            job->terminated = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
            PQclear(res);
        }
        if (!job->terminated)
            sleep_ms_pg(20);
    }
    pg_conn_destroy(&conn);
    return NULL;
}

static void test_prepared_batch_connection_lost(void **state)
{
    (void)state;
    batch_table_create();
    static const char *const sql = "UPDATE batch_locks SET n = n + 1 WHERE id = $1 RETURNING n";
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char cell[cell_bytes_max], pid[cell_bytes_max], pid_after[cell_bytes_max];
    const char *ids[][1] = {{"1"}, {"2"}, {"3"}};
    const char *const *params[] = {ids[0], ids[1], ids[2]};
    PGresult *out[3];

    /* Terminated while idle: nothing was sent yet, so the batch runs on
     * a fresh connection. */
    backend_pid(conn, pid);
    terminate_backend(pid);
    assert_int_equal(pg_exec_prepared_batch(conn, "batch_bump", sql, 1, 3, params, out), PG_OK);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(PQgetvalue(out[i], 0, 0), "1");
        PQclear(out[i]);
    }
    backend_pid(conn, pid_after);
    assert_string_not_equal(pid, pid_after);

    /* Terminated in the middle of the batch (its second statement waits
     * for a row lock held by another session): PG_UNAVAILABLE, nothing
     * of it committed, and the next call reconnects. */
    pg_conn_t *holder = pg_conn_new(g.dsn, g.schema);
    assert_int_equal(pg_begin(holder), PG_OK);
    exec_ok(holder, "SELECT n FROM batch_locks WHERE id = 2 FOR UPDATE", 0, NULL);
    backend_pid(conn, pid);
    killer_job_t job = {.victim_pid = pid};
    pthread_t killer;
    assert_int_equal(pthread_create(&killer, NULL, lock_waiter_killer, &job), 0);
    for (int i = 0; i < 3; i++)
        out[i] = (PGresult *)(uintptr_t)1;
    pg_result_t result = pg_exec_prepared_batch(conn, "batch_bump", sql, 1, 3, params, out);
    pthread_join(killer, NULL);
    pg_rollback(holder);
    pg_conn_destroy(&holder);
    assert_true(job.terminated);
    assert_int_equal(result, PG_UNAVAILABLE);
    for (int i = 0; i < 3; i++)
        assert_null(out[i]);
    assert_false(pg_transaction_failed(conn));
    query_cell(g.db, "SELECT string_agg(n::text, ',' ORDER BY id) FROM batch_locks", 0, NULL, cell);
    assert_string_equal(cell, "1,1,1");

    query_cell(conn, "SELECT 1", 0, NULL, cell);
    backend_pid(conn, pid_after);
    assert_string_not_equal(pid, pid_after);
    assert_int_equal(pg_exec_prepared_batch(conn, "batch_bump", sql, 1, 3, params, out), PG_OK);
    for (int i = 0; i < 3; i++)
        PQclear(out[i]);
    query_cell(g.db, "SELECT string_agg(n::text, ',' ORDER BY id) FROM batch_locks", 0, NULL, cell);
    assert_string_equal(cell, "2,2,2");
    pg_conn_destroy(&conn);
}

static void test_transaction_failed(void **state)
{
    (void)state;
    batch_table_create();
    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    char pid[cell_bytes_max];
    assert_false(pg_transaction_failed(conn)); /* not even connected */
    exec_ok(conn, "SELECT 1", 0, NULL);
    assert_false(pg_transaction_failed(conn));

    assert_int_equal(pg_begin(conn), PG_OK);
    const char *row[] = {"1300", "a"};
    exec_ok(conn, "INSERT INTO batch_rows (id, note) VALUES ($1, $2)", 2, row);
    assert_false(pg_transaction_failed(conn));
    assert_int_equal(
        pg_exec(conn, "INSERT INTO batch_rows (id, note) VALUES ($1, $2)", 2, row, NULL),
        PG_CONSTRAINT);
    assert_true(pg_transaction_failed(conn));
    assert_int_equal(pg_exec(conn, "SELECT 1", 0, NULL, NULL), PG_ERROR); /* 25P02 */
    assert_true(pg_transaction_failed(conn));
    pg_rollback(conn);
    assert_false(pg_transaction_failed(conn));

    /* A failed statement outside a transaction spoils nothing. */
    assert_int_equal(pg_exec(conn, "SELEC 1", 0, NULL, NULL), PG_ERROR);
    assert_false(pg_transaction_failed(conn));

    /* The connection lost inside a transaction: failed until rolled back. */
    assert_int_equal(pg_begin(conn), PG_OK);
    assert_false(pg_transaction_failed(conn));
    backend_pid(conn, pid);
    terminate_backend(pid);
    assert_int_equal(pg_exec(conn, "SELECT 1", 0, NULL, NULL), PG_UNAVAILABLE);
    assert_true(pg_transaction_failed(conn));
    pg_rollback(conn);
    assert_false(pg_transaction_failed(conn));
    exec_ok(conn, "SELECT 1", 0, NULL);
    pg_conn_destroy(&conn);
}

/* --- migrations ---------------------------------------------------------- */

static void test_migrations_applied_in_order_and_recorded(void **state)
{
    (void)state;
    /* The embedding keeps every byte of every file, in file name order. */
    assert_int_equal(pg_test_migrations_count, 4);
    const char *const versions[] = {"0001_create_log.sql", "0002_accounts_constraints.sql",
                                    "0003_tricky_text.sql", "0010_numbering.sql"};
    static char text[file_bytes_max];
    for (size_t i = 0; i < pg_test_migrations_count; i++) {
        assert_string_equal(pg_test_migrations[i].version, versions[i]);
        file_read(PAYGATE_PG_TEST_MIGRATIONS_DIR, versions[i], text);
        assert_string_equal(pg_test_migrations[i].sql, text);
    }

    char schema[schema_bytes_max + 1], cell[cell_bytes_max];
    schema_name(schema, "mig_order");
    pg_conn_t *conn = pg_conn_new(g.dsn, schema);
    assert_int_equal(pg_migrate(conn, pg_test_migrations, pg_test_migrations_count), PG_OK);

    query_cell(conn, "SELECT string_agg(version, ',' ORDER BY seq) FROM migration_log", 0, NULL,
               cell);
    assert_string_equal(cell, "0001,0002,0003,0010");
    query_cell(conn,
               "SELECT string_agg(version, ',' ORDER BY applied_at, version)"
               " FROM schema_migrations",
               0, NULL, cell);
    assert_string_equal(cell, "0001_create_log.sql,0002_accounts_constraints.sql,"
                              "0003_tricky_text.sql,0010_numbering.sql");
    query_cell(conn, "SELECT tricky_text()", 0, NULL, cell);
    assert_string_equal(cell, "a\"b\\c;d?\?=e\tf\xe2\x82\xb9");

    /* The tables are in the schema, and usable by the service. */
    assert_true(table_exists(schema, "accounts"));
    assert_true(table_exists(schema, "schema_migrations"));
    const char *row[] = {"1", "dave@example.com"};
    exec_ok(conn, "INSERT INTO accounts (id, email) VALUES ($1, $2)", 2, row);
    const char *dup[] = {"2", "dave@example.com"};
    assert_int_equal(
        pg_exec(conn, "INSERT INTO accounts (id, email) VALUES ($1, $2)", 2, dup, NULL),
        PG_CONSTRAINT);
    assert_string_equal(pg_error_constraint(conn), "accounts_email_key");
    pg_conn_destroy(&conn);
}

static void test_migrate_twice_applies_nothing_new(void **state)
{
    (void)state;
    char schema[schema_bytes_max + 1], before[cell_bytes_max], after[cell_bytes_max];
    char cell[cell_bytes_max];
    static const char *const record_sql =
        "SELECT string_agg(version || '@' || applied_at, ',' ORDER BY version)"
        " FROM schema_migrations";
    schema_name(schema, "mig_twice");
    pg_conn_t *conn = pg_conn_new(g.dsn, schema);
    assert_int_equal(pg_migrate(conn, pg_test_migrations, pg_test_migrations_count), PG_OK);
    query_cell(conn, record_sql, 0, NULL, before);

    assert_int_equal(pg_migrate(conn, pg_test_migrations, pg_test_migrations_count), PG_OK);
    query_cell(conn, record_sql, 0, NULL, after);
    assert_string_equal(before, after);
    query_cell(conn, "SELECT count(*) FROM migration_log", 0, NULL, cell);
    assert_string_equal(cell, "4");

    /* A newer binary with one more migration applies just that one. */
    pg_migration_t more[8];
    assert_true(pg_test_migrations_count < 8);
    memcpy(more, pg_test_migrations, pg_test_migrations_count * sizeof more[0]);
    more[pg_test_migrations_count] =
        (pg_migration_t){"0011_more.sql", "INSERT INTO migration_log (version) VALUES ('0011');"};
    assert_int_equal(pg_migrate(conn, more, pg_test_migrations_count + 1), PG_OK);
    query_cell(conn, "SELECT string_agg(version, ',' ORDER BY seq) FROM migration_log", 0, NULL,
               cell);
    assert_string_equal(cell, "0001,0002,0003,0010,0011");
    query_cell(conn, "SELECT count(*) FROM schema_migrations", 0, NULL, cell);
    assert_string_equal(cell, "5");
    pg_conn_destroy(&conn);
}

typedef struct {
    const char *schema;
    pthread_barrier_t *start;
    pg_result_t result;
} migrate_job_t;

/* Thread body: one service instance starting up and migrating. */
static void *migrate_thread(void *arg)
{
    migrate_job_t *job = arg;
    pg_conn_t *conn = pg_conn_new(g.dsn, job->schema);
    pthread_barrier_wait(job->start);
    job->result =
        conn != NULL ? pg_migrate(conn, pg_test_migrations, pg_test_migrations_count) : PG_ERROR;
    pg_conn_destroy(&conn);
    return NULL;
}

static void test_concurrent_migrate_applies_each_once(void **state)
{
    (void)state;
    enum { instances = 3 };
    char schema[schema_bytes_max + 1], cell[cell_bytes_max];
    schema_name(schema, "mig_race");
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, instances), 0);
    pthread_t threads[instances];
    migrate_job_t jobs[instances];
    for (int i = 0; i < instances; i++) {
        jobs[i] = (migrate_job_t){.schema = schema, .start = &start, .result = PG_ERROR};
        assert_int_equal(pthread_create(&threads[i], NULL, migrate_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < instances; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < instances; i++)
        assert_int_equal(jobs[i].result, PG_OK);

    pg_conn_t *conn = pg_conn_new(g.dsn, schema);
    query_cell(conn, "SELECT string_agg(version, ',' ORDER BY seq) FROM migration_log", 0, NULL,
               cell);
    assert_string_equal(cell, "0001,0002,0003,0010");
    query_cell(conn, "SELECT count(*) FROM schema_migrations", 0, NULL, cell);
    assert_string_equal(cell, "4");
    pg_conn_destroy(&conn);
}

static void test_failing_migration_leaves_nothing_half_applied(void **state)
{
    (void)state;
    char schema[schema_bytes_max + 1], cell[cell_bytes_max];
    schema_name(schema, "mig_fail");
    const pg_migration_t broken[] = {
        {"0001_good.sql", "CREATE TABLE good (id int);"},
        {"0002_bad.sql", "CREATE TABLE half (id int);\n"
                         "INSERT INTO half VALUES (1);\n"
                         "SELECT 1 / 0;\n"},
        {"0003_later.sql", "CREATE TABLE later (id int);"},
    };
    pg_conn_t *conn = pg_conn_new(g.dsn, schema);
    assert_int_equal(pg_migrate(conn, broken, 3), PG_ERROR);
    assert_string_equal(pg_error_sqlstate(conn), "22012");
    assert_true(strlen(pg_error_message(conn)) > 0);
    assert_true(table_exists(schema, "good"));
    assert_false(table_exists(schema, "half"));
    assert_false(table_exists(schema, "later"));
    query_cell(conn, "SELECT string_agg(version, ',') FROM schema_migrations", 0, NULL, cell);
    assert_string_equal(cell, "0001_good.sql");

    /* The migration lock was released: another session can take it. */
    const char *params[] = {schema};
    query_cell(g.db, "SELECT pg_try_advisory_lock(hashtext('paygate.migrate.' || $1))", 1, params,
               cell);
    assert_string_equal(cell, "t");
    query_cell(g.db, "SELECT pg_advisory_unlock(hashtext('paygate.migrate.' || $1))", 1, params,
               cell);
    assert_string_equal(cell, "t");

    /* A migration that ends the transaction itself is an error and is not
     * recorded (what it committed stays: the operator must fix it up). */
    const pg_migration_t commits[] = {
        {"0001_good.sql", "CREATE TABLE good (id int);"},
        {"0002_commits.sql", "CREATE TABLE committed_early (id int); COMMIT;"},
    };
    assert_int_equal(pg_migrate(conn, commits, 2), PG_ERROR);
    query_cell(conn, "SELECT string_agg(version, ',') FROM schema_migrations", 0, NULL, cell);
    assert_string_equal(cell, "0001_good.sql");

    /* Fixed, it applies with what follows it. */
    const pg_migration_t fixed[] = {
        broken[0],
        {"0002_bad.sql", "CREATE TABLE half (id int); INSERT INTO half VALUES (1);"},
        broken[2],
    };
    assert_int_equal(pg_migrate(conn, fixed, 3), PG_OK);
    assert_true(table_exists(schema, "half"));
    assert_true(table_exists(schema, "later"));
    pg_conn_destroy(&conn);
}

static void test_migrate_rejects_bad_input(void **state)
{
    (void)state;
    char schema[schema_bytes_max + 1], cell[cell_bytes_max];
    schema_name(schema, "mig_unsorted");
    const pg_migration_t unsorted[] = {
        {"0002_b.sql", "CREATE TABLE b (id int);"},
        {"0001_a.sql", "CREATE TABLE a (id int);"},
    };
    pg_conn_t *conn = pg_conn_new(g.dsn, schema);
    assert_int_equal(pg_migrate(conn, unsorted, 2), PG_ERROR);
    const char *params[] = {schema};
    query_cell(g.db, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", 1, params, cell);
    assert_string_equal(cell, "0"); /* nothing touched */
    pg_conn_destroy(&conn);

    pg_conn_t *no_schema = pg_conn_new(g.dsn, NULL);
    assert_int_equal(pg_migrate(no_schema, unsorted, 0), PG_ERROR);
    pg_conn_destroy(&no_schema);

    char too_long[schema_bytes_max + 2];
    memset(too_long, 'x', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    assert_null(pg_conn_new(g.dsn, too_long));
}

/* --- server restart ------------------------------------------------------ */

/* Brings the server back if the restart test failed half-way. */
static int restart_teardown(void **state)
{
    (void)state;
    if (g.data_dir[0] != '\0' && !server_running()) {
        fprintf(stderr, "test_pg: restarting PostgreSQL left down by a failed test\n");
        if (!server_start())
            fprintf(stderr, "test_pg: could not restart PostgreSQL in %s\n", g.data_dir);
    }
    return 0;
}

static void test_server_restart(void **state)
{
    (void)state;
    static const char *const sql = "SELECT email FROM accounts WHERE id = $1";
    char cell[cell_bytes_max], pid_before[cell_bytes_max], pid_after[cell_bytes_max];
    data_dir_find();
    assert_true(server_running());
    const char *insert[] = {"801", "erin@example.com"};
    exec_ok(g.db, "INSERT INTO accounts (id, email) VALUES ($1, $2)", 2, insert);

    pg_conn_t *conn = pg_conn_new(g.dsn, g.schema);
    const char *id[] = {"801"};
    assert_int_equal(pg_exec_prepared(conn, "restart_get", sql, 1, id, NULL), PG_OK);
    backend_pid(conn, pid_before);

    server_stop();
    int64_t start_ms = clock_now_ms();
    assert_int_equal(pg_exec(conn, "SELECT 1", 0, NULL, NULL), PG_UNAVAILABLE);
    assert_int_equal(pg_exec_prepared(conn, "restart_get", sql, 1, id, NULL), PG_UNAVAILABLE);
    pg_conn_t *fresh = pg_conn_new(g.dsn, g.schema);
    assert_int_equal(pg_exec(fresh, "SELECT 1", 0, NULL, NULL), PG_UNAVAILABLE);
    assert_int_equal(pg_begin(fresh), PG_UNAVAILABLE);
    int64_t took_ms = clock_now_ms() - start_ms;
    assert_in_range(took_ms, 0, unavailable_answer_ms_max);

    assert_true(server_start());
    /* Same process, same handles: a fresh connection, re-prepared. */
    PGresult *res = NULL;
    assert_int_equal(pg_exec_prepared(conn, "restart_get", sql, 1, id, &res), PG_OK);
    assert_string_equal(PQgetvalue(res, 0, 0), "erin@example.com");
    PQclear(res);
    backend_pid(conn, pid_after);
    assert_string_not_equal(pid_before, pid_after);
    query_cell(fresh, "SELECT count(*) FROM accounts WHERE id = 801", 0, NULL, cell);
    assert_string_equal(cell, "1");
    /* The shared handle, idle across the restart, recovers as well. */
    query_cell(g.db, "SELECT 1", 0, NULL, cell);
    pg_conn_destroy(&fresh);
    pg_conn_destroy(&conn);
}

int main(void)
{
    if (!log_init("test_pg"))
        return 1;
    g.dsn = getenv("PAYGATE_TEST_PG_DSN");
    if (g.dsn == NULL || *g.dsn == '\0') {
        fprintf(stderr, "test_pg: FAIL: PAYGATE_TEST_PG_DSN is not set. These tests need the "
                        "test PostgreSQL: run them with ./dev test (e.g. ./dev test -R pg).\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exec_params_and_results),
        cmocka_unit_test(test_unique_violation_is_constraint),
        cmocka_unit_test(test_check_violation_is_constraint),
        cmocka_unit_test(test_prepared_reused_and_reprepared_after_reconnect),
        cmocka_unit_test(test_transaction_commit_and_rollback),
        cmocka_unit_test(test_serialization_failure),
        cmocka_unit_test(test_statement_not_retried_when_connection_drops),
        cmocka_unit_test(test_connection_lost_inside_transaction),
        cmocka_unit_test(test_connect_timeout_is_bounded),
        cmocka_unit_test(test_prepared_batch_commits_together),
        cmocka_unit_test(test_prepared_batch_failure_leaves_nothing),
        cmocka_unit_test(test_prepared_rows),
        cmocka_unit_test(test_prepared_batch_refused_inside_transaction),
        cmocka_unit_test(test_prepared_batch_connection_lost),
        cmocka_unit_test(test_transaction_failed),
        cmocka_unit_test(test_migrations_applied_in_order_and_recorded),
        cmocka_unit_test(test_migrate_twice_applies_nothing_new),
        cmocka_unit_test(test_concurrent_migrate_applies_each_once),
        cmocka_unit_test(test_failing_migration_leaves_nothing_half_applied),
        cmocka_unit_test(test_migrate_rejects_bad_input),
        cmocka_unit_test_teardown(test_server_restart, restart_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
