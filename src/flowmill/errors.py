"""Every exception flowmill raises, in three groups: errors callers catch, signals
handlers raise, lease and store errors. All derive from `FlowmillError`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AppLoadError",
    "Cancelled",
    "ConfigurationError",
    "DuplicateTask",
    "Fail",
    "FlowmillError",
    "FrameTooLarge",
    "IllegalTransition",
    "InvalidParent",
    "InvalidUsage",
    "InvalidWorkflow",
    "LeaseLost",
    "PayloadError",
    "PayloadTooLarge",
    "RetryCapExceeded",
    "RetryLater",
    "SchemaError",
    "StoreError",
    "StoreUnavailable",
    "TaskAlreadyFinished",
    "TaskFailed",
    "TaskNotFound",
    "TaskTimeout",
    "UnknownBudget",
    "UnknownTask",
    "UpstreamFailed",
    "WorkflowFailed",
    "WorkflowNotFound",
]


class FlowmillError(Exception):
    """Base class of every error flowmill raises: catch it to catch them all."""


# -- errors callers catch -------------------------------------------------------------
# Raised to the code that defines tasks, submits them and waits for their results: a bad
# option, an unknown name, a payload that does not fit, a task or run that did not succeed.


class ConfigurationError(FlowmillError, ValueError):
    """Raised when a task definition, app option, submit option or URL is invalid."""


class InvalidWorkflow(ConfigurationError):
    """Raised by `wf.submit()` when a workflow is not a valid DAG.

    A cycle, a missing or duplicate node, a self-dependency.

    Raised before anything is stored; `problems` lists every one found."""

    def __init__(self, workflow: str, problems: list[str]) -> None:
        super().__init__(f"workflow {workflow!r} is invalid: " + "; ".join(problems))
        self.workflow = workflow
        self.problems = problems


class UnknownTask(FlowmillError, LookupError):
    """Raised when a task (or task name) is not registered on this app."""


class TaskNotFound(FlowmillError, LookupError):
    """Raised when no task with that id exists (`app.get`, `app.cancel`...)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")
        self.task_id = task_id


class WorkflowNotFound(FlowmillError, LookupError):
    """Raised by `app.workflow_run` when no workflow run with that id exists."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no workflow run with id {run_id!r}")
        self.run_id = run_id


class UnknownBudget(FlowmillError, LookupError):
    """Raised when a budget is named that has not been defined (`app.define_budget` first)."""

    def __init__(self, budget_id: str) -> None:
        super().__init__(
            f"no budget with id {budget_id!r}: define it first with app.define_budget(...)"
        )
        self.budget_id = budget_id


class InvalidUsage(FlowmillError, ValueError):
    """Raised when a usage report is malformed.

    A negative or non-integer amount, or no dimension at all."""


class DuplicateTask(FlowmillError):
    """Raised by a submit with `on_duplicate="reject"` when a task with the same key is active."""

    def __init__(self, key: str, existing_id: str) -> None:
        super().__init__(f"a task with key {key!r} is already active: {existing_id}")
        self.key = key
        self.existing_id = existing_id


class InvalidParent(FlowmillError):
    """Raised when a child is submitted to a parent that does not exist or has already ended."""

    def __init__(self, parent_id: str, state: str | None) -> None:
        what = "does not exist" if state is None else f"has already ended ({state})"
        super().__init__(f"cannot add a child to task {parent_id}: it {what}")
        self.parent_id = parent_id
        self.state = state


class PayloadError(FlowmillError, ValueError):
    """Raised when a payload or result cannot be encoded or decoded for its declared type."""


class PayloadTooLarge(PayloadError):
    """Raised when an encoded payload or result is larger than the configured limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class FrameTooLarge(PayloadTooLarge):
    """Raised by `ctx.append_frame` when a frame is larger than the 64 KiB a frame may hold."""


