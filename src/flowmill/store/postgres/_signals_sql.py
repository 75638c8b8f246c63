"""The SQL of waitpoints, signals, suspensions, output frames and meta values in the
PostgreSQL store, for one schema."""

from __future__ import annotations

from ..._states import TERMINAL
from .._common.waitpoints import RESUMED, TIMED_OUT
from ._compact import compact_statements
from ._schema import quote_schema
from ._sql import NOW

_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))
SATISFIED = "satisfied"
TIMEOUT = "timeout"
_RESULT_UPSERT = (
    "ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result, "
    "error = excluded.error, finished_at = excluded.finished_at"
)


class SignalQueries:
    """Every statement of the signal and frame operations, for one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)
        wp_cols = "id, task_id, key, expires_at, created_at"
        # Fenced writes lock the task row FOR SHARE: a claim, finish or suspend of the
        # same task waits for them (and they for it), while they never wait for each other.
        self.waitpoint_create = f"""
WITH {NOW},
f AS MATERIALIZED (
    SELECT id FROM {s}.tasks WHERE id = %(task)s AND lease_epoch = %(epoch)s
        AND state = 'running' FOR SHARE
),
ins AS (
    INSERT INTO {s}.waitpoints ({wp_cols})
    SELECT %(id)s, f.id, %(key)s, c.now + %(expires_in)s, c.now FROM f, c
    ON CONFLICT (task_id, key) DO NOTHING
    RETURNING {wp_cols}
)
SELECT (SELECT count(*) FROM f), ins.* FROM (SELECT 1) x LEFT JOIN ins ON true
"""
        self.waitpoint_by_key = (
            f"SELECT {wp_cols} FROM {s}.waitpoints WHERE task_id = %(task)s AND key = %(key)s"
        )
        self.waitpoint_get = f"SELECT {wp_cols} FROM {s}.waitpoints WHERE id = %(id)s"
        self.waitpoints_list = (
            f"SELECT id, task_id, key, created_at, expires_at, closed_reason, closed_at "
            f"FROM {s}.waitpoints WHERE task_id = %(task)s ORDER BY created_at, id "
            "LIMIT %(limit)s"
        )
        # A signal is unconsumed (indexed by task) or names the suspension that consumed
        # it (indexed by suspension, found by task): two indexed reads, no scan.
        self.waitpoint_signals = f"""
SELECT seq, waitpoint_id, name, payload, at FROM {s}.signals
WHERE task_id = %(task)s AND suspension_id IS NULL
UNION ALL
SELECT g.seq, g.waitpoint_id, g.name, g.payload, g.at FROM {s}.suspensions p
JOIN {s}.signals g ON g.suspension_id = p.id WHERE p.task_id = %(task)s
ORDER BY 1
"""

        # -- signal_deliver: the task row locked first, then everything else read ---------
        # Every write about a task's signals holds this lock, so the next statement (a new
        # snapshot, in READ COMMITTED) sees all of them: none is in flight meanwhile.
        self.signal_deliver_lock = f"""
SELECT id FROM {s}.tasks
WHERE id = (SELECT task_id FROM {s}.waitpoints WHERE id = %(wp)s)
FOR UPDATE
"""
        # The signal is stored unless the waitpoint has expired or the task has ended; for
        # a suspended task, its open suspension and every signal not consumed yet come back.
        self.signal_deliver = f"""
