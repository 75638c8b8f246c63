"""The SQL text of every PostgreSQL store operation, built once per schema.

Each write is one statement (data-modifying CTEs) so that, in autocommit mode, it is one
transaction and one round trip; `pg_notify` runs inside it and is delivered on commit.
Values are always bound parameters; the only text spliced in is the quoted schema name
and constant fragments derived from the state enum.
"""

from __future__ import annotations

from ..._states import ACTIVE, CHILD_FAILURES
from ._compact import compact_statements
from ._schema import quote_schema

# Constant SQL fragments built from the state enum, never from user input. The dedup
# index of migration 1 has this predicate; the ON CONFLICT clauses below must repeat it.
ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE))

# Literals only: child ends that count as failures for fail_fast (see _states).
_CHILD_FAILURES_SQL = ", ".join(f"'{st.value}'" for st in sorted(CHILD_FAILURES))

# The database clock in integer milliseconds: what every `now_ms=None` means.
CLOCK = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
_NOW = f"c AS MATERIALIZED (SELECT coalesce(%(now)s::bigint, {CLOCK}) AS now)"

TASK_COLUMNS = (
    "t.id, t.kind, t.queue, t.priority, t.state, t.phase, t.attempts, t.max_attempts, "
    "t.payload, t.error, t.tags, t.dedup_key, t.parent_id, t.progress_pct, "
    "t.progress_message, t.lease_epoch, t.lease_owner, t.lease_expires_at, "
    "t.cancel_requested, t.timeout_ms, t.created_at, t.updated_at, t.run_at, t.expires_at, "
    "t.started_at, t.finished_at, r.result"
)

# Columns of a new task besides its id. Each is sent either as a full array or, when the
# whole batch shares one value (the usual case for kind, queue, options), as an empty
# array plus that value in `<name>_all`: unnest pads the empty array with NULLs, which
# `coalesce` fills in. Fewer values to encode and send for big batches.
NEW_TASK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("kind", "text"),
    ("queue", "text"),
    ("priority", "int"),
    ("payload", "bytea"),
    ("dedup_key", "text"),
    ("parent_id", "text"),
    ("tags", "text"),
    ("max_attempts", "int"),
    ("retry_policy", "bytea"),
    ("timeout_ms", "bigint"),
    ("delay_ms", "bigint"),
    ("run_at_ms", "bigint"),
    ("ttl_ms", "bigint"),
    ("child_key", "text"),
    ("fail_fast", "bool"),
    ("has_on_cancel", "bool"),
    ("budget_id", "text"),
)
# Columns only a task linked to others has (dependencies, a workflow run): sent only by
# the linked insert (`Queries.tasks_insert_linked`), so plain inserts carry none of them.
LINK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("deps_pending", "int"),
    ("upstream_policy", "text"),
    ("condition", "text"),
    ("workflow_id", "text"),
    ("node", "text"),
    ("has_dependents", "bool"),
)


def _new_task_rows(columns: tuple[tuple[str, str], ...]) -> str:
    arrays = (
        "unnest(%(id)b::text[], "
        + ", ".join(f"%({c})b::{t}[]" for c, t in columns)
        + ") WITH ORDINALITY AS i(id, "
        + ", ".join(c for c, _ in columns)
        + ", ord)"
    )
    values = ", ".join(f"coalesce(i.{c}, %({c}_all)b::{t}) AS {c}" for c, t in columns)
    # run_at as on SQLite: now + delay when a delay is given, else the absolute time.
    return (
        f"v AS (SELECT i.id, i.ord, {values} FROM {arrays}), "
        "r AS (SELECT v.*, c.now, coalesce(c.now + v.delay_ms, v.run_at_ms) AS run_at "
        "FROM v, c)"
    )


