"""The server's door, without sockets: who may open a WebSocket (``_admission``) and
what a request head must look like (``_transport._http``).

Pure policy and sans-IO parsing: every input is written out by hand here; the
same paths over real sockets are in ``test_door.py``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

import h11
import pytest

from wskit_trio._admission import (
    CAP_RETRY_AFTER,
    Admission,
    OriginAllowlist,
    TrustedProxies,
    client_ip,
)
from wskit_trio._transport import Headers, Rejected, UpgradeRequest
from wskit_trio._transport._http import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    HeadReader,
    RequestHead,
    accept_response,
    check_upgrade,
    response,
)

# -- OriginAllowlist ---------------------------------------------------------------------

ALLOWLIST = OriginAllowlist(["https://app.example.com", "https://*.example.com"])


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com",
        "HTTPS://APP.Example.COM",  # scheme and host are case-insensitive
        "https://a.example.com",
        "https://a.b.example.com",
        " https://x.example.com ",
    ],
)
def test_origin_allowed(origin: str) -> None:
    assert ALLOWLIST.allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",  # the wildcard needs a label in front of it
        "https://evilexample.com",  # a suffix of the name is not a subdomain
        "https://example.com.evil.com",
        "http://a.example.com",  # scheme differs
        "http://app.example.com",
        "wss://a.example.com",
        "https://evil.com",
        "null",  # sandboxed iframes and file:// pages
        "",
    ],
)
def test_origin_refused(origin: str) -> None:
    assert not ALLOWLIST.allows(origin)


def test_origin_exact_only() -> None:
    allow = OriginAllowlist(["https://App.Example.com/"])  # trailing slash and case ignored
    assert allow.allows("https://app.example.com")
    assert not allow.allows("https://x.app.example.com")
    assert not allow.allows("https://app.example.com:8443")


def test_origin_wildcard_with_port() -> None:
    allow = OriginAllowlist(["http://*.localhost:8080"])
    assert allow.allows("http://dev.localhost:8080")
    assert not allow.allows("http://dev.localhost:9090")
    assert not allow.allows("http://localhost:8080")


@pytest.mark.parametrize(
    "pattern",
    [
        "example.com",  # no scheme
        "https://",  # no host
        "*",
        "https://a.*.example.com",  # wildcard not first
        "https://*example.com",  # wildcard not a whole label
        "https://example.*",
        "https://**.example.com",
    ],
)
def test_bad_origin_pattern_raises(pattern: str) -> None:
    with pytest.raises(ValueError):
        OriginAllowlist([pattern])


# -- TrustedProxies ----------------------------------------------------------------------


def test_trusted_proxies_addresses_and_networks() -> None:
    proxies = TrustedProxies(["10.0.0.5", "192.168.0.0/16", " 2001:db8::/32 ", "::1"])
    assert proxies
    assert proxies.trusts("10.0.0.5")
    assert not proxies.trusts("10.0.0.6")
    assert proxies.trusts("192.168.200.7")
    assert not proxies.trusts("192.169.0.1")
    assert proxies.trusts("2001:db8::1")
    assert proxies.trusts("2001:DB8:ffff::42")
    assert not proxies.trusts("2001:db9::1")
    assert proxies.trusts("::1")
    # Not addresses at all, or of the other family: never trusted, never an error.
    for text in ("unknown", "", "_hidden", "10.0.0.5:80", "::ffff:10.0.0.6"):
        assert not proxies.trusts(text), text


def test_no_trusted_proxies_is_falsy() -> None:
    assert not TrustedProxies([])
    assert not TrustedProxies([]).trusts("127.0.0.1")


def test_trusted_proxy_network_host_bits_allowed() -> None:
    # ``10.1.2.3/8`` is taken as the network 10.0.0.0/8 (strict=False).
    assert TrustedProxies(["10.1.2.3/8"]).trusts("10.200.0.1")


@pytest.mark.parametrize("bad", ["not-an-ip", "10.0.0.0/33", "300.1.1.1"])
def test_bad_trusted_proxy_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        TrustedProxies([bad])


# -- client_ip ---------------------------------------------------------------------------

PROXIES = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8:ffff::/48"])


def headers(*pairs: tuple[str, str]) -> Sequence[tuple[str, str]]:
    return tuple(pairs)


def test_untrusted_peer_headers_ignored() -> None:
    spoofed = headers(("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=7.7.7.7"))
    assert client_ip("203.0.113.9", spoofed, PROXIES) == "203.0.113.9"
    # Nobody is trusted: the peer, whatever it says.
    assert client_ip("127.0.0.1", spoofed, TrustedProxies([])) == "127.0.0.1"
    assert client_ip(None, spoofed, PROXIES) is None


def test_trusted_peer_without_headers_is_the_client() -> None:
    assert client_ip("127.0.0.1", (), PROXIES) == "127.0.0.1"


def test_x_forwarded_for_chain_walked_from_nearest_hop() -> None:
    # The client prepended "spoofed"; proxy2 (trusted) appended the client's address,
    # our peer (trusted) appended proxy2's.
    chain = headers(("x-forwarded-for", "198.51.100.66, 203.0.113.7, 10.1.1.1"))
    assert client_ip("127.0.0.1", chain, PROXIES) == "203.0.113.7"
    # One hop only.
    assert client_ip("10.9.9.9", headers(("x-forwarded-for", "203.0.113.8")), PROXIES) == (
        "203.0.113.8"
    )


def test_x_forwarded_for_across_several_headers() -> None:
    chain = headers(
        ("x-forwarded-for", "198.51.100.66"), ("x-forwarded-for", "203.0.113.7, 10.1.1.1")
    )
    assert client_ip("127.0.0.1", chain, PROXIES) == "203.0.113.7"


def test_every_hop_trusted_gives_the_farthest() -> None:
    chain = headers(("x-forwarded-for", "10.0.0.1, 10.0.0.2"))
    assert client_ip("127.0.0.1", chain, PROXIES) == "10.0.0.1"


def test_forwarded_ipv6_with_port() -> None:
    got = client_ip("127.0.0.1", headers(("forwarded", 'for="[2001:db8::1]:4711"')), PROXIES)
    assert got == "2001:db8::1"
    # Normalised, and over an IPv6 proxy.
    got = client_ip("2001:db8:ffff::2", headers(("forwarded", 'for="[2001:DB8:0::1]"')), PROXIES)
    assert got == "2001:db8::1"


def test_forwarded_with_other_parameters() -> None:
    forwarded = headers(("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"))
    assert client_ip("127.0.0.1", forwarded, PROXIES) == "192.0.2.60"
    forwarded = headers(("forwarded", "proto=https;For=192.0.2.61:8080"))
    assert client_ip("127.0.0.1", forwarded, PROXIES) == "192.0.2.61"


def test_forwarded_chain() -> None:
    forwarded = headers(("forwarded", "for=198.51.100.66, for=192.0.2.60, for=10.1.1.1"))
    assert client_ip("127.0.0.1", forwarded, PROXIES) == "192.0.2.60"


def test_forwarded_unknown_falls_back_to_the_peer() -> None:
    assert client_ip("127.0.0.1", headers(("forwarded", "for=unknown")), PROXIES) == "127.0.0.1"
    assert client_ip("127.0.0.1", headers(("forwarded", 'for="_hidden"')), PROXIES) == ("127.0.0.1")


def test_nothing_before_an_unknown_hop_is_believed() -> None:
    # The trusted proxy hid the client ("unknown"); "6.6.6.6" was written by the client.
    forwarded = headers(("forwarded", "for=6.6.6.6, for=unknown"))
    assert client_ip("127.0.0.1", forwarded, PROXIES) == "127.0.0.1"
    xff = headers(("x-forwarded-for", "6.6.6.6, unknown"))
    assert client_ip("127.0.0.1", xff, PROXIES) == "127.0.0.1"


def test_forwarded_preferred_over_x_forwarded_for() -> None:
    both = headers(("x-forwarded-for", "198.51.100.1"), ("forwarded", "for=192.0.2.60"))
    assert client_ip("127.0.0.1", both, PROXIES) == "192.0.2.60"
    # A Forwarded header with no for= leaves X-Forwarded-For in charge.
    both = headers(("forwarded", "proto=https"), ("x-forwarded-for", "198.51.100.1"))
    assert client_ip("127.0.0.1", both, PROXIES) == "198.51.100.1"


# -- Admission ---------------------------------------------------------------------------


def request(
    path: str = "/", *, origin: str | None = None, ip: str | None = "192.0.2.1"
) -> UpgradeRequest:
    pairs = (("origin", origin),) if origin is not None else ()
    return UpgradeRequest(path=path, headers=pairs, client_ip=ip)


def door(
    *,
    path: str | None = None,
    allowed_origins: Sequence[str] | None = None,
    max_connections: int | None = None,
    max_connections_per_ip: int | None = None,
) -> Admission:
    return Admission(
        path=path,
        allowed_origins=allowed_origins,
        max_connections=max_connections,
        max_connections_per_ip=max_connections_per_ip,
    )


def test_open_door_admits_everyone() -> None:
    admission = door()
    for i in range(100):
        assert admission.admit(request(ip=f"10.0.0.{i}")) is None
    assert admission.held == 100


def test_path_mismatch_is_404() -> None:
    admission = door(path="/ws")
    assert admission.admit(request("/ws")) is None
    refusal = admission.admit(request("/other"))
    assert refusal == Rejected(404, "Not found")
    assert admission.admit(request("/ws/")) is not None  # exact, not a prefix
    assert admission.held == 1  # refusals hold nothing


def test_origin_refused_is_403_and_no_origin_passes() -> None:
    admission = door(allowed_origins=["https://app.example.com", "https://*.example.com"])
    refusal = admission.admit(request(origin="https://evil.com"))
    assert refusal is not None and refusal.status == 403
    assert admission.admit(request(origin="https://app.example.com")) is None
    assert admission.admit(request(origin="https://x.example.com")) is None
    assert admission.admit(request()) is None  # no Origin: not a browser
    assert admission.held == 3


def test_empty_allowlist_refuses_every_browser() -> None:
    admission = door(allowed_origins=[])
    assert admission.admit(request(origin="https://app.example.com")) is not None
    assert admission.admit(request()) is None


def test_path_checked_before_origin() -> None:
    admission = door(path="/ws", allowed_origins=["https://app.example.com"])
    refusal = admission.admit(request("/x", origin="https://evil.com"))
    assert refusal is not None and refusal.status == 404


def test_max_connections_is_503_with_retry_after_and_release_frees_a_slot() -> None:
    admission = door(max_connections=2)
    first, second, third = (request(ip=f"192.0.2.{i}") for i in range(3))
    assert admission.admit(first) is None
    assert admission.admit(second) is None
    refusal = admission.admit(third)
    assert refusal is not None and refusal.status == 503
    assert ("retry-after", str(CAP_RETRY_AFTER)) in refusal.headers
    assert admission.held == 2
    admission.release(first)
    assert admission.held == 1
    assert admission.admit(third) is None
    assert admission.admit(first) is not None


def test_max_connections_per_ip_is_429_with_retry_after() -> None:
    admission = door(max_connections_per_ip=2)
    assert admission.admit(request(ip="192.0.2.1")) is None
    assert admission.admit(request(ip="192.0.2.1")) is None
    refusal = admission.admit(request(ip="192.0.2.1"))
    assert refusal is not None and refusal.status == 429
    assert ("retry-after", str(CAP_RETRY_AFTER)) in refusal.headers
    # Other addresses are unaffected.
    assert admission.admit(request(ip="192.0.2.2")) is None
    admission.release(request(ip="192.0.2.1"))
    assert admission.admit(request(ip="192.0.2.1")) is None
    assert admission.admit(request(ip="192.0.2.1")) is not None


def test_release_forgets_addresses_with_nothing_held() -> None:
    admission = door(max_connections_per_ip=1)
    for i in range(50):
        req = request(ip=f"198.51.100.{i}")
        assert admission.admit(req) is None
        admission.release(req)
    assert admission.held == 0
    assert admission._per_ip == {}


def test_global_cap_checked_before_per_ip_cap() -> None:
    admission = door(max_connections=1, max_connections_per_ip=1)
    assert admission.admit(request(ip="192.0.2.1")) is None
    refusal = admission.admit(request(ip="192.0.2.1"))
    assert refusal is not None and refusal.status == 503


def test_refused_by_path_or_origin_does_not_count_against_caps() -> None:
    admission = door(path="/ws", allowed_origins=["https://ok.test"], max_connections=1)
    for _ in range(5):
        assert admission.admit(request("/nope")) is not None
        assert admission.admit(request("/ws", origin="https://bad.test")) is not None
    assert admission.held == 0
    assert admission.admit(request("/ws")) is None


def test_unknown_client_address_shares_one_bucket() -> None:
    admission = door(max_connections_per_ip=1)
    assert admission.admit(request(ip=None)) is None
    refusal = admission.admit(request(ip=None))
    assert refusal is not None and refusal.status == 429


# -- HeadReader ------------------------------------------------------------------------

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_head(
    target: str = "/",
    *,
    method: str = "GET",
    version: str = "1.1",
    key: str | None = KEY,
    ws_version: str | None = "13",
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: example.com"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if ws_version is not None:
        lines.append(f"Sec-WebSocket-Version: {ws_version}")
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse(data: bytes) -> RequestHead:
    head = HeadReader().feed(data)
    assert isinstance(head, RequestHead), head
    return head


def test_head_parsed() -> None:
    head = parse(
        upgrade_head(
            "/ws?token=abc",
            extra=[("Origin", "https://app.example.com"), ("Sec-WebSocket-Protocol", "a, b")],
        )
    )
    assert (head.method, head.target, head.path, head.http_version) == (
        "GET",
        "/ws?token=abc",
        "/ws",
        "1.1",
    )
    assert head.header("origin") == "https://app.example.com"
    assert head.header("host") == "example.com"
    assert head.subprotocols == ["a", "b"]
    assert head.is_upgrade
    assert head.trailing == b""
    assert check_upgrade(head) is None


def test_head_fed_byte_by_byte() -> None:
    data = upgrade_head("/x")
    reader = HeadReader()
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) is None
    head = reader.feed(data[-1:])
    assert isinstance(head, RequestHead)
    assert head.path == "/x" and head.raw == data


def test_trailing_bytes_after_the_head_are_kept() -> None:
    data = upgrade_head()
    frame = b"\x81\x85\x00\x00\x00\x00hello"  # a masked text frame sent before the 101
    reader = HeadReader()
    assert reader.feed(data[:10]) is None
    head = reader.feed(data[10:] + frame)
    assert isinstance(head, RequestHead)
    assert head.trailing == frame
    assert head.raw == data + frame


def test_eof_before_a_complete_head_is_400() -> None:
    reader = HeadReader()
    assert reader.feed(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    refusal = reader.feed(b"")
    assert isinstance(refusal, Rejected) and refusal.status == 400


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello, sort of
        b"hello there\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ],
)
def test_garbage_is_400(garbage: bytes) -> None:
    refusal = HeadReader().feed(garbage)
    assert isinstance(refusal, Rejected) and refusal.status == 400, refusal


def padding_headers(total: int, value_size: int = 1000) -> list[tuple[str, str]]:
    return [(f"X-Pad-{i}", "a" * value_size) for i in range(total)]


def test_head_over_16_kib_fed_in_pieces_is_431() -> None:
    data = upgrade_head(extra=padding_headers(20))
    assert MAX_HEAD_BYTES < len(data) < 2 * MAX_HEAD_BYTES
    reader = HeadReader()
    got: RequestHead | Rejected | None = None
    for start in range(0, len(data), 1024):
        got = reader.feed(data[start : start + 1024])
        if got is not None:
            break
    assert isinstance(got, Rejected) and got.status == 431, got


@pytest.mark.parametrize("pieces", [1, 2])
def test_head_over_16_kib_is_431_however_it_arrives(pieces: int) -> None:
    data = upgrade_head(extra=padding_headers(20))
    assert MAX_HEAD_BYTES < len(data) < 2 * MAX_HEAD_BYTES
    reader = HeadReader()
    got: RequestHead | Rejected | None = None
    if pieces == 2:
        assert reader.feed(data[:MAX_HEAD_BYTES]) is None
        got = reader.feed(data[MAX_HEAD_BYTES:])
    else:
        got = reader.feed(data)
    assert isinstance(got, Rejected) and got.status == 431, type(got)


def test_head_just_under_16_kib_is_fine() -> None:
    data = upgrade_head(extra=padding_headers(15))
    assert len(data) < MAX_HEAD_BYTES
    assert check_upgrade(parse(data)) is None


def test_header_count_limit() -> None:
    # upgrade_head writes 5 headers of its own (Host, Upgrade, Connection, Key, Version).
    at_limit = upgrade_head(extra=padding_headers(MAX_HEADERS - 5, 10))
    assert len(parse(at_limit).headers) == MAX_HEADERS
    over = HeadReader().feed(upgrade_head(extra=padding_headers(MAX_HEADERS - 4, 10)))
    assert isinstance(over, Rejected) and over.status == 431, over


# -- Headers: a request's headers, kept as one string ------------------------------------


def h11_pairs(data: bytes) -> tuple[tuple[str, str], ...]:
    """The headers as h11 parses them, decoded as the server always has (the tuple
    ``UpgradeRequest.headers`` used to be)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers)


