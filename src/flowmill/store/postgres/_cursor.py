"""The cursor of the store's connections: every statement's text is parsed once.

psycopg turns `%(name)s` placeholders into `$n` on every call, and caches that parse only
for texts up to 4,096 bytes (`psycopg._queries.MAX_CACHED_STATEMENT_LENGTH`, against
ORM-made texts that never repeat). A few of the store's statements stay longer than that
even compacted (`_compact`): the finish, the spawn, the linked insert, whose length also
grows with the schema name. Every text run here comes from the store's fixed set of
statements for its schema, so caching them all is bounded; this cursor does it.

It relies on two psycopg internals (the query class a cursor uses, and the uncached
parse). Where they are missing (another psycopg version), the plain cursor is used:
slower, never wrong. `tests/store/test_pg_statement_cache.py` says which one runs.
"""

from __future__ import annotations

import functools
from typing import Any

from psycopg import AsyncCursor

try:
    from psycopg._queries import PostgresQuery, _query2pg_nocache
except ImportError:  # pragma: no cover - another psycopg layout: plain cursor
    PostgresQuery = None  # type: ignore[assignment,misc]

# Statement texts of every schema a process uses: a few hundred at most.
_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parsed(query: str, encoding: str) -> Any:
    # Keyed by the text itself: the statements are long-lived strings, whose hash Python
    # computes once.
    return _query2pg_nocache(query.encode(encoding), encoding)


if PostgresQuery is not None and hasattr(AsyncCursor, "_query_cls"):

    class _Query(PostgresQuery):
        """`PostgresQuery` whose parse of a long named-placeholder text is cached."""

        __slots__ = ()

        def convert(self, query: Any, vars: Any) -> None:
            if not isinstance(query, str) or not isinstance(vars, dict):
                super().convert(query, vars)
                return
            self.query, self._want_formats, self._order, self._parts = _parsed(
                query, self._tx.encoding
            )
            self.dump(vars)

    class StoreCursor(AsyncCursor[Any]):
        """The store's cursor: statement parses cached whatever their length."""

        _query_cls = _Query

    def _agrees() -> bool:
        """Whether the cached parse gives what psycopg's own does, on this psycopg: a
        layout change in its internals then costs speed, never a wrong statement."""
        from psycopg.adapt import Transformer

        text = "SELECT %(a)s::text, %(b)s::int, '%%' || %(a)s -- " + "x" * 4200
        args = {"a": "z", "b": 1}
        try:
            mine, stock = _Query(Transformer()), PostgresQuery(Transformer())
            mine.convert(text, args)
            stock.convert(text, args)
            return bool(
                (mine.query, mine.params, mine.types, mine.formats)
                == (stock.query, stock.params, stock.types, stock.formats)
            )
        except Exception:  # any surprise: use the plain cursor
            return False

    CACHED_PARSE = _agrees()
    if not CACHED_PARSE:  # pragma: no cover
        StoreCursor = AsyncCursor  # type: ignore[misc,assignment]
else:  # pragma: no cover
    StoreCursor = AsyncCursor  # type: ignore[misc,assignment]
    CACHED_PARSE = False
