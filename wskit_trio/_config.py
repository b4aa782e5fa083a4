"""Server settings users pass to ``serve()``: limits and the heartbeat."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._outbound import QueuePolicy

if TYPE_CHECKING:
    from ._context import ConnectionContext

__all__ = ["Heartbeat", "Limits"]


@attrs.frozen(kw_only=True)
class Limits:
    """Per-connection bounds. Every one exists so a client cannot make the server
    hold unbounded memory or work."""

    #: Larger inbound frames close the connection with 1009 (counted in bytes), once
    #: the answers already queued for the messages before it are sent.
    max_message_bytes: int = 1024 * 1024
    #: RPCs running at once on one connection; more are answered RESOURCE_EXHAUSTED.
    max_in_flight_rpcs: int = 1000
    #: Upper bound on any RPC's deadline, seconds (``meta.timeoutMs`` is capped by it;
    #: without ``timeoutMs`` it is the deadline). ``0`` or ``inf``: no maximum.
    max_rpc_timeout: float = 120.0
    #: Frames queued for one client before the policy applies.
    outbound_queue: int = 1024
    #: Characters of frames queued for one client before the policy applies (one
    #: frame may go past it, so a single large frame is never refused): a client
    #: that sends large requests and reads no answers holds at most this much.
    outbound_queue_bytes: int = 8 * 1024 * 1024
    outbound_policy: QueuePolicy = "wait"
    #: How long a publish may wait for room in one subscriber's full queue before
    #: that subscriber is cut off with 1013 (delivery.md §10.3): publishers are
    #: slowed, subscribers are never robbed silently.
    slow_consumer_timeout: float = 5.0
    #: Graceful shutdown: how long in-flight RPCs may run before they are cancelled.
    shutdown_grace: float = 10.0
    #: How long a close handshake (or an ``on_close`` hook) may take before we give up.
    close_timeout: float = 5.0
    #: How long a new TCP connection (TLS included) may take to send its upgrade
    #: request; a silent or trickling one is dropped after it.
    handshake_timeout: float = 10.0
    #: Connections held at once, server-wide; more are refused at the upgrade with
    #: 503 and ``Retry-After``. ``None``: no cap (the file-descriptor limit is one).
    max_connections: int | None = None
    #: Connections held at once from one client address (see ``trusted_proxies``);
    #: more are refused with 429 and ``Retry-After``. ``None``: no cap.
    max_connections_per_ip: int | None = None

    def rpc_timeout(self, timeout_ms: Any) -> float:
        """Seconds an RPC may run: the client's ``timeoutMs``, capped by ours
        (``max_rpc_timeout`` of ``0`` or ``inf`` means no server maximum)."""
        cap = self.max_rpc_timeout if self.max_rpc_timeout > 0 else math.inf
        if isinstance(timeout_ms, int | float) and not isinstance(timeout_ms, bool):
            return min(max(timeout_ms, 0) / 1000, cap)
        return cap


@attrs.frozen(kw_only=True)
class Heartbeat:
    """Server-side liveness check with WebSocket pings.

    Every ``interval`` seconds the server pings; a pong not back within ``timeout``
    makes the connection stale: ``on_stale(ctx)`` runs (default: close with 1008).
    """

    interval: float = 30.0
    timeout: float = 10.0
    on_stale: Callable[[ConnectionContext[Any]], Awaitable[None]] | None = None


#: What ``serve()`` and the test harness ping with unless told otherwise.
DEFAULT_HEARTBEAT: Final = Heartbeat()
