"""Conformance: reading a parent's children (`children_page`, `children_summary`)."""

from __future__ import annotations

from ..._states import State
from ...store.contract import Store
from ...store.contract.tasks import (
    ChildrenPage,
    ChildrenSummaryQuery,
    ChildRow,
    ErrorGroup,
)
from ._parents import (
    ORCH2,
    claim_all,
    kids,
    mixed_children,
    spawn,
    start,
    summary_of,
)
from ._util import (
    ERR,
    KIND,
    T0,
    finish,
    task,
)


class ChildrenPageConformance:
    """`children_page`: a parent's children, page by page, with filters."""

    async def test_children_page_by_page_with_filters(self, store: Store) -> None:
        parent = await start(store, fail_fast=False)
        other = await start(store, ORCH2)
        news = [task(k, parent_id=parent.id) for k in (KIND, "other", KIND, "other", KIND)]
        ids = [o.id for o in await spawn(store, parent, *news)]
        await kids(store, other, 2)
        r0, r2, _ = await claim_all(store, 3, now=T0)
        await finish(store, r0.id, r0.lease_epoch, State.COMPLETED, result=b"\x00r0")
        await finish(store, r2.id, r2.lease_epoch, State.FAILED, error=ERR)
        pages: list[list[ChildRow]] = []
        after = 0
        while page := await store.children_page(ChildrenPage(parent.id, after_seq=after, limit=2)):
            pages.append(page)
            after = page[-1].seq
        assert [len(p) for p in pages] == [2, 2, 1]
        rows = [r for p in pages for r in p]
        assert [r.id for r in rows] == ids
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        assert [r.kind for r in rows] == [KIND, "other", KIND, "other", KIND]
        by_id = {r.id: r for r in rows}
        assert (by_id[ids[0]].state, by_id[ids[0]].result, by_id[ids[0]].error) == (
            State.COMPLETED,
            b"\x00r0",
            None,
        )
        assert (by_id[ids[2]].state, by_id[ids[2]].result, by_id[ids[2]].error) == (
            State.FAILED,
            None,
            ERR,
        )
        assert (by_id[ids[4]].state, by_id[ids[4]].attempts) == (State.RUNNING, 1)
        assert (by_id[ids[1]].state, by_id[ids[1]].attempts) == (State.READY, 0)
        only_other = await store.children_page(ChildrenPage(parent.id, kinds=["other"]))
        assert [r.id for r in only_other] == [ids[1], ids[3]]
        ended = await store.children_page(
            ChildrenPage(parent.id, states=[State.COMPLETED, State.FAILED])
        )
        assert [r.id for r in ended] == [ids[0], ids[2]]
        both = await store.children_page(
            ChildrenPage(parent.id, kinds=[KIND], states=[State.RUNNING, State.READY])
        )
        assert [r.id for r in both] == [ids[4]]
        assert await store.children_page(ChildrenPage("no-such-parent")) == []


class ChildrenSummaryConformance:
    """`children_summary`: counts by state and the most common errors."""

    async def test_children_summary_counts_and_top_errors(self, store: Store) -> None:
        empty = await start(store, fail_fast=False)
        assert await store.children_summary(ChildrenSummaryQuery(empty.id)) == (
            summary_of(empty.id, {}, ())
        )
        parent, ids = await mixed_children(store)
        got = await store.children_summary(
            ChildrenSummaryQuery(parent.id, top_errors=1, examples=2)
        )
        by_state = {
            State.FAILED: 3,
            State.DEAD_LETTERED: 1,
            State.COMPLETED: 2,
            State.CANCELLED: 1,
            State.RUNNING: 1,
            State.READY: 1,
        }
        assert got == summary_of(
            parent.id, by_state, (ErrorGroup("disk full", 3, (ids[0], ids[2])),)
        )
        got = await store.children_summary(
            ChildrenSummaryQuery(parent.id, top_errors=5, examples=5)
        )
        assert got.top_errors == (
            ErrorGroup("disk full", 3, (ids[0], ids[2], ids[3])),
            ErrorGroup("too slow", 1, (ids[1],)),
        )
