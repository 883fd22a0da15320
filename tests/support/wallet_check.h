/*
 * wallet_check: the wallet invariant, read from the database of a test's
 * system (schema "users").
 */
#ifndef PAYGATE_TEST_WALLET_CHECK_H
#define PAYGATE_TEST_WALLET_CHECK_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Checks the wallet of 'user' through 'db': its ledger, replayed in id
 * order (the order the wallet's row lock gave the movements), matches
 * every row's balance_after and never goes below zero, and it ends at the
 * wallet's balance. Returns true with '*balance' set; false with why in
 * 'why' (a query that failed, or the row that breaks the invariant). */
bool wallet_check(PGconn *db, const char *user, int64_t *balance, char *why, size_t why_size);

#endif