ODD_HEADERS = [
    ("X-Trace", "first"),
    ("Referer", "http://h:1/p?q=a:b"),  # colons in the value
    ("X-Empty", ""),
    ("X-Trace", "second"),
    ("X-Name", "caf\xe9"),  # latin-1
    ("X-Note", "origin: none here"),  # another header's name, inside a value
    ("X-Folded", "one\r\n  two"),  # an obsolete line fold: h11 joins it
    ("X-Spaced", "  padded  "),
]


def test_headers_are_the_pairs_h11_parsed_in_a_sequence_equal_to_their_tuple() -> None:
    data = upgrade_head("/", extra=ODD_HEADERS)
    headers = parse(data).headers
    expected = h11_pairs(data)
    assert isinstance(headers, Headers) and isinstance(headers, Sequence)
    assert headers == expected and expected == headers
    assert headers != list(expected)  # (as the tuple it was: a list is not equal)
    assert tuple(headers) == expected and list(headers) == list(expected)
    assert len(headers) == len(expected) == 13
    assert headers[0] == expected[0] and headers[-1] == expected[-1]
    assert headers[2:5] == expected[2:5] and headers[::-1] == expected[::-1]
    with pytest.raises(IndexError):
        headers[len(expected)]
    assert list(reversed(headers)) == list(reversed(expected))
    assert ("x-trace", "second") in headers and ("x-trace", "third") not in headers
    assert headers.index(("x-trace", "second")) == expected.index(("x-trace", "second"))
    assert headers.count(("x-trace", "first")) == 1
    assert hash(headers) == hash(expected) and repr(headers) == repr(expected)
    assert dict(headers)["x-folded"] == "one two"
    assert dict(headers)["x-spaced"] == "padded"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("host", "example.com"),  # the first line
        ("sec-websocket-version", "13"),
        ("x-trace", "first"),  # the first of two
        ("referer", "http://h:1/p?q=a:b"),
        ("x-empty", ""),
        ("x-name", "caf\xe9"),
        ("x-spaced", "padded"),  # the last line
        ("origin", None),  # only inside another header's value
        ("trace", None),  # the end of a name is not a name
        ("x-trace:first", None),  # no name has a colon
        ("x-trace\nhost", None),
        ("X-Trace", None),  # ``get`` takes the lower-case name
    ],
)
def test_headers_get_finds_the_first_value_without_splitting(name: str, value: str | None) -> None:
    head = parse(upgrade_head("/", extra=ODD_HEADERS))
    assert head.headers.get(name) == value
    assert head.header(name) == value


