-- Flapping (issue 15): a condition that clears and returns within `[alerts]
-- reopen_within_hours` reopens its last episode instead of starting a new one, and the episode
-- counts how often it came back. IF NOT EXISTS: an upgrade test adds it ahead.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS reopened integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS alerts_recently_resolved ON alerts (fingerprint, resolved_at)
    WHERE state = 'resolved';
