"""A small Valkey client on trio streams: valkey's command packer, libvalkey's reader.

Two kinds of connection speak RESP2 over one TCP stream each:

* :class:`ValkeyConnection` runs commands. Concurrent callers are pipelined: each
  command is written whole, in call order, and the replies are matched to the
  callers in that same order. A caller cancelled while waiting leaves its slot
  behind, so its reply is read and discarded, never handed to someone else.
* :class:`ValkeySubscriber` is a connection in subscriber mode: ``SUBSCRIBE`` and
  ``UNSUBSCRIBE`` (and the sharded ``SSUBSCRIBE`` / ``SUNSUBSCRIBE`` a cluster shard
  takes) return once Valkey confirmed them, and :meth:`ValkeySubscriber.listen`
  (run in a task of the owner's nursery) reads pushed messages and confirmations.

Every socket, timeout and protocol failure becomes :class:`ValkeyUnavailable` in
one place (:func:`_unavailable`) and leaves the connection unusable; an error
reply becomes :class:`ValkeyError` and leaves it usable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, Self
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import libvalkey
import trio
from valkey.connection import LibvalkeyRespSerializer

from .._errors import ValkeyError, ValkeyUnavailable

__all__ = ["ValkeyAddress", "ValkeyConnection", "ValkeySubscriber", "parse_url"]

Arg = str | bytes | int | float

DEFAULT_PORT: Final = 6379
#: Error replies that mean "this server cannot take it right now", not "never".
#: The cluster's own (``CLUSTERDOWN`` while a failover runs, ``MOVED`` / ``ASK`` while
#: slots move, ``MASTERDOWN`` on a replica cut off) are among them: a cluster client
#: retries those itself and raises them only once its time is up.
TRANSIENT_ERRORS: Final = frozenset(
    {
        "LOADING", "BUSY", "TRYAGAIN", "MISCONF", "READONLY", "OOM",
        "CLUSTERDOWN", "MOVED", "ASK", "MASTERDOWN",
    }
)  # fmt: skip
_RECEIVE_SIZE: Final = 65536
#: What the reader returns while a reply is incomplete (``False`` is a valid reply).
_NOT_ENOUGH: Final = object()
#: valkey-py's own choice of packer when libvalkey is installed (it is a dependency).
_PACKER: Final = LibvalkeyRespSerializer()


def pack_command(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP, as valkey-py packs it (``"CONFIG GET"`` is split)."""
    if not args:
        raise ValueError("a command needs at least its name")
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, str | bytes | int | float):
            raise TypeError(
                f"cannot send {type(arg).__name__} to Valkey; use str, bytes or a number"
            )
    chunks: list[bytes] = _PACKER.pack(*args)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@attrs.frozen
