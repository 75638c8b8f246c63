"""The dashboard's JSON API: reads under `GET /api/...`, operator actions as `POST`s.

Every read asks the store with a limit (keyset pages, never a full scan on a request's
behalf). Bad input gets a 400 naming the field; an unknown task or run a 404; a store
that cannot be reached a 503 with one line (`{"error": "store unavailable: ..."}`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .._states import State
from ..errors import (
    ConfigurationError,
    DuplicateTask,
    IllegalTransition,
    StoreError,
    TaskNotFound,
)
from ..store.contract.dag import WorkflowGet, WorkflowsList
from ..store.contract.signals import FramesRead, WaitpointsList
from ..store.contract.tasks import ChildrenPage, ChildrenSummaryQuery, TasksList
from ._signals import MAX_ID_CHARS, _read_body, _Refused
from ._throughput import Throughput
from ._views import (
    JSON,
    child_json,
    children_summary_json,
    stored_json,
    task_detail,
    task_summary,
    waitpoint_json,
    workflow_json,
)

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .._app import App

MAX_LIMIT = 500
MAX_REPLAY = 500
MAX_WAITPOINTS = 100  # a task page shows this many of its waitpoints, oldest first
FRAME_TEXT_CHARS = 4096
Endpoint = Callable[["Request"], Awaitable["Response"]]


class BadInput(Exception):
    """A 4xx answer: `{"error": message, "field": field}`."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _text(request: Request, name: str, *, max_chars: int = MAX_ID_CHARS) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > max_chars or not value.isprintable():
        raise BadInput(400, f"bad {name}: printable text of at most {max_chars} characters", name)
    return value


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    if not value.isascii() or not value.strip().isdigit() or not low <= int(value) <= high:
        raise BadInput(400, f"bad {name}: an integer from {low} to {high}", name)
    return int(value)


def _states(request: Request) -> tuple[State, ...]:
    out = []
    for raw in request.query_params.getlist("state"):
        for part in raw.split(","):
            if not part:
                continue
            try:
                out.append(State(part))
            except ValueError:
                names = ", ".join(s.value for s in State)
                raise BadInput(400, f"bad state {part[:40]!r}: one of {names}", "state") from None
    return tuple(dict.fromkeys(out))


def _tag(request: Request) -> tuple[str, str | None] | None:
    raw = _text(request, "tag")
    if raw is None:
        return None
    key, eq, value = raw.partition("=")
    if not key:
        raise BadInput(400, "bad tag: key or key=value", "tag")
    return key, (value if eq else None)


def _path_id(request: Request, name: str) -> str:
    value: str = request.path_params[name]
    if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
        raise BadInput(404, f"no such {name.removesuffix('_id')}: {value[:40]!r}")
    return value


