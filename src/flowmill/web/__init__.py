"""flowmill's HTTP side: the signals endpoint (`signals_app`) and the operator's dashboard
with its JSON API, `/metrics` and the same signals endpoint (`dashboard_app`)."""

from ._dashboard import dashboard_app
from ._signals import MAX_BODY_BYTES, MAX_ID_CHARS, MAX_JSON_DEPTH, json_depth_exceeds, signals_app

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_ID_CHARS",
    "MAX_JSON_DEPTH",
    "dashboard_app",
    "json_depth_exceeds",
    "signals_app",
]
