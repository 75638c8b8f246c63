-- flowmill PostgreSQL schema, migration 2: the lease record says whether its handler
-- started, and one-shot waitpoints. (Leases are judged on the server's clock already.)
--
-- `lease_started` is true once the handler of the attempt holding the lease has started
-- (a reclaimed unstarted lease is given back uncharged). Rows running before this
-- migration are started. A waitpoint is closed (`closed_at`, `closed_reason`) when its
-- suspension resumes, times out or is cancelled.

    ALTER TABLE {s}.tasks ADD COLUMN lease_started boolean NOT NULL DEFAULT true;
    ALTER TABLE {s}.waitpoints ADD COLUMN closed_at bigint;
    ALTER TABLE {s}.waitpoints ADD COLUMN closed_reason text;
