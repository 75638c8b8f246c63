"""The demo behind `flowmill demo`: a thumbnail pipeline with retries, priorities and a DLQ.

A batch of `fetch` tasks downloads images (simulated) and makes thumbnails. Images on
`flaky-cdn.example` fail their first attempt and are retried; the one on
`dead-cdn.example` never answers and ends dead-lettered; two hero images jump the queue
with a high priority and one late upload is delayed. When the batch is done, a `report`
task aggregates the thumbnails. Workers run in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from ._app import App
from ._context import Context
from ._handle import TaskHandle
from ._retry import Fixed, Retry
from ._states import State
from ._task import Priority, TaskDef
from .errors import FlowmillError, TaskFailed
from .store.contract.tasks import Event
from .worker._outcome import Category

DEFAULT_URL = "sqlite:///flowmill-demo.db"
FLAKY_HOST = "flaky-cdn.example"
DEAD_HOST = "dead-cdn.example"
RETRY_BACKOFF = timedelta(milliseconds=200)
LATE_UPLOAD_DELAY = timedelta(milliseconds=500)
RESULT_TIMEOUT = timedelta(seconds=60)

_RETRY_CATEGORIES = frozenset(
    v for k, v in vars(Category).items() if not k.startswith("_") and isinstance(v, str)
)


@dataclass(frozen=True, slots=True)
class Image:
    """A source image to fetch."""

    url: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """What `fetch` returns: sizes before and after, and the attempt that made it."""

    url: str
    source_kb: int
    thumb_kb: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ReportRequest:
    thumbnails: list[Thumbnail]
    failed: int


@dataclass(frozen=True, slots=True)
class Report:
    thumbnails: int
    failed: int
    retried: int
    source_mb: float
    thumbs_mb: float


@dataclass(frozen=True, slots=True)
class Demo:
    """The demo app and its two tasks."""

    app: App
    fetch: TaskDef
    report: TaskDef


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2s(text.encode(), digest_size=4).digest(), "big")


async def _download(image: Image, attempt: int) -> int:
    """A pretend HTTP GET: a few milliseconds of latency, and the failures of its host."""
    await asyncio.sleep(0.002 + _digest(image.url) % 6 / 1000)
    if DEAD_HOST in image.url:
        raise ConnectionError(f"GET {image.url}: connection timed out")
    if FLAKY_HOST in image.url and attempt == 1:
        raise ConnectionError(f"GET {image.url}: 503 Service Unavailable")
    return image.width * image.height * 3 // 1024 // 12  # ~JPEG size in KiB


def build_app(url: str) -> Demo:
    """A fresh App on `url` with the demo's `fetch` and `report` tasks registered."""
    app = App(url)

    @app.task(
        name="fetch",
        retry=Retry(max_attempts=3, backoff=Fixed(RETRY_BACKOFF)),
        timeout=timedelta(seconds=10),
    )
    async def fetch(image: Image, ctx: Context) -> Thumbnail:
        source_kb = await _download(image, ctx.attempt)
        return Thumbnail(image.url, source_kb, max(1, source_kb // 40), ctx.attempt)

    @app.task(name="report")
    def report(req: ReportRequest) -> Report:  # a sync handler: it runs in a worker thread
        return Report(
            thumbnails=len(req.thumbnails),
            failed=req.failed,
            retried=sum(t.attempt > 1 for t in req.thumbnails),
            source_mb=round(sum(t.source_kb for t in req.thumbnails) / 1024, 1),
            thumbs_mb=round(sum(t.thumb_kb for t in req.thumbnails) / 1024, 1),
        )

    return Demo(app, fetch, report)


@dataclass(slots=True)
class Batch:
    """The images of one run, split by how they are submitted."""

    regular: list[Image] = field(default_factory=list)
    high: list[Image] = field(default_factory=list)
    delayed: list[Image] = field(default_factory=list)


def make_batch(n: int) -> Batch:
    """`n` images: one on the dead host, two hero images, one late upload, ~10% flaky."""
    sizes = ((4032, 3024), (1920, 1080), (2560, 1440), (3000, 2000))
    batch = Batch()
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        if i == 0:
            batch.regular.append(Image(f"https://{DEAD_HOST}/album/IMG_{i:04d}.jpg", w, h))
        elif i in (1, 2):
            batch.high.append(Image(f"https://images.example/hero/IMG_{i:04d}.jpg", w, h))
        elif i == 3:
            batch.delayed.append(Image(f"https://images.example/late/IMG_{i:04d}.jpg", w, h))
        elif i % 10 == 7:
            batch.regular.append(Image(f"https://{FLAKY_HOST}/album/IMG_{i:04d}.jpg", w, h))
        else:
            batch.regular.append(Image(f"https://images.example/album/IMG_{i:04d}.jpg", w, h))
    return batch


@dataclass(frozen=True, slots=True)
class Summary:
    """How the run went, counted from the task records after it."""

    url: str
    tasks: int
    completed: int
    retried: int
    dead_lettered: int
    dead_ids: list[str]
    attempts: int
    wall_s: float
    report: Report
    high: int
    delayed: int


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[Event]) -> AsyncIterator[AsyncIterator[Event]]:
    """Close `app.events()` when done (it is an async generator, typed as an iterator)."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


class _Live:
    """Counts state changes from `app.events()` into a progress bar (or nowhere)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = self.completed = self.retried = self.dead = 0
        self.bar: TaskID | None = None
        if progress is not None:
            self.bar = progress.add_task("thumbnails", total=total, ok=0, retried=0, dead=0)

    def update(self) -> None:
        if self.progress is not None and self.bar is not None:
            self.progress.update(
                self.bar,
                completed=self.done,
                ok=self.completed,
                retried=self.retried,
                dead=self.dead,
            )

    async def watch(self, app: App, after: int, kinds: set[str]) -> None:
        async with _closing(app.events(after=after)) as events:
            async for ev in events:
                if ev.kind not in kinds:
                    continue
                if ev.state is State.COMPLETED:
                    self.completed += 1
                elif ev.state in (State.DEAD_LETTERED, State.FAILED):
                    self.dead += 1
                elif ev.detail in _RETRY_CATEGORIES and not ev.state.terminal:
                    self.retried += 1
                if ev.state.terminal:
                    self.done += 1
                self.update()


async def _last_event_id(app: App) -> int:
    last = 0
    async with _closing(app.events(follow=False)) as events:
        async for ev in events:
            last = ev.id
    return last


async def _outcomes(handles: Sequence[TaskHandle[Any]]) -> list[Thumbnail | TaskFailed]:
    got = await asyncio.gather(
        *(h.result(timeout=RESULT_TIMEOUT) for h in handles), return_exceptions=True
    )
    out: list[Thumbnail | TaskFailed] = []
    for g in got:
        if isinstance(g, Thumbnail | TaskFailed):
            out.append(g)
        elif isinstance(g, BaseException):
            raise g  # a timeout or a store error: the demo itself went wrong
        else:
            raise FlowmillError(f"fetch returned {g!r}, not a Thumbnail")
    return out


async def run_demo(
    url: str, *, tasks: int, workers: int, concurrency: int, console: Console, progress: bool
) -> Summary:
    """Submit the batch, run `workers` in-process workers until the report is done."""
    demo = build_app(url)
    app = demo.app
    async with app:
        after = await _last_event_id(app)
        pool = [
            app.worker(concurrency=concurrency, promote_interval=timedelta(milliseconds=50))
            for _ in range(workers)
        ]
        bar = (
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[green]completed {task.fields[ok]}"),
                TextColumn("[yellow]retries {task.fields[retried]}"),
                TextColumn("[red]dead-lettered {task.fields[dead]}"),
                console=console,
            )
            if progress
            else None
        )
        live = _Live(bar, tasks + 1)
        started = time.perf_counter()
        runs = [asyncio.create_task(w.run()) for w in pool]
        watcher = asyncio.create_task(live.watch(app, after, {"fetch", "report"}))
        try:
            with bar if bar is not None else contextlib.nullcontext():
                batch = make_batch(tasks)
                handles = await app.submit_many(demo.fetch, batch.regular)
                for img in batch.high:
                    handles.append(await app.submit(demo.fetch, img, priority=Priority.HIGH))
                for img in batch.delayed:
                    handles.append(await app.submit(demo.fetch, img, delay=LATE_UPLOAD_DELAY))
                if bar is None:
                    console.print(f"submitted {len(handles)} fetch tasks; waiting for them")
                outcomes = await _outcomes(handles)
                thumbs = [o for o in outcomes if isinstance(o, Thumbnail)]
                failed = len(outcomes) - len(thumbs)
                report_handle = await app.submit(demo.report, ReportRequest(thumbs, failed))
                report: Report = await report_handle.result(timeout=RESULT_TIMEOUT)
                wall = time.perf_counter() - started
                infos = await asyncio.gather(*(app.get(h.id) for h in handles))
                live.completed = sum(i.state is State.COMPLETED for i in infos) + 1
                live.dead = sum(i.state is not State.COMPLETED for i in infos)
                live.retried = max(live.retried, sum(i.attempts - 1 for i in infos))
                live.done = live.total
                live.update()
        finally:
            watcher.cancel()
            for w in pool:
                w.stop()
            await asyncio.gather(watcher, *runs, return_exceptions=True)
    dead = [i for i in infos if i.state is State.DEAD_LETTERED]
    return Summary(
        url=app.url,
        tasks=len(handles) + 1,
        completed=sum(i.state is State.COMPLETED for i in infos) + 1,
        retried=sum(i.state is State.COMPLETED and i.attempts > 1 for i in infos),
        dead_lettered=len(dead),
        dead_ids=[i.id for i in dead],
        attempts=sum(i.attempts for i in infos) + 1,
        wall_s=wall,
        report=report,
        high=len(batch.high),
        delayed=len(batch.delayed),
    )


