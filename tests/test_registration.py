"""Registration refuses handlers, middleware and hooks that could only fail when called.

Every form the dispatcher can call (``await handler(ctx)``, ``await mw(ctx, next)``,
``hook(ctx)``) is accepted; anything else raises ``ConfigurationError`` at once,
naming the callable, the message type and what is wrong.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ECHO, PING, PONG, Conn, Ping, Pong

from wskit_trio import (
    ConfigurationError,
    ConnectionContext,
    Context,
    Next,
    Router,
    RpcContext,
    WsKitError,
)
from wskit_trio.testing import open_test_app


async def ping(ctx: Context[Ping, Conn]) -> None:
    await ctx.send(PONG, Pong(reply=ctx.payload.text))


async def ping_with_prefix(prefix: str, ctx: Context[Ping, Conn]) -> None:
    await ctx.send(PONG, Pong(reply=prefix + ctx.payload.text))


async def ping_with_default(ctx: Context[Ping, Conn], suffix: str = "!") -> None:
    await ctx.send(PONG, Pong(reply=ctx.payload.text + suffix))


async def ping_star_args(*args: Context[Ping, Conn]) -> None:
    await args[0].send(PONG, Pong(reply=args[0].payload.text))


class Handlers:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def ping(self, ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(reply=self.prefix + ctx.payload.text))


class AsyncCallable:
    async def __call__(self, ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(reply="called:" + ctx.payload.text))


class SyncCallable:
    def __call__(self, ctx: Context[Ping, Conn]) -> None:
        pass


@pytest.mark.parametrize(
    ("handler", "reply"),
    [
        (ping, "hi"),
        (functools.partial(ping_with_prefix, "p:"), "p:hi"),
        (Handlers("m:").ping, "m:hi"),
        (functools.partial(Handlers("pm:").ping), "pm:hi"),
        (AsyncCallable(), "called:hi"),
        (ping_with_default, "hi!"),
        (ping_star_args, "hi"),
    ],
    ids=["async-def", "partial", "bound-method", "partial-method", "callable", "default", "args"],
)
async def test_accepted_handler_forms_register_and_run(handler: Any, reply: str) -> None:
    router: Router[Conn] = Router()
    router.on(PING, handler)
    async with open_test_app(router) as app:
        client = await app.connect(Conn(user_id="u1"))
        await client.send(PING, Ping("hi"))
        assert await client.receive_payload(PONG) == Pong(reply)


def test_decorator_form_checks_too() -> None:
    router: Router[Conn] = Router()
    with pytest.raises(ConfigurationError, match=r"handler .*sync_ping for 'PING'"):

        @router.on(PING)  # type: ignore[arg-type]
        def sync_ping(ctx: Context[Ping, Conn]) -> None:
            pass

    assert router.routes == {}


def test_a_lambda_returning_none_is_refused_naming_it_and_the_type() -> None:
    router: Router[Conn] = Router()
    with pytest.raises(ConfigurationError) as info:
        router.on(PING, lambda ctx: None)  # type: ignore[arg-type,return-value]
    assert str(info.value) == (
        "handler test_a_lambda_returning_none_is_refused_naming_it_and_the_type.<locals>"
        ".<lambda> for 'PING' must be an async def function (it is awaited "
        "for each call); got a synchronous callable"
    )
    assert router.routes == {}


def sync_handler(ctx: Context[Ping, Conn]) -> None:
    pass


async def no_params() -> None:
    pass


async def two_params(ctx: Context[Ping, Conn], extra: int) -> None:
    pass


async def keyword_only(ctx: Context[Ping, Conn], *, extra: int) -> None:
    pass


@pytest.mark.parametrize(
    ("handler", "name", "problem"),
    [
        (sync_handler, "sync_handler", "must be an async def function"),
        (SyncCallable(), "SyncCallable instance", "must be an async def function"),
        (AsyncCallable, "AsyncCallable", "must be an async def function"),
        (functools.partial(sync_handler), "functools.partial(sync_handler)", "async def"),
        (lambda ctx: ping(ctx), "<lambda>", "must be an async def function"),
        (no_params, "no_params", r"exactly \(ctx\).*signature is \(\): too many"),
        (two_params, "two_params", "exactly \\(ctx\\).*missing a required argument: 'extra'"),
        (keyword_only, "keyword_only", "missing a required argument: 'extra'"),
        (functools.partial(two_params), "functools.partial(two_params)", "missing a required"),
        (Handlers.ping, "Handlers.ping", "missing a required argument: 'ctx'"),
        ("ping", "str instance", "is not callable"),
    ],
    ids=[
        "sync-def",
        "sync-callable",
        "class",
        "partial-sync",
        "lambda-returning-coroutine",
        "no-params",
        "two-params",
        "keyword-only",
        "partial-two-params",
        "unbound-method",
        "not-callable",
    ],
)
def test_refused_handler_forms(handler: Any, name: str, problem: str) -> None:
    router: Router[Conn] = Router()
    with pytest.raises(
        ConfigurationError, match=f"^handler (.*<locals>\\.)?{re.escape(name)} for 'PING' "
    ):
        router.on(PING, handler)
    with pytest.raises(ConfigurationError, match=problem):
        router.on(PING, handler)
    assert router.routes == {}


def test_rpc_handlers_are_checked() -> None:
    router: Router[Conn] = Router()

    def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"^RPC handler .*<locals>\.echo for 'ECHO'"):
        router.rpc(ECHO, echo)  # type: ignore[arg-type]

    async def echo_async(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        await ctx.reply(Pong(ctx.payload.text))

    assert router.rpc(ECHO)(echo_async) is echo_async
    assert set(router.routes) == {"ECHO"}


async def traced(ctx: Context[Any, Conn], next: Next) -> None:
    await next()


def sync_mw(ctx: Context[Any, Conn], next: Next) -> None:
    pass


async def one_param_mw(ctx: Context[Any, Conn]) -> None:
    pass


def test_middleware_is_checked_global_and_per_route() -> None:
    router: Router[Conn] = Router()
    assert router.use(traced) is traced
    assert router.use(functools.partial(traced)) is not None
    with pytest.raises(ConfigurationError, match=r"^middleware sync_mw \(global\) must be an"):
        router.use(sync_mw)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"exactly \(ctx, next\).*too many"):
        router.use(one_param_mw)  # type: ignore[arg-type]
    # Per-route middleware is checked when the route is declared, before its handler.
    with pytest.raises(ConfigurationError, match=r"^middleware one_param_mw for 'PING' must"):
        router.on(PING, middleware=[traced, one_param_mw])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match=r"^middleware sync_mw for 'ECHO' must be an"):
        router.rpc(ECHO, middleware=[sync_mw])  # type: ignore[list-item]
    assert router.routes == {}
    router.on(PING, ping, middleware=[traced])
    assert set(router.routes) == {"PING"}


def test_hooks_may_be_sync_but_must_take_their_arguments() -> None:
    router: Router[Conn] = Router()
    seen: list[object] = []

    def opened(ctx: ConnectionContext[Conn]) -> None:
        seen.append(ctx)

    async def errored(error: WsKitError, ctx: ConnectionContext[Conn]) -> None:
        seen.append(error)

    router.on_open(opened)
    router.on_close(lambda ctx: None)
    router.on_error(errored)
    with pytest.raises(ConfigurationError, match=r"^on_error hook .*exactly \(error, ctx\)"):
        router.on_error(opened)  # type: ignore[arg-type]

    def no_args() -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"^on_open hook .*no_args must take"):
        router.on_open(no_args)  # type: ignore[arg-type]


def test_project_registrations_still_pass() -> None:
    """The shipped middleware factories and plugins register as before."""
    from wskit_trio import MemoryRateLimiter, Metrics, log_messages, rate_limit, require_auth

    router: Router[Conn] = Router()
    limiter = MemoryRateLimiter(capacity=1, tokens_per_second=1)
    factories: list[Callable[[], Any]] = [
        require_auth,
        log_messages,
        lambda: rate_limit(limiter=limiter),
    ]
    for factory in factories:
        router.use(factory())
    router.plugin(Metrics())
    router.on(PING, ping, middleware=[rate_limit(limiter=limiter)])
