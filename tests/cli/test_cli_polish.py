"""The `flowmill` command's surface: --version, -h, tidy help, --json, submit by name,
payload errors that say where, a note when no worker claims, unusable database files."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer

import flowmill as fm
from flowmill._inspect import TaskInfo
from flowmill._states import Phase
from flowmill.cli import cli
from flowmill.cli._submit import unclaimed_notice

from . import test_cli
from .test_cli import Jobs, Populated, flowmill, one_line_error, run, start_worker, stop

jobs = test_cli.jobs  # the fixtures of test_cli.py, used here too
populated = test_cli.populated

TASK_FIELDS = {
    "id", "name", "queue", "state", "phase", "priority", "attempts", "max_attempts", "key",
    "tags", "parent_id", "progress", "progress_message", "lease_owner", "lease_expires_at",
    "cancel_requested", "created_at", "updated_at", "run_at", "expires_at", "started_at",
    "finished_at", "payload", "result", "error",
}  # fmt: skip


def command_paths() -> list[list[str]]:
    """Every command and group of `flowmill`, as the words that name it."""
    out: list[list[str]] = [[]]

    def walk(group: object, prefix: list[str]) -> None:
        ctx = typer.Context(group)  # type: ignore[arg-type]
        for name in group.list_commands(ctx):  # type: ignore[attr-defined]
            sub = group.get_command(ctx, name)  # type: ignore[attr-defined]
            out.append([*prefix, name])
            if hasattr(sub, "list_commands"):
                walk(sub, [*prefix, name])

    walk(typer.main.get_command(cli), [])
    return out


def test_version() -> None:
    for flag in ("--version", "-V"):
        code, out, _ = run(flag)
        assert (code, out.strip()) == (0, f"flowmill {fm.__version__}")


@pytest.mark.parametrize("words", command_paths(), ids=lambda w: " ".join(w) or "flowmill")
def test_dash_h_is_help_everywhere_without_type_noise(words: list[str]) -> None:
    code, out, err = run(*words, "-h")
    assert code == 0, err
    assert "Usage: flowmill" in out
    assert run(*words, "--help")[1] == out
    for noise in ("<str>", "<bool>", "<int", "<float", "<list", "TEXT", "INTEGER", "FLOAT"):
        assert noise not in out, f"{noise} in the help of {words}:\n{out}"


def test_there_are_commands_to_check() -> None:
    paths = [" ".join(p) for p in command_paths()]
    assert {"submit", "status", "tasks list", "dead-letters", "workflows show"} <= set(paths)


# -- --json -----------------------------------------------------------------------------


def test_json_output_of_tasks_status_and_dead_letters(jobs: Jobs, populated: Populated) -> None:
    code, out, err = run("tasks", "list", "--json", "--url", jobs.url)
    assert code == 0, err
    listed = json.loads(out)
    assert isinstance(listed, list)
    assert {t["id"] for t in listed} >= {populated.done, populated.dead, populated.scheduled}
    assert all(set(t) == TASK_FIELDS for t in listed)

    code, out, _ = run("tasks", "show", populated.done, "--json", "--app", "cli_jobs:app")
    shown = json.loads(out)
    assert (shown["state"], shown["payload"], shown["result"]) == (
        "completed",
        {"a": 1, "b": 2},
        {"total": 3},
    )
    assert datetime.fromisoformat(shown["created_at"]).tzinfo is not None

    failed = json.loads(run("tasks", "show", populated.failed, "--json", "--url", jobs.url)[1])
    assert failed["error"]["type"] == "Fail" and failed["error"]["category"]

    code, out, _ = run("dead-letters", "--json", "--url", jobs.url)
    dead = json.loads(out)
    assert [d["id"] for d in dead] == [populated.dead]
    assert dead[0]["state"] == "dead_lettered"

    code, out, _ = run("status", "--json", "--url", jobs.url)
    status = json.loads(out)
    assert set(status) == {"counts", "budgets"}
    counts = {(c["queue"], c["state"]): c["count"] for c in status["counts"]}
    assert counts[("default", "dead_lettered")] == 1
    assert sum(counts.values()) == len(listed)


def test_json_of_nothing_is_an_empty_array(jobs: Jobs, populated: Populated) -> None:
    code, out, _ = run("tasks", "list", "--state", "running", "--json", "--url", jobs.url)
    assert (code, json.loads(out)) == (0, [])


# -- submit by name -----------------------------------------------------------------------


def test_submit_by_name_needs_no_app(jobs: Jobs, populated: Populated) -> None:
    code, out, err = run("submit", "resize", '{"w": 10}', "--queue", "images", "--url", jobs.url)
    assert code == 0, err
    task = json.loads(run("tasks", "show", out.strip(), "--json", "--url", jobs.url)[1])
    assert (task["name"], task["queue"], task["payload"]) == ("resize", "images", {"w": 10})


def test_submit_by_name_refuses_a_missing_database(jobs: Jobs) -> None:
    code, _, err = run("submit", "resize", "1", "--url", f"sqlite:///{jobs.dir / 'typo.db'}")
    assert code == 1
    line = one_line_error(err)
    assert f"no flowmill database at sqlite:///{jobs.dir / 'typo.db'}" in line
    assert "flowmill migrate" in line
    assert not (jobs.dir / "typo.db").exists()


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ('{"a": 1', "line 1, column 8: Expecting ',' delimiter"),
        ('{"a": 1,\n "b": }', "line 2, column 7: Expecting value"),
        ("{bad", "line 1, column 2"),
    ],
)
def test_malformed_json_says_where(
    jobs: Jobs, populated: Populated, payload: str, needle: str
) -> None:
    for args in (["--url", jobs.url], ["--app", "cli_jobs:app"]):
        code, _, err = run("submit", "add", payload, *args)
        assert code == 2
        line = one_line_error(err)
        assert needle in line and "truncated" not in line


def test_unknown_payload_fields_are_refused_with_their_name(jobs: Jobs) -> None:
    code, _, err = run("submit", "add", '{"a": 1, "b": 2, "c": 3}', "--app", "cli_jobs:app")
    assert code == 1
    assert "unknown field `c`" in one_line_error(err)


def test_by_name_submits_run_on_a_worker_and_bad_ones_fail_naming_the_field(jobs: Jobs) -> None:
    assert run("migrate", "--url", jobs.url)[0] == 0
    worker = start_worker(jobs, "--concurrency", "4")
    try:
        ok = flowmill(jobs, "submit", "add", '{"a": 40, "b": 2}', "--url", jobs.url, "--wait",
                      "--timeout", "60")  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout.strip().splitlines()[1]) == {"total": 42}
        for payload, needle in (('{"a": 1, "b": "x"}', "$.b"), ('{"a": 1, "b": 2, "c": 3}', "`c`")):
            bad = flowmill(jobs, "submit", "add", payload, "--url", jobs.url, "--wait",
                           "--timeout", "60")  # fmt: skip
            assert bad.returncode == 1
            line = one_line_error(bad.stderr)
            assert "ended failed: PayloadError" in line and needle in line
    finally:
        stop(worker)


def test_wait_says_when_no_worker_claims_the_task(jobs: Jobs, populated: Populated) -> None:
    code, _, err = run("submit", "add", '{"a": 1, "b": 2}', "--url", jobs.url, "--wait",
                         "--notice-after", "0.05", "--timeout", "2")  # fmt: skip
    assert code == 1
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    assert "no worker has claimed it yet; is a worker running with this task registered" in notes[0]
    assert "'default'" in notes[0]
    assert "did not end within" in err


def _info(**changes: object) -> TaskInfo:
    now = datetime.now(UTC)
    base = TaskInfo(
        id="t1", name="add", queue="q", priority=0, state=fm.State.READY, phase=Phase.EXECUTE,
        attempts=0, max_attempts=3, payload=None, result=None, error=None, tags={}, key=None,
        parent_id=None, progress=None, progress_message=None, lease_owner=None, lease_epoch=0,
        lease_expires_at=None, cancel_requested=False, created_at=now, updated_at=now,
        run_at=None, expires_at=None, started_at=None, finished_at=None,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_notice_is_only_for_a_due_task_never_claimed() -> None:
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    assert unclaimed_notice(_info(), now_ms, 3) is not None
    due = _info(state=fm.State.SCHEDULED, run_at=now - timedelta(seconds=1))
    assert unclaimed_notice(due, now_ms, 3) is not None
    for quiet in (
        _info(state=fm.State.RUNNING, lease_owner="w1", attempts=1),
        _info(attempts=1),  # claimed once, now waiting for its retry
        _info(state=fm.State.SCHEDULED, run_at=now + timedelta(hours=1)),
        _info(state=fm.State.COMPLETED, attempts=1),
    ):
        assert unclaimed_notice(quiet, now_ms, 3) is None


# -- database files it cannot use ---------------------------------------------------------


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Makes a file read-only for this process: chmod, or for root `chattr +i`."""
    undo: list[Callable[[], object]] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o444)
            undo.append(lambda: path.chmod(0o644))
            return
        chattr = shutil.which("chattr")
        if (
            chattr is None
            or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode
        ):
            pytest.skip("running as root where chattr +i is unavailable: no file is read-only")
        undo.append(lambda: subprocess.run([chattr, "-i", str(path)], check=True))

    yield make
    for step in undo:
        step()


def test_a_read_only_database_is_named_with_what_to_do(
    jobs: Jobs, populated: Populated, read_only: Callable[[Path], None]
) -> None:
    path = jobs.dir / "jobs.db"
    read_only(path)
    for args in (["status"], ["tasks", "cancel", populated.scheduled], ["submit", "add", "1"]):
        code, _, err = run(*args, "--url", jobs.url)
        assert code == 1
        line = one_line_error(err)
        assert f"{path} is read-only" in line and "chmod u+w" in line


def test_a_database_in_a_missing_directory_is_named(jobs: Jobs) -> None:
    code, _, err = run("migrate", "--url", f"sqlite:///{jobs.dir / 'nowhere' / 'x.db'}")
    assert code == 1
    assert str(jobs.dir / "nowhere") in one_line_error(err)
