"""The pytest plugin, run as users run it: a project of their own, in a pytest subprocess."""

from __future__ import annotations

import os

import pytest

from flowmill.testing._pg import pg_test_url, pg_unreachable

from ..conftest import CI

pytest_plugins = ["pytester"]

USER_APP = """
from dataclasses import dataclass
from datetime import timedelta

import flowmill as fm

app = fm.App("sqlite:///never-used-by-tests.db")


@dataclass
class Signup:
    email: str


@app.task(retry=fm.Retry(max_attempts=3, backoff=fm.Fixed(timedelta(minutes=1))))
def send_welcome(s: Signup, ctx: fm.Context) -> str:
    if ctx.attempt == 1:
        raise RuntimeError("mail server busy")
    return f"sent to {s.email}"


@app.task
async def audit(email: str) -> None:
    return None
"""

USER_TESTS = """
from datetime import timedelta

import pytest

import flowmill as fm
from flowmill.testing import assert_not_submitted, assert_submitted

from jobs import Signup, app, audit, send_welcome

seen = []


def test_sync_code_submits_and_drains(flowmill_app, flowmill_clock):
    assert flowmill_app is app and app.clock is flowmill_clock
    start = flowmill_clock.now
    h = app.submit_sync(send_welcome, Signup("a@example.com"))
    seen.append(h.id)
    report = app.drain_sync()
    assert (report.completed, report.retried) == (1, 1)
    assert flowmill_clock.now - start == timedelta(minutes=1)
    assert h.result() == "sent to a@example.com"
    assert_submitted(app, send_welcome, Signup("a@example.com"), count=1)
    assert_not_submitted(app, audit)


async def test_async_code_gets_a_fresh_store(flowmill_app):
    with pytest.raises(fm.TaskNotFound):
        await flowmill_app.get(seen[0])
    assert_not_submitted(flowmill_app, send_welcome)
    h = await flowmill_app.submit(audit, "b@example.com")
    assert (await flowmill_app.drain()).completed == 1
    assert await h.result() is None
    assert_submitted(flowmill_app, "jobs.audit", "b@example.com")


def test_the_app_is_put_back_after_each_test():
    assert app.url == "sqlite:///never-used-by-tests.db"
    assert sorted(app.registry) == sorted([send_welcome.name, audit.name])
"""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(jobs=USER_APP, test_jobs=USER_TESTS)
    pytester.makeini(INI + "flowmill_app = jobs:app\n")
    return pytester


def test_the_fixture_gives_the_users_app_on_a_fresh_store_per_test(
    project: pytest.Pytester,
) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert not (project.path / "never-used-by-tests.db").exists()


def test_the_command_line_names_the_app(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(jobs=USER_APP, test_jobs=USER_TESTS)
    pytester.makeini(INI)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--flowmill-app", "jobs:app")
    result.assert_outcomes(passed=3)


def test_without_an_app_the_fixture_says_how_to_name_one(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_x="def test_x(flowmill_app):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--flowmill-app module:app*"])


def test_a_failed_assertion_lists_what_was_submitted(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_fail="""
from jobs import Signup, app, send_welcome
from flowmill.testing import assert_submitted

def test_wrong_payload(flowmill_app):
    app.submit_sync(send_welcome, Signup("a@example.com"), key="k1")
    assert_submitted(app, send_welcome, Signup("z@example.com"))
"""
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "test_fail.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*expected *send_welcome with payload Signup(email='z@example.com') to be "
            "submitted at least once, found 0; submitted in this test:",
            '*- jobs.send_welcome {"email":"a@example.com"} key=\'k1\' (id *)',
        ]
    )


def test_on_postgresql_each_test_gets_a_schema_of_its_own(project: pytest.Pytester) -> None:
    url = pg_test_url()
    why = pg_unreachable(url)
    if why is not None:
        if CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {why}")
        pytest.skip(f"PostgreSQL unreachable: {why}")
    env_before = os.environ.get("FLOWMILL_TEST_URL")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--flowmill-url", url)
    result.assert_outcomes(passed=3)
    assert os.environ.get("FLOWMILL_TEST_URL") == env_before
