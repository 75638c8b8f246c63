"""Worker metrics (prometheus-client) and tracing (OpenTelemetry) on every backend: what a
worker run leaves in the registry, the `/metrics` port, and spans whose parent is the
submit's span; log records inside an attempt carry task_id, kind and attempt."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

import flowmill as fm
from flowmill._metrics import instrument
from flowmill._tracing import TRACE_TAG
from flowmill._tracing import instrument as trace_worker

pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")


def register(app: fm.App) -> None:
    @app.task(name="job", retry=fm.Retry(max_attempts=1))
    async def job(n: int) -> int:
        if n < 0:
            raise fm.Fail("negative")
        logging.getLogger("tests.job").warning("working on %d", n)
        return n

    @app.task(name="sleepy", timeout=timedelta(milliseconds=50), retry=fm.Retry(max_attempts=1))
    async def sleepy(n: int) -> None:
        await asyncio.sleep(30)  # ignores its stop request: cancelled after the grace


def sample(text: str, prefix: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix + " ")]
    return float(line.rsplit(" ", 1)[1])


async def test_worker_metrics_count_runs_durations_timeouts_and_store_ops(db_url: str) -> None:
    app = fm.App(db_url)
    register(app)
    try:
        for n in (1, 2, -1):
            await app.submit("job", n)
        await app.submit("sleepy", 0)
        worker = app.worker(concurrency=4, cancel_grace=timedelta(milliseconds=20))
        metrics = instrument(worker, port=0)
        port = metrics._server[0].server_port
        await worker.run(stop_when_idle=True)
        text = metrics.text()
        assert sample(text, 'flowmill_task_runs_total{kind="job",outcome="completed"}') == 2
        assert sample(text, 'flowmill_task_runs_total{kind="job",outcome="failed"}') == 1
        assert sample(text, 'flowmill_task_runs_total{kind="sleepy",outcome="dead_lettered"}') == 1
        assert sample(text, 'flowmill_attempt_duration_seconds_count{kind="job"}') == 3
        assert sample(text, 'flowmill_claim_to_start_seconds_count{kind="job"}') == 3
        assert sample(text, 'flowmill_timeouts_total{cooperation="late"}') == 1
        assert sample(text, 'flowmill_timeouts_total{cooperation="cooperative"}') == 0
        assert sample(text, "flowmill_lease_expiries_total") == 0
        assert sample(text, "flowmill_lease_renewal_failures_total") == 0
        claims = 'flowmill_store_operation_seconds_count{operation="tasks_claim",outcome="ok"}'
        assert sample(text, claims) >= 1
        finishes = 'flowmill_store_operation_seconds_count{operation="tasks_finish",outcome="ok"}'
        assert sample(text, finishes) >= 1
        async with httpx.AsyncClient() as http:
            served = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'flowmill_task_runs_total{kind="job",outcome="completed"} 2.0' in served
        metrics.close()
        assert worker.observers == []
        before = sample(metrics.text(), claims)
        await app.store.tasks_count()
        await app.submit("job", 3)
        await app.worker().run(stop_when_idle=True)
        assert sample(metrics.text(), claims) == before  # unhooked: nothing more counted
    finally:
        await app.close()


async def test_attempt_spans_are_children_of_the_submit_span(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    app = fm.App(db_url)
    register(app)
    try:
        with tracer.start_as_current_span("request") as request_span:
            handle = await app.submit("job", 7)
        untraced = await app.submit("job", 8)
        assert TRACE_TAG in (await app.get(handle.id)).tags
        assert TRACE_TAG not in (await app.get(untraced.id)).tags
        worker = app.worker(concurrency=1)
        tracing = trace_worker(worker, tracer_provider=provider)
        with caplog.at_level(logging.WARNING, logger="tests.job"):
            await worker.run(stop_when_idle=True)
        tracing.close()
    finally:
        await app.close()
        provider.shutdown()
    spans = exporter.get_finished_spans()
    attempts = {
        s.attributes["flowmill.task_id"]: s for s in spans if s.name == "flowmill.attempt job"
    }
    traced = attempts[handle.id]
    parent = request_span.get_span_context()
    assert traced.parent is not None and traced.parent.span_id == parent.span_id
    assert traced.context.trace_id == parent.trace_id
    assert traced.attributes["flowmill.outcome"] == "completed"
    assert attempts[untraced.id].parent is None
    assert any(s.name == "flowmill.store tasks_claim" for s in spans)
    records = [r for r in caplog.records if r.name == "tests.job"]
    assert {(r.task_id, r.kind, r.attempt) for r in records} == {  # type: ignore[attr-defined]
        (handle.id, "job", 1),
        (untraced.id, "job", 1),
    }
    outside = logging.getLogger("tests.job").makeRecord("x", logging.INFO, "f", 1, "m", (), None)
    assert not hasattr(outside, "task_id")  # the factory is uninstalled by close()


async def test_a_failing_observer_costs_no_attempt(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def __init__(self, where: str) -> None:
            self.where = where
            self.ended_calls = 0

        async def started(self, row: object, waited_s: float) -> object:
            if self.where == "start":
                raise RuntimeError("observer broke at the start")
            return None

        def ended(self, row: object, state: object, finish: object, took_s: float) -> None:
            self.ended_calls += 1
            if self.where == "end":
                raise RuntimeError("observer broke at the end")

    app = fm.App(db_url)
    register(app)
    try:
        handles = [await app.submit("job", n) for n in (1, 2)]
        worker = app.worker(concurrency=1)
        at_start, at_end = Broken("start"), Broken("end")
        worker.observers.extend([at_start, at_end])
        with caplog.at_level(logging.ERROR, logger="flowmill.worker"):
            await worker.run(stop_when_idle=True)
        assert [(await app.get(h.id)).state for h in handles] == [fm.State.COMPLETED] * 2
        assert (at_start.ended_calls, at_end.ended_calls) == (0, 2)
        assert sum("observer failed" in r.getMessage() for r in caplog.records) == 4
    finally:
        await app.close()
