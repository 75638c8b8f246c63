"""The SQL of dependencies between tasks in the PostgreSQL store: resolution and reads.

The tables, the trigger and `deps_resolve` are created by migrations/0001_initial.sql.

Resolution is pushed by whatever ends an upstream task: an AFTER UPDATE OF state row
trigger on the tasks table fires when a task with dependents (`has_dependents`) enters a
terminal state, in the ending statement's transaction, whichever store operation ran it
(the batched finish, expiry, cancels and their cascades, fail_fast, suspension timeouts).
Tasks without dependents never fire it (the trigger's WHEN is checked in the executor, no
function call), so the hot paths pay nothing.

The trigger calls `deps_resolve`, which does the work set-based, a round per level: flip
the ended upstreams' open edges to done (each edge once), count them against the blocked
dependents (locked in id order, the order every batched write locks in; counters move by
`- n` under the row lock, so two transactions ending two upstreams of one join ready it
exactly once), then decide the dependents with nothing left pending. Those that end
(skipped, or failed by the `fail` policy) are the next round's upstreams: the skip-cascade
is a loop, not a recursion, so it has no depth limit. While `deps_resolve` runs, a
transaction-local setting tells the trigger that the loop already handles the tasks it
ends, so nested firings return at once.

`{s}` is the quoted schema name; the trigger's arguments are the work and finish
channels, set at migration.
"""

from __future__ import annotations

from ..._states import TERMINAL
from ..contract.dag import UPSTREAM_FAILURES
from ._compact import compact_statements

# Literals only, derived from the state enum.
TERMINAL_SQL = ", ".join(f"'{st.value}'" for st in sorted(TERMINAL))
UPSTREAM_FAILURES_SQL = ", ".join(f"'{st.value}'" for st in sorted(UPSTREAM_FAILURES))


class DagQueries:
    """Every dependency and workflow statement of the PostgreSQL store, for one schema."""

    def __init__(self, s: str) -> None:
        """`s`: the quoted schema name."""
        # Linking an insert: the upstream tasks locked in id order (every batched write's
        # order), marked as having dependents, and returned with their states. A task that
        # ends after this commits fires the trigger; one that ended before is resolved by
        # the insert itself.
        self.link_lock = f"""
WITH lk AS MATERIALIZED (
    SELECT id, state, has_dependents FROM {s}.tasks WHERE id = ANY(%(ups)s::text[])
    ORDER BY id FOR NO KEY UPDATE
),
upd AS (
    UPDATE {s}.tasks t SET has_dependents = true FROM lk
    WHERE t.id = lk.id AND NOT lk.has_dependents
)
SELECT id, state FROM lk
"""
        self.link = f"""
WITH e AS (
    INSERT INTO {s}.deps (upstream_id, task_id, pos)
    SELECT * FROM unnest(%(ups)s::text[], %(downs)s::text[], %(pos)s::int[])
),
w AS (
    INSERT INTO {s}.workflows (id, name, created_at, nodes)
    SELECT %(wf_id)s, %(wf_name)s, %(now)s, %(nodes)s WHERE %(wf_id)s::text IS NOT NULL
)
SELECT 1
"""
        self.analyze = f"ANALYZE {s}.deps, {s}.tasks"
        self.undouble = f"""
UPDATE {s}.tasks t SET deps_pending = t.deps_pending - x.n
FROM unnest(%(ids)s::text[], %(counts)s::int[]) AS x(id, n) WHERE t.id = x.id
"""
        self.resolve = (
            f"SELECT {s}.deps_resolve(%(ids)s::text[], %(states)s::text[], %(now)s::bigint, "
            "%(work_channel)s, %(finish_channel)s)"
        )
        # The backstop: open edges (their partial index) whose upstream is terminal.
        self.deps_reconcile = f"""
WITH x AS MATERIALIZED (
    SELECT DISTINCT d.upstream_id AS id, u.state FROM {s}.deps d
    JOIN {s}.tasks u ON u.id = d.upstream_id
    WHERE NOT d.done AND u.state IN ({TERMINAL_SQL})
    LIMIT %(limit)s
)
SELECT {s}.deps_resolve(coalesce(array_agg(id ORDER BY id), '{{}}'),
    coalesce(array_agg(state ORDER BY id), '{{}}'),
    coalesce(%(now)s::bigint, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint),
    %(work_channel)s, %(finish_channel)s)
FROM x
"""
        self.upstream_get = f"""
SELECT u.id, u.kind, u.node, u.state, r.result, u.error FROM {s}.deps d
JOIN {s}.tasks u ON u.id = d.upstream_id LEFT JOIN {s}.results r ON r.task_id = u.id
WHERE d.task_id = %(id)s ORDER BY d.pos
"""
        self.workflow_get = f"""
SELECT w.id, w.name, w.created_at, w.nodes,
    ARRAY(SELECT state FROM {s}.tasks WHERE workflow_id = w.id GROUP BY state ORDER BY state),
    ARRAY(SELECT count(*) FROM {s}.tasks WHERE workflow_id = w.id GROUP BY state
        ORDER BY state)
FROM {s}.workflows w WHERE w.id = %(id)s
"""
        # An upstream task outside the run (no node name) is named by its id.
        self.workflow_get_nodes = f"""
SELECT t.id, t.node, t.kind, t.state, t.attempts, r.result, t.error, t.created_at,
    t.started_at, t.finished_at,
    ARRAY(SELECT coalesce(u.node, u.id) FROM {s}.deps d JOIN {s}.tasks u ON u.id = d.upstream_id
        WHERE d.task_id = t.id ORDER BY d.pos)
FROM {s}.tasks t LEFT JOIN {s}.results r ON r.task_id = t.id
WHERE t.workflow_id = %(id)s ORDER BY t.seq
"""
        self.workflows_list = f"""
WITH w AS (
    SELECT id, name, created_at, nodes FROM {s}.workflows
    WHERE %(name)s::text IS NULL OR name = %(name)s
    ORDER BY created_at DESC, id DESC LIMIT %(limit)s
)
SELECT w.id, w.name, w.created_at, w.nodes,
    ARRAY(SELECT state FROM {s}.tasks WHERE workflow_id = w.id GROUP BY state ORDER BY state),
    ARRAY(SELECT count(*) FROM {s}.tasks WHERE workflow_id = w.id GROUP BY state
        ORDER BY state)
FROM w ORDER BY w.created_at DESC, w.id DESC
"""
        self.active_nodes = f"""
SELECT id FROM {s}.tasks WHERE workflow_id = %(id)s AND state NOT IN ({TERMINAL_SQL})
ORDER BY seq DESC
"""
        compact_statements(self)
