-- flowmill SQLite schema, migration 2: leases judged on the host's monotonic clock, the
-- lease record says whether its handler started, and one-shot waitpoints.
--
-- `lease_boot` is the boot id of the host whose boot-time clock `lease_expires_at` is
-- measured on (NULL: a time the caller injected); a lease of another boot is expired.
-- `lease_started` is 1 once the handler of the attempt holding the lease has started (a
-- reclaimed unstarted lease is given back uncharged). Rows running before this migration
-- are started. A waitpoint is closed (`closed_at`, `closed_reason`) when its suspension
-- resumes, times out or is cancelled.

ALTER TABLE fm_tasks ADD COLUMN lease_boot TEXT;
ALTER TABLE fm_tasks ADD COLUMN lease_started INTEGER NOT NULL DEFAULT 1;
ALTER TABLE fm_waitpoints ADD COLUMN closed_at INTEGER;
ALTER TABLE fm_waitpoints ADD COLUMN closed_reason TEXT;
