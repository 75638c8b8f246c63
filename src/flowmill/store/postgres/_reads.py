"""The PostgreSQL store's reads: `task_get`, `tasks_list`, `tasks_count`, `results_get`,
`events_read`.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from ._rows import record
from ._sql import Queries
from ._text import dec, enc


class PostgresReadsMixin:
    """The read operations of `PostgresStore`."""

    if TYPE_CHECKING:
        _q: Queries

        async def _fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Any]: ...

    async def task_get(self, task_id: str) -> TaskRecord | None:
        rows = await self._fetch(self._q.task_get, {"id": task_id})
        return record(rows[0]) if rows else None

    async def tasks_list(self, p: TasksList) -> list[TaskRecord]:
        where = ["true"]
        params: dict[str, Any] = {"limit": p.limit}
        if p.states:
            where.append("t.state = ANY(%(states)s::text[])")
            params["states"] = [State(s).value for s in p.states]
        if p.queue is not None:
            where.append("t.queue = %(queue)s")
            params["queue"] = enc(p.queue)
        if p.kind is not None:
            where.append("t.kind = %(kind)s")
            params["kind"] = enc(p.kind)
        if p.after_id is not None:
            where.append(self._q.tasks_list_after)
            params["after_id"] = p.after_id
        query = self._q.tasks_list_head + " AND ".join(where) + " ORDER BY t.seq LIMIT %(limit)s"
        return [record(r) for r in await self._fetch(query, params)]

    async def tasks_count(self) -> list[CountRow]:
        rows = await self._fetch(self._q.tasks_count)
        return [CountRow(dec(q), State(s), int(n)) for q, s, n in rows]

    async def results_get(self, task_ids: Sequence[str]) -> list[ResultRow]:
        ids = list(task_ids)
        if not ids:
            return []
        rows = await self._fetch(self._q.results_get, {"ids": ids})
        return [ResultRow(t, State(s), r, decode_error(e)) for t, s, r, e in rows]

    async def events_read(self, p: EventsRead) -> list[Event]:
        rows = await self._fetch(self._q.events_read, {"after": p.after, "limit": p.limit})
        return [Event(i, t, dec(k), State(s), a, d) for i, t, k, s, a, d in rows]
