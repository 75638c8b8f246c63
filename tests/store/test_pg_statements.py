"""The PostgreSQL store's statement texts: compacted once, and parsed once per process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flowmill._states import State
from flowmill.store.contract.tasks import (
    Finish,
    LeaseRef,
    NewTask,
    TasksClaim,
    TasksFinish,
    TasksInsert,
)
from flowmill.store.postgres import PostgresStore
from flowmill.store.postgres._compact import compact
from flowmill.store.postgres._cursor import CACHED_PARSE

from ._pg_store_fixtures import pg_url, schema, store

__all__ = ["pg_url", "schema", "store"]  # fixtures, used by name


def test_compact_drops_comments_and_whitespace() -> None:
    text = """
WITH a AS (  -- a comment, with 'quotes'
    SELECT 1 , 2 /* block /* nested */ still */ FROM  t
)
SELECT * FROM a
"""
    assert compact(text) == " WITH a AS (SELECT 1,2 FROM t) SELECT * FROM a "


def test_compact_keeps_quoted_text_as_written() -> None:
    text = "SELECT 'a  -- b', 'it''s  /* x */'  ,  \"odd  schema--\".t,  $q$ x  y $q$, $1"
    assert compact(text) == (
        "SELECT 'a  -- b','it''s  /* x */',\"odd  schema--\".t,$q$ x  y $q$,$1"
    )


def test_compact_is_idempotent_and_keeps_fragment_ends() -> None:
    fragment = "x = 1 AND\n"
    once = compact(fragment)
    assert once == "x = 1 AND "
    assert compact(once) == once
    assert compact("WHERE ") + "true" == "WHERE true"


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count psycopg's uncached parses of a statement text."""
    import psycopg._queries as queries

    calls = [0]
    original: Callable[..., Any] = queries._query2pg_nocache

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(queries, "_query2pg_nocache", counted)
    return calls


async def _cycle(store: PostgresStore, n: int) -> None:
    """The hot path once: an insert, a claim, a spawn under the claimed task, the child's
    claim and finish, the parent's finish and a result read."""
    parent = f"p{n}"
    await store.tasks_insert(TasksInsert([NewTask(parent, "job", b"{}")]))
    [row] = await store.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 30_000, None, ()))
    child = NewTask(f"c{n}", "job", b"{}", parent_id=parent)
    await store.tasks_insert(TasksInsert([child], fence=LeaseRef(parent, row.lease_epoch)))
    [crow] = await store.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 30_000, None, ()))
    for r in (crow, row):
        [out] = await store.tasks_finish(
            TasksFinish([Finish(r.id, r.lease_epoch, State.COMPLETED, result=b"1")])
        )
        assert out.state is State.COMPLETED
    assert [r.state for r in await store.results_get([parent])] == [State.COMPLETED]


@pytest.mark.skipif(not CACHED_PARSE, reason="this psycopg has no cached-parse hook")
async def test_hot_statements_are_parsed_once(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch)
    await _cycle(store, 1)
    # The finish and the spawn are longer than psycopg's own cache takes (4,096 bytes):
    # without the store's cursor they are parsed again on every call.
    calls[0] = 0
    await _cycle(store, 2)
    assert calls[0] == 0


@pytest.mark.skipif(not CACHED_PARSE, reason="this psycopg's internals differ: plain cursor")
def test_the_cached_parse_is_used_only_while_it_agrees_with_psycopgs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowmill.store.postgres import _cursor

    assert _cursor._agrees()

    from psycopg._queries import _query2pg_nocache

    def changed(query: str, encoding: str) -> Any:  # internals that parse differently
        q, formats, order, parts = _query2pg_nocache(query.encode(encoding), encoding)
        return q + b" ", formats, order, parts

    monkeypatch.setattr(_cursor, "_parsed", changed)
    assert not _cursor._agrees()
    monkeypatch.setattr(_cursor, "_parsed", lambda query, encoding: (query,))
    assert not _cursor._agrees()
