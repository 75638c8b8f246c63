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

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._states import State
from .errors import ConfigurationError
from .worker._observe import outcome_label

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


class WorkerMetrics:
    """A worker's Prometheus metrics, in a registry of their own (no global state).

    `WorkerMetrics(worker)` hooks the worker (an attempt observer) and its app's StoreFront
    (a telemetry subscriber); `close()` unhooks both. `serve(port)` exposes the registry on
    `http://host:port/metrics`; `text()` renders it."""

    def __init__(self, worker: Worker) -> None:
        pc = _prometheus()
        self.worker = worker
        self.registry = pc.CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.runs = pc.Counter(
            "flowmill_task_runs",
            "Attempts run by this worker, by task kind and outcome.",
            ["kind", "outcome"],
            registry=reg,
        )
        self.duration = pc.Histogram(
            "flowmill_attempt_duration_seconds",
            "How long attempts ran, by task kind.",
            ["kind"],
            buckets=ATTEMPT_BUCKETS,
            registry=reg,
        )
        self.claim_to_start = pc.Histogram(
            "flowmill_claim_to_start_seconds",
            "Time from a task's claim to the start of its attempt (local queueing).",
            ["kind"],
            buckets=STORE_BUCKETS,
            registry=reg,
        )
        self.store_ops = pc.Histogram(
            "flowmill_store_operation_seconds",
            "Store operations through the StoreFront, by operation and outcome.",
            ["operation", "outcome"],
            buckets=STORE_BUCKETS,
            registry=reg,
        )
        reg.register(_StatsCollector(worker, pc))
        self._children: dict[tuple[str, ...], Any] = {}
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

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)  # cached: .labels() takes a lock and builds a tuple
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- the attempt observer ----------------------------------------------------------

    async def started(self, row: ClaimedRow, waited_s: float) -> object:
        self._child(self.claim_to_start, row.kind).observe(waited_s)
        return None

    def ended(self, row: ClaimedRow, state: object, finish: Finish | None, took_s: float) -> None:
        self._child(self.runs, row.kind, outcome_label(finish)).inc()
        self._child(self.duration, row.kind).observe(took_s)

    # -- the store subscriber ----------------------------------------------------------

    def on_store_event(self, event: StoreEvent) -> None:
        self._child(self.store_ops, event.operation, event.outcome).observe(event.duration_s)

    # -- exposition --------------------------------------------------------------------

    def text(self) -> str:
        return bytes(_prometheus().generate_latest(self.registry)).decode()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve `/metrics` on `host:port` from a daemon thread; returns the bound port."""
        server, thread = _prometheus().start_http_server(port, addr=host, registry=self.registry)
        self._server = (server, thread)
        return int(server.server_port)


class _StatsCollector:
    """Counters the worker already keeps (`WorkerStats`, `RunnerStats`), read on scrape."""

    def __init__(self, worker: Worker, pc: Any) -> None:
        self.worker = worker
        self.pc = pc

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client import core

        stats, runner = self.worker.stats, self.worker.runner.stats
        yield core.CounterMetricFamily(
            "flowmill_lease_expiries",
            "Expired leases this worker's maintenance reclaimed.",
            value=stats.reaped,
        )
        yield core.CounterMetricFamily(
            "flowmill_lease_renewal_failures",
            "Lease renewals that failed (store unreachable) while the lease was still held.",
            value=stats.unhealthy,
        )
        yield core.CounterMetricFamily(
            "flowmill_leases_lost",
            "Attempts whose lease was lost (renewal refused or a stale fence on a write).",
            value=stats.lease_lost,
        )
        timeouts = core.CounterMetricFamily(
            "flowmill_timeouts",
            "Attempts stopped by their timeout, by how the handler cooperated.",
            labels=["cooperation"],
        )
        for cls, n in runner.timeouts.items():
            timeouts.add_metric([cls.value], n)
        yield timeouts
        yield core.GaugeMetricFamily(
            "flowmill_worker_in_flight",
            "Attempts this worker holds now.",
            value=self.worker.in_flight,
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