WITH {NOW},
w AS (
    SELECT w.task_id, w.expires_at, t.state, w.closed_at, w.closed_reason
    FROM {s}.waitpoints w JOIN {s}.tasks t ON t.id = w.task_id WHERE w.id = %(wp)s
),
ok AS (
    SELECT w.task_id FROM w, c
    WHERE w.expires_at > c.now AND w.state NOT IN ({_TERMINAL_SQL}) AND w.closed_at IS NULL
),
ins AS (
    INSERT INTO {s}.signals (task_id, waitpoint_id, name, payload, idempotency_key, at)
    SELECT ok.task_id, %(wp)s, %(name)s, %(payload)s, %(key)s, c.now FROM ok, c
    ON CONFLICT (waitpoint_id, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO NOTHING
    RETURNING seq, task_id
),
sus AS (
    SELECT s.id, s.condition FROM {s}.suspensions s, w
    WHERE s.task_id = w.task_id AND s.resolved_at IS NULL AND w.state = 'suspended'
),
old AS (
    SELECT g.seq, g.waitpoint_id, g.name FROM {s}.signals g, ins
    WHERE g.task_id = ins.task_id AND g.suspension_id IS NULL AND EXISTS (SELECT 1 FROM sus)
)
SELECT w.task_id, w.expires_at, w.state, c.now,
    EXISTS (SELECT 1 FROM {s}.signals WHERE waitpoint_id = %(wp)s
        AND idempotency_key = %(key)s),
    (SELECT seq FROM ins), (SELECT id FROM sus), (SELECT condition FROM sus),
    ARRAY(SELECT waitpoint_id FROM old ORDER BY seq), ARRAY(SELECT name FROM old ORDER BY seq),
    w.closed_at, w.closed_reason
FROM c LEFT JOIN w ON true
"""
        # A suspension timed out: close the waitpoints it owns (`ids`; NULL: every open one
        # of the task) and give their signals that nothing consumed to it.
        self.close_waitpoints = f"""
WITH cl AS (
    UPDATE {s}.waitpoints SET closed_at = %(now)s, closed_reason = '{TIMED_OUT}'
    WHERE task_id = %(task)s AND closed_at IS NULL
        AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
    RETURNING id
)
UPDATE {s}.signals SET suspension_id = %(sid)s
WHERE task_id = %(task)s AND suspension_id IS NULL AND waitpoint_id IN (SELECT id FROM cl)
"""
        # Every unconsumed signal is consumed (the one just stored is the last), and the
        # waitpoints the suspension owns close (`ids`; NULL: every open one of the task).
        self.resume = f"""
WITH cons AS (
    UPDATE {s}.signals SET suspension_id = %(sid)s
    WHERE task_id = %(task)s AND suspension_id IS NULL AND seq <= %(last)s
),
cl AS (
    UPDATE {s}.waitpoints SET closed_at = %(now)s, closed_reason = '{RESUMED}'
    WHERE {{owned}} AND task_id = %(task)s AND closed_at IS NULL
),
res AS (
    UPDATE {s}.suspensions SET resolved_at = %(now)s, resolution = '{SATISFIED}'
    WHERE id = %(sid)s
),
upd AS (
    UPDATE {s}.tasks SET state = 'ready', updated_at = %(now)s
    WHERE id = %(task)s AND state = 'suspended'
    RETURNING id, kind
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'ready', %(now)s, 'resumed' FROM upd),
n AS (SELECT pg_notify(%(work_channel)s, '') FROM upd)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n)
"""

        # -- task_suspend ----------------------------------------------------------------
        self.task_suspend_lock = f"""
WITH {NOW}
SELECT t.attempts, c.now, t.cancel_requested FROM {s}.tasks t, c
WHERE t.id = %(task)s AND t.lease_epoch = %(epoch)s AND t.state = 'running'
FOR UPDATE OF t
"""
        self.unconsumed = (
            f"SELECT seq, waitpoint_id, name FROM {s}.signals "
            "WHERE task_id = %(task)s AND suspension_id IS NULL ORDER BY seq"
        )
        sus_cols = "task_id, condition, timeout_at, on_timeout, attempt, created_at"
        sus_vals = "%(task)s, %(condition)s, %(timeout_at)s, %(on_timeout)s, %(attempt)s, %(now)s"
        self.task_suspend_satisfied = f"""
WITH ins AS (
    INSERT INTO {s}.suspensions ({sus_cols}, resolved_at, resolution)
    VALUES ({sus_vals}, %(now)s, '{SATISFIED}')
    RETURNING id
),
cons AS (
    UPDATE {s}.signals SET suspension_id = (SELECT id FROM ins)
    WHERE task_id = %(task)s AND suspension_id IS NULL AND seq <= %(last)s
),
cl AS (
    UPDATE {s}.waitpoints SET closed_at = %(now)s, closed_reason = '{RESUMED}'
    WHERE {{owned}} AND task_id = %(task)s AND closed_at IS NULL
)
SELECT id FROM ins
"""
        # The attempt is given back, as by a release: the claim that resumes it counts it.
        self.task_suspend = f"""
WITH ins AS (
    INSERT INTO {s}.suspensions ({sus_cols}) VALUES ({sus_vals})
),
upd AS (
    UPDATE {s}.tasks SET state = 'suspended', lease_owner = NULL, lease_expires_at = NULL,
        attempts = attempts - 1, updated_at = %(now)s
    WHERE id = %(task)s
    RETURNING id, kind
)
INSERT INTO {s}.events (task_id, kind, state, at, detail)
SELECT id, kind, 'suspended', %(now)s, %(detail)s FROM upd
"""

        # The statements that close waitpoints, for a condition that names its waitpoints
        # (`ids`, by primary key) and for one with a `Signal` on any waitpoint (all open).
        owned, every = "id = ANY(%(ids)s::text[])", "true"
        template = self.resume
        self.resume, self.resume_any = (
            template.replace("{owned}", owned),
            template.replace("{owned}", every),
        )
        template = self.task_suspend_satisfied
        self.task_suspend_satisfied, self.task_suspend_satisfied_any = (
            template.replace("{owned}", owned),
            template.replace("{owned}", every),
        )

        # -- suspensions_expire ------------------------------------------------------------
        self.suspensions_expire_due = f"""
WITH {NOW}
SELECT s.task_id, c.now FROM {s}.suspensions s JOIN {s}.tasks t ON t.id = s.task_id, c
WHERE s.resolved_at IS NULL AND s.timeout_at <= c.now AND t.state = 'suspended'
ORDER BY s.timeout_at, s.id LIMIT %(limit)s
"""
        # Their parents are locked first: the parent-before-child order of tree writes.
        self.lock_parents = f"""
