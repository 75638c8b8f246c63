"""Every name importable from `flowmill` before the house was reorganised still is."""

from __future__ import annotations

import importlib

import pytest

import flowmill as fm
from flowmill import errors

# `flowmill.__all__` and the other names of `dir(flowmill)` before the reorganisation.
BEFORE_ALL = """
    TERMINAL TRANSITIONS App BudgetStatus Cancelled Category ChildResult ChildrenReport
    ClaimedTask Claimer Clock Condition ConfigurationError Context Count DeliverOutcome
    DeliverStatus DuplicateTask ErrorGroup ErrorInfo Event Executor Exponential Fail
    FailOutcome Fixed FlowmillError Frame FrameTooLarge IllegalTransition InvalidParent
    InvalidUsage InvalidWorkflow LeaseLost Linear ManualClock Node NodeStatus OnTimeout
    PayloadError PayloadTooLarge Phase Priority RateLimit ResumeSignal Retry RetryAction
    RetryCapExceeded RetryDecision RetryLater RunState SchemaError Signal State StatusReport
    StoreError StoreUnavailable SuspendStatus SystemClock TaskAlreadyFinished TaskDef
    TaskFailed TaskHandle TaskInfo TaskNotFound TaskTimeout TimeoutClass UnknownBudget
    UnknownTask Upstream UpstreamFailed UsageReport UsageStatus Waitpoint Worker WorkerStats
    Workflow WorkflowFailed WorkflowNotFound WorkflowResult WorkflowRun WorkflowStatus
    __version__ decide_retry fan_out_in pipeline
""".split()  # noqa: SIM905 - one name list, wrapped to read
BEFORE_MODULES = """
    _app _budgets _children _clock _codec _conditions _context _executor _handle _limits
    _retry _signals _states _task _tokens errors store worker workflows
""".split()  # noqa: SIM905 - one name list, wrapped to read


@pytest.mark.parametrize("name", BEFORE_ALL + BEFORE_MODULES)
def test_every_name_of_before_still_imports(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from flowmill import {name}", namespace)  # the `from flowmill import X` form
    assert namespace[name] is getattr(fm, name)  # and the `fm.X` form


def test_all_names_resolve_and_every_exception_is_in_errors() -> None:
    assert len(fm.__all__) == len(set(fm.__all__))
    for name in fm.__all__:
        assert hasattr(fm, name), name
    for name in BEFORE_ALL:
        value = getattr(fm, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert getattr(errors, name) is value, f"{name} is not in flowmill.errors"
    assert sorted(errors.__all__) == sorted(
        n
        for n, v in vars(errors).items()
        if isinstance(v, type) and issubclass(v, fm.FlowmillError)
    )


def test_worker_and_workflows_packages_re_export_their_names() -> None:
    for package in ("flowmill.worker", "flowmill.workflows"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name).__module__.startswith(package), name
