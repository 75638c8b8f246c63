"""Test support shipped with flowmill: the store conformance suite every backend runs.

from flowmill.testing import StoreConformance

class TestMyStore(StoreConformance):
    @pytest.fixture
    async def store(self): ...   # yield an open, empty store; close it afterwards
"""

from .._docgen import mermaid_diagram, states_table
from .conformance.suite import StoreConformance
from ._drain import DrainReport, drain

__all__ = ["StoreConformance", "mermaid_diagram", "states_table"]
__all__ += ["DrainReport", "drain"]
