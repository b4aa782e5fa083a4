"""The one place JSON is read and written, so the codec can change in one line."""

from __future__ import annotations

import json
from typing import Any

_decoder = json.JSONDecoder(parse_constant=lambda name: _reject_constant(name))
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are Python extensions, not JSON; other peers cannot parse them.
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str) -> Any:
    """Parse one JSON document; raises ``ValueError`` on anything that is not strict JSON."""
    return _decoder.decode(text)


def dumps(obj: Any) -> str:
    """Compact JSON text (UTF-8 friendly: non-ASCII is not escaped)."""
    return _encoder.encode(obj)
