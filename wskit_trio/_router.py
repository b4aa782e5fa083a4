"""The route table: schemas to handlers, middleware, merging, lifecycle hooks.

A :class:`Router` is a plain registry; nothing here runs a connection. The
server compiles it once (:meth:`Router.compile`) into a dict lookup per type
with each route's middleware chain fixed, so dispatch costs one dict lookup.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Literal, TypeAlias, TypeVar, overload

import attrs

from ._context import ConnectionContext, Context, RpcContext
from ._errors import ConfigurationError, WsKitError
from ._observer import Observer
from ._protocol.frames import is_reserved_type
from ._protocol.pubsub import Envelope, PublishResult
from ._schema import MessageSchema, RpcSchema
from .pubsub._hub import PubSubConfig, prepare_publish

__all__ = [
    "ErrorHook",
    "Handler",
    "LifecycleHook",
    "Middleware",
    "Next",
    "Route",
    "Router",
    "RpcHandler",
]

log = logging.getLogger("wskit_trio")

D = TypeVar("D")
P = TypeVar("P")
Req = TypeVar("Req")
Res = TypeVar("Res")

Next: TypeAlias = Callable[[], Awaitable[None]]
Middleware: TypeAlias = Callable[[Context[Any, D], Next], Awaitable[None]]
Handler: TypeAlias = Callable[[Context[P, D]], Awaitable[None]]
RpcHandler: TypeAlias = Callable[[RpcContext[Req, Res, D]], Awaitable[None]]
#: ``on_open`` / ``on_close``: sync or async, given the connection.
LifecycleHook: TypeAlias = Callable[[ConnectionContext[D]], Awaitable[None] | None]
#: ``on_error``: sync or async, given the error sent (or that closed) and the connection.
ErrorHook: TypeAlias = Callable[[WsKitError, ConnectionContext[D]], Awaitable[None] | None]
ConflictPolicy: TypeAlias = Literal["error", "skip", "replace"]


@attrs.frozen
class Route:
    """One registered message type. ``response`` is set for RPC routes."""

    type: str
    schema: MessageSchema[Any]
    handler: Callable[[Any], Awaitable[None]]
    middleware: tuple[Callable[..., Awaitable[None]], ...] = ()
    response: MessageSchema[Any] | None = None

    @property
    def is_rpc(self) -> bool:
        return self.response is not None


class Router(Generic[D]):
    """Message types → handlers, with middleware and lifecycle hooks.

    ``D`` is the connection data type, shared by every router merged into this one.
    """

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._middleware: list[Middleware[D]] = []
        self._on_open: list[LifecycleHook[D]] = []
        self._on_close: list[LifecycleHook[D]] = []
        self._on_error: list[ErrorHook[D]] = []
        #: The pub/sub backend and topic policy (``with_pubsub`` sets them); each
        #: server running this router builds its own hub on them.
        self.pubsub = PubSubConfig()
        #: Sees connections, frames and publishes (``Metrics`` sets it); ``None``: off.
        self.observer: Observer | None = None

    # -- registration -------------------------------------------------------------

    @overload
    def on(
        self,
        schema: MessageSchema[P],
        handler: None = None,
        *,
        middleware: Sequence[Middleware[D]] = (),
    ) -> Callable[[Handler[P, D]], Handler[P, D]]: ...
    @overload
    def on(
        self,
        schema: MessageSchema[P],
        handler: Handler[P, D],
        *,
        middleware: Sequence[Middleware[D]] = (),
    ) -> Handler[P, D]: ...
    def on(
        self,
        schema: MessageSchema[P],
        handler: Handler[P, D] | None = None,
        *,
        middleware: Sequence[Middleware[D]] = (),
    ) -> Any:
        """Register an event handler (``@router.on(PING)`` or ``router.on(PING, fn)``).

        Event handlers of one connection run one at a time, in arrival order.
        """
        if not isinstance(schema, MessageSchema):
            raise ConfigurationError(f"router.on() takes a message() schema, got {schema!r}")
        chain = _checked_middleware(middleware, schema.type)

        def register(fn: Handler[P, D]) -> Handler[P, D]:
            check_callable(fn, "handler", f"for {schema.type!r}", ("ctx",))
            self._add(Route(schema.type, schema, fn, chain))
            return fn

        return register if handler is None else register(handler)

    @overload
    def rpc(
        self,
        schema: RpcSchema[Req, Res],
        handler: None = None,
        *,
        middleware: Sequence[Middleware[D]] = (),
    ) -> Callable[[RpcHandler[Req, Res, D]], RpcHandler[Req, Res, D]]: ...
    @overload
    def rpc(
        self,
        schema: RpcSchema[Req, Res],
        handler: RpcHandler[Req, Res, D],
        *,
        middleware: Sequence[Middleware[D]] = (),
    ) -> RpcHandler[Req, Res, D]: ...
    def rpc(
        self,
        schema: RpcSchema[Req, Res],
        handler: RpcHandler[Req, Res, D] | None = None,
        *,
        middleware: Sequence[Middleware[D]] = (),
    ) -> Any:
        """Register an RPC handler. Each request runs concurrently in its own task and
        cancel scope; it must end with ``ctx.reply`` or an error."""
        if not isinstance(schema, RpcSchema):
            raise ConfigurationError(f"router.rpc() takes an rpc() schema, got {schema!r}")
        chain = _checked_middleware(middleware, schema.type)

        def register(fn: RpcHandler[Req, Res, D]) -> RpcHandler[Req, Res, D]:
            check_callable(fn, "RPC handler", f"for {schema.type!r}", ("ctx",))
            self._add(Route(schema.type, schema.request, fn, chain, schema.response))
            return fn

        return register if handler is None else register(handler)

    def _add(self, route: Route, on_conflict: ConflictPolicy = "error") -> None:
        if is_reserved_type(route.type):
            raise ConfigurationError(f"type {route.type!r} is reserved for the protocol")
        if route.type in self._routes:
            if on_conflict == "skip":
                return
            if on_conflict == "error":
                raise ConfigurationError(f"a handler for {route.type!r} is already registered")
        self._routes[route.type] = route

    def use(self, middleware: Middleware[D]) -> Middleware[D]:
        """Add global middleware: ``async def mw(ctx, next)``. Runs before per-route
        middleware, in the order added; not calling ``next`` skips the handler."""
        check_callable(middleware, "middleware", "(global)", ("ctx", "next"))
        self._middleware.append(middleware)
        return middleware

    def on_open(self, hook: LifecycleHook[D]) -> LifecycleHook[D]:
        """Run when a connection opens, before any message is read. Raise
        ``CloseError(code, reason)`` to refuse it; any other exception closes it with 1011."""
        check_callable(hook, "on_open hook", "", ("ctx",), sync_ok=True)
        self._on_open.append(hook)
        return hook

    def on_close(self, hook: LifecycleHook[D]) -> LifecycleHook[D]:
        """Run once when a connection has closed, whatever closed it."""
        check_callable(hook, "on_close hook", "", ("ctx",), sync_ok=True)
        self._on_close.append(hook)
        return hook

    def on_error(self, hook: ErrorHook[D]) -> ErrorHook[D]:
        """Run for every error answered or raised on a connection (docs/protocol.md §4).
        ``error.__cause__`` holds the handler's own exception, if there was one."""
        check_callable(hook, "on_error hook", "", ("error", "ctx"), sync_ok=True)
        self._on_error.append(hook)
        return hook

    # -- composition --------------------------------------------------------------

    def merge(self, other: Router[D], *, on_conflict: ConflictPolicy = "error") -> Router[D]:
        """Take every route and hook of ``other``. Its global middleware keeps applying
        to its own routes only. ``on_conflict`` decides what a type registered on both
        does: raise (default), keep ours (``"skip"``) or take theirs (``"replace"``)."""
        self._take(other, "", on_conflict)
        return self

    def mount(self, prefix: str, other: Router[D]) -> Router[D]:
        """Take ``other``'s routes under ``prefix + type`` (e.g. ``"chat."``)."""
        if not prefix:
            raise ConfigurationError("mount() needs a non-empty prefix")
        self._take(other, prefix, "error")
        return self

    def _take(self, other: Router[D], prefix: str, on_conflict: ConflictPolicy) -> None:
        if other is self:
            raise ConfigurationError("a router cannot merge or mount itself")
        if on_conflict == "error":
            clashes = sorted({prefix + t for t in other._routes} & set(self._routes))
            if clashes:
                raise ConfigurationError(f"types registered on both routers: {clashes}")
        for route in other._routes.values():
            self._add(
                attrs.evolve(
                    route,
                    type=prefix + route.type,
                    middleware=(*other._middleware, *route.middleware),
                ),
                on_conflict,
            )
        self._on_open.extend(other._on_open)
        self._on_close.extend(other._on_close)
        self._on_error.extend(other._on_error)

    def plugin(self, plugin: Callable[[Router[D]], object]) -> Router[D]:
        """Apply ``plugin(router)`` (which registers routes, middleware or hooks)."""
        plugin(self)
        return self

    # -- pub/sub --------------------------------------------------------------------

    @overload
    async def publish(
        self,
        topic: str,
        schema: MessageSchema[None],
        payload: None = None,
        *,
        meta: dict[str, Any] | None = None,
    ) -> PublishResult: ...
    @overload
    async def publish(
        self,
        topic: str,
        schema: MessageSchema[P],
        payload: P,
        *,
        meta: dict[str, Any] | None = None,
    ) -> PublishResult: ...
    async def publish(
        self,
        topic: str,
        schema: MessageSchema[Any],
        payload: Any = None,
        *,
        meta: dict[str, Any] | None = None,
    ) -> PublishResult:
        """Publish to every subscriber of ``topic``, on every server running this
        router (through its backend), from hooks or background tasks.

        The payload is validated first (``OutboundValidationError``, nothing sent).
        The topic policy applies, but not its ``authorize`` (no connection asks).
        """
        config = self.pubsub
        prepared = await prepare_publish(config, config.origin, topic, schema, payload, meta=meta)
        result = (
            await config.backend.publish(prepared) if isinstance(prepared, Envelope) else prepared
        )
        if self.observer is not None:
            self.observer.published(result)
        return result

    # -- introspection ------------------------------------------------------------

    @property
    def routes(self) -> dict[str, Route]:
        """The route table, by wire type (a copy)."""
        return dict(self._routes)

    def compile(self) -> CompiledRouter[D]:
        """Freeze the table for serving: each route's full middleware chain fixed.
        Pure: the router is not changed, and may be compiled (served) again."""
        routes = {
            t: attrs.evolve(r, middleware=(*self._middleware, *r.middleware))
            for t, r in self._routes.items()
        }
        return CompiledRouter(
            routes,
            tuple(self._on_open),
            tuple(self._on_close),
            tuple(self._on_error),
            self.pubsub,
            self.observer,
        )


