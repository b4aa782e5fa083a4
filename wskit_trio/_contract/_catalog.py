"""Which messages a contract describes, and who sends each.

A router knows what it *receives*: its routes (events and RPC requests) and, for
an RPC, the response it answers with. What a server *sends* of its own accord
(``ctx.send``, publishes) is registered nowhere, so the caller names those
schemas (the CLI takes every schema defined at the top level of the router's
module). A type the router receives stays a client message even when it is also
named: the route is what the server enforces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .._errors import ConfigurationError
from .._router import Router
from .._schema import MessageSchema, RpcSchema

__all__ = ["Catalog", "Event", "Rpc", "catalog"]


@attrs.frozen
class Event:
    """An event: ``sender`` is ``"client"`` (a route) or ``"server"`` (named by the caller).
    ``type`` is the wire type, which differs from ``schema.type`` for mounted routes."""

    type: str
    schema: MessageSchema[Any]
    sender: str


@attrs.frozen
class Rpc:
    """A request the router answers with ``response`` (and progress frames of its payload)."""

    type: str
    request: MessageSchema[Any]
    response: MessageSchema[Any]


@attrs.frozen
class Catalog:
    events: tuple[Event, ...]
    rpcs: tuple[Rpc, ...]

    @property
    def client_events(self) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.sender == "client")

    @property
    def server_events(self) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.sender == "server")


def catalog(
    router: Router[Any], messages: Iterable[MessageSchema[Any] | RpcSchema[Any, Any]] = ()
) -> Catalog:
    """The router's routes, then the server-sent ``messages`` it does not receive.

    RPC schemas among ``messages`` add nothing (the router answers only the ones it
    registered); their responses are already in. Two different schemas claiming
    one wire type are a :class:`ConfigurationError`: a client could not tell them
    apart.
    """
    events: list[Event] = []
    rpcs: list[Rpc] = []
    #: Wire type -> the schema that owns it, to find clashes.
    owners: dict[str, MessageSchema[Any]] = {}

    def claim(type: str, schema: MessageSchema[Any]) -> bool:
        """Record ``schema`` as the owner of ``type``: true when the type is new."""
        owner = owners.get(type)
        if owner is None:
            owners[type] = schema
            return True
        if owner is schema or _same(owner, schema):
            return False
        raise ConfigurationError(
            f"message type {type!r} is declared twice, with different schemas "
            f"({owner!r} and {schema!r}); a client could not tell them apart"
        )

    for route in router.routes.values():
        claim(route.type, route.schema)
        if route.response is None:
            events.append(Event(route.type, route.schema, "client"))
        else:
            rpcs.append(Rpc(route.type, route.schema, route.response))
    for rpc in rpcs:
        claim(rpc.response.type, rpc.response)
    for schema in messages:
        if isinstance(schema, RpcSchema):
            continue
        if not isinstance(schema, MessageSchema):
            raise ConfigurationError(f"expected message() or rpc() schemas, got {schema!r}")
        if claim(schema.type, schema):
            events.append(Event(schema.type, schema, "server"))
    return Catalog(tuple(events), tuple(rpcs))


def _same(a: MessageSchema[Any], b: MessageSchema[Any]) -> bool:
    # Two message() calls with one payload and meta class describe one wire message.
    return a.payload_cls is b.payload_cls and a.meta_cls is b.meta_cls
