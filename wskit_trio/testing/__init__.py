"""Test wskit_trio apps without sockets, deterministically under trio's MockClock."""

from ._harness import Frame, TestApp, TestClient, open_test_app

__all__ = ["Frame", "TestApp", "TestClient", "open_test_app"]
