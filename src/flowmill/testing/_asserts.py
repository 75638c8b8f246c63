"""`assert_submitted` / `assert_not_submitted`: what a test submitted, with clear messages."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .._app import App
from .._task import TaskDef
from ._isolate import Submitted, recorder_of


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final[Any] = _Any()
"""Matches every payload (the default of `payload=`)."""


def _expected_json(app: App, name: str, payload: Any) -> Any:
    tdef = app.registry.get(name)
    data = tdef.payload.encode(payload) if tdef is not None else msgspec.json.encode(payload)
    return msgspec.json.decode(data)


def _name(task: TaskDef | str) -> str:
    return task.name if isinstance(task, TaskDef) else task


def _shown(s: Submitted) -> str:
    key = f" key={s.key!r}" if s.key is not None else ""
    return f"  - {s.kind} {s.payload.decode(errors='replace')}{key} (id {s.id})"


def _matching(app: App, task: TaskDef | str, payload: Any) -> tuple[str, list[Submitted], str]:
    rec = recorder_of(app)
    if rec is None:
        raise AssertionError(
            "this app does not record submissions: use the flowmill_app fixture, or wrap "
            "the test in flowmill.testing.isolated(app, url)"
        )
    name = _name(task)
    want = ANY if payload is ANY else _expected_json(app, name, payload)
    found = [
        s
        for s in rec.submitted
        if s.kind == name and (want is ANY or msgspec.json.decode(s.payload) == want)
    ]
    shown = "\n".join(_shown(s) for s in rec.submitted) or "  (nothing)"
    what = name if payload is ANY else f"{name} with payload {payload!r}"
    return what, found, shown


def assert_submitted(
    app: App, task: TaskDef | str, payload: Any = ANY, *, count: int | None = None
) -> list[Submitted]:
    """Assert that `task` was submitted (with this payload, `count` times if given) since the
    test began: by a submit, a spawn or a workflow, deduplicated submits not counted.
    Returns the matching submissions."""
    what, found, shown = _matching(app, task, payload)
    if (count is None and not found) or (count is not None and len(found) != count):
        times = "at least once" if count is None else f"{count} time(s)"
        raise AssertionError(
            f"expected {what} to be submitted {times}, found {len(found)}; "
            f"submitted in this test:\n{shown}"
        )
    return found


def assert_not_submitted(app: App, task: TaskDef | str, payload: Any = ANY) -> None:
    """Assert that `task` (with this payload, if given) was not submitted since the test began."""
    what, found, shown = _matching(app, task, payload)
    if found:
        raise AssertionError(
            f"expected {what} not to be submitted, found {len(found)}; "
            f"submitted in this test:\n{shown}"
        )
