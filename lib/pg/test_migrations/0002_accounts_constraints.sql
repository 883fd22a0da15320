-- Needs 0001's table: fails if run out of order.
ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email);
ALTER TABLE accounts ADD COLUMN balance_minor bigint NOT NULL DEFAULT 0
    CONSTRAINT accounts_balance_nonnegative CHECK (balance_minor >= 0);
INSERT INTO migration_log (version) VALUES ('0002');
