-- Numbers need not be contiguous: the order is the file names' order.
INSERT INTO migration_log (version) VALUES ('0010');
