-- The operations dashboard at fleet scale: every list it shows starts from an index, and the
-- verdicts it sorts and filters by are columns, kept by the database itself. Every statement
-- can run twice (an upgrade test runs it ahead of the migrations before it).

-- An appliance's health is the worst severity among its firing alerts: 0 none, 1 info,
-- 2 warning, 3 critical. A trigger on alerts keeps it, so every writer (report batches, the
-- silence check, anything later) keeps it right without knowing about it.
ALTER TABLE appliances ADD COLUMN IF NOT EXISTS health smallint NOT NULL DEFAULT 0;

-- A drive's health, the same way, from the firing disk_* alerts that name it (their subject is
-- the drive's key). Firmware, protocol and capacity come from its newest report.
ALTER TABLE drives
    ADD COLUMN IF NOT EXISTS health         smallint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS firmware       text,
    ADD COLUMN IF NOT EXISTS protocol       text,
    ADD COLUMN IF NOT EXISTS capacity_bytes bigint;

CREATE OR REPLACE FUNCTION phonehome_severity_rank(severity text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE severity WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 WHEN 'info' THEN 1 ELSE 0 END;

CREATE INDEX IF NOT EXISTS alerts_firing_by_appliance ON alerts (appliance_id, severity) WHERE state = 'firing';
CREATE INDEX IF NOT EXISTS alerts_firing_by_subject ON alerts (subject) WHERE state = 'firing';
-- The alert list's order: most severe first, then oldest first.
CREATE INDEX IF NOT EXISTS alerts_firing_order
    ON alerts ((3 - phonehome_severity_rank(severity)), started_at, id) WHERE state = 'firing';

CREATE OR REPLACE FUNCTION phonehome_alert_health() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE appliances a SET health = coalesce((
        SELECT max(phonehome_severity_rank(al.severity)) FROM alerts al
        WHERE al.appliance_id = a.id AND al.state = 'firing'), 0)
    WHERE a.id = NEW.appliance_id;
    IF NEW.rule LIKE 'disk\_%' THEN
        UPDATE drives d SET health = coalesce((
            SELECT max(phonehome_severity_rank(al.severity)) FROM alerts al
            WHERE al.subject = d.drive_key AND al.state = 'firing' AND al.rule LIKE 'disk\_%'), 0)
        WHERE d.drive_key = NEW.subject;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS alerts_health_on_insert ON alerts;
CREATE TRIGGER alerts_health_on_insert AFTER INSERT ON alerts
    FOR EACH ROW WHEN (NEW.state = 'firing') EXECUTE FUNCTION phonehome_alert_health();
DROP TRIGGER IF EXISTS alerts_health_on_change ON alerts;
CREATE TRIGGER alerts_health_on_change AFTER UPDATE OF state, severity ON alerts
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.severity IS DISTINCT FROM NEW.severity)
    EXECUTE FUNCTION phonehome_alert_health();

-- What the alerts said before this migration.
UPDATE appliances a SET health = h.rank
FROM (SELECT appliance_id, max(phonehome_severity_rank(severity)) AS rank
      FROM alerts WHERE state = 'firing' GROUP BY appliance_id) h
WHERE a.id = h.appliance_id;
UPDATE drives d SET health = h.rank
FROM (SELECT subject, max(phonehome_severity_rank(severity)) AS rank
      FROM alerts WHERE state = 'firing' AND rule LIKE 'disk\_%' GROUP BY subject) h
WHERE d.drive_key = h.subject;

-- When each appliance last reported, in a narrow table of its own: the appliance list sorts and
-- filters by it and the silence check looks for the oldest, so it needs an index, but an index
-- on appliances.last_report_at would make every report's update of that wide row touch all of
-- its indexes (no HOT update). A statement trigger copies it here, one call per batch; the rows
-- are written only by statements that hold the appliance's own row lock.
CREATE TABLE IF NOT EXISTS appliance_seen (
    appliance_id   integer     PRIMARY KEY,
    serial         text        NOT NULL,
    last_report_at timestamptz NOT NULL
) WITH (fillfactor = 70);
CREATE INDEX IF NOT EXISTS appliance_seen_last_report ON appliance_seen (last_report_at, serial);

CREATE OR REPLACE FUNCTION phonehome_appliance_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO appliance_seen (appliance_id, serial, last_report_at)
    SELECT id, serial, last_report_at FROM changed
    ON CONFLICT (appliance_id) DO UPDATE SET last_report_at = EXCLUDED.last_report_at
        WHERE appliance_seen.last_report_at IS DISTINCT FROM EXCLUDED.last_report_at;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS appliances_seen_on_insert ON appliances;
CREATE TRIGGER appliances_seen_on_insert AFTER INSERT ON appliances
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION phonehome_appliance_seen();
DROP TRIGGER IF EXISTS appliances_seen_on_update ON appliances;
CREATE TRIGGER appliances_seen_on_update AFTER UPDATE ON appliances
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION phonehome_appliance_seen();
INSERT INTO appliance_seen (appliance_id, serial, last_report_at)
SELECT id, serial, last_report_at FROM appliances
ON CONFLICT (appliance_id) DO UPDATE SET last_report_at = EXCLUDED.last_report_at;

-- The appliance list: by serial (the primary key), worst first (3 - health ascending, so one
-- row comparison is the keyset), and by search prefix, version or OS. None of these columns
-- changes with an ordinary report, so report updates stay HOT.
CREATE INDEX IF NOT EXISTS appliances_worst_first ON appliances ((3 - health), serial);
CREATE INDEX IF NOT EXISTS appliances_serial_prefix ON appliances (lower(serial) text_pattern_ops);
CREATE INDEX IF NOT EXISTS appliances_hostname_prefix ON appliances (lower(hostname) text_pattern_ops);
CREATE INDEX IF NOT EXISTS appliances_app_version ON appliances (app_version, serial);
CREATE INDEX IF NOT EXISTS appliances_os ON appliances (os_pretty_name, serial);

-- The drive list: worst first, then by key; by model or firmware; where each drive is now.
CREATE INDEX IF NOT EXISTS drives_worst_first ON drives ((3 - health), drive_key);
CREATE INDEX IF NOT EXISTS drives_model ON drives (model, drive_key);
CREATE INDEX IF NOT EXISTS drives_firmware ON drives (firmware, drive_key);
CREATE INDEX IF NOT EXISTS drive_membership_current ON drive_membership (drive_id) WHERE until_at IS NULL;

-- Resolved alerts, newest first, by rule or severity: history grows forever, so a filter on a
-- rare rule must not walk all of it.
CREATE INDEX IF NOT EXISTS alerts_resolved_by_rule ON alerts (rule, id) WHERE state = 'resolved';
CREATE INDEX IF NOT EXISTS alerts_resolved_by_severity ON alerts (severity, id) WHERE state = 'resolved';
