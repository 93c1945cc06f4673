-- appliance_seen keeps the minute of each appliance's last report, not the instant (issue 17,
-- the million-appliance drain).
--
-- Its index on the time made every report's copy of `last_report_at` a non-HOT update: a new
-- row version and an entry in each of the table's five indexes, a million of them in a
-- million-appliance drain, where each appliance sends its spooled reports back to back over one
-- connection. Kept to the minute, the second report of a spool usually leaves the row alone.
-- The minute is all its readers need: the silence threshold is whole minutes
-- (`storage::silence_threshold`), so `instant < threshold` and `minute < threshold` give the same
-- verdict; the appliance list sorts by minute, then serial, and shows the instant from
-- `appliances`. Safe to run again.
--
-- It rewrites every appliance_seen row (about 10 s a million), holding both tables meanwhile:
-- reports wait, then go on. Locked up front, appliances first as report batches lock them, so
-- that a batch holding an appliance row cannot meet it halfway. An ingest older than this
-- migration fails its appliance list and silence checks once the column is renamed: upgrade
-- every replica together (collectors keep their reports spooled and send them again).
LOCK TABLE appliances, appliance_seen IN ACCESS EXCLUSIVE MODE;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'appliance_seen'
                 AND column_name = 'last_report_at') THEN
        ALTER TABLE appliance_seen RENAME COLUMN last_report_at TO reported_minute;
    END IF;
END $$;
ALTER INDEX IF EXISTS appliance_seen_last_report RENAME TO appliance_seen_reported_minute;
-- From appliances, not from the old copy: the update trigger below writes only rows that exist,
-- so any appliance missing here would stay missing.
INSERT INTO appliance_seen (appliance_id, serial, reported_minute, hostname)
SELECT id, serial, date_trunc('minute', last_report_at, 'UTC'), hostname FROM appliances
ON CONFLICT (appliance_id) DO NOTHING;
UPDATE appliance_seen s
SET reported_minute = date_trunc('minute', a.last_report_at, 'UTC'), hostname = a.hostname
FROM appliances a
WHERE a.id = s.appliance_id
  AND (s.reported_minute IS DISTINCT FROM date_trunc('minute', a.last_report_at, 'UTC')
       OR s.hostname IS DISTINCT FROM a.hostname);

-- A new appliance's row (its insert, one statement per batch).
CREATE OR REPLACE FUNCTION phonehome_appliance_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO appliance_seen (appliance_id, serial, reported_minute, hostname)
    SELECT id, serial, date_trunc('minute', last_report_at, 'UTC'), hostname FROM changed
    ON CONFLICT (appliance_id) DO UPDATE
        SET reported_minute = EXCLUDED.reported_minute, hostname = EXCLUDED.hostname
        WHERE appliance_seen.reported_minute IS DISTINCT FROM EXCLUDED.reported_minute
           OR appliance_seen.hostname IS DISTINCT FROM EXCLUDED.hostname;
    RETURN NULL;
END $$;

-- A known appliance's row: a plain UPDATE, which (unlike ON CONFLICT DO UPDATE … WHERE) neither
-- locks nor writes a row whose minute and hostname are unchanged. Every appliance has its row:
-- the insert trigger writes it, and migration 7 wrote those of the appliances before it.
CREATE OR REPLACE FUNCTION phonehome_appliance_seen_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE appliance_seen s
    SET reported_minute = date_trunc('minute', c.last_report_at, 'UTC'), hostname = c.hostname
    FROM changed c
    WHERE s.appliance_id = c.id
      AND (s.reported_minute IS DISTINCT FROM date_trunc('minute', c.last_report_at, 'UTC')
           OR s.hostname IS DISTINCT FROM c.hostname);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS appliances_seen_on_update ON appliances;
CREATE TRIGGER appliances_seen_on_update AFTER UPDATE ON appliances
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION phonehome_appliance_seen_update();
