"""Small SQL helpers every module of the SQLite store shares."""

from __future__ import annotations

# The next task seq or event id (migration 0007): one counter for both, one above the
# highest seq, event id and retention's `id_floor`. A task's creation event is its row
# (its seq is the event's id), so the event log (`events_read`, by id) stays in commit
# order across both tables. Each lookup is one descent to the right edge of a B-tree.
NEXT_ID = (
    "(max(coalesce((SELECT max(seq) FROM fm_tasks), 0), "
    "coalesce((SELECT max(id) FROM fm_events), 0), "
    "coalesce((SELECT CAST(value AS INTEGER) FROM fm_meta WHERE key = 'id_floor'), 0)) + 1)"
)

# One event row: (task_id, kind, state, at, detail). It also stores the task's seq, the
# key of the events' task index (fm_events_task_seq, migration 0006): a drain ends tasks in
# seq order, so that index grows at a few pages per commit, where an index on the random
# task id dirtied one page per event. The seq is looked up through the id's own index.
EVENT_SQL = (
    "INSERT INTO fm_events (id, task_id, task_seq, kind, state, at, detail) "
    f"VALUES ({NEXT_ID}, ?1, (SELECT seq FROM fm_tasks WHERE id = ?1), ?2, ?3, ?4, ?5)"
)

# Ids per `IN (...)` list: well under SQLite's bound-parameter limit.
IN_CHUNK = 500


def marks(n: int) -> str:
    """`?, ?, ...`: the placeholders of an `IN` list of `n` values."""
    return ", ".join("?" * n)
