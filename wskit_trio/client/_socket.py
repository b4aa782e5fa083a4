"""The client's WebSocket, on trio-websocket: its exceptions become ours here and
nowhere else (``ConnectError`` for a failed open, ``ConnectionClosed`` after).

The open is ours (TCP, TLS, then trio-websocket's handshake over a watched stream),
so a connection that ends before the server answers the upgrade fails the attempt at
once instead of after the whole connect timeout."""

from __future__ import annotations

import re
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import cast

import attrs
import trio
import trio_websocket

from .._errors import ConnectError, ConnectionClosed
from .._groups import only_cancelled, reraise, the_one_exception
from .._protocol import extensions as _extensions

__all__ = ["ClientSocket", "is_secret_param", "open_socket", "redacted", "with_query"]


def _closed(exc: trio_websocket.ConnectionClosed) -> ConnectionClosed:
    reason = exc.reason
    if reason is None:
        return ConnectionClosed(1006, "")
    return ConnectionClosed(reason.code, reason.reason or "")


class ClientSocket:
    """One open client WebSocket, and the protocol extensions it uses: those the
    server advertised in its 101 (docs/protocol.md §7), unless ``extensions``
    overrides them (``True``: all, ``False``: none)."""

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, extensions: bool | None = None
    ) -> None:
        self._ws = ws
        headers = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in ws.handshake_headers)
        #: What the server said it has (empty: a WS-Kit server, or a proxy that drops
        #: the header).
        self.advertised = _extensions.advertised(headers)
        #: What this connection uses: decided per connection, as a reconnect may
        #: reach another server.
        self.extensions = _extensions.in_use(self.advertised, extensions)

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    async def receive(self) -> str | bytes:
        """The next message; ``ConnectionClosed`` once the socket is closed."""
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def send(self, message: str) -> None:
        """Send one text frame; ``ConnectionClosed`` if the socket is gone (then
        nothing was sent, unless the connection broke in the middle of it)."""
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def ping(self) -> None:
        """A protocol ping; returns when its pong arrives."""
        try:
            await self._ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def close(self, code: int = 1000, reason: str = "", *, grace: float = 5.0) -> None:
        """The close handshake, for at most ``grace`` seconds; then (or when
        cancelled) the TCP connection is dropped. Idempotent; never raises
        ``ConnectionClosed``."""
        with trio.move_on_after(grace) as scope:
            await self._ws.aclose(code, reason)
        if scope.cancelled_caught:
            await self.abort()  # a dead peer never answers the close frame

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake (the peer is dead)."""
        await self._ws._close_stream()


class _WatchedStream(trio.abc.Stream):
    """The TCP (or TLS) stream under trio-websocket, watched until the opening
    handshake completes. trio-websocket waits for the server's answer until the
    connect timeout even when the connection is already gone (the server, or a proxy
    in front of it, closed or reset it before answering; a TLS failure), so losing
    the connection then cancels ``handshake`` at once."""

    def __init__(self, stream: trio.abc.Stream, handshake: trio.CancelScope) -> None:
        self._stream = stream
        self._handshake: trio.CancelScope | None = handshake
        #: Why the connection ended during the handshake ("" while it did not).
        self.lost = ""
        #: The start of the server's answer, for error messages.
        self.head = b""

    def opened(self) -> None:
        """The handshake is complete: stop watching."""
        self._handshake = None

    def _lose(self, why: str) -> None:
        if self._handshake is not None:
            self.lost = self.lost or why
            self._handshake.cancel()

    def _broken(self, exc: trio.BrokenResourceError) -> None:
        cause = exc.__cause__ or exc
        why = str(cause)[:200] or type(cause).__name__
        self._lose(f"the connection broke before the upgrade completed ({why})")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except trio.BrokenResourceError as exc:
            self._broken(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            self._broken(exc)
            raise
        if self._handshake is not None:
            if not data:
                self._lose("the server closed the connection before completing the upgrade")
            elif len(self.head) < 1024:
                self.head += data
        return data

    async def aclose(self) -> None:
        self._lose("the connection was dropped before the upgrade completed")
        await self._stream.aclose()


#: Query parameters whose values never reach an error message or a log line (see
#: :func:`is_secret_param`).
SECRET_PARAMS = frozenset(
    {"token", "access_token", "auth", "key", "password", "secret", "signature"}
)

#: How much of a server's text (an HTTP body, a protocol error) an error carries.
SHOWN = 200


def is_secret_param(name: str, also: Collection[str] = ()) -> bool:
    """Whether the query parameter ``name`` (raw or percent-encoded) holds a secret:
    one of :data:`SECRET_PARAMS` or ``also``, in any case, or a name whose last
    ``_``/``-`` part is one (``api_key``, ``auth_token``, ``X-Amz-Signature``).
    Broad on purpose: hiding a harmless ``sort_key`` costs a little debugging, a
    leaked credential costs more."""
    name = urllib.parse.unquote_plus(name).strip().lower()
    last = re.split(r"[_-]", name)[-1]
    extra = {n.lower() for n in also}
    return bool({name, last} & (SECRET_PARAMS | extra))


def _redact_params(params: str, also: Collection[str]) -> str:
    # Textual, piece by piece, so the rest stays byte for byte as given; ";" counts
    # as a separator too, as some servers split on it.
    pieces = re.split(r"([&;])", params)
    for i, piece in enumerate(pieces):
        name, eq, value = piece.partition("=")
        if eq and value and is_secret_param(name, also):
            pieces[i] = f"{name}=***"
    return "".join(pieces)


def redacted(url: str, also: Collection[str] = ()) -> str:
    """``url`` as errors and logs show it: the values of secret query (and fragment)
    parameters (:func:`is_secret_param`) and a userinfo password replaced by
    ``***``; the user name stays. Textual, so it never raises, even on a URL
    that does not parse."""
    rest, hash_, fragment = url.partition("#")
    rest, mark, query = rest.partition("?")
    authority = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://([^/]*)", rest)
    if authority is not None:
        userinfo, at, host = authority[1].rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if at and colon:
            rest = f"{rest[: authority.start(1)]}{user}:***@{host}{rest[authority.end(1) :]}"
    query = _redact_params(query, also)
    fragment = _redact_params(fragment, also)
    return f"{rest}{mark}{query}{hash_}{fragment}"


def _clipped(text: str) -> str:
    """``text`` cut to :data:`SHOWN` characters, ``…`` marking the cut: a server
    that answers the upgrade with a whole web page gets its first lines quoted."""
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def _one_line(text: str) -> str:
    """``text`` on one line: what a server sent cannot forge log lines."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def with_query(url: str, key: str, value: str) -> str:
    """``url`` with the query parameter ``key`` set to ``value`` (replacing any)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k != key]
    query.append((key, value))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@attrs.frozen
class _Target:
    host: str
    port: int
    resource: str
    ssl_context: ssl.SSLContext | None

    @classmethod
    def of(
        cls, url: str, ssl_context: ssl.SSLContext | None, also: Collection[str] = ()
    ) -> _Target:
        """Where ``url`` points; ``ValueError`` (naming the URL redacted, with the
        secret parameters ``also``) if it is no WebSocket URL."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:  # a bad port or IPv6 address: quote the URL, not exc
            raise ValueError(f"invalid URL {redacted(url, also)!r}: {exc}") from None
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(
                f'WebSocket URL scheme must be "ws:" or "wss:": {redacted(url, also)!r}'
            )
        if parts.scheme == "ws" and ssl_context is not None:
            raise ValueError("SSL context must be None for ws: URL scheme")
        if not parts.hostname:
            raise ValueError(f"no host in the URL {redacted(url, also)!r}")
        secure = parts.scheme == "wss"
        resource = (parts.path or "/") + (f"?{parts.query}" if "?" in url else "")
        return cls(
            host=parts.hostname,
            port=port or (443 if secure else 80),
            resource=resource,
            ssl_context=(ssl_context or ssl.create_default_context()) if secure else None,
        )

    @property
    def host_header(self) -> str:
        default = 443 if self.ssl_context is not None else 80
        return self._host if self.port == default else self.address

    @property
    def address(self) -> str:
        """``host:port``, for error messages."""
        return f"{self._host}:{self.port}"

    @property
    def _host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


