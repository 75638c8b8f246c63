"""Exception hierarchy: every error flowmill raises derives from `FlowmillError`."""

from __future__ import annotations

from typing import Any


class FlowmillError(Exception):
    """Base class of every error flowmill raises."""


class ConfigurationError(FlowmillError, ValueError):
    """A task definition, app option or URL is invalid."""


class StoreError(FlowmillError):
    """The store could not be opened or an operation on it failed."""


class SchemaError(StoreError):
    """The database is not a flowmill database, or its schema is newer than this code."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (connection refused, lost, timed out)."""


class IllegalTransition(FlowmillError):
    """A state change that the state machine does not allow was attempted."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(f"illegal transition {source} -> {target}")
        self.source = source
        self.target = target


class LeaseLost(FlowmillError):
    """The worker's lease on the task is stale: another claim has fenced it out."""

    def __init__(self, task_id: str, epoch: int) -> None:
        super().__init__(f"lease on task {task_id} at epoch {epoch} is no longer held")
        self.task_id = task_id
        self.epoch = epoch


class TaskAlreadyFinished(FlowmillError):
    """A terminal operation was called a second time on the same claimed attempt."""


class TaskNotFound(FlowmillError, LookupError):
    """No task with that id exists."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")
        self.task_id = task_id


class UnknownTask(FlowmillError, LookupError):
    """The task (or task name) is not registered on this app."""


class DuplicateTask(FlowmillError):
    """A task with the same dedup key is already active (on_duplicate="reject")."""

    def __init__(self, key: str, existing_id: str) -> None:
        super().__init__(f"a task with key {key!r} is already active: {existing_id}")
        self.key = key
        self.existing_id = existing_id


class PayloadError(FlowmillError, ValueError):
    """A payload or result could not be encoded or decoded for its declared type."""


class PayloadTooLarge(PayloadError):
    """An encoded payload or result is larger than the configured limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class RetryCapExceeded(FlowmillError):
    """A retry decision was asked for an attempt beyond max_attempts: never run it."""


class TaskFailed(FlowmillError):
    """The awaited task ended without a result (failed, dead-lettered, cancelled, expired...)."""

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
    """Waiting for a task's result took longer than the caller allowed."""


class Cancelled(FlowmillError):
    """Raised by `Context.check_cancelled()` when the attempt has been asked to stop."""

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


class InvalidParent(FlowmillError):
    """A child was submitted to a parent that does not exist or has already ended."""

    def __init__(self, parent_id: str, state: str | None) -> None:
        what = "does not exist" if state is None else f"has already ended ({state})"
        super().__init__(f"cannot add a child to task {parent_id}: it {what}")
        self.parent_id = parent_id
        self.state = state


class FrameTooLarge(PayloadTooLarge):
    """An output frame is larger than the 64 KiB a frame may hold."""


class InvalidWorkflow(ConfigurationError):
    """A workflow is not a valid DAG: a cycle, a missing or duplicate node, a self-dependency.

    Raised before anything is stored; `problems` lists every one found."""

    def __init__(self, workflow: str, problems: list[str]) -> None:
        super().__init__(f"workflow {workflow!r} is invalid: " + "; ".join(problems))
        self.workflow = workflow
        self.problems = problems


class UpstreamFailed(FlowmillError):
    """An upstream node's result was asked for, but that node did not complete."""

    def __init__(self, node: str, state: str, message: str | None = None) -> None:
        detail = f": {message}" if message else ""
        super().__init__(f"upstream {node!r} ended {state}{detail}")
        self.node = node
        self.state = state
        self.message = message


class WorkflowFailed(FlowmillError):
    """A workflow run ended with nodes that did not complete; `failed` maps each to why."""

    def __init__(self, run_id: str, name: str, failed: dict[str, str], skipped: list[str]) -> None:
        first = ", ".join(f"node {n!r} {why}" for n, why in list(failed.items())[:3])
        more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
        skip = f"; {len(skipped)} node(s) skipped" if skipped else ""
        super().__init__(f"workflow {name!r} (run {run_id}) failed: {first}{more}{skip}")
        self.run_id = run_id
        self.name = name
        self.failed = failed
        self.skipped = skipped


class WorkflowNotFound(FlowmillError, LookupError):
    """No workflow run with that id exists."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no workflow run with id {run_id!r}")
        self.run_id = run_id


class UnknownBudget(FlowmillError, LookupError):
    """No budget with that id has been defined (`app.define_budget` first)."""

    def __init__(self, budget_id: str) -> None:
        super().__init__(
            f"no budget with id {budget_id!r}: define it first with app.define_budget(...)"
        )
        self.budget_id = budget_id


class InvalidUsage(FlowmillError, ValueError):
    """A usage report is malformed: a negative or non-integer amount, or no dimension."""
