-- The history model (issue 4): every report kept compactly in monthly partitions, time series
-- per drive, filesystem and NIC, drive membership, the version audit trail, and a log of
-- maintenance runs. Partitions themselves are created by the ingest (ahead of time by the
-- maintenance task, and on demand for a month a late report needs), never by a migration: a
-- migration cannot know the clock or the configured retention.

-- Current state gets a compact integer key that history rows use instead of the serial text.
ALTER TABLE appliances ADD COLUMN id integer GENERATED ALWAYS AS IDENTITY;
ALTER TABLE appliances ADD CONSTRAINT appliances_id_key UNIQUE (id);
ALTER TABLE appliances
    ADD COLUMN drive_count         integer NOT NULL DEFAULT 0,
    ADD COLUMN failing_drive_count integer NOT NULL DEFAULT 0,
    ADD COLUMN filesystem_count    integer NOT NULL DEFAULT 0,
    ADD COLUMN nic_count           integer NOT NULL DEFAULT 0,
    -- Sections (or items) the collector could not collect in the newest report.
    ADD COLUMN collection_errors   integer NOT NULL DEFAULT 0,
    ADD COLUMN dropped_reports     bigint  NOT NULL DEFAULT 0,
    ADD COLUMN last_cert_sha256    bytea;

-- The walking skeleton's reports (jsonb bodies, keyed by serial) are moved into the new table
-- by the ingest right after this migration, then this table is dropped.
ALTER TABLE reports RENAME TO reports_legacy;
ALTER TABLE reports_legacy RENAME CONSTRAINT reports_pkey TO reports_legacy_pkey;
ALTER TABLE reports_legacy
    RENAME CONSTRAINT reports_serial_report_id_key TO reports_legacy_serial_report_id_key;

-- zstd dictionaries trained on the fleet's own reports; a report body names the one it was
-- compressed with. Never deleted while a report refers to it.
CREATE TABLE body_dictionaries (
    id         smallint    PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    samples    integer     NOT NULL,
    dict       bytea       NOT NULL
);

-- Every report, as evidence. Columns are ordered for alignment (8-byte first) because this is
-- the table a million appliances fill daily.
CREATE TABLE reports (
    collected_at    timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    appliance_id    integer     NOT NULL,
    -- NULL: plain zstd; otherwise body_dictionaries.id.
    body_dictionary smallint,
    report_id       uuid        NOT NULL,
    -- SHA-256 of the client certificate (DER) that delivered the report.
    cert_sha256     bytea       NOT NULL,
    app_status      text        NOT NULL,
    app_version     text,
    -- The report's JSON exactly as received (after transfer decoding), zstd-compressed.
    body            bytea       NOT NULL,
    -- The idempotency key. A partitioned table's unique key must hold the partition key; a retry
    -- carries the same body, so the same collected_at, and is still stored once. The same key
    -- serves "this appliance's reports from .. to ..".
    CONSTRAINT reports_key UNIQUE (appliance_id, collected_at, report_id)
) PARTITION BY RANGE (collected_at);
-- Already compressed: PostgreSQL must not spend CPU trying again.
ALTER TABLE reports ALTER COLUMN body SET STORAGE EXTERNAL;

-- A physical drive, keyed by its WWN or by model and serial, never by its /dev name (which
-- changes across reboots).
CREATE TABLE drives (
    id            integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    drive_key     text        NOT NULL UNIQUE,
    model         text,
    serial        text,
    wwn           text,
    first_seen_at timestamptz NOT NULL
);

-- Which drive sat in which appliance from when to when (collected_at of the first report that
-- showed it there, and of the first that did not).
CREATE TABLE drive_membership (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    drive_id     integer     NOT NULL REFERENCES drives (id),
    appliance_id integer     NOT NULL,
    device_name  text        NOT NULL,
    from_at      timestamptz NOT NULL,
    until_at     timestamptz
);
CREATE UNIQUE INDEX drive_membership_open
    ON drive_membership (appliance_id, drive_id) WHERE until_at IS NULL;
CREATE INDEX drive_membership_drive ON drive_membership (drive_id, from_at);

