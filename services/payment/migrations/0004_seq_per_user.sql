-- 'seq' orders one user's listing: every query that reads it names the
-- user (GET /v1/payments and its cursor), so it needs to be unique per
-- user, not table-wide. The table-wide UNIQUE (seq) index served no query,
-- yet every insert, and every update that cannot be HOT (a payment's
-- outcome changes indexed columns), added an entry to it. The listing's
-- index becomes the unique one: one index fewer to maintain per row
-- written. The index is built under a write lock, which is fine at the
-- sizes a migration at start-up meets; a large deployment builds
-- payments_user_seq_unique CONCURRENTLY by hand first, and this finds it
-- there.
CREATE UNIQUE INDEX IF NOT EXISTS payments_user_seq_unique ON payments (user_id, seq DESC);
DROP INDEX payments_user_seq;
ALTER INDEX payments_user_seq_unique RENAME TO payments_user_seq;
ALTER TABLE payments DROP CONSTRAINT payments_seq_key;
