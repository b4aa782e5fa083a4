"""The protocol's extensions, as the server advertises them at the upgrade. Pure.

WS-Kit 0.10's server refuses what it does not know (its strict meta drops a
request carrying ``meta.timeoutMs`` without an answer), so a client may use an
(ext) feature of docs/protocol.md only on a server that has it. Ours says which
it has in the 101 response, in one header (docs/protocol.md §7, "Extensions"):
``X-WsKit-Extensions: timeoutMs, abort, heartbeat, errors, positions``. A
WS-Kit server sends no such header, so a client that finds none speaks plain
WS-Kit. The header names the whole set, whatever the app uses: each is
behaviour of the server, not of the app.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = [
    "ABORT",
    "ALL",
    "ERRORS",
    "HEADER",
    "HEADER_VALUE",
    "HEARTBEAT",
    "POSITIONS",
    "TIMEOUT_MS",
    "advertised",
    "in_use",
]

#: The 101 response header that lists the extensions (names compare case-insensitively,
#: as HTTP's do; the tokens do not).
HEADER: Final = "X-WsKit-Extensions"

#: ``meta.timeoutMs`` on a request bounds its handler (§5 "Deadlines").
TIMEOUT_MS: Final = "timeoutMs"
#: ``$ws:abort`` cancels a request in flight (§5 "Aborting a request").
ABORT: Final = "abort"
#: ``__heartbeat`` is answered with ``__heartbeat_ack`` (§3).
HEARTBEAT: Final = "heartbeat"
#: Every frame the server cannot take gets an answer, not silence (§4).
ERRORS: Final = "errors"
#: Subscriptions with positions, and recovery (delivery.md §11.4, §12).
POSITIONS: Final = "positions"

#: Every extension this version has.
ALL: Final = frozenset({TIMEOUT_MS, ABORT, HEARTBEAT, ERRORS, POSITIONS})
#: What our server sends under :data:`HEADER`.
HEADER_VALUE: Final = ", ".join((TIMEOUT_MS, ABORT, HEARTBEAT, ERRORS, POSITIONS))


def advertised(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The extensions a 101 response's ``headers`` advertise: the comma-separated
    tokens of every :data:`HEADER` line (empty without one: a WS-Kit server).
    Unknown tokens are kept, so a newer server's are visible to the app."""
    name = HEADER.lower()
    return frozenset(
        token.strip()
        for key, value in headers
        if key.lower() == name
        for token in value.split(",")
        if token.strip()
    )


def in_use(advertised: frozenset[str], override: bool | None) -> frozenset[str]:
    """The extensions a client uses on one connection: what the server
    ``advertised`` (``override=None``), every one (``True``: a server known to
    have them, behind a proxy that drops the header, say) or none (``False``)."""
    if override is None:
        return advertised
    return ALL | advertised if override else frozenset()
