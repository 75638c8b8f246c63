"""Capabilities: every backend sets them, and a conformance test of a capability the
store lacks is skipped with a reason that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowmill.store import open_store
from flowmill.store.contract import Capabilities
from flowmill.testing.conformance._util import CAPABILITIES, require


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://:memory:", Capabilities(durable=False, local_file=False)),
        ("sqlite:///{tmp}/jobs.db", Capabilities(durable=True, local_file=True)),
        ("postgresql://u@localhost/db", Capabilities(durable=True, local_file=False)),
    ],
)
def test_every_backend_sets_its_capabilities(
    url: str, expected: Capabilities, tmp_path: Path
) -> None:
    assert open_store(url.format(tmp=tmp_path)).capabilities == expected


def test_a_missing_capability_skips_with_its_name() -> None:
    memory = open_store("sqlite://:memory:")
    with pytest.raises(pytest.skip.Exception, match="SQLiteStore lacks capability 'durable'"):
        require(memory, "durable")


def test_a_present_capability_does_not_skip(tmp_path: Path) -> None:
    require(open_store(f"sqlite:///{tmp_path}/jobs.db"), "local_file")


def test_an_unknown_capability_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="no capability 'durabel'"):
        require(open_store("sqlite://:memory:"), "durabel")
    assert {"durable", "local_file"} == CAPABILITIES
