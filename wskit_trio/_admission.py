"""Who may open a WebSocket: path, Origin, connection caps, the client's address.

Pure policy, decided on the upgrade request before any app code runs; the
server asks, in this order: the path (404), the Origin (403), the caps (503 /
429, with ``Retry-After``). Nothing here does I/O or imports trio.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

from ._transport import Rejected, UpgradeRequest

__all__ = ["Admission", "OriginAllowlist", "TrustedProxies", "client_ip"]

_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Seconds a client refused by a cap is told to wait (``Retry-After``).
CAP_RETRY_AFTER: Final = 1


class OriginAllowlist:
    """Origins a browser page may connect from: exact (``https://app.example.com``)
    or one wildcard label for any subdomain (``https://*.example.com``, which does
    not match ``https://example.com`` itself). Compared case-insensitively."""

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, origins: Iterable[str]) -> None:
        self._exact: set[str] = set()
        self._suffixes: list[tuple[str, str]] = []
        for origin in origins:
            origin = origin.strip().lower().rstrip("/")
            scheme, sep, host = origin.partition("://")
            if not sep or not host:
                raise ValueError(f"allowed origin must look like 'https://host', got {origin!r}")
            if host.startswith("*."):
                self._suffixes.append((scheme + "://", host[1:]))
            elif "*" in host:
                raise ValueError(f"a wildcard may only stand first, as in '*.host': {origin!r}")
            else:
                self._exact.add(origin)

    def allows(self, origin: str) -> bool:
        origin = origin.strip().lower()
        if origin in self._exact:
            return True
        for scheme, suffix in self._suffixes:
            if origin.startswith(scheme):
                host = origin[len(scheme) :]
                if host.endswith(suffix) and len(host) > len(suffix):
                    return True
        return False


class TrustedProxies:
    """Addresses (``10.0.0.5``) and networks (``10.0.0.0/8``) of reverse proxies whose
    ``Forwarded`` / ``X-Forwarded-For`` headers are believed."""

    __slots__ = ("_networks",)

    def __init__(self, proxies: Iterable[str]) -> None:
        self._networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(proxy.strip(), strict=False) for proxy in proxies
        )

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        parsed = _parse_ip(address)
        return parsed is not None and any(parsed in network for network in self._networks)


def _parse_ip(text: str) -> _Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` addresses of a ``Forwarded`` header (RFC 7239), in order, ports and
    brackets removed; obfuscated or ``unknown`` nodes kept as they are (not IPs)."""
    found: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, node = pair.strip().partition("=")
            if name.strip().lower() != "for":
                continue
            node = node.strip().strip('"')
            if node.startswith("["):  # [v6] or [v6]:port
                node = node[1 : node.find("]")] if "]" in node else node[1:]
            elif node.count(":") == 1:  # v4:port
                node = node.partition(":")[0]
            found.append(node)
    return found


def client_ip(
    peer_ip: str | None, headers: Sequence[tuple[str, str]], trusted: TrustedProxies
) -> str | None:
    """The client's address. Proxy headers count only when the peer is a trusted
    proxy; then the chain is walked from the nearest hop back, and the first
    address that is not a trusted proxy is the client (the ones before it could
    be made up by the client itself). ``Forwarded`` wins over ``X-Forwarded-For``."""
    if peer_ip is None or not trusted or not trusted.trusts(peer_ip):
        return peer_ip
    chain: list[str] = []
    for name in ("forwarded", "x-forwarded-for"):
        for key, value in headers:
            if key == name:
                chain += (
                    _forwarded_for(value)
                    if name == "forwarded"
                    else [part.strip() for part in value.split(",")]
                )
        if chain:
            break
    for hop in reversed(chain):
        address = _parse_ip(hop)
        if address is None:
            # "unknown" or obfuscated: whatever stands before it may be made up.
            return peer_ip
        if not trusted.trusts(hop):
            return str(address)
    # Every hop is a proxy we trust: the farthest one.
    return str(_parse_ip(chain[0])) if chain else peer_ip


class Admission:
    """The server's door: path, Origin and caps, and the count of connections held.

    :meth:`admit` reserves a slot for an accepted client; the server gives it back
    with :meth:`release` when that connection ends (or the upgrade fails later on).
    """

    def __init__(
        self,
        *,
        path: str | None,
        allowed_origins: Iterable[str] | None,
        max_connections: int | None,
        max_connections_per_ip: int | None,
    ) -> None:
        self.path = path
        self.origins = OriginAllowlist(allowed_origins) if allowed_origins is not None else None
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.held = 0
        self._per_ip: dict[str, int] = {}

    def admit(self, request: UpgradeRequest) -> Rejected | None:
        """``None`` and a slot reserved, or the refusal."""
        if self.path is not None and request.path != self.path:
            return Rejected(404, "Not found")
        if self.origins is not None:
            origin = request.header("origin")
            # No Origin: not a browser, so not a cross-site page either.
            if origin is not None and not self.origins.allows(origin):
                return Rejected(403, "Origin not allowed")
        retry = (("retry-after", str(CAP_RETRY_AFTER)),)
        if self.max_connections is not None and self.held >= self.max_connections:
            return Rejected(503, "Server at its connection limit", retry)
        ip = request.client_ip or ""
        count = self._per_ip.get(ip, 0)
        if self.max_connections_per_ip is not None and count >= self.max_connections_per_ip:
            return Rejected(429, "Too many connections from this address", retry)
        self.held += 1
        self._per_ip[ip] = count + 1
        return None

    def release(self, request: UpgradeRequest) -> None:
        self.held -= 1
        ip = request.client_ip or ""
        count = self._per_ip.get(ip, 0) - 1
        if count > 0:
            self._per_ip[ip] = count
        else:
            self._per_ip.pop(ip, None)
