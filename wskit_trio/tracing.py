"""OpenTelemetry spans for handlers (``pip install 'wskit_trio[otel]'``).

>>> router.use(tracing())        # first, so the span covers the other middleware too

One span per message a handler runs for: named after the message type, a
``SERVER`` span for an RPC and a ``CONSUMER`` span for an event. A client that
sends a W3C Trace Context in ``meta.traceparent`` (and ``meta.tracestate``;
every message accepts both, docs/protocol.md §1) gets its trace continued: the
span's parent is the client's span. The span is current while the handler runs,
so spans the handler starts (a database call, an HTTP request), and tasks it
spawns, are its children.

Attributes: ``wskit.type``, ``wskit.kind`` (``"rpc"`` or ``"event"``),
``wskit.client_id``, ``wskit.correlation_id`` (RPCs), and ``wskit.outcome``: what
the client was answered (``"ok"``, the error code, ``"aborted"``,
``"cancelled"``). A failed handler also gets ``error.type`` (the code) and an
``ERROR`` status; an unexpected exception is recorded on the span (the client
learns nothing of it: it gets ``INTERNAL``).

Spans go wherever the OpenTelemetry SDK is configured to send them (the global
tracer provider, or ``tracer_provider=``); with only ``opentelemetry-api``
installed they cost little and go nowhere. ``import wskit_trio`` does not import
OpenTelemetry.
"""

from __future__ import annotations

from typing import Any, Final

import trio
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._context import Context, RpcContext
from ._errors import WsKitError
from ._protocol.codes import ErrorCode
from ._router import Middleware, Next

__all__ = ["tracing"]

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_TRACE_META: Final = ("traceparent", "tracestate")
#: Outcomes that are no failure of the handler: the client or the server ended it.
_NOT_ERRORS: Final = frozenset({"ok", "aborted", "cancelled"})


def tracing(tracer_provider: trace.TracerProvider | None = None) -> Middleware[Any]:
    """Middleware running each handler in an OpenTelemetry span (see the module).

    Install it first (``router.use(tracing())`` before other middleware) to time
    the whole chain, or per route (``middleware=[tracing()]``). Spans come from
    ``tracer_provider``, by default the global one as it is when spans start.
    """
    from . import __version__

    tracer = trace.get_tracer("wskit_trio", __version__, tracer_provider=tracer_provider)

    async def tracing_middleware(ctx: Context[Any, Any], next: Next) -> None:
        rpc = isinstance(ctx, RpcContext)
        carrier = {key: ctx.meta[key] for key in _TRACE_META if key in ctx.meta}
        attributes: dict[str, str] = {
            "wskit.type": ctx.type,
            "wskit.kind": "rpc" if rpc else "event",
            "wskit.client_id": ctx.client_id,
        }
        if ctx.correlation_id is not None:
            attributes["wskit.correlation_id"] = ctx.correlation_id
        with tracer.start_as_current_span(
            ctx.type,
            # No traceparent: the span's parent is whatever is current (usually none).
            context=_PROPAGATOR.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER if rpc else SpanKind.CONSUMER,
            attributes=attributes,
            # Outcomes are set below: a WsKitError is an answer, not a crash.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = "ok"
            try:
                await next()
            except WsKitError as err:
                outcome = str(err.code)
                span.set_status(Status(StatusCode.ERROR, err.message))
                raise
            except trio.Cancelled:
                outcome = _cancelled(ctx)
                if outcome == ErrorCode.DEADLINE_EXCEEDED:
                    span.set_status(Status(StatusCode.ERROR, "Deadline exceeded"))
                raise
            except Exception as exc:
                outcome = str(ErrorCode.INTERNAL)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            else:
                if isinstance(ctx, RpcContext):
                    outcome = _returned(ctx)
                    if outcome not in _NOT_ERRORS:
                        span.set_status(Status(StatusCode.ERROR))
            finally:
                span.set_attribute("wskit.outcome", outcome)
                if outcome not in _NOT_ERRORS:
                    span.set_attribute("error.type", outcome)

    return tracing_middleware


def _returned(ctx: RpcContext[Any, Any, Any]) -> str:
    """The answer of an RPC whose chain returned: the reply, an error the handler
    sent with ``ctx.error``, or the INTERNAL the server sends for no reply."""
    if ctx._outcome is not None:
        return ctx._outcome
    if ctx.aborted:
        return "aborted"
    return str(ErrorCode.INTERNAL)


def _cancelled(ctx: Context[Any, Any]) -> str:
    if isinstance(ctx, RpcContext):
        if ctx.aborted:
            return "aborted"
        if not ctx.done and trio.current_time() >= ctx.deadline:
            return str(ErrorCode.DEADLINE_EXCEEDED)
    return "cancelled"
