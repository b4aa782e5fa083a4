"""The HTTP side of a WebSocket, sans-IO: the request head in, a response out.

Every server connection starts here, whatever the transport: :class:`HeadReader`
turns the first bytes into a :class:`RequestHead` (or the refusal they earn),
:func:`check_upgrade` says whether it is a WebSocket upgrade we will take, and
:func:`response` / :func:`accept_response` build what goes back. Parsing is
h11's; the limits are ours, so a client cannot make the server hold more than
:data:`MAX_HEAD_BYTES` before it has said who it is.

Nothing here imports trio.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Final

import attrs
import h11

from .._protocol import extensions
from . import Headers, Rejected

__all__ = [
    "ACCEPT_HEADERS",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "HeadReader",
    "RequestHead",
    "accept_response",
    "check_upgrade",
    "header_tokens",
    "response",
]

#: Bytes a request head (request line and headers) may take; more is answered 431.
MAX_HEAD_BYTES: Final = 16 * 1024
#: Header lines a request may carry; more is answered 431.
MAX_HEADERS: Final = 100

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_REASONS: Final = {
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@attrs.frozen
class RequestHead:
    """A parsed request head. Header names are lower-case; ``raw`` is every byte
    received so far (the head and what followed it), ``trailing`` only what followed
    (frames a client sent without waiting for the 101). The server keeps none of it
    once the connection is open, but ``headers``, which its request shares."""

    method: str
    target: str
    http_version: str
    headers: Headers
    raw: bytes
    trailing: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0] or "/"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or ``None``."""
        return self.headers.get(name)

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols offered (``Sec-WebSocket-Protocol``), in the client's order."""
        return [
            part.strip()
            for key, value in self.headers
            if key == "sec-websocket-protocol"
            for part in value.split(",")
            if part.strip()
        ]

    @property
    def is_upgrade(self) -> bool:
        """Whether the client asks for a WebSocket (``Upgrade: websocket``)."""
        return "websocket" in header_tokens(self, "upgrade")


def header_tokens(head: RequestHead, name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` header, lower-cased."""
    tokens: set[str] = set()
    for key, value in head.headers:
        if key == name:
            tokens.update(part.strip().lower() for part in value.split(","))
    return tokens


class HeadReader:
    """Feed the first bytes of a connection until the request head is complete."""

    __slots__ = ("_h11", "_raw")

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._raw = bytearray()

    def feed(self, data: bytes) -> RequestHead | Rejected | None:
        """Add ``data``; the head once complete, a refusal for a malformed or
        oversized one, else ``None`` (send more). ``b""`` means the peer closed: a
        head still incomplete then is refused with 400 (nobody will read it)."""
        self._raw += data
        self._h11.receive_data(data)
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
            body = "Request header fields too large" if status == 431 else "Bad request"
            return Rejected(status, body)
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.Request):  # ConnectionClosed: EOF before a head
            return Rejected(400, "Bad request")
        if len(event.headers) > MAX_HEADERS:
            return Rejected(431, "Too many header fields")
        trailing = bytes(self._h11.trailing_data[0])
        # h11 bounds a head still incomplete; one that came whole in a read is ours.
        if len(self._raw) - len(trailing) > MAX_HEAD_BYTES:
            return Rejected(431, "Request header fields too large")
        return RequestHead(
            method=event.method.decode("ascii", "replace"),
            target=event.target.decode("latin-1"),
            http_version=event.http_version.decode("ascii", "replace"),
            headers=Headers.parsed(event.headers),
            raw=bytes(self._raw),
            trailing=trailing,
        )


def check_upgrade(head: RequestHead) -> Rejected | None:
    """``None`` if ``head`` is a WebSocket upgrade we take (RFC 6455 §4.2.1), else
    the refusal it earns."""
    if head.http_version != "1.1":
        return Rejected(400, "WebSocket upgrades need HTTP/1.1")
    if head.method != "GET":
        return Rejected(405, "WebSocket upgrades use GET", (("allow", "GET"),))
    if not head.is_upgrade or "upgrade" not in header_tokens(head, "connection"):
        # RFC 9110 asks a 426 to say what to upgrade to; the connection closes after it.
        return Rejected(426, "This is a WebSocket endpoint", (("upgrade", "websocket"),))
    if head.header("sec-websocket-version") != "13":
        return Rejected(426, "Unsupported WebSocket version", (("sec-websocket-version", "13"),))
    key = head.header("sec-websocket-key")
    if key is None or not _is_key(key):
        return Rejected(400, "Sec-WebSocket-Key must be 16 bytes, base64")
    return None


def _is_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


#: What every 101 says beyond the handshake: the protocol extensions this server
#: has (docs/protocol.md §7), so a client uses them here and not on WS-Kit's server.
ACCEPT_HEADERS: Final = ((extensions.HEADER, extensions.HEADER_VALUE),)


def accept_response(key: str, subprotocol: str | None) -> bytes:
    """The 101 answer to an upgrade whose key passed :func:`check_upgrade`, with
    :data:`ACCEPT_HEADERS`. No WebSocket extension is ever negotiated."""
    accept = base64.b64encode(hashlib.sha1(key.strip().encode("ascii") + _GUID).digest())
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept,
        *(f"{name}: {value}".encode("latin-1") for name, value in ACCEPT_HEADERS),
    ]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def response(
    status: int,
    body: str | bytes,
    headers: Sequence[tuple[str, str]] = (),
    *,
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection. ``head_only`` leaves
    the body out (an answer to ``HEAD``), keeping its length."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"content-type: {content_type}",
        f"content-length: {len(data)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    # A header value must not end the head early (a hook's header with a CR or LF).
    head = "\r\n".join(line.replace("\r", " ").replace("\n", " ") for line in lines) + "\r\n\r\n"
    data_head = head.encode("latin-1", "replace")
    return data_head if head_only else data_head + data
