"""Budgets in the Redis store: the shared rules decide, one FCALL applies the decision.

A budget is a hash with a version. The engine's rules (`_common/budget_rules.py`, the
same code SQLite and PostgreSQL run) compute the new usage and breach from a read of it;
`fm_budget_put` stores the result only if the version is still the one read, checking
the reporter's fence and the report's dedup key in the same call. On a conflict (another
report got in between) the read and the decision are made again, so concurrent reports
never overshoot a hard limit and the rules cannot drift apart between backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import StoreError, UnknownBudget
from .._common.budget_rules import (
    Budget,
    check_dimensions,
    check_limits,
    dumps,
    loads_amounts,
    loads_names,
    new_budget,
)
from ..contract.budgets import (
    BudgetDefine,
    BudgetReset,
    BudgetRow,
    BudgetUsage,
    UsageReport,
    UsageStatus,
)
from ._leases import HeldLeases

_MAX_TRIES = 1000


def _budget(budget_id: str, h: dict[bytes, bytes]) -> tuple[Budget, int]:
    every = h.get(b"reset_every")
    breached = h.get(b"breached")
    b = Budget(
        id=budget_id,
        hard=loads_amounts(h[b"hard"].decode()),
        soft=loads_amounts(h[b"soft"].decode()),
        usage=loads_amounts(h[b"usage"].decode()),
        reset_every_ms=None if every is None else int(every),
        window_start_ms=int(h[b"window_start"]),
        breached=None if breached is None else loads_names(breached.decode()),
    )
    return b, int(h[b"ver"])


def _fields(b: Budget) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hard": dumps(b.hard),
        "soft": dumps(b.soft),
        "usage": dumps(b.usage),
        "window_start": b.window_start_ms,
    }
    if b.reset_every_ms is not None:
        out["reset_every"] = b.reset_every_ms
    if b.breached is not None:
        out["breached"] = dumps(b.breached)
    return out


class RedisBudgetsMixin:
    """The `BudgetsStore` operations of `RedisStore`."""

    if TYPE_CHECKING:
        _k: str

        def _c(self) -> Any: ...

        async def _call(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

        async def now_ms(self) -> int: ...

        _leases: HeldLeases

    async def _budget_read(self, budget_id: str) -> tuple[Budget | None, int, int]:
        """(the budget or None, its version or -1, how many of its tasks are ready)."""
        pipe = self._c().pipeline(transaction=False)  # the put checks the version
        pipe.hgetall(self._k + "b:" + budget_id)
        pipe.hget(self._k + "bready", budget_id)
        h, ready = await pipe.execute()
        if not h:
            return None, -1, 0
        b, ver = _budget(budget_id, h)
        return b, ver, int(ready or 0)

    async def _budget_put(self, b: Budget, ver: int, now: int, **extra: Any) -> Any:
        params: dict[str, Any] = {"id": b.id, "ver": ver, "now": now, **_fields(b), **extra}
        return await self._call("fm_budget_put", params)

    async def budget_define(self, p: BudgetDefine) -> BudgetRow:
        check_limits(p.hard, p.soft)
        now = p.now_ms if p.now_ms is not None else await self.now_ms()
        for _ in range(_MAX_TRIES):
            b, ver, ready = await self._budget_read(p.budget_id)
            wake = False
            if b is None:
                b = new_budget(p.budget_id, p.hard, p.soft, p.reset_every_ms, now)
            else:
                was_breached = b.breached is not None
                b.redefine(p.hard, p.soft, p.reset_every_ms, now)
                wake = was_breached and b.breached is None  # its held tasks may run now
            out = await self._budget_put(b, ver, now, wake=wake)
            if out["status"] == "ok":
                return b.row(now, ready)
        raise StoreError(f"budget {p.budget_id!r}: too many concurrent changes")

    async def budget_reset(self, p: BudgetReset) -> BudgetRow:
        now = p.now_ms if p.now_ms is not None else await self.now_ms()
        for _ in range(_MAX_TRIES):
            b, ver, ready = await self._budget_read(p.budget_id)
            if b is None:
                raise UnknownBudget(p.budget_id)
            b.reset(now)
            out = await self._budget_put(b, ver, now, wake=True, must_exist=True)
            if out["status"] == "ok":
                return b.row(now, ready)
        raise StoreError(f"budget {p.budget_id!r}: too many concurrent changes")

    async def budget_report_usage(self, p: BudgetUsage) -> UsageReport:
        amounts = check_dimensions(p.dimensions)  # bad input fails before any write
        now = p.now_ms if p.now_ms is not None else await self.now_ms()
        for _ in range(_MAX_TRIES):
            b, ver, _ready = await self._budget_read(p.budget_id)
            if b is None:
                # the fence is judged first: the call raises LeaseLost or UnknownBudget
                await self._call(
                    "fm_budget_put",
                    self._leases.name(
                        {
                            "id": p.budget_id,
                            "ver": -1,
                            "task": p.task_id,
                            "epoch": p.epoch,
                            "must_exist": True,
                        },
                        p.task_id,
                        p.epoch,
                    ),
                )
                raise UnknownBudget(p.budget_id)  # pragma: no cover - the call raised
            report = b.report(amounts, now)
            extra: dict[str, Any] = {"task": p.task_id, "epoch": p.epoch}
            self._leases.name(extra, p.task_id, p.epoch)
            if p.dedup_key is not None:
                extra["dedup"] = p.dedup_key
                extra["record_dedup"] = report.status is not UsageStatus.HARD_BREACH
            out = await self._budget_put(b, ver, now, **extra)
            if out["status"] == "already":
                usage = loads_amounts(out["usage"]) if out.get("usage") else {}
                view = Budget(
                    b.id, b.hard, b.soft, usage, b.reset_every_ms, b.window_start_ms, None
                )
                view.roll(now)
                return UsageReport(UsageStatus.ALREADY_APPLIED, dict(view.usage))
            if out["status"] == "ok":
                return report
        raise StoreError(f"budget {p.budget_id!r}: too many concurrent reports")

    async def budgets_get(
        self, budget_ids: Sequence[str], now_ms: int | None = None
    ) -> list[BudgetRow]:
        now = now_ms if now_ms is not None else await self.now_ms()
        client = self._c()
        if budget_ids:
            ids = sorted(dict.fromkeys(budget_ids))
        else:
            ids = sorted(m.decode() for m in await client.smembers(self._k + "bids"))
        out: list[BudgetRow] = []
        for budget_id in ids:
            b, _ver, ready = await self._budget_read(budget_id)
            if b is not None:
                out.append(b.row(now, ready))
        return out
