-- Walking-skeleton schema: every report kept as evidence, and one row of current state per
-- appliance so that fleet pages never scan history.

CREATE TABLE appliances (
    serial            text        PRIMARY KEY,
    hostname          text,
    system_uuid       uuid,
    machine_id        text,
    first_seen_at     timestamptz NOT NULL,
    -- When the ingest committed the newest report; drives "silent appliance" later.
    last_report_at    timestamptz NOT NULL,
    last_collected_at timestamptz NOT NULL,
    last_report_id    uuid        NOT NULL,
    app_version       text,
    app_status        text        NOT NULL,
    os_pretty_name    text,
    kernel            text,
    collector_version text        NOT NULL,
    report_count      bigint      NOT NULL DEFAULT 1
);

CREATE TABLE reports (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    serial       text        NOT NULL,
    report_id    uuid        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    collected_at timestamptz NOT NULL,
    -- SHA-256 of the client certificate (DER) that delivered the report.
    cert_sha256  bytea       NOT NULL,
    body         jsonb       NOT NULL,
    -- The idempotency key: a retry of the same report is stored once.
    CONSTRAINT reports_serial_report_id_key UNIQUE (serial, report_id)
);
