"""Requests in flight: what the offline queue holds, and how a caller waits.

A request is one :class:`Pending`: the client settles it (reply, error) or feeds
it progress, as the protocol session decides; the caller waits on it through a
:class:`RequestStream`. Its frame is encoded when it goes on the wire, not when
``request()`` is called, so ``meta.timeoutMs`` is the budget that is left then (a
request that waited in the offline queue tells the server how long it still has),
and it is there only if the connection it goes out on uses that extension.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from .._errors import RequestTimeout
from .._protocol import extensions, frames
from .._schema import RpcSchema

if TYPE_CHECKING:
    from ._socket import ClientSocket

__all__ = ["Outgoing", "Pending", "PlainFrame", "RequestStream"]

Res = TypeVar("Res")

#: Progress updates buffered per request before the oldest are dropped (a caller
#: that reads slower than the server reports only misses intermediate states).
PROGRESS_BUFFER = 1000


class Outgoing:
    """Something to send: a plain frame or a request. ``encode`` returns ``None``
    when it should no longer be sent."""

    __slots__ = ()

    type: str

    def encode(self, socket: ClientSocket) -> str | None:
        """The frame as it goes out on ``socket`` (whose extensions it may use)."""
        raise NotImplementedError

    def mark_sent(self, socket: ClientSocket | None) -> None:
        """The socket its frame is going out on (``None``: the send failed)."""

    def dropped(self, exc: BaseException) -> None:
        """The offline queue refused or evicted it."""


class PlainFrame(Outgoing):
    __slots__ = ("text", "type")

    def __init__(self, type: str, text: str) -> None:
        self.type = type
        self.text = text

    def encode(self, socket: ClientSocket) -> str:
        return self.text


class Pending(Outgoing, Generic[Res]):
    """One request, from ``request()`` until its terminal frame (or its caller
    gives up)."""

    __slots__ = (
        "abandoned",
        "correlation_id",
        "deadline",
        "done",
        "error",
        "meta",
        "payload",
        "progress",
        "schema",
        "sent_on",
        "type",
        "value",
        "waiter",
    )

    def __init__(
        self,
        schema: RpcSchema[Any, Res],
        correlation_id: str,
        payload: Any,
        meta: dict[str, Any],
        deadline: float,
    ) -> None:
        self.schema = schema
        self.type = schema.request.type
        self.correlation_id = correlation_id
        self.payload = payload
        self.meta = meta
        #: The budget (``trio.current_time()`` clock) sent as ``meta.timeoutMs``.
        self.deadline = deadline
        self.sent_on: ClientSocket | None = None
        #: The caller gave up (timeout, cancellation, left the stream early).
        self.abandoned = False
        self.progress: deque[Res] = deque(maxlen=PROGRESS_BUFFER)
        self.value: Res | None = None
        self.done = False
        self.error: BaseException | None = None
        self.waiter: trio.Event | None = None

    # -- outbound ----------------------------------------------------------------

    def encode(self, socket: ClientSocket) -> str | None:
        if self.settled or self.abandoned:
            return None
        meta = dict(self.meta)
        meta["correlationId"] = self.correlation_id
        if self.deadline != math.inf:
            remaining = self.deadline - trio.current_time()
            if remaining <= 0:
                return None  # expired while queued; the caller's timeout answers it
            if extensions.TIMEOUT_MS in socket.extensions:
                meta["timeoutMs"] = max(1, math.ceil(remaining * 1000))
        return frames.encode_frame(self.type, meta, self.payload)

    def mark_sent(self, socket: ClientSocket | None) -> None:
        self.sent_on = socket

    def dropped(self, exc: BaseException) -> None:
        self.fail(exc)

    # -- inbound -----------------------------------------------------------------

    @property
    def settled(self) -> bool:
        return self.done or self.error is not None

    def push_progress(self, value: Res) -> None:
        if not self.settled:
            self.progress.append(value)
            self._wake()

    def succeed(self, value: Res) -> None:
        if not self.settled:
            self.value = value
            self.done = True
            self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.settled:
            self.error = exc
            self._wake()

    def _wake(self) -> None:
        if self.waiter is not None:
            self.waiter.set()
            self.waiter = None


class RequestStream(Generic[Res]):
    """A request in flight, from ``client.stream(...)``.

    Iterate it for the progress payloads (typed by the response schema); the
    iteration ends at the reply, or raises the request's error
    (:class:`~wskit_trio.RpcError`, :class:`~wskit_trio.RequestTimeout`,
    :class:`~wskit_trio.ConnectionClosed` when the connection is lost,
    :class:`~wskit_trio.AlreadyClosed` when the client is closed by ``aclose()``).
    ``await stream.result()`` waits for
    the reply (skipping progress not yet read) and returns it. Leaving the
    ``async with`` before the reply aborts the request on the server.
    """

    __slots__ = ("_deadline", "_pending", "_timeout")

    def __init__(self, pending: Pending[Res], deadline: float, timeout: float | None) -> None:
        self._pending = pending
        self._deadline = deadline
        self._timeout = timeout

    @property
    def correlation_id(self) -> str:
        return self._pending.correlation_id

    @property
    def done(self) -> bool:
        """True once the reply or an error arrived."""
        return self._pending.settled

    def __aiter__(self) -> RequestStream[Res]:
        return self

    async def __anext__(self) -> Res:
        pending = self._pending
        while True:
            if pending.progress:
                return pending.progress.popleft()
            if pending.error is not None:
                raise pending.error
            if pending.done:
                raise StopAsyncIteration
            await self._wait()

    async def result(self) -> Res:
        """The reply payload; raises the request's error."""
        pending = self._pending
        while not pending.settled:
            pending.progress.clear()
            await self._wait()
        pending.progress.clear()
        if pending.error is not None:
            raise pending.error
        return pending.value  # type: ignore[return-value]

    async def _wait(self) -> None:
        pending = self._pending
        waiter = pending.waiter = trio.Event()
        with trio.move_on_at(self._deadline):
            await waiter.wait()
            return
        pending.abandoned = True
        raise RequestTimeout(pending.type, self._timeout or 0.0, pending.correlation_id)
