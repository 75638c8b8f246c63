"""Test support shipped with flowmill: helpers for users' own tests, and the store
conformance suite every backend runs.

For your tasks: `await app.drain()` (or `drain(app)`), `assert_submitted`,
`assert_not_submitted`, `isolated(app, url)`, and the pytest plugin's `flowmill_app` and
`flowmill_clock` fixtures (see docs/howto/testing.md).

For a backend:

from flowmill.testing import StoreConformance

class TestMyStore(StoreConformance):
    @pytest.fixture
    async def store(self): ...   # yield an open, empty store; close it afterwards
"""

from ._asserts import ANY, assert_not_submitted, assert_submitted
from ._drain import DrainReport, drain
from ._isolate import Submitted, isolated
from .conformance.suite import StoreConformance

__all__ = [
    "ANY",
    "DrainReport",
    "StoreConformance",
    "Submitted",
    "assert_not_submitted",
    "assert_submitted",
    "drain",
    "isolated",
]
