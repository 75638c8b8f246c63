"""Every Python and shell block of the README and docs/**/*.md runs, so the docs cannot rot.

One test per page, in a fresh temporary folder (the current directory while it runs):

- Python blocks run in order in one namespace, as a reader would type them into an asyncio
  REPL (top-level `await` works), after the page's prelude from `_pages.py`: the names the
  page assumes (`fm`, `timedelta`, an open `app` on a fresh SQLite file, the reader's own
  types and helpers). A block marked `<!-- file: name.py -->` is written to that file and
  imported instead of run.
- Shell blocks run command by command: `flowmill ...` through the CLI (in this process),
  except `flowmill worker` and `flowmill serve`, which start in the background as the
  reader's "other shell" and get SIGTERM when the page ends (they must exit 0);
  `python FILE` as a subprocess; `make TARGET` as `make -n TARGET` (the target exists and
  its recipe expands); `source PATH` checks the file exists. `ID` stands for a task id:
  a dead-lettered task of the command's store, else its newest task.
- A block marked `<!-- skip: reason -->` does not run; the test reports the reason.
"""

from __future__ import annotations

import ast
import asyncio
import linecache
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from datetime import timedelta
from inspect import CO_COROUTINE
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import flowmill as fm
from flowmill.cli import cli

from ..conftest import eventually
from ._blocks import ROOT, Block, blocks, doc_pages
from ._pages import PAGES, Page

PAGES_WITH_BLOCKS = [p for p in [*doc_pages(), "CONTRIBUTING.md"] if blocks(p)]


def test_every_page_with_blocks_is_described() -> None:
    missing = [p for p in PAGES_WITH_BLOCKS if p not in PAGES]
    assert not missing, f"add these pages to tests/docs/_pages.py: {missing}"
    gone = [p for p in PAGES if p not in PAGES_WITH_BLOCKS]
    assert not gone, f"tests/docs/_pages.py describes pages without blocks: {gone}"


