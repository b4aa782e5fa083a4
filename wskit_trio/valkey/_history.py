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

On a Valkey Cluster the names carry the topic as hash tag (``<prefix>h:{<topic>}``,
``<prefix>hm:{<topic>}``, channel ``<prefix>{<topic>}``; see ``_commands.Layout``),
so each script runs on the one shard owning the topic, and its variant
(:data:`CLUSTER_PUBLISH_SCRIPT`, :data:`CLUSTER_READ_SCRIPT`) publishes with
``SPUBLISH`` and also keeps the replication ID of the primary that wrote the history
(``writer``): a history last written by another primary, that is, on a replica
promoted by a failover, starts a new epoch, since the replica may lack messages
the old primary published (and subscribers received). So a failover costs the
shard's topics their recovery (``recovered=False``, the client reloads), never a
silent skip.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any, Final

import attrs

from .._errors import ValkeyError
from .._protocol.pubsub import Envelope, History, HistorySlice, Position
from ._commands import Commands, Layout
from ._connection import Arg

__all__ = [
    "CLUSTER_PUBLISH_SCRIPT",
    "CLUSTER_READ_SCRIPT",
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


#: What the cluster variants of the scripts add (see :func:`_variant`): the
#: replication ID of the primary running the script, kept as the meta hash's
#: ``writer``. A primary keeps its ID while it runs; a replica promoted after a
#: failover gets a new one. A history last written under another ID may lack the
#: newest messages its old primary published (replication is asynchronous, and
#: subscribers may have received them), and reusing their offsets would make a
#: later recovery skip the new ones silently: so it starts a new epoch instead,
#: exactly as a lost history does (delivery.md §11.2).
_WRITER = 'local writer = string.match(redis.call("INFO", "replication"), "master_replid:(%x+)")\n'

#: KEYS[1] = stream, KEYS[2] = meta hash.
#: ARGV[1] = channel, ARGV[2] = envelope JSON without a position (an object: it
#: ends with "}"), ARGV[3] = the epoch to start if the topic has none, ARGV[4] =
#: size (MAXLEN ~), ARGV[5] = TTL in ms.
#: Returns {offset, epoch}. The published JSON is ARGV[2] with ',"offset":N,
#: "epoch":"E"' spliced in before its last brace: exactly ``Envelope.to_json``
#: of the envelope with its position (which writes those two keys last).
#: XADD is the first write: if it fails (OOM...), nothing has changed.
_PUBLISH_SOURCE: Final = """
local meta = redis.call("HMGET", KEYS[2], "epoch", "offset"@FIELD@)
local epoch = meta[1]
local offset
if not epoch@CHANGED@ then
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
redis.call("HSET", KEYS[2], "epoch", epoch, "offset", id@SET@)
redis.call("PEXPIRE", KEYS[1], ARGV[5])
redis.call("PEXPIRE", KEYS[2], ARGV[5])
redis.call("@PUBLISH@", ARGV[1], body)
return {offset, epoch}
"""

#: KEYS[1] = stream, KEYS[2] = meta hash.
#: ARGV[1] = after ("" = only the epoch and the latest offset), ARGV[2] = size,
#: ARGV[3] = the epoch to start if the topic has none, ARGV[4] = TTL in ms.
#: Returns {epoch, latest, envelope JSON...}: the kept envelopes after ARGV[1], in
#: offset order, at most the newest ``size`` of them.
_READ_SOURCE: Final = """
local meta = redis.call("HMGET", KEYS[2], "epoch", "offset"@FIELD@)
local epoch = meta[1]
local latest = tonumber(meta[2]) or 0
if not epoch@CHANGED@ then
  epoch = ARGV[3]
  latest = 0
  redis.call("DEL", KEYS[1])
  redis.call("HSET", KEYS[2], "epoch", epoch, "offset", "0"@SET@)
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
"""


def _variant(source: str, *, cluster: bool) -> Script:
    """One node: ``PUBLISH``, no writer. A cluster: ``SPUBLISH`` (the channel shares
    the keys' slot, so the script runs on one shard) and the writer check."""
    if not cluster:
        parts = {"@FIELD@": "", "@CHANGED@": "", "@SET@": "", "@PUBLISH@": "PUBLISH"}
    else:
        source = _WRITER + source.lstrip("\n")
        parts = {
            "@FIELD@": ', "writer"',
            "@CHANGED@": " or meta[3] ~= writer",
            "@SET@": ', "writer", writer',
            "@PUBLISH@": "SPUBLISH",
        }
    for marker, text in parts.items():
        source = source.replace(marker, text)
    return Script(source)


PUBLISH_SCRIPT: Final = _variant(_PUBLISH_SOURCE, cluster=False)
READ_SCRIPT: Final = _variant(_READ_SOURCE, cluster=False)
CLUSTER_PUBLISH_SCRIPT: Final = _variant(_PUBLISH_SOURCE, cluster=True)
CLUSTER_READ_SCRIPT: Final = _variant(_READ_SOURCE, cluster=True)


def history_keys(prefix: str, topic: str) -> tuple[str, str]:
    """The topic's stream and meta hash on one node (:class:`Layout` for a cluster)."""
    return Layout(prefix).history_keys(topic)


def new_epoch() -> str:
    return uuid.uuid4().hex


def _ttl_ms(history: History) -> int:
    return max(1, math.ceil(history.ttl * 1000))


def publish_args(layout: Layout, history: History, envelope: Envelope) -> tuple[Arg, ...]:
    """``numkeys, KEYS..., ARGV...`` for :data:`PUBLISH_SCRIPT` (``envelope`` has no
    position yet). The stream key (the first argument after ``numkeys``) routes it."""
    data = envelope.to_json()
    if not data.endswith("}"):  # pragma: no cover - to_json always writes an object
        raise ValueError("an envelope's JSON must be an object")
    stream, meta = layout.history_keys(envelope.topic)
    channel = layout.channel(envelope.topic)
    return (2, stream, meta, channel, data, new_epoch(), history.size, _ttl_ms(history))


def parse_publish_reply(reply: Any) -> Position:
    offset, epoch = reply
    return Position(int(offset), epoch.decode() if isinstance(epoch, bytes) else str(epoch))


def read_args(layout: Layout, history: History, topic: str, after: int | None) -> tuple[Arg, ...]:
    """``numkeys, KEYS..., ARGV...`` for :data:`READ_SCRIPT`."""
    stream, meta = layout.history_keys(topic)
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


async def run_script(conn: Commands, script: Script, args: tuple[Arg, ...]) -> Any:
    """``EVALSHA``, or ``EVAL`` when Valkey does not have the script (yet, or any more),
    routed by the script's first key. Not for publishes: after a ``NOSCRIPT`` the
    retries of calls in flight would go out in whatever order their tasks wake (see
    ``ValkeyPubSub.publish``)."""
    key = args[1] if len(args) > 1 and isinstance(args[1], str | bytes) else None
    try:
        return await conn.execute("EVALSHA", script.sha, *args, key=key)
    except ValkeyError as exc:
        if exc.kind != "NOSCRIPT":
            raise
    return await conn.execute("EVAL", script.source, *args, key=key)
