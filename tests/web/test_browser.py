"""The dashboard in headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): log in, watch counts move as a worker runs, open a task and watch its frames
arrive, replay a dead letter, pause a queue. Screenshots of each page go to a temporary
folder, or to docs/img/ with FLOWMILL_SCREENSHOTS=1 (how the docs' pictures are made).

Skipped when chromium is absent, except in CI, where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import flowmill as fm
from flowmill.web import dashboard_app

from ..conftest import eventually

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "browser-test-token"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_S = 30


def _need_chromium() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(DRIVER):
        return
    message = (
        f"the headless Chromium test needs {CHROMIUM} and chromedriver "
        "(apt-get install chromium chromium-driver)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def served(url: str) -> Iterator[str]:
    """`dashboard_app` of an App of its own on `url`, by uvicorn in a thread of its own."""
    app = fm.App(url)
    web = dashboard_app(app, token=TOKEN)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fm-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """Blocking selenium calls, run off the event loop so the worker keeps running."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots

    async def call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)

    async def go(self, path: str) -> None:
        await self.call(lambda: self.driver.get(self.base + path))

    async def until(self, what: str, check: Callable[[Any], Any]) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        def wait() -> Any:
            try:
                return WebDriverWait(self.driver, WAIT_S, poll_frequency=0.1).until(check)
            except Exception as exc:
                raise AssertionError(f"the page never showed {what}: {exc!r}") from None

        return await self.call(wait)

    async def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        return str(await self.call(lambda: self.driver.find_element(By.CSS_SELECTOR, css).text))

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        await self.call(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def shot(self, name: str) -> None:
        await self.call(lambda: self.driver.save_screenshot(str(self.shots / f"{name}.png")))


def shows(css: str, expected: str) -> Callable[[Any], bool]:
    from selenium.webdriver.common.by import By

    def check(driver: Any) -> bool:
        try:
            return str(driver.find_element(By.CSS_SELECTOR, css).text).strip() == expected
        except Exception:
            return False

    return check


def present(css: str) -> Callable[[Any], Any]:
    from selenium.webdriver.common.by import By

    def check(driver: Any) -> Any:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else False

    return check


async def test_the_dashboard_in_chromium(db_url: str, tmp_path: Path) -> None:
    _need_chromium()
    shots = DOCS_IMG if os.environ.get("FLOWMILL_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    app = fm.App(db_url)
    gate = asyncio.Event()
    talk = asyncio.Event()

    @app.task(name="resize")
    async def resize(n: int, ctx: fm.Context) -> int:
        await ctx.progress(50, "halfway")
        await gate.wait()
        return n

    @app.task(name="talker")
    async def talker(n: int, ctx: fm.Context) -> str:
        await ctx.append_frame("log", b"first line")
        await ctx.create_waitpoint("approval", timedelta(hours=1))  # listed on its page
        await talk.wait()
        await ctx.append_frame("log", b"second line")
        return "done"

    @app.task(name="flaky", queue="mail", retry=fm.Retry(max_attempts=1))
    async def flaky(n: int) -> None:
        raise RuntimeError("smtp said no")

    await app.open()
    for n in range(5):
        await app.submit(resize, n, tags={"batch": "b1"})
    dead = await app.submit(flaky, 1)
    wf = app.workflow("thumbnails")
    first = wf.add(resize, 100, name="fetch")
    wf.add(resize, 101, name="scale", after=[first])
    wf.add(resize, 102, name="store", after=[first])
    await wf.submit()

    worker = app.worker(concurrency=16, queues=["default", "mail"])
    running: asyncio.Task[None] | None = None
    try:
        with served(db_url) as base, chromium() as driver:
            page = Page(driver, base, shots)
            # Without the token: the login page, a 401.
            await page.go("/")
            await page.until("the login form", present("input[name=token]"))
            await page.go(f"/?token={TOKEN}")
            await page.until("the overview's ready count", shows("#count-ready", "7"))
            assert await page.text("#count-completed") == "0"

            # A worker starts: the counts move without a reload.
            running = asyncio.create_task(worker.run())
            await page.until("tasks running", shows("#count-running", "6"))
            await page.until("the dead letter", shows("#count-dead", "1"))
            await page.until("a live worker", shows("#workers-alive", "1"))
            await page.shot("dashboard-overview")
            gate.set()
            await page.until("the tasks completed", shows("#count-completed", "8"))

            # The task list, filtered by tag.
            await page.go("/#/tasks?tag=batch%3Db1")
            await page.until("the filtered list", present("#task-table tbody tr[data-id]"))
            rows = await page.call(
                lambda: driver.find_elements("css selector", "#task-table tbody tr[data-id]")
            )
            assert len(rows) == 5
            await page.shot("dashboard-tasks")

            # A task page: frames arrive over SSE as the attempt writes them.
            chatty = await app.submit(talker, 1)
            await page.go(f"/#/task/{chatty.id}")
            await page.until("the first frame", present("#frames .frame"))
            assert "first line" in await page.text("#frames")
            talk.set()
            await page.until(
                "the second frame",
                lambda d: "second line" in d.find_element("css selector", "#frames").text,
            )
            await page.until("the result", present("#result"))
            await page.until("its waitpoint", present("#waitpoints tr[data-state=pending]"))
            assert "approval" in await page.text("#waitpoints")
            facts = await page.text("dl.kv")
            assert "attempts\n1 of 3" in facts and "object" not in facts
            await page.shot("dashboard-task")

            # The workflow graph.
            await page.go("/#/workflows")
            await page.until("the run", present("a[href^='#/workflow/']"))
            await page.click("a[href^='#/workflow/']")
            await page.until("the graph", present("svg.graph a[data-node=scale]"))
            await page.shot("dashboard-workflow")

            # Dead letters: pause its queue first so the replayed task waits to be seen.
            await app.pause_queue("mail")
            await page.go("/#/dead")
            await page.until("the dead letter", present(f"tr[data-id='{dead.id}'] input.pick"))
            await page.shot("dashboard-dead-letters")
            await page.click(f"tr[data-id='{dead.id}'] input.pick")
            await page.click("#replay-selected")
            await page.until("the confirm dialog", present("dialog[open]"))
            await page.click("#confirm-ok")

            async def replayed() -> bool:
                return (await app.get(dead.id)).state is fm.State.READY

            await eventually(replayed, timeout=WAIT_S, what="the replayed dead letter")

            # Pause a queue from the overview.
            await page.go("/#/")
            await page.until("the queue row", present("tr[data-queue=default] button.pause"))
            await page.click("tr[data-queue=default] button.pause")
            await page.until("the confirm dialog", present("dialog[open]"))
            await page.click("#confirm-ok")
            await page.until("the paused flag", present("tr[data-queue=default] .paused"))
            assert [q.paused for q in await app.list_queues() if q.name == "default"] == [True]
    finally:
        gate.set()
        talk.set()
        worker.stop()
        if running is not None:
            await running
        await app.close()


async def test_the_page_says_when_the_store_is_down(tmp_path: Path) -> None:
    _need_chromium()
    down = f"sqlite:///{tmp_path}/no-such-folder/jobs.db"
    with served(down) as base, chromium() as driver:
        page = Page(driver, base, tmp_path)
        await page.go(f"/?token={TOKEN}")
        await page.until(
            "the banner",
            lambda d: "store unavailable" in d.find_element("css selector", "#banner").text,
        )
        assert "stale" in await page.text("#status") or "no data" in await page.text("#status")
        assert not await page.call(lambda: driver.find_elements("css selector", "#count-ready"))
