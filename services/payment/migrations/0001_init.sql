-- payment service, schema "payments": payments (each one a saga and its own
-- idempotency record) and refunds. Applied with search_path = payments.
--
-- A payment row is written before any money moves and records the saga's
-- step, so a crash at any point leaves a row that the recovery loop can
-- drive to SUCCEEDED or FAILED with the (idempotent, keyed) steps:
--
--   ORDER_CHECKED --debit--> DEBITED --mark paid--> DONE (SUCCEEDED)
--        |                      |
--        | insufficient funds   | order not payable
--        v                      v
--      DONE (FAILED)       COMPENSATING --credit--> DONE (FAILED)
--
-- locked_until is a lease: the request handler or the recovery loop that
-- holds it drives the saga; an expired lease means nobody does.

CREATE TABLE payments (
    id              text PRIMARY KEY,
    seq             bigserial NOT NULL UNIQUE,
    user_id         text NOT NULL,
    order_id        text NOT NULL,
    idempotency_key text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text NOT NULL DEFAULT 'INR' CHECK (currency = 'INR'),
    status          text NOT NULL DEFAULT 'PROCESSING'
                    CHECK (status IN ('PROCESSING', 'SUCCEEDED', 'FAILED')),
    step            text NOT NULL DEFAULT 'ORDER_CHECKED'
                    CHECK (step IN ('ORDER_CHECKED', 'DEBITED', 'COMPENSATING', 'DONE')),
    amount_refunded bigint NOT NULL DEFAULT 0
                    CHECK (amount_refunded >= 0 AND amount_refunded <= amount),
    failure_code    text NOT NULL DEFAULT '',
    failure_message text NOT NULL DEFAULT '',
    attempts        integer NOT NULL DEFAULT 0,
    locked_until    timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key),
    CHECK ((status = 'PROCESSING') = (step <> 'DONE')),
    CHECK (amount_refunded = 0 OR status = 'SUCCEEDED')
);

-- The recovery loop's work list.
CREATE INDEX payments_processing ON payments (locked_until) WHERE status = 'PROCESSING';
-- Listing a user's payments, newest first.
CREATE INDEX payments_user_seq ON payments (user_id, seq DESC);
-- An order is paid at most once, whatever the application does.
CREATE UNIQUE INDEX payments_one_success_per_order ON payments (order_id)
    WHERE status = 'SUCCEEDED';

CREATE TABLE refunds (
    id              text PRIMARY KEY,
    payment_id      text NOT NULL REFERENCES payments (id),
    user_id         text NOT NULL,
    idempotency_key text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    status          text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SUCCEEDED')),
    locked_until    timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key)
);

CREATE INDEX refunds_pending ON refunds (locked_until) WHERE status = 'PENDING';
