"""A router using every kind of field the contract export maps, for tests/test_contract.py
and tests/test_cli.py (``python -m wskit_trio serve contract_app:router``).

``ORDER`` echoes its payload back as ``ORDERED`` (a server-sent message, registered
nowhere: the contract finds it at this module's top level); ``QUOTE`` is an RPC that
sends one progress frame, then its reply.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import attrs
from attrs import validators as v

from wskit_trio import Context, Position, Router, RpcContext, message, rpc


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.Enum):  # not IntEnum: the converter gives those back as plain ints
    LOW = 1
    HIGH = 2


@attrs.frozen
class Item:
    """One line of an order."""

    sku: str = attrs.field(validator=v.matches_re(r"[A-Z]{3}-[0-9]+"))
    quantity: int = attrs.field(validator=[v.ge(1), v.le(99)])
    note: str | None = None


@attrs.frozen
class Order:
    """What a client orders: every field kind the export maps."""

    customer_id: str = attrs.field(validator=[v.min_len(1), v.max_len(20)])
    items: list[Item] = attrs.field(validator=v.min_len(1))
    color: Color
    priority: Priority
    mode: Literal["fast", "cheap"]
    weights: dict[str, float]
    pair: tuple[int, str]
    tags: frozenset[str] = frozenset()
    discount: float | None = attrs.field(default=None, validator=v.optional([v.ge(0), v.lt(1)]))
    size: str = attrs.field(default="m", validator=v.in_(["s", "m", "l"]))
    since: Position | None = None
    extra: Any = None
    gift: bool = False


@attrs.frozen
class Trace:
    trace_id: str
    hop: int = 0


@attrs.frozen
class QuoteRequest:
    sku: str


@attrs.frozen
class Quote:
    sku: str
    price: float
    currency: Literal["EUR"] = "EUR"


ORDER = message("ORDER", Order, meta=Trace)
ORDERED = message("ORDERED", Order)
LEAVE = message("LEAVE")
NOTICE = message("NOTICE", {"text": str, "level": int | None})
QUOTE = rpc("QUOTE", QuoteRequest, "QUOTED", Quote)
PING = rpc("PING", None, "PONG", None)

router: Router[Any] = Router()


@router.on(ORDER)
async def order(ctx: Context[Order, Any]) -> None:
    await ctx.send(ORDERED, ctx.payload, meta={"correlationId": "echo"})


@router.on(LEAVE)
async def leave(ctx: Context[None, Any]) -> None:
    await ctx.send(NOTICE, {"text": "bye"})


@router.rpc(QUOTE)
async def quote(ctx: RpcContext[QuoteRequest, Quote, Any]) -> None:
    if ctx.payload.sku == "missing":
        await ctx.error("NOT_FOUND", "no such sku", {"sku": ctx.payload.sku})
        return
    await ctx.progress(Quote(ctx.payload.sku, 0.0))
    await ctx.reply(Quote(ctx.payload.sku, 9.5))


@router.rpc(PING)
async def ping(ctx: RpcContext[None, None, Any]) -> None:
    await ctx.progress(None)
    await ctx.reply(None)
