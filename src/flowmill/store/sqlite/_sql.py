"""Small SQL helpers every module of the SQLite store shares."""

from __future__ import annotations

# One event row: (task_id, kind, state, at, detail). It also stores the task's seq, the
# key of the events' task index (fm_events_task_seq, migration 0006): a drain ends tasks in
# seq order, so that index grows at a few pages per commit, where an index on the random
# task id dirtied one page per event. The seq is looked up through the id's own index.
EVENT_SQL = (
    "INSERT INTO fm_events (task_id, task_seq, kind, state, at, detail) "
    "VALUES (?1, (SELECT seq FROM fm_tasks WHERE id = ?1), ?2, ?3, ?4, ?5)"
)

# Ids per `IN (...)` list: well under SQLite's bound-parameter limit.
IN_CHUNK = 500


def marks(n: int) -> str:
    """`?, ?, ...`: the placeholders of an `IN` list of `n` values."""
    return ", ".join("?" * n)
