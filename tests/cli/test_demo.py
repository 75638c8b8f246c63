"""`flowmill demo` runs to a clean end, and the README's code block really works."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flowmill as fm
from flowmill._demo import DEAD_HOST, FLAKY_HOST, command_name, make_batch
from flowmill.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="flowmill")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def summary_value(out: str, row: str) -> str:
    match = re.search(rf"^\W*{re.escape(row)}\W+(\S+)", out, flags=re.M)
    assert match is not None, f"no {row!r} row in:\n{out}"
    return match.group(1)


def test_demo_summary(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    code, out = run("demo", "--no-progress", "--url", url)
    assert code == 0, out
    assert summary_value(out, "tasks") == "201"
    assert summary_value(out, "completed") == "200"  # 199 fetches and the report
    assert summary_value(out, "retried") == "20"  # the flaky host fails each first attempt
    assert summary_value(out, "dead-lettered") == "1"
    assert summary_value(out, "attempts") == "223"  # 200 + 20 retries + 2 more dead + report
    assert summary_value(out, "report") == "199"
    assert f"flowmill dead-letters --url {url}" in out

    code, out = run("dead-letters", "--url", url)
    assert code == 0
    assert DEAD_HOST in out


def test_demo_default_file_is_fresh_and_progress_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flowmill-demo.db").write_text("not a database")  # a stale leftover
    code, out = run("demo", "--tasks", "12", "--workers", "1")
    assert code == 0, out
    assert "sqlite:///flowmill-demo.db" in out
    assert summary_value(out, "dead-lettered") == "1"
    assert summary_value(out, "completed") == "12"


def test_make_batch_mixes_the_cases() -> None:
    batch = make_batch(200)
    images = [*batch.regular, *batch.high, *batch.delayed]
    assert len(images) == 200
    assert len(batch.high) == 2 and len(batch.delayed) == 1
    assert sum(DEAD_HOST in i.url for i in images) == 1
    assert sum(FLAKY_HOST in i.url for i in images) == 20
    assert len(make_batch(1).regular) == 1


# -- the README -----------------------------------------------------------------------


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The API in 30 lines", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match is not None, "the README lost its API block"
    return match.group(1)


def test_readme_mentions_the_newcomer_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert "flowmill worker mymodule:app" in text
    assert len(readme_block().splitlines()) <= 32


def test_readme_block_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mymodule.py").write_text(readme_block())
    monkeypatch.chdir(tmp_path)  # the block's sqlite:///jobs.db lands in tmp_path
    spec = importlib.util.spec_from_file_location("readme_mymodule", tmp_path / "mymodule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "readme_mymodule", module)
    spec.loader.exec_module(module)
    app: fm.App = module.app
    assert app.url == "sqlite:///jobs.db"

    async def go() -> None:
        # The worker gets an App of its own, as `flowmill worker mymodule:app` would in
        # another process: the block's main() closes its app when it is done.
        worker_app = fm.App(app.url)
        worker_app.registry.update(app.registry)
        async with worker_app:
            worker = worker_app.worker(concurrency=4)
            running = asyncio.create_task(worker.run())
            try:
                await module.main()
            finally:
                worker.stop()
                await running

    asyncio.run(go())
    out = capsys.readouterr().out
    assert re.search(r"^submitted [0-9a-f-]{36}$", out, flags=re.M), out
    assert re.search(r"^result 5$", out, flags=re.M), out
    assert (tmp_path / "jobs.db").exists()


# -- the docs -------------------------------------------------------------------------

DOCS = [
    "README.md",
    "docs/quickstart.md",
    "docs/howto/define-tasks.md",
    "docs/explanation/architecture.md",
]


@pytest.mark.parametrize("doc", DOCS)
def test_doc_python_blocks_compile(doc: str) -> None:
    text = (ROOT / doc).read_text()
    for n, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
        # Snippets may await at top level, as in an asyncio REPL.
        compile(block, f"{doc}[python block {n}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_reference_lists_every_public_name() -> None:
    text = (ROOT / "docs" / "reference" / "api.md").read_text()
    listed = re.findall(r"^- `([A-Za-z_]+)", text, flags=re.M)
    assert sorted(listed) == sorted(fm.__all__)


def test_doc_links_resolve() -> None:
    for doc in [*DOCS, "docs/reference/api.md"]:
        path = ROOT / doc
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", path.read_text()):
            assert (path.parent / target).exists(), f"{doc} links to missing {target}"


def test_command_name_repeats_how_flowmill_was_run(tmp_path: Path) -> None:
    assert command_name(".venv/bin/flowmill") == ".venv/bin/flowmill"  # not on PATH
    assert command_name("/usr/lib/python3/site-packages/flowmill/__main__.py") == (
        "python -m flowmill"
    )
    assert command_name("/usr/bin/pytest") == "flowmill"