class Session:
    """The reader's session on one page: a namespace, an event loop, background work."""

    def __init__(self, tmp: Path, page: str) -> None:
        self.tmp = tmp
        self.page = page
        self.loop = asyncio.new_event_loop()
        # A module of its own, as dataclasses and the task registry look types up there.
        self.module = types.ModuleType(f"docs_snippet_{os.urandom(4).hex()}")
        sys.modules[self.module.__name__] = self.module
        self.ns: dict[str, Any] = self.module.__dict__
        self.background: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.workers: list[tuple[fm.Worker, asyncio.Task[None]]] = []
        self.modules: list[str] = []
        self.apps: list[fm.App] = []
        self.ids: dict[str | None, str] = {}

    # -- Python -------------------------------------------------------------------

    def declare(self, spec: Page) -> None:
        self.ns.update(
            fm=fm,
            timedelta=timedelta,
            start_worker=self.start_worker,
            eventually=eventually,
        )
        if spec.app:
            app = fm.App(f"sqlite:///{self.tmp / 'docs.db'}")
            self.apps.append(app)
            self.ns["app"] = app
            self.run_python(f"{self.page} (opening app)", "await app.open()")

    def start_worker(self, app: fm.App) -> None:
        worker = app.worker(concurrency=8)
        self.workers.append((worker, self.loop.create_task(worker.run())))

    def run_python(self, where: str, code: str) -> None:
        linecache.cache[where] = (len(code), None, code.splitlines(True), where)  # tracebacks
        compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if compiled.co_flags & CO_COROUTINE:
            self.loop.run_until_complete(eval(compiled, self.ns))
        else:
            exec(compiled, self.ns)

    def write_module(self, block: Block) -> None:
        assert block.file is not None and block.file.endswith(".py"), block.where
        (self.tmp / block.file).write_text(block.code, encoding="utf-8")
        name = block.file.removesuffix(".py")
        sys.modules.pop(name, None)
        self.modules.append(name)
        self.run_python(block.where, f"import {name}")

    # -- shell --------------------------------------------------------------------

    def run_shell(self, where: str, text: str) -> None:
        for line in text.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                self.run_command(where, argv)

    def run_command(self, where: str, argv: list[str]) -> None:
        head, args = argv[0], argv[1:]
        shown = shlex.join(argv)
        if head == "make":
            done = subprocess.run(
                ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=False
            )
            assert done.returncode == 0, f"{where}: {shown}: {done.stderr}"
        elif head == "source":
            assert len(args) == 1 and _made_by_make(args[0]), f"{where}: {shown}: no such file"
        elif head == "python":
            done = subprocess.run(
                [sys.executable, *args],
                cwd=self.tmp,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, f"{where}: {shown}:\n{done.stdout}\n{done.stderr}"
        elif head == "flowmill" and args[:1] in (["worker"], ["serve"]):
            log = self.tmp / f"background-{len(self.background)}.log"
            with log.open("wb") as out:  # a file, not a pipe: a chatty worker never blocks
                proc = subprocess.Popen(
                    [sys.executable, "-m", "flowmill", *args],
                    cwd=self.tmp,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.background.append((f"{where}: {shown}", proc, log))
        elif head == "flowmill":
            args = [self.task_id(args) if a == "ID" else a for a in args]
            result = CliRunner().invoke(cli, args, prog_name="flowmill")
            assert result.exit_code == 0, f"{where}: {shown}:\n{result.output}"
        else:
            pytest.fail(f"{where}: tests/docs does not know how to run {shown!r}")

    def task_id(self, args: list[str]) -> str:
        """The task `ID` stands for: one per store for the whole page, as for a reader."""
        url = args[args.index("--url") + 1] if "--url" in args else None
        if url not in self.ids:
            self.ids[url] = self.find_task(url)
        return self.ids[url]

    def find_task(self, url: str | None) -> str:

        async def find() -> str:
            async with fm.App(url) as app:
                dead = await app.dead_letters(limit=1)
                found = dead or (await app.list_tasks(limit=10_000))[-1:]
            assert found, f"no task in {url} to stand for ID"
            return found[0].id

        return asyncio.run(find())

    # -- the end ------------------------------------------------------------------

    def close(self) -> None:
        problems: list[str] = []
        for worker, task in self.workers:
            worker.stop()
            self.loop.run_until_complete(task)
        for app in self.apps:
            self.loop.run_until_complete(app.close())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
        for shown, proc, log in self.background:
            if proc.poll() is None:
                _wait_handling_sigterm(proc)
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode != 0:
                problems.append(f"{shown} exited {proc.returncode}:\n{log.read_text()}")
        for name in [*self.modules, self.module.__name__]:
            sys.modules.pop(name, None)
        assert not problems, "\n".join(problems)


def _made_by_make(path: str) -> bool:
    """The file exists, or is in the virtualenv `make` creates (a checkout without one)."""
    if (ROOT / path).exists():
        return True
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return path.startswith(".venv/bin/") and "VENV ?= .venv" in makefile and "-m venv" in makefile


def _wait_handling_sigterm(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until a background command has installed its SIGTERM handler (Linux: the
    SigCgt mask in /proc), so that the SIGTERM the page ends with tests the graceful stop
    and does not kill a process still importing. Elsewhere, return at once."""
    status = Path(f"/proc/{proc.pid}/status")
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            text = status.read_text()
        except OSError:
            return
        caught = re.search(r"^SigCgt:\s*([0-9a-fA-F]+)", text, flags=re.M)
        if caught is None or int(caught.group(1), 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.02)  # polling another process's state, not waiting for a timer


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Session]]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FLOWMILL_URL", raising=False)
    opened: list[Session] = []

    def make(page: str) -> Session:
        s = Session(tmp_path, page)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.mark.parametrize("page", PAGES_WITH_BLOCKS)
def test_page_blocks_run(page: str, session: Callable[[str], Session]) -> None:
    spec = PAGES[page]
    s = session(page)
    s.declare(spec)
    if spec.prelude:
        s.run_python(f"{page} (prelude)", spec.prelude)
    for i, block in enumerate(blocks(page)):
        before = spec.before.get(i)
        if before:
            run = s.run_python if block.lang == "python" else s.run_shell
            run(f"{block.where} (before)", before)
        if block.skip is not None:
            continue  # reported by test_block_marked_skip
        if block.file is not None:
            s.write_module(block)
        elif block.lang == "python":
            s.run_python(block.where, block.code)
        else:
            s.run_shell(block.where, block.code)
    if spec.after:
        s.run_python(f"{page} (after)", spec.after)


SKIPPED = [b for p in PAGES_WITH_BLOCKS for b in blocks(p) if b.skip is not None]


@pytest.mark.parametrize("block", SKIPPED, ids=[b.where for b in SKIPPED])
def test_block_marked_skip(block: Block) -> None:
    assert block.skip, f"{block.where}: a skipped block must say why"
    pytest.skip(f"{block.where} is not run: {block.skip}")
