"""Watch a router's connections through public API only.

A :class:`Probe` is a router plugin: its ``on_open``, ``on_close`` and ``on_error``
hooks keep each connection's context and errors, so a test reads
``ctx.statistics()`` (RPCs in flight, topics, the outbound queue) and waits for a
connection to have ended instead of reaching into the runtime. Install it with
``router.plugin(probe)`` before serving the router (after the router's own hooks,
so its ``on_close`` runs last).
"""

from __future__ import annotations

from typing import Any

import trio

from wskit_trio import ConnectionContext, ConnectionStatistics, Router, WsKitError
from wskit_trio.testing import TestClient

__all__ = ["Probe"]

#: Which connection: a harness client, a client id, or ``None`` for the only one.
Which = TestClient[Any] | str | None


class Probe:
    """The contexts of a router's connections (from ``on_open``), when each ended
    (``on_close``) and the errors reported for each (``on_error``)."""

    def __init__(self) -> None:
        #: Each connection's context, by client id, in the order they opened.
        self.contexts: dict[str, ConnectionContext[Any]] = {}
        #: Every error reported to ``on_error``: (client id, error).
        self.errors: list[tuple[str, WsKitError]] = []
        self._ended: dict[str, trio.Event] = {}

    def __call__(self, router: Router[Any]) -> None:
        router.on_open(self._opened)
        router.on_close(self._closed)
        router.on_error(self._error)

    def _opened(self, ctx: ConnectionContext[Any]) -> None:
        self.contexts[ctx.client_id] = ctx

    def _closed(self, ctx: ConnectionContext[Any]) -> None:
        self.contexts.setdefault(ctx.client_id, ctx)
        self._event(ctx.client_id).set()

    def _error(self, error: WsKitError, ctx: ConnectionContext[Any]) -> None:
        self.errors.append((ctx.client_id, error))

    def _event(self, client_id: str) -> trio.Event:
        return self._ended.setdefault(client_id, trio.Event())

    def _id(self, which: Which) -> str:
        if which is None:
            (only,) = self.contexts  # the test means the one connection there is
            return only
        return which if isinstance(which, str) else which.client_id

    def context(self, which: Which = None) -> ConnectionContext[Any]:
        return self.contexts[self._id(which)]

    def statistics(self, which: Which = None) -> ConnectionStatistics:
        """``ctx.statistics()`` of the connection, now (it still answers once the
        connection has ended)."""
        return self.context(which).statistics()

    def ended(self, which: Which = None) -> bool:
        return self._event(self._id(which)).is_set()

    async def wait_ended(self, which: Which = None) -> None:
        """Until the connection has ended and its ``on_close`` hooks have run."""
        await self._event(self._id(which)).wait()
