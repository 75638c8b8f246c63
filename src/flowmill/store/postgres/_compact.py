"""Statement text made short once, when a schema's statements are built.

psycopg caches the parse of a statement's text (placeholders to `$n`) only for texts up to
4,096 bytes (`psycopg._queries.MAX_CACHED_STATEMENT_LENGTH`); a longer one is parsed again
on every call, on the caller's CPU. The statements here are written indented over many
lines to be read: `compact` drops what the server ignores (comments, runs of whitespace)
so that even the longest hot statements (the finish, the spawn) are parsed once.
"""

from __future__ import annotations

from typing import Any

# What psycopg caches; the statements of the hot path must stay under it (tested).
PSYCOPG_CACHED_LENGTH = 4096


def compact(text: str) -> str:
    """`text` with comments removed and every run of whitespace outside quotes made one
    space, or none where it separates nothing (after `(` or `,`, before `)` or `,`).
    Whitespace at either end stays one space: fragments are joined into statements.
    Quoted literals and identifiers are kept as written."""
    out: list[str] = []
    space = False  # whitespace (or a comment) seen since the last kept character
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            space = True
            i += 1
            continue
        if ch == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            space = True
            continue
        if ch == "/" and text.startswith("/*", i):
            i = _block_comment_end(text, i)
            space = True
            continue
        if space and (not out or out[-1][-1] not in "(,") and ch not in "),":
            out.append(" ")
        space = False
        if ch in "'\"":
            end = _quoted_end(text, i, ch)
        elif ch == "$":
            end = _dollar_quoted_end(text, i)
        else:
            end = i + 1
        out.append(text[i:end])
        i = end
    if space:
        out.append(" ")
    return "".join(out)


def compact_statements(queries: Any) -> None:
    """`compact` every statement (each `str` attribute) of a set of queries, in place."""
    for name, value in vars(queries).items():
        if isinstance(value, str):
            setattr(queries, name, compact(value))


def _quoted_end(text: str, start: int, quote: str) -> int:
    """The index after a '...' or "..." starting at `start` (a doubled quote is kept
    inside). A backslash escapes nothing in standard strings; E'...' strings are not used.
    """
    i = start + 1
    while True:
        j = text.find(quote, i)
        if j < 0:
            return len(text)
        if text.startswith(quote * 2, j):
            i = j + 2
            continue
        return j + 1


def _dollar_quoted_end(text: str, start: int) -> int:
    """The index after a $tag$...$tag$ string; just after the `$` when it opens none (a
    positional parameter such as $1)."""
    close = text.find("$", start + 1)
    tag = text[start : close + 1] if close > 0 else ""
    if not tag or not all(c.isalnum() or c == "_" for c in tag[1:-1]) or tag[1:2].isdigit():
        return start + 1
    end = text.find(tag, close + 1)
    return len(text) if end < 0 else end + len(tag)


def _block_comment_end(text: str, start: int) -> int:
    """The index after a /* ... */ comment (they nest in PostgreSQL)."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(text)
