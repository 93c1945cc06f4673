-- Verdicts (issue 15): a drive's error-log count is kept with its sample, so a rise is a warning
-- while entries alone are information; each appliance counts its drives whose verdict is
-- `warning` beside those `critical` (failing_drive_count), for /metrics and the pages.
-- Idempotent: the history test applies it ahead of the batches that read it.
ALTER TABLE drive_samples ADD COLUMN IF NOT EXISTS error_log_entries bigint;
-- ATA 187 (reported uncorrectable) and 188 (command timeout), two of the attributes Backblaze
-- found predictive, for the fleet's own reliability figures.
ALTER TABLE drive_samples ADD COLUMN IF NOT EXISTS reported_uncorrect integer;
ALTER TABLE drive_samples ADD COLUMN IF NOT EXISTS command_timeout integer;
ALTER TABLE appliances ADD COLUMN IF NOT EXISTS warning_drive_count integer NOT NULL DEFAULT 0;
