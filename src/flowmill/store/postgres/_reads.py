"""The PostgreSQL store's reads: `task_get`, `tasks_list`, `tasks_count`, `results_get`,
`events_read`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..._states import State
from .._common.list_filters import has_tag, prefix_end, tag_image
from .._common.serde import decode_error
from ..contract.tasks import (
    CountRow,
    Event,
    EventsRead,
    ResultRow,
    TaskRecord,
    TasksList,
)
from ._rows import record
from ._sql import Queries
from ._text import MARK, dec, enc


class PostgresReadsMixin:
    """The read operations of `PostgresStore`."""

    if TYPE_CHECKING:
        _q: Queries

        async def _fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Any]: ...

    async def task_get(self, task_id: str) -> TaskRecord | None:
        rows = await self._fetch(self._q.task_get, {"id": task_id})
        return record(rows[0]) if rows else None

    async def tasks_list(self, p: TasksList) -> list[TaskRecord]:
        if p.tag_key is None:
            return [record(r) for r in await self._fetch(*self._list_query(p))]
        # The tag index holds an image of each tag (see migration 0005) that two tags can
        # share: drop a row that matched only through it, and read on to fill the page.
        out: list[TaskRecord] = []
        while True:
            rows = [record(r) for r in await self._fetch(*self._list_query(p))]
            out.extend(r for r in rows if has_tag(r, p.tag_key, p.tag_value))
            if len(rows) < p.limit or len(out) >= p.limit:
                return out[: p.limit]
            p = replace(p, after_id=rows[-1].id)

    def _list_query(self, p: TasksList) -> tuple[str, dict[str, Any]]:
        head, after = self._q.tasks_list_head, self._q.tasks_list_after
        where = ["true"]
        params: dict[str, Any] = {"limit": p.limit}
        order = "t.seq"
        if p.tag_key is not None:
            head, after, order = (
                self._q.tasks_list_tagged_head,
                self._q.tasks_list_tagged_after,
                "g.seq",
            )
            where.append("g.key = %(tag_key)s")
            params["tag_key"] = tag_image(p.tag_key)
            if p.tag_value is not None:
                where.append("g.value = %(tag_value)s")
                params["tag_value"] = tag_image(p.tag_value)
        if p.states:
            where.append("t.state = ANY(%(states)s::text[])")
            params["states"] = [State(s).value for s in p.states]
        if p.queue is not None:
            where.append("t.queue = %(queue)s")
            params["queue"] = enc(p.queue)
        if p.kind is not None:
            where.append("t.kind = %(kind)s")
            params["kind"] = enc(p.kind)
        if p.text is not None:
            ranges = []
            for i, (column, start) in enumerate(_text_ranges(p.text)):
                end = prefix_end(start)
                ranges.append(
                    f"{column} >= %(from{i})s"
                    + ("" if end is None else f" AND {column} < %(to{i})s")
                )
                params[f"from{i}"], params[f"to{i}"] = start, end
            where.append("(" + " OR ".join(ranges) + ")")
        if p.after_id is not None:
            where.append(after)
            params["after_id"] = p.after_id
        return head + " AND ".join(where) + f" ORDER BY {order} LIMIT %(limit)s", params

    async def tasks_count(self) -> list[CountRow]:
        rows = await self._fetch(self._q.tasks_count)
        return [CountRow(dec(q), State(s), int(n)) for q, s, n in rows]

    async def results_get(self, task_ids: Sequence[str]) -> list[ResultRow]:
        ids = list(task_ids)
        if not ids:
            return []
        if len(ids) == 1:  # the usual wait for one result: a plan PostgreSQL keeps
            rows = await self._fetch(self._q.result_get, {"id": ids[0]})
        else:
            rows = await self._fetch(self._q.results_get, {"ids": ids})
        return [ResultRow(t, State(s), r, decode_error(e)) for t, s, r, e in rows]

    async def events_read(self, p: EventsRead) -> list[Event]:
        rows = await self._fetch(self._q.events_read, {"after": p.after, "limit": p.limit})
        return [Event(i, t, dec(k), State(s), a, d) for i, t, k, s, a, d in rows]


def _text_ranges(text: str) -> list[tuple[str, str]]:
    """(column, prefix) pairs whose prefix ranges hold the tasks whose id or dedup key
    starts with `text`. Keys stored escaped (`_text.enc`: those with NUL or starting with
    the mark) start with the mark followed by the escaped key, and escaping keeps prefixes."""
    escaped = MARK + text.replace(MARK, MARK + MARK).replace("\x00", MARK + "0")
    if "\x00" in text:  # no id holds NUL (ids are stored as given)
        return [("t.dedup_key", escaped)]
    if text.startswith(MARK):  # no key stored as given starts with the mark
        return [("t.id", text), ("t.dedup_key", escaped)]
    return [("t.id", text), ("t.dedup_key", text), ("t.dedup_key", escaped)]
