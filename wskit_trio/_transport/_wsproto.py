"""The fast transport: plain trio streams, the upgrade answered from :mod:`._http`,
frames by :mod:`._wsframes` (it is named after wsproto, whose handshake and frame
layer it once ran on). Stream exceptions become ours here and nowhere else.

No task of its own: whoever calls :meth:`WsprotoTransport.receive` (the
connection's reader) reads the socket, parses every frame in what arrived,
answers pings and returns the messages one by one; the next read happens only
once they are all taken, so a client that sends faster than its handlers run
is slowed down by TCP. A plain socket (not TLS) is read with ``os.read``, and
waited for with ``wait_readable`` alone: an idle connection parks no stream layers.
:meth:`~WsprotoTransport.send` writes a whole batch of frames with one
``send_all``; :meth:`~WsprotoTransport.send_nowait` writes one at once, without a
trip through the scheduler, when the socket takes it (the connection's reader
does, for the answers to what it has just handled). One task
reads at a time and one writes at a time; a task that needs to read while another
one is (``close`` waiting for the peer's close frame, say) waits for that read and
looks at what it brought.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Final

import trio
from trio.lowlevel import ParkingLot

from .._errors import ConnectionClosed, MessageTooBig
from . import UpgradeRequest
from ._http import RequestHead, accept_response
from ._wsframes import (
    Close,
    FrameError,
    FrameReader,
    Ping,
    Pong,
    encode_close,
    encode_ping,
    encode_pong,
    encode_texts,
)

__all__ = ["WsprotoTransport", "open_wsproto"]

#: Bytes asked of the socket per read.
RECEIVE_SIZE: Final = 65536
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
#: How long the writer waits, at most, for the reader to work through what it has
#: already received (see :meth:`WsprotoTransport.settle`).
_SETTLE_TIMEOUT: Final = 0.001
_POSIX: Final = os.name == "posix"


class WsprotoTransport:
    """A :class:`~wskit_trio._transport.Transport` over a trio stream."""

    __slots__ = (
        "_broken",
        "_buffered",
        "_close_sent",
        "_close_timeout",
        "_ended",
        "_failure",
        "_holding",
        "_ping_count",
        "_pings",
        "_read_waiters",
        "_reader",
        "_reading",
        "_request",
        "_settle_waiters",
        "_socket",
        "_stream",
        "_stream_closed",
        "_taken",
        "_unsent",
        "_write_waiters",
        "_writing",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        request: UpgradeRequest,
        max_message_bytes: int,
        *,
        close_timeout: float = 5.0,
        buffered: bytes = b"",
    ) -> None:
        self._stream = stream
        self._request = request
        self._close_timeout = close_timeout
        self._reader = FrameReader(max_message_bytes)
        #: Bytes that arrived with the upgrade request, parsed on the first read.
        self._buffered = buffered
        #: Set once the peer's close frame (or EOF, or a broken stream) ended the input.
        self._ended: ConnectionClosed | None = None
        #: A protocol violation by the peer (or a message over the limit), raised from
        #: ``receive`` once the messages before it are taken.
        self._failure: ConnectionClosed | None = None
        self._close_sent = False
        self._stream_closed = False
        #: A write was cut short (cancelled or failed): the stream carries nothing more.
        self._broken = False
        #: The socket ``send_nowait`` writes to and ``receive`` reads from directly (a
        #: plain socket stream, not TLS; on POSIX, where a socket is a file
        #: descriptor), and the part of a batch it did not take, which goes first with
        #: the next write.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) and _POSIX else None
        self._unsent = b""
        # Parking lots are made when first needed: most connections are idle.
        self._reading = False
        self._read_waiters: ParkingLot | None = None
        self._writing = False
        self._write_waiters: ParkingLot | None = None
        self._pings: dict[bytes, trio.Event] | None = None
        self._ping_count = 0
        #: For ``settle``: whether the reader holds received messages (or is still
        #: handling the last one it took), and the writer waiting for it to finish.
        self._holding = False
        self._taken = 0
        self._settle_waiters: ParkingLot | None = None

    @property
    def request(self) -> UpgradeRequest:
        return self._request

    # -- receiving --------------------------------------------------------------------

    async def receive(self) -> str | bytes:
        reader = self._reader
        while True:
            message = reader.take()
            if message is not None:
                self._holding = True
                self._taken += 1
                return message
            if self._holding:
                # Done with what was received: the writer may go (see ``settle``).
                self._holding = False
                if self._settle_waiters:
                    self._settle_waiters.unpark_all()
            if self._failure is not None:
                if isinstance(self._failure, MessageTooBig):
                    # The socket stays open: the connection sends what it has queued
                    # for the messages before it, then closes with 1009.
                    raise MessageTooBig()
                await self._fail(self._failure)
                raise ConnectionClosed(self._failure.code, self._failure.reason)
            if self._ended is not None:
                raise ConnectionClosed(self._ended.code, self._ended.reason)
            await self._read()

    def pending(self) -> int:
        """Messages received and not yet taken by ``receive``."""
        return self._reader.pending()

    async def _read(self) -> None:
        """Read once and process what came; if another task is reading, wait until it
        has processed what it read."""
        if self._reading:
            if self._read_waiters is None:
                self._read_waiters = ParkingLot()
            await self._read_waiters.park()
            return
        self._reading = True
        try:
            data: bytes | bytearray | None
            if self._buffered:
                data, self._buffered = self._buffered, b""
            elif self._socket is not None:
                # The socket itself, as ``receive_some`` would read it, without the
                # layers of frames it keeps parked while a connection is idle.
                await trio.lowlevel.checkpoint_if_cancelled()
                data = self._read_nowait()
                if data is not None:
                    # Data there at once still makes a schedule point (as in trio): a
                    # client that floods cannot starve the others.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                while data is None:
                    try:
                        await trio.lowlevel.wait_readable(self._socket)
                    except trio.ClosedResourceError:  # closed while we waited
                        data = b""
                    else:
                        data = self._read_nowait()
            else:
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except _STREAM_ERRORS:
                    data = b""
            if data:
                await self._process(data)
            else:
                self._end(ConnectionClosed(1006, ""))
        finally:
            self._reading = False
            if self._read_waiters:
                self._read_waiters.unpark_all()

    def _read_nowait(self) -> bytes | None:
        """Read the plain socket without waiting: ``None`` if nothing has come, ``b""``
        once it has ended (EOF, a reset, or closed), as for ``receive_some``."""
        assert self._socket is not None
        # Asked each time: -1 once closed, and a closed one's number is soon reused.
        fd = self._socket.fileno()
        if fd < 0:
            return b""
        try:
            return os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    async def _process(self, data: bytes | bytearray) -> None:
        try:
            controls = self._reader.feed(data)
        except FrameError as exc:
            if self._failure is None:
                self._failure = (
                    MessageTooBig() if exc.code == 1009 else ConnectionClosed(exc.code, exc.reason)
                )
            if exc.code != 1009:
                # The framing is lost: nothing more is read (``receive`` fails the
                # connection once the messages before the error are taken).
                self._end(self._failure)
                return
            # The reader skips the rest of the big frame (and every data frame after
            # it) but still sees control frames: the answers already queued can go
            # out, then the close handshake completes (the client learns the code).
            controls = self._feed_after_error()
        for control in controls:
            if type(control) is Ping:
                if not self._close_sent:
                    await self._write_quietly(encode_pong(control.payload))
            elif type(control) is Pong:
                event = self._pings.pop(control.payload, None) if self._pings else None
                if event is not None:
                    event.set()
            elif type(control) is Close:
                await self._on_peer_close(control)

    def _feed_after_error(self) -> list[Ping | Pong | Close]:
        try:
            return self._reader.feed(b"")
        except FrameError:
            return []

    async def _on_peer_close(self, close: Close) -> None:
        self._end(ConnectionClosed(close.code, close.reason))
        if not self._close_sent:
            # Echo it (RFC 6455 §5.5.1); as the server we then close TCP first.
            self._close_sent = True
            await self._write_quietly(encode_close(close.code))
        await self._close_stream()

    def _end(self, closed: ConnectionClosed) -> None:
        if self._ended is None:
            self._ended = closed
        self._reader.discard()
        if self._pings:
            for event in self._pings.values():
                event.set()
            self._pings.clear()

    async def _fail(self, failure: ConnectionClosed) -> None:
        """Fail the connection (RFC 6455 §7.1.7): a close frame with the code, then TCP
        closed at once. (A message over the size limit is not failed here: see
        ``receive``.)"""
        if not self._close_sent:
            self._close_sent = True
            await self._write_quietly(encode_close(failure.code, failure.reason))
        self._end(failure)
        await self._close_stream()

    # -- sending ----------------------------------------------------------------------

    async def send(self, messages: Sequence[str]) -> None:
        if self._close_sent or self._broken or self._stream_closed:
            closed = self._ended or self._failure or ConnectionClosed(1006, "")
            raise ConnectionClosed(closed.code, closed.reason)
        await self._write(encode_texts(messages) if messages else b"")

    def can_send_nowait(self) -> bool:
        """Whether ``send_nowait`` may write now: a plain TCP stream (not TLS), open,
        with no write in progress or left to finish."""
        return not (
            self._socket is None
            or self._writing
            or self._unsent
            or self._close_sent
            or self._broken
            or self._stream_closed
        )

    def send_nowait(self, messages: Sequence[str]) -> bool:
        """Write ``messages`` now, from the calling task (only when ``can_send_nowait()``):
        ``True`` if the socket took them all, else the rest goes first with the next
        write, which the caller must see to (an empty ``send`` does)."""
        assert self._socket is not None and not self._writing and not self._unsent
        data = encode_texts(messages)
        try:
            # The socket is non-blocking (trio's): this never waits. A failure (the
            # socket closed or reset) is left to the next write, which reports it.
            sent = os.write(self._socket.fileno(), data)
        except OSError:
            sent = 0
        if sent < len(data):
            self._unsent = data[sent:]
            return False
        return True

    async def settle(self) -> None:
        """Called by the connection's writer before it takes a batch. While the reader
        works through messages it has already received (their answers going into the
        outbound queue), wait until it is done with them, so the answers to a burst
        go out in one write, not one write each. A reader on its last message is not
        waited for (a lone request's answer goes at once), nor one that takes no new
        message for ``_SETTLE_TIMEOUT`` (held up in a slow handler)."""
        while self._holding and self._reader.pending():
            taken = self._taken
            if self._settle_waiters is None:
                self._settle_waiters = ParkingLot()
            with trio.move_on_after(_SETTLE_TIMEOUT):
                await self._settle_waiters.park()
                return
            if self._taken == taken:
                return

    async def _write(self, data: bytes) -> None:
        """One ``send_all``; writes never interleave."""
        while self._writing:
            if self._write_waiters is None:
                self._write_waiters = ParkingLot()
            await self._write_waiters.park()
        if self._broken or self._stream_closed:
            raise ConnectionClosed(1006, "")
        self._writing = True
        done = False
        if self._unsent:
            data, self._unsent = self._unsent + data, b""
        try:
            await self._stream.send_all(data)
            done = True
        except _STREAM_ERRORS:
            raise ConnectionClosed(1006, "") from None
        finally:
            self._writing = False
            if not done:
                # Part of a frame may be on the wire: nothing more can follow it.
                self._broken = True
            if self._write_waiters:
                self._write_waiters.unpark()

    async def _write_quietly(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._write(data)

    # -- closing and pings --------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._stream_closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if not self._close_sent and self._ended is None and not self._broken:
                self._close_sent = True
                self._reader.discard()
                await self._write_quietly(encode_close(code, reason))
            # The close handshake: read (or wait for the reader) until the peer's
            # close frame or EOF; the caller bounds how long.
            while self._ended is None and not self._broken and not self._stream_closed:
                await self._read()
        finally:
            await self._close_stream()

    async def _close_stream(self) -> None:
        if self._stream_closed:
            return
        self._stream_closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
            try:
                await self._stream.aclose()
            except (*_STREAM_ERRORS, trio.BusyResourceError):
                # A TLS stream busy sending closes its transport all the same.
                pass
        # Whoever still waits for this stream finds it closed.
        if self._ended is None:
            self._end(ConnectionClosed(1006, ""))

    async def ping(self) -> None:
        """Send a ping and return when its pong arrives (the reader sees it: it reads
        every frame). Returns at once if the connection ends meanwhile; how it ended
        is the reader's to report."""
        if self._ended is not None:
            await trio.lowlevel.checkpoint()
            return
        self._ping_count += 1
        payload = self._ping_count.to_bytes(8, "big")
        if self._pings is None:
            self._pings = {}
        event = self._pings[payload] = trio.Event()
        try:
            await self._write(encode_ping(payload))
            await event.wait()
        except ConnectionClosed:
            pass
        finally:
            self._pings.pop(payload, None)


# -- the upgrade ---------------------------------------------------------------------------


class _Opening:
    """What :func:`open_wsproto` returns: entering it answers 101 and gives the
    transport. A class, not an ``@asynccontextmanager``: ``handle`` holds it for the
    connection's whole life, and a generator's frame costs more than these slots,
    which let go of the transport and the answer once sent."""

    __slots__ = ("_answer", "_transport")

    def __init__(self, transport: WsprotoTransport, answer: bytes) -> None:
        self._transport: WsprotoTransport | None = transport
        self._answer = answer

    async def __aenter__(self) -> WsprotoTransport:
        transport, self._transport = self._transport, None
        answer, self._answer = self._answer, b""
        assert transport is not None, "entered twice"
        try:
            await transport._stream.send_all(answer)
        except _STREAM_ERRORS:
            raise ConnectionClosed(1006, "") from None
        return transport

    async def __aexit__(self, *exc_info: object) -> None:
        pass  # the connection closes the transport itself


def open_wsproto(
    stream: trio.abc.Stream,
    head: RequestHead,
    request: UpgradeRequest,
    subprotocol: str | None,
    *,
    max_message_bytes: int,
    close_timeout: float,
) -> _Opening:
    """Answer 101 to a checked upgrade (``check_upgrade``) and run the WebSocket on
    ``stream``, as an async context manager; frames the client sent before the 101 are
    read first. Keeps nothing of ``head`` but those frames."""
    transport = WsprotoTransport(
        stream, request, max_message_bytes, close_timeout=close_timeout, buffered=head.trailing
    )
    return _Opening(transport, accept_response(head.header("sec-websocket-key") or "", subprotocol))
