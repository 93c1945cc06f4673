-- Throughput and storage (issue 4, second pass).
--
-- What rules judged by change need from an appliance's newest report (drive counts with the
-- drive ids, NIC counters, recent filesystem use) is kept with its current state, so a batch
-- reads it with the row it locks instead of querying the time series. zstd-compressed JSON
-- (ingest/src/storage/previous.rs says what is in it). NULL for appliances last written before
-- this column existed: their first batch reads history once.
ALTER TABLE appliances ADD COLUMN rule_state bytea;
-- Already compressed: PostgreSQL must not spend CPU trying again.
ALTER TABLE appliances ALTER COLUMN rule_state SET STORAGE EXTERNAL;

-- The samples are read per appliance (charts, the API), never by time across the fleet, and
-- the hot path no longer reads them at all: an index on appliance_id alone is enough, and
-- B-tree deduplication stores an appliance's rows of a month as a few posting lists instead of
-- one 16-byte key per row. Reads bound collected_at, so partitions outside the range are
-- skipped. On a database that already holds history this rebuilds the three indexes over all
-- of it while writes wait: minutes per hundred GB, to be planned as an upgrade window.
DROP INDEX drive_samples_appliance;
CREATE INDEX drive_samples_appliance ON drive_samples (appliance_id);
DROP INDEX filesystem_samples_appliance;
CREATE INDEX filesystem_samples_appliance ON filesystem_samples (appliance_id);
DROP INDEX nic_samples_appliance;
CREATE INDEX nic_samples_appliance ON nic_samples (appliance_id);

-- Every report rewrites its appliance's row (now with the rules' state): room on each page lets
-- PostgreSQL put the new version beside the old one (a HOT update, no index writes) and prune
-- the old one in place, instead of growing the table until autovacuum comes by. Pages written
-- before this keep their packing until the table is rewritten (VACUUM FULL or pg_repack).
ALTER TABLE appliances SET (fillfactor = 50);

-- Reports name the certificate that delivered them by a 4-byte id instead of carrying its
-- 33-byte digest: a certificate delivers a year of reports. Rows written before this keep
-- their digest in cert_sha256; the ingest sets exactly one of the two (not a CHECK: adding one
-- would scan every partition of reports while writes wait).
CREATE TABLE certificates (
    id            integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- SHA-256 of the certificate (DER).
    sha256        bytea       NOT NULL UNIQUE,
    -- The appliance it speaks for (the ingest refuses a report whose serial is not the
    -- certificate's, so one certificate is one appliance's).
    appliance_id  integer     NOT NULL,
    first_seen_at timestamptz NOT NULL
);
ALTER TABLE reports ADD COLUMN cert_id integer;
ALTER TABLE reports ALTER COLUMN cert_sha256 DROP NOT NULL;
ALTER TABLE appliances ADD COLUMN last_cert_id integer;