_NEW_TASK_ROWS = _new_task_rows(NEW_TASK_COLUMNS)
_NEW_STATE = "CASE WHEN r.run_at > r.now THEN 'scheduled' ELSE 'ready' END"
INSERT_COLUMNS = (
    "id, kind, queue, priority, state, payload, dedup_key, parent_id, tags, max_attempts, "
    "retry_policy, timeout_ms, created_at, updated_at, run_at, expires_at, child_key, "
    "fail_fast, has_on_cancel, budget_id"
)
_INSERT_VALUES_AFTER_STATE = (
    "r.payload, r.dedup_key, r.parent_id, "
    "r.tags, r.max_attempts, r.retry_policy, r.timeout_ms, r.now, r.now, r.run_at, "
    "r.now + r.ttl_ms, r.child_key, r.fail_fast, r.has_on_cancel, r.budget_id"
)
INSERT_VALUES = f"r.id, r.kind, r.queue, r.priority, {_NEW_STATE}, {_INSERT_VALUES_AFTER_STATE}"
# A task with dependencies starts blocked (it cannot also be delayed).
_LINKED_ROWS = _new_task_rows(NEW_TASK_COLUMNS + LINK_COLUMNS)
_LINKED_COLUMNS = INSERT_COLUMNS + ", " + ", ".join(c for c, _ in LINK_COLUMNS)
_LINKED_VALUES = (
    "r.id, r.kind, r.queue, r.priority, "
    f"CASE WHEN r.deps_pending > 0 THEN 'blocked' ELSE {_NEW_STATE} END, "
    f"{_INSERT_VALUES_AFTER_STATE}, " + ", ".join(f"r.{c}" for c, _ in LINK_COLUMNS)
)
NOW = _NOW
NEW_TASK_ROWS = _NEW_TASK_ROWS
ON_CANCEL = "on_cancel"


def _insert(s: str, rows: str, columns: str, values: str) -> str:
    return f"""
WITH {_NOW}, {rows},
ins AS (
    INSERT INTO {s}.tasks ({columns})
    SELECT {values}
    FROM r ORDER BY r.ord
    ON CONFLICT (kind, dedup_key) WHERE dedup_key IS NOT NULL AND state IN ({ACTIVE_SQL})
    DO NOTHING
    RETURNING id, kind, state, created_at, dedup_key
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at) SELECT id, kind, state, created_at
    FROM ins),
n AS (SELECT pg_notify(%(work_channel)s, '') FROM (SELECT 1 FROM ins WHERE state = 'ready'
    LIMIT 1) x)
SELECT (SELECT count(*) FROM n), array_agg(id) FILTER (WHERE dedup_key IS NOT NULL),
    count(*)
FROM ins
"""


def _insert_one(s: str) -> str:
    """`tasks_insert_unkeyed` for a single task, its values as plain parameters: one
    task submitted on its own (the common `await app.submit(...)`) costs no arrays to
    encode, send and unnest."""
    values = ", ".join(f"%({c})s::{t} AS {c}" for c, t in NEW_TASK_COLUMNS)
    return f"""
WITH {_NOW},
r AS (SELECT v.*, c.now, coalesce(c.now + v.delay_ms, v.run_at_ms) AS run_at
    FROM (SELECT %(id)s::text AS id, {values}) v, c),
ins AS (
    INSERT INTO {s}.tasks ({INSERT_COLUMNS})
    SELECT {INSERT_VALUES} FROM r
    RETURNING id, kind, state, created_at
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at) SELECT id, kind, state, created_at
    FROM ins)
SELECT pg_notify(%(work_channel)s, '') FROM ins WHERE state = 'ready'
"""


class Queries:
    """Every statement the PostgreSQL store runs, for one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)
        self.now = f"SELECT {CLOCK}"

        self.tasks_insert = _insert(s, _NEW_TASK_ROWS, INSERT_COLUMNS, INSERT_VALUES)
        # Tasks with dependencies or of a workflow run (see `_dag`); with dedup keys or not.
        self.tasks_insert_linked = _insert(s, _LINKED_ROWS, _LINKED_COLUMNS, _LINKED_VALUES)

        # Without dedup keys nothing can conflict: skip the speculative-insert machinery.
        conflict = (
            f"    ON CONFLICT (kind, dedup_key) WHERE dedup_key IS NOT NULL AND state IN "
            f"({ACTIVE_SQL})\n    DO NOTHING\n"
        )
        assert conflict in self.tasks_insert
        self.tasks_insert_unkeyed = self.tasks_insert.replace(conflict, "")
        # The same, run again after a lost reply: rows the first run committed are skipped.
        self.tasks_insert_unkeyed_again = self.tasks_insert.replace(
            conflict, "    ON CONFLICT (id) DO NOTHING\n"
        )
        self.task_insert_one = _insert_one(s)

        self.dedup_lookup = f"""
