"""Export a router's message contract for other languages and tools.

``export_contract(router, "jsonschema" | "asyncapi" | "typescript")`` describes
every frame the router receives and answers with (docs/protocol.md), plus the
server-sent messages it is given, as JSON Schema 2020-12, an AsyncAPI 3.0
document, or a TypeScript module of WS-Kit 0.10 (zod) schemas. It reads the
schemas only: nothing is served, and no third-party package is needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal, TypeAlias

from .._errors import ConfigurationError
from .._router import Router
from .._schema import MessageSchema, RpcSchema
from ._asyncapi import asyncapi
from ._catalog import catalog
from ._jsonschema import json_schema
from ._typescript import typescript

__all__ = ["CONTRACT_FORMATS", "ContractFormat", "export_contract"]

ContractFormat: TypeAlias = Literal["jsonschema", "asyncapi", "typescript"]
CONTRACT_FORMATS: tuple[ContractFormat, ...] = ("jsonschema", "asyncapi", "typescript")


def export_contract(
    router: Router[Any],
    format: ContractFormat = "jsonschema",
    *,
    messages: Iterable[MessageSchema[Any] | RpcSchema[Any, Any]] = (),
    title: str = "wskit_trio contract",
    version: str = "1.0.0",
    path: str = "/",
) -> str:
    """The contract of ``router`` as text (JSON for the first two formats).

    The router knows what clients send it (its routes) and what it answers RPCs
    with; ``messages`` adds what the server sends of its own accord (``ctx.send``,
    publishes), which is registered nowhere. ``version`` and ``path`` (the
    WebSocket's URL path) go into the AsyncAPI document.

    Raises :class:`ConfigurationError` when a field's type has no JSON form (the
    message names the field), or when two schemas claim one wire type.
    """
    cat = catalog(router, messages)
    if format == "jsonschema":
        return _dumps(json_schema(cat, title))
    if format == "asyncapi":
        return _dumps(asyncapi(cat, title, version, path))
    if format == "typescript":
        return typescript(cat, title)
    raise ConfigurationError(f"format must be one of {CONTRACT_FORMATS}, got {format!r}")


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