# -- registration checks ------------------------------------------------------------
#
# A handler that is not a coroutine function, or cannot take the arguments the
# dispatcher passes, would otherwise be found out only when a message arrives,
# as an INTERNAL error for the client and a traceback in the log. Checked once,
# at registration, it is the developer who hears of it, with the handler's name.


def _checked_middleware(
    middleware: Sequence[Callable[..., Awaitable[None]]], msg_type: str
) -> tuple[Callable[..., Awaitable[None]], ...]:
    chain = tuple(middleware)
    for mw in chain:
        check_callable(mw, "middleware", f"for {msg_type!r}", ("ctx", "next"))
    return chain


def check_callable(
    fn: object, role: str, where: str, params: tuple[str, ...], *, sync_ok: bool = False
) -> None:
    """Raise ``ConfigurationError`` unless ``fn`` can be called as ``fn(*params)`` and,
    unless ``sync_ok``, is a coroutine function.

    What counts as a coroutine function: an ``async def`` function, and the same
    seen through ``functools.partial``, a bound method, or an object whose class
    has an ``async def __call__``. A plain function returning an awaitable is
    refused: nothing tells it apart from one that returns ``None`` by mistake.
    The arity is checked by binding ``params`` to the signature, so defaulted extra
    parameters and ``*args`` are fine; required extra ones, keyword-only included,
    are not.
    """
    subject = " ".join(part for part in (role, _describe(fn), where) if part)
    if not callable(fn):
        raise ConfigurationError(f"{subject} is not callable")
    if not sync_ok and not _is_coroutine_function(fn):
        raise ConfigurationError(
            f"{subject} must be an async def function (it is awaited for each call); "
            f"got a synchronous callable"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins): let it be
    try:
        signature.bind(*params)
    except TypeError as exc:
        # The bare parameter list reads best: annotations may be long strings.
        empty = inspect.Parameter.empty
        bare = signature.replace(
            parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
            return_annotation=empty,
        )
        raise ConfigurationError(
            f"{subject} must take exactly ({', '.join(params)}) as positional arguments, "
            f"but its signature is {bare}: {exc}"
        ) from None


