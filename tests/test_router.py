"""Router: registration, middleware order and control, merge and mount."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio.testing
from conftest import ECHO, PING, PONG, Conn, Ping, Pong
from expect import error_frame, open_app

from wskit_trio import (
    ConfigurationError,
    ConnectionContext,
    Context,
    MessageSchema,
    Next,
    Router,
    RpcContext,
    WsKitError,
    message,
)
from wskit_trio.testing import TestClient

PING_JSON = '{"type": "PING", "payload": {"text": "hi"}}'
OTHER = message("OTHER", Ping)

Log = list[str]
MiddlewareFn = Callable[[Context[Any, Conn], Next], Awaitable[None]]


def tracing(log: Log, name: str) -> MiddlewareFn:
    async def mw(ctx: Context[Any, Conn], next: Next) -> None:
        log.append(f"{name} in")
        await next()
        log.append(f"{name} out")

    return mw


def pong_handler(log: Log, name: str = "handler") -> Callable[[Context[Ping, Conn]], Any]:
    async def handler(ctx: Context[Ping, Conn]) -> None:
        log.append(name)
        await ctx.send(PONG, Pong(reply=f"{name}:{ctx.payload.text}"))

    return handler


async def nothing_more(client: TestClient[Conn]) -> None:
    """Every task has settled and the server sent nothing further."""
    await trio.testing.wait_all_tasks_blocked()
    assert client.receive_nowait() is None
    assert client.closed is None


# -- registration -------------------------------------------------------------------


def test_decorator_and_plain_call_register_and_return_the_handler() -> None:
    router: Router[Conn] = Router()
    handler = pong_handler([])
    assert router.on(PING)(handler) is handler
    assert router.on(OTHER, handler) is handler

    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        await ctx.reply(Pong(ctx.payload.text))

    assert router.rpc(ECHO, echo) is echo
    routes = router.routes
    assert sorted(routes) == ["ECHO", "OTHER", "PING"]
    assert routes["PING"].handler is handler and not routes["PING"].is_rpc
    assert routes["ECHO"].is_rpc and routes["ECHO"].response is ECHO.response
    routes.clear()  # a copy
    assert len(router.routes) == 3


def test_duplicate_registration_is_rejected_at_registration_time() -> None:
    router: Router[Conn] = Router()
    first = pong_handler([], "first")
    router.on(PING, first)
    with pytest.raises(ConfigurationError, match="already registered"):
        router.on(PING, pong_handler([], "second"))
    with pytest.raises(ConfigurationError, match="already registered"):
        untyped: Any = pong_handler([])
        router.on(message("PING"), untyped)
    assert router.routes["PING"].handler is first

    router.on(message("ECHO", Ping), pong_handler([]))
    with pytest.raises(ConfigurationError, match="already registered"):
        router.rpc(ECHO, pong_handler([]))


def test_schema_kind_is_checked() -> None:
    router: Router[Conn] = Router()
    with pytest.raises(ConfigurationError):
        router.on(ECHO, pong_handler([]))  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError):
        router.rpc(PING, pong_handler([]))  # type: ignore[call-overload]


def test_reserved_type_cannot_be_registered_even_bypassing_message() -> None:
    router: Router[Conn] = Router()
    for reserved in ("__heartbeat", "$ws:abort", "__custom"):
        with pytest.raises(ConfigurationError, match="reserved"):
            router.on(MessageSchema(reserved, Ping, None), pong_handler([]))
    assert router.routes == {}


def test_plugin_registers_on_the_router() -> None:
    router: Router[Conn] = Router()

    def plugin(r: Router[Conn]) -> None:
        r.on(PING, pong_handler([]))

    assert router.plugin(plugin) is router
    assert "PING" in router.routes


# -- middleware ----------------------------------------------------------------------


async def test_middleware_runs_global_then_per_route_then_handler() -> None:
    log: Log = []
    router: Router[Conn] = Router()
    router.use(tracing(log, "g1"))
    router.on(PING, pong_handler(log), middleware=[tracing(log, "r1"), tracing(log, "r2")])
    router.use(tracing(log, "g2"))  # added after the route: still global, still second
    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw(PING_JSON)
        assert (await client.receive()).payload == {"reply": "handler:hi"}
        await nothing_more(client)
    assert log == [
        "g1 in",
        "g2 in",
        "r1 in",
        "r2 in",
        "handler",
        "r2 out",
        "r1 out",
        "g2 out",
        "g1 out",
    ]


async def test_per_route_middleware_applies_to_its_route_only() -> None:
    log: Log = []
    router: Router[Conn] = Router()
    router.on(PING, pong_handler(log, "ping"), middleware=[tracing(log, "route")])
    router.on(OTHER, pong_handler(log, "other"))
    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw('{"type": "OTHER", "payload": {"text": "x"}}')
        await client.receive()
        assert log == ["other"]
        await client.send_raw(PING_JSON)
        await client.receive()
    assert log == ["other", "route in", "ping", "route out"]


async def test_middleware_sees_only_validated_messages() -> None:
    seen: list[Any] = []
    router: Router[Conn] = Router()

    @router.use
    async def record(ctx: Context[Any, Conn], next: Next) -> None:
        seen.append(ctx.payload)
        await next()

    router.on(PING, pong_handler([]))
    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw('{"type": "PING", "payload": {"text": 1}}')
        assert (await client.receive_error()).error_code == "INVALID_ARGUMENT"
        await client.send_raw('{"type": "NOPE"}')
        assert (await client.receive_error()).error_code == "UNIMPLEMENTED"
        await client.send_raw("not json")
        assert (await client.receive_error()).error_code == "INVALID_ARGUMENT"
        assert seen == []
        await client.send_raw(PING_JSON)
        await client.receive()
    assert seen == [Ping("hi")]


async def test_middleware_short_circuits_by_not_calling_next() -> None:
    log: Log = []
    router: Router[Conn] = Router()
    allow = [False]

    @router.use
    async def gate(ctx: Context[Any, Conn], next: Next) -> None:
        log.append("gate")
        if allow[0]:
            await next()

    router.on(PING, pong_handler(log), middleware=[tracing(log, "route")])
    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw(PING_JSON)
        await nothing_more(client)
        assert log == ["gate"]
        assert app.errors == []
        allow[0] = True  # the connection still serves
        await client.send_raw(PING_JSON)
        assert (await client.receive()).type == "PONG"
    assert log == ["gate", "gate", "route in", "handler", "route out"]


async def test_middleware_can_answer_an_rpc_itself() -> None:
    router: Router[Conn] = Router()
    calls: Log = []

    async def cached(ctx: Context[Any, Conn], next: Next) -> None:
        assert isinstance(ctx, RpcContext)
        await ctx.reply(Pong("cached"))

    @router.rpc(ECHO, middleware=[cached])
    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        calls.append("handler")

    async with open_app(router) as app:
        client = await app.connect()
        cid = await client.request(ECHO, Ping("x"))
        frame = await client.receive()
        assert frame.raw == {
            "type": "ECHOED",
            "meta": {"correlationId": cid},
            "payload": {"reply": "cached"},
        }
        await nothing_more(client)
    assert calls == []


async def test_rpc_short_circuited_without_reply_gets_internal() -> None:
    router: Router[Conn] = Router()

    async def gate(ctx: Context[Any, Conn], next: Next) -> None:
        pass

    @router.rpc(ECHO, middleware=[gate])
    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        raise AssertionError("not reached")

    async with open_app(router) as app:
        client = await app.connect()
        cid = await client.request(ECHO, Ping("x"))
        assert (await client.receive()).raw == error_frame(
            "INTERNAL", "handler returned without a reply", rpc=True, cid=cid
        )


async def test_next_called_twice_is_an_internal_error() -> None:
    log: Log = []
    router: Router[Conn] = Router()

    @router.use
    async def twice(ctx: Context[Any, Conn], next: Next) -> None:
        await next()
        await next()

    router.on(PING, pong_handler(log))
    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw(PING_JSON)
        assert (await client.receive()).type == "PONG"
        assert (await client.receive()).raw == error_frame("INTERNAL", "Internal error")
        await nothing_more(client)
        assert [e.code for e in app.errors] == ["INTERNAL"]
        assert isinstance(app.errors[0].__cause__, RuntimeError)
    assert log == ["handler"]  # the handler ran once


async def test_wskit_error_raised_in_middleware_is_sent() -> None:
    router: Router[Conn] = Router()

    @router.use
    async def deny(ctx: Context[Any, Conn], next: Next) -> None:
        raise WsKitError("PERMISSION_DENIED", "Admins only", {"need": "admin"})

    router.on(PING, pong_handler([]))

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        await ctx.reply(Pong("x"))

    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw(PING_JSON)
        assert (await client.receive()).raw == error_frame(
            "PERMISSION_DENIED", "Admins only", details={"need": "admin"}
        )
        cid = await client.request(ECHO, Ping("x"))
        assert (await client.receive()).raw == error_frame(
            "PERMISSION_DENIED", "Admins only", details={"need": "admin"}, rpc=True, cid=cid
        )
        await nothing_more(client)
        assert [e.code for e in app.errors] == ["PERMISSION_DENIED", "PERMISSION_DENIED"]


async def test_middleware_can_catch_a_handler_error() -> None:
    router: Router[Conn] = Router()

    @router.use
    async def translate(ctx: Context[Any, Conn], next: Next) -> None:
        try:
            await next()
        except KeyError as exc:
            raise WsKitError("NOT_FOUND", f"no {exc.args[0]}") from exc

    @router.on(PING)
    async def lookup(ctx: Context[Ping, Conn]) -> None:
        raise KeyError(ctx.payload.text)

    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw(PING_JSON)
        assert (await client.receive()).raw == error_frame("NOT_FOUND", "no hi")


async def test_middleware_assign_data_is_visible_to_the_handler() -> None:
    router: Router[Conn] = Router()

    @router.use
    async def auth(ctx: Context[Any, Conn], next: Next) -> None:
        ctx.assign_data(user_id="u-1")
        await next()

    @router.on(PING)
    async def whoami(ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(str(ctx.data.user_id)))

    async with open_app(router) as app:
        client = await app.connect(Conn())
        await client.send_raw(PING_JSON)
        assert (await client.receive()).payload == {"reply": "u-1"}


# -- merge and mount -----------------------------------------------------------------


def child_router(log: Log, name: str, schema: MessageSchema[Ping] = PING) -> Router[Conn]:
    child: Router[Conn] = Router()
    child.use(tracing(log, f"{name}-mw"))
    child.on(schema, pong_handler(log, name))
    return child


async def test_merged_routers_middleware_applies_to_its_own_routes_only() -> None:
    log: Log = []
    parent: Router[Conn] = Router()
    parent.use(tracing(log, "parent-mw"))
    parent.on(OTHER, pong_handler(log, "parent"))
    assert parent.merge(child_router(log, "child")) is parent
    async with open_app(parent) as app:
        client = await app.connect()
        await client.send_raw('{"type": "OTHER", "payload": {"text": "x"}}')
        assert (await client.receive()).payload == {"reply": "parent:x"}
        assert log == ["parent-mw in", "parent", "parent-mw out"]
        log.clear()
        await client.send_raw(PING_JSON)
        assert (await client.receive()).payload == {"reply": "child:hi"}
    # The parent's global middleware wraps merged routes too, outermost.
    assert log == ["parent-mw in", "child-mw in", "child", "child-mw out", "parent-mw out"]


def test_merge_conflict_raises_by_default_and_changes_nothing() -> None:
    parent: Router[Conn] = Router()
    mine = pong_handler([], "parent")
    parent.on(PING, mine)
    child = child_router([], "child")
    child.on(OTHER, pong_handler([]))
    with pytest.raises(ConfigurationError, match="PING"):
        parent.merge(child)
    with pytest.raises(ConfigurationError, match="PING"):
        parent.merge(child, on_conflict="error")
    assert sorted(parent.routes) == ["PING"]
    assert parent.routes["PING"].handler is mine


@pytest.mark.parametrize(("policy", "winner"), [("skip", "parent"), ("replace", "child")])
async def test_merge_conflict_policies(policy: Any, winner: str) -> None:
    log: Log = []
    parent: Router[Conn] = Router()
    parent.on(PING, pong_handler(log, "parent"))
    child = child_router(log, "child")
    child.on(OTHER, pong_handler(log, "child-other"))
    parent.merge(child, on_conflict=policy)
    async with open_app(parent) as app:
        client = await app.connect()
        await client.send_raw(PING_JSON)
        assert (await client.receive()).payload == {"reply": f"{winner}:hi"}
        await client.send_raw('{"type": "OTHER", "payload": {"text": "x"}}')
        assert (await client.receive()).payload == {"reply": "child-other:x"}


def test_a_router_cannot_merge_or_mount_itself() -> None:
    router: Router[Conn] = Router()
    with pytest.raises(ConfigurationError):
        router.merge(router)
    with pytest.raises(ConfigurationError):
        router.mount("x.", router)


async def test_mount_prefixes_types() -> None:
    log: Log = []
    parent: Router[Conn] = Router()
    parent.on(PING, pong_handler(log, "parent"))
    assert parent.mount("chat.", child_router(log, "chat")) is parent
    assert sorted(parent.routes) == ["PING", "chat.PING"]
    async with open_app(parent) as app:
        client = await app.connect()
        await client.send_raw('{"type": "chat.PING", "payload": {"text": "yo"}}')
        assert (await client.receive()).payload == {"reply": "chat:yo"}
        await client.send_raw(PING_JSON)
        assert (await client.receive()).payload == {"reply": "parent:hi"}
        # The mounted route validates with its schema, under its new name.
        await client.send_raw('{"type": "chat.PING", "payload": {}}')
        frame = await client.receive()
        assert frame.error_code == "INVALID_ARGUMENT"
        await client.send_raw('{"type": "chat.OTHER", "payload": {"text": "x"}}')
        assert (await client.receive()).error_code == "UNIMPLEMENTED"
    assert log == ["chat-mw in", "chat", "chat-mw out", "parent"]


def test_mount_conflicts_and_bad_prefixes_are_rejected() -> None:
    parent: Router[Conn] = Router()
    parent.on(MessageSchema("chat.PING", Ping, None), pong_handler([]))
    with pytest.raises(ConfigurationError):
        parent.mount("chat.", child_router([], "chat"))
    with pytest.raises(ConfigurationError):
        parent.mount("", child_router([], "x"))
    with pytest.raises(ConfigurationError, match="reserved"):
        parent.mount("__", child_router([], "x"))
    with pytest.raises(ConfigurationError, match="reserved"):
        parent.mount("$", child_router([], "x"))


async def test_merge_and_mount_bring_lifecycle_hooks() -> None:
    events: Log = []

    def hooked(name: str) -> Router[Conn]:
        router: Router[Conn] = Router()
        router.on_open(lambda ctx: events.append(f"{name} open"))
        router.on_close(lambda ctx: events.append(f"{name} close"))

        @router.on_error
        def on_error(err: WsKitError, ctx: ConnectionContext[Conn]) -> None:
            events.append(f"{name} error {err.code}")

        return router

    parent, merged, mounted = hooked("parent"), hooked("merged"), hooked("mounted")
    parent.merge(merged)
    parent.mount("m.", mounted)
    async with open_app(parent) as app:
        client = await app.connect()
        await client.send_raw("{}")
        await client.receive_error()
        await client.close()
        await trio.testing.wait_all_tasks_blocked()
    assert events == [
        "parent open",
        "merged open",
        "mounted open",
        "parent error INVALID_ARGUMENT",
        "merged error INVALID_ARGUMENT",
        "mounted error INVALID_ARGUMENT",
        "parent close",
        "merged close",
        "mounted close",
    ]
