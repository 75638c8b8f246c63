-- flowmill PostgreSQL schema, migration 2: nothing changes here. The SQLite migration of
-- the same number drops AUTOINCREMENT from its events table; PostgreSQL's bigserial
-- sequence already costs a submit no extra page. Numbered alike on every backend.

SELECT 1;
