"""JSON forms of the small structured columns every backend stores (errors, tags)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from ._base import ErrorInfo

_enc = msgspec.json.Encoder()
_error_dec = msgspec.json.Decoder(ErrorInfo)
_tags_dec = msgspec.json.Decoder(dict[str, str])


def encode_error(error: ErrorInfo | None) -> str | None:
    return None if error is None else _enc.encode(error).decode()


def decode_error(data: str | bytes | None) -> ErrorInfo | None:
    return None if data is None else _error_dec.decode(data)


def encode_tags(tags: Mapping[str, str]) -> str | None:
    return _enc.encode(dict(tags)).decode() if tags else None


def decode_tags(data: str | bytes | None) -> dict[str, str]:
    return {} if data is None else _tags_dec.decode(data)
