-- Text that must reach the server byte for byte through the C string
-- embedding: "double quotes", back\slash, a tab:	(there), a trigraph ??=,
-- non-ASCII ₹ and é, CMake-looking ${NOT_A_VAR} @NOT_A_VAR@ $<NOT_A_GENEX>;
CREATE FUNCTION tricky_text() RETURNS text LANGUAGE sql IMMUTABLE
AS $body$ SELECT 'a"b\c;d??=e' || E'\t' || 'f₹' $body$;
INSERT INTO migration_log (version) VALUES ('0003');
