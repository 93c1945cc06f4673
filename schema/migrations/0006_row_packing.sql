-- Storage (issue 4, third pass): bytes every report row pays on disk for nothing.
--
-- 1. reports.cert_sha256 goes. Since 0005 the ingest names the delivering certificate by
--    cert_id and leaves the digest NULL, and a NULL anywhere in a row costs it a null bitmap,
--    which PostgreSQL's alignment turns into 8 bytes of header. Rows written before 0005 get
--    it. The ingest of 0005 never names this column, so it works against the new schema once
--    this has committed; while it runs (one transaction, with the rebuild below) report writes
--    wait. Partitions that exist before this keep the dropped column, as a NULL in every new
--    row, until retention drops them: maintenance makes partitions two months ahead, so on an
--    existing database the 8 bytes are saved from the third month on. Rows from before 0005
--    are rewritten once; their partitions keep the old versions' space until retention drops
--    them (there were none outside development when this was written).
INSERT INTO certificates (sha256, appliance_id, first_seen_at)
SELECT DISTINCT ON (cert_sha256) cert_sha256, appliance_id, received_at
FROM reports
WHERE cert_id IS NULL AND cert_sha256 IS NOT NULL
ORDER BY cert_sha256, received_at
ON CONFLICT (sha256) DO NOTHING;
UPDATE reports r SET cert_id = c.id
FROM certificates c
WHERE r.cert_id IS NULL AND c.sha256 = r.cert_sha256;
ALTER TABLE reports DROP COLUMN cert_sha256;

-- 2. filesystem_samples with its 8-byte columns first: PostgreSQL pads a 4-byte integer that
--    precedes an 8-byte one, and the row is padded to a multiple of 8, so the old order cost 4
--    bytes in every row and 8 in a row for "/" (3 rows a report). Column order cannot be
--    changed in place: the table is rebuilt with the same partitions (names and bounds) and
--    its rows copied, while report writes wait (seconds per million rows).
ALTER TABLE filesystem_samples RENAME TO filesystem_samples_0005;
ALTER INDEX filesystem_samples_appliance RENAME TO filesystem_samples_0005_appliance;
CREATE TABLE filesystem_samples (
    collected_at timestamptz NOT NULL,
    bytes_total  bigint      NOT NULL,
    bytes_used   bigint      NOT NULL,
    inodes_total bigint      NOT NULL,
    inodes_used  bigint      NOT NULL,
    appliance_id integer     NOT NULL,
    mount_point  text        NOT NULL
) PARTITION BY RANGE (collected_at);
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'filesystem_samples_0005'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', part.name, part.name || '_0005');
        EXECUTE format('CREATE TABLE %I PARTITION OF filesystem_samples %s', part.name, part.bound);
    END LOOP;
END $$;
CREATE INDEX filesystem_samples_appliance ON filesystem_samples (appliance_id);
INSERT INTO filesystem_samples
    (collected_at, bytes_total, bytes_used, inodes_total, inodes_used, appliance_id, mount_point)
SELECT collected_at, bytes_total, bytes_used, inodes_total, inodes_used, appliance_id, mount_point
FROM filesystem_samples_0005;
DROP TABLE filesystem_samples_0005;
