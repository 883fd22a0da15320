-- A fencing token for the saga's lease: every driver that takes a payment
-- over increments it, and every step a driver records (and the final
-- status) is written only while the token is still the driver's. A driver
-- whose lease ran out can therefore never record anything, and it stops
-- before its next call to another service.
ALTER TABLE payments ADD COLUMN lease_token bigint NOT NULL DEFAULT 1;
