"""Conformance: the tag and text filters of `tasks_list` (exact, paged, kept in step with
re-tagging and purges)."""

from __future__ import annotations

from typing import Any

from ..._states import State
from ...store.contract import Store
from ...store.contract.admin import TasksPurge
from ...store.contract.tasks import TasksList
from ._util import T0, add, insert, make_state, new_id, task


async def ids(store: Store, **kw: Any) -> list[str]:
    return [r.id for r in await store.tasks_list(TasksList(**kw))]


class TasksListFiltersConformance:
    """`tasks_list` with `tag_key`/`tag_value` and `text`."""

    async def test_by_tag_key_and_value(self, store: Store) -> None:
        blue = await add(store, tags={"team": "blue"})
        red = await add(store, tags={"team": "red", "env": "prod"}, queue="q2")
        await add(store)
        other = await add(store, tags={"teams": "red"})
        assert await ids(store, tag_key="team") == [blue, red]
        assert await ids(store, tag_key="team", tag_value="red") == [red]
        assert await ids(store, tag_key="env", tag_value="prod") == [red]
        assert await ids(store, tag_key="env", tag_value="dev") == []
        assert await ids(store, tag_key="teams") == [other]
        assert await ids(store, tag_key="nope") == []
        assert await ids(store, tag_key="team", queue="q2") == [red]
        assert await ids(store, tag_key="team", states=[State.RUNNING]) == []
        assert await ids(store, tag_key="team", text=red) == [red]

    async def test_a_tag_filter_pages_through_every_match(self, store: Store) -> None:
        rows = [task(tags={"batch": "7"} if i % 3 == 0 else None) for i in range(60)]
        tagged = [o.id for o, t in zip(await insert(store, *rows), rows, strict=True) if t.tags]
        seen: list[str] = []
        after: str | None = None
        while page := await store.tasks_list(
            TasksList(limit=7, after_id=after, tag_key="batch", tag_value="7")
        ):
            seen.extend(r.id for r in page)
            after = page[-1].id
        assert seen == tagged

    async def test_by_id_or_key_prefix(self, store: Store) -> None:
        one = await add(store, id="ord-1-" + new_id(), key="order-7")
        two = await add(store, id="ord-2-" + new_id(), key="invoice-7")
        three = await add(store, key="ord-9")
        assert await ids(store, text="ord-") == [one, two, three]
        assert await ids(store, text="ord-1") == [one]
        assert await ids(store, text="order") == [one]
        assert await ids(store, text="invoice-7") == [two]
        assert await ids(store, text=two) == [two]
        assert await ids(store, text="rder") == []  # a prefix, not a substring
        assert await ids(store, text="ord-", kind="nope") == []
        assert await ids(store, text="ord-", limit=2) == [one, two]
        assert await ids(store, text="ord-", after_id=one) == [two, three]

    async def test_odd_characters_in_keys_and_tags(self, store: Store) -> None:
        nul = await add(store, key="ab\x00cd", tags={"k\x00": "v\x00"})
        mark = await add(store, key="\x01x", tags={"k\x01" + "0": "v\x01" + "0"})
        top = await add(store, key="z\U0010ffff", tags={"k": "\U0010ffff"})
        assert await ids(store, text="ab") == [nul]
        assert await ids(store, text="ab\x00c") == [nul]
        assert await ids(store, text="\x01") == [mark]
        assert await ids(store, text="z\U0010ffff") == [top]
        assert await ids(store, text="z") == [top]
        # NUL and U+0001 "0" are different characters, wherever a store keeps them.
        assert await ids(store, tag_key="k\x00") == [nul]
        assert await ids(store, tag_key="k\x00", tag_value="v\x00") == [nul]
        assert await ids(store, tag_key="k\x01" + "0") == [mark]
        assert await ids(store, tag_key="k\x01" + "0", tag_value="v\x00") == []
        assert await ids(store, tag_key="k", tag_value="\U0010ffff") == [top]

    async def test_tags_follow_a_replace(self, store: Store) -> None:
        first = await add(store, key="k", tags={"v": "1"})
        out = await insert(store, task(key="k", tags={"v": "2", "w": "x"}), on_duplicate="replace")
        assert [o.id for o in out] == [first]
        assert await ids(store, tag_key="v", tag_value="1") == []
        assert await ids(store, tag_key="v", tag_value="2") == [first]
        assert await ids(store, tag_key="w") == [first]
        await insert(store, task(key="k"), on_duplicate="replace")
        assert await ids(store, tag_key="v") == []

    async def test_a_purged_task_leaves_no_tag_behind(self, store: Store) -> None:
        gone = await make_state(store, State.CANCELLED, tags={"t": "1"})
        assert await ids(store, tag_key="t") == [gone]
        purge = TasksPurge(T0 + 1, (State.CANCELLED,), now_ms=T0 + 10)
        assert await store.tasks_purge(purge) == 1
        later = await add(store)  # may take the purged task's place in a store's order
        assert await ids(store) == [later]
        assert await ids(store, tag_key="t") == []
