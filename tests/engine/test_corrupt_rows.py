"""Rows another tool corrupted (issue 13 items 3 and 4), on SQLite and PostgreSQL.

A payload or memo that does not decode fails its attempt at once, not retried, with a
`PayloadError` that says what was wrong, and the worker goes on with the other tasks.
Inspection (`app.get`, `app.list_tasks`, `app.dead_letters`) shows a corrupt payload,
result, error or tags with a marker instead of crashing; `h.result()` raises a typed error.

The manual clock never moves here: a lease cannot expire, so an attempt that was not
recorded at once would stall the test, never end as `LeaseExpired`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

import flowmill as fm

from ..conftest import BACKENDS, eventually, require_backend
from ._raw_rows import AsText, backend, write
from .test_worker import running

WAIT = timedelta(seconds=20)


# Rows are corrupted with raw SQL, as another tool would: the SQL backends of the registry.
SQL_BACKENDS = [b for b in BACKENDS if b.name in ("sqlite", "postgres")]


@pytest.fixture(params=[pytest.param(b, id=b.name, marks=b.marks) for b in SQL_BACKENDS])
async def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    await asyncio.to_thread(require_backend, request.param)
    async with request.param.fresh_url(tmp_path) as url:
        yield url


@dataclass
class Pair:
    a: int
    b: int


@dataclass(frozen=True)
class Corrupt:
    """A value another tool wrote, and what the error must say about it."""

    value: Any
    says: tuple[str, ...]
    sqlite_only: bool = False


# Every way a bytes column can hold something that is not a JSON `Pair`. SQLite keeps any
# type in any column; PostgreSQL's bytea holds bytes only.
BAD_JSON: dict[str, Corrupt] = {
    "integer": Corrupt(42, ("int", "42", "not JSON"), sqlite_only=True),
    "real": Corrupt(1.5, ("float", "1.5", "not JSON"), sqlite_only=True),
    "text-invalid-utf8": Corrupt(
        AsText(b'{"a": 1, "b": "\xff"}'), ("UTF-8", "byte 15"), sqlite_only=True
    ),
    "blob-invalid-utf8": Corrupt(b"\xff\xfe\x00", ("UTF-8", "byte 0")),
    "invalid-json": Corrupt(b'{"a": 1 "b": 2}', ("malformed", "line 1, column 9")),
    "wrong-shape": Corrupt(b'{"a": 1, "b": "two"}', ("int", "$.b")),
}


def _bad(db_url: str, name: str) -> Corrupt:
    bad = BAD_JSON[name]
    if bad.sqlite_only and backend(db_url) != "sqlite":
        pytest.skip("PostgreSQL's bytea holds bytes only")
    return bad


def _says(message: str | None, bad: Corrupt) -> None:
    assert message is not None
    for part in bad.says:
        assert part in message, f"{part!r} not in {message!r}"


# -- item 3: the worker ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_JSON))
async def test_an_undecodable_payload_fails_its_attempt_at_once(
    app: fm.App, db_url: str, name: str
) -> None:
    bad = _bad(db_url, name)
    ran: list[int] = []

    @app.task(name="add", retry=fm.Retry(max_attempts=5))
    async def add(p: Pair) -> int:
        ran.append(p.a)
        return p.a + p.b

    victim = await app.submit(add, Pair(0, 0))
    goods = await app.submit_many(add, [Pair(i, i) for i in range(1, 6)])
    await write(db_url, "tasks", "payload", bad.value, victim.id)
    async with running(app.worker(lease_ttl=timedelta(seconds=60), concurrency=2)):
        assert [await h.result(timeout=WAIT) for h in goods] == [2, 4, 6, 8, 10]

        async def ended() -> bool:
            rec = await app.store.task_get(victim.id)
            return rec is not None and rec.state.terminal

        await eventually(ended, what="the corrupt task to end")
    rec = await app.store.task_get(victim.id)
    assert rec is not None and rec.error is not None
    # Not retried (5 attempts were allowed), failed by the worker, not by a reaper.
    assert (rec.state, rec.attempts) == (fm.State.FAILED, 1)
    assert (rec.error.type, rec.error.category) == ("PayloadError", "decode_error")
    assert "task 'add': payload" in rec.error.message
    _says(rec.error.message, bad)
    assert sorted(ran) == [1, 2, 3, 4, 5]
    with pytest.raises(fm.TaskFailed) as failed:
        await victim.result(timeout=WAIT)
    assert failed.value.category == "decode_error"


@dataclass
class Memo:
    n: int


@pytest.mark.parametrize("name", ["integer", "blob-invalid-utf8", "invalid-json", "wrong-shape"])
async def test_an_undecodable_memo_fails_finalize_at_once(
    app: fm.App, db_url: str, name: str
) -> None:
    bad = _bad(db_url, name)
    release = asyncio.Event()
    finalized: list[Memo] = []

    @app.task(name="child")
    async def child(_: None) -> None:
        await release.wait()

    @app.executor(name="parent", retry=fm.Retry(max_attempts=5))
    class Parent(fm.Executor[None, Memo, int]):
        async def execute(self, req: None, ctx: fm.Context) -> Memo:
            await ctx.spawn(child, None)
            return Memo(7)

        async def finalize(self, req: None, memo: Memo, ctx: fm.Context) -> int:
            finalized.append(memo)
            return memo.n

    async with running(app.worker(lease_ttl=timedelta(seconds=60), concurrency=4)):
        h = await app.submit(Parent, None)

        async def waiting() -> bool:
            rec = await app.store.task_get(h.id)
            return rec is not None and rec.state is fm.State.WAITING_CHILDREN

        await eventually(waiting, what="the parent to wait for its child")
        await write(db_url, "tasks", "memo", bad.value, h.id)
        release.set()
        with pytest.raises(fm.TaskFailed) as failed:
            await h.result(timeout=WAIT)
    assert finalized == []
    assert (failed.value.state, failed.value.category) == ("failed", "decode_error")
    assert failed.value.error_type == "PayloadError"
    assert "task 'parent': memo" in (failed.value.message or "")
    if name == "wrong-shape":  # a `Pair`'s JSON is no `Memo`
        bad = Corrupt(bad.value, ("missing required field `n`",))
    _says(failed.value.message, bad)
    rec = await app.store.task_get(h.id)
    assert rec is not None and rec.attempts == 1


async def test_a_claimed_task_with_an_undecodable_payload_raises_payload_error(
    app: fm.App, db_url: str
) -> None:
    bad = BAD_JSON["invalid-json"]

    @app.task(name="add")
    async def add(p: Pair) -> int:
        return p.a + p.b

    h = await app.submit(add, Pair(1, 2))
    await write(db_url, "tasks", "payload", bad.value, h.id)
    async with app.claimer(worker_id="own-loop", kinds=["add"]) as claimer:
        claimed = await claimer.claim()
        assert claimed is not None
        with pytest.raises(fm.PayloadError) as err:
            claimed.decoded()
        _says(str(err.value), bad)
        await claimed.fail(str(err.value), "decode_error", retryable=False)
    assert (await app.store.task_get(h.id)).state is fm.State.FAILED  # type: ignore[union-attr]


# -- item 4: inspection ------------------------------------------------------------------


async def _three_ended(app: fm.App) -> tuple[fm.TaskHandle[Any], ...]:
    """A completed, a failed and a dead-lettered task, with tags."""

    @app.task(name="add")
    async def add(p: Pair) -> int:
        return p.a + p.b

    @app.task(name="reject")
    async def reject(p: Pair) -> int:
        raise fm.Fail("rejected")

    @app.task(name="flaky", retry=fm.Retry(max_attempts=1))
    async def flaky(p: Pair) -> int:
        raise ConnectionError("upstream down")

    tags = {"team": "ops"}
    done = await app.submit(add, Pair(1, 2), tags=tags)
    failed = await app.submit(reject, Pair(3, 4), tags=tags)
    dead = await app.submit(flaky, Pair(5, 6), tags=tags)
    async with running(app.worker(concurrency=4)):
        for h in (done, failed, dead):
            with contextlib.suppress(fm.TaskFailed):
                await h.result(timeout=WAIT)
    return done, failed, dead


def _marked(value: Any, bad: Corrupt, raw: Any) -> None:
    assert isinstance(value, fm.Undecodable), value
    _says(value.error, bad)
    expected = raw.data if isinstance(raw, AsText) else raw
    assert value.raw == expected


async def _inspected(app: fm.App, task_id: str) -> tuple[fm.TaskInfo, fm.TaskInfo]:
    """The task as `app.get` and as `app.list_tasks` show it (every row listed)."""
    listed = await app.list_tasks(limit=10)
    assert len(listed) == 3
    [in_list] = [i for i in listed if i.id == task_id]
    return await app.get(task_id), in_list


@pytest.mark.parametrize("name", list(BAD_JSON))
async def test_inspection_marks_a_corrupt_payload(app: fm.App, db_url: str, name: str) -> None:
    bad = _bad(db_url, name)
    done, _, _ = await _three_ended(app)
    await write(db_url, "tasks", "payload", bad.value, done.id)
    for info in await _inspected(app, done.id):
        _marked(info.payload, bad, bad.value)
        assert set(info.decode_errors) == {"payload"}
        assert info.result == 3  # the rest of the row is intact
    # A reader without the task's types (the CLI without --app) marks it too.
    async with fm.App(app.url) as bare:
        info = await bare.get(done.id)
        if name != "wrong-shape":  # any JSON is a valid untyped payload
            _marked(info.payload, bad, bad.value)
        assert info.result == 3


# The result type is `int`: a decoder that expects an int stops at the first non-int value.
RESULTS = {
    "invalid-json": Corrupt(b"12 }", ("malformed", "line 1, column 4")),
    "wrong-shape": Corrupt(b'"three"', ("Expected `int`, got `str`",)),
}


@pytest.mark.parametrize("name", list(BAD_JSON))
async def test_inspection_marks_a_corrupt_result_and_result_raises(
    app: fm.App, db_url: str, name: str
) -> None:
    bad = RESULTS.get(name) or _bad(db_url, name)
    done, _, _ = await _three_ended(app)
    await write(db_url, "results", "result", bad.value, done.id)
    for info in await _inspected(app, done.id):
        _marked(info.result, bad, bad.value)
        assert set(info.decode_errors) == {"result"}
        assert info.payload == Pair(1, 2)
    with pytest.raises(fm.PayloadError) as err:
        await done.result(timeout=WAIT)
    assert "task 'add': result" in str(err.value)
    _says(str(err.value), bad)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("integer", 42),
        ("text-invalid-utf8", AsText(b'{"type": "\xff"}')),
        ("invalid-json", "not json {"),
        ("wrong-shape", '{"type": 1}'),
    ],
)
async def test_inspection_marks_a_corrupt_error(
    app: fm.App, db_url: str, name: str, value: Any
) -> None:
    if backend(db_url) != "sqlite" and not isinstance(value, str):
        pytest.skip("PostgreSQL's text column holds valid UTF-8 text only")
    _, failed, dead = await _three_ended(app)
    for h in (failed, dead):
        await write(db_url, "tasks", "error", value, h.id)
        await write(db_url, "results", "error", value, h.id)
    info, in_list = await _inspected(app, dead.id)
    [in_dlq] = await app.dead_letters()
    for shown in (info, in_list, in_dlq):
        assert shown.error is not None
        assert (shown.error.type, shown.error.category) == ("Undecodable", "undecodable")
        assert "stored error does not decode" in shown.error.message
        assert set(shown.decode_errors) == {"error"}
    for h, state in ((failed, "failed"), (dead, "dead_lettered")):
        with pytest.raises(fm.TaskFailed) as err:
            await h.result(timeout=WAIT)
        assert (err.value.state, err.value.error_type) == (state, "Undecodable")
        assert "stored error does not decode" in (err.value.message or "")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("integer", 42),
        ("text-invalid-utf8", AsText(b'{"team": "\xff"}')),
        ("invalid-json", "{team"),
        ("wrong-shape", '["team"]'),
    ],
)
async def test_inspection_marks_corrupt_tags(
    app: fm.App, db_url: str, name: str, value: Any
) -> None:
    if backend(db_url) != "sqlite" and not isinstance(value, str):
        pytest.skip("PostgreSQL's text column holds valid UTF-8 text only")
    _, _, dead = await _three_ended(app)
    await write(db_url, "tasks", "tags", value, dead.id)
    info, in_list = await _inspected(app, dead.id)
    [in_dlq] = await app.dead_letters()
    for shown in (info, in_list, in_dlq):
        assert set(shown.decode_errors) == {"tags"}
        assert "stored tags do not decode" in shown.decode_errors["tags"]
        assert shown.tags == {}
        assert shown.error is not None and shown.error.type == "ConnectionError"