-- A drive that appears in, disappears from, or moves into an appliance.
CREATE TABLE drive_events (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    drive_id           integer     NOT NULL REFERENCES drives (id),
    appliance_id       integer     NOT NULL,
    kind               text        NOT NULL CHECK (kind IN ('appeared', 'disappeared', 'moved')),
    -- For 'moved': the appliance the drive was in before.
    from_appliance_id  integer,
    device_name        text        NOT NULL,
    at                 timestamptz NOT NULL,
    report_id          uuid        NOT NULL,
    detected_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drive_events_appliance ON drive_events (appliance_id, at);
CREATE INDEX drive_events_detected_at ON drive_events (detected_at);

-- Per report and drive: what alerts and charts need.
CREATE TABLE drive_samples (
    collected_at          timestamptz NOT NULL,
    appliance_id          integer     NOT NULL,
    drive_id              integer     NOT NULL,
    power_on_hours        integer,
    temperature_celsius   smallint,
    nvme_critical_warning smallint,
    nvme_available_spare  smallint,
    nvme_percentage_used  smallint,
    health_passed         boolean,
    failing               boolean     NOT NULL,
    -- ATA counts: integer, not bigint; a value past 2^31 is garbage from a broken drive (the
    -- body keeps it verbatim) and 16 bytes per drive and report add up.
    reallocated_sectors   integer,
    pending_sectors       integer,
    offline_uncorrectable integer,
    crc_errors            integer,
    nvme_media_errors     bigint,
    scsi_grown_defects    bigint,
    scsi_uncorrected      bigint
) PARTITION BY RANGE (collected_at);
CREATE INDEX drive_samples_appliance ON drive_samples (appliance_id, collected_at);

CREATE TABLE filesystem_samples (
    collected_at timestamptz NOT NULL,
    appliance_id integer     NOT NULL,
    bytes_total  bigint      NOT NULL,
    bytes_used   bigint      NOT NULL,
    inodes_total bigint      NOT NULL,
    inodes_used  bigint      NOT NULL,
    mount_point  text        NOT NULL
) PARTITION BY RANGE (collected_at);
CREATE INDEX filesystem_samples_appliance ON filesystem_samples (appliance_id, collected_at);

CREATE TABLE nic_samples (
    collected_at timestamptz NOT NULL,
    appliance_id integer     NOT NULL,
    rx_bytes     bigint,
    tx_bytes     bigint,
    rx_errors    bigint,
    tx_errors    bigint,
    rx_dropped   bigint,
    tx_dropped   bigint,
    name         text        NOT NULL
) PARTITION BY RANGE (collected_at);
CREATE INDEX nic_samples_appliance ON nic_samples (appliance_id, collected_at);

-- The patch audit trail: each change of an appliance's app, OS, kernel or collector version,
-- dated by the first report that showed the new one. An appliance's first report records its
-- versions with old_version NULL.
CREATE TABLE version_changes (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    appliance_id integer     NOT NULL,
    component    text        NOT NULL CHECK (component IN ('app', 'os', 'kernel', 'collector')),
    old_version  text,
    new_version  text,
    changed_at   timestamptz NOT NULL,
    report_id    uuid        NOT NULL
);
CREATE INDEX version_changes_appliance ON version_changes (appliance_id, changed_at);
CREATE INDEX version_changes_component ON version_changes (component, changed_at);

-- How many appliances ran which version at the end of each day (UTC), computed by the
-- maintenance task from version_changes; '' stands for "unknown".
CREATE TABLE version_counts_daily (
    day        date    NOT NULL,
    component  text    NOT NULL,
    version    text    NOT NULL,
    appliances integer NOT NULL,
    PRIMARY KEY (day, component, version)
);

-- One row per maintenance run, whichever replica ran it.
CREATE TABLE maintenance_runs (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    replica            text        NOT NULL,
    started_at         timestamptz NOT NULL,
    finished_at        timestamptz,
    partitions_created integer     NOT NULL DEFAULT 0,
    partitions_dropped integer     NOT NULL DEFAULT 0,
    dictionary_trained smallint,
    error              text
);
