"""The PostgreSQL store's statement texts: compacted once, and parsed once per process."""

from __future__ import annotations

from flowmill.store.postgres._compact import compact


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
