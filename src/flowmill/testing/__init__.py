"""Test support shipped with flowmill: the store conformance suite every backend runs.

from flowmill.testing import StoreConformance

class TestMyStore(StoreConformance):
    @pytest.fixture
    async def store(self): ...   # yield an open, empty store; close it afterwards
"""

from .._docgen import mermaid_diagram, states_table
from ._asserts import ANY, assert_not_submitted, assert_submitted
from ._drain import DrainReport, drain
from ._isolate import Submitted, isolated
from .conformance.suite import StoreConformance

__all__ = ["StoreConformance", "mermaid_diagram", "states_table"]
__all__ += ["ANY", "DrainReport", "Submitted", "assert_not_submitted", "assert_submitted"]
__all__ += ["drain", "isolated"]
