-- flowmill PostgreSQL schema, migration 1: tasks, results, events, waitpoints, signals,
-- suspensions, frames, budgets and limits, dependencies and workflows.
--
-- Frozen: released migrations are never edited (tests/store/test_migrations.py holds
-- their checksums). A change to the schema is a new file, 0002_..., with the same number
-- on every backend. `{s}` is the quoted schema name, `{work_channel}` and
-- `{finish_channel}` the schema's NOTIFY channels as string literals (filled in by
-- `_schema.render`). Text columns that are compared or ordered use the "C" collation:
-- byte order, as on SQLite, and cheaper comparisons.

    CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE {s}.tasks (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text COLLATE "C" NOT NULL UNIQUE,
        kind text COLLATE "C" NOT NULL,
        queue text COLLATE "C" NOT NULL,
        priority integer NOT NULL DEFAULT 0,
        state text COLLATE "C" NOT NULL CHECK (state IN ('scheduled', 'blocked', 'ready', 'running', 'waiting_children', 'suspended', 'completed', 'failed', 'dead_lettered', 'cancelled', 'skipped', 'expired')),
        phase text COLLATE "C" NOT NULL DEFAULT 'execute',
        payload bytea NOT NULL,
        memo bytea,
        dedup_key text COLLATE "C",
        parent_id text COLLATE "C",
        tags text,
        attempts integer NOT NULL DEFAULT 0,
        max_attempts integer NOT NULL,
        retry_policy bytea NOT NULL,
        timeout_ms bigint,
        lease_epoch bigint NOT NULL DEFAULT 0,
        lease_owner text,
        lease_expires_at bigint,
        cancel_requested boolean NOT NULL DEFAULT false,
        last_finish text COLLATE "C",
        progress_pct double precision,
        progress_message text,
        error text,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        run_at bigint,
        expires_at bigint,
        started_at bigint,
        finished_at bigint,
        -- As a parent: children spawned, not yet ended, and ended badly (fail_fast).
        children_total integer NOT NULL DEFAULT 0,
        children_active integer NOT NULL DEFAULT 0,
        children_failed integer NOT NULL DEFAULT 0,
        fail_fast boolean NOT NULL DEFAULT true,
        child_key text COLLATE "C",
        has_on_cancel boolean NOT NULL DEFAULT false,
        hook text COLLATE "C",
        hook_attempts integer NOT NULL DEFAULT 0,
        budget_id text COLLATE "C",
        -- Dependencies (see _pg_dag): upstream tasks not yet ended, and ended badly.
        deps_pending integer NOT NULL DEFAULT 0,
        deps_failed integer NOT NULL DEFAULT 0,
        deps_skipped integer NOT NULL DEFAULT 0,
        upstream_policy text COLLATE "C",
        condition text,
        workflow_id text COLLATE "C",
        node text COLLATE "C",
        has_dependents boolean NOT NULL DEFAULT false
    ) WITH (
        -- A queue table churns: room on each page for in-place (HOT) updates such as
        -- progress, and vacuum soon enough that claims do not wade through dead rows.
        fillfactor = 90,
        autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02
    );
    CREATE INDEX tasks_ready ON {s}.tasks (queue, priority DESC, seq) WHERE state = 'ready';
    CREATE INDEX tasks_due ON {s}.tasks (run_at) WHERE state = 'scheduled';
    CREATE INDEX tasks_leases ON {s}.tasks (lease_expires_at) WHERE state = 'running';
    CREATE INDEX tasks_ttl ON {s}.tasks (expires_at)
        WHERE state = 'ready' AND expires_at IS NOT NULL;
    CREATE INDEX tasks_state ON {s}.tasks (state, queue);
    CREATE INDEX tasks_parent ON {s}.tasks (parent_id, seq) WHERE parent_id IS NOT NULL;
    CREATE UNIQUE INDEX tasks_child_key ON {s}.tasks (parent_id, child_key)
        WHERE child_key IS NOT NULL;
    CREATE INDEX tasks_hooks ON {s}.tasks (seq) WHERE hook IS NOT NULL;
    CREATE UNIQUE INDEX tasks_dedup ON {s}.tasks (kind, dedup_key)
        WHERE dedup_key IS NOT NULL AND state IN ('blocked', 'ready', 'running', 'scheduled', 'suspended', 'waiting_children');
    CREATE TABLE {s}.results (
        task_id text COLLATE "C" PRIMARY KEY,
        state text COLLATE "C" NOT NULL,
        result bytea,
        error text,
        finished_at bigint NOT NULL
    );
    CREATE TABLE {s}.events (
        id bigserial PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        state text COLLATE "C" NOT NULL,
        at bigint NOT NULL,
        detail text
    );
    CREATE TABLE {s}.waitpoints (
        id text COLLATE "C" PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        expires_at bigint NOT NULL,
        created_at bigint NOT NULL,
        UNIQUE (task_id, key)
    );
    CREATE TABLE {s}.signals (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        waitpoint_id text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        payload bytea NOT NULL,
        idempotency_key text COLLATE "C",
        at bigint NOT NULL,
        suspension_id bigint
    );
    CREATE INDEX signals_unconsumed ON {s}.signals (task_id, seq)
        WHERE suspension_id IS NULL;
    CREATE INDEX signals_consumed ON {s}.signals (suspension_id, seq)
        WHERE suspension_id IS NOT NULL;
    CREATE UNIQUE INDEX signals_idempotency ON {s}.signals (waitpoint_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE {s}.suspensions (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        condition text NOT NULL,
        timeout_at bigint,
        on_timeout text COLLATE "C" NOT NULL,
        attempt integer NOT NULL,
        created_at bigint NOT NULL,
        resolved_at bigint,
        resolution text COLLATE "C"
    );
    CREATE INDEX suspensions_task ON {s}.suspensions (task_id, id);
    CREATE UNIQUE INDEX suspensions_open ON {s}.suspensions (task_id)
        WHERE resolved_at IS NULL;
    CREATE INDEX suspensions_due ON {s}.suspensions (timeout_at)
        WHERE resolved_at IS NULL AND timeout_at IS NOT NULL;
    CREATE FUNCTION {s}.suspension_left() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        UPDATE {s}.suspensions SET resolved_at = NEW.updated_at, resolution = NEW.state
        WHERE task_id = NEW.id AND resolved_at IS NULL;
        RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER suspension_left AFTER UPDATE OF state ON {s}.tasks
        FOR EACH ROW WHEN (OLD.state = 'suspended' AND NEW.state <> 'suspended')
        EXECUTE FUNCTION {s}.suspension_left();
    CREATE TABLE {s}.frame_seqs (
        task_id text COLLATE "C" NOT NULL,
        attempt integer NOT NULL,
        seq integer NOT NULL,
        PRIMARY KEY (task_id, attempt)
    );
    CREATE TABLE {s}.frames (
        task_id text COLLATE "C" NOT NULL,
        attempt integer NOT NULL,
        seq integer NOT NULL,
        frame_type text COLLATE "C" NOT NULL,
        payload bytea NOT NULL,
        metadata bytea,
        at bigint NOT NULL,
        PRIMARY KEY (task_id, attempt, seq)
    );
    
    CREATE TABLE {s}.budgets (
        id text COLLATE "C" PRIMARY KEY,
        hard text NOT NULL,
        soft text NOT NULL,
        usage text NOT NULL,
        reset_every bigint,
        window_start bigint NOT NULL,
        breached text,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    );
    CREATE TABLE {s}.budget_reports (
        budget_id text COLLATE "C" NOT NULL,
        dedup_key text COLLATE "C" NOT NULL,
        task_id text COLLATE "C" NOT NULL,
        amounts text NOT NULL,
        at bigint NOT NULL,
        PRIMARY KEY (budget_id, dedup_key)
    );
    CREATE INDEX tasks_budget ON {s}.tasks (budget_id)
        WHERE budget_id IS NOT NULL AND state = 'ready';
    CREATE TABLE {s}.limits (
        scope text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        tokens double precision NOT NULL,
        refilled_at bigint NOT NULL,
        PRIMARY KEY (scope, name)
    );

CREATE TABLE {s}.deps (
    upstream_id text COLLATE "C" NOT NULL,
    task_id text COLLATE "C" NOT NULL,
    pos integer NOT NULL,
    done boolean NOT NULL DEFAULT false,
    PRIMARY KEY (upstream_id, task_id)
);
CREATE INDEX deps_task ON {s}.deps (task_id, pos);
CREATE INDEX deps_open ON {s}.deps (upstream_id) WHERE NOT done;
CREATE TABLE {s}.workflows (
    id text COLLATE "C" PRIMARY KEY,
    name text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    nodes integer NOT NULL
);
CREATE INDEX workflows_created ON {s}.workflows (created_at, id);
CREATE UNIQUE INDEX tasks_node ON {s}.tasks (workflow_id, node) WHERE workflow_id IS NOT NULL;
CREATE INDEX tasks_workflow ON {s}.tasks (workflow_id, seq) WHERE workflow_id IS NOT NULL;

CREATE FUNCTION {s}.deps_resolve(ups text[], states text[], at bigint, work_channel text,
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
            UPDATE {s}.deps d SET done = true FROM w
            WHERE d.upstream_id = w.id AND NOT d.done
            RETURNING d.task_id, w.state
        ),
        a AS MATERIALIZED (
            SELECT e.task_id AS id, count(*) AS n,
                count(*) FILTER (WHERE e.state IN ('cancelled', 'dead_lettered', 'expired', 'failed')) AS nf,
                count(*) FILTER (WHERE e.state NOT IN ('cancelled', 'dead_lettered', 'expired', 'failed')
                    AND e.state <> 'completed') AS ns
            FROM e GROUP BY e.task_id
        ),
        lk AS MATERIALIZED (
            SELECT t.id FROM {s}.tasks t
            WHERE t.id IN (SELECT id FROM a) AND t.state = 'blocked'
            ORDER BY t.id FOR NO KEY UPDATE
        ),
        -- The common decision, "ready", is made in this same UPDATE (one statement);
        -- the others (skipped, failed) are decided below.
        upd AS (
            UPDATE {s}.tasks t SET deps_pending = t.deps_pending - a.n,
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
            INSERT INTO {s}.events (task_id, kind, state, at, detail)
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
            FROM unnest(ids, targets) AS d(id, target) JOIN {s}.tasks t ON t.id = d.id
        ),
        c AS (SELECT x.id, coalesce((
    SELECT coalesce('''' || u.node || '''', u.id)
        || CASE WHEN u.state = 'failed' THEN ' failed' ELSE ' ended ' || u.state END
    FROM {s}.deps e JOIN {s}.tasks u ON u.id = e.upstream_id
    WHERE e.task_id = x.id AND u.state IN ('cancelled', 'completed', 'dead_lettered', 'expired', 'failed', 'skipped') AND u.state <> 'completed'
        AND (x.deps_failed = 0 OR u.state IN ('cancelled', 'dead_lettered', 'expired', 'failed'))
    ORDER BY e.pos LIMIT 1), 'did not complete') AS culprit FROM x WHERE x.target <> 'ready'),
        upd AS (
            UPDATE {s}.tasks t SET state = x.target, updated_at = at,
                finished_at = CASE WHEN x.target <> 'ready' THEN at END,
                error = CASE x.target
                    WHEN 'failed' THEN jsonb_build_object('type', 'UpstreamFailed', 'message', 'upstream ' || c.culprit, 'category', 'upstream_failed', 'traceback', NULL)::text
                    WHEN 'skipped' THEN jsonb_build_object('type', 'Skipped', 'message', 'skipped: upstream ' || c.culprit, 'category', 'upstream_skipped', 'traceback', NULL)::text
                    ELSE t.error END
            FROM x LEFT JOIN c ON c.id = x.id
            WHERE t.id = x.id AND t.state = 'blocked'
            RETURNING t.id, t.kind, t.seq, t.state, t.error, t.has_dependents
        ),
        ev AS (
            INSERT INTO {s}.events (task_id, kind, state, at, detail)
            SELECT id, kind, state, at, CASE state WHEN 'ready' THEN 'dependencies done'
                WHEN 'failed' THEN 'upstream_failed' ELSE 'upstream_skipped' END
            FROM upd ORDER BY seq
        ),
        res AS (
            INSERT INTO {s}.results (task_id, state, result, error, finished_at)
            SELECT id, state, NULL, error, at FROM upd WHERE state <> 'ready' ON CONFLICT (task_id) DO UPDATE SET state = excluded.state, result = excluded.result, error = excluded.error, finished_at = excluded.finished_at
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
        ups := coalesce(ups, '{}');
        states := coalesce(states, '{}');
    END LOOP;
    PERFORM set_config('flowmill.deps_resolving', coalesce(outer_call, ''), true);
    RETURN resolved;
END
$fn$;

CREATE FUNCTION {s}.deps_ended() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- Inside deps_resolve, its own loop carries the cascade.
    IF coalesce(current_setting('flowmill.deps_resolving', true), '') <> 'on' THEN
        PERFORM {s}.deps_resolve(ARRAY[NEW.id], ARRAY[NEW.state], NEW.updated_at,
            TG_ARGV[0], TG_ARGV[1]);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER deps_ended AFTER UPDATE OF state ON {s}.tasks
    FOR EACH ROW WHEN (NEW.has_dependents AND NEW.state IN ('cancelled', 'completed', 'dead_lettered', 'expired', 'failed', 'skipped')
        AND OLD.state NOT IN ('cancelled', 'completed', 'dead_lettered', 'expired', 'failed', 'skipped'))
    EXECUTE FUNCTION {s}.deps_ended({work_channel}, {finish_channel});
