-- Alerts (issue 5): one row per episode of a condition. A condition that holds again while its
-- alert fires writes nothing; one that clears resolves the row; the history stays.

CREATE TABLE alerts (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- rule/serial/subject: stable across episodes, what Alertmanager groups by.
    fingerprint   text        NOT NULL,
    rule          text        NOT NULL,
    appliance_id  integer     NOT NULL,
    -- What in the appliance: a drive key, a mount point, a NIC, a section; '' for the whole.
    subject       text        NOT NULL,
    severity      text        NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    state         text        NOT NULL CHECK (state IN ('firing', 'resolved')),
    -- The report time (collected_at) that fired and resolved it; for appliance_silent the
    -- evaluation time.
    started_at    timestamptz NOT NULL,
    resolved_at   timestamptz,
    -- The value that fired (and, for rules judged by change, the latest rise).
    value         text        NOT NULL,
    summary       text        NOT NULL,
    -- When the condition was last seen getting worse (rules judged by change resolve after a
    -- quiet period counted from here).
    changed_at    timestamptz NOT NULL,
    -- Alertmanager: when this episode was last sent, and whether its resolution was.
    notified_at   timestamptz,
    resolution_notified boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX alerts_one_firing ON alerts (fingerprint) WHERE state = 'firing';
CREATE INDEX alerts_appliance ON alerts (appliance_id, started_at);
CREATE INDEX alerts_firing ON alerts (rule, severity) WHERE state = 'firing';
CREATE INDEX alerts_to_notify ON alerts (notified_at)
    WHERE state = 'firing' OR NOT resolution_notified;

-- The boot the newest report came from: NIC counters restart with it.
ALTER TABLE appliances ADD COLUMN boot_id uuid;