SELECT p.id FROM {s}.tasks p
WHERE p.id IN (SELECT parent_id FROM {s}.tasks WHERE id = ANY(%(ids)s::text[])
    AND parent_id IS NOT NULL)
ORDER BY p.id FOR NO KEY UPDATE OF p
"""
        self.suspensions_expire_lock = f"""
SELECT s.id, s.task_id, s.on_timeout, t.parent_id, s.condition
FROM {s}.suspensions s JOIN {s}.tasks t ON t.id = s.task_id
WHERE s.task_id = ANY(%(ids)s::text[]) AND s.resolved_at IS NULL
    AND s.timeout_at <= %(now)s AND t.state = 'suspended'
ORDER BY t.id
FOR UPDATE OF t, s SKIP LOCKED
"""
        self.resolve_timeouts = (
            f"UPDATE {s}.suspensions SET resolved_at = %(now)s, resolution = '{TIMEOUT}' "
            "WHERE id = ANY(%(ids)s::bigint[])"
        )
        self.suspensions_expire = f"""
WITH a AS (
    SELECT * FROM unnest(%(ids)s::text[], %(targets)s::text[], %(errors)s::text[],
        %(details)s::text[]) AS a(id, target, error, detail)
),
upd AS (
    UPDATE {s}.tasks t SET state = a.target, error = coalesce(a.error, t.error),
        updated_at = %(now)s,
        finished_at = CASE WHEN a.target = 'ready' THEN t.finished_at ELSE %(now)s END
    FROM a WHERE t.id = a.id
    RETURNING t.id, t.kind, t.seq, a.target, a.error, a.detail
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, target, %(now)s, detail FROM upd ORDER BY seq),
res AS (INSERT INTO {s}.results (task_id, state, result, error, finished_at)
    SELECT id, target, NULL, error, %(now)s FROM upd WHERE target <> 'ready'
    {_RESULT_UPSERT}),
nw AS (SELECT pg_notify(%(work_channel)s, '')
    FROM (SELECT 1 FROM upd WHERE target = 'ready' LIMIT 1) x),
nf AS (SELECT pg_notify(%(finish_channel)s, '')
    FROM (SELECT 1 FROM upd WHERE target <> 'ready' LIMIT 1) x)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM nw), (SELECT count(*) FROM nf)
"""

        self.resume_signals = f"""
WITH last AS (
    SELECT id, resolution FROM {s}.suspensions WHERE task_id = %(id)s
    ORDER BY id DESC LIMIT 1
)
SELECT g.waitpoint_id, g.name, g.payload, g.at FROM {s}.signals g, last
WHERE last.resolution = '{SATISFIED}' AND g.suspension_id = last.id
ORDER BY g.seq
"""

        # -- frames --------------------------------------------------------------------------
        self.frames_append = f"""
WITH {NOW},
f AS MATERIALIZED (
    SELECT attempts FROM {s}.tasks WHERE id = %(task)s AND lease_epoch = %(epoch)s
        AND state = 'running' FOR SHARE
),
n AS (
    INSERT INTO {s}.frame_seqs (task_id, attempt, seq)
    SELECT %(task)s, f.attempts, 1 FROM f
    ON CONFLICT (task_id, attempt) DO UPDATE SET seq = {s}.frame_seqs.seq + 1
    RETURNING attempt, seq
),
ins AS (
    INSERT INTO {s}.frames (task_id, attempt, seq, frame_type, payload, metadata, at)
    SELECT %(task)s, n.attempt, n.seq, %(frame_type)s, %(payload)s, %(metadata)s, c.now
    FROM n, c
),
nt AS (SELECT pg_notify(%(frames_channel)s, '') FROM n)
SELECT n.attempt, n.seq, (SELECT count(*) FROM nt) FROM n
"""
        # One row per frame (or one with NULL frame columns): the task's state and current
        # attempt, the attempt read (given, else the latest with frames, else the current).
        self.frames_read = f"""
WITH t AS (SELECT state, attempts FROM {s}.tasks WHERE id = %(task)s),
a AS (
    SELECT coalesce(%(attempt)s::int,
        (SELECT max(attempt) FROM {s}.frames WHERE task_id = %(task)s),
        nullif((SELECT attempts FROM t), 0)) AS attempt
)
SELECT t.state, t.attempts, a.attempt, f.seq, f.frame_type, f.payload, f.metadata, f.at
FROM t CROSS JOIN a LEFT JOIN LATERAL (
    SELECT seq, frame_type, payload, metadata, at FROM {s}.frames
    WHERE task_id = %(task)s AND attempt = a.attempt AND seq > %(after)s
    ORDER BY seq LIMIT %(limit)s
) f ON true
ORDER BY f.seq
"""

        self.meta_get_or_set_insert = (
            f"INSERT INTO {s}.meta (key, value) VALUES (%(key)s, %(value)s) "
            "ON CONFLICT (key) DO NOTHING"
        )
        self.meta_get_or_set_read = f"SELECT value FROM {s}.meta WHERE key = %(key)s"
        compact_statements(self)
