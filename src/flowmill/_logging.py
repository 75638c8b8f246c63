"""Log output for `flowmill` processes: a text or a JSON-lines formatter that shows the
structured fields the worker passes as `extra=` (task_id, kind, attempt, ...)."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

FIELDS = ("worker_id", "task_id", "kind", "queue", "attempt", "outcome", "duration_ms")
"""The structured fields the worker sets, in the order the text format shows them."""

# Every attribute a stdlib LogRecord has of its own; anything else came from `extra=`.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_PASSWORD = re.compile(r"(?P<head>://[^:/@]*:)(?P<pw>[^@/]*)(?P<tail>@)")


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***` (safe to log)."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", url)


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed as `extra=`, known fields first."""
    found = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    ordered = {k: found.pop(k) for k in FIELDS if k in found}
    ordered.update(sorted(found.items()))
    return ordered


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`, then the traceback if there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = " ".join(f"{k}={_text(v)}" for k, v in extras(record).items() if v is not None)
        return f"{line} [{pairs}]" if pairs else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the extra fields, and `exc`
    (the formatted traceback) when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in extras(record).items():
            out.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _text(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


def setup(level: str | int, fmt: LogFormat = "text") -> None:
    """Send every record at `level` and above to stderr in `fmt`; replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
