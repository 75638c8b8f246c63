"""`flowmill worker`'s plain parser (`flowmill.cli._worker`) reads a command line exactly
as the typer command does, and leaves to typer every command line it does not fully
understand, so `--help` and the usage errors are typer's as before."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from typer.testing import CliRunner

import flowmill.cli._run as run_module
import flowmill.cli._worker as worker_module
from flowmill.cli import cli, main
from flowmill.cli._worker import WorkerOptions, parse_worker_args

READ = [
    ["jobs:app"],
    ["jobs:app", "--concurrency", "64"],
    ["--concurrency=8", "jobs:app", "--queues", "a,b"],
    [
        "pkg.mod:obj.app",
        "--lease-ttl",
        "0.5",
        "--shutdown-grace=0",
        "--cancel-grace",
        "1.25",
        "--repeat-signal-window",
        ".5",
        "--reap-interval",
        "0.001",
        "--health-port",
        "0",
        "--health-host",
        "0.0.0.0",
        "--processes",
        "2",
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
        "--metrics-port",
        "65535",
    ],
    ["jobs:app", "--log-level", "loud"],  # the command reports a bad level, as before
]

LEFT_TO_TYPER = [
    [],
    ["--help"],
    ["-h"],
    ["jobs:app", "--help"],
    ["jobs:app", "other:app"],
    ["jobs:app", "--concurrency"],
    ["jobs:app", "--concurrency", "0"],
    ["jobs:app", "--concurrency", "eight"],
    ["jobs:app", "--concurrency", "1_000"],
    ["jobs:app", "--concurrency", "8", "--concurrency", "9"],
    ["jobs:app", "--lease-ttl", "0.05"],
    ["jobs:app", "--lease-ttl", "inf"],
    ["jobs:app", "--health-port", "65536"],
    ["jobs:app", "--metrics-port", "0"],
    ["jobs:app", "--queues", "--concurrency"],
    ["jobs:app", "--no-such-option", "1"],
    ["jobs:app", "--"],
    ["--concurrency", "8"],
]


def _typer_options(args: list[str], monkeypatch: pytest.MonkeyPatch) -> WorkerOptions:
    seen: list[WorkerOptions] = []

    def capture(options: WorkerOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(run_module, "run_worker_command", capture)
    result = CliRunner().invoke(cli, ["worker", *args])
    assert result.exit_code == 0, result.output
    return seen[0]


@pytest.mark.parametrize("args", READ)
def test_the_plain_parser_reads_a_command_line_as_typer_does(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_worker_args(args) == _typer_options(args, monkeypatch)


@pytest.mark.parametrize("args", LEFT_TO_TYPER)
def test_the_plain_parser_leaves_what_it_does_not_read_to_typer(args: list[str]) -> None:
    assert parse_worker_args(args) is None


def test_worker_help_is_typers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Run a worker for MODULE:APP" in out
    assert "--shutdown-grace" in out


def test_a_bad_value_is_reported_by_typer(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["worker", "jobs:app", "--concurrency", "0"])
    assert exc.value.code == 2
    assert "--concurrency" in capsys.readouterr().err


def test_a_plain_command_line_reports_a_bad_app_path_on_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader puts the cwd on it
    # The command would replace the root logger's handlers: not in this test process.
    monkeypatch.setattr(worker_module, "setup_log_output", lambda level, fmt: None)
    with pytest.raises(SystemExit) as exc:
        main(["worker", "no_such_module_here:app"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot import 'no_such_module_here'")
    assert "Traceback" not in err