SELECT t.kind, t.dedup_key, t.id, t.state
FROM unnest(%(kind)b::text[], %(key)b::text[]) AS k(kind, key)
JOIN {s}.tasks t ON t.kind = k.kind AND t.dedup_key = k.key
WHERE t.dedup_key IS NOT NULL AND t.state IN ({ACTIVE_SQL})
"""

        self.replace = f"""
WITH {_NOW},
r AS (SELECT i.*, c.now, coalesce(c.now + i.delay_ms, i.run_at_ms) AS run_at
    FROM unnest(%(target)b::text[], %(queue)b::text[], %(priority)b::int[],
        %(payload)b::bytea[], %(tags)b::text[], %(max_attempts)b::int[],
        %(retry_policy)b::bytea[], %(timeout_ms)b::bigint[], %(delay_ms)b::bigint[],
        %(run_at_ms)b::bigint[], %(ttl_ms)b::bigint[], %(budget_id)b::text[]) WITH ORDINALITY
    AS i(target, queue, priority, payload, tags, max_attempts, retry_policy, timeout_ms,
        delay_ms, run_at_ms, ttl_ms, budget_id, ord), c),
upd AS (
    UPDATE {s}.tasks t SET payload = r.payload, queue = r.queue, priority = r.priority,
        state = CASE WHEN t.state = 'blocked' THEN 'blocked' ELSE {_NEW_STATE} END,
        tags = r.tags, max_attempts = r.max_attempts,
        retry_policy = r.retry_policy, timeout_ms = r.timeout_ms, run_at = r.run_at,
        expires_at = r.now + r.ttl_ms, budget_id = r.budget_id, updated_at = r.now
    FROM r WHERE t.id = r.target AND t.state IN ('scheduled', 'ready', 'blocked')
    RETURNING t.id, t.kind, t.state, r.ord, r.now
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, state, now, 'replaced' FROM upd ORDER BY ord),
n AS (SELECT pg_notify(%(work_channel)s, '') FROM (SELECT 1 FROM upd WHERE state = 'ready'
    LIMIT 1) x)
SELECT id FROM upd UNION ALL SELECT NULL FROM n
"""

        claim_head = f"""
WITH {_NOW},
picked AS MATERIALIZED (
"""
        # Tasks of a budget hard-breached in its current window stay ready (the subquery
        # does not depend on the row: it runs once).
        ready_filter = (
            "t.state = 'ready' AND t.kind = ANY(%(kinds)b::text[]) "
            "AND (t.expires_at IS NULL OR t.expires_at > (SELECT now FROM c) "
            "OR t.started_at IS NOT NULL) "
            f"AND (t.budget_id IS NULL OR t.budget_id NOT IN (SELECT b.id FROM {s}.budgets b "
            "WHERE b.breached IS NOT NULL AND (b.reset_every IS NULL "
            "OR (SELECT now FROM c) < b.window_start + b.reset_every)))"
            # A paused queue's tasks stay ready (`queue_set_paused`; runs once, too).
            f" AND t.queue NOT IN (SELECT qp.name FROM {s}.queues qp WHERE qp.paused)"
        )
        self.ready_filter = ready_filter
        claim_tail = f"""
),
upd AS (
    UPDATE {s}.tasks t SET state = 'running', attempts = t.attempts + 1,
        lease_epoch = t.lease_epoch + 1, lease_owner = %(worker)s,
        lease_expires_at = c.now + %(ttl)s, lease_started = %(start)s,
        cancel_requested = false, last_finish = NULL, started_at = c.now, updated_at = c.now
    FROM picked, c WHERE t.seq = picked.seq
    RETURNING t.seq, t.id, t.kind, t.queue, t.priority, t.payload, t.phase, t.memo,
        t.attempts, t.max_attempts, t.retry_policy, t.timeout_ms, t.lease_epoch,
        t.lease_expires_at, t.parent_id, t.condition, t.workflow_id, c.now
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'running', now, %(worker)s FROM upd ORDER BY priority DESC, seq)
SELECT id, kind, queue, priority, payload, phase, memo, attempts, max_attempts,
    retry_policy, timeout_ms, lease_epoch, lease_expires_at, parent_id, condition, workflow_id
