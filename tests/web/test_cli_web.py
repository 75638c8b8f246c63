"""`flowmill serve` with a URL alone (the login URL printed once, the token working) and
`flowmill metrics --url URL`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flowmill as fm
from flowmill.cli import cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


async def test_flowmill_metrics_prints_the_store_gauges(db_url: str) -> None:
    app = fm.App(db_url)

    @app.task(name="job")
    async def job(n: int) -> None:
        return None

    await app.submit(job, 1, queue="mail")
    await app.close()
    done = await asyncio.to_thread(CliRunner().invoke, cli, ["metrics", "--url", db_url])
    assert done.exit_code == 0, done.output
    assert 'flowmill_tasks{queue="mail",state="ready"} 1' in done.output
    assert "flowmill_workers_alive 0" in done.output


def test_flowmill_metrics_refuses_a_missing_store(tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["metrics", "--url", f"sqlite:///{tmp_path}/none.db"])
    assert done.exit_code != 0
    assert not (tmp_path / "none.db").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_with_a_url_alone_prints_the_login_url_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLOWMILL_TOKEN"}
    with subprocess.Popen(
        [sys.executable, "-c", "from flowmill.cli import main; main()", "serve", "--url", url,
         "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        try:
            first = proc.stdout.readline().strip()
            prefix = f"flowmill dashboard: http://127.0.0.1:{port}/?token="
            assert first.startswith(prefix), first
            login = first.removeprefix("flowmill dashboard: ")
            with httpx.Client() as http:
                for _ in range(600):  # until uvicorn listens (a process of its own)
                    try:
                        http.get(f"http://127.0.0.1:{port}/healthz")
                        break
                    except httpx.ConnectError:
                        assert proc.poll() is None, proc.stdout.read()
                        with socket.socket() as probe:
                            probe.settimeout(0.1)
                            probe.connect_ex(("127.0.0.1", port))
                assert http.get(f"http://127.0.0.1:{port}/api/overview").status_code == 401
                page = http.get(login, follow_redirects=True)
                assert page.status_code == 200 and "app.js" in page.text
                assert http.get(f"http://127.0.0.1:{port}/api/overview").status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        rest = proc.stdout.read()
    secret = login.rsplit("token=", 1)[1]
    assert secret not in rest  # printed once; the access log hides it
    assert "token=…" in rest
