"""Pub/sub on the wire between instances (docs/protocol.md §9), and topic rules. Pure.

An :class:`Envelope` is what one instance publishes to the others (through
Valkey) and what every instance turns into one delivery frame for its local
subscribers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, Literal, TypeAlias

import attrs

from . import _json
from .frames import NO_PAYLOAD, encode_frame

__all__ = [
    "DEFAULT_TOPIC_PATTERN",
    "NO_PAYLOAD",
    "POSITION_META_KEYS",
    "Capability",
    "Envelope",
    "History",
    "HistorySlice",
    "Position",
    "PublishResult",
    "Recovery",
    "check_topic",
]

#: Meta keys the server stamps on a delivery to a subscription with positions
#: (delivery.md §11.4); reserved: clients cannot send them, schemas cannot declare them.
POSITION_META_KEYS: Final = frozenset({"topic", "offset", "epoch"})

#: Topics are short, printable and free of wildcards by default.
DEFAULT_TOPIC_PATTERN: Final = re.compile(r"^[A-Za-z0-9:_./-]{1,128}$")


Capability: TypeAlias = Literal["exact", "unknown"]


@attrs.frozen
class Position:
    """Where a message stands in its topic's history (delivery.md §11.2): ``offset``
    grows by 1 per message (the first is 1) within one unbroken history, ``epoch``.
    An offset means nothing outside its epoch. A frozen attrs class, so an app can
    carry ``since: Position | None`` in its own message schemas."""

    offset: int = attrs.field(validator=attrs.validators.ge(0))
    epoch: str


@attrs.frozen
class Recovery:
    """What ``ctx.topics.subscribe(topic, since=...)`` achieved (delivery.md §12):
    whether every message after ``since`` was replayed (``recovered``), how many
    (``replayed``), and the topic's latest position."""

    recovered: bool
    position: Position
    replayed: int = 0


@attrs.frozen(kw_only=True)
class History:
    """Keep each topic's recent messages (delivery.md §11.1): at most about ``size``
    of them, until ``ttl`` seconds after the topic's last publish. ``topics`` limits
    it to some topics: a predicate on the topic name, or a regex it must match."""

    size: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    ttl: float = attrs.field(default=600.0, validator=attrs.validators.gt(0))
    topics: Callable[[str], bool] | re.Pattern[str] | None = None

    def covers(self, topic: str) -> bool:
        if self.topics is None:
            return True
        if isinstance(self.topics, re.Pattern):
            return self.topics.fullmatch(topic) is not None
        return bool(self.topics(topic))


@attrs.frozen
class HistorySlice:
    """A backend's answer to "what came after ``offset``" for one topic: the topic's
    ``epoch`` and ``latest`` offset, the ``envelopes`` after the asked offset in
    offset order (at most the history's size), and whether that is all of them
    (``complete``: false when some were already trimmed or expired). A topic that
    never had a message has ``latest == 0``."""

    epoch: str
    latest: int
    envelopes: tuple[Envelope, ...] = ()
    complete: bool = True


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
    #: The message's place in its topic's history, for topics with history.
    position: Position | None = None


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
    #: Set by the backend for a topic with history (delivery.md §11.2).
    offset: int | None = None
    epoch: str | None = None

    @property
    def position(self) -> Position | None:
        if self.offset is None or self.epoch is None:
            return None
        return Position(self.offset, self.epoch)

    def to_json(self) -> str:
        obj: dict[str, Any] = {"topic": self.topic, "type": self.type}
        if self.payload is not NO_PAYLOAD:
            obj["payload"] = self.payload
        if self.meta is not None:
            obj["meta"] = self.meta
        obj["origin"] = self.origin
        if self.exclude is not None:
            obj["exclude"] = self.exclude
        if self.offset is not None:
            obj["offset"] = self.offset
            obj["epoch"] = self.epoch
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
        offset, epoch = obj.get("offset"), obj.get("epoch")
        if offset is not None and (type(offset) is not int or not isinstance(epoch, str)):
            raise ValueError("envelope offset must be an integer with a string epoch")
        payload = obj.get("payload", NO_PAYLOAD)
        return cls(topic, msg_type, payload, meta, str(origin), exclude, offset, epoch)

    def frame(self) -> str:
        """The delivery frame: ``{"type", "payload"}`` plus ``meta`` only when given."""
        return encode_frame(self.type, self.meta, self.payload)

    def frame_with_position(self) -> str:
        """The delivery frame for a subscription with positions: the publisher's meta
        plus ``topic``, ``offset`` and ``epoch`` (delivery.md §11.4)."""
        meta = dict(self.meta) if self.meta else {}
        meta["topic"] = self.topic
        if self.offset is not None:
            meta["offset"] = self.offset
            meta["epoch"] = self.epoch
        return encode_frame(self.type, meta, self.payload)


def check_topic(topic: Any, pattern: re.Pattern[str] = DEFAULT_TOPIC_PATTERN) -> str | None:
    """Why ``topic`` is not acceptable, or ``None`` if it is."""
    if not isinstance(topic, str):
        return "topic must be a string"
    if not pattern.fullmatch(topic):
        return f"topic {topic[:140]!r} does not match {pattern.pattern}"
    return None
