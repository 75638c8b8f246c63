"""Prometheus metrics: store-derived gauges, and a worker's counters and histograms.

Two sources, kept apart:
- **Store gauges** (`render_gauges`), read from the store on each scrape, so they are right
  with zero workers running: `flowmill_tasks{queue,state}`,
  `flowmill_queue_oldest_ready_seconds{queue}`, `flowmill_queue_paused{queue}`,
  `flowmill_workers_alive`, `flowmill_dead_letters`. Plain exposition text: no dependency.
  `/metrics` of `flowmill serve` and `flowmill metrics --url URL` print them.
- **Worker metrics** (`WorkerMetrics`, needs `prometheus-client`: `pip install
  'flowmill[metrics]'`): what one worker process did. Runs by kind and outcome, attempt
  duration, claim-to-start latency, lease expiries and renewal failures, timeouts by
  cooperation class, and one histogram series per store operation, fed by the StoreFront's
  telemetry events. `flowmill worker --metrics-port 9464` serves them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._observe import outcome_label
from ._states import State
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._operate import MetricsSnapshot
    from .store._front import StoreEvent
    from .store.contract.tasks import ClaimedRow, Finish
    from .worker import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; attempts range from sub-millisecond no-ops to long jobs.
ATTEMPT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render_gauges(snap: MetricsSnapshot) -> str:
    """The store-derived gauges in Prometheus text format. Every state of every listed queue
    is exported (0 included), so a count that drops to nothing reads 0, not "absent"."""
    lines: list[str] = []

    def family(name: str, help_: str, samples: Iterator[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {value}")

    family(
        "flowmill_tasks",
        "Tasks in the store by queue and state.",
        (
            ({"queue": q.name, "state": s.value}, q.counts.get(s, 0))
            for q in snap.queues
            for s in State
        ),
    )
    family(
        "flowmill_queue_oldest_ready_seconds",
        "How long the oldest ready task of the queue has waited (0 with none ready).",
        (
            ({"queue": q.name}, q.oldest_ready_age.total_seconds() if q.oldest_ready_age else 0.0)
            for q in snap.queues
        ),
    )
    family(
        "flowmill_queue_paused",
        "1 while the queue is paused (its tasks are not claimed).",
        (({"queue": q.name}, int(q.paused)) for q in snap.queues),
    )
    family(
        "flowmill_workers_alive",
        "Workers whose last heartbeat is recent.",
        iter([({}, snap.workers_alive)]),
    )
    family(
        "flowmill_dead_letters",
        "Tasks in the dead-letter queue (retries ran out).",
        iter([({}, snap.dead_letters)]),
    )
    return "\n".join(lines) + "\n"


def subscribe(worker: Worker, callback: Callable[[StoreEvent], None]) -> Callable[[], None]:
    """Subscribe `callback` to the worker's store door; returns the unsubscriber."""
    from .store._front import StoreFront

    store = worker.app.store
    if not isinstance(store, StoreFront):  # a Runtime fake in tests: nothing to hear
        return lambda: None
    return store.subscribe(callback)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            f"worker metrics need prometheus-client: pip install 'flowmill[metrics]' ({exc})"
        ) from exc
    return prometheus_client