def test_headers_made_from_str_pairs() -> None:
    headers = Headers([("X-A", "1"), ("x-b", "two: 2")])
    assert headers == (("x-a", "1"), ("x-b", "two: 2"))
    assert headers == Headers([("x-a", "1"), ("X-B", "two: 2")])
    assert headers.get("x-b") == "two: 2"
    empty = Headers()
    assert empty == () and len(empty) == 0 and not empty and list(empty) == []
    assert empty.get("host") is None
    for bad in [("a:b", "1"), ("a\nb", "1"), ("a", "1\n2")]:
        with pytest.raises(ValueError):
            Headers([bad])


def test_the_upgrade_request_shares_the_heads_headers() -> None:
    head = parse(upgrade_head("/", extra=ODD_HEADERS))
    request = UpgradeRequest.from_target(head.target, head.headers, head.subprotocols)
    assert request.headers is head.headers  # not copied
    assert request.header("X-TRACE") == "first"
    assert request.header("x-missing") is None
    assert request.header("x-missing", "default") == "default"
    assert request.header("x-empty", "default") == ""
    # Equal to the same request with the headers as a tuple.
    assert request == UpgradeRequest.from_target(head.target, tuple(head.headers))


# -- check_upgrade -------------------------------------------------------------------------


def refusal_of(data: bytes) -> Rejected:
    refusal = check_upgrade(parse(data))
    assert refusal is not None
    return refusal


