"""pytest fixtures for the harness (loaded automatically through the ``pytest11`` entry
point; async tests need pytest-trio).

Tell the fixtures which router to serve by defining ``wskit_router`` (and, if
needed, ``wskit_app_options`` with ``open_test_app`` keyword arguments) in your
``conftest.py``::

    @pytest.fixture
    def wskit_router() -> Router[Conn]:
        return build_router()

    async def test_ping(wskit_app, autojump_clock):
        client = await wskit_app.connect(Conn(user_id="u1"))
        ...

The app lives for the test: at teardown every connection is closed and every
task of it has ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from .._router import Router
from ._harness import TestApp, TestClient, open_test_app

__all__ = ["wskit_app", "wskit_app_options", "wskit_client", "wskit_router"]


@pytest.fixture
def wskit_router() -> Router[Any]:
    """Override in your conftest: the router ``wskit_app`` serves."""
    raise pytest.UsageError("define a `wskit_router` fixture returning the Router to test")


@pytest.fixture
def wskit_app_options() -> dict[str, Any]:
    """Override to pass ``open_test_app`` options (``authenticate``, ``limits``...)."""
    return {}


@pytest.fixture
async def wskit_app(
    wskit_router: Router[Any], wskit_app_options: dict[str, Any]
) -> AsyncIterator[TestApp[Any]]:
    """``wskit_router`` served in memory for this test."""
    async with open_test_app(wskit_router, **wskit_app_options) as app:
        yield app


@pytest.fixture
async def wskit_client(wskit_app: TestApp[Any]) -> TestClient[Any]:
    """One client connected to ``wskit_app`` (connection data ``None``, or what the
    configured ``authenticate`` returns for a bare request)."""
    return await wskit_app.connect()
