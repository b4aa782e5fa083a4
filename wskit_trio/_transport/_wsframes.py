"""RFC 6455 framing for the server side, sans-IO: bytes in, messages out, and back.

The wsproto transport does the HTTP upgrade with wsproto and the frames with
this module, which does only what a server needs and does it in few steps per
message: client frames are masked, server frames are not, no extension is ever
negotiated (so the reserved bits must be clear), and a message is handed over
only once complete (fragments are joined, text is checked as UTF-8 then).

:class:`FrameReader` turns received bytes into messages (``str`` for text,
``bytes`` for binary, taken with :meth:`FrameReader.take`) and control
frames (:class:`Ping`, :class:`Pong`, :class:`Close`, returned). A frame that
breaks the protocol raises :class:`FrameError` with the close code to fail the
connection with: 1002 (protocol), 1007 (bad UTF-8), 1009 (over the size limit,
found from the frame header, before its payload is buffered). After an error,
:meth:`FrameReader.discard` makes it skip data frames (without buffering them)
while still reporting a close frame, so the close handshake can finish.

Nothing here imports trio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

__all__ = [
    "Close",
    "FrameError",
    "FrameReader",
    "Ping",
    "Pong",
    "encode_close",
    "encode_ping",
    "encode_pong",
    "encode_text",
    "encode_texts",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: Close codes a peer may send (RFC 6455 §7.4 and the IANA registry); 1004-1006 and
#: 1015 are never sent on the wire.
_VALID_CLOSE: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


class Ping(NamedTuple):
    payload: bytes


class Pong(NamedTuple):
    payload: bytes


class Close(NamedTuple):
    """The peer's close frame; ``code`` 1005 when it carried none."""

    code: int
    reason: str


