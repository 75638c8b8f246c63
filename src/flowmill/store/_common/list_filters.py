"""What the SQL backends share to serve `tasks_list`'s filters from indexes: a prefix as an
index range (`value >= prefix AND value < prefix_end(prefix)`) and the image of a tag
that their tag index holds."""

from __future__ import annotations

import msgspec

from ..contract.tasks import TaskRecord

_MAX = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def prefix_end(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix`, in code point
    order (the order of SQLite's BINARY and PostgreSQL's "C" collation on UTF-8); None when
    there is none (the prefix is empty or all U+10FFFF): the range is then open above."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if last in _SURROGATES:
            last = _SURROGATES.stop
        if last <= _MAX:
            return "".join(chars) + chr(last)
    return None


def tag_image(text: str) -> str:
    """What a tag index holds for a tag key or value: the string with each NUL turned into
    U+0001 "0". Migration 0005 applies that to the stored JSON before splitting it (SQLite's
    JSON functions cut a string at NUL; PostgreSQL's `text` cannot hold one), so this
    applies it to the same JSON text of the wanted string. Two tags can share an image:
    a match is checked with `has_tag`."""
    encoded = msgspec.json.encode(text).replace(b"\\u0000", b"\\u00010")
    image: str = msgspec.json.decode(encoded)
    return image


def has_tag(r: TaskRecord, key: str, value: str | None) -> bool:
    """Whether the task has tag `key` (with `value`, unless that is None)."""
    return key in r.tags and (value is None or r.tags[key] == value)