class ValkeyAddress:
    """Where a Valkey server is, as parsed by :func:`parse_url`."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = None


def parse_url(url: str) -> ValkeyAddress:
    """Parse ``valkey://[:password@]host[:port][/db]`` (``redis://`` works too; the
    database may also be given as ``?db=N``). Raises ``ValueError`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("valkey", "redis"):
        raise ValueError(f"unsupported Valkey URL scheme {parts.scheme!r} in {url!r}")
    if parts.username not in (None, "", "default"):
        raise ValueError("ACL user names are not supported; give only a password")
    db = 0
    path = parts.path.strip("/")
    query = parse_qs(parts.query)
    try:
        if path:
            db = int(path)
        elif "db" in query:
            db = int(query["db"][0])
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"bad Valkey URL {url!r}: {exc}") from None
    password = unquote(parts.password) if parts.password else None
    return ValkeyAddress(parts.hostname or "localhost", port, db, password)


#: Everything the socket, the clock or the reply parser can raise for a broken link.
_IO_ERRORS: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    libvalkey.ProtocolError,
)


def _unavailable(exc: BaseException, what: str, conn: _RespStream | None) -> ValkeyUnavailable:
    """The one place an I/O failure (one of ``_IO_ERRORS``) becomes
    :class:`ValkeyUnavailable`; the connection it happened on is unusable from now on."""
    detail = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
    reason = f"{what}: {detail or type(exc).__name__}"
    if conn is not None and conn._broken is None:
        conn._broken = reason
        conn._stream.socket.close()  # wakes whoever waits on the socket
    return ValkeyUnavailable(reason)


class _RespStream:
    """One TCP stream, the RESP reader on it, and what breaks it."""

    def __init__(self, stream: trio.SocketStream, timeout: float) -> None:
        self._stream = stream
        #: Bound on one write (only reached when Valkey stops reading).
        self._timeout = timeout
        self._reader = libvalkey.Reader(replyError=ValkeyError, notEnoughData=_NOT_ENOUGH)
        #: Commands queued for writing, and whether a task is writing them.
        self._outgoing: list[bytes] = []
        self._writing = False
        #: Why the connection is unusable, once it is.
        self._broken: str | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        password: str | None = None,
        db: int = 0,
        connect_timeout: float = 5.0,
    ) -> Self:
        """Open a connection, authenticate and select ``db``, within ``connect_timeout``.

        Raises :class:`ValkeyUnavailable` if Valkey cannot be reached in time, and
        :class:`ValkeyError` if it refuses the password or database.
        """
        self: Self | None = None
        try:
            with trio.fail_after(connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
                self = cls(stream, connect_timeout)
                if password is not None:
                    await self._handshake("AUTH", password)
                if db:
                    await self._handshake("SELECT", db)
        except _IO_ERRORS as exc:
            if self is not None:
                await self._abort("connect failed")
            raise _unavailable(exc, f"cannot connect to Valkey at {host}:{port}", None) from exc
        except BaseException:
            if self is not None:
                await self._abort("connect failed")
            raise
        return self

    @property
    def closed(self) -> bool:
        """Whether the connection is unusable (closed, lost or timed out)."""
        return self._broken is not None

    async def aclose(self) -> None:
        """Close the connection; callers still waiting get :class:`ValkeyUnavailable`."""
        await self._abort("connection closed")

    def _check(self) -> None:
        if self._broken is not None:
            raise ValkeyUnavailable(self._broken)

    async def _abort(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)

    # -- bytes in, replies out --------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        """Queue one whole command and see it written, in call order.

        Whoever finds no write in progress writes everything queued (pipelined
        callers share one system call); the others return at once. A write is
        shielded from cancellation, so a command never goes out half, and bounded
        by the timeout: one that does not finish breaks the connection.
        """
        self._outgoing.append(data)
        if self._writing:
            return
        self._writing = True
        outgoing = self._outgoing
        try:
            with trio.CancelScope(shield=True) as scope:
                while outgoing:
                    chunk = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
                    outgoing.clear()
                    scope.deadline = trio.current_time() + self._timeout
                    await self._stream.send_all(chunk)
            if scope.cancelled_caught:
                raise trio.TooSlowError
        except _IO_ERRORS as exc:
            raise _unavailable(exc, "lost the connection to Valkey", self) from exc
        finally:
            self._writing = False

    async def _read_reply(self) -> Any:
        """The next reply (an error reply is returned as a ValkeyError, not raised).
        Cancellation loses no data."""
        reader = self._reader
        try:
            reply = reader.gets()
            while reply is _NOT_ENOUGH:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    raise trio.BrokenResourceError("connection closed by Valkey")
                reader.feed(data)
                reply = reader.gets()
        except _IO_ERRORS as exc:
            raise _unavailable(exc, "lost the connection to Valkey", self) from exc
        return reply

    async def _handshake(self, *args: Arg) -> Any:
        await self._write(pack_command(args))
        reply = await self._read_reply()
        if isinstance(reply, ValkeyError):
            raise reply
        return reply


class _Slot:
    """One command's place in line for its reply."""

    __slots__ = ("done", "reply", "wakeup")

    def __init__(self) -> None:
        self.done = False
        self.reply: Any = None
        #: Set when the reply is in, or when the reading task leaves (take over).
        self.wakeup: trio.Event | None = None


class ValkeyConnection(_RespStream):
    """A command connection. Open it with :meth:`connect`, close it with :meth:`aclose`.

    >>> conn = await ValkeyConnection.connect("127.0.0.1", 6379)
    >>> await conn.execute("SET", "k", 1)
    b'OK'

    Replies come back as valkey-py returns them with ``decode_responses=False``:
    bytes, ints, lists, ``None``.
    """

    def __init__(self, stream: trio.SocketStream, timeout: float) -> None:
        super().__init__(stream, timeout)
        #: One slot per command written and not yet answered, in writing order.
        self._pending: deque[_Slot] = deque()
        #: Whether a caller is reading replies (for everyone) right now.
        self._reading = False

    async def execute(self, *args: Arg) -> Any:
        """Run one command and return its reply.

        Raises :class:`ValkeyError` for an error reply and :class:`ValkeyUnavailable`
        when the connection is (or becomes) unusable. Safe to call from many tasks at
        once: commands are written in call order and pipelined.
        """
        data = pack_command(args)
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check()
        slot = _Slot()
        self._pending.append(slot)
        await self._write(data)
        while not slot.done:
            if self._reading:
                # Someone reads for everyone: wait for our reply, or for our turn.
                slot.wakeup = trio.Event()
                await slot.wakeup.wait()
            else:
                await self._read_until(slot)
        if isinstance(slot.reply, ValkeyError):
            raise slot.reply
        return slot.reply

    async def _read_until(self, slot: _Slot) -> None:
        """Read replies, handing each to its slot, until ``slot`` has its own."""
        self._reading = True
        pending = self._pending
        try:
            while not slot.done:
                self._check()
                reply = await self._read_reply()
                while True:
                    answered = pending.popleft()
                    answered.reply, answered.done = reply, True
                    if answered.wakeup is not None:
                        answered.wakeup.set()
                    # Replies already buffered are handed out in the same turn.
                    if not pending:
                        break
                    try:
                        reply = self._reader.gets()
                    except _IO_ERRORS as exc:
                        raise _unavailable(exc, "bad reply from Valkey", self) from exc
                    if reply is _NOT_ENOUGH:
                        break
        finally:
            self._reading = False
            # Whoever still waits takes over reading (or learns the connection broke).
            for waiting in pending:
                if waiting.wakeup is not None:
                    waiting.wakeup.set()


class _Request:
    """One (S)(UN)SUBSCRIBE awaiting its confirmations: one per channel, or one error
    reply for the whole command."""

    __slots__ = ("done", "error", "remaining")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.error: ValkeyError | None = None
        self.done = trio.Event()


#: Confirmation kinds, and the pushes that carry a message (``smessage``: sharded).
_CONFIRMS: Final = frozenset({b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe"})
_UNSUBSCRIBES: Final = frozenset({b"unsubscribe", b"sunsubscribe"})
_MESSAGES: Final = frozenset({b"message", b"smessage"})


class ValkeySubscriber(_RespStream):
    """A connection in subscriber mode.

    Run :meth:`listen` in a task; while it runs, :meth:`subscribe` and
    :meth:`unsubscribe` (and their sharded twins :meth:`ssubscribe` and
    :meth:`sunsubscribe`, for a cluster shard) return once Valkey confirmed them.
    ``listen`` hands every message to its callback and raises
    :class:`ValkeyUnavailable` when the connection is lost.
    """

    def __init__(self, stream: trio.SocketStream, timeout: float) -> None:
        super().__init__(stream, timeout)
        #: Requests awaiting a confirmation, per (kind, channel), in the order asked.
        self._waiting: dict[tuple[bytes, bytes], deque[_Request]] = {}
        #: Every request not answered yet, in writing order: Valkey answers in that
        #: order, so an error reply belongs to the oldest.
        self._requests: deque[_Request] = deque()
        self._channels: set[bytes] = set()

    @property
    def channels(self) -> frozenset[bytes]:
        """The channels Valkey confirmed this connection subscribes to."""
        return frozenset(self._channels)

    async def subscribe(self, *channels: str | bytes) -> None:
        """Subscribe to ``channels``; return once Valkey confirmed each of them."""
        await self._request(b"subscribe", channels)

    async def unsubscribe(self, *channels: str | bytes) -> None:
        """Unsubscribe from ``channels``; return once Valkey confirmed each of them."""
        await self._request(b"unsubscribe", channels)

    async def ssubscribe(self, *channels: str | bytes) -> None:
        """Subscribe to sharded ``channels`` (all of one slot, else Valkey answers
        ``CROSSSLOT``); return once confirmed. An error reply (``MOVED``...) raises
        :class:`ValkeyError`."""
        await self._request(b"ssubscribe", channels)

    async def sunsubscribe(self, *channels: str | bytes) -> None:
        """Unsubscribe from sharded ``channels``; return once Valkey confirmed them."""
        await self._request(b"sunsubscribe", channels)

    async def _request(self, kind: bytes, channels: tuple[str | bytes, ...]) -> None:
        if not channels:
            return
        names = [c.encode() if isinstance(c, str) else c for c in channels]
        request = _Request(len(names))
        data = pack_command((kind.upper(), *names))
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check()
        for name in names:
            self._waiting.setdefault((kind, name), deque()).append(request)
        self._requests.append(request)
        await self._write(data)
        await request.done.wait()
        self._check()
        if request.error is not None:
            raise request.error

    async def listen(
        self,
        on_message: Callable[[bytes, bytes], Awaitable[object] | None],
        on_unsubscribed: Callable[[bytes, bytes], Awaitable[object] | None] | None = None,
    ) -> NoReturn:
        """Read pushes until the connection is lost: ``on_message(channel, data)`` for
        each message (``message`` or sharded ``smessage``), in order, confirmations
        to their waiters. An async ``on_message`` is awaited before the next push is
        read, so a slow consumer slows the reading (and Valkey buffers, up to its
        pub/sub output limit; confirmations wait too).

        ``on_unsubscribed(kind, channel)`` hears of an unsubscribe nobody asked for:
        a cluster node sends ``sunsubscribe`` for its shard channels when it stops
        serving their slot (a failover promoted it from replica, or the slot moved).
        Raises :class:`ValkeyUnavailable` when the connection ends."""
        try:
            while True:
                self._check()
                reply = await self._read_reply()
                if isinstance(reply, ValkeyError):
                    self._refused(reply)
                    continue
                if not isinstance(reply, list) or len(reply) != 3:
                    continue
                kind, channel = reply[0], reply[1]
                if kind in _MESSAGES:
                    handled = on_message(channel, reply[2])
                    if handled is not None:
                        await handled
                elif kind in _CONFIRMS:
                    if kind in _UNSUBSCRIBES:
                        self._channels.discard(channel)
                    else:
                        self._channels.add(channel)
                    unasked = not self._confirmed(kind, channel) and kind in _UNSUBSCRIBES
                    if unasked and on_unsubscribed is not None:
                        handled = on_unsubscribed(kind, channel)
                        if handled is not None:
                            await handled
        finally:
            if self._broken is None:
                # Cancelled: whoever waits for a confirmation would wait forever.
                await self._abort("listener stopped")
            self._channels.clear()
            self._wake_waiters()

    def _confirmed(self, kind: bytes, channel: bytes) -> bool:
        """Hand a confirmation to the request awaiting it; ``False`` if none did."""
        waiters = self._waiting.get((kind, channel))
        if not waiters:
            return False
        request = waiters.popleft()
        if not waiters:
            del self._waiting[(kind, channel)]
        request.remaining -= 1
        if request.remaining == 0:
            request.done.set()
        self._drop_answered()
        return True

    def _refused(self, error: ValkeyError) -> None:
        """An error reply answers the oldest request still waiting, whole."""
        self._drop_answered()
        if not self._requests:
            return
        request = self._requests.popleft()
        request.error = error
        request.done.set()
        for key, waiters in list(self._waiting.items()):
            kept = deque(r for r in waiters if r is not request)
            if kept:
                self._waiting[key] = kept
            else:
                del self._waiting[key]

    def _drop_answered(self) -> None:
        while self._requests and self._requests[0].done.is_set():
            self._requests.popleft()

    async def aclose(self) -> None:
        await super().aclose()
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Release every task awaiting a confirmation (it then finds the connection
        unusable)."""
        for request in self._requests:
            request.done.set()
        self._requests.clear()
        self._waiting.clear()
