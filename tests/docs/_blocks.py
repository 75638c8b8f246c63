"""Code blocks of the README and docs/**/*.md, with the HTML comments placed above them.

`<!-- skip: reason -->` directly above a block: the block cannot run in a test (a server,
a process that runs until stopped); the test reports the reason instead.
`<!-- file: name.py -->` directly above a Python block: the block is a module the text
asks the reader to save under that name; it is written there (and imported), not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGS = {"python": "python", "sh": "shell", "bash": "shell", "console": "shell"}

_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARK = re.compile(r"<!--\s*(skip|file):\s*([^\n]*?)\s*-->\s*\Z", re.S)


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str  # "python" or "shell"
    code: str
    skip: str | None = None
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def doc_pages() -> list[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p.relative_to(ROOT).as_posix() for p in pages]


def blocks(page: str) -> list[Block]:
    """The Python and shell blocks of a page, in order."""
    text = (ROOT / page).read_text(encoding="utf-8")
    out: list[Block] = []
    for m in _FENCE.finditer(text):
        lang = RUN_LANGS.get(m.group(1).lower())
        if lang is None:
            continue
        mark = _MARK.search(text, 0, m.start())
        skip = file = None
        if mark is not None:
            if mark.group(1) == "skip":
                skip = mark.group(2)
            else:
                file = mark.group(2)
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(page, line, lang, m.group(2), skip, file))
    return out
