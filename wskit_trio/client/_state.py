"""What a client is doing, as ``client.state``, ``on_state`` and ``statistics()`` tell."""

from __future__ import annotations

import enum

import attrs

__all__ = ["ClientState", "ClientStatistics"]


class ClientState(enum.StrEnum):
    """``closed → connecting → open → closing → closed``, and ``reconnecting``
    (waiting out the backoff) between a lost connection and the next attempt."""

    CLOSED = "closed"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    RECONNECTING = "reconnecting"


@attrs.frozen
class ClientStatistics:
    state: ClientState
    #: Connections opened so far.
    connects: int
    #: Failed attempts since the connection was lost (0 while open).
    reconnect_attempt: int
    pending_requests: int
    queued: int
    #: Frames the offline queue refused or evicted so far.
    dropped: int
