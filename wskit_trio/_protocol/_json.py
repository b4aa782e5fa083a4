"""The one place JSON is read and written, so the codec can change in one line.

orjson does the work (several times faster than the stdlib on the hot path);
the stdlib handles the few inputs orjson refuses, so what is accepted and what
comes out is the stdlib's strict behaviour:

* inbound: lone surrogate escapes (``"\\ud800"``) and numbers beyond a double's
  range are valid JSON; orjson refuses them, the stdlib parses them. NaN and
  Infinity are refused by both. Integers beyond 64 bits come back as floats (as
  in JavaScript, and so in every WS-Kit peer).
* outbound: integers beyond 64 bits, non-string keys and lone surrogates go
  through the stdlib; NaN and infinities (which orjson would write as ``null``)
  raise ``ValueError`` as the stdlib does.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_decoder = json.JSONDecoder(parse_constant=lambda name: _reject_constant(name))
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
#: Lone surrogates: valid in JSON text as escapes ("\\ud800"), so a client can send them,
#: but not encodable as UTF-8, so a text frame holding them cannot be sent.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are Python extensions, not JSON; other peers cannot parse them.
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str) -> Any:
    """Parse one JSON document; raises ``ValueError`` on anything that is not strict JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # Rare: garbage, or one of the inputs only the stdlib takes (module docstring).
        return _decoder.decode(text)


def dumps(obj: Any) -> str:
    """Compact JSON text (UTF-8 friendly: non-ASCII is not escaped).

    Text holding lone surrogates (which a client can smuggle in as ``\\udXXX``
    escapes) is escaped to ASCII instead, so the result is always valid UTF-8.
    """
    try:
        data = orjson.dumps(obj)
    except TypeError:  # ints beyond 64 bits, non-string keys, lone surrogates
        return _stdlib_dumps(obj)
    if b"null" in data:
        # orjson writes NaN and infinities as null; the stdlib refuses them (or, for
        # a real null, writes the same text).
        return _stdlib_dumps(obj)
    return data.decode("utf-8")


def _stdlib_dumps(obj: Any) -> str:
    text = _encoder.encode(obj)
    if not text.isascii() and _SURROGATE.search(text):
        return _ascii_encoder.encode(obj)
    return text