def render_summary(s: Summary, console: Console, prog: str = "flowmill") -> None:
    """The closing table and the commands to look at what the run left in the store."""
    table = Table(title="flowmill demo: summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_column("note", style="dim")
    delay_s = LATE_UPLOAD_DELAY.total_seconds()
    table.add_row("tasks", str(s.tasks), f"{s.tasks - 1} fetch + 1 report")
    table.add_row("completed", str(s.completed), "")
    table.add_row("retried", str(s.retried), f"completed after a failed attempt ({FLAKY_HOST})")
    table.add_row("dead-lettered", str(s.dead_lettered), f"3 attempts, all failed ({DEAD_HOST})")
    table.add_row("attempts", str(s.attempts), "every try, retries included")
    table.add_row(
        "scheduling",
        "",
        f"{s.high} hero image(s) at priority HIGH, {s.delayed} delayed {delay_s:g} s",
    )
    table.add_row("wall time", f"{s.wall_s:.2f} s", "")
    table.add_row("throughput", f"{s.tasks / s.wall_s:.0f} tasks/s", "")
    table.add_row(
        "report",
        f"{s.report.thumbnails} thumbnails",
        f"{s.report.source_mb} MB of images -> {s.report.thumbs_mb} MB of thumbnails",
    )
    console.print(table)
    url = s.url
    console.print("\nLook at what the run left behind:")
    commands = [
        f"status --url {url}",
        f"tasks list --url {url} --name fetch",
        f"dead-letters --url {url}",
    ]
    for task_id in s.dead_ids[:1]:
        commands += [f"tasks show {task_id} --url {url}", f"replay {task_id} --url {url}"]
    for command in commands:
        console.print(f"  {prog} {command}", highlight=False, soft_wrap=True, markup=False)


def command_name(argv0: str) -> str:
    """How to run `flowmill` again the way it was run now (`make demo` uses .venv/bin)."""
    if os.path.basename(argv0) == "flowmill":
        found = shutil.which("flowmill")
        if found is not None and os.path.realpath(found) == os.path.realpath(argv0):
            return "flowmill"
        rel = os.path.relpath(argv0)
        return argv0 if rel.startswith("..") else rel
    if argv0.endswith("__main__.py"):
        return "python -m flowmill"
    return "flowmill"
