"""How a suspension's timeout is recorded: every backend writes exactly these."""

from __future__ import annotations

from ..contract.tasks import ErrorInfo

SUSPEND_CANCEL_REASON = "suspend timeout"
SUSPEND_TIMEOUT_ERROR = ErrorInfo(
    "SuspendTimeout", "the task was suspended longer than its timeout", "suspend_timeout"
)
SUSPEND_EXPIRED_ERROR = ErrorInfo(
    "Expired", "the task was suspended longer than its timeout", "suspend_timeout"
)
SUSPEND_CANCEL_ERROR = ErrorInfo("Cancelled", SUSPEND_CANCEL_REASON, "cancelled")
