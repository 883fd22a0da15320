/*
 * db_assert: reads of a test's database that fail the running cmocka test
 * (fail_msg) instead of returning an error, for integration tests that
 * check what the services wrote.
 */
#ifndef PAYGATE_TEST_DB_ASSERT_H
#define PAYGATE_TEST_DB_ASSERT_H

#include <libpq-fe.h>
#include <stdint.h>

/* Runs 'sql' with 'n' text parameters on 'db'; fails the test unless it
 * returns rows. The caller PQclear()s. */
PGresult *db_assert_rows(PGconn *db, const char *sql, int n, const char *const params[]);

/* Runs command 'sql' (no rows, no parameters: DDL and the like) on 'db';
 * fails the test unless it succeeds. */
void db_assert_exec(PGconn *db, const char *sql);

/* The single integer 'sql' returns for its 'n' parameters; fails the test
 * unless it returns exactly one value. */
int64_t db_assert_int(PGconn *db, const char *sql, int n, const char *const params[]);

/* wallet_check (wallet_check.h) of 'user': fails the test when the
 * invariant does not hold. Returns the balance. */
int64_t db_assert_wallet(PGconn *db, const char *user);

#endif
