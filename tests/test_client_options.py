"""Client options: declared once in ``ClientOptions``, taken as ``open_client``'s
keywords (type checkers see them too: ``tests/typing/check_client_types.py``)."""

from __future__ import annotations

import inspect

import attrs
import pytest
from conftest import ECHO

from wskit_trio import ConfigurationError, ErrorCode
from wskit_trio.client import (
    Auth,
    Backoff,
    Client,
    ClientOptions,
    Reconnect,
    Retry,
    RpcError,
    open_client,
)


def test_open_client_shows_the_options_as_its_keywords() -> None:
    parameters = inspect.signature(open_client).parameters
    url, *keywords = parameters.values()
    assert (url.name, url.kind) == ("url", inspect.Parameter.POSITIONAL_ONLY)
    assert [p.name for p in keywords] == [f.name for f in attrs.fields(ClientOptions)]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in keywords)
    assert parameters["queue_size"].default == ClientOptions().queue_size == 1000


def test_unknown_or_positional_options_are_refused() -> None:
    with pytest.raises(TypeError, match="reconect"):
        open_client("ws://h", reconect=False)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        open_client("ws://h", "drop_oldest")  # type: ignore[call-arg, arg-type]


def test_shorthands_become_their_policies() -> None:
    def token() -> str:
        return "t"

    options = ClientOptions(auth=token, reconnect=False, subprotocols=["chat"])
    assert options.auth == Auth(token=token)
    assert options.reconnect == Reconnect(enabled=False)
    assert options.subprotocols == ("chat",)
    assert ClientOptions(reconnect=True).reconnect == Reconnect()
    with pytest.raises(ConfigurationError, match="sequence of names"):
        ClientOptions(subprotocols="chat")


def test_the_client_keeps_its_options() -> None:
    options = ClientOptions(queue="off", pending_requests_limit=5)
    assert Client("ws://h", options).options is options
    assert Client("ws://h").options == ClientOptions()
    with pytest.raises(ValueError, match="queue policy"):
        Client("ws://h", ClientOptions(queue="sometimes"))  # type: ignore[arg-type]


def test_retry_waits_the_server_hint_or_its_backoff_whichever_is_longer() -> None:
    retry = Retry(backoff=Backoff(initial=0.1, jitter="none"))
    hinted = RpcError(ErrorCode.UNAVAILABLE, retry_after_ms=500, type=ECHO.type)
    assert retry.wait_before(1, hinted) == pytest.approx(0.5)
    assert retry.wait_before(4, hinted) == pytest.approx(0.8)
    custom = RpcError("CUSTOM", retryable=True)  # no hint at all
    assert retry.wait_before(2, custom) == pytest.approx(0.2)
