"""`flowmill workflows list/show`: a run drawn as a tree of node states."""

from __future__ import annotations

import asyncio
from pathlib import Path

import flowmill as fm

from .test_cli import one_line_error, run


def test_workflows_show_draws_states_durations_and_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wf.db'}"
    app = fm.App(url)

    @app.task(name="extract")
    async def extract(_: None) -> int:
        return 3

    @app.task(name="explode")
    async def explode(_: None) -> int:
        raise fm.Fail("disk [full]")

    @app.task(name="load")
    async def load(_: None) -> int:
        return 1

    async def setup() -> fm.WorkflowRun:
        async with app:
            wf = app.workflow("nightly-etl")
            e = wf.add(extract)
            x = wf.add(explode, after=[e])
            wf.add(load, name="load_a", after=[e])
            wf.add(load, name="load_b", after=[e, x])
            r = await wf.submit()
            await app.worker().run(stop_when_idle=True)
            return r

    r = asyncio.run(setup())

    code, out, _ = run("workflows", "show", r.id, "--url", url)
    assert code == 0, out
    assert "nightly-etl" in out and r.id in out and "failed" in out
    lines = out.splitlines()
    explode_line = next(i for i, line in enumerate(lines) if "explode" in line)
    assert "failed" in lines[explode_line]
    assert "Fail: disk [full]" in lines[explode_line + 1]
    assert any(
        "load_b" in line and "skipped" in line and "also after explode" in line for line in lines
    )
    assert any("load_a" in line and "completed" in line for line in lines)
    # the tree: load_a hangs under extract (indented further)
    assert lines[explode_line].index("explode") > next(
        line for line in lines if "extract" in line and "completed" in line
    ).index("extract")

    code, out, _ = run("workflows", "list", "--url", url)
    assert code == 0
    assert r.id in out and "nightly-etl" in out and "skipped 1" in out

    code, _, err = run("workflows", "show", "no-such-run", "--url", url)
    assert code != 0
    assert "no-such-run" in one_line_error(err)
