"""The SQL text of the PostgreSQL store's parent/child operations, built once per schema.

Times are passed in (`%(now)s`): these statements run inside one transaction that judges
every step by the same instant. Counters only ever change by `col = col ± n` under the
row lock of an UPDATE, never by reading a value and writing it back.
"""

from __future__ import annotations

from ..._states import ACTIVE, State
from ._compact import compact_statements
from ._schema import quote_schema
from ._sql import INSERT_COLUMNS, INSERT_VALUES, NEW_TASK_ROWS, NOW, ON_CANCEL

# Child ends that count as failures for fail_fast (a cancelled or skipped child does not).
CHILD_FAILURES = (State.DEAD_LETTERED, State.EXPIRED, State.FAILED)
# What a cascade moves straight to cancelled; running descendants are asked to stop.
STOPPABLE = (
    State.BLOCKED,
    State.READY,
    State.SCHEDULED,
    State.SUSPENDED,
    State.WAITING_CHILDREN,
)
_ACTIVE = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE))
_FAILURES = ", ".join(f"'{s.value}'" for s in CHILD_FAILURES)
_RESULT_UPSERT = (
    "ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result, "
    "error = excluded.error, finished_at = excluded.finished_at"
)
_HOOK = f"hook = CASE WHEN t.has_on_cancel THEN '{ON_CANCEL}' ELSE t.hook END"


class TreeQueries:
    """Every parent/child statement of the PostgreSQL store, for one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)
        self.clock = "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

        # -- spawns: the fence and every parent locked and checked, then the insert -----
        # The parents and the fence are locked in id order, as every batched write locks.
        lock_checks = f"""
lk AS MATERIALIZED (
    SELECT id, state, lease_epoch FROM {s}.tasks
    WHERE id = ANY(%(parents)s::text[]) OR id = %(fence_id)s
    ORDER BY id FOR NO KEY UPDATE
),
p AS (SELECT id, state FROM lk WHERE id = ANY(%(parents)s::text[])),
f AS (SELECT 1 FROM lk WHERE id = %(fence_id)s AND lease_epoch = %(fence_epoch)s
    AND state = 'running'),
ok AS MATERIALIZED (
    SELECT (%(fence_id)s::text IS NULL OR EXISTS (SELECT 1 FROM f)) AS fence_ok,
        (SELECT count(*) FROM p WHERE state IN ({_ACTIVE}))
            = cardinality(%(parents)s::text[]) AS parents_ok,
        (SELECT array_agg(id ORDER BY id) FROM p) AS found,
        (SELECT array_agg(state ORDER BY id) FROM p) AS states
)"""
        self.spawn_check = f"""
WITH {lock_checks}
SELECT fence_ok, parents_ok, found, states FROM ok
"""
        # Without dedup keys, spawns are one statement for any number of calls (merged by
        # the store's combiner): call k's rows carry `grp` = k, and each call's fence and
        # parents are checked apart. Nothing of a refused call is written; a child key
        # already taken under that parent (now, or by an earlier row) skips the row.
        self.spawn = f"""
WITH {NOW}, {NEW_TASK_ROWS},
g AS MATERIALIZED (
    SELECT * FROM unnest(%(g_fence_id)s::text[], %(g_fence_epoch)s::bigint[])
        WITH ORDINALITY AS g(fence_id, fence_epoch, grp)
),
rg AS MATERIALIZED (SELECT r.*, (%(grp)s::int[])[r.ord] AS grp FROM r),
lk AS MATERIALIZED (
    SELECT id, state, lease_epoch FROM {s}.tasks
    WHERE id IN (SELECT parent_id FROM rg WHERE parent_id IS NOT NULL
        UNION SELECT fence_id FROM g WHERE fence_id IS NOT NULL)
    ORDER BY id FOR NO KEY UPDATE
),
p AS (SELECT id, state FROM lk WHERE id IN (SELECT parent_id FROM rg)),
f AS (SELECT id, lease_epoch FROM lk WHERE state = 'running'),
ok AS MATERIALIZED (
    SELECT g.grp,
        (g.fence_id IS NULL OR EXISTS (SELECT 1 FROM f WHERE f.id = g.fence_id
            AND f.lease_epoch = g.fence_epoch)) AS fence_ok,
        NOT EXISTS (SELECT 1 FROM rg WHERE rg.grp = g.grp AND rg.parent_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM p WHERE p.id = rg.parent_id
                AND p.state IN ({_ACTIVE}))) AS parents_ok
    FROM g
),
ins AS (
    INSERT INTO {s}.tasks ({INSERT_COLUMNS})
    SELECT {INSERT_VALUES}
    FROM rg r JOIN ok ON ok.grp = r.grp WHERE ok.fence_ok AND ok.parents_ok ORDER BY r.ord
    ON CONFLICT (parent_id, child_key) WHERE child_key IS NOT NULL DO NOTHING
    RETURNING id, kind, state, created_at, parent_id
),
grow AS (
    UPDATE {s}.tasks t SET children_total = t.children_total + g.n,
        children_active = t.children_active + g.n, updated_at = (SELECT now FROM c)
    FROM (SELECT parent_id, count(*) AS n FROM ins WHERE parent_id IS NOT NULL
        GROUP BY parent_id) g
    WHERE t.id = g.parent_id
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at) SELECT id, kind, state, created_at
    FROM ins),
