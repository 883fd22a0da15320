-- 'seq' orders one user's listing: every query that reads it names the
-- user (GET /v1/transactions and its cursor), so it needs to be unique per
-- user, not table-wide. The table-wide UNIQUE (seq) index served no query,
-- yet every insert (rows are never updated) added an entry to it. The
-- listing's index becomes the unique one: one index fewer to maintain per
-- row written. The index is built under a write lock, which is fine at the
-- sizes a migration at start-up meets; a large deployment builds
-- transactions_user_id_seq_idx_unique CONCURRENTLY by hand first, and this
-- finds it there.
CREATE UNIQUE INDEX IF NOT EXISTS transactions_user_id_seq_idx_unique ON transactions (user_id, seq DESC);
DROP INDEX transactions_user_id_seq_idx;
ALTER INDEX transactions_user_id_seq_idx_unique RENAME TO transactions_user_id_seq_idx;
ALTER TABLE transactions DROP CONSTRAINT transactions_seq_key;
