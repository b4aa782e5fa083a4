"""The transport seam: what a connection needs from a WebSocket, and nothing more.

A :class:`Transport` receives one message at a time, sends batches of text
frames, closes with a code, and knows the upgrade request it came from. The
connection runtime is written against this interface only; adapters map each
WebSocket library's exceptions to :class:`~wskit_trio.ConnectionClosed` in
exactly one place (their own module).

Every server connection starts in ``_http`` (the request head, sans-IO) and
``_accept`` (its I/O); the server decides, then an adapter's ``open_*`` answers
101 and yields the transport. Adapters: ``_wsproto`` (the default: trio streams,
frames by ``_wsframes``, no task of its own) and ``_trio_websocket``; ``_memory``
is the test harness's. A transport also offers ``pending()`` (messages received
and not yet taken) and ``settle()`` (awaited by the connection's writer before it
takes a batch); adapters that read one message at a time answer 0 and return at
once. With them a burst of messages read at once is handled without a schedule
point per answer and answered with one write. ``send_nowait()`` lets whoever
queued frames write them at once, when the socket takes them (``_wsproto`` on a
plain socket, and ``_memory``); a connection on a transport that declines (TLS,
``_trio_websocket``, the ASGI one) keeps its writer task, which sends everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol, overload
from urllib.parse import parse_qsl, urlsplit

import attrs

__all__ = [
    "Accepted",
    "Headers",
    "Rejected",
    "Transport",
    "UpgradeRequest",
    "host_port",
    "over_limit",
    "select_subprotocol",
]


def host_port(host: object, port: object) -> str:
    """``host:port``, the host in brackets when it is an IPv6 address."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def over_limit(message: str | bytes, max_bytes: int) -> bool:
    """Whether ``message`` is over ``max_bytes`` in bytes (text counted as UTF-8).

    A str of n code points has at most 4n UTF-8 bytes, so most text messages skip
    encoding."""
    if isinstance(message, bytes):
        return len(message) > max_bytes
    return len(message) * 4 > max_bytes and len(message.encode("utf-8")) > max_bytes


