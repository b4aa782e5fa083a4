"""The catalog as an AsyncAPI 3.0 document, seen from the server.

One channel (the WebSocket) carries every message; what a client sends is a
``receive`` operation, what the server sends of its own accord a ``send``
operation, and an RPC request's operation names its reply (the response, its
progress frames and ``RPC_ERROR``). Each message's payload is the whole wire
frame, defined by the same JSON Schema as the ``jsonschema`` export, under
``components.schemas``.
"""

from __future__ import annotations

from ._catalog import Catalog
from ._jsonschema import JSON, SchemaBuilder, define

__all__ = ["asyncapi"]

_CHANNEL = "websocket"


def asyncapi(cat: Catalog, title: str, version: str, path: str = "/") -> JSON:
    builder = SchemaBuilder("#/components/schemas/")
    defined = define(builder, cat)
    channel_ref = {"$ref": f"#/channels/{_CHANNEL}"}

    def message_ref(name: str) -> JSON:
        return {"$ref": f"#/channels/{_CHANNEL}/messages/{name}"}

    messages: JSON = {
        name: {
            "name": frame.wire_type,
            "title": name,
            "summary": frame.description,
            "contentType": "application/json",
            "payload": builder.ref(name),
        }
        for name, frame in defined
    }
    # An RPC's reply frames belong to its request's operation, not to a send of their own.
    rpc_errors = [name for name, frame in defined if frame.wire_type == "RPC_ERROR"]
    replies: dict[str, list[str]] = {}
    for name, frame in defined:
        if frame.role in ("response", "progress"):
            assert frame.rpc is not None
            replies.setdefault(frame.rpc, []).append(name)
    operations: JSON = {}
    for name, frame in defined:
        operation: JSON = {
            "action": "receive" if frame.sender == "client" else "send",
            "channel": channel_ref,
            "summary": frame.description,
            "messages": [message_ref(name)],
        }
        if frame.role == "request":
            assert frame.rpc is not None
            operation["reply"] = {
                "channel": channel_ref,
                "messages": [message_ref(n) for n in (*replies[frame.rpc], *rpc_errors)],
            }
        elif frame.role in ("response", "progress"):
            continue
        operations[f"{operation['action']}.{name}"] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "WebSocket messages of a wskit_trio server (WS-Kit 0.10 wire protocol): "
                "one JSON object per text frame."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            _CHANNEL: {
                "address": path,
                "title": "WebSocket",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            }
        },
        "operations": operations,
        "components": {"schemas": builder.defs, "messages": messages},
    }
