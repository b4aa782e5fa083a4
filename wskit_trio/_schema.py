"""Message contracts: ``message()`` and ``rpc()`` and the schema objects they build.

A schema ties a wire ``type`` to an attrs payload class (and optionally an attrs
class of extended meta fields). It is generic in the payload class, so a type
checker knows ``ctx.payload`` from the schema alone and rejects a ``send`` of
the wrong class.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any, Generic, TypeVar, overload

import attrs

from ._errors import ConfigurationError, OutboundValidationError
from ._protocol.frames import (
    ERROR_TYPE,
    NO_PAYLOAD,
    RESERVED_META_KEYS,
    RPC_ERROR_TYPE,
    STANDARD_META_KEYS,
    is_reserved_type,
)
from ._protocol.validation import StructureFn, problems_of, structurer, unstructure, wire_name

__all__ = ["MessageSchema", "RpcSchema", "message", "rpc"]

P = TypeVar("P")
Req = TypeVar("Req")
Res = TypeVar("Res")


class MessageSchema(Generic[P]):
    """One message type: its wire ``type``, payload class and extended meta class.

    Build it with :func:`message`. ``payload_cls`` is ``None`` for messages
    without a payload (then ``P`` is ``None``).
    """

    __slots__ = ("meta_cls", "payload_cls", "structure_meta", "structure_payload", "type")

    def __init__(self, type: str, payload_cls: type[P] | None, meta_cls: type | None) -> None:
        self.type = type
        self.payload_cls = payload_cls
        self.meta_cls = meta_cls
        self.structure_payload: StructureFn | None = (
            structurer(payload_cls) if payload_cls is not None else None
        )
        self.structure_meta: StructureFn | None = (
            structurer(meta_cls) if meta_cls is not None else None
        )

    def __repr__(self) -> str:
        name = self.payload_cls.__name__ if self.payload_cls is not None else None
        return f"MessageSchema({self.type!r}, {name})"

    def dump_payload(self, payload: Any) -> Any:
        """The JSON value of an outbound payload, validated against this schema.

        Raises :class:`OutboundValidationError` (nothing is sent) when the
        payload is not this schema's class or does not survive strict
        structuring (attrs does not check field types at runtime; we do).
        """
        cls = self.payload_cls
        if cls is None:
            if payload is not None:
                raise OutboundValidationError(
                    self.type, [("$.payload", "this message has no payload")]
                )
            return None
        assert self.structure_payload is not None
        if isinstance(payload, cls):
            pass
        elif isinstance(payload, Mapping):
            # Dict form: structuring validates it and fills defaults.
            payload = self._structure_outbound(payload)
        else:
            raise OutboundValidationError(
                self.type, [("$.payload", f"expected {cls.__name__}, got {type(payload).__name__}")]
            )
        raw = unstructure(payload)
        self._structure_outbound(raw)
        return raw

    def wire_payload(self, payload: Any) -> Any:
        """:meth:`dump_payload`, or ``NO_PAYLOAD`` (for ``frames.encode_frame``: no
        ``payload`` key) when this message has none."""
        data = self.dump_payload(payload)
        return NO_PAYLOAD if self.payload_cls is None else data

    def _structure_outbound(self, raw: Any) -> Any:
        assert self.structure_payload is not None
        try:
            return self.structure_payload(raw)
        except Exception as exc:  # cattrs: the payload's fault, whatever the type
            raise OutboundValidationError(self.type, problems_of(exc, "$.payload")) from None


class RpcSchema(Generic[Req, Res]):
    """A request type bound to its response type. Build it with :func:`rpc`."""

    __slots__ = ("request", "response")

    def __init__(self, request: MessageSchema[Req], response: MessageSchema[Res]) -> None:
        self.request = request
        self.response = response

    @property
    def type(self) -> str:
        return self.request.type

    def __repr__(self) -> str:
        return f"RpcSchema({self.request!r} -> {self.response!r})"


def _check_type(type: str) -> None:
    if not isinstance(type, str) or not type:
        raise ConfigurationError(f"message type must be a non-empty string, got {type!r}")
    if is_reserved_type(type) or type in (ERROR_TYPE, RPC_ERROR_TYPE):
        raise ConfigurationError(f"message type {type!r} is reserved for the protocol")


def _payload_class(type: str, payload: Any) -> type | None:
    if payload is None:
        return None
    if isinstance(payload, Mapping):
        return _class_from_fields(type, payload)
    if not (inspect.isclass(payload) and attrs.has(payload)):
        raise ConfigurationError(f"payload of {type!r} must be an attrs class, got {payload!r}")
    return payload


def _class_from_fields(type: str, fields: Mapping[str, Any]) -> type:
    # Optional fields (those admitting None) default to None; the rest are required.
    ordered = sorted(fields.items(), key=lambda kv: _admits_none(kv[1]))
    spec = {
        name: attrs.field(type=tp, default=None) if _admits_none(tp) else attrs.field(type=tp)
        for name, tp in ordered
    }
    name = "".join(part.capitalize() for part in type.lower().split("_")) or "Payload"
    return attrs.make_class(name, spec, frozen=True)


def _admits_none(tp: Any) -> bool:
    # get_args covers ``X | None`` as well as ``Optional[X]``.
    return tp is None or type(None) in typing.get_args(tp)


def _meta_class(type: str, meta: Any) -> type | None:
    if meta is None:
        return None
    if isinstance(meta, Mapping):
        meta = _class_from_fields(type + "_META", meta)
    if not (inspect.isclass(meta) and attrs.has(meta)):
        raise ConfigurationError(f"meta of {type!r} must be an attrs class, got {meta!r}")
    for field in attrs.fields(meta):
        key = wire_name(field.name)
        if key in RESERVED_META_KEYS or key in STANDARD_META_KEYS:
            raise ConfigurationError(
                f"meta of {type!r} may not declare {key!r}: it is a reserved or standard key"
            )
    return meta


@overload
def message(type: str, payload: None = None, *, meta: Any = None) -> MessageSchema[None]: ...
@overload
def message(type: str, payload: type[P], *, meta: Any = None) -> MessageSchema[P]: ...
@overload
def message(type: str, payload: Mapping[str, Any], *, meta: Any = None) -> MessageSchema[Any]: ...
def message(type: str, payload: Any = None, *, meta: Any = None) -> MessageSchema[Any]:
    """Declare a message: ``message("PING", Ping)``, ``message("LEAVE")`` (no payload).

    ``payload`` is an attrs class (the typed form) or a mapping of field name to
    type (``{"text": str}``), from which an attrs class is built. ``meta`` is an
    attrs class (or mapping) of extended meta fields this message accepts.
    """
    _check_type(type)
    return MessageSchema(type, _payload_class(type, payload), _meta_class(type, meta))


@overload
def rpc(
    req_type: str,
    req: type[Req],
    res_type: str,
    res: type[Res],
    *,
    req_meta: Any = None,
    res_meta: Any = None,
) -> RpcSchema[Req, Res]: ...
@overload
def rpc(
    req_type: str,
    req: None,
    res_type: str,
    res: type[Res],
    *,
    req_meta: Any = None,
    res_meta: Any = None,
) -> RpcSchema[None, Res]: ...
@overload
def rpc(
    req_type: str,
    req: Any,
    res_type: str,
    res: Any,
    *,
    req_meta: Any = None,
    res_meta: Any = None,
) -> RpcSchema[Any, Any]: ...
def rpc(
    req_type: str,
    req: Any,
    res_type: str,
    res: Any,
    *,
    req_meta: Any = None,
    res_meta: Any = None,
) -> RpcSchema[Any, Any]:
    """Declare a request/response pair: ``rpc("GET_USER", GetUser, "USER", User)``.

    The reply travels as ``res_type`` with the request's correlationId.
    """
    if req_type == res_type:
        raise ConfigurationError(f"rpc {req_type!r}: request and response types must differ")
    return RpcSchema(message(req_type, req, meta=req_meta), message(res_type, res, meta=res_meta))
