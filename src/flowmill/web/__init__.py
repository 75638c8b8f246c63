"""flowmill's HTTP side: the signals endpoint (`signals_app`) and, mounted beside it, the
operator's dashboard, its JSON API and `/metrics` (`dashboard_app`)."""

from ._signals import MAX_BODY_BYTES, MAX_ID_CHARS, MAX_JSON_DEPTH, json_depth_exceeds, signals_app

__all__ = ["MAX_BODY_BYTES", "MAX_ID_CHARS", "MAX_JSON_DEPTH", "json_depth_exceeds", "signals_app"]
