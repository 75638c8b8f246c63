"""The SQL of dependencies between tasks in the PostgreSQL store: schema, resolution, reads.

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
channels (`{work_channel}` and `{finish_channel}`, quoted literals), set at migration.
"""

from __future__ import annotations

from ..._states import TERMINAL, State
from ..contract.dag import UPSTREAM_FAILURES

# Literals only, derived from the state enum.
TERMINAL_SQL = ", ".join(f"'{st.value}'" for st in sorted(TERMINAL))
UPSTREAM_FAILURES_SQL = ", ".join(f"'{st.value}'" for st in sorted(UPSTREAM_FAILURES))
_COMPLETED = State.COMPLETED.value
_RESULT_UPSERT = (
    "ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result, "
    "error = excluded.error, finished_at = excluded.finished_at"
)
# The first upstream (in the order given) that explains a decision: a failure if any
# failed, else any that did not complete. Named as on SQLite: 'node' failed / id ended x.
_CULPRIT = f"""coalesce((
    SELECT coalesce('''' || u.node || '''', u.id)
        || CASE WHEN u.state = 'failed' THEN ' failed' ELSE ' ended ' || u.state END
    FROM {{s}}.deps e JOIN {{s}}.tasks u ON u.id = e.upstream_id
    WHERE e.task_id = x.id AND u.state IN ({TERMINAL_SQL}) AND u.state <> '{_COMPLETED}'
        AND (x.deps_failed = 0 OR u.state IN ({UPSTREAM_FAILURES_SQL}))
    ORDER BY e.pos LIMIT 1), 'did not complete')"""
_ERROR = (
    "jsonb_build_object('type', {type}, 'message', {prefix} || c.culprit, "
    "'category', {category}, 'traceback', NULL)::text"
)
_FAILED_ERROR = _ERROR.format(
    type="'UpstreamFailed'", prefix="'upstream '", category="'upstream_failed'"
)
_SKIPPED_ERROR = _ERROR.format(
    type="'Skipped'", prefix="'skipped: upstream '", category="'upstream_skipped'"
)

