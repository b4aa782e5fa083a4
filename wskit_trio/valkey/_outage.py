"""Logging a Valkey outage once: "unreachable" when it begins, "recovered" when it ends.

Both Valkey backends (pub/sub and the rate limiter) own one :class:`Outage`. They
report every failure and every success to it; it logs only the transitions, so an
outage of a thousand failed reconnects or refused consumes is one WARNING and, once
Valkey answers again, one INFO with how long it lasted (``trio.current_time()``,
so virtual time under a ``MockClock``).

Records go to the ``wskit_trio.valkey`` logger and never hold a password: the
address is shown redacted (:func:`redact_url`), and the password, if the owner knows
it, is masked in the error text too.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

__all__ = ["Outage", "redact_url", "valkey_url"]

log: Final = logging.getLogger("wskit_trio.valkey")

_MASK: Final = "***"


def redact_url(url: str) -> str:
    """``url`` with its password masked: ``valkey://user:pw@host:6379/0`` becomes
    ``valkey://user:***@host:6379/0`` and ``valkey://:pw@host`` ``valkey://:***@host``.

    Everything up to the last ``@`` after the scheme is taken as the user info, so a
    password holding ``/``, ``#`` or ``@`` (not percent-encoded) is masked whole too.
    User info without a ``:`` is masked whole (some clients read it as a password).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, location = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:{_MASK}" if colon else _MASK
    return f"{scheme}{sep}{masked}@{location}"


def valkey_url(host: str, port: int, db: int | None = None, password: str | None = None) -> str:
    """The address as a URL, for logs: ``valkey://[:***@]host:port[/db]``."""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    auth = f":{_MASK}@" if password else ""
    path = "" if db is None else f"/{db}"
    return f"valkey://{auth}{host}:{port}{path}"


class Outage:
    """Whether Valkey is out for one backend, logged on each change.

    ``what`` names the backend in the records ("pub/sub", "rate limiter"); ``where``
    is the redacted address; ``secret`` (the password) is masked in error texts.
    """

    def __init__(self, what: str, where: str, *, secret: str | None = None) -> None:
        self.what = what
        self.where = where
        self.secret = secret
        #: ``trio.current_time()`` of the failure that began the outage, while out.
        self._since: float | None = None

    @property
    def active(self) -> bool:
        """Whether an outage is going on (a failure with no success since)."""
        return self._since is not None

    def failed(self, error: BaseException | str) -> None:
        """Valkey could not be reached; logs a WARNING if this begins an outage."""
        if self._since is not None:
            return
        self._since = trio.current_time()
        reason = str(error) or type(error).__name__
        if self.secret:
            reason = reason.replace(self.secret, _MASK)
        log.warning("Valkey at %s unreachable (%s): %s", self.where, self.what, reason)

    def ok(self) -> None:
        """Valkey answered; logs an INFO if this ends an outage."""
        if self._since is None:
            return
        elapsed = trio.current_time() - self._since
        self._since = None
        log.info("Valkey at %s recovered after %.1f s (%s)", self.where, elapsed, self.what)
