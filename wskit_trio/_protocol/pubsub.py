"""Pub/sub on the wire between instances (docs/protocol.md §9), and topic rules. Pure.

An :class:`Envelope` is what one instance publishes to the others (through
Valkey) and what every instance turns into one delivery frame for its local
subscribers.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, TypeAlias

import attrs

from . import _json
from .frames import NO_PAYLOAD, encode_frame

__all__ = [
    "DEFAULT_TOPIC_PATTERN",
    "NO_PAYLOAD",
    "Capability",
    "Envelope",
    "PublishResult",
    "check_topic",
]

#: Topics are short, printable and free of wildcards by default.
DEFAULT_TOPIC_PATTERN: Final = re.compile(r"^[A-Za-z0-9:_./-]{1,128}$")


Capability: TypeAlias = Literal["exact", "unknown"]


@attrs.frozen
class PublishResult:
    """What a publish achieved.

    ``ok`` means the backend accepted the message. ``matched`` is the number of
    subscribers it was handed to when the backend can know it (``capability ==
    "exact"``), else ``None``. On failure ``error`` is an error code and
    ``retryable`` says whether trying again later may succeed.
    """

    ok: bool
    matched: int | None = None
    capability: Capability = "exact"
    error: str | None = None
    retryable: bool = False


@attrs.frozen
class Envelope:
    """One published message: topic, wire type, JSON payload, optional meta, the
    publishing instance (``origin``) and a client id to skip (``exclude``)."""

    topic: str
    type: str
    payload: Any
    meta: dict[str, Any] | None = None
    origin: str = ""
    exclude: str | None = None

    def to_json(self) -> str:
        obj: dict[str, Any] = {"topic": self.topic, "type": self.type}
        if self.payload is not NO_PAYLOAD:
            obj["payload"] = self.payload
        if self.meta is not None:
            obj["meta"] = self.meta
        obj["origin"] = self.origin
        if self.exclude is not None:
            obj["exclude"] = self.exclude
        return _json.dumps(obj)

    @classmethod
    def from_json(cls, data: str | bytes) -> Envelope:
        """Parse an envelope; raises ``ValueError`` if it is not one."""
        obj = _json.loads(data if isinstance(data, str) else data.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("envelope must be a JSON object")
        topic, msg_type = obj.get("topic"), obj.get("type")
        meta, exclude, origin = obj.get("meta"), obj.get("exclude"), obj.get("origin", "")
        if not isinstance(topic, str) or not isinstance(msg_type, str):
            raise ValueError("envelope needs string topic and type")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError("envelope meta must be an object")
        if exclude is not None and not isinstance(exclude, str):
            raise ValueError("envelope exclude must be a string")
        payload = obj.get("payload", NO_PAYLOAD)
        return cls(topic, msg_type, payload, meta, str(origin), exclude)

    def frame(self) -> str:
        """The delivery frame: ``{"type", "payload"}`` plus ``meta`` only when given."""
        return encode_frame(self.type, self.meta, self.payload)


def check_topic(topic: Any, pattern: re.Pattern[str] = DEFAULT_TOPIC_PATTERN) -> str | None:
    """Why ``topic`` is not acceptable, or ``None`` if it is."""
    if not isinstance(topic, str):
        return "topic must be a string"
    if not pattern.fullmatch(topic):
        return f"topic {topic[:140]!r} does not match {pattern.pattern}"
    return None
