"""Strict structuring with cattrs: JSON values in, attrs instances out, or error paths.

WS-Kit validates with Zod in strict mode; this is the same contract built from
converter hooks: unknown keys are rejected at every level, a JSON value must
already have the declared type (no ``"5"`` → ``5``, booleans are not numbers,
a string is not a list), and every problem is reported with a JSONPath-like path.
"""

from __future__ import annotations

import collections.abc as abc
import enum
import functools
import math
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

__all__ = [
    "Problems",
    "StructureFn",
    "check",
    "converter",
    "problems_of",
    "structurer",
    "type_name",
    "unstructure",
    "wire_name",
]

#: One problem per entry: (path, message), e.g. ("$.payload.roomId", "expected string").
Problems: TypeAlias = list[tuple[str, str]]
StructureFn: TypeAlias = Callable[[Any], Any]

_JSON_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    return _JSON_NAMES.get(type(value), type(value).__name__)


class StrictTypeError(TypeError):
    """A JSON value had the wrong type; the message says what was expected and found."""


def _expect(expected: str, value: Any) -> StrictTypeError:
    return StrictTypeError(f"expected {expected}, got {type_name(value)}")


# The str and int hooks also get the enums that mix those in (``IntEnum``,
# ``class C(str, Enum)``): dispatch on ``int`` matches its subclasses first.


def _structure_str(value: Any, t: Any) -> Any:
    if type(value) is str:
        return value if t is str else _member(t, value)
    return _not_a(t, value, "string")


def _structure_int(value: Any, t: Any) -> Any:
    if type(value) is int:
        return value if t is int else _member(t, value)
    return _not_a(t, value, "integer")


def _member(t: Any, value: Any) -> Any:
    return _structure_enum(t)(value, t) if _is_enum(t) else value


def _not_a(t: Any, value: Any, expected: str) -> Any:
    if _is_enum(t):
        return _structure_enum(t)(value, t)
    raise _expect(expected, value)


def _structure_float(value: Any, _: Any) -> float:
    if type(value) is int:
        return float(value)
    if type(value) is float:
        if math.isfinite(value):
            return value
        # Only outbound payloads can hold these: JSON has no NaN or infinities.
        raise StrictTypeError("expected a finite number")
    raise _expect("number", value)


def _structure_bool(value: Any, _: Any) -> bool:
    if type(value) is bool:
        return value
    raise _expect("boolean", value)


def _structure_none(value: Any, _: Any) -> None:
    if value is None:
        return None
    raise _expect("null", value)


def wire_name(attribute: str) -> str:
    """Python fields are snake_case, the wire is camelCase: ``room_id`` ↔ ``roomId``."""
    head, *rest = attribute.lstrip("_").split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


_SEQUENCES = (
    list,
    tuple,
    set,
    frozenset,
    abc.Sequence,
    abc.MutableSequence,
    abc.Set,
    abc.MutableSet,
)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)


def _is_sequence(t: Any) -> bool:
    return (typing.get_origin(t) or t) in _SEQUENCES


def _is_mapping(t: Any) -> bool:
    return (typing.get_origin(t) or t) in _MAPPINGS


def _renames(cls: type) -> dict[str, Any]:
    return {
        a.name: override(rename=wire_name(a.name))
        for a in attrs.fields(cls)
        if wire_name(a.name) != a.name
    }


def _is_literal(t: Any) -> bool:
    return typing.get_origin(t) is Literal


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


@functools.cache
def _structure_enum(t: type[enum.Enum]) -> Callable[[Any, Any], Any]:
    """A member of ``t`` from its value, compared by type and value (JSON ``true``
    is not ``1``)."""
    by_value = {(type(m.value), m.value): m for m in t}

    def structure(value: Any, _: Any) -> Any:
        try:
            return by_value[(type(value), value)]
        except (KeyError, TypeError):
            raise StrictTypeError(f"expected one of {[m.value for m in t]!r}") from None

    return structure


