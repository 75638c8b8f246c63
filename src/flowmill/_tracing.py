"""OpenTelemetry tracing and task-aware log records (`pip install 'flowmill[otel]'`).

- At submit, the current trace context (W3C `traceparent`) is stored with the task in its
  tags (`TRACE_TAG`), when the submitting code runs inside a recording span. The check is
  free for programs that never imported OpenTelemetry.
- `instrument(worker)` gives each attempt a span (`flowmill.attempt <kind>`) whose parent is
  the submit's context read back from the task's tags, so a trace crosses processes; every
  store operation the worker makes becomes a span too (from the StoreFront's events), a
  child of the attempt's span when the attempt made it.
- `LogContext` (installed by `instrument`, usable alone) puts `task_id`, `kind` and
  `attempt` on every log record made inside an attempt (None outside one).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._observe import outcome_label
from ._trace_context import TRACE_TAG, inject_trace_context
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .store._front import StoreEvent
    from .store.contract.tasks import ClaimedRow, Finish
    from .worker import Worker

_FAILED = frozenset({"failed", "dead_lettered", "expired"})


@dataclass(frozen=True, slots=True)
class AttemptRef:
    task_id: str
    kind: str
    attempt: int


class LogContext:
    """Puts `task_id`, `kind`, `attempt` on log records made inside an attempt.

    It wraps the process's log record factory once (`install`), reading a context
    variable the attempt observer sets; `uninstall` puts the previous factory back."""

    def __init__(self) -> None:
        self.current: contextvars.ContextVar[AttemptRef | None] = contextvars.ContextVar(
            "flowmill_attempt", default=None
        )
        self._previous: Callable[..., logging.LogRecord] | None = None

    def install(self) -> None:
        if self._previous is not None:
            return
        previous = logging.getLogRecordFactory()
        current = self.current

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            ref = current.get()
            record.task_id = ref.task_id if ref else None
            record.kind = ref.kind if ref else None
            record.attempt = ref.attempt if ref else None
            return record

        self._previous = previous
        logging.setLogRecordFactory(factory)

    def uninstall(self) -> None:
        if self._previous is not None:
            logging.setLogRecordFactory(self._previous)
            self._previous = None

    async def started(self, row: ClaimedRow, waited_s: float) -> object:
        return self.current.set(AttemptRef(row.id, row.kind, row.attempt))

    def ended(self, row: ClaimedRow, state: object, finish: Finish | None, took_s: float) -> None:
        assert isinstance(state, contextvars.Token)
        self.current.reset(state)


def _otel() -> Any:
    try:
        from opentelemetry import context, propagate, trace
    except ImportError as exc:
        raise ConfigurationError(
            f"tracing needs OpenTelemetry: pip install 'flowmill[otel]' ({exc})"
        ) from exc
    return context, propagate, trace


class Tracing:
    """Spans for a worker's attempts and store operations (see the module docstring)."""

    def __init__(self, worker: Worker, tracer_provider: Any = None) -> None:
        from ._metrics import subscribe

        self.context, self.propagate, trace = _otel()
        self.trace = trace
        self.tracer = trace.get_tracer("flowmill", tracer_provider=tracer_provider)
        self.worker = worker
        self.logs = LogContext()
        self.logs.install()
        worker.observers.extend([self, self.logs])
        self._unsubscribe = subscribe(worker, self.on_store_event)

    def close(self) -> None:
        self._unsubscribe()
        for o in (self, self.logs):
            if o in self.worker.observers:
                self.worker.observers.remove(o)
        self.logs.uninstall()

    async def started(self, row: ClaimedRow, waited_s: float) -> object:
        rec = await self.worker.app.store.task_get(row.id)
        tags = rec.tags if rec is not None else {}
        parent = self.propagate.extract({TRACE_TAG: tags[TRACE_TAG]} if TRACE_TAG in tags else {})
        span = self.tracer.start_span(
            f"flowmill.attempt {row.kind}",
            context=parent,
            kind=self.trace.SpanKind.CONSUMER,
            attributes={
                "flowmill.task_id": row.id,
                "flowmill.kind": row.kind,
                "flowmill.queue": row.queue,
                "flowmill.attempt": row.attempt,
                "flowmill.phase": row.phase.value,
                "flowmill.claim_to_start_s": waited_s,
            },
        )
        token = self.context.attach(self.trace.set_span_in_context(span))
        return span, token

    def ended(self, row: ClaimedRow, state: object, finish: Finish | None, took_s: float) -> None:
        span: Any
        token: Any
        span, token = state  # type: ignore[misc]
        outcome = outcome_label(finish)
        span.set_attribute("flowmill.outcome", outcome)
        if outcome in _FAILED and finish is not None and finish.error is not None:
            span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, finish.error.message))
        span.end()
        self.context.detach(token)

    def on_store_event(self, event: StoreEvent) -> None:
        end = time.time_ns()
        span = self.tracer.start_span(
            f"flowmill.store {event.operation}",
            start_time=end - int(event.duration_s * 1e9),
            attributes={"flowmill.operation": event.operation, "flowmill.outcome": event.outcome},
        )
        if event.error_type is not None:
            span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, event.error_type))
        span.end(end_time=end)


def instrument(worker: Worker, tracer_provider: Any = None) -> Tracing:
    """Trace `worker`'s attempts and store operations, and tag its log records."""
    return Tracing(worker, tracer_provider)


__all__ = ["TRACE_TAG", "LogContext", "Tracing", "inject_trace_context", "instrument"]
