-- Storage (issue 17): the predictive attributes reliability splits the fleet by, kept with the
-- drive instead of read from its samples (migration 17 drops the sample tables). Bit i is set
-- when attribute i of the drive's newest reading is non-zero: 0 ATA 5 reallocated sectors,
-- 1 ATA 187 reported uncorrectable, 2 ATA 188 command timeout, 3 ATA 197 pending sectors,
-- 4 ATA 198 offline uncorrectable, 5 NVMe media errors, 6 NVMe spare below 100 %
-- (`model::PREDICTIVE`). NULL: no reading since this column exists. The ingest rewrites it only
-- when a report changes it, in the statement that already compares firmware and capacity.
--
-- Idempotent: the upgrade test applies it ahead of the batches that write it, and its backfill
-- runs only while the samples it reads from exist.
ALTER TABLE drives ADD COLUMN IF NOT EXISTS predictive smallint;

-- Each drive's newest sample of the last 35 days, the window reliability looked at: it reads
-- only the newest partitions, not the whole history.
DO $$
BEGIN
    IF to_regclass('drive_samples') IS NOT NULL THEN
        EXECUTE $sql$
            UPDATE drives d SET predictive = l.bits
            FROM (SELECT DISTINCT ON (drive_id) drive_id,
                         ((CASE WHEN coalesce(reallocated_sectors, 0) > 0 THEN 1 ELSE 0 END)
                        | (CASE WHEN coalesce(reported_uncorrect, 0) > 0 THEN 2 ELSE 0 END)
                        | (CASE WHEN coalesce(command_timeout, 0) > 0 THEN 4 ELSE 0 END)
                        | (CASE WHEN coalesce(pending_sectors, 0) > 0 THEN 8 ELSE 0 END)
                        | (CASE WHEN coalesce(offline_uncorrectable, 0) > 0 THEN 16 ELSE 0 END)
                        | (CASE WHEN coalesce(nvme_media_errors, 0) > 0 THEN 32 ELSE 0 END)
                        | (CASE WHEN coalesce(nvme_available_spare, 100) < 100 THEN 64 ELSE 0 END)
                         )::smallint AS bits
                  FROM drive_samples
                  WHERE collected_at > now() - interval '35 days'
                  ORDER BY drive_id, collected_at DESC) l
            WHERE d.id = l.drive_id AND d.predictive IS NULL
        $sql$;
    END IF;
END $$;
