-- Test migrations for tests/integration/test_pg.c (embedded with
-- paygate_embed_migrations). Each file appends its number to
-- migration_log, so the test sees the order they ran in.
CREATE TABLE migration_log (
    seq bigserial PRIMARY KEY,
    version text NOT NULL
);
CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);
-- Long enough that a second instance started at the same time must wait
-- for the migration lock rather than finish first.
SELECT pg_sleep(0.2);
INSERT INTO migration_log (version) VALUES ('0001');