FROM upd ORDER BY priority DESC, seq
"""
        # One queue: a plain walk of the ready index in (priority DESC, seq) order.
        self.tasks_claim_one = (
            claim_head
            + f"""    SELECT t.seq FROM {s}.tasks t
    WHERE t.queue = %(queue)s AND {ready_filter}
    ORDER BY t.priority DESC, t.seq LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED"""
            + claim_tail
        )
        # Several queues: one index walk per queue, merged; rows locked but not taken are
        # released at commit, a moment later.
        self.tasks_claim_many = (
            claim_head
            + f"""    SELECT x.seq FROM unnest(%(queues)b::text[]) AS q(queue)
    CROSS JOIN LATERAL (
        SELECT t.seq, t.priority FROM {s}.tasks t
        WHERE t.queue = q.queue AND {ready_filter}
        ORDER BY t.priority DESC, t.seq LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) x
    ORDER BY x.priority DESC, x.seq LIMIT %(limit)s"""
            + claim_tail
        )

        # Tasks a limited claim chose (and locked) already.
        self.tasks_claim_picked = (
            claim_head + "    SELECT unnest(%(seqs)s::bigint[]) AS seq" + claim_tail
        )

        # Rows are locked in id order, the order every batched write locks in (the plan of
        # a join would lock in whatever order it scans: a deadlock with another batch).
        self.leases_renew = f"""
WITH {_NOW},
lk AS MATERIALIZED (
    SELECT t.seq FROM {s}.tasks t
    JOIN unnest(%(ids)b::text[], %(epochs)b::bigint[]) AS i(id, epoch)
        ON t.id = i.id AND t.lease_epoch = i.epoch
    WHERE t.state = 'running'
    ORDER BY t.id FOR NO KEY UPDATE OF t
)
UPDATE {s}.tasks t SET lease_expires_at = c.now + %(ttl)s,
    lease_started = t.lease_started OR %(start)s
FROM c, lk WHERE t.seq = lk.seq
RETURNING t.id, t.lease_epoch, t.cancel_requested, t.lease_expires_at
"""

        # A task asked to cancel while it ran, whose attempt asks for another (retry,
        # delay, release), is cancelled instead: the next claim would clear the request.
        cancel_wins = "(t.cancel_requested AND NOT i.terminal)"
        ends_cancelled = f"(i.target = 'cancelled' OR {cancel_wins})"
        last_child = "(p.state = 'waiting_children' AND p.children_active - a.n <= 0)"
        failure = f"i.target IN ({_CHILD_FAILURES_SQL})"
        # `simple` (autocommit, one statement): the finishes, and the join of the children
        # among them: each parent's counter drops by its ended children in one UPDATE
        # (`- n`, under the row lock), and the statement that takes a waiting parent to zero
        # readies it for finalize. Left out (listed as deferred, for `_tree` to apply in
        # a transaction): a cancelled task with live children (a cascade), a failed child
        # of a waiting fail_fast parent (the parent fails), and a child whose parent is in
        # the same batch (a row may be written once per statement). Every row the
        # statement writes (tasks and parents) is locked first, in id order (`lk`, evaluated
        # before any row is written): the order every batched write locks in, so batches
        # never deadlock one another. Not `simple`: the finishes only; the caller does the
        # tree work.
        self.tasks_finish = f"""
WITH {_NOW},
i AS MATERIALIZED (SELECT * FROM unnest(%(ids)b::text[], %(epochs)b::bigint[],
        %(targets)b::text[], %(errors)b::text[], %(details)b::text[],
        %(delays)b::bigint[], %(run_ats)b::bigint[], %(releases)b::int[],
        %(expired)b::bool[], %(terminal)b::bool[], %(results)b::bytea[]) WITH ORDINALITY
    AS i(id, epoch, target, error, detail, delay_ms, run_at_ms, rel, expired_lease,
        terminal, result, ord)),
