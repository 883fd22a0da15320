-- 'seq' orders one user's listing: every query that reads it names the
-- user (GET /v1/orders and its cursor), so it needs to be unique per user,
-- not table-wide. The table-wide UNIQUE (seq) index served no query, yet
-- every insert, and every update that cannot be HOT (an order's completion
-- sets the indexed payment_id), added an entry to it. The listing's index
-- becomes the unique one: one index fewer to maintain per row written. The
-- index is built under a write lock, which is fine at the sizes a
-- migration at start-up meets; a large deployment builds
-- orders_user_id_seq_idx_unique CONCURRENTLY by hand first, and this finds
-- it there.
CREATE UNIQUE INDEX IF NOT EXISTS orders_user_id_seq_idx_unique ON orders (user_id, seq DESC);
DROP INDEX orders_user_id_seq_idx;
ALTER INDEX orders_user_id_seq_idx_unique RENAME TO orders_user_id_seq_idx;
ALTER TABLE orders DROP CONSTRAINT orders_seq_key;