@pytest.mark.parametrize("version", ["1.0", "9.9"])
def test_upgrade_over_other_than_http_11_is_400(version: str) -> None:
    assert refusal_of(upgrade_head(version=version)).status == 400


def test_post_is_405_with_allow() -> None:
    refusal = refusal_of(upgrade_head(method="POST"))
    assert refusal.status == 405
    assert ("allow", "GET") in refusal.headers


@pytest.mark.parametrize(
    ("upgrade", "connection"),
    [(None, "Upgrade"), ("h2c", "Upgrade"), ("websocket", None), ("websocket", "keep-alive")],
    ids=["no-upgrade", "upgrade-h2c", "no-connection", "connection-keep-alive"],
)
def test_not_an_upgrade_is_426(upgrade: str | None, connection: str | None) -> None:
    refusal = refusal_of(upgrade_head(upgrade=upgrade, connection=connection))
    assert refusal.status == 426
    assert ("upgrade", "websocket") in refusal.headers


def test_header_tokens_are_case_insensitive_lists() -> None:
    head = parse(upgrade_head(upgrade="WebSocket", connection="keep-alive, Upgrade"))
    assert check_upgrade(head) is None


@pytest.mark.parametrize("ws_version", ["12", "8", None])
def test_other_websocket_version_is_426(ws_version: str | None) -> None:
    refusal = refusal_of(upgrade_head(ws_version=ws_version))
    assert refusal.status == 426
    assert ("sec-websocket-version", "13") in refusal.headers


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "not base64!!",
        base64.b64encode(b"x" * 15).decode(),
        base64.b64encode(b"x" * 17).decode(),
        "dGhlIHNhbXBsZSBub25jZQ",  # padding missing
    ],
)
def test_bad_key_is_400(key: str | None) -> None:
    assert refusal_of(upgrade_head(key=key)).status == 400


