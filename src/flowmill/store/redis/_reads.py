"""Inspection in the Redis store: task records, lists, counts, results, the event log."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..._states import State
from .._common.serde import decode_error
from ..contract.tasks import (
    CountRow,
    Event,
    EventsRead,
    ResultRow,
    TaskRecord,
    TasksList,
)
from . import _records as rec

_RESULT_CHUNK = 500
_FILTER_PAGE = 500  # tasks read per call while a tag or text filter looks for matches


def _matches(r: TaskRecord, p: TasksList) -> bool:
    """Whether `r` passes the tag and text filters of `p` (the function did the rest)."""
    if p.tag_key is not None and (
        p.tag_key not in r.tags or (p.tag_value is not None and r.tags[p.tag_key] != p.tag_value)
    ):
        return False
    return p.text is None or r.id.startswith(p.text) or (r.dedup_key or "").startswith(p.text)


class RedisReadsMixin:
    """The read operations of `RedisStore` (plain commands and one read-only function)."""

    if TYPE_CHECKING:
        _k: str
        _cursors: weakref.WeakKeyDictionary[Any, dict[str, bytes]]

        def _c(self) -> Any: ...

        async def _run(self, where: str, call: Callable[[], Awaitable[Any]]) -> Any: ...

        async def _call(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

        async def _fcall(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

    async def task_get(self, task_id: str) -> TaskRecord | None:
        h = await self._run("task_get", lambda: self._c().hgetall(self._k + "t:" + task_id))
        return rec.task_record(h) if h else None

    async def tasks_list(self, p: TasksList) -> list[TaskRecord]:
        if p.limit <= 0:
            return []
        params: dict[str, Any] = {}
        if p.states:
            params["states"] = [s.value for s in p.states]
        if p.queue is not None:
            params["queue"] = p.queue
        if p.kind is not None:
            params["kind"] = p.kind
        if p.tag_key is None and p.text is None:
            return await self._list_page(params, p.limit, p.after_id)
        # No index holds tags or key prefixes here: walk the list page by page, in order,
        # until the page is full or the tasks run out (never a cap that misses a match).
        out: list[TaskRecord] = []
        after, size = p.after_id, max(p.limit, _FILTER_PAGE)
        while len(out) < p.limit:
            page = await self._list_page(params, size, after)
            out.extend(r for r in page if _matches(r, p))
            if len(page) < size:
                break
            after = page[-1].id
        return out[: p.limit]

    async def _list_page(
        self, params: dict[str, Any], limit: int, after: str | None
    ) -> list[TaskRecord]:
        query = {**params, "limit": limit}
        if after is not None:
            query["after"] = after
        rows = await self._fcall("fm_list", query)
        return [rec.task_record(rec.as_hash(r)) for r in rows]

    async def tasks_count(self) -> list[CountRow]:
        raw = await self._run("tasks_count", lambda: self._c().hgetall(self._k + "cnt"))
        rows: list[CountRow] = []
        for field, n in raw.items():
            state, _, queue = field.partition(b"|")
            if int(n) > 0:
                rows.append(CountRow(queue.decode(), State(state.decode()), int(n)))
        rows.sort(key=lambda c: (c.queue, c.state.value))
        return rows

    async def results_get(self, task_ids: Sequence[str]) -> list[ResultRow]:
        ids = list(task_ids)
        out: list[ResultRow] = []
        client = self._c()
        # A task's first wait_for_finish answers at once, since it cannot know what it
        # missed (see `_wait`). The newest finish wake-up, read on the same connection just
        # before the results, is a cursor that misses nothing: a finish after it either
        # shows in these results or comes after it. The result waiter's next wait then
        # blocks at once, without a read of its own and a spurious wake-up.
        waiter = asyncio.current_task()
        cursors = self._cursors.setdefault(waiter, {}) if waiter is not None else {}
        mark = "wf" not in cursors
        for i in range(0, len(ids), _RESULT_CHUNK):
            chunk = ids[i : i + _RESULT_CHUNK]
            pipe = client.pipeline(transaction=False)
            if mark and i == 0:
                pipe.xrevrange(self._k + "wf", count=1)
            for task_id in chunk:
                pipe.hmget(self._k + "t:" + task_id, "res_state", "result", "res_error")
            got = await self._run("results_get", pipe.execute)
            if mark and i == 0:
                newest, got = got[0], got[1:]
                cursors["wf"] = newest[0][0] if newest else b"0-0"
            for task_id, (state, result, error) in zip(chunk, got, strict=True):
                if state is not None:
                    out.append(
                        ResultRow(task_id, State(state.decode()), result, decode_error(error))
                    )
        return out

    async def events_read(self, p: EventsRead) -> list[Event]:
        if p.limit <= 0:
            return []
        entries = await self._run(
            "events_read",
            lambda: self._c().xrange(self._k + "ev", min=str(p.after + 1), count=p.limit),
        )
        return [rec.event(entry_id, fields) for entry_id, fields in entries]

    async def meta_get_or_set(self, key: str, value: str) -> str:
        client = self._c()
        meta = self._k + "kv"  # not "meta": that hash holds the schema stamp
        await self._run("meta", lambda: client.hsetnx(meta, key, value))
        stored = await self._run("meta", lambda: client.hget(meta, key))
        return value if stored is None else stored.decode()
