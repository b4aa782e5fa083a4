"""What the client's connect errors say, and what they never say.

Over real sockets on 127.0.0.1 (real time, each test bounded by ``fail_after``): a
refused port says "connection refused" and where; a plain HTTP server answering the
upgrade gives its status and a bounded, one-line quote of its body; credentials in
the URL (secret query parameters, a userinfo password) reach neither the error
(str, repr, ``.url``) nor any log record. The redaction itself is tested as a pure
function at the end.
"""

from __future__ import annotations

import logging
import socket
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from wskit_trio.client import Auth, ClientState, ConnectError, Reconnect, open_client
from wskit_trio.client._socket import SHOWN, is_secret_param, redacted

SECRET = "s3cret"


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def http_server(status: str, body: str, requests: list[str]) -> AsyncIterator[int]:
    """A raw HTTP server on 127.0.0.1 (yields its port) that answers every request
    with ``status`` and ``body``, then holds the connection until the client closes
    it (so the answer, not a close, ends the attempt). Request lines go to
    ``requests``."""
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()

    async def answer(stream: trio.SocketStream) -> None:
        with suppress(trio.BrokenResourceError):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                data += chunk
            requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
            await stream.send_all(head + payload)
            while await stream.receive_some():
                pass
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, answer, listeners)
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every captured record as a handler would write it (tracebacks included)."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(record) for record in caplog.records]


# -- connection refused ---------------------------------------------------------------


async def test_a_refused_port_says_connection_refused_and_where() -> None:
    port = free_port()
    with trio.fail_after(5), pytest.raises(ConnectError) as info:
        async with open_client(f"ws://127.0.0.1:{port}/ws"):
            raise AssertionError("not reached")
    assert info.value.reason == f"connection refused by 127.0.0.1:{port}"
    assert str(info.value) == (
        f"cannot connect to ws://127.0.0.1:{port}/ws: connection refused by 127.0.0.1:{port}"
    )
    assert info.value.status is None


# -- a server that is no WebSocket server ---------------------------------------------

END = "<!-- the end of the page -->\n</body></html>\n"


def web_page(size: int = 5000) -> str:
    """An HTML page of exactly ``size`` characters, over many lines, that ends in
    :data:`END`."""
    start = "<!doctype html>\n<html><head><title>Welcome</title></head>\n<body>\n"
    lines = "".join(f"  <p>Paragraph {i} of the landing page.</p>\n" for i in range(200))
    page = (start + lines)[: size - len(END)] + END
    assert len(page) == size
    return page


async def test_a_web_page_answering_the_upgrade_is_quoted_bounded() -> None:
    page = web_page()
    requests: list[str] = []
    with trio.fail_after(5):
        async with http_server("200 OK", page, requests) as port:
            url = f"ws://127.0.0.1:{port}/ws"
            with pytest.raises(ConnectError) as info:
                async with open_client(url):
                    raise AssertionError("not reached")
    exc = info.value
    assert exc.status == 200
    assert requests == ["GET /ws HTTP/1.1"]
    # The stored body is the page's start, the cut marked.
    assert exc.body == page[:SHOWN] + "…"
    # The message: the status and that start, on one line.
    prefix = f"cannot connect to {url}: HTTP 200: "
    assert str(exc).startswith(prefix)
    quoted = str(exc)[len(prefix) :]
    assert quoted == " ".join(page[:SHOWN].split()) + "…"
    assert len(quoted) <= SHOWN + 1
    assert "\n" not in str(exc)
    for text in (str(exc), repr(exc), exc.body):
        assert "the end of the page" not in text


async def test_a_short_rejection_body_is_quoted_whole() -> None:
    requests: list[str] = []
    with trio.fail_after(5):
        async with http_server("403 Forbidden", "Go away.\n", requests) as port:
            with pytest.raises(ConnectError) as info:
                async with open_client(f"ws://127.0.0.1:{port}"):
                    raise AssertionError("not reached")
    assert (info.value.status, info.value.body) == (403, "Go away.\n")
    assert info.value.reason == "HTTP 403: Go away."


# -- credentials never reach errors or logs -------------------------------------------

#: URLs (``{port}`` to fill in) that carry SECRET, and what stays visible.
SECRET_URLS = {
    "token": "ws://127.0.0.1:{port}/ws?token=s3cret&room=1",
    "api_key": "ws://127.0.0.1:{port}/ws?api_key=s3cret&room=1",
    "password": "ws://127.0.0.1:{port}/ws?room=1&password=s3cret",
    "signature": "ws://127.0.0.1:{port}/ws?room=1&Signature=s3cret",
    "userinfo": "ws://user:s3cret@127.0.0.1:{port}/ws?room=1",
}


def assert_hidden(exc: ConnectError, caplog: pytest.LogCaptureFixture) -> None:
    """SECRET is nowhere in ``exc`` nor in the logs, and ``room=1`` still is."""
    records = logged(caplog)
    assert records, "the client logs its connection attempts"
    for text in (str(exc), repr(exc), exc.url, exc.body, *records):
        assert SECRET not in text
    assert "room=1" in str(exc) and "room=1" in exc.url
    assert any("room=1" in record for record in records)


