"""A reversible text form for names PostgreSQL could not store as given.

PostgreSQL `text` cannot hold NUL characters, and the store contract lets kinds, queues
and dedup keys be any Python string. Strings containing NUL (or starting with the marker
itself) are stored as MARK + an escaped form; every other string is stored unchanged, so
the mapping is injective and equality in SQL still means equality of the originals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MARK = "\x01"
_ESCAPED = re.compile("\x01(.)", re.DOTALL)


def _unescape(m: re.Match[str]) -> str:
    return "\x00" if m.group(1) == "0" else m.group(1)


def enc(s: str) -> str:
    if "\x00" in s or s.startswith(MARK):
        return MARK + s.replace(MARK, MARK + MARK).replace("\x00", MARK + "0")
    return s


def enc_opt(s: str | None) -> str | None:
    return None if s is None else enc(s)


def dec(s: str) -> str:
    return _ESCAPED.sub(_unescape, s[1:]) if s.startswith(MARK) else s


def dec_opt(s: str | None) -> str | None:
    return None if s is None else dec(s)


def enc_all(values: list[str]) -> list[str]:
    """`enc` of each; the common case (nothing to escape) is one C-speed scan."""
    probe = "".join(values)
    if "\x00" not in probe and MARK not in probe:
        return values
    return [enc(v) for v in values]


def enc_all_opt(values: Iterable[str | None]) -> list[str | None]:
    out = list(values)
    probe = "".join(v for v in out if v is not None)
    if "\x00" not in probe and MARK not in probe:
        return out
    return [enc_opt(v) for v in out]