parents AS MATERIALIZED (
    SELECT DISTINCT t.parent_id AS id FROM i JOIN {s}.tasks t ON t.id = i.id
    WHERE t.parent_id IS NOT NULL
),
lk AS MATERIALIZED (
    SELECT t.id, t.state, t.fail_fast FROM {s}.tasks t
    WHERE t.id IN (SELECT id FROM i UNION SELECT id FROM parents)
    ORDER BY t.id FOR NO KEY UPDATE
),
pl AS (SELECT * FROM lk WHERE id IN (SELECT id FROM parents)),
upd AS (
    UPDATE {s}.tasks t SET
        state = CASE WHEN {cancel_wins} THEN 'cancelled' ELSE i.target END,
        last_finish = CASE WHEN i.expired_lease THEN i.target || ':reaped' ELSE i.target END,
        lease_owner = NULL, lease_expires_at = NULL,
        error = CASE WHEN {cancel_wins} THEN %(cancel_error)s
            WHEN i.target = 'completed' THEN NULL ELSE coalesce(i.error, t.error) END,
        run_at = CASE WHEN i.target = 'scheduled' AND NOT {cancel_wins}
            THEN coalesce(c.now + i.delay_ms, i.run_at_ms) END,
        updated_at = c.now,
        finished_at = CASE WHEN i.terminal OR {cancel_wins} THEN c.now END,
        attempts = t.attempts - i.rel,
        hook = CASE WHEN t.has_on_cancel AND {ends_cancelled} THEN '{ON_CANCEL}'
            ELSE t.hook END
    FROM i, c
    WHERE (SELECT count(*) FROM lk) >= 0
        AND t.id = i.id AND t.lease_epoch = i.epoch AND t.state = 'running'
        AND (NOT i.expired_lease OR t.lease_expires_at < c.now)
        AND (NOT %(simple)s OR (
            (t.children_active = 0 OR NOT {ends_cancelled})
            AND (t.parent_id IS NULL OR (
                t.parent_id NOT IN (SELECT id FROM i)
                AND NOT ({failure} AND EXISTS (SELECT 1 FROM pl WHERE pl.id = t.parent_id
                    AND pl.state = 'waiting_children' AND pl.fail_fast))))))
    RETURNING t.id, t.kind, i.ord, t.state, i.terminal OR t.state = 'cancelled' AS ended,
        i.result, CASE WHEN t.state = 'cancelled' AND NOT i.terminal THEN %(cancel_error)s
            ELSE i.error END AS error,
        CASE WHEN t.state = 'cancelled' AND NOT i.terminal THEN 'cancel requested'
            ELSE i.detail END AS detail,
        c.now, t.parent_id, t.children_active > 0 AS has_children
),
deferred AS (
    SELECT i.ord FROM i JOIN {s}.tasks t ON t.id = i.id, c
    WHERE %(simple)s AND t.state = 'running' AND t.lease_epoch = i.epoch
        AND (NOT i.expired_lease OR t.lease_expires_at < c.now)
        AND i.ord NOT IN (SELECT ord FROM upd)
),
joined AS (
    SELECT parent_id, count(*) AS n,
        count(*) FILTER (WHERE state IN ({_CHILD_FAILURES_SQL})) AS nf
    FROM upd WHERE %(simple)s AND ended AND parent_id IS NOT NULL GROUP BY parent_id
),
dec AS (
    UPDATE {s}.tasks p SET children_active = p.children_active - a.n,
        children_failed = p.children_failed + a.nf, updated_at = c.now,
        state = CASE WHEN {last_child} THEN 'ready' ELSE p.state END,
        phase = CASE WHEN {last_child} THEN 'finalize' ELSE p.phase END,
        attempts = CASE WHEN {last_child} THEN 0 ELSE p.attempts END
    FROM joined a, c WHERE p.id = a.parent_id
    RETURNING p.id, p.kind, p.state, p.seq, c.now
),
readied AS (
    SELECT dec.id, dec.kind, dec.seq, dec.now FROM dec JOIN pl ON pl.id = dec.id
    WHERE pl.state = 'waiting_children' AND dec.state = 'ready'
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, state, now, detail FROM upd ORDER BY ord),
evr AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'ready', now, 'children done: finalize' FROM readied ORDER BY seq),
res AS (INSERT INTO {s}.results (task_id, state, result, error, finished_at)
    SELECT id, state, result, error, now FROM upd WHERE ended
    ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result,
        error = excluded.error, finished_at = excluded.finished_at),