class Headers(Sequence[tuple[str, str]]):
    """A request's headers, ``(name, value)`` pairs with the names lower-cased, in the
    order they came: a ``Sequence[tuple[str, str]]``, equal to the tuple of its pairs.

    Kept as one string of ``name:value`` lines and split when read: a connection
    keeps its request for its whole life, and a tuple of str pairs costs about ten
    times the bytes of the header lines (a browser sends a dozen)."""

    __slots__ = ("_text",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        """Names are lower-cased; a pair no header line could hold (a ``:`` or a line
        break in the name, a line break in the value) raises ``ValueError``."""
        lines = []
        for name, value in pairs:
            if ":" in name or "\n" in name or "\n" in value:
                raise ValueError(f"not a header: {name!r}: {value!r}")
            lines.append(f"{name.lower()}:{value}")
        self._text = "\n".join(lines)

    @classmethod
    def parsed(cls, pairs: Iterable[tuple[bytes, bytes]]) -> Headers:
        """From an HTTP parser's ``(name, value)`` bytes (h11's: names lower-case)."""
        headers = cls()
        lines = b"\n".join([name.lower() + b":" + value for name, value in pairs])
        headers._text = lines.decode("latin-1")
        return headers

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or ``None``: found in the
        string, without splitting it."""
        if ":" in name or "\n" in name:
            return None  # no header has that name (and it would match inside a line)
        text = self._text
        line = name + ":"
        if text.startswith(line):
            start = len(line)
        else:
            start = text.find("\n" + line)
            if start < 0:
                return None
            start += 1 + len(line)
        end = text.find("\n", start)
        return text[start:] if end < 0 else text[start:end]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if self._text:
            for line in self._text.split("\n"):
                name, _, value = line.partition(":")
                yield name, value

    def __len__(self) -> int:
        return self._text.count("\n") + 1 if self._text else 0

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[tuple[str, str], ...]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, str] | tuple[tuple[str, str], ...]:
        return tuple(self)[index]

    def __reversed__(self) -> Iterator[tuple[str, str]]:
        return reversed(tuple(self))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._text == other._text
        if isinstance(other, tuple):
            return tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


@attrs.frozen
class UpgradeRequest:
    """The HTTP upgrade request, as ``authenticate`` sees it.

    ``query`` maps each parameter to its first value; ``headers`` keeps every
    header, names lower-cased (``serve()`` gives a :class:`Headers`, a sequence of
    the pairs, equal to their tuple); ``subprotocols`` are the ones the client
    offered, in its order. ``remote`` is the socket's peer (``host:port``);
    ``client_ip`` is the client's address: the peer's, or the one a trusted proxy
    forwarded (``serve(trusted_proxies=...)``). Connection caps, ``key_per_ip`` and
    the logs use ``client_ip``.
    """

    path: str = "/"
    query: Mapping[str, str] = attrs.field(factory=dict)
    headers: Sequence[tuple[str, str]] = ()
    subprotocols: Sequence[str] = ()
    remote: str | None = None
    client_ip: str | None = None

    @classmethod
    def from_target(
        cls,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        subprotocols: Sequence[str] = (),
        remote: str | None = None,
        client_ip: str | None = None,
    ) -> UpgradeRequest:
        """Build from the request target (``/path?query``) and raw header pairs."""
        parts = urlsplit(target)
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(key, value)
        if not isinstance(headers, Headers) and not (
            isinstance(headers, tuple) and all(k.islower() for k, _ in headers)
        ):
            # (The server's headers come lower-cased already: shared, not copied.)
            headers = tuple((k.lower(), v) for k, v in headers)
        return cls(
            path=parts.path or "/",
            query=query,
            headers=headers,
            subprotocols=tuple(subprotocols),
            remote=remote,
            client_ip=client_ip,
        )

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        name = name.lower()
        if isinstance(self.headers, Headers):
            value = self.headers.get(name)
            return default if value is None else value
        for key, value in self.headers:
            if key == name:
                return value
        return default

    @property
    def token(self) -> str | None:
        """The client's token: the ``access_token`` query parameter, else a ``bearer.<token>``
        subprotocol (docs/protocol.md §7)."""
        token = self.query.get("access_token")
        if token:
            return token
        for offered in self.subprotocols:
            if offered.startswith("bearer.") and len(offered) > len("bearer."):
                return offered[len("bearer.") :]
        return None


def select_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first offered subprotocol the server speaks, else an offered ``bearer.*`` one.

    Browsers fail the handshake when they offered subprotocols and none is
    selected, so a client that only offered its bearer token gets that back.
    """
    for candidate in offered:
        if candidate in supported:
            return candidate
    for candidate in offered:
        if candidate.startswith("bearer."):
            return candidate
    return None


class Transport(Protocol):
    """One accepted WebSocket, as the connection runtime uses it."""

    @property
    def request(self) -> UpgradeRequest: ...

    async def receive(self) -> str | bytes:
        """The next message. Raises ``ConnectionClosed`` once the socket is closed.

        A message over the size limit (in bytes) raises ``MessageTooBig`` (a
        ``ConnectionClosed(1009)``) once the messages before it are taken, and
        leaves the socket open: no more messages are read, while ``send`` still
        works and ``close`` still completes the handshake, so the connection can
        send what it has queued and then close with 1009 itself."""
        ...

    async def send(self, messages: Sequence[str]) -> None:
        """Send text frames in order. Raises ``ConnectionClosed`` if the socket is gone."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start (or finish) the close handshake. Idempotent; never raises."""
        ...

    async def ping(self) -> None:
        """Send a protocol ping and return when its pong arrives."""
        ...

    async def settle(self) -> None:
        """Called by the writer before it takes a batch: a transport whose reader is
        working through a burst may wait for it, so the answers go out in one write.
        Others return at once."""
        ...

    def pending(self) -> int:
        """Messages already read from the socket and not yet returned by ``receive``
        (a transport that reads one message at a time says 0). While it is not 0 the
        reader is in a burst, and the frames its handlers queue skip their schedule
        point so the answers go out together."""
        ...

    def can_send_nowait(self) -> bool:
        """Whether ``send_nowait`` may be called now: no write is in progress, nor
        waiting to be finished (a transport may always say no: then the connection's
        writer task stays, rather than one being started for each write)."""
        ...

    def send_nowait(self, messages: Sequence[str]) -> bool:
        """Write text frames now, from the calling task, without waiting (only when
        ``can_send_nowait()``). ``True``: they are out. ``False``: the part the socket
        did not take at once goes out first with the next ``send``, which the caller
        must make happen (an empty one will do)."""
        ...


@attrs.frozen
class Accepted:
    """The server's answer to an upgrade: accept, with this data and subprotocol."""

    data: object
    subprotocol: str | None


@attrs.frozen
class Rejected:
    """The server's answer to an upgrade: refuse with an HTTP status, a short body
    and any extra headers (``Retry-After``, say)."""

    status: int
    body: str
    headers: Sequence[tuple[str, str]] = ()
