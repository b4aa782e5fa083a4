"""Topic history in Valkey (delivery.md §11): the keys, the two scripts, the replies.

Each topic with history has two keys, both expiring ``History.ttl`` after the
topic's last publish:

* ``<prefix>h:<topic>``, a stream of the topic's recent envelopes, trimmed to
  about ``History.size`` entries (``XADD MAXLEN ~``). An entry's ID is
  ``<offset>-0`` and its one field ``e`` is the envelope JSON, position included,
  byte for byte what was published.
* ``<prefix>hm:<topic>``, a hash: ``epoch`` (the name of this unbroken history)
  and ``offset`` (the latest offset given out). No topic's stream can have this
  name: after the prefix, ``h:`` and ``hm`` differ in their second character.

:data:`PUBLISH_SCRIPT` assigns the next offset, appends and publishes in one
atomic step, so stream order, offset order and delivery order agree on every
instance. Whenever the hash is missing (never published, flushed, evicted,
expired, or a Valkey restarted without persistence) the script starts a new
epoch, named by the caller (``uuid4().hex``), at offset 0, and drops whatever is
left of the old stream: its offsets mean nothing in the new epoch.

:data:`READ_SCRIPT` answers "what came after offset N" atomically. A topic read
before its first publish gets its epoch then (offset 0, same TTL), exactly as a
publish would have created it, so the position handed out, ``(0, epoch)``, stays
valid for the messages that follow (as in the memory backend); the publish that
follows continues that epoch at offset 1.

Both scripts run with ``EVALSHA``, falling back to ``EVAL`` on ``NOSCRIPT`` (a
restarted or flushed script cache).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any, Final

import attrs

from .._errors import ValkeyError
from .._protocol.pubsub import Envelope, History, HistorySlice, Position
from ._connection import Arg, ValkeyConnection

__all__ = [
    "PUBLISH_SCRIPT",
    "READ_SCRIPT",
    "Script",
    "history_keys",
    "new_epoch",
    "parse_publish_reply",
    "parse_read_reply",
    "publish_args",
    "read_args",
    "run_script",
]


@attrs.frozen
class Script:
    """A Lua script and its SHA1 (what ``EVALSHA`` names it by)."""

    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


#: KEYS[1] = stream, KEYS[2] = meta hash.
#: ARGV[1] = channel, ARGV[2] = envelope JSON without a position (an object: it
#: ends with "}"), ARGV[3] = the epoch to start if the topic has none, ARGV[4] =
#: size (MAXLEN ~), ARGV[5] = TTL in ms.
#: Returns {offset, epoch}. The published JSON is ARGV[2] with ',"offset":N,
#: "epoch":"E"' spliced in before its last brace: exactly ``Envelope.to_json``
#: of the envelope with its position (which writes those two keys last).
#: XADD is the first write: if it fails (OOM...), nothing has changed.
PUBLISH_SCRIPT: Final = Script("""
local meta = redis.call("HMGET", KEYS[2], "epoch", "offset")
local epoch = meta[1]
local offset
if not epoch then
  epoch = ARGV[3]
  offset = 1
  redis.call("DEL", KEYS[1])
else
  offset = (tonumber(meta[2]) or 0) + 1
end
local id = string.format("%d", offset)
local body = string.sub(ARGV[2], 1, -2) .. ',"offset":' .. id .. ',"epoch":'
  .. cjson.encode(epoch) .. "}"
redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[4], id .. "-0", "e", body)
redis.call("HSET", KEYS[2], "epoch", epoch, "offset", id)
redis.call("PEXPIRE", KEYS[1], ARGV[5])
redis.call("PEXPIRE", KEYS[2], ARGV[5])
redis.call("PUBLISH", ARGV[1], body)
return {offset, epoch}
""")

#: KEYS[1] = stream, KEYS[2] = meta hash.
#: ARGV[1] = after ("" = only the epoch and the latest offset), ARGV[2] = size,
#: ARGV[3] = the epoch to start if the topic has none, ARGV[4] = TTL in ms.
#: Returns {epoch, latest, envelope JSON...}: the kept envelopes after ARGV[1], in
#: offset order, at most the newest ``size`` of them.
READ_SCRIPT: Final = Script("""
local meta = redis.call("HMGET", KEYS[2], "epoch", "offset")
local epoch = meta[1]
local latest = tonumber(meta[2]) or 0
if not epoch then
  epoch = ARGV[3]
  latest = 0
  redis.call("DEL", KEYS[1])
  redis.call("HSET", KEYS[2], "epoch", epoch, "offset", "0")
  redis.call("PEXPIRE", KEYS[2], ARGV[4])
