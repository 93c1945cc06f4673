-- Appliance and drive health (migration 7) kept once per statement, not once per alert row
-- (issue 17, the million-appliance drain).
--
-- The row trigger ran an UPDATE of the appliance (and, for a disk alert, of the drive) for each
-- firing alert a batch inserted, each a statement of its own that fired appliances' statement
-- triggers in turn, and wrote the row even when its health did not change: 1.8 ms for each
-- batch's alert insert of four rows on average, 7 % of PostgreSQL's time in a first-contact drain
-- (pg_stat_statements). Now one UPDATE of the appliances and one of the drives per statement,
-- touching only rows whose health changes. Health stays what it was: the worst severity of the
-- firing alerts (0 none, 1 info, 2 warning, 3 critical); only its bookkeeping moves.
-- Safe to run again.
DROP TRIGGER IF EXISTS alerts_health_on_insert ON alerts;
DROP TRIGGER IF EXISTS alerts_health_on_change ON alerts;

-- Recomputes the health of the appliances and drives named by `touched` (alerts rows whose
-- state or severity just changed, or that were just inserted).
CREATE OR REPLACE FUNCTION phonehome_alerts_health_of(touched_appliances integer[],
                                                      touched_drives text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(touched_appliances) > 0 THEN
        UPDATE appliances a SET health = h.rank
        FROM (SELECT t.id, coalesce((
                  SELECT max(phonehome_severity_rank(al.severity)) FROM alerts al
                  WHERE al.appliance_id = t.id AND al.state = 'firing'), 0) AS rank
              FROM unnest(touched_appliances) AS t(id)) h
        WHERE a.id = h.id AND a.health IS DISTINCT FROM h.rank;
    END IF;
    IF cardinality(touched_drives) > 0 THEN
        UPDATE drives d SET health = h.rank
        FROM (SELECT t.key, coalesce((
                  SELECT max(phonehome_severity_rank(al.severity)) FROM alerts al
                  WHERE al.subject = t.key AND al.state = 'firing' AND al.rule LIKE 'disk\_%'), 0)
                  AS rank
              FROM unnest(touched_drives) AS t(key)) h
        WHERE d.drive_key = h.key AND d.health IS DISTINCT FROM h.rank;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION phonehome_alerts_health_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM phonehome_alerts_health_of(
        ARRAY(SELECT DISTINCT appliance_id FROM added WHERE state = 'firing'),
        ARRAY(SELECT DISTINCT subject FROM added
              WHERE state = 'firing' AND rule LIKE 'disk\_%'));
    RETURN NULL;
END $$;

-- Statement triggers with transition tables cannot name columns (UPDATE OF state, severity):
-- the rows whose state or severity changed are picked out here.
CREATE OR REPLACE FUNCTION phonehome_alerts_health_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM phonehome_alerts_health_of(
        ARRAY(SELECT DISTINCT n.appliance_id FROM after_rows n JOIN before_rows o ON o.id = n.id
              WHERE o.state IS DISTINCT FROM n.state OR o.severity IS DISTINCT FROM n.severity),
        ARRAY(SELECT DISTINCT n.subject FROM after_rows n JOIN before_rows o ON o.id = n.id
              WHERE (o.state IS DISTINCT FROM n.state OR o.severity IS DISTINCT FROM n.severity)
                AND n.rule LIKE 'disk\_%'));
    RETURN NULL;
END $$;

CREATE TRIGGER alerts_health_on_insert AFTER INSERT ON alerts
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION phonehome_alerts_health_on_insert();
CREATE TRIGGER alerts_health_on_change AFTER UPDATE ON alerts
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION phonehome_alerts_health_on_update();
