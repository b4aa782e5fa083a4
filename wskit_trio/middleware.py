"""Ready-made middleware: an authentication guard, structured logging, metrics.

>>> router.use(require_auth())                 # UNAUTHENTICATED unless data has a user_id
>>> router.use(log_messages())                 # one log record per message
>>> metrics = Metrics()
>>> router.plugin(metrics)                     # counters; metrics.statistics() snapshots them

The guard and the logger are plain ``async def mw(ctx, next)`` middleware, so
they also work per route (``router.on(T, fn, middleware=[require_auth()])``).
:class:`Metrics` is a router plugin: besides what middleware could see, it counts
connections, every inbound and outbound frame, every error and every publish,
through the runtime's observation point (``Router.observer``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
import trio

from ._context import ConnectionContext, Context
from ._errors import RateLimited, WsKitError
from ._protocol import _json
from ._protocol.codes import ErrorCode
from ._protocol.frames import ABORT_TYPE, HEARTBEAT_TYPE
from ._router import Middleware, Next
from .ratelimit import data_field

if TYPE_CHECKING:
    from ._handle import ConnectionHandle
    from ._observer import HubView
    from ._router import Router
    from .pubsub._backend import PublishResult

__all__ = [
    "Metrics",
    "MetricsHook",
    "MetricsStatistics",
    "log_messages",
    "require_auth",
]

log = logging.getLogger("wskit_trio")

# -- authentication guard -----------------------------------------------------------

#: ``predicate(data)``: sync or async; true when the connection may go on.
AuthPredicate: TypeAlias = Callable[[Any], "bool | Awaitable[bool]"]


def _has_user(data: object) -> bool:
    return data_field(data, "user_id") is not None


def require_auth(
    predicate: AuthPredicate | None = None, *, message: str = "Not authenticated"
) -> Middleware[Any]:
    """Refuse messages with ``UNAUTHENTICATED`` unless ``predicate(ctx.data)`` is true.

    Without a predicate, the connection data must carry a ``user_id`` (a dict key or
    an attribute, not ``None``): the convention the rate-limit keys use too. The
    handler is skipped and the connection stays open.
    """
    check = predicate or _has_user

    async def require_auth_middleware(ctx: Context[Any, Any], next: Next) -> None:
        allowed = check(ctx.data)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            raise WsKitError(ErrorCode.UNAUTHENTICATED, message)
        await next()

    return require_auth_middleware


# -- structured logging ---------------------------------------------------------------


def log_messages(
    logger: logging.Logger | None = None,
    *,
    level: int = logging.INFO,
    error_level: int = logging.WARNING,
) -> Middleware[Any]:
    """Log one record per message once its handler is done (stdlib ``logging``).

    The record's message reads ``"PING from <client id>: ok in 1.2 ms"``, and its
    ``extra`` fields carry the same for structured handlers: ``ws_type``,
    ``ws_client``, ``ws_outcome`` (``"ok"``, the error code the handler or a later
    middleware raised, ``"INTERNAL"`` for any other exception, ``"cancelled"``),
    ``ws_duration_ms`` (on ``trio.current_time()``'s clock) and
    ``ws_correlation_id`` (``None`` outside RPCs). Success logs at ``level``, the
    rest at ``error_level``. Default logger: ``wskit_trio.messages``. When neither
    level is enabled the middleware costs one check.
    """
    logger = logger or logging.getLogger("wskit_trio.messages")
    least = min(level, error_level)

    async def log_messages_middleware(ctx: Context[Any, Any], next: Next) -> None:
        if not logger.isEnabledFor(least):
            await next()
            return
        start = trio.current_time()
        outcome = "ok"
        try:
            await next()
        except WsKitError as err:
            outcome = str(err.code)
            raise
        except trio.Cancelled:
            outcome = "cancelled"
            raise
        except Exception:
            outcome = str(ErrorCode.INTERNAL)
            raise
        finally:
            duration_ms = (trio.current_time() - start) * 1000
            logger.log(
                level if outcome == "ok" else error_level,
                "%s from %s: %s in %.1f ms",
                ctx.type,
                ctx.client_id,
                outcome,
                duration_ms,
                extra={
                    "ws_type": ctx.type,
                    "ws_client": ctx.client_id,
                    "ws_outcome": outcome,
                    "ws_duration_ms": duration_ms,
                    "ws_correlation_id": ctx.correlation_id,
                },
            )

    return log_messages_middleware


# -- metrics ------------------------------------------------------------------------

#: ``hook(name, labels, amount)``, called on every increment: wire it to a metrics
#: library, e.g. OpenTelemetry (``counters[name].add(amount, labels)``); for
#: Prometheus, ``wskit_trio.prometheus.PrometheusMetrics`` does it all. Names and
#: labels: see :class:`Metrics`.
MetricsHook: TypeAlias = Callable[[str, Mapping[str, str], int], None]

INVALID: Final = "<invalid>"
UNKNOWN: Final = "<unknown>"
_PROTOCOL_TYPES: Final = frozenset({HEARTBEAT_TYPE, ABORT_TYPE})
_TYPE_PREFIX: Final = '{"type":"'


def frame_type(frame: str) -> str:
    """The ``type`` of a frame this package encoded (cheaply: no JSON parse unless the
    type holds escapes)."""
    if frame.startswith(_TYPE_PREFIX):
        end = frame.find('"', len(_TYPE_PREFIX))
        if end > 0:
            found = frame[len(_TYPE_PREFIX) : end]
            if "\\" not in found:
                return found
    try:
        return str(_json.loads(frame)["type"])
    except (ValueError, KeyError, TypeError):
        return INVALID


@attrs.frozen
class MetricsStatistics:
    """A snapshot of :class:`Metrics`' counters (copies: later counts do not change it)."""

    connections_opened: int
    connections_closed: int
    #: Inbound frames by type; ``"<unknown>"`` for types without a route,
    #: ``"<invalid>"`` for frames that were not valid JSON envelopes.
    frames_in: Mapping[str, int]
    #: Frames written to clients, by type (``ERROR``, ``$ws:rpc-progress``, ...).
    frames_out: Mapping[str, int]
    #: Errors answered or reported (``on_error``), by code.
    errors: Mapping[str, int]
    #: Messages refused by ``rate_limit``, by message type.
    rate_limited: Mapping[str, int]
    #: Publishes by outcome: ``"ok"``, or the error code of a failed one.
    publishes: Mapping[str, int]

    @property
    def connections_active(self) -> int:
        return self.connections_opened - self.connections_closed


class Metrics:
    """Counters for one router, as a plugin: ``router.plugin(Metrics(hook=...))``.

    ========================  ===========  =============================================
    name (``hook``)           label        counts
    ========================  ===========  =============================================
    ``connections_opened``    —            connections accepted
    ``connections_closed``    —            connections ended
    ``frames_in``             ``type``     inbound frames (see ``MetricsStatistics``)
    ``frames_out``            ``type``     frames written to clients
    ``errors``                ``code``     errors answered or reported to ``on_error``
    ``rate_limited``          ``type``     messages refused by ``rate_limit``
    ``publishes``             ``outcome``  publishes: ``ok`` or the failure's code
    ========================  ===========  =============================================

    Label values are bounded: inbound types without a route are counted as
    ``"<unknown>"``, so clients cannot grow the tables. Install it on the router
    that is served (after merging others into it). ``hook`` runs synchronously on
    the connection's tasks: keep it cheap; an exception in it is logged (once)
    and ignored.
    """

    def __init__(self, *, hook: MetricsHook | None = None) -> None:
        self.hook = hook
        self._opened = 0
        self._closed = 0
        self._in: dict[str, int] = {}
        self._out: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._rate_limited: dict[str, int] = {}
        self._publishes: dict[str, int] = {}
        self._hook_failed = False

    def __call__(self, router: Router[Any]) -> None:
        """Install on ``router`` (``router.plugin(metrics)``)."""
        router.observer = self
        router.on_error(self._on_error)

    def statistics(self) -> MetricsStatistics:
        return MetricsStatistics(
            connections_opened=self._opened,
            connections_closed=self._closed,
            frames_in=dict(self._in),
            frames_out=dict(self._out),
            errors=dict(self._errors),
            rate_limited=dict(self._rate_limited),
            publishes=dict(self._publishes),
        )

    def _emit(self, name: str, labels: Mapping[str, str], amount: int = 1) -> None:
        hook = self.hook
        if hook is None:
            return
        try:
            hook(name, labels, amount)
        except Exception:
            if not self._hook_failed:
                self._hook_failed = True
                log.exception("metrics hook %r failed (further failures are not logged)", hook)

    # -- the observer (called by the runtime) ---------------------------------------

    def connection_opened(self, conn: ConnectionHandle) -> None:
        self._opened += 1
        self._emit("connections_opened", {})

    def connection_closed(self, conn: ConnectionHandle) -> None:
        self._closed += 1
        self._emit("connections_closed", {})

    def frame_in(self, type: str | None, routed: bool) -> None:
        if type is None:
            label = INVALID
        elif routed or type in _PROTOCOL_TYPES:
            label = type
        else:
            label = UNKNOWN
        self._in[label] = self._in.get(label, 0) + 1
        self._emit("frames_in", {"type": label})

    def frames_out(self, frames: list[str]) -> None:
        counts = self._out
        if self.hook is None:
            for frame in frames:
                label = frame_type(frame)
                counts[label] = counts.get(label, 0) + 1
            return
        batch: dict[str, int] = {}
        for frame in frames:
            label = frame_type(frame)
            batch[label] = batch.get(label, 0) + 1
        for label, amount in batch.items():
            counts[label] = counts.get(label, 0) + amount
            self._emit("frames_out", {"type": label}, amount)

    def published(self, result: PublishResult) -> None:
        outcome = "ok" if result.ok else (result.error or "error")
        self._publishes[outcome] = self._publishes.get(outcome, 0) + 1
        self._emit("publishes", {"outcome": outcome})

    # Timings and the hubs' own counts are for exporters (``PrometheusMetrics``).

    def rpc_finished(self, type: str, outcome: str, seconds: float) -> None:
        pass

    def pubsub_started(self, hub: HubView) -> None:
        pass

    def pubsub_stopped(self, hub: HubView) -> None:
        pass

    # -- on_error ---------------------------------------------------------------------

    def _on_error(self, error: WsKitError, ctx: ConnectionContext[Any]) -> None:
        code = str(error.code)
        self._errors[code] = self._errors.get(code, 0) + 1
        self._emit("errors", {"code": code})
        if isinstance(error, RateLimited):
            label = ctx.type if isinstance(ctx, Context) else UNKNOWN
            self._rate_limited[label] = self._rate_limited.get(label, 0) + 1
            self._emit("rate_limited", {"type": label})
