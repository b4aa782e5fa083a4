"""A typed trio client for wskit_trio (and WS-Kit) servers.

``open_client(url)`` connects for an ``async with`` block: typed ``send``, ``on``
and ``request`` (with progress, deadlines and ``$ws:abort``), reconnect with
backoff and jitter, an offline queue, token auth and retry hints, and recovery:
the latest position per topic (``client.position``) to re-join with from
``on_connect``.
"""

from .._errors import (
    AlreadyClosed,
    ConnectError,
    ConnectionClosed,
    FrameDropped,
    InboundValidationError,
    RequestTimeout,
    RpcError,
)
from .._protocol.pubsub import Position
from .._protocol.session import InboundMessage
from ._backoff import Backoff, Jitter
from ._call import RequestStream
from ._client import Client, open_client
from ._config import (
    Auth,
    ClientHeartbeat,
    ClientOptions,
    ConnectHook,
    Reconnect,
    Retry,
    TokenSource,
)
from ._queue import OfflineQueuePolicy
from ._state import ClientState, ClientStatistics

__all__ = [
    "Auth",
    "Backoff",
    "Client",
    "ClientHeartbeat",
    "ClientOptions",
    "ClientState",
    "ClientStatistics",
    "ConnectError",
    "ConnectHook",
    "AlreadyClosed",
    "ConnectionClosed",
    "FrameDropped",
    "InboundMessage",
    "InboundValidationError",
    "Jitter",
    "OfflineQueuePolicy",
    "Position",
    "Reconnect",
    "RequestStream",
    "RequestTimeout",
    "Retry",
    "RpcError",
    "TokenSource",
    "open_client",
]
