-- user service, schema "users": accounts, wallets and the wallet ledger.
-- Applied by lib/pg's migration runner with search_path = users.
--
-- Invariants the database itself enforces:
--   * a wallet's balance is never negative (CHECK);
--   * each ledger row says which movement it is (kind + reference) and a
--     movement is applied at most once per wallet (UNIQUE);
--   * debits are negative, top-ups and credits positive (CHECK).
-- The service changes a balance and writes its ledger row in one
-- statement, so balance = sum(ledger.amount) for every wallet.

CREATE TABLE accounts (
    id            text PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    name          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE wallets (
    user_id    text PRIMARY KEY REFERENCES accounts (id),
    currency   text NOT NULL DEFAULT 'INR' CHECK (currency = 'INR'),
    balance    bigint NOT NULL DEFAULT 0
               CHECK (balance >= 0 AND balance <= 100000000000000),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger (
    id            bigserial PRIMARY KEY,
    user_id       text NOT NULL REFERENCES wallets (user_id),
    kind          text NOT NULL CHECK (kind IN ('TOPUP', 'DEBIT', 'CREDIT')),
    amount        bigint NOT NULL CHECK (amount <> 0),
    balance_after bigint NOT NULL CHECK (balance_after >= 0),
    reference     text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, kind, reference),
    CHECK ((kind = 'DEBIT') = (amount < 0))
);

CREATE TABLE topups (
    id              text PRIMARY KEY,
    user_id         text NOT NULL REFERENCES wallets (user_id),
    idempotency_key text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    balance_after   bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key)
);
