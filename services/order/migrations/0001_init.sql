-- order service, schema "orders": the orders users create and pay.
-- Applied by lib/pg's migration runner with search_path = orders.
--
-- Invariants the database itself enforces:
--   * an amount is positive and at most ₹1,00,00,000 (10^9 paise), in INR;
--   * an order is PENDING, COMPLETED or CANCELLED, and it carries a
--     payment id exactly when it is COMPLETED;
--   * a payment completes at most one order (UNIQUE payment_id);
--   * receipt and description fit the contract's lengths.
-- Status changes are single conditional UPDATEs (... AND status =
-- 'PENDING'), so of two racing changes exactly one applies. The
-- statements set updated_at themselves.
--
-- 'seq' gives a stable newest-first order for cursor pagination (ids are
-- random, created_at can tie).

CREATE TABLE orders (
    id          text PRIMARY KEY,
    seq         bigserial NOT NULL UNIQUE,
    user_id     text NOT NULL CHECK (user_id <> ''),
    amount      bigint NOT NULL CHECK (amount > 0 AND amount <= 1000000000),
    currency    text NOT NULL DEFAULT 'INR' CHECK (currency = 'INR'),
    status      text NOT NULL DEFAULT 'PENDING'
                CHECK (status IN ('PENDING', 'COMPLETED', 'CANCELLED')),
    receipt     text NOT NULL DEFAULT '' CHECK (char_length(receipt) <= 40),
    description text NOT NULL DEFAULT '' CHECK (char_length(description) <= 255),
    payment_id  text UNIQUE CHECK (payment_id <> ''),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_payment_id_iff_completed
        CHECK ((status = 'COMPLETED') = (payment_id IS NOT NULL))
);

CREATE INDEX orders_user_id_seq_idx ON orders (user_id, seq DESC);
