"""A client that meets the rate limit, shows what the server decided, and obeys it.

    python -m examples.rate_limiting.client alice [ws://127.0.0.1:3070]

sends a burst of posts and a few searches of different costs and prints each
decision, then sends the refused ones again after the ``retryAfterMs`` the server
asked for. :func:`try_request` (one request, its decision as data) and
:func:`request_obeying_hints` (retry after the server's hint) are the reusable part.
"""

from __future__ import annotations

import sys
from typing import Any, Generic, TypeVar

import attrs
import trio

from wskit_trio import ErrorCode, RpcSchema
from wskit_trio.client import Client, RpcError, open_client

from .server import POST, SEARCH, Post, Search

__all__ = ["Outcome", "request_obeying_hints", "try_request"]

Req = TypeVar("Req")
Res = TypeVar("Res")


@attrs.frozen
class Outcome(Generic[Res]):
    """How the server answered one request: the reply, or the refusal."""

    result: Res | None = None
    error: RpcError | None = None

    @property
    def allowed(self) -> bool:
        return self.error is None

    @property
    def code(self) -> str | None:
        """``None`` when allowed, else the error code (``RESOURCE_EXHAUSTED``...)."""
        return None if self.error is None else str(self.error.code)

    @property
    def retry_after_ms(self) -> int | None:
        """The server's hint: wait this long, then the same request passes."""
        return None if self.error is None else self.error.retry_after_ms

    def detail(self, key: str) -> Any:
        """``cost``, ``capacity`` or ``remaining`` from the refusal's details."""
        return None if self.error is None else self.error.details.get(key)

    def __str__(self) -> str:
        if self.error is None:
            return "allowed"
        details = ", ".join(f"{k}={v}" for k, v in sorted(self.error.details.items()))
        hint = "" if self.retry_after_ms is None else f", retry after {self.retry_after_ms} ms"
        return f"refused {self.code} ({details}{hint})"


async def try_request(client: Client, schema: RpcSchema[Req, Res], payload: Req) -> Outcome[Res]:
    """Send one request; an error answer comes back as data, not raised."""
    try:
        result = await client.request(schema, payload, timeout=10)
    except RpcError as err:
        return Outcome(error=err)
    return Outcome(result=result)


async def request_obeying_hints(
    client: Client, schema: RpcSchema[Req, Res], payload: Req, *, max_attempts: int = 10
) -> Res:
    """Send a request; refused with ``RESOURCE_EXHAUSTED``, wait the server's
    ``retryAfterMs`` and send it again (up to ``max_attempts`` sends). Any other
    error (``FAILED_PRECONDITION``: it can never pass) raises :class:`RpcError`.

    ``open_client(retry=Retry(...))`` does the same for every request.
    """
    attempt = 1
    while True:
        outcome = await try_request(client, schema, payload)
        if outcome.error is None:
            assert outcome.result is not None
            return outcome.result
        hint = outcome.retry_after_ms
        if outcome.code != ErrorCode.RESOURCE_EXHAUSTED or hint is None or attempt >= max_attempts:
            raise outcome.error
        await trio.sleep(hint / 1000)
        attempt += 1


async def main(user: str, url: str) -> None:
    async with open_client(url, auth=lambda: user) as client:
        outcomes: dict[int, Outcome[Any]] = {}

        async def post(i: int) -> None:
            outcomes[i] = await try_request(client, POST, Post(f"post {i}"))

        async with trio.open_nursery() as nursery:  # a burst: 7 posts at once
            for i in range(7):
                nursery.start_soon(post, i)
        for i, outcome in sorted(outcomes.items()):
            print(f"POST #{i}: {outcome}")
        for limit in (30, 30, 100):  # cost 3, 3, then 10 (more than a bucket holds)
            outcome = await try_request(client, SEARCH, Search("trio", limit))
            print(f"SEARCH limit={limit}: {outcome}")
        refused = [i for i, outcome in sorted(outcomes.items()) if not outcome.allowed]
        for i in refused:
            await request_obeying_hints(client, POST, Post(f"post {i}"))
            print(f"POST #{i}: allowed after waiting as told")


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "alice",
        args[1] if len(args) > 1 else "ws://127.0.0.1:3070",
    )
