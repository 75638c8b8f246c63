-- flowmill SQLite schema, migration 1: tasks, results, events, waitpoints, signals,
-- suspensions, frames, dependencies, workflows, budgets and limits.
--
-- Frozen: released migrations are never edited (tests/store/test_migrations.py holds
-- their checksums). A change to the schema is a new file, 0002_..., with the same number
-- on every backend. Statements are split at semicolons, so comments here hold none.
--
-- A suspension is open while `resolved_at` is NULL (at most one per task) and
-- `resolution` says how it ended: `satisfied` (its signals are those whose
-- `suspension_id` names it), `timeout`, or the state the task left for otherwise. The
-- trigger resolves the open suspension of a task moved out of `suspended` by any other
-- write (an operator cancel, a cascade from a cancelled or failed parent). A budget's
-- `breached` holds the JSON list of dimensions that ended the window while it is
-- hard-breached. Dedup keys of budget reports are kept for good: a report retried after
-- its window ended is still a repeat.

    CREATE TABLE fm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE fm_tasks (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        phase TEXT NOT NULL DEFAULT 'execute',
        payload BLOB NOT NULL,
        memo BLOB,
        dedup_key TEXT,
        parent_id TEXT,
        tags TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        retry_policy BLOB NOT NULL,
        timeout_ms INTEGER,
        lease_epoch INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires_at INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        last_finish TEXT,
        progress_pct REAL,
        progress_message TEXT,
        error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        run_at INTEGER,
        expires_at INTEGER,
        started_at INTEGER,
        finished_at INTEGER,
        children_total INTEGER NOT NULL DEFAULT 0,
        children_active INTEGER NOT NULL DEFAULT 0,
        children_failed INTEGER NOT NULL DEFAULT 0,
        fail_fast INTEGER NOT NULL DEFAULT 1,
        child_key TEXT,
        has_on_cancel INTEGER NOT NULL DEFAULT 0,
        hook TEXT,
        hook_attempts INTEGER NOT NULL DEFAULT 0,
        deps_pending INTEGER NOT NULL DEFAULT 0,
        deps_failed INTEGER NOT NULL DEFAULT 0,
        deps_skipped INTEGER NOT NULL DEFAULT 0,
        upstream_policy TEXT,
        condition TEXT,
        workflow_id TEXT,
        node TEXT,
        has_dependents INTEGER NOT NULL DEFAULT 0,
        budget_id TEXT
    );
    CREATE INDEX fm_tasks_ready ON fm_tasks (queue, priority DESC, seq) WHERE state = 'ready';
    CREATE INDEX fm_tasks_due ON fm_tasks (run_at) WHERE state = 'scheduled';
    CREATE INDEX fm_tasks_leases ON fm_tasks (lease_expires_at) WHERE state = 'running';
    CREATE INDEX fm_tasks_ttl ON fm_tasks (expires_at)
        WHERE state = 'ready' AND expires_at IS NOT NULL;
    CREATE INDEX fm_tasks_state ON fm_tasks (state, queue);
    CREATE INDEX fm_tasks_parent ON fm_tasks (parent_id, seq) WHERE parent_id IS NOT NULL;
    CREATE UNIQUE INDEX fm_tasks_child_key ON fm_tasks (parent_id, child_key)
        WHERE child_key IS NOT NULL;
    CREATE INDEX fm_tasks_hooks ON fm_tasks (seq) WHERE hook IS NOT NULL;
    CREATE UNIQUE INDEX fm_tasks_dedup ON fm_tasks (kind, dedup_key)
        WHERE dedup_key IS NOT NULL AND state IN ('blocked', 'ready', 'running', 'scheduled', 'suspended', 'waiting_children');
    CREATE TABLE fm_results (
        task_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        result BLOB,
        error TEXT,
        finished_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE fm_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        at INTEGER NOT NULL,
        detail TEXT
    );
    
    CREATE TABLE fm_waitpoints (
        id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        key TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX fm_waitpoints_key ON fm_waitpoints (task_id, key);
    CREATE TABLE fm_signals (
        seq INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL,
        waitpoint_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload BLOB NOT NULL,
        idempotency_key TEXT,
        at INTEGER NOT NULL,
        suspension_id INTEGER
    );
    CREATE INDEX fm_signals_unconsumed ON fm_signals (task_id, seq)
        WHERE suspension_id IS NULL;
    CREATE INDEX fm_signals_consumed ON fm_signals (suspension_id, seq)
        WHERE suspension_id IS NOT NULL;
    CREATE UNIQUE INDEX fm_signals_idempotency ON fm_signals (waitpoint_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE fm_suspensions (
        id INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL,
        condition TEXT NOT NULL,
        timeout_at INTEGER,
        on_timeout TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        resolved_at INTEGER,
        resolution TEXT
    );
    CREATE INDEX fm_suspensions_task ON fm_suspensions (task_id, id);
    CREATE UNIQUE INDEX fm_suspensions_open ON fm_suspensions (task_id)
        WHERE resolved_at IS NULL;
    CREATE INDEX fm_suspensions_due ON fm_suspensions (timeout_at)
        WHERE resolved_at IS NULL AND timeout_at IS NOT NULL;
    CREATE TRIGGER fm_suspension_left AFTER UPDATE OF state ON fm_tasks
        WHEN OLD.state = 'suspended' AND NEW.state <> 'suspended'
    BEGIN
        UPDATE fm_suspensions SET resolved_at = NEW.updated_at, resolution = NEW.state
        WHERE task_id = NEW.id AND resolved_at IS NULL;
    END;
    CREATE TABLE fm_frames (
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        frame_type TEXT NOT NULL,
        payload BLOB NOT NULL,
        metadata BLOB,
        at INTEGER NOT NULL,
        PRIMARY KEY (task_id, attempt, seq)
    ) WITHOUT ROWID;

CREATE TABLE fm_deps (
    upstream_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    pos INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (upstream_id, task_id)
) WITHOUT ROWID;
CREATE INDEX fm_deps_task ON fm_deps (task_id, pos);
CREATE INDEX fm_deps_open ON fm_deps (upstream_id) WHERE done = 0;
CREATE TABLE fm_workflows (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    nodes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX fm_workflows_created ON fm_workflows (created_at);
CREATE UNIQUE INDEX fm_tasks_node ON fm_tasks (workflow_id, node) WHERE workflow_id IS NOT NULL;

    CREATE TABLE fm_budgets (
        id TEXT PRIMARY KEY,
        hard TEXT NOT NULL,
        soft TEXT NOT NULL,
        usage TEXT NOT NULL,
        reset_every INTEGER,
        window_start INTEGER NOT NULL,
        breached TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE fm_budget_reports (
        budget_id TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        task_id TEXT NOT NULL,
        amounts TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (budget_id, dedup_key)
    ) WITHOUT ROWID;
    CREATE INDEX fm_tasks_budget ON fm_tasks (budget_id)
        WHERE budget_id IS NOT NULL AND state = 'ready';
    CREATE TABLE fm_limits (
        scope TEXT NOT NULL,
        name TEXT NOT NULL,
        tokens REAL NOT NULL,
        refilled_at INTEGER NOT NULL,
        PRIMARY KEY (scope, name)
    ) WITHOUT ROWID;
