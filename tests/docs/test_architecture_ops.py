"""The architecture page's table lists every member of the `Store` protocol, and no other."""

from __future__ import annotations

import re

from flowmill.store.contract import Store

from ._blocks import ROOT

PAGE = ROOT / "docs" / "explanation" / "architecture.md"
COMING = "*(coming)*"


def protocol_members() -> set[str]:
    """Every public method and attribute `Store` and the protocols it joins declare."""
    names: set[str] = set()
    for cls in Store.__mro__:
        if not cls.__module__.startswith("flowmill."):
            continue  # Protocol, Generic, object
        names.update(n for n in vars(cls) if not n.startswith("_"))
        names.update(n for n in vars(cls).get("__annotations__", {}) if not n.startswith("_"))
    return names


def table_rows() -> dict[str, str]:
    """Operation -> its line, from the page's table of the store protocol."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## The store protocol", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", section, flags=re.M)
    assert rows, f"{PAGE} lost its table of store operations"
    seen: dict[str, str] = {}
    for name, line in rows:
        assert name not in seen, f"{name} is in the table twice"
        seen[name] = line
    return seen


def test_protocol_members_are_found() -> None:
    members = protocol_members()
    assert {"tasks_claim", "leases_renew", "budget_define", "waitpoint_create"} <= members
    assert {"workflow_get", "open", "url"} <= members


def test_the_table_lists_every_store_operation() -> None:
    rows = table_rows()
    listed = {name for name, line in rows.items() if COMING not in line}
    members = protocol_members()
    assert sorted(members - listed) == [], f"add these to the table in {PAGE}"
    assert sorted(listed - members) == [], f"these are not Store operations: fix {PAGE}"


def test_operations_marked_coming_are_not_there_yet() -> None:
    coming = {name for name, line in table_rows().items() if COMING in line}
    landed = sorted(coming & protocol_members())
    assert landed == [], f"{landed} are in the Store protocol now: drop {COMING} in {PAGE}"


def test_every_line_says_what_it_does() -> None:
    for name, line in table_rows().items():
        assert len(line.replace(COMING, "").split()) >= 3, f"{name}: say what it does"
