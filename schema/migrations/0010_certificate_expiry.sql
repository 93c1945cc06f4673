-- When each certificate that delivered a report ends: what `/metrics` counts appliances by
-- (days to expiry) and the appliance page shows. NULL for certificates first seen before this
-- migration (counted as `unknown` until the appliance renews).
-- IF NOT EXISTS: an upgrade test adds it ahead of its turn, as it does migration 7's columns.
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS not_after timestamptz;