@pytest.mark.parametrize("url", SECRET_URLS.values(), ids=SECRET_URLS.keys())
async def test_credentials_in_the_url_reach_no_error_and_no_log(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wskit_trio")
    requests: list[str] = []
    with trio.fail_after(5):
        async with http_server("401 Unauthorized", "bad token", requests) as port:
            with pytest.raises(ConnectError) as info:
                async with open_client(url.format(port=port)):
                    raise AssertionError("not reached")
    assert (info.value.status, info.value.body) == (401, "bad token")
    assert_hidden(info.value, caplog)
    # Redacted only where it is shown: the server got the real query.
    assert requests == [f"GET /ws?{urllib.parse.urlsplit(url).query} HTTP/1.1"]


async def test_failed_reconnects_are_logged_redacted(caplog: pytest.LogCaptureFixture) -> None:
    # Without on_error, a failed attempt after the block started goes to the log.
    caplog.set_level(logging.DEBUG, logger="wskit_trio")
    requests: list[str] = []
    with trio.fail_after(5):
        async with http_server("401 Unauthorized", "bad token", requests) as port:
            url = SECRET_URLS["token"].format(port=port)
            async with open_client(
                url, wait_open=False, reconnect=Reconnect(enabled=False)
            ) as client:
                await client.wait_state(ClientState.CLOSED)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "HTTP 401: bad token" in warnings[0].getMessage()
    assert "token=***" in warnings[0].getMessage()
    for record in logged(caplog):
        assert SECRET not in record


async def test_a_token_attached_under_a_custom_name_is_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="wskit_trio")
    requests: list[str] = []
    auth = Auth(token=lambda: SECRET, query_param="jwt")
    with trio.fail_after(5):
        async with http_server("401 Unauthorized", "bad token", requests) as port:
            with pytest.raises(ConnectError) as info:
                async with open_client(f"ws://127.0.0.1:{port}/ws?room=1", auth=auth):
                    raise AssertionError("not reached")
    assert requests == [f"GET /ws?room=1&jwt={SECRET} HTTP/1.1"]
    assert "jwt=***" in info.value.url
    assert_hidden(info.value, caplog)


async def test_an_invalid_url_is_named_redacted() -> None:
    with trio.fail_after(5), pytest.raises(ValueError, match="scheme") as info:
        async with open_client(f"http://127.0.0.1/?token={SECRET}"):
            raise AssertionError("not reached")
    assert SECRET not in str(info.value)
    assert "token=***" in str(info.value)


# -- the redaction, pure --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ws://h/p?token=abc&room=1", "ws://h/p?token=***&room=1"),
        ("ws://h/?TOKEN=a&Access_Token=b", "ws://h/?TOKEN=***&Access_Token=***"),
        (
            "ws://h/?auth=a&key=b&password=c&secret=d&signature=e",
            "ws://h/?auth=***&key=***&password=***&secret=***&signature=***",
        ),
        (
            "ws://h/?api_key=a&auth_token=b&X-Amz-Signature=c&client-secret=d",
            "ws://h/?api_key=***&auth_token=***&X-Amz-Signature=***&client-secret=***",
        ),
        # Names that merely contain a secret word stay, as does everything else.
        ("ws://h/?monkey=1&keys=2&tokens=3&authority=4", None),
        # Byte for byte: no re-encoding of the rest; ";" separates too.
        ("ws://h/?a=%20b+c&token=x;password=y&z", "ws://h/?a=%20b+c&token=***;password=***&z"),
        ("ws://h/?%74oken=x", "ws://h/?%74oken=***"),
        ("ws://h/?token=a=b", "ws://h/?token=***"),
        # Nothing to hide in an empty value.
        ("ws://h/?token=&token", None),
        # Userinfo: the password goes, the user stays.
        ("ws://user:pw@h:8080/p?x=1", "ws://user:***@h:8080/p?x=1"),
        ("ws://u:p@ss@h/", "ws://u:***@h/"),
        ("ws://user@h/", None),
        ("ws://h/a@b:c/", None),  # an "@" in the path is no userinfo
        # A fragment is redacted like a query (OAuth puts tokens there).
        ("wss://h/p#access_token=abc&state=1", "wss://h/p#access_token=***&state=1"),
        # URLs that do not parse are redacted all the same.
        ("ws://[::1/?token=x", "ws://[::1/?token=***"),
        ("not a url?password=x", "not a url?password=***"),
    ],
)
def test_redacted(url: str, shown: str | None) -> None:
    assert redacted(url) == (url if shown is None else shown)
    assert redacted(redacted(url)) == redacted(url)


def test_redacted_also_hides_the_names_given() -> None:
    assert redacted("ws://h/?jwt=a&token=b&x=c", ["JWT"]) == "ws://h/?jwt=***&token=***&x=c"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("Token", True),
        ("access_token", True),
        ("refresh-token", True),
        ("API_KEY", True),
        ("x-api-key", True),
        ("db_password", True),
        ("client_secret", True),
        ("X-Amz-Signature", True),
        ("room_auth", True),
        ("%70assword", True),
        ("room", False),
        ("monkey", False),
        ("keyboard", False),
        ("tokens", False),
        ("author", False),
        ("", False),
    ],
)
def test_is_secret_param(name: str, secret: bool) -> None:
    assert is_secret_param(name) is secret


@given(value=st.text(min_size=1))
def test_any_token_value_is_hidden(value: str) -> None:
    url = f"ws://h/ws?room=1&token={urllib.parse.quote(value, safe='')}&x=2"
    assert redacted(url) == "ws://h/ws?room=1&token=***&x=2"