class _Histogram:
    """Bucket counts and a sum, kept without a lock: only the worker's event loop writes,
    and a scrape copies the list (one C call under the GIL)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family_samples(self) -> tuple[list[tuple[str, float]], float]:
        counts = list(self.counts)
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return cumulative, self.total


class WorkerMetrics:
    """A worker's Prometheus metrics, in a registry of their own (no global state).

    `WorkerMetrics(worker)` hooks the worker (an attempt observer) and its app's StoreFront
    (a telemetry subscriber); `close()` unhooks both. `serve(port)` exposes the registry on
    `http://host:port/metrics`; `text()` renders it.

    The hot path counts in plain dicts (no lock, no prometheus-client call per attempt);
    a collector turns them into metric families when scraped."""

    def __init__(self, worker: Worker) -> None:
        pc = _prometheus()
        self.worker = worker
        self.registry = pc.CollectorRegistry(auto_describe=False)
        self.runs: dict[tuple[str, str], int] = {}
        self.duration: dict[str, _Histogram] = {}
        self.claim_to_start: dict[str, _Histogram] = {}
        self.store_ops: dict[tuple[str, str], _Histogram] = {}
        self.registry.register(_Collector(self))
        self._server: Any = None
        worker.observers.append(self)
        self._unsubscribe = subscribe(worker, self.on_store_event)

    def close(self) -> None:
        """Unhook from the worker and the store; stop the HTTP server if one runs."""
        self._unsubscribe()
        if self in self.worker.observers:
            self.worker.observers.remove(self)
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None

    # -- the attempt observer ----------------------------------------------------------

    async def started(self, row: ClaimedRow, waited_s: float) -> object:
        hist = self.claim_to_start.get(row.kind)
        if hist is None:
            hist = self.claim_to_start[row.kind] = _Histogram(STORE_BUCKETS)
        hist.observe(waited_s)
        return None

    def ended(self, row: ClaimedRow, state: object, finish: Finish | None, took_s: float) -> None:
        key = (row.kind, outcome_label(finish))
        self.runs[key] = self.runs.get(key, 0) + 1
        hist = self.duration.get(row.kind)
        if hist is None:
            hist = self.duration[row.kind] = _Histogram(ATTEMPT_BUCKETS)
        hist.observe(took_s)

    # -- the store subscriber ----------------------------------------------------------

    def on_store_event(self, event: StoreEvent) -> None:
        key = (event.operation, event.outcome)
        hist = self.store_ops.get(key)
        if hist is None:
            hist = self.store_ops[key] = _Histogram(STORE_BUCKETS)
        hist.observe(event.duration_s)

    # -- exposition --------------------------------------------------------------------

    def text(self) -> str:
        return bytes(_prometheus().generate_latest(self.registry)).decode()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve `/metrics` on `host:port` from a daemon thread; returns the bound port."""
        server, thread = _prometheus().start_http_server(port, addr=host, registry=self.registry)
        self._server = (server, thread)
        return int(server.server_port)


class _Collector:
    """The worker's numbers as metric families, built at scrape time: the counts of
    `WorkerMetrics` and those the worker keeps anyway (`WorkerStats`, `RunnerStats`)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def _histograms(
        self, name: str, help_: str, labels: list[str], hists: dict[Any, _Histogram]
    ) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(name, help_, labels=labels)
        for key, hist in list(hists.items()):
            buckets, total = hist.family_samples()
            values = list(key) if isinstance(key, tuple) else [key]
            family.add_metric(values, buckets, total)
        return family

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        runs = CounterMetricFamily(
            "flowmill_task_runs",
            "Attempts run by this worker, by task kind and outcome.",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), n in list(m.runs.items()):
            runs.add_metric([kind, outcome], n)
        yield runs
        yield self._histograms(
            "flowmill_attempt_duration_seconds",
            "How long attempts ran, by task kind.",
            ["kind"],
            m.duration,
        )
        yield self._histograms(
            "flowmill_claim_to_start_seconds",
            "Time from a task's claim to the start of its attempt (local queueing).",
            ["kind"],
            m.claim_to_start,
        )
        yield self._histograms(
            "flowmill_store_operation_seconds",
            "Store operations through the StoreFront, by operation and outcome.",
            ["operation", "outcome"],
            m.store_ops,
        )
        stats, runner = m.worker.stats, m.worker.runner.stats
        yield CounterMetricFamily(
            "flowmill_lease_expiries",
            "Expired leases this worker's maintenance reclaimed.",
            value=stats.reaped,
        )
        yield CounterMetricFamily(
            "flowmill_lease_renewal_failures",
            "Lease renewals that failed (store unreachable) while the lease was still held.",
            value=stats.unhealthy,
        )
        yield CounterMetricFamily(
            "flowmill_leases_lost",
            "Attempts whose lease was lost (renewal refused or a stale fence on a write).",
            value=stats.lease_lost,
        )
        timeouts = CounterMetricFamily(
            "flowmill_timeouts",
            "Attempts stopped by their timeout, by how the handler cooperated.",
            labels=["cooperation"],
        )
        for cls, n in runner.timeouts.items():
            timeouts.add_metric([cls.value], n)
        yield timeouts
        yield GaugeMetricFamily(
            "flowmill_worker_in_flight",
            "Attempts this worker holds now.",
            value=m.worker.in_flight,
        )


def instrument(
    worker: Worker, *, port: int | None = None, host: str = "127.0.0.1"
) -> WorkerMetrics:
    """Hook Prometheus metrics into `worker`; with `port`, serve them there too."""
    metrics = WorkerMetrics(worker)
    if port is not None:
        metrics.serve(port, host)
    return metrics


__all__ = ["CONTENT_TYPE", "WorkerMetrics", "instrument", "render_gauges"]