def _attempts(exc: BaseException) -> list[BaseException]:
    """The errors under ``exc``: trio's ``open_tcp_stream`` raises one OSError
    ("all attempts to connect to ... failed") from a group of one per address."""
    group = exc if isinstance(exc, BaseExceptionGroup) else exc.__cause__
    if not isinstance(group, BaseExceptionGroup):
        return [exc]
    return [leaf for sub in group.exceptions for leaf in _attempts(sub)]


class _Opening:
    """One attempt to open the WebSocket (TCP, TLS, the upgrade handshake) within
    ``connect_timeout``; :meth:`error` turns every way it fails into
    :class:`ConnectError`."""

    def __init__(
        self, url: str, target: _Target, connect_timeout: float, secret_params: Collection[str]
    ) -> None:
        # Errors (and the logs they reach) name the URL, never the credentials in it.
        self.url = redacted(url, secret_params)
        self.target = target
        self.connect_timeout = connect_timeout
        self.stream: _WatchedStream | None = None

    async def open(
        self,
        nursery: trio.Nursery,
        *,
        subprotocols: Sequence[str],
        headers: Sequence[tuple[str, str]],
        max_message_size: int,
    ) -> trio_websocket.WebSocketConnection:
        """The open connection (its reader task runs in ``nursery``). A rejection or
        a malformed answer is raised by that task into ``nursery``, not here."""
        target = self.target
        try:
            with trio.fail_after(self.connect_timeout):
                tcp: trio.abc.Stream
                if target.ssl_context is None:
                    tcp = await trio.open_tcp_stream(target.host, target.port)
                else:
                    tcp = await trio.open_ssl_over_tcp_stream(
                        target.host,
                        target.port,
                        ssl_context=target.ssl_context,
                        https_compatible=True,
                    )
                with trio.CancelScope() as handshake:
                    self.stream = stream = _WatchedStream(tcp, handshake)
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        # trio-websocket types its streams narrowly; any Stream works.
                        cast(trio.SocketStream, stream),
                        target.host_header,
                        target.resource,
                        subprotocols=list(subprotocols) or None,
                        extra_headers=[
                            (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers
                        ]
                        or None,
                        max_message_size=max_message_size,
                    )
                    stream.opened()
                    return ws
                raise self._lost()  # the connection ended before the server's answer
        except BaseException as exc:
            if self.stream is not None:
                await trio.aclose_forcefully(self.stream)
            if isinstance(exc, (trio.TooSlowError, OSError)):
                raise self.error(exc) from None
            raise

    def _answer(self) -> str:
        head = self.stream.head if self.stream is not None else b""
        return head.split(b"\r\n", 1)[0][:100].decode("latin-1")

    def _lost(self) -> ConnectError:
        assert self.stream is not None
        reason, first = self.stream.lost, self._answer()
        if not first:
            return ConnectError(self.url, reason)
        # e.g. a proxy's "HTTP/1.1 503 Service Unavailable", cut off by the close
        status = re.match(r"HTTP/\d(?:\.\d)? ([1-5]\d\d)\b", first)
        code = int(status[1]) if status and status[1] != "101" else None
        return ConnectError(self.url, f"{reason}; its answer began {first!r}", status=code)

    def _unreachable(self, exc: OSError) -> str:
        """Why the TCP (or TLS) connection could not be made, naming where to."""
        attempts = _attempts(exc)
        if all(isinstance(a, ConnectionRefusedError) for a in attempts):
            return f"connection refused by {self.target.address}"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {self.target.host!r} ({exc.strerror or exc})"
        why = str(exc) or type(exc).__name__
        causes = dict.fromkeys(str(a) or type(a).__name__ for a in attempts if a is not exc)
        if causes:
            why = f"{why} ({'; '.join(causes)})"
        return _one_line(_clipped(why))

    def error(self, exc: Exception) -> ConnectError:
        """The :class:`ConnectError` for ``exc``, raised by :meth:`open` or by the
        reader task during the handshake: the one place where what trio and
        trio-websocket raise becomes ours. What the server sent is quoted clipped
        (:data:`SHOWN`) and on one line."""
        if isinstance(exc, ConnectError):
            return exc
        if isinstance(exc, trio.TooSlowError):
            return ConnectError(self.url, f"timed out after {self.connect_timeout:g} s")
        if isinstance(exc, OSError):
            return ConnectError(self.url, self._unreachable(exc))
        if isinstance(exc, trio_websocket.ConnectionRejected):
            # Not a WebSocket server (a web page), or one that refused the upgrade.
            body = _clipped((exc.body or b"").decode("utf-8", "replace"))
            shown = _one_line(body)
            reason = f"HTTP {exc.status_code}" + (f": {shown}" if shown else "")
            return ConnectError(self.url, reason, status=exc.status_code, body=body)
        # Anything else the reader task raises before the upgrade completes comes of a
        # malformed answer (wsproto, h11 protocol errors): not a WebSocket server.
        first = self._answer()
        return ConnectError(
            self.url,
            f"invalid answer to the upgrade: {first!r}"
            if first
            else f"invalid answer to the upgrade ({_one_line(_clipped(str(exc)))})",
        )


