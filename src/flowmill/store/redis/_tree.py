"""Parents and children in the Redis store: the join, fail-fast, cascades, paging, hooks.

A child's end, its parent's counters and the parent's move (ready for finalize, or failed
by fail_fast) happen in the FCALL that ends the child (`children_ended` in flowmill.lua).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..._states import State
from ...errors import LeaseLost
from .._common.serde import decode_error
from ..contract.tasks import (
    ChildrenPage,
    ChildrenSummary,
    ChildrenSummaryQuery,
    ChildRow,
    ErrorGroup,
    HookDone,
    HookRow,
    HooksClaim,
    TaskWaitChildren,
)
from ._leases import HeldLeases

SUMMARY_SLICE = 1000  # children per fm_children_summary call


class RedisTreeMixin:
    """The parent/child operations of `RedisStore`."""

    if TYPE_CHECKING:
        _k: str
        _leases: HeldLeases

        def _c(self) -> Any: ...

        async def _run(self, where: str, call: Callable[[], Awaitable[Any]]) -> Any: ...

        async def _call(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

        async def _fcall(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

    async def task_wait_children(self, p: TaskWaitChildren) -> State:
        params: dict[str, Any] = {"id": p.task_id, "epoch": p.epoch, "memo": 2}
        if p.now_ms is not None:
            params["now"] = p.now_ms
        self._leases.name(params, p.task_id, p.epoch)
        try:
            out = await self._call("fm_wait_children", params, [p.memo])
        except LeaseLost:
            self._leases.drop(p.task_id, p.epoch)
            raise
        self._leases.drop(p.task_id, p.epoch)  # parked: the lease ended
        return State(out["state"])

    async def children_page(self, p: ChildrenPage) -> list[ChildRow]:
        if p.limit <= 0:
            return []
        params: dict[str, Any] = {"parent": p.parent_id, "after": p.after_seq, "limit": p.limit}
        if p.kinds:
            params["kinds"] = list(p.kinds)
        if p.states:
            params["states"] = [s.value for s in p.states]
        rows = await self._fcall("fm_children_page", params)
        return [
            ChildRow(
                int(seq),
                cid.decode(),
                kind.decode(),
                State(st.decode()),
                res,
                decode_error(err),
                int(att),
            )
            for seq, cid, kind, st, res, err, att in rows
        ]

    async def children_summary(self, p: ChildrenSummaryQuery) -> ChildrenSummary:
        # read in slices of SUMMARY_SLICE children, one FCALL each (never all at once)
        params: dict[str, Any] = {
            "parent": p.parent_id,
            "examples": p.examples,
            "limit": SUMMARY_SLICE,
        }
        total = 0
        by_state: dict[State, int] = {}
        groups: dict[str, tuple[int, list[str]]] = {}
        while True:
            out = await self._call("fm_children_summary", params)
            total += int(out["total"])
            for k, v in (out["by_state"] or {}).items():
                by_state[State(k)] = by_state.get(State(k), 0) + int(v)
            for m, n, ids in out["groups"] or ():
                count, seen = groups.get(str(m), (0, []))
                seen.extend(str(i) for i in ids[: max(p.examples - len(seen), 0)])
                groups[str(m)] = (count + int(n), seen)
            if not out["after"]:
                break
            params["after"] = out["after"]
        ranked = sorted(groups.items(), key=lambda g: (-g[1][0], g[0]))[: max(p.top_errors, 0)]
        top = tuple(ErrorGroup(m, n, tuple(ids)) for m, (n, ids) in ranked)
        return ChildrenSummary(p.parent_id, total, by_state, top)

    async def hooks_claim(self, p: HooksClaim) -> list[HookRow]:
        if not p.kinds or p.limit <= 0:
            return []
        seed = HeldLeases.seed()
        params: dict[str, Any] = {
            "worker": p.worker_id,
            "kinds": list(p.kinds),
            "limit": p.limit,
            "ttl": p.lease_ttl_ms,
            "lid": seed,
        }
        if p.now_ms is not None:
            params["now"] = p.now_ms
        rows = await self._fcall("fm_hooks_claim", params)
        out: list[HookRow] = []
        for n, (i, k, h, pl, memo, st, e, a) in enumerate(rows, 1):
            row = HookRow(
                i.decode(), k.decode(), h.decode(), pl, memo, State(st.decode()), int(e), int(a)
            )
            self._leases.took(row.task_id, row.epoch, row.attempt, f"{seed}:{n}")
            out.append(row)
        return out

    async def hook_done(self, p: HookDone) -> None:
        params: dict[str, Any] = {
            "id": p.task_id,
            "epoch": p.epoch,
            "ok": p.ok,
            "max_attempts": p.max_attempts,
        }
        if p.now_ms is not None:
            params["now"] = p.now_ms
        self._leases.name(params, p.task_id, p.epoch)
        try:
            await self._call("fm_hook_done", params)
        except LeaseLost:
            self._leases.drop(p.task_id, p.epoch)
            raise
        self._leases.drop(p.task_id, p.epoch)