class Api:
    """The API's endpoints over one App; holds the throughput cursor between polls."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.throughput = Throughput()

    async def _now_ms(self) -> int:
        now = self.app.clock.store_now()
        return now if now is not None else await self.app.store.now_ms()

    # -- overview --------------------------------------------------------------------

    async def overview(self, request: Request) -> JSON:
        snap = await self.app.metrics_snapshot()
        now = await self._now_ms()
        budgets = await self.app.budgets()
        return {
            "read_at_ms": int(time.time() * 1000),
            "queues": [
                {
                    "name": q.name,
                    "paused": q.paused,
                    "counts": {s.value: n for s, n in q.counts.items()},
                    "total": q.total,
                    "oldest_ready_s": (
                        None if q.oldest_ready_age is None else q.oldest_ready_age.total_seconds()
                    ),
                }
                for q in snap.queues
            ],
            "workers": [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "version": w.version,
                    "queues": list(w.queues),
                    "concurrency": w.concurrency,
                    "in_flight": w.in_flight,
                    "status": w.status,
                    "last_seen_s": w.last_seen_ago.total_seconds(),
                }
                for w in snap.workers
            ],
            "workers_alive": snap.workers_alive,
            "dead_letters": snap.dead_letters,
            "throughput": await self.throughput.read(self.app.store, now),
            "budgets": [
                {"id": b.id, "hard": b.hard, "soft": b.soft, "usage": b.usage,
                 "hard_breached": b.hard_breached, "tasks_held": b.tasks_held}
                for b in budgets
            ],
        }  # fmt: skip

    # -- tasks -----------------------------------------------------------------------

    async def tasks(self, request: Request) -> JSON:
        states = _states(request)
        queue, kind = _text(request, "queue"), _text(request, "kind")
        tag, q = _tag(request), _text(request, "q")
        after = _text(request, "after")
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        await self.app.open()
        if q is not None and after is None:  # an exact id first: one indexed read
            rec = await self.app.store.task_get(q)
            if rec is not None and (not states or rec.state in states):
                return {"tasks": [task_summary(rec)], "next": None}
        # Every filter is the store's, and indexed: a page costs the same on a million rows.
        rows = await self.app.store.tasks_list(
            TasksList(
                states,
                queue,
                kind,
                limit,
                after,
                tag_key=None if tag is None else tag[0],
                tag_value=None if tag is None else tag[1],
                text=q,
            )
        )
        return {
            "tasks": [task_summary(r) for r in rows],
            "next": rows[-1].id if len(rows) == limit else None,
        }

    async def task(self, request: Request) -> JSON:
        task_id = _path_id(request, "task_id")
        await self.app.open()
        rec = await self.app.store.task_get(task_id)
        if rec is None:
            raise BadInput(404, f"no such task: {task_id}")
        store = self.app.store
        summary = await store.children_summary(ChildrenSummaryQuery(task_id))
        signals = await store.resume_signals(task_id)
        waitpoints = await store.waitpoints_list(WaitpointsList(task_id, MAX_WAITPOINTS + 1))
        now = await self._now_ms()
        upstream = await store.upstream_get(task_id)
        tdef = self.app.registry.get(rec.kind)
        budget = None
        if tdef is not None and tdef.budget is not None:
            try:
                b = await self.app.budget(tdef.budget)
                budget = {"id": b.id, "hard": b.hard, "soft": b.soft, "usage": b.usage,
                          "hard_breached": b.hard_breached}  # fmt: skip
            except LookupError:
                budget = None
        return {
            **task_detail(rec),
            "children": children_summary_json(summary) if summary.total else None,
            "signals": [
                {"name": s.name, "waitpoint_id": s.waitpoint_id, "payload": stored_json(s.payload)}
                for s in signals
            ],
            "waitpoints": [waitpoint_json(w, now) for w in waitpoints[:MAX_WAITPOINTS]],
            "waitpoints_more": len(waitpoints) > MAX_WAITPOINTS,
            "upstream": [
                {"id": u.task_id, "node": u.node, "state": u.state.value} for u in upstream
            ],
            "budget": budget,
        }

    async def children(self, request: Request) -> JSON:
        task_id = _path_id(request, "task_id")
        after = _int(request, "after", 0, 0, 2**62)
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        states = _states(request)
        await self.app.open()
        if await self.app.store.task_get(task_id) is None:
            raise BadInput(404, f"no such task: {task_id}")
        rows = await self.app.store.children_page(ChildrenPage(task_id, (), states, after, limit))
        return {
            "children": [child_json(c) for c in rows],
            "next": rows[-1].seq if len(rows) == limit else None,
        }

    async def frames(self, request: Request) -> Response:
        """Server-sent events: the latest attempt's frames, then new ones as they come."""
        from starlette.responses import StreamingResponse

        task_id = _path_id(request, "task_id")
        after = _int(request, "after", 0, 0, 2**62)
        last_id = request.headers.get("last-event-id", "")
        if last_id.isascii() and last_id.isdigit():
            after = max(after, int(last_id))
        await self.app.open()
        if await self.app.store.task_get(task_id) is None:
            raise BadInput(404, f"no such task: {task_id}")

        async def stream() -> AsyncIterator[bytes]:
            cursor = after
            while not await request.is_disconnected():
                try:
                    page = await self.app.store.frames_read(FramesRead(task_id, None, cursor, 200))
                except StoreError as exc:
                    yield _sse("error", {"error": f"store unavailable: {exc}"})
                    await asyncio.sleep(2)
                    continue
                for f in page.frames:
                    cursor = f.seq
                    text = f.payload.decode("utf-8", "replace")[:FRAME_TEXT_CHARS]
                    data = {
                        "seq": f.seq,
                        "type": f.frame_type,
                        "text": text,
                        "at_ms": f.at_ms,
                        "attempt": page.attempt,
                        "metadata": stored_json(f.metadata),
                    }
                    yield _sse("frame", data, f.seq)
                if not page.frames and not page.live:
                    yield _sse("end", {"attempt": page.attempt})
                    return
                if not page.frames:
                    yield b": waiting\n\n"  # finds a closed connection
                    await self.app.store.wait_for_frames(1.0)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def dead_letters(self, request: Request) -> JSON:
        after = _text(request, "after")
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        queue = _text(request, "queue")
        await self.app.open()
        rows = await self.app.store.tasks_list(
            TasksList((State.DEAD_LETTERED,), queue, None, limit, after)
        )
        return {
            "tasks": [task_summary(r) for r in rows],
            "next": rows[-1].id if len(rows) == limit else None,
        }

    # -- workflows -------------------------------------------------------------------

    async def workflows(self, request: Request) -> JSON:
        name = _text(request, "name")
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        await self.app.open()
        runs = await self.app.store.workflows_list(WorkflowsList(limit, name))
        return {"runs": [workflow_json(w) for w in runs]}

    async def workflow(self, request: Request) -> JSON:
        run_id = _path_id(request, "run_id")
        await self.app.open()
        rec = await self.app.store.workflow_get(WorkflowGet(run_id, nodes=True))
        if rec is None:
            raise BadInput(404, f"no such workflow run: {run_id}")
        return workflow_json(rec)

    # -- actions (POST) --------------------------------------------------------------

    async def cancel(self, request: Request) -> JSON:
        task_id = _path_id(request, "task_id")
        try:
            state = await self.app.cancel(task_id)
        except TaskNotFound:
            raise BadInput(404, f"no such task: {task_id}") from None
        return {"id": task_id, "state": state.value}

    async def retry(self, request: Request) -> JSON:
        task_id = _path_id(request, "task_id")
        return await self._retry_one(task_id)

    async def _retry_one(self, task_id: str) -> JSON:
        try:
            state = await self.app.retry(task_id)
        except TaskNotFound:
            raise BadInput(404, f"no such task: {task_id}") from None
        except (IllegalTransition, DuplicateTask) as exc:
            raise BadInput(409, f"cannot retry {task_id}: {exc}") from None
        return {"id": task_id, "state": state.value}

    async def replay(self, request: Request) -> JSON:
        """Replay many dead letters: body `{"ids": [...]}`; answers per id."""
        body = await _json_body(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        if (
            not isinstance(ids, list)
            or not ids
            or len(ids) > MAX_REPLAY
            or not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_CHARS for i in ids)
        ):
            raise BadInput(400, f"bad ids: a list of 1 to {MAX_REPLAY} task ids", "ids")
        results = []
        for task_id in dict.fromkeys(ids):
            try:
                results.append(await self._retry_one(task_id))
            except BadInput as bad:
                results.append({"id": task_id, "error": bad.message})
        return {"results": results}

    async def pause(self, request: Request) -> JSON:
        name = _path_id(request, "queue")
        try:
            changed = await self.app.pause_queue(name)
        except ConfigurationError as exc:
            raise BadInput(400, str(exc), "queue") from None
        return {"queue": name, "paused": True, "changed": changed}

    async def resume(self, request: Request) -> JSON:
        name = _path_id(request, "queue")
        try:
            changed = await self.app.resume_queue(name)
        except ConfigurationError as exc:
            raise BadInput(400, str(exc), "queue") from None
        return {"queue": name, "paused": False, "changed": changed}


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + msgspec.json.encode(data) + b"\n\n"


async def _json_body(request: Request) -> Any:
    try:
        raw = await _read_body(request)
    except _Refused as refused:
        raise BadInput(refused.status, refused.message) from None
    if not raw:
        return {}
    from ._signals import MAX_JSON_DEPTH, json_depth_exceeds

    if json_depth_exceeds(raw, MAX_JSON_DEPTH):
        raise BadInput(400, f"bad request body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadInput(400, f"bad request body: {exc}") from None
