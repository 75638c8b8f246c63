"""`flowmill worker --reap-interval` reaches the worker (issue 13 item 8)."""

from __future__ import annotations

from typing import Any

import pytest

import flowmill as fm
from flowmill._app import App

from .test_cli import MODULE, Jobs, jobs, run  # noqa: F401 - a fixture


class _Built(fm.FlowmillError):
    """Stops the command once the worker's options are known."""


@pytest.mark.parametrize(
    ("args", "reap_s"),
    [([], 10.0), (["--lease-ttl", "3"], 1.0), (["--reap-interval", "2.5"], 2.5)],
)
def test_worker_takes_a_reap_interval(
    jobs: Jobs,  # noqa: F811 - a fixture
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    reap_s: float,
) -> None:
    built: list[fm.Worker] = []
    real = App.worker

    def worker(self: App, **options: Any) -> fm.Worker:
        built.append(real(self, **options))
        raise _Built("built")

    monkeypatch.setattr(App, "worker", worker)
    code, _, err = run("worker", f"{MODULE}:app", *args)
    assert (code, err.strip()) == (1, "error: built")
    assert built[0].maintenance.reap_s == reap_s


def test_worker_refuses_a_reap_interval_of_zero(jobs: Jobs) -> None:  # noqa: F811
    code, _, err = run("worker", f"{MODULE}:app", "--reap-interval", "0")
    assert code == 2
    assert "--reap-interval" in err
