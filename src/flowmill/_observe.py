"""The hook a worker calls around each attempt, for metrics and tracing (`_metrics`,
`_tracing`): none is installed by default, and then the worker pays one `if` per attempt."""

from __future__ import annotations

from typing import Protocol

from .store.contract.tasks import ClaimedRow, Finish


class AttemptObserver(Protocol):
    """Told when an attempt starts and ends, on the attempt's own asyncio task (so a
    context variable set in `started` is seen by the handler and by `ended`)."""

    async def started(self, row: ClaimedRow, waited_s: float) -> object:
        """The attempt starts, `waited_s` seconds after its claim; returns a value handed
        back to `ended` (a span, a context token)."""

    def ended(self, row: ClaimedRow, state: object, finish: Finish | None, took_s: float) -> None:
        """The attempt ended after `took_s` seconds; `finish` is what the worker recorded
        (None: the task was parked waiting for children, or the lease was lost)."""


def outcome_label(finish: Finish | None) -> str:
    """The `outcome` label of an attempt: the state its finish moved the task to
    (`completed`, `failed`, `dead_lettered`, `scheduled` for a retry, ...), `released` for
    one given back at shutdown, `parked` when the worker recorded no finish."""
    if finish is None:
        return "parked"
    if finish.release:
        return "released"
    return finish.target.value
