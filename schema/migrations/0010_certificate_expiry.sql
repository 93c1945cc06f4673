-- When each certificate that delivered a report ends: what `/metrics` counts appliances by
-- (days to expiry) and the appliance page shows. NULL for certificates first seen before this
-- migration (counted as `unknown` until the appliance renews).
ALTER TABLE certificates ADD COLUMN not_after timestamptz;