def _unwrap(fn: object) -> object:
    """The function behind partials, bound methods and static or class methods."""
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif inspect.ismethod(fn) or isinstance(fn, staticmethod | classmethod):
            fn = fn.__func__
        else:
            return fn


def _is_coroutine_function(fn: object) -> bool:
    target = _unwrap(fn)
    if inspect.iscoroutinefunction(target):
        return True
    if inspect.isfunction(target) or inspect.isbuiltin(target) or isinstance(target, type):
        return False
    # An instance whose class has an async __call__.
    return inspect.iscoroutinefunction(_unwrap(inspect.getattr_static(type(target), "__call__")))


def _describe(fn: object) -> str:
    """``fn``'s qualified name, as the developer wrote it."""
    if isinstance(fn, functools.partial):
        return f"functools.partial({_describe(fn.func)})"
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    return f"{type(fn).__qualname__} instance"


@attrs.frozen
class CompiledRouter(Generic[D]):
    routes: dict[str, Route]
    on_open: tuple[LifecycleHook[D], ...]
    on_close: tuple[LifecycleHook[D], ...]
    on_error: tuple[ErrorHook[D], ...]
    pubsub: PubSubConfig
    observer: Observer | None = None

    async def report(self, error: WsKitError, ctx: ConnectionContext[D]) -> None:
        """Pass ``error`` to every ``on_error`` hook; a failing hook is logged, not raised."""
        for hook in self.on_error:
            try:
                await maybe_await(hook(error, ctx))
            except Exception:
                log.exception("on_error hook %r failed", hook)


async def maybe_await(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


async def run_chain(route: Route, ctx: Context[Any, Any]) -> None:
    """Run global → per-route middleware → handler. ``next`` may be called at most once."""
    chain = route.middleware
    if not chain:
        await route.handler(ctx)
        return
    await _step(chain, 0, route.handler, ctx)


async def _step(
    chain: tuple[Callable[..., Awaitable[None]], ...],
    index: int,
    handler: Callable[[Any], Awaitable[None]],
    ctx: Context[Any, Any],
) -> None:
    if index == len(chain):
        await handler(ctx)
        return
    called = False

    async def next_() -> None:
        nonlocal called
        if called:
            raise RuntimeError("middleware called next() twice")
        called = True
        await _step(chain, index + 1, handler, ctx)

    await chain[index](ctx, next_)