nw AS (SELECT pg_notify(%(work_channel)s, '') FROM (SELECT 1 FROM upd WHERE state = 'ready'
    UNION ALL SELECT 1 FROM readied LIMIT 1) x),
nf AS (SELECT pg_notify(%(finish_channel)s, '') FROM (SELECT 1 FROM upd
    WHERE ended LIMIT 1) x)
SELECT 'a', ord, state, ended, parent_id, has_children FROM upd
UNION ALL SELECT 'd', ord, NULL, NULL, NULL, NULL FROM deferred
UNION ALL SELECT 'n', 0, NULL, NULL, NULL, NULL FROM nw
UNION ALL SELECT 'n', 0, NULL, NULL, NULL, NULL FROM nf
"""
        self.tasks_finish_refused = (
            f"SELECT id, state, lease_epoch, last_finish FROM {s}.tasks "
            "WHERE id = ANY(%(ids)b::text[])"
        )

        self.tasks_promote = f"""
WITH {_NOW},
picked AS MATERIALIZED (
    SELECT seq FROM {s}.tasks WHERE state = 'scheduled' AND run_at <= (SELECT now FROM c)
    ORDER BY run_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
),
upd AS (
    UPDATE {s}.tasks t SET state = 'ready', updated_at = c.now FROM picked, c
    WHERE t.seq = picked.seq
    RETURNING t.id, t.kind, t.run_at, t.seq, c.now
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'ready', now, 'promoted' FROM upd ORDER BY run_at, seq),
n AS (SELECT pg_notify(%(work_channel)s, '') FROM (SELECT 1 FROM upd LIMIT 1) x)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n)
"""

        self.tasks_expire = f"""
WITH {_NOW},
picked AS MATERIALIZED (
    SELECT seq FROM {s}.tasks
    WHERE state = 'ready' AND expires_at <= (SELECT now FROM c) AND started_at IS NULL
    ORDER BY expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
),
upd AS (
    UPDATE {s}.tasks t SET state = 'expired', error = %(error)s, updated_at = c.now,
        finished_at = c.now
    FROM picked, c WHERE t.seq = picked.seq
    RETURNING t.id, t.kind, t.expires_at, t.seq, c.now, t.parent_id
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'expired', now, 'ttl' FROM upd ORDER BY expires_at, seq),
kids AS (SELECT array_agg(id) AS ids, array_agg(parent_id) AS parents, max(now) AS now
    FROM upd WHERE parent_id IS NOT NULL),
res AS (INSERT INTO {s}.results (task_id, state, result, error, finished_at)
    SELECT id, 'expired', NULL, %(error)s, now FROM upd
    ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result,
        error = excluded.error, finished_at = excluded.finished_at),
n AS (SELECT pg_notify(%(finish_channel)s, '') FROM (SELECT 1 FROM upd LIMIT 1) x)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n), kids.ids, kids.parents, kids.now
FROM kids
"""

        self.leases_expired = f"""
WITH {_NOW}
SELECT id, kind, lease_epoch, attempts, max_attempts, retry_policy, lease_owner,
    cancel_requested, lease_started
FROM {s}.tasks
WHERE state = 'running' AND lease_expires_at < (SELECT now FROM c)
ORDER BY lease_expires_at LIMIT %(limit)s
"""

        # Operator calls: a few statements in one transaction, the row locked first.
        self.lock_task = (
            f"SELECT state, kind, dedup_key FROM {s}.tasks WHERE id = %(id)s FOR UPDATE"
        )
        self.key_holder = (
            f"SELECT id FROM {s}.tasks WHERE kind = %(kind)s AND dedup_key = %(key)s "
            f"AND state IN ({ACTIVE_SQL})"
        )
        self.task_cancel_request = f"""
WITH {_NOW}
UPDATE {s}.tasks SET cancel_requested = true, updated_at = (SELECT now FROM c)
WHERE id = %(id)s
RETURNING pg_notify(%(finish_channel)s, '')
"""
        self.task_cancel = f"""