n AS (SELECT pg_notify(%(work_channel)s, '') FROM (SELECT 1 FROM ins WHERE state = 'ready'
    LIMIT 1) x)
SELECT (SELECT array_agg(fence_ok ORDER BY grp) FROM ok),
    (SELECT array_agg(parents_ok ORDER BY grp) FROM ok),
    (SELECT array_agg(id ORDER BY id) FROM p), (SELECT array_agg(state ORDER BY id) FROM p),
    (SELECT array_agg(id) FROM ins), (SELECT count(*) FROM n)
"""
        self.child_key_holders = f"""
SELECT t.parent_id, t.child_key, t.id
FROM unnest(%(parents)s::text[], %(keys)s::text[]) AS k(parent_id, child_key)
JOIN {s}.tasks t ON t.parent_id = k.parent_id AND t.child_key = k.child_key
"""
        self.grow = f"""
UPDATE {s}.tasks t SET children_total = t.children_total + g.n,
    children_active = t.children_active + g.n, updated_at = %(now)s
FROM unnest(%(ids)s::text[], %(counts)s::int[]) AS g(id, n)
WHERE t.id = g.id
"""

        # -- the join: ended children counted against their parents, one row per parent --
        self.children_ended = f"""
UPDATE {s}.tasks p SET children_active = p.children_active - a.n,
    children_failed = p.children_failed + a.nf, updated_at = %(now)s
FROM unnest(%(ids)s::text[], %(counts)s::int[], %(failed)s::int[]) AS a(id, n, nf)
WHERE p.id = a.id
RETURNING p.id, p.state, p.children_active, p.fail_fast, p.kind, p.parent_id
"""
        # Finalize gets an attempt budget of its own: execute's attempts are spent already.
        # (From running: wait_children with nothing outstanding, the row locked by it.)
        self.ready_for_finalize = f"""
WITH upd AS (
    UPDATE {s}.tasks t SET state = 'ready', phase = 'finalize', attempts = 0,
        updated_at = %(now)s
    WHERE t.id = ANY(%(ids)s::text[]) AND t.state IN ('running', 'waiting_children')
    RETURNING t.id, t.kind, t.seq
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'ready', %(now)s, 'children done: finalize' FROM upd ORDER BY seq),
n AS (SELECT pg_notify(%(work_channel)s, '') FROM (SELECT 1 FROM upd LIMIT 1) x)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n)
"""
        self.error_of = f"SELECT error FROM {s}.tasks WHERE id = %(id)s"
        self.first_failure = (
            f"SELECT id, state, error FROM {s}.tasks WHERE parent_id = %(parent)s "
            f"AND state IN ({_FAILURES}) ORDER BY finished_at, seq LIMIT 1"
        )
        self.fail_parent = f"""
WITH upd AS (
    UPDATE {s}.tasks t SET state = 'failed', error = %(error)s, finished_at = %(now)s,
        updated_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL, {_HOOK}
    WHERE t.id = %(id)s
    RETURNING t.id, t.kind
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'failed', %(now)s, %(category)s FROM upd),
res AS (INSERT INTO {s}.results (task_id, state, result, error, finished_at)
    SELECT id, 'failed', NULL, %(error)s, %(now)s FROM upd {_RESULT_UPSERT}),
n AS (SELECT pg_notify(%(finish_channel)s, '') FROM upd)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n)
"""

        # -- cascades: one page of one parent's children per statement -----------------
        self.cascade_page = f"""
WITH page AS MATERIALIZED (
    SELECT seq, id, kind, state, children_active FROM {s}.tasks
    WHERE seq IN (SELECT seq FROM {s}.tasks WHERE parent_id = %(parent)s
        AND seq > %(after)s ORDER BY seq LIMIT %(limit)s)
    ORDER BY id FOR NO KEY UPDATE
),
stop AS (
    UPDATE {s}.tasks t SET state = 'cancelled', error = %(error)s, finished_at = %(now)s,
        updated_at = %(now)s, {_HOOK}
    FROM page WHERE t.seq = page.seq AND page.state = ANY(%(stoppable)s::text[])
    RETURNING t.id, t.kind, t.seq
),
run AS (
    UPDATE {s}.tasks t SET cancel_requested = true, updated_at = %(now)s
    FROM page WHERE t.seq = page.seq AND page.state = 'running'
    RETURNING t.seq
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'cancelled', %(now)s, %(reason)s FROM stop ORDER BY seq),
res AS (INSERT INTO {s}.results (task_id, state, result, error, finished_at)
    SELECT id, 'cancelled', NULL, %(error)s, %(now)s FROM stop {_RESULT_UPSERT}),