class RetryCapExceeded(FlowmillError):
    """Raised by `decide_retry` when asked about an attempt beyond max_attempts: never run it."""


class TaskFailed(FlowmillError):
    """Raised by `handle.result()` when the task ended without a result.

    It failed, was dead-lettered, cancelled, expired...; `state` and `category` say which."""

    def __init__(
        self,
        task_id: str,
        state: str,
        error_type: str | None,
        message: str | None,
        traceback: str | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(f"task {task_id} ended {state}: {error_type or ''}: {message or ''}")
        self.task_id = task_id
        self.state = state
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        self.category = category


class TaskTimeout(FlowmillError, TimeoutError):
    """Raised by `handle.result(timeout=...)` when the result took longer than allowed."""


class WorkflowFailed(FlowmillError):
    """Raised by `run.result()` when a run ended with nodes that did not complete.

    `failed` maps each such node to why."""

    def __init__(self, run_id: str, name: str, failed: dict[str, str], skipped: list[str]) -> None:
        first = ", ".join(f"node {n!r} {why}" for n, why in list(failed.items())[:3])
        more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
        skip = f"; {len(skipped)} node(s) skipped" if skipped else ""
        super().__init__(f"workflow {name!r} (run {run_id}) failed: {first}{more}{skip}")
        self.run_id = run_id
        self.name = name
        self.failed = failed
        self.skipped = skipped


class UpstreamFailed(FlowmillError):
    """Raised by `up[node]` when that upstream node did not complete."""

    def __init__(self, node: str, state: str, message: str | None = None) -> None:
        detail = f": {message}" if message else ""
        super().__init__(f"upstream {node!r} ended {state}{detail}")
        self.node = node
        self.state = state
        self.message = message


class AppLoadError(ConfigurationError):
    """Raised by `flowmill worker` and the CLI when a `module:attribute` app path cannot be
    imported or does not name an App."""


# -- signals handlers raise -----------------------------------------------------------
# Raised inside a handler to tell the worker how the attempt ends: stop, retry later, or
# fail for good. (`ctx.suspend` ends an attempt with `Suspended`, a BaseException kept in
# `flowmill._stops` so that `except Exception` in a handler cannot swallow it.)


class Cancelled(FlowmillError):
    """Raised by `ctx.check_cancelled()` once the attempt has been asked to stop.

    A handler may raise it too."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(FlowmillError):
    """Raised by a handler to be retried later; the attempt counts toward max_attempts."""

    def __init__(self, delay: Any = None, message: str = "retry requested") -> None:
        super().__init__(message)
        self.delay = delay
        self.message = message


class Fail(FlowmillError):
    """Raised by a handler to fail the task at once, without retrying."""

    def __init__(self, message: str, category: str = "non_retryable") -> None:
        super().__init__(message)
        self.message = message
        self.category = category


# -- lease and store errors ----------------------------------------------------------
# Raised by the store and the leases under it: a fenced-out lease, an operation the state
# machine refuses, a store that cannot be opened or reached.


class LeaseLost(FlowmillError):
    """Raised when the worker's lease on a task is stale: another claim has fenced it out."""

    def __init__(self, task_id: str, epoch: int) -> None:
        super().__init__(f"lease on task {task_id} at epoch {epoch} is no longer held")
        self.task_id = task_id
        self.epoch = epoch


class TaskAlreadyFinished(FlowmillError):
    """Raised when a terminal operation is called a second time on the same claimed attempt."""


class IllegalTransition(FlowmillError):
    """Raised when a state change that the state machine does not allow is attempted."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(f"illegal transition {source} -> {target}")
        self.source = source
        self.target = target


class StoreError(FlowmillError):
    """Raised when the store cannot be opened or an operation on it fails."""


class SchemaError(StoreError):
    """Raised on open when the database is not flowmill's, or its schema is newer than this code."""


class StoreUnavailable(StoreError):
    """Raised when the store cannot be reached right now (connection refused, lost, timed out)."""
