"""Test support shipped with flowmill: the store conformance suite every backend runs.

from flowmill.testing import StoreConformance

class TestMyStore(StoreConformance):
    @pytest.fixture
    async def store(self): ...   # yield an open, empty store; close it afterwards
"""

from .conformance.suite import StoreConformance

__all__ = ["StoreConformance"]
