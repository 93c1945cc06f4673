-- Routing labels operators put on appliances (customer, site, tier): every Alertmanager alert
-- of the appliance carries them, and the fleet pages filter by them. Keyed by serial, like the
-- lifecycle: an appliance is labelled before (or without) ever reporting. Names and values are
-- checked by the ingest (`labels.rs`); the bounds here are the last line.
CREATE TABLE appliance_labels (
    serial text NOT NULL,
    name   text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,31}$'),
    value  text NOT NULL CHECK (length(value) BETWEEN 1 AND 128),
    PRIMARY KEY (serial, name)
);
-- "Appliances of customer acme": the filter and the alert routing read by name and value.
CREATE INDEX appliance_labels_value ON appliance_labels (name, value);
