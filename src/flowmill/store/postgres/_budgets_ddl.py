"""The PostgreSQL tables of budgets and rate limits (a module of its own: `_pg_schema`
imports it, and `_pg_budgets` imports `_pg_schema`)."""

# Added to schema migration 1 (`{s}` is the quoted schema; the tasks table has a
# `budget_id` column). See _sqlite_budgets for what the columns hold.
BUDGETS_DDL = """
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
"""
