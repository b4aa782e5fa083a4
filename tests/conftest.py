"""Shared fixtures. Tests run under pytest-trio (``trio_mode = true``)."""

from __future__ import annotations

import attrs
import pytest

from wskit_trio import Router, message, rpc


@attrs.frozen
class Ping:
    text: str


@attrs.frozen
class Pong:
    reply: str


@attrs.define
class Conn:
    user_id: str | None = None
    room_id: str | None = None


PING = message("PING", Ping)
PONG = message("PONG", Pong)
ECHO = rpc("ECHO", Ping, "ECHOED", Pong)


@pytest.fixture
def router() -> Router[Conn]:
    return Router()
