-- Acknowledgements and mutes (issue 15). An acknowledged alert resolves and its condition stays
-- quiet until it gets worse (a higher severity, a new reason, another rise); a mute silences an
-- appliance, or one rule of it, until a time. Both are operators' decisions, in the audit log.
-- IF NOT EXISTS: report batches read these tables, and an upgrade test adds them ahead.

-- One per alert fingerprint (rule/serial/subject): what was acknowledged, to tell "worse".
CREATE TABLE IF NOT EXISTS alert_acks (
    fingerprint  text        PRIMARY KEY,
    appliance_id integer     NOT NULL,
    rule         text        NOT NULL,
    subject      text        NOT NULL,
    severity     text        NOT NULL,
    value        text        NOT NULL,
    acked_at     timestamptz NOT NULL,
    acked_by     text        NOT NULL,
    note         text        NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS alert_acks_appliance ON alert_acks (appliance_id);

-- A mute of a serial: every rule (rule NULL) or one, until `until`.
CREATE TABLE IF NOT EXISTS alert_mutes (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    serial     text        NOT NULL,
    rule       text,
    until      timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    created_by text        NOT NULL,
    note       text        NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS alert_mutes_serial ON alert_mutes (serial, until);
