"""attrs payload classes as JSON Schema (2020-12), and every frame of a catalog.

The mapping follows the strict converter (``_protocol/validation.py``) rather
than Python's types: what the schema accepts is what the server structures.
Objects are closed (``additionalProperties: false``), a field with a default
may be left out, booleans are not numbers, sets are arrays.
attrs validators that have a JSON Schema form (``ge``/``gt``/``le``/``lt``,
``min_len``/``max_len``, ``matches_re``, ``in_``) become keywords; others are
left to the server. A type the converter has no JSON form for is a
:class:`ConfigurationError` naming the field.

Every nested attrs class is one definition, referenced by ``$ref``; the
TypeScript export builds its zod objects from these same definitions.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeAlias

import attrs

from .._errors import ConfigurationError
from .._protocol.frames import ERROR_TYPE, PROGRESS_TYPE, RPC_ERROR_TYPE
from .._protocol.validation import _MAPPINGS, _SEQUENCES, wire_name
from .._schema import MessageSchema
from ._catalog import Catalog, Event

__all__ = ["DIALECT", "JSON", "Frame", "SchemaBuilder", "define", "frames", "json_schema"]

JSON: TypeAlias = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"

_SCALARS: dict[Any, JSON] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    None: {"type": "null"},
}
#: What the converter structures from JSON arrays and objects.
_SEQUENCE_ORIGINS = frozenset(_SEQUENCES)
_MAPPING_ORIGINS = frozenset(_MAPPINGS)
_JSON_SCALAR = (str, int, float, bool, type(None))

_NUMBER_KEYWORDS = {
    ">=": "minimum",
    ">": "exclusiveMinimum",
    "<=": "maximum",
    "<": "exclusiveMaximum",
}

#: The standard meta keys (docs/protocol.md §1) with their JSON checks.
_TIMESTAMP: JSON = {"type": "number", "description": "Sender's clock, ms since epoch."}
_CORRELATION_ID: JSON = {"type": "string", "description": "Chosen by the client per RPC."}
_TIMEOUT_MS: JSON = {
    "type": "number",
    "minimum": 0,
    "description": "The client's remaining budget for this RPC, ms.",
}
#: Server-stamped on pub/sub deliveries to subscriptions with positions (delivery.md §11.4).
_POSITION_META: JSON = {
    "topic": {"type": "string"},
    "offset": {"type": "integer", "minimum": 0},
    "epoch": {"type": "string"},
}
_ERROR_PAYLOAD: JSON = {
    "type": "object",
    "properties": {
        "code": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
        "retryable": {"type": "boolean"},
        "retryAfterMs": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
    },
    "required": ["code", "message", "retryable"],
    "additionalProperties": False,
}


#: AsyncAPI component names match ``^[a-zA-Z0-9.\-_]+$``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class SchemaBuilder:
    """Definitions under one namespace: frames and attrs classes, each once.

    ``ref_base`` is where the definitions will live in the final document
    (``#/$defs/`` for JSON Schema, ``#/components/schemas/`` for AsyncAPI).
    """

    def __init__(self, ref_base: str = "#/$defs/") -> None:
        self.ref_base = ref_base
        self.defs: dict[str, JSON] = {}
        #: attrs class -> its definition's name.
        self.classes: dict[type, str] = {}

    # -- names ----------------------------------------------------------------------

    def reserve(self, name: str) -> str:
        """A definition name not taken yet: ``name``, else ``name_2``, ``name_3``...
        Characters AsyncAPI does not allow in component names become ``_``."""
        name = _UNSAFE.sub("_", name) or "_"
        candidate, n = name, 1
        while candidate in self.defs:
            n += 1
            candidate = f"{name}_{n}"
        self.defs[candidate] = {}
        return candidate

    def ref(self, name: str) -> JSON:
        return {"$ref": self.ref_base + name}  # names need no escaping (reserve)

    def name_of_ref(self, ref: str) -> str:
        """The definition name a ``$ref`` made by :meth:`ref` points at."""
        assert ref.startswith(self.ref_base), ref
        return ref[len(self.ref_base) :]

    # -- types ----------------------------------------------------------------------

    def class_ref(self, cls: type) -> JSON:
        """A ``$ref`` to ``cls``'s definition (built on first use; recursion is fine)."""
        name = self.classes.get(cls)
        if name is None:
            name = self.reserve(cls.__name__)
            self.classes[cls] = name
            properties, required = self.fields(cls)
            schema: JSON = {"type": "object", "title": cls.__name__}
            doc = _own_doc(cls)
            if doc:
                schema["description"] = doc
            schema |= {
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            }
            self.defs[name] = schema
        return self.ref(name)

    def fields(self, cls: type) -> tuple[JSON, list[str]]:
        """``cls``'s wire properties and the required ones (those without a default)."""
        try:
            attrs.resolve_types(cls)
        except NameError as exc:
            raise ConfigurationError(
                f"{cls.__qualname__}: cannot resolve its field types ({exc})"
            ) from None
        properties: JSON = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            if not field.init:
                continue  # the converter neither reads nor requires it
            where = f"{cls.__qualname__}.{field.name}"
            if field.type is None:
                raise ConfigurationError(f"field {where} has no type annotation")
            key = wire_name(field.name)
            schema = self.type_schema(field.type, where)
            if field.validator is not None:
                schema = _constrain(schema, _constraints(field.validator), where)
            properties[key] = schema
            if field.default is attrs.NOTHING:
                required.append(key)
        return properties, required

    def type_schema(self, tp: Any, where: str) -> JSON:
        """The JSON Schema of one annotation; ``where`` names the field for errors."""
        if tp is Any or tp is object:
            return {}
        if tp in _SCALARS:
            return dict(_SCALARS[tp])
        supertype = getattr(tp, "__supertype__", None)  # typing.NewType
        if supertype is not None:
            return self.type_schema(supertype, where)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            return self.type_schema(args[0], where)
        if origin is Literal:
            return _values_schema(list(args), where)
        if origin is typing.Union or origin is types.UnionType:
            return {"anyOf": [self.type_schema(arg, where) for arg in args]}
        if inspect.isclass(tp) and issubclass(tp, enum.Enum):
            schema = _values_schema([member.value for member in tp], where)
            return {"title": tp.__name__, **schema}
        if origin is None and inspect.isclass(tp) and attrs.has(tp):
            return self.class_ref(tp)
        if (origin or tp) in _SEQUENCE_ORIGINS:
            return self._sequence(origin or tp, args, where)
        if (origin or tp) in _MAPPING_ORIGINS:
            if args and args[0] is not str and args[0] is not Any:
                raise ConfigurationError(
                    f"field {where}: {_show(tp)} has non-string keys; JSON object keys are strings"
                )
            values = self.type_schema(args[1], where) if args else {}
            return {"type": "object", "additionalProperties": values}
        raise ConfigurationError(
            f"field {where}: type {_show(tp)} has no JSON form in a message contract "
            "(use str, int, float, bool, None, unions, Literal, enums, list/tuple/set, "
            "dict[str, ...] or attrs classes)"
        )

    def _sequence(self, origin: Any, args: tuple[Any, ...], where: str) -> JSON:
        if origin is tuple and args and args[-1] is not Ellipsis:
            items = [self.type_schema(arg, where) for arg in args]
            return {
                "type": "array",
                "prefixItems": items,
                "items": False,
                "minItems": len(items),
                "maxItems": len(items),
            }
        # Sets too: the server takes duplicates (and drops them), so no uniqueItems.
        return {"type": "array", "items": self.type_schema(args[0], where) if args else {}}

    # -- frames ---------------------------------------------------------------------

    def frame(self, name: str, frame: Frame) -> None:
        """Define ``frame`` under ``name`` (reserved beforehand)."""
        meta_properties = dict(frame.standard_meta)
        meta_required = list(frame.meta_required)
        if frame.meta_cls is not None:
            extended, required = self.fields(frame.meta_cls)
            meta_properties |= extended
            meta_required += required
        meta: JSON = {
            "type": "object",
            "properties": meta_properties,
            "required": meta_required,
            "additionalProperties": False,
        }
        properties: JSON = {"type": {"const": frame.wire_type}, "meta": meta}
        required = ["type"]
        if meta_required or frame.meta_always:
            required.append("meta")
        payload = frame.payload
        if isinstance(payload, MessageSchema):
            cls = payload.payload_cls
            payload = None if cls is None else self.class_ref(cls)
            if payload is None and frame.payload_copies:
                payload = {"type": "null"}  # progress of a payload-less response
        if payload is not None:
            for key in ("payload", *frame.payload_copies):
                properties[key] = payload
                required.append(key)
        self.defs[name] = {
            "type": "object",
            "title": frame.wire_type,
            "description": frame.description,
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }


@attrs.frozen
class Frame:
    """One wire frame of a catalog: its ``wire_type`` const, meta rules and payload.

    ``name`` is the definition name it asks for, ``role`` one of ``event``,
    ``request``, ``response``, ``progress`` and ``error``; ``rpc`` is the RPC's request type
    on its ``request``, ``response`` and ``progress`` frames."""

    name: str
    sender: Literal["client", "server"]
    role: str
    wire_type: str
    description: str
    #: The payload: a message schema's (a ``$ref`` to its class, none without one) or
    #: a fixed JSON Schema (the error frames').
    payload: MessageSchema[Any] | JSON | None
    standard_meta: JSON
    meta_cls: type | None = None
    meta_required: tuple[str, ...] = ()
    #: ``meta`` is always on the wire, even with no required key in it.
    meta_always: bool = False
    #: Keys repeating ``payload`` (``data`` on progress frames).
    payload_copies: tuple[str, ...] = ()
    rpc: str | None = None


def frames(cat: Catalog) -> list[Frame]:
    """Every frame of the catalog: client events, RPC requests, server events, then
    per RPC its response and progress frames, then the error frames."""
    out: list[Frame] = []
    client_meta = {
        "timestamp": _TIMESTAMP,
        "correlationId": _CORRELATION_ID,
        "timeoutMs": _TIMEOUT_MS,
    }
    server_meta = {"timestamp": _TIMESTAMP, "correlationId": _CORRELATION_ID, **_POSITION_META}
    reply_meta = {"timestamp": _TIMESTAMP, "correlationId": _CORRELATION_ID}
    cid = {"correlationId": _CORRELATION_ID}
    for event in cat.client_events:
        out.append(_event_frame(event, "client", client_meta, "Client → server event."))
    for rpc in cat.rpcs:
        out.append(
            Frame(
                rpc.type,
                "client",
                "request",
                rpc.type,
                f"Client → server RPC request, answered by {rpc.response.type} "
                f"(or {RPC_ERROR_TYPE}) with the same meta.correlationId, after any number "
                f"of {PROGRESS_TYPE} frames.",
                rpc.request,
                client_meta,
                rpc.request.meta_cls,
                ("correlationId",),
                rpc=rpc.type,
            )
        )
    for event in cat.server_events:
        out.append(_event_frame(event, "server", server_meta, "Server → client event."))
    for rpc in cat.rpcs:
        out.append(
            Frame(
                rpc.response.type,
                "server",
                "response",
                rpc.response.type,
                f"Server → client reply to {rpc.type}.",
                rpc.response,
                reply_meta,
                rpc.response.meta_cls,
                ("correlationId",),
                rpc=rpc.type,
            )
        )
    for rpc in cat.rpcs:
        out.append(
            Frame(
                f"{rpc.type}.progress",
                "server",
                "progress",
                PROGRESS_TYPE,
                f"Server → client progress of {rpc.type}: the payload of "
                f"{rpc.response.type}, twice (WS-Kit 0.10 clients read data).",
                rpc.response,
                cid,
                meta_required=("correlationId",),
                payload_copies=("data",),
                rpc=rpc.type,
            )
        )
    out.append(
        Frame(
            ERROR_TYPE,
            "server",
            "error",
            ERROR_TYPE,
            "Server → client error answering an event (carries the inbound correlationId "
            "when there was one).",
            _ERROR_PAYLOAD,
            cid,
            meta_always=True,
        )
    )
    if cat.rpcs:
        out.append(
            Frame(
                RPC_ERROR_TYPE,
                "server",
                "error",
                RPC_ERROR_TYPE,
                "Server → client error answering an RPC request.",
                _ERROR_PAYLOAD,
                cid,
                meta_required=("correlationId",),
            )
        )
    return out


def _event_frame(
    event: Event, sender: Literal["client", "server"], meta: JSON, description: str
) -> Frame:
    schema = event.schema
    return Frame(
        event.type, sender, "event", event.type, description, schema, meta, schema.meta_cls
    )


def define(builder: SchemaBuilder, cat: Catalog) -> list[tuple[str, Frame]]:
    """Define every frame of ``cat`` in ``builder``: ``(definition name, frame)``."""
    # Names first, so frames keep their wire type as name and classes give way.
    named = [(builder.reserve(frame.name), frame) for frame in frames(cat)]
    for name, frame in named:
        builder.frame(name, frame)
    return named


def json_schema(cat: Catalog, title: str) -> JSON:
    """One JSON Schema document: ``ClientMessage`` and ``ServerMessage`` (each a union
    of frames) and every frame and class under ``$defs``; the root accepts any frame."""
    builder = SchemaBuilder("#/$defs/")
    client_union = builder.reserve("ClientMessage")
    server_union = builder.reserve("ServerMessage")
    defined = define(builder, cat)
    client = [name for name, frame in defined if frame.sender == "client"]
    server = [name for name, frame in defined if frame.sender == "server"]
    builder.defs[client_union] = {
        "description": "Any frame a client may send.",
        "anyOf": [builder.ref(name) for name in client],
    }
    builder.defs[server_union] = {
        "description": "Any frame the server may send.",
        "anyOf": [builder.ref(name) for name in server],
    }
    return {
        "$schema": DIALECT,
        "title": title,
        "description": "Every wire frame of this router (docs/protocol.md), one definition each.",
        "anyOf": [builder.ref(client_union), builder.ref(server_union)],
        "$defs": builder.defs,
    }


# -- helpers --------------------------------------------------------------------------


def _own_doc(cls: type) -> str | None:
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _show(tp: Any) -> str:
    return tp.__qualname__ if inspect.isclass(tp) else repr(tp)


def _values_schema(values: list[Any], where: str) -> JSON:
    """``Literal`` and enum values: JSON scalars compared by type and value."""
    for value in values:
        if not isinstance(value, _JSON_SCALAR):
            raise ConfigurationError(
                f"field {where}: value {value!r} is not a JSON string, number, boolean or null"
            )
    return {"const": values[0]} if len(values) == 1 else {"enum": values}


def _constraints(validator: Any) -> list[tuple[str, Any]]:
    """``(keyword, value)`` for the attrs validators that have a JSON Schema form."""
    kind = type(validator).__name__
    if kind == "_AndValidator":
        return [c for v in validator._validators for c in _constraints(v)]
    if kind == "_OptionalValidator":
        inner = validator.validator
        return [c for v in (inner if isinstance(inner, list) else [inner]) for c in _constraints(v)]
    if kind == "_NumberValidator" and validator.compare_op in _NUMBER_KEYWORDS:
        return [(_NUMBER_KEYWORDS[validator.compare_op], validator.bound)]
    if kind == "_MinLengthValidator":
        return [("minLength", validator.min_length)]
    if kind == "_MaxLengthValidator":
        return [("maxLength", validator.max_length)]
    if kind == "_MatchesReValidator":
        return [("pattern", _anchored(validator.pattern, validator.match_func))]
    if kind == "_InValidator":
        return [("enum", list(validator.options))]
    return []  # custom validators stay the server's business


def _anchored(pattern: re.Pattern[str], match: Callable[..., Any]) -> str:
    # JSON Schema patterns search; attrs' matches_re uses fullmatch by default.
    if match == pattern.fullmatch:
        return f"^(?:{pattern.pattern})$"
    if match == pattern.match:
        return f"^(?:{pattern.pattern})"
    return pattern.pattern


_APPLIES: dict[str, tuple[str, ...]] = {
    "minimum": ("integer", "number"),
    "exclusiveMinimum": ("integer", "number"),
    "maximum": ("integer", "number"),
    "exclusiveMaximum": ("integer", "number"),
    "pattern": ("string",),
}


def _constrain(schema: JSON, constraints: Iterable[tuple[str, Any]], where: str) -> JSON:
    """Put each constraint on the branches it applies to, so a nullable field keeps
    accepting ``null`` and the zod export can chain it (``z.number().min(0)``)."""
    branches: list[JSON] = schema.get("anyOf", [schema])
    for keyword, value in constraints:
        if keyword == "enum":
            values = _values_schema(list(value), where)
            kept = [b for b in branches if b.get("type") == "null"]
            branches = [values, *kept]
            continue
        for branch in branches:
            kind = branch.get("type")
            if keyword in ("minLength", "maxLength"):
                if kind == "array":
                    branch[keyword.replace("Length", "Items")] = value
                elif kind == "string":
                    branch[keyword] = value
            elif kind in _APPLIES[keyword]:
                branch[keyword] = value
    if len(branches) == 1:
        return branches[0]
    return {**schema, "anyOf": branches}