DAG_DDL = f"""
CREATE TABLE {{s}}.deps (
    upstream_id text COLLATE "C" NOT NULL,
    task_id text COLLATE "C" NOT NULL,
    pos integer NOT NULL,
    done boolean NOT NULL DEFAULT false,
    PRIMARY KEY (upstream_id, task_id)
);
CREATE INDEX deps_task ON {{s}}.deps (task_id, pos);
CREATE INDEX deps_open ON {{s}}.deps (upstream_id) WHERE NOT done;
CREATE TABLE {{s}}.workflows (
    id text COLLATE "C" PRIMARY KEY,
    name text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    nodes integer NOT NULL
);
CREATE INDEX workflows_created ON {{s}}.workflows (created_at, id);
CREATE UNIQUE INDEX tasks_node ON {{s}}.tasks (workflow_id, node) WHERE workflow_id IS NOT NULL;
CREATE INDEX tasks_workflow ON {{s}}.tasks (workflow_id, seq) WHERE workflow_id IS NOT NULL;

CREATE FUNCTION {{s}}.deps_resolve(ups text[], states text[], at bigint, work_channel text,
    finish_channel text) RETURNS bigint LANGUAGE plpgsql
    -- Generic plans: re-planning these statements on each call costs more than running them.
    SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    outer_call text := current_setting('flowmill.deps_resolving', true);
    resolved bigint := 0;
    n bigint;
    ids text[];
    targets text[];
BEGIN
    PERFORM set_config('flowmill.deps_resolving', 'on', true);
    WHILE cardinality(ups) > 0 LOOP
        -- Count the ended upstreams against their blocked dependents.
        WITH w AS (SELECT * FROM unnest(ups, states) AS w(id, state)),
        e AS (
            UPDATE {{s}}.deps d SET done = true FROM w
            WHERE d.upstream_id = w.id AND NOT d.done
            RETURNING d.task_id, w.state
        ),
        a AS MATERIALIZED (
            SELECT e.task_id AS id, count(*) AS n,
                count(*) FILTER (WHERE e.state IN ({UPSTREAM_FAILURES_SQL})) AS nf,
                count(*) FILTER (WHERE e.state NOT IN ({UPSTREAM_FAILURES_SQL})
                    AND e.state <> '{_COMPLETED}') AS ns
            FROM e GROUP BY e.task_id
        ),
        lk AS MATERIALIZED (
            SELECT t.id FROM {{s}}.tasks t
            WHERE t.id IN (SELECT id FROM a) AND t.state = 'blocked'
            ORDER BY t.id FOR NO KEY UPDATE
        ),
        -- The common decision, "ready", is made in this same UPDATE (one statement);
        -- the others (skipped, failed) are decided below.
        upd AS (
            UPDATE {{s}}.tasks t SET deps_pending = t.deps_pending - a.n,
                deps_failed = t.deps_failed + a.nf, deps_skipped = t.deps_skipped + a.ns,
                state = CASE WHEN t.deps_pending - a.n <= 0 AND (t.upstream_policy = 'run'
                    OR t.deps_failed + a.nf + t.deps_skipped + a.ns = 0)
                    THEN 'ready' ELSE t.state END,
                updated_at = CASE WHEN t.deps_pending - a.n <= 0 THEN at ELSE t.updated_at END
            FROM a WHERE t.id = a.id AND t.id IN (SELECT id FROM lk) AND t.state = 'blocked'
            RETURNING t.id, t.kind, t.seq, t.state, t.deps_pending, t.deps_failed,
                t.deps_skipped, t.upstream_policy
        ),
        rev AS (
            INSERT INTO {{s}}.events (task_id, kind, state, at, detail)
            SELECT id, kind, 'ready', at, 'dependencies done' FROM upd
            WHERE state = 'ready' ORDER BY seq
        ),
        rnw AS (SELECT pg_notify(work_channel, '')
            FROM (SELECT 1 FROM upd WHERE state = 'ready' LIMIT 1) y),
        x AS (
            SELECT id, CASE WHEN deps_failed > 0 AND upstream_policy = 'fail' THEN 'failed'
                ELSE 'skipped' END AS target
            FROM upd WHERE deps_pending <= 0 AND state = 'blocked'
        )
        SELECT (SELECT coalesce(sum(a.n), 0) FROM a) + (SELECT count(*) * 0 FROM rnw),
            (SELECT array_agg(id ORDER BY id) FROM x),
            (SELECT array_agg(target ORDER BY id) FROM x)
        INTO n, ids, targets;
        resolved := resolved + n;
        EXIT WHEN ids IS NULL;
        -- Decide those with nothing left pending; those that end are the next round.
        WITH x AS (
            SELECT t.id, t.deps_failed, d.target
            FROM unnest(ids, targets) AS d(id, target) JOIN {{s}}.tasks t ON t.id = d.id
        ),
        c AS (SELECT x.id, {_CULPRIT} AS culprit FROM x WHERE x.target <> 'ready'),
        upd AS (
            UPDATE {{s}}.tasks t SET state = x.target, updated_at = at,
                finished_at = CASE WHEN x.target <> 'ready' THEN at END,
                error = CASE x.target
                    WHEN 'failed' THEN {_FAILED_ERROR}
                    WHEN 'skipped' THEN {_SKIPPED_ERROR}
                    ELSE t.error END
            FROM x LEFT JOIN c ON c.id = x.id
            WHERE t.id = x.id AND t.state = 'blocked'
            RETURNING t.id, t.kind, t.seq, t.state, t.error, t.has_dependents
        ),
        ev AS (
            INSERT INTO {{s}}.events (task_id, kind, state, at, detail)
            SELECT id, kind, state, at, CASE state WHEN 'ready' THEN 'dependencies done'
                WHEN 'failed' THEN 'upstream_failed' ELSE 'upstream_skipped' END
            FROM upd ORDER BY seq
        ),
        res AS (
            INSERT INTO {{s}}.results (task_id, state, result, error, finished_at)
            SELECT id, state, NULL, error, at FROM upd WHERE state <> 'ready' {_RESULT_UPSERT}
        ),
        nw AS (SELECT pg_notify(work_channel, '')
            FROM (SELECT 1 FROM upd WHERE state = 'ready' LIMIT 1) y),
        nf AS (SELECT pg_notify(finish_channel, '')
            FROM (SELECT 1 FROM upd WHERE state <> 'ready' LIMIT 1) y)
        SELECT array_agg(id ORDER BY id) FILTER (WHERE state <> 'ready' AND has_dependents),
            array_agg(state ORDER BY id) FILTER (WHERE state <> 'ready' AND has_dependents),
            (SELECT count(*) FROM nw) + (SELECT count(*) FROM nf)
        INTO ups, states, n
        FROM upd;
        ups := coalesce(ups, '{{}}');
        states := coalesce(states, '{{}}');
    END LOOP;
    PERFORM set_config('flowmill.deps_resolving', coalesce(outer_call, ''), true);
    RETURN resolved;
END
$fn$;

CREATE FUNCTION {{s}}.deps_ended() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- Inside deps_resolve, its own loop carries the cascade.
    IF coalesce(current_setting('flowmill.deps_resolving', true), '') <> 'on' THEN
        PERFORM {{s}}.deps_resolve(ARRAY[NEW.id], ARRAY[NEW.state], NEW.updated_at,
            TG_ARGV[0], TG_ARGV[1]);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER deps_ended AFTER UPDATE OF state ON {{s}}.tasks
    FOR EACH ROW WHEN (NEW.has_dependents AND NEW.state IN ({TERMINAL_SQL})
        AND OLD.state NOT IN ({TERMINAL_SQL}))
    EXECUTE FUNCTION {{s}}.deps_ended({{work_channel}}, {{finish_channel}});
"""


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
