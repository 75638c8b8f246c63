"""The flowmill pytest plugin (entry point `pytest11`): fixtures `flowmill_app`, `flowmill_clock`.

`flowmill_app` is *your* app (`--flowmill-app module:app`, or `flowmill_app = module:app`
in the ini file), re-pointed for one test to a fresh SQLite file, or to a schema of its
own on the PostgreSQL server of `--flowmill-url` / `$FLOWMILL_TEST_URL`, with the
`flowmill_clock` (a `ManualClock`) as its clock; submissions are recorded for
`assert_submitted`; it is closed, and put back as it was, after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .._app import App
from .._clock import ManualClock
from .._loader import load_app
from ..errors import AppLoadError
from ._isolate import isolated

URL_ENV = "FLOWMILL_TEST_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flowmill")
    group.addoption(
        "--flowmill-app",
        dest="flowmill_app",
        default=None,
        help="the App the flowmill_app fixture gives tests, as module:attribute",
    )
    group.addoption(
        "--flowmill-url",
        dest="flowmill_url",
        default=None,
        help=f"a PostgreSQL URL for flowmill_app (default ${URL_ENV}, else a SQLite file)",
    )
    parser.addini("flowmill_app", "the App the flowmill_app fixture gives tests (module:attr)")


@pytest.fixture
def flowmill_clock() -> ManualClock:
    """The clock of `flowmill_app`: it moves only when the test (or `drain`) advances it."""
    return ManualClock()


@pytest.fixture
def flowmill_app(
    request: pytest.FixtureRequest, flowmill_clock: ManualClock, tmp_path: Path
) -> Iterator[App]:
    """Your app on a store of its own for this test (see the module docstring)."""
    spec = request.config.getoption("flowmill_app") or request.config.getini("flowmill_app")
    if not spec:
        pytest.fail(
            "flowmill_app: name your app with --flowmill-app module:app "
            "or `flowmill_app = module:app` in the pytest ini options",
            pytrace=False,
        )
    try:
        app = load_app(str(spec))
    except AppLoadError as exc:
        pytest.fail(f"flowmill_app: {exc}", pytrace=False)
    base = request.config.getoption("flowmill_url") or os.environ.get(URL_ENV)
    with _test_store(base, tmp_path) as url, isolated(app, url, clock=flowmill_clock):
        try:
            yield app
        finally:
            app.close_sync()


@contextlib.contextmanager
def _test_store(base: str | None, tmp_path: Path) -> Iterator[str]:
    """A store URL for one test: a SQLite file in its tmp_path, or a PostgreSQL schema of
    its own (dropped afterwards); any other URL is used as given."""
    if not base:
        yield f"sqlite:///{tmp_path / 'flowmill.db'}"
    elif base.startswith(("postgres://", "postgresql://")):
        from ..store.postgres._errors import split_schema
        from ._pg import drop_pg_schema

        schema = f"fm_test_{os.urandom(6).hex()}"
        try:
            yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
        finally:
            asyncio.run(drop_pg_schema(split_schema(base)[0], schema))
    else:
        yield base


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    # An async test opened the app on its own event loop, which the async plugin closes
    # before this plugin's fixtures are torn down: close the app while that loop exists.
    app = getattr(item, "funcargs", {}).get("flowmill_app")
    if isinstance(app, App):
        app.close_sync()