@asynccontextmanager
async def open_socket(
    url: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    close_timeout: float = 5.0,
    max_message_size: int = 1024 * 1024,
    secret_params: Collection[str] = (),
    extensions: bool | None = None,
) -> AsyncIterator[ClientSocket]:
    """Open a WebSocket to ``url`` for the block; raises :class:`ConnectError` when
    it cannot be opened (at once when the connection ends before the server answers
    the upgrade). On exit the socket is closed (gracefully unless cancelled).
    Errors show ``url`` :func:`redacted`, also hiding the query parameters
    ``secret_params`` (a token the caller attached under a name of its own).
    ``extensions`` overrides what the server advertises (:class:`ClientSocket`)."""
    target = _Target.of(url, ssl_context, secret_params)
    opening = _Opening(url, target, connect_timeout, secret_params)
    ws: trio_websocket.WebSocketConnection | None = None
    try:
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task
            ws = await opening.open(
                nursery,
                subprotocols=subprotocols,
                headers=headers,
                max_message_size=max_message_size,
            )
            sock = ClientSocket(ws, extensions)
            try:
                yield sock
            finally:
                await sock.close(grace=close_timeout)
                # The reader task ends with the connection, and may still be finishing
                # a close handshake another task started (``Client.aclose``): it gets
                # ``close_timeout`` more, then it is cut off.
                nursery.cancel_scope.deadline = trio.current_time() + close_timeout
    except BaseExceptionGroup as group:
        real = [exc for exc in group.exceptions if not only_cancelled(exc)]
        if ws is None and real:
            # The open failed: our ConnectError, or what the reader task raised.
            failure = next((exc for exc in real if isinstance(exc, ConnectError)), real[0])
            if isinstance(failure, Exception):
                raise opening.error(failure) from None
            reraise(failure)
        one = the_one_exception(group)
        if one is None:
            raise
        reraise(one)
    finally:
        if opening.stream is not None:
            # trio-websocket leaves it open when the peer closed first. Idempotent.
            await trio.aclose_forcefully(opening.stream)