def make_converter(*, detailed: bool = True) -> cattrs.Converter:
    """The strict converter. ``detailed`` collects every problem with its path;
    without it, structuring stops at the first problem (faster, for valid input)."""
    conv = cattrs.Converter(
        forbid_extra_keys=True,
        detailed_validation=detailed,
        # JSON has arrays only: sets and tuples (fixed-length ones too) go out as lists,
        # which is also the only form the strict structuring hooks below accept back.
        unstruct_collection_overrides={abc.Set: list, tuple: list, abc.Sequence: list},
    )
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(type(None), _structure_none)

    @conv.register_structure_hook_factory(attrs.has)
    def _attrs_hook(cls: type) -> Callable[[Any, Any], Any]:
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(
            cls,
            conv,
            _cattrs_forbid_extra_keys=True,
            _cattrs_detailed_validation=detailed,
            **_renames(cls),
        )

        def structure(value: Any, t: Any) -> Any:
            if type(value) is not dict:
                raise _expect("object", value)
            return inner(value, t)

        return structure

    @conv.register_unstructure_hook_factory(attrs.has)
    def _attrs_unstructure(cls: type) -> Callable[[Any], Any]:
        return make_dict_unstructure_fn(cls, conv, **_renames(cls))

    @conv.register_structure_hook_factory(_is_sequence)
    def _sequence_hook(t: Any) -> Callable[[Any, Any], Any]:
        origin = typing.get_origin(t) or t
        args = typing.get_args(t)
        if origin is tuple and args and args[-1] is not Ellipsis:
            hetero = conv.gen_structure_hetero_tuple(t)

            def structure_tuple(value: Any, t: Any) -> Any:
                if type(value) is not list:
                    raise _expect("array", value)
                if len(value) != len(args):
                    raise StrictTypeError(f"expected an array of {len(args)} items")
                return hetero(value, t)

            return structure_tuple
        elem = args[0] if args else Any
        as_list = list_structure_factory(list[elem], conv)  # type: ignore[valid-type]
        build: Callable[[list[Any]], Any] = list
        if origin is tuple:
            build = tuple
        elif origin in (set, frozenset, abc.Set, abc.MutableSet):
            build = frozenset if origin is frozenset else set

        def structure(value: Any, t: Any) -> Any:
            if type(value) is not list:
                raise _expect("array", value)
            return build(as_list(value, t))

        return structure

    @conv.register_structure_hook_factory(_is_mapping)
    def _mapping_hook(t: Any) -> Callable[[Any, Any], Any]:
        inner: Callable[[Any, Any], Any] = conv.gen_structure_mapping(t)

        def structure(value: Any, t: Any) -> Any:
            if type(value) is not dict:
                raise _expect("object", value)
            return inner(value, t)

        return structure

    @conv.register_structure_hook_factory(_is_literal)
    def _literal_hook(t: Any) -> Callable[[Any, Any], Any]:
        allowed = typing.get_args(t)
        # Compare type and value: JSON true must not match Literal[1].
        keyed = {(type(a), a) for a in allowed}

        def structure(value: Any, _: Any) -> Any:
            if (type(value), value) in keyed:
                return value
            raise StrictTypeError(f"expected one of {list(allowed)!r}")

        return structure

    @conv.register_structure_hook_factory(_is_enum)
    def _enum_hook(t: type[enum.Enum]) -> Callable[[Any, Any], Any]:
        return _structure_enum(t)

    return conv


#: The converter every schema is structured and unstructured with.
converter = make_converter()
#: The same rules, stopping at the first problem: tried first, as most input is valid.
_first_problem_converter = make_converter(detailed=False)


def structurer(cls: Any) -> StructureFn:
    """A one-argument structuring function for ``cls``, generated once.

    Valid input goes through the faster hook that stops at the first problem;
    input it refuses goes through the detailed one, which raises with every
    problem and its path (both apply exactly the same rules).
    """
    fast = _first_problem_converter.get_structure_hook(cls)
    detailed = converter.get_structure_hook(cls)

    def structure(value: Any) -> Any:
        try:
            return fast(value, cls)
        except Exception:
            return detailed(value, cls)

    return structure


def problems_of(exc: BaseException, path: str) -> Problems:
    """Flatten a cattrs validation error into ``(path, message)`` pairs."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return [(f"{path}.{key}", "unknown key") for key in sorted(exc.extra_fields)]
    if isinstance(exc, IterableValidationError):
        problems: Problems = []
        with_notes, without = exc.group_exceptions()
        for sub, item in with_notes:
            index = item.index
            step = f"[{index}]" if isinstance(index, int) else f".{index}"
            problems.extend(problems_of(sub, path + step))
        for sub in without:
            problems.extend(problems_of(sub, path))
        return problems
    if isinstance(exc, ClassValidationError):
        problems = []
        class_notes, others = exc.group_exceptions()
        for sub, note in class_notes:
            problems.extend(problems_of(sub, f"{path}.{wire_name(note.name)}"))
        for sub in others:
            problems.extend(problems_of(sub, path))
        return problems
    if isinstance(exc, KeyError):
        return [(path, "required key missing")]
    if isinstance(exc, StrictTypeError):
        return [(path, str(exc))]
    if isinstance(exc, (TypeError, ValueError)):
        return [(path, f"invalid value ({exc})" if str(exc) else "invalid value")]
    return [(path, "invalid value")]


def check(fn: StructureFn, value: Any, path: str) -> tuple[Any, Problems]:
    """Structure ``value``; returns ``(result, [])`` or ``(None, problems)``."""
    try:
        return fn(value), []
    except Exception as exc:  # cattrs raises many types; all are the input's fault
        return None, problems_of(exc, path)


def unstructure(value: Any) -> Any:
    return converter.unstructure(value)
