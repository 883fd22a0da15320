-- transaction service, schema "transactions": the history of money
-- movements, one row per movement, recorded from the event bus (topics
-- "payments" and "wallet", group "transaction"). Applied by lib/pg's
-- migration runner with search_path = transactions.
--
-- Invariants the database itself enforces:
--   * one row per bus event: event_id is UNIQUE and the recorder inserts
--     with ON CONFLICT (event_id) DO NOTHING, so a redelivered event never
--     makes a second row;
--   * one row per movement even if a publisher ever sent the same movement
--     under two event ids: a payment, a refund and a top-up each appear at
--     most once (the partial unique indexes below);
--   * an amount is positive and at most ₹1,00,00,000 (10^9 paise, the user
--     service's largest single debit or credit), in INR;
--   * each type carries exactly the references it needs: PAYMENT an order
--     and a payment; REFUND an order, a payment and a refund; TOPUP a
--     top-up. The others are NULL (answered as "" on the wire).
-- Rows are never updated or deleted.
--
-- created_at is when the money moved (the event's occurred_at);
-- recorded_at is when this service learnt of it. 'seq' is the recording
-- order: a stable newest-first order for cursor pagination (ids are
-- random, created_at can tie).

CREATE TABLE transactions (
    id          text PRIMARY KEY,
    seq         bigserial NOT NULL UNIQUE,
    event_id    text NOT NULL UNIQUE CHECK (event_id <> '' AND octet_length(event_id) <= 128),
    user_id     text NOT NULL CHECK (user_id <> ''),
    type        text NOT NULL CHECK (type IN ('PAYMENT', 'REFUND', 'TOPUP')),
    amount      bigint NOT NULL CHECK (amount > 0 AND amount <= 1000000000),
    currency    text NOT NULL DEFAULT 'INR' CHECK (currency = 'INR'),
    order_id    text CHECK (order_id <> ''),
    payment_id  text CHECK (payment_id <> ''),
    refund_id   text CHECK (refund_id <> ''),
    topup_id    text CHECK (topup_id <> ''),
    description text NOT NULL CHECK (description <> '' AND char_length(description) <= 255),
    created_at  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transactions_references_match_type CHECK (
        CASE type
        WHEN 'PAYMENT' THEN order_id IS NOT NULL AND payment_id IS NOT NULL
                            AND refund_id IS NULL AND topup_id IS NULL
        WHEN 'REFUND'  THEN order_id IS NOT NULL AND payment_id IS NOT NULL
                            AND refund_id IS NOT NULL AND topup_id IS NULL
        WHEN 'TOPUP'   THEN topup_id IS NOT NULL
                            AND order_id IS NULL AND payment_id IS NULL AND refund_id IS NULL
        END)
);

CREATE INDEX transactions_user_id_seq_idx ON transactions (user_id, seq DESC);

CREATE UNIQUE INDEX transactions_payment_once ON transactions (payment_id) WHERE type = 'PAYMENT';
CREATE UNIQUE INDEX transactions_refund_once ON transactions (refund_id) WHERE type = 'REFUND';
CREATE UNIQUE INDEX transactions_topup_once ON transactions (topup_id) WHERE type = 'TOPUP';