WITH {_NOW},
upd AS (
    UPDATE {s}.tasks t SET state = 'cancelled', error = %(error)s, updated_at = c.now,
        finished_at = c.now,
        hook = CASE WHEN t.has_on_cancel THEN '{ON_CANCEL}' ELSE t.hook END
    FROM c WHERE t.id = %(id)s AND t.state = ANY(%(sources)b::text[])
    RETURNING t.id, t.kind, c.now, t.parent_id, t.children_active > 0 AS has_children
),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'cancelled', now, %(reason)s FROM upd),
res AS (INSERT INTO {s}.results (task_id, state, result, error, finished_at)
    SELECT id, 'cancelled', NULL, %(error)s, now FROM upd
    ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result,
        error = excluded.error, finished_at = excluded.finished_at),
n AS (SELECT pg_notify(%(finish_channel)s, '') FROM upd)
SELECT upd.now, upd.parent_id, upd.has_children, (SELECT count(*) FROM n) FROM upd
"""
        self.lock_parent = (
            f"SELECT p.id FROM {s}.tasks p WHERE p.id = (SELECT parent_id FROM {s}.tasks "
            "WHERE id = %(id)s) FOR NO KEY UPDATE OF p"
        )
        self.task_retry = f"""
WITH {_NOW},
upd AS (
    UPDATE {s}.tasks t SET state = 'ready', attempts = 0, error = NULL, finished_at = NULL,
        run_at = NULL, last_finish = NULL, cancel_requested = false, progress_pct = NULL,
        progress_message = NULL, updated_at = c.now
    FROM c WHERE t.id = %(id)s
    RETURNING t.id, t.kind, c.now
),
del AS (DELETE FROM {s}.results WHERE task_id = %(id)s),
ev AS (INSERT INTO {s}.events (task_id, kind, state, at, detail)
    SELECT id, kind, 'ready', now, 'operator retry' FROM upd),
n AS (SELECT pg_notify(%(work_channel)s, '') FROM upd)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n)
"""

        # Progress is recorded as a `running` event too (detail `progress 40%: loading`).
        self.task_progress = f"""
WITH {_NOW},
upd AS (
    UPDATE {s}.tasks SET progress_pct = %(pct)s, progress_message = %(message)s,
        updated_at = (SELECT now FROM c)
    WHERE id = %(id)s AND lease_epoch = %(epoch)s AND state = 'running'
    RETURNING id, kind, updated_at
)
INSERT INTO {s}.events (task_id, kind, state, at, detail)
SELECT id, kind, 'running', updated_at, %(detail)s FROM upd
"""

        self.task_get = (
            f"SELECT {TASK_COLUMNS} FROM {s}.tasks t "
            f"LEFT JOIN {s}.results r ON r.task_id = t.id WHERE t.id = %(id)s"
        )
        self.tasks_list_head = (
            f"SELECT {TASK_COLUMNS} FROM {s}.tasks t "
            f"LEFT JOIN {s}.results r ON r.task_id = t.id WHERE "
        )
        self.tasks_list_tagged_head = (
            f"SELECT {TASK_COLUMNS} FROM {s}.task_tags g JOIN {s}.tasks t ON t.seq = g.seq "
            f"LEFT JOIN {s}.results r ON r.task_id = t.id WHERE "
        )
        self.tasks_list_after = f"t.seq > (SELECT seq FROM {s}.tasks WHERE id = %(after_id)s)"
        self.tasks_list_tagged_after = (
            f"g.seq > (SELECT seq FROM {s}.tasks WHERE id = %(after_id)s)"
        )
        self.tasks_count = (
            f"SELECT queue, state, count(*) FROM {s}.tasks GROUP BY queue, state "
            "ORDER BY queue, state"
        )
        self.results_get = (
            f"SELECT task_id, state, result, error FROM {s}.results "
            "WHERE task_id = ANY(%(ids)b::text[])"
        )
        # One id: `= ANY(array)` is planned again on every call (its custom plans look
        # cheaper than a generic one), `=` gets a generic plan after five.
        self.result_get = (
            f"SELECT task_id, state, result, error FROM {s}.results WHERE task_id = %(id)s"
        )
        self.events_read = (
            f"SELECT id, task_id, kind, state, at, detail FROM {s}.events WHERE id > %(after)s "
            "ORDER BY id LIMIT %(limit)s"
        )
        compact_statements(self)
