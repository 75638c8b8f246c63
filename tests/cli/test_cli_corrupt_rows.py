"""`flowmill tasks list|show` and `dead-letters` show a corrupt row with a marker (issue 13
item 4): one bad payload, result, error or tags value does not end the command."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest

from .test_cli import MODULE, Jobs, Populated, jobs, populated, run  # noqa: F401 - fixtures


def _corrupt(url: str, table: str, column: str, value: Any, task_id: str) -> None:
    key = "id" if table == "tasks" else "task_id"
    conn = sqlite3.connect(url.split(":///", 1)[1])
    try:
        conn.execute(f"UPDATE fm_{table} SET {column} = ? WHERE {key} = ?", (value, task_id))
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def corrupted(jobs: Jobs, populated: Populated) -> Populated:  # noqa: F811 - a fixture
    """The completed task's payload and result, the dead one's error, the failed one's tags."""
    _corrupt(jobs.url, "tasks", "payload", 42, populated.done)
    _corrupt(jobs.url, "results", "result", b"\xff{", populated.done)
    _corrupt(jobs.url, "tasks", "error", "not json", populated.dead)
    _corrupt(jobs.url, "results", "error", "not json", populated.dead)
    _corrupt(jobs.url, "tasks", "tags", "{", populated.failed)
    return populated


@pytest.mark.parametrize("with_app", [False, True])
def test_tasks_list_shows_every_row_and_marks_the_corrupt_ones(
    jobs: Jobs,  # noqa: F811 - a fixture
    corrupted: Populated,
    with_app: bool,
) -> None:
    source = ["--app", f"{MODULE}:app"] if with_app else ["--url", jobs.url]
    code, out, err = run("tasks", "list", *source)
    assert (code, err) == (0, "")
    ids = re.findall(r"^([0-9a-f-]{36})\s", out, flags=re.M)
    assert ids == [corrupted.done, corrupted.failed, corrupted.dead, corrupted.scheduled]
    lines = {i: next(line for line in out.splitlines() if line.startswith(i)) for i in ids}
    assert "undecodable: payload, result" in lines[corrupted.done]
    assert "undecodable: tags" in lines[corrupted.failed]
    assert "undecodable: error" in lines[corrupted.dead]
    assert "undecodable" not in lines[corrupted.scheduled]


@pytest.mark.parametrize("with_app", [False, True])
def test_tasks_show_marks_a_corrupt_payload_and_result(
    jobs: Jobs,  # noqa: F811 - a fixture
    corrupted: Populated,
    with_app: bool,
) -> None:
    source = ["--app", f"{MODULE}:app"] if with_app else ["--url", jobs.url]
    code, out, err = run("tasks", "show", corrupted.done, *source)
    assert (code, err) == (0, "")
    text = " ".join(out.split())
    assert "payload <undecodable:" in text
    assert "not JSON: the store holds int 42" in text
    assert "result <undecodable:" in text
    assert "UTF-8" in text


def test_tasks_show_and_dead_letters_mark_a_corrupt_error(
    jobs: Jobs,  # noqa: F811 - a fixture
    corrupted: Populated,
) -> None:
    code, out, err = run("tasks", "show", corrupted.dead, "--url", jobs.url)
    assert (code, err) == (0, "")
    assert "Undecodable (undecodable): the stored error does not decode" in " ".join(out.split())
    code, out, err = run("dead-letters", "--url", jobs.url)
    assert (code, err) == (0, "")
    assert corrupted.dead in out
    assert "Undecodable" in out
    code, out, err = run("tasks", "show", corrupted.failed, "--url", jobs.url)
    assert (code, err) == (0, "")
    assert "tags <undecodable:" in " ".join(out.split())