class FrameError(Exception):
    """The peer broke the protocol; fail the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def _unmask(data: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Parses the frames a client sends. Feed bytes; take messages and control frames."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_discarding",
        "_fragments",
        "_next",
        "_opcode",
        "_skip",
        "max_message_bytes",
        "messages",
    )

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        #: Complete messages, oldest first: ``str`` (text) or ``bytes`` (binary); those
        #: before ``_next`` are taken. It and the buffers below are made when needed
        #: and dropped once empty: most connections are idle, most of the time.
        self.messages: list[str | bytes] | tuple[()] = ()
        self._next = 0
        #: Bytes of an incomplete frame, kept for the next :meth:`feed`.
        self._buffer: bytes | bytearray = b""
        #: Opcode of the fragmented message in progress (0: none) and its payload so
        #: far, in one buffer: however the client cuts a message, it costs its size.
        self._opcode = 0
        self._fragments: bytes | bytearray = b""
        #: Payload bytes still to skip (of a frame being discarded).
        self._skip = 0
        self._discarding = False
        self._closed = False

    def take(self) -> str | bytes | None:
        """The oldest message not taken yet, or ``None``."""
        messages = self.messages
        index = self._next
        if index >= len(messages):
            return None
        message = messages[index]
        index += 1
        if index == len(messages):
            self.messages = ()
            index = 0
        self._next = index
        return message

    def pending(self) -> int:
        """How many messages are waiting to be taken."""
        return len(self.messages) - self._next

    def discard(self) -> None:
        """From now on drop data frames unread (the connection is closing); control
        frames are still parsed, so the peer's close frame is seen."""
        self._discarding = True
        self._fragments = b""
        self._opcode = 0

    def feed(self, data: bytes | bytearray) -> list[Ping | Pong | Close]:
        """Parse ``data`` (after whatever was left over); complete messages go on
        :attr:`messages`, control frames are returned in order. Raises
        :class:`FrameError` on a protocol violation (messages before it are kept).

        After a 1009 the reader is already discarding, positioned at the start of
        the frame that was too big: ``feed(b"")`` goes on with what is buffered."""
        controls: list[Ping | Pong | Close] = []
        if self._closed:
            return controls
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        buf: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buf = self._buffer
        else:
            buf = data
        end = len(buf)
        pos = 0
        messages = self.messages
        if not isinstance(messages, list):
            messages = self.messages = []
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                start = pos + 6
            elif length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 8
            else:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                if length >> 63:
                    raise FrameError(1002, "Invalid frame length")
                start = pos + 14
            if b0 & 0x70:
                raise FrameError(1002, "Reserved bits set")
            if not b1 & 0x80:
                raise FrameError(1002, "Client frames must be masked")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= 8:
                if length > 125 or not fin:
                    raise FrameError(1002, "Invalid control frame")
            elif self._discarding:
                # Skip this data frame's payload without buffering it.
                if start > end:
                    break
                if start + length > end:
                    self._skip = start + length - end
                    pos = end
                    break
                pos = start + length
                continue
            elif len(self._fragments) + length > self.max_message_bytes:
                self._keep(buf, pos)
                self.discard()
                raise FrameError(1009, "Message too big")
            if start + length > end:
                break
            stop = start + length
            payload = _unmask(buf[start:stop], buf[start - 4 : start]) if length else b""
            pos = stop
            if opcode in (OP_TEXT, OP_BINARY):
                if self._opcode:
                    raise FrameError(1002, "Expected a continuation frame")
                if fin:
                    if opcode == OP_TEXT:
                        try:
                            messages.append(payload.decode("utf-8"))
                        except UnicodeDecodeError:
                            raise FrameError(1007, "Invalid UTF-8 in a text frame") from None
                    else:
                        messages.append(payload)
                else:
                    self._opcode = opcode
                    self._fragments = bytearray(payload)
            elif opcode == OP_CONTINUATION:
                if not self._opcode:
                    raise FrameError(1002, "Continuation frame without a message")
                self._fragments += payload
                if fin:
                    whole = bytes(self._fragments)
                    if self._opcode == OP_TEXT:
                        try:
                            messages.append(whole.decode("utf-8"))
                        except UnicodeDecodeError:
                            raise FrameError(1007, "Invalid UTF-8 in a text frame") from None
                    else:
                        messages.append(whole)
                    self._opcode = 0
                    self._fragments = b""
            elif opcode == OP_PING:
                controls.append(Ping(payload))
            elif opcode == OP_PONG:
                controls.append(Pong(payload))
            elif opcode == OP_CLOSE:
                controls.append(_parse_close(payload))
                self._closed = True
                self._buffer = b""
                if not messages:
                    self.messages = ()
                return controls
            else:
                raise FrameError(1002, f"Unknown opcode {opcode}")
        self._keep(buf, pos)
        if not messages:
            self.messages = ()  # control frames only, or nothing whole yet
        return controls

    def _keep(self, buf: bytes | bytearray, pos: int) -> None:
        """Keep ``buf[pos:]`` (an incomplete frame) for the next feed."""
        if pos >= len(buf):
            self._buffer = b""
        elif buf is self._buffer and isinstance(buf, bytearray):  # (a non-empty one is)
            del buf[:pos]
        else:
            self._buffer = bytearray(buf[pos:])


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise FrameError(1002, "Invalid close frame")
    code = (payload[0] << 8) | payload[1]
    if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
        raise FrameError(1002, f"Invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "Invalid UTF-8 in a close reason") from None
    return Close(code, reason)


# -- encoding (server frames are never masked) -------------------------------------------

_TEXT_HEADERS: Final = [bytes((0x81, n)) for n in range(126)]


def _header(first: int, n: int) -> bytes:
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big")
    return bytes((first, 127)) + n.to_bytes(8, "big")


#: The last text frame encoded, by the identity of its ``str``: a publish hands the
#: same ``str`` to every subscriber, so its frame is built once, not once each.
_last: tuple[str | None, bytes] = (None, b"")
#: Likewise the last batch of several frames: subscribers of the same publishes get
#: the same frames in the same order, so their writers send one shared buffer.
_last_batch: tuple[tuple[str, ...], bytes] = ((), b"")


def encode_text(message: str) -> bytes:
    """One unfragmented text frame."""
    global _last
    last = _last
    if last[0] is message:
        return last[1]
    data = message.encode("utf-8")
    n = len(data)
    frame = _TEXT_HEADERS[n] + data if n < 126 else _header(0x81, n) + data
    _last = (message, frame)
    return frame


def encode_texts(messages: Sequence[str]) -> bytes:
    """Text frames for ``messages``, in order, as one buffer."""
    global _last_batch
    if len(messages) == 1:
        return encode_text(messages[0])
    last = _last_batch
    previous = last[0]
    if len(previous) == len(messages) and all(
        a is b for a, b in zip(previous, messages, strict=True)
    ):
        return last[1]
    data = b"".join([encode_text(message) for message in messages])
    _last_batch = (tuple(messages), data)
    return data


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame; code 1005 ("no status") sends an empty one. The reason is cut
    to fit a control frame (125 bytes)."""
    if code == 1005:
        return b"\x88\x00"
    raw = reason.encode("utf-8")
    if len(raw) > 123:  # cut on a character boundary: the reason must stay UTF-8
        raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
    data = code.to_bytes(2, "big") + raw
    return _header(0x88, len(data)) + data


def encode_ping(payload: bytes) -> bytes:
    return _header(0x89, len(payload)) + payload


def encode_pong(payload: bytes) -> bytes:
    return _header(0x8A, len(payload)) + payload
