-- Identity you can trust: a serial whose system UUID or machine-id changes (chassis or board
-- swapped, disk moved, re-imaged), and a system UUID or machine-id reported by two serials
-- (a cloned image), are recorded as events. Each distinct finding is recorded once.

CREATE TABLE identity_events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    serial       text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN (
                     'system_uuid_changed', 'machine_id_changed',
                     'system_uuid_shared', 'machine_id_shared')),
    -- For *_changed: the value before and after. For *_shared: new_value is the shared value.
    old_value    text,
    new_value    text        NOT NULL,
    -- For *_shared: the other serial that reported the same value.
    other_serial text,
    report_id    uuid        NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX identity_events_once
    ON identity_events (serial, kind, new_value, coalesce(other_serial, ''));
CREATE INDEX identity_events_detected_at ON identity_events (detected_at);

-- Finding another serial with the same identifiers must not scan the fleet.
CREATE INDEX appliances_machine_id ON appliances (machine_id) WHERE machine_id IS NOT NULL;
CREATE INDEX appliances_system_uuid ON appliances (system_uuid) WHERE system_uuid IS NOT NULL;
