"""The backend interface: the `Store` protocol, its params and records, and `Capabilities`."""

from .capabilities import Capabilities, MigrateResult
from .tasks import Store

__all__ = ["Capabilities", "MigrateResult", "Store"]