end
local reply = {epoch, latest}
if ARGV[1] ~= "" then
  local first = math.max(tonumber(ARGV[1]) + 1, latest - tonumber(ARGV[2]) + 1, 1)
  if first <= latest then
    local entries = redis.call("XRANGE", KEYS[1],
      string.format("%d-0", first), string.format("%d-0", latest))
    for i = 1, #entries do
      local fields = entries[i][2]
      reply[#reply + 1] = fields[2]
    end
  end
end
return reply
""")


def history_keys(prefix: str, topic: str) -> tuple[str, str]:
    """The topic's stream and meta hash."""
    return f"{prefix}h:{topic}", f"{prefix}hm:{topic}"


def new_epoch() -> str:
    return uuid.uuid4().hex


def _ttl_ms(history: History) -> int:
    return max(1, math.ceil(history.ttl * 1000))


def publish_args(prefix: str, history: History, envelope: Envelope) -> tuple[Arg, ...]:
    """``numkeys, KEYS..., ARGV...`` for :data:`PUBLISH_SCRIPT` (``envelope`` has no
    position yet)."""
    data = envelope.to_json()
    if not data.endswith("}"):  # pragma: no cover - to_json always writes an object
        raise ValueError("an envelope's JSON must be an object")
    stream, meta = history_keys(prefix, envelope.topic)
    channel = prefix + envelope.topic
    return (2, stream, meta, channel, data, new_epoch(), history.size, _ttl_ms(history))


def parse_publish_reply(reply: Any) -> Position:
    offset, epoch = reply
    return Position(int(offset), epoch.decode() if isinstance(epoch, bytes) else str(epoch))


def read_args(prefix: str, history: History, topic: str, after: int | None) -> tuple[Arg, ...]:
    """``numkeys, KEYS..., ARGV...`` for :data:`READ_SCRIPT`."""
    stream, meta = history_keys(prefix, topic)
    since = "" if after is None else str(int(after))
    return (2, stream, meta, since, history.size, new_epoch(), _ttl_ms(history))


def parse_read_reply(reply: Any, topic: str, after: int | None) -> HistorySlice:
    """The slice: ``complete`` unless an envelope after ``after`` is missing (trimmed,
    expired, evicted, or unreadable)."""
    raw_epoch, latest = reply[0], int(reply[1])
    epoch = raw_epoch.decode() if isinstance(raw_epoch, bytes) else str(raw_epoch)
    if after is None:
        return HistorySlice(epoch, latest)
    envelopes: list[Envelope] = []
    expected = max(after, 0) + 1
    complete = True
    for data in reply[2:]:
        try:
            envelope = Envelope.from_json(data)
        except ValueError:
            complete = False
            continue
        if envelope.topic != topic or envelope.offset is None or envelope.epoch != epoch:
            complete = False
            continue
        if envelope.offset != expected:
            complete = False  # a gap: the head was trimmed (or an entry is unreadable)
        envelopes.append(envelope)
        expected = envelope.offset + 1
    if expected <= latest:
        complete = False  # the newest ones are missing (the stream was evicted)
    return HistorySlice(epoch, latest, tuple(envelopes), complete)


async def run_script(conn: ValkeyConnection, script: Script, args: tuple[Arg, ...]) -> Any:
    """``EVALSHA``, or ``EVAL`` when Valkey does not have the script (yet, or any more).
    Not for publishes: after a ``NOSCRIPT`` the retries of calls in flight would go
    out in whatever order their tasks wake (see ``ValkeyPubSub.publish``)."""
    try:
        return await conn.execute("EVALSHA", script.sha, *args)
    except ValkeyError as exc:
        if exc.kind != "NOSCRIPT":
            raise
    return await conn.execute("EVAL", script.source, *args)
    try:
        return await conn.execute("EVALSHA", script.sha, *args)
    except ValkeyError as exc:
        if exc.kind != "NOSCRIPT":
            raise
    return await conn.execute("EVAL", script.source, *args)
