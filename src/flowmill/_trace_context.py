"""The submit side of tracing: store the current span's W3C trace context with a task.

A leaf (`_rows` imports it on every submit): it imports nothing of flowmill's, and nothing
of OpenTelemetry's unless the program already has (then there may be a span to carry).
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping

TRACE_TAG = "traceparent"


def inject_trace_context(tags: MutableMapping[str, str]) -> None:
    """Store the current span's context in `tags` (`traceparent`), if there is one."""
    if "opentelemetry.trace" not in sys.modules or TRACE_TAG in tags:
        return  # OpenTelemetry never imported: there is no span to carry
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if TRACE_TAG in carrier:
        tags[TRACE_TAG] = carrier[TRACE_TAG]
