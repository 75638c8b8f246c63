"""The reference pages list what the code has, and every link between pages resolves."""

from __future__ import annotations

import inspect
import re

import flowmill as fm

from ._blocks import ROOT, doc_pages

APP_PAGE = ROOT / "docs" / "reference" / "app.md"
API_PAGE = ROOT / "docs" / "reference" / "api.md"


def app_methods() -> set[str]:
    return {
        name
        for name, value in inspect.getmembers(fm.App)
        if not name.startswith("_") and callable(value)
    }


def test_app_page_lists_every_public_method() -> None:
    listed = re.findall(r"^- `([a-z_]+)\(", APP_PAGE.read_text(encoding="utf-8"), flags=re.M)
    assert len(listed) == len(set(listed)), "a method is listed twice"
    assert sorted(app_methods() - set(listed)) == [], f"add these App methods to {APP_PAGE}"
    assert sorted(set(listed) - app_methods()) == [], f"App has no such methods: fix {APP_PAGE}"


def test_api_page_names_the_app_methods_users_call() -> None:
    text = API_PAGE.read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if x.startswith("- `App("))
    for name in ["executor", "workflow", "workflow_run", "workflow_runs", "deliver_signal"]:
        assert f"`{name}`" in line, f"{API_PAGE}: the App line misses {name}"
    assert "`frames`" in line


def test_every_link_between_pages_resolves() -> None:
    broken = []
    for page in [*doc_pages(), "CONTRIBUTING.md", "CHANGELOG.md"]:
        path = ROOT / page
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", path.read_text("utf-8")):
            if not (path.parent / target).exists():
                broken.append(f"{page} -> {target}")
    assert broken == []


def test_index_links_every_page() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([^)#:\s]+)", index))
    pages = {p.removeprefix("docs/") for p in doc_pages() if p.startswith("docs/")}
    assert sorted(pages - linked - {"index.md"}) == [], "docs/index.md misses these pages"


def test_readme_states_the_license() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Apache License 2.0" in readme and "(LICENSE)" in readme
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
