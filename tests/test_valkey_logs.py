"""Valkey outages are logged once: "unreachable" (WARNING) when one begins, "recovered
after N s" (INFO) when it ends, on the ``wskit_trio.valkey`` logger, never with the
password.

The backends run against a real valkey-server (``valkey_server`` fixture) that
requires a password (``CONFIG SET requirepass``, again after each restart), killed
and restarted on the real clock, each test bounded by ``trio.fail_after``; waits
poll actual state. The outage's length, and the many refused reconnects of a long
pub/sub outage, run on a virtual clock.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from valkey_server import ValkeyServerProcess, free_port

from wskit_trio import ErrorCode, WsKitError
from wskit_trio.valkey import (
    ValkeyConnection,
    ValkeyPubSub,
    ValkeyPubSubOptions,
    ValkeyRateLimiter,
    ValkeyUnavailable,
)
from wskit_trio.valkey._outage import Outage, redact_url

IO_TIMEOUT = 10.0
LOGGER = "wskit_trio.valkey"
PASSWORD = "s3cret-Pa55word"


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


def assert_no_password(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records  # the check below saw something
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
        assert PASSWORD not in repr(record.args)


async def require_password(server: ValkeyServerProcess) -> None:
    """Make ``server`` (freshly started: no password yet) require :data:`PASSWORD`."""
    conn = await ValkeyConnection.connect(server.host, server.port)
    try:
        assert await conn.execute("CONFIG", "SET", "requirepass", PASSWORD) == b"OK"
    finally:
        await conn.aclose()


async def restart_with_password(server: ValkeyServerProcess) -> None:
    await trio.to_thread.run_sync(server.restart)
    await require_password(server)


async def wait_until(predicate: Callable[[], object]) -> None:
    """Poll real state (bounded) until ``predicate()`` holds."""
    with trio.fail_after(IO_TIMEOUT):
        while True:
            if predicate():
                return
            await trio.sleep(0.002)


def failed_connects_reach(backend: ValkeyPubSub, count: int) -> bool:
    return backend.statistics().connect_failures >= count


def recovered_seconds(record: logging.LogRecord) -> float:
    match = re.search(r"recovered after (\d+\.\d) s", record.getMessage())
    assert match, record.getMessage()
    return float(match[1])


# -- the helper ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("valkey://user:pw@host:6379/0", "valkey://user:***@host:6379/0"),
        ("valkey://:pw@host:6379/2", "valkey://:***@host:6379/2"),
        ("redis://default:pw@10.0.0.1?db=3", "redis://default:***@10.0.0.1?db=3"),
        ("valkey://pw@host", "valkey://***@host"),
        # Not percent-encoded: still masked whole, up to the last "@".
        ("valkey://:p/a#s@s@host:1/0", "valkey://:***@host:1/0"),
        ("valkey://host:6379/0", "valkey://host:6379/0"),
        ("valkey://[::1]:6379", "valkey://[::1]:6379"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


async def test_outage_logs_each_transition_once_on_trio_time(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage = Outage("test", "valkey://:***@h:1/0", secret=PASSWORD)
    outage.ok()  # no outage yet: nothing to say
    await trio.sleep(5)
    for attempt in range(3):
        outage.failed(ValkeyUnavailable(f"attempt {attempt} with {PASSWORD} refused"))
        await trio.sleep(4.1)
    assert outage.active
    outage.ok()
    outage.ok()
    assert not outage.active
    warning, info = records(caplog, logging.WARNING), records(caplog, logging.INFO)
    assert [r.getMessage() for r in warning] == [
        "Valkey at valkey://:***@h:1/0 unreachable (test): attempt 0 with *** refused"
    ]
    assert [r.getMessage() for r in info] == [
        "Valkey at valkey://:***@h:1/0 recovered after 12.3 s (test)"
    ]
    # The next outage is logged again.
    outage.failed("again")
    assert len(records(caplog, logging.WARNING)) == 2
    assert_no_password(caplog)


# -- pub/sub ---------------------------------------------------------------------------


async def test_pubsub_logs_a_long_outage_once(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A minute of refused reconnects (a few dozen attempts): one WARNING, with the
    address from host/port/db, the password masked even in the error text."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async def refuse(cls: Any, *args: Any, **kwargs: Any) -> ValkeyConnection:
        await trio.lowlevel.checkpoint()
        raise ValkeyUnavailable(f"refused (AUTH {kwargs['password']})")

    monkeypatch.setattr(ValkeyConnection, "connect", classmethod(refuse))
    port = free_port()
    options = ValkeyPubSubOptions(backoff_max=2.0)
    backend = ValkeyPubSub("127.0.0.1", port, password=PASSWORD, db=3, options=options)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert backend.statistics().connect_failures > 30
    [warning] = records(caplog, logging.WARNING)
    assert warning.getMessage() == (
        f"Valkey at valkey://:***@127.0.0.1:{port}/3 unreachable (pub/sub): refused (AUTH ***)"
    )
    assert not records(caplog, logging.INFO)  # it never recovered
    assert_no_password(caplog)


async def test_pubsub_logs_outage_and_recovery(
    valkey_server: ValkeyServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    await require_password(valkey_server)
    url = f"valkey://:{PASSWORD}@127.0.0.1:{valkey_server.port}/0"
    redacted = f"valkey://:***@127.0.0.1:{valkey_server.port}/0"
    backend = ValkeyPubSub.from_url(url, backoff_initial=0.01, backoff_max=0.05)
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            await backend.wait_healthy()
            assert not caplog.records  # a healthy start says nothing

            for outage in (1, 2):
                enough = backend.statistics().connect_failures + 5
                await trio.to_thread.run_sync(valkey_server.kill)
                # The lost session, then several refused reconnects: one WARNING.
                await wait_until(functools.partial(failed_connects_reach, backend, enough))
                warnings = records(caplog, logging.WARNING)
                assert len(warnings) == outage
                message = warnings[-1].getMessage()
                assert message.startswith(f"Valkey at {redacted} unreachable (pub/sub): ")
                assert "lost the connection to Valkey" in message
                assert len(records(caplog, logging.INFO)) == outage - 1

                await restart_with_password(valkey_server)
                await backend.wait_healthy()
                infos = records(caplog, logging.INFO)
                assert len(infos) == outage
                assert infos[-1].getMessage().startswith(f"Valkey at {redacted} recovered after ")
                assert infos[-1].getMessage().endswith(" s (pub/sub)")
                assert 0 <= recovered_seconds(infos[-1]) < IO_TIMEOUT
            nursery.cancel_scope.cancel()
    # Shutting down is not an outage.
    assert len(records(caplog, logging.WARNING)) == 2
    assert len(caplog.records) == 4
    assert_no_password(caplog)


# -- the rate limiter ------------------------------------------------------------------


async def test_rate_limiter_logs_outage_and_recovery(
    valkey_server: ValkeyServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    await require_password(valkey_server)
    url = f"valkey://default:{PASSWORD}@127.0.0.1:{valkey_server.port}/0"
    redacted = f"valkey://default:***@127.0.0.1:{valkey_server.port}/0"
    limiter = ValkeyRateLimiter.from_url(
        url, capacity=100, tokens_per_second=1, reconnect_interval=0
    )
    with trio.fail_after(IO_TIMEOUT):
        async with limiter:
            assert (await limiter.consume("k")).allowed
            assert not caplog.records

            for outage in (1, 2):
                await trio.to_thread.run_sync(valkey_server.kill)
                for _ in range(5):  # each one a failed reconnect (reconnect_interval=0)
                    with pytest.raises(WsKitError) as info:
                        await limiter.consume("k")
                    assert info.value.code == ErrorCode.UNAVAILABLE
                warnings = records(caplog, logging.WARNING)
                assert len(warnings) == outage
                message = warnings[-1].getMessage()
                assert message.startswith(f"Valkey at {redacted} unreachable (rate limiter): ")
                assert "Valkey" in message.partition("(rate limiter): ")[2]  # the error
                assert len(records(caplog, logging.INFO)) == outage - 1

                await restart_with_password(valkey_server)
                for _ in range(3):
                    assert (await limiter.consume("k")).allowed
                infos = records(caplog, logging.INFO)
                assert len(infos) == outage
                assert infos[-1].getMessage().startswith(f"Valkey at {redacted} recovered after ")
                assert infos[-1].getMessage().endswith(" s (rate limiter)")
                assert 0 <= recovered_seconds(infos[-1]) < IO_TIMEOUT
    assert limiter.statistics().unavailable == 10
    assert len(caplog.records) == 4
    assert_no_password(caplog)


async def test_rate_limiter_fail_open_logs_too_and_names_a_given_connection(
    valkey_server: ValkeyServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a connection (no URL), the record names its peer; letting messages
    through (``fail_open``) while Valkey is down is logged just the same."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with trio.fail_after(IO_TIMEOUT):
        conn = await ValkeyConnection.connect(valkey_server.host, valkey_server.port)
        limiter = ValkeyRateLimiter(conn, capacity=5, tokens_per_second=1, fail_open=True)
        assert (await limiter.consume("k")).allowed
        await trio.to_thread.run_sync(valkey_server.kill)
        for _ in range(3):
            assert await limiter.consume("k") == (True, 0, 0)
        await conn.aclose()
    [warning] = records(caplog, logging.WARNING)
    assert warning.getMessage().startswith(
        f"Valkey at valkey://127.0.0.1:{valkey_server.port} unreachable (rate limiter): "
    )
    assert limiter.statistics().unavailable == 3