def test_any_16_byte_key_passes() -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    assert check_upgrade(parse(upgrade_head(key=key))) is None


# -- responses -----------------------------------------------------------------------------


def test_accept_response_matches_rfc_6455_example() -> None:
    data = accept_response("dGhlIHNhbXBsZSBub25jZQ==", None)
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # RFC 6455 section 1.3 (and 4.2.2): this key gives this accept value.
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in data
    assert b"Sec-WebSocket-Protocol" not in data
    assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1


def test_accept_response_for_any_key_and_subprotocol() -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    expected = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    )
    data = accept_response(key, "chat.v1")
    assert b"Sec-WebSocket-Accept: " + expected + b"\r\n" in data
    assert b"\r\nSec-WebSocket-Protocol: chat.v1\r\n" in data


def test_response_closes_and_counts_bytes() -> None:
    data = response(503, "draining é", (("retry-after", "1"),))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    lines = head.split(b"\r\n")
    assert b"connection: close" in lines and b"retry-after: 1" in lines
    assert f"content-length: {len(body)}".encode() in lines
    assert body == "draining é".encode()


def test_response_to_head_keeps_the_length_drops_the_body() -> None:
    data = response(200, b'{"status":"ok"}', content_type="application/json", head_only=True)
    assert data.endswith(b"\r\n\r\n")
    assert b"content-length: 15\r\n" in data


def test_response_header_values_cannot_end_the_head() -> None:
    data = response(403, "no", (("x-reason", "a\r\n\r\ninjected: 1"),))
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"no"
    assert b"\r\ninjected" not in head
