"""The pages docs/howto/testing.md and integrations.md run, block by block, as a reader would.

A Python block marked `<!-- file: name.py -->` is saved under that name in a fresh folder;
each `python ...` line of a shell block then runs there as a subprocess and must exit 0
(the pages' pytest runs use the flowmill plugin). On PostgreSQL, `FLOWMILL_TEST_URL`
points the plugin at the server. (tests/docs, when present, runs the same blocks.)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from flowmill.testing._pg import pg_test_url, pg_unreachable

from ..conftest import CI

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["docs/howto/testing.md", "docs/howto/integrations.md"]

# Leaks (an unclosed store, a coroutine never awaited) fail the run.
STRICT = ("-W", "error::ResourceWarning", "-W", "error::RuntimeWarning")

_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_FILE = re.compile(r"<!--\s*file:\s*([^\n]*?)\s*-->\s*\Z")


def _blocks(page: str) -> list[tuple[str, str, str | None]]:
    """(language, code, file name or None) of each block, in order."""
    text = (ROOT / page).read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        mark = _FILE.search(text, 0, m.start())
        out.append((m.group(1).lower(), m.group(2), mark.group(1) if mark else None))
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def test_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url = pg_test_url()
    why = pg_unreachable(url)
    if why is not None:
        if CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {why}")
        pytest.skip(f"PostgreSQL unreachable: {why}")
    return url


@pytest.mark.parametrize("page", PAGES)
def test_every_block_of_the_page_runs(page: str, test_url: str | None, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWMILL_", "PYTEST_"))}
    if test_url is not None:
        env["FLOWMILL_TEST_URL"] = test_url
    ran = 0
    for lang, code, file in _blocks(page):
        if file is not None:
            assert lang == "python", f"{page}: {file} is not a Python block"
            (tmp_path / file).write_text(code, encoding="utf-8")
        elif lang in ("sh", "bash", "console"):
            for line in code.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                if not argv:
                    continue
                assert argv[0] == "python", f"{page}: cannot run {line!r}"
                done = subprocess.run(
                    [sys.executable, *STRICT, *argv[1:]],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=180,
                    check=False,
                )
                assert done.returncode == 0, f"{page}: {line}\n{done.stdout}\n{done.stderr}"
                ran += 1
        else:
            assert lang not in ("python", "py"), f"{page}: a Python block without a file mark"
    assert ran > 0