dec AS (
    UPDATE {s}.tasks p SET children_active = p.children_active - x.n
    FROM (SELECT count(*) AS n FROM stop) x
    WHERE p.id = %(parent)s AND x.n > 0
),
nf AS (SELECT pg_notify(%(finish_channel)s, '') FROM (SELECT 1 FROM stop
    UNION ALL SELECT 1 FROM run LIMIT 1) x)
SELECT (SELECT count(*) FROM page), (SELECT max(seq) FROM page),
    ARRAY(SELECT id FROM page WHERE children_active > 0 ORDER BY seq),
    (SELECT count(*) FROM nf)
"""

        # -- wait_children -----------------------------------------------------------
        self.task_wait_children_memo = f"""
UPDATE {s}.tasks SET memo = %(memo)s, lease_owner = NULL, lease_expires_at = NULL,
    last_finish = 'waiting_children', updated_at = %(now)s
WHERE id = %(id)s AND lease_epoch = %(epoch)s AND state = 'running'
RETURNING kind, children_active, children_failed, fail_fast, parent_id, cancel_requested
"""
        self.task_wait_children = f"""
WITH upd AS (
    UPDATE {s}.tasks SET state = 'waiting_children', phase = 'finalize'
    WHERE id = %(id)s RETURNING id, kind
)
INSERT INTO {s}.events (task_id, kind, state, at, detail)
SELECT id, kind, 'waiting_children', %(now)s, %(detail)s FROM upd
"""

        # -- reading children --------------------------------------------------------
        self.children_page_head = (
            "SELECT t.seq, t.id, t.kind, t.state, r.result, t.error, t.attempts "
            f"FROM {s}.tasks t LEFT JOIN {s}.results r ON r.task_id = t.id "
            "WHERE t.parent_id = %(parent)s AND t.seq > %(after)s"
        )
        self.children_page_tail = " ORDER BY t.seq LIMIT %(limit)s"
        self.children_by_state = (
            f"SELECT state, count(*) FROM {s}.tasks WHERE parent_id = %(parent)s GROUP BY state"
        )
        self.children_errors = f"""
WITH f AS MATERIALIZED (
    SELECT seq, id, (error::jsonb ->> 'message') COLLATE "C" AS m FROM {s}.tasks
    WHERE parent_id = %(parent)s AND state IN ({_FAILURES}) AND error IS NOT NULL
),
g AS (SELECT m, count(*) AS n FROM f GROUP BY m ORDER BY n DESC, m LIMIT %(top)s),
e AS (SELECT f.m, f.id, row_number() OVER (PARTITION BY f.m ORDER BY f.seq) AS rn
    FROM f JOIN g ON g.m IS NOT DISTINCT FROM f.m)
SELECT g.m, g.n, ARRAY(SELECT e.id FROM e WHERE e.m IS NOT DISTINCT FROM g.m
    AND e.rn <= %(examples)s ORDER BY e.rn)
FROM g ORDER BY g.n DESC, g.m
"""

        # -- on_cancel hooks: claimed under a short lease of their own -----------------
        self.hooks_claim = f"""
WITH {NOW},
picked AS MATERIALIZED (
    SELECT seq FROM {s}.tasks
    WHERE hook IS NOT NULL AND kind = ANY(%(kinds)s::text[])
        AND (lease_expires_at IS NULL OR lease_expires_at < (SELECT now FROM c))
    ORDER BY seq LIMIT %(limit)s FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE {s}.tasks t SET lease_epoch = t.lease_epoch + 1, lease_owner = %(worker)s,
    lease_expires_at = c.now + %(ttl)s, hook_attempts = t.hook_attempts + 1
FROM picked, c WHERE t.seq = picked.seq
RETURNING t.seq, t.id, t.kind, t.hook, t.payload, t.memo, t.state, t.lease_epoch,
    t.hook_attempts
"""
        self.hook_done = f"""
WITH {NOW}
UPDATE {s}.tasks t SET lease_owner = NULL, lease_expires_at = NULL,
    updated_at = (SELECT now FROM c),
    hook = CASE WHEN %(ok)s OR t.hook_attempts >= %(max_attempts)s THEN NULL ELSE t.hook END
WHERE t.id = %(id)s AND t.lease_epoch = %(epoch)s AND t.hook IS NOT NULL
"""
        compact_statements(self)
