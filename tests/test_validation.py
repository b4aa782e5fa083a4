"""Strict structuring with cattrs (docs/protocol.md §2): every problem, with its path."""

from __future__ import annotations

import collections.abc as abc
import enum
from typing import Any, Literal

import attrs
import pytest

from wskit_trio._protocol.validation import check, structurer, type_name, unstructure, wire_name


class Color(enum.Enum):
    RED = "red"
    ONE = 1


@attrs.frozen
class Inner:
    x_pos: int
    tags: list[str] = attrs.field(factory=list)


@attrs.frozen
class Outer:
    name: str
    inner: Inner
    items: list[Inner]
    scores: dict[str, float]
    maybe: int | None
    choice: Literal["a", 1]
    color: Color
    pair: tuple[int, str]
    nums: tuple[int, ...] = ()
    unique: frozenset[int] = frozenset()
    note: str | None = None
    flag: bool = False


GOOD: dict[str, Any] = {
    "name": "n",
    "inner": {"xPos": 1},
    "items": [{"xPos": 2, "tags": ["a"]}],
    "scores": {"a": 1, "b": 2.5},
    "maybe": None,
    "choice": "a",
    "color": "red",
    "pair": [1, "s"],
}

OUTER = structurer(Outer)


def problems(value: Any, fn: Any = OUTER) -> dict[str, str]:
    result, found = check(fn, value, "$.payload")
    assert result is None or not found
    return dict(found)


def test_valid_value_structures() -> None:
    result, found = check(OUTER, GOOD, "$.payload")
    assert found == []
    assert result == Outer(
        name="n",
        inner=Inner(1),
        items=[Inner(2, ["a"])],
        scores={"a": 1.0, "b": 2.5},
        maybe=None,
        choice="a",
        color=Color.RED,
        pair=(1, "s"),
    )


def test_snake_case_fields_are_camel_case_on_the_wire() -> None:
    assert wire_name("room_id") == "roomId"
    assert wire_name("x") == "x"
    assert wire_name("a_b_c") == "aBC"
    assert wire_name("_private_thing") == "privateThing"
    assert problems({**GOOD, "inner": {"x_pos": 1}}) == {
        "$.payload.inner.x_pos": "unknown key",
        "$.payload.inner.xPos": "required key missing",
    }


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"zzz": 1}, "$.payload.zzz"),
        ({"inner": {"xPos": 1, "extra": 0}}, "$.payload.inner.extra"),
        ({"items": [{"xPos": 1}, {"xPos": 2, "deep": {}}]}, "$.payload.items[1].deep"),
    ],
)
def test_unknown_keys_are_rejected_at_every_level(change: dict[str, Any], path: str) -> None:
    assert problems({**GOOD, **change}) == {path: "unknown key"}


def test_missing_keys_are_reported_each_with_its_path() -> None:
    found = problems({"inner": {}, "items": [{}]})
    assert found["$.payload.inner.xPos"] == "required key missing"
    assert found["$.payload.items[0].xPos"] == "required key missing"
    for key in ("name", "scores", "maybe", "choice", "color", "pair"):
        assert found[f"$.payload.{key}"] == "required key missing"
    # Fields with defaults are not required.
    for key in ("nums", "unique", "note", "flag"):
        assert f"$.payload.{key}" not in found


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", 1),
        ("name", None),
        ("name", ["n"]),
        ("maybe", 1.0),  # a float is not an integer, even a whole one
        ("maybe", "1"),  # no "5" -> 5 coercion
        ("maybe", True),  # booleans are not numbers
        ("flag", 0),
        ("flag", "true"),
        ("note", 3),
        ("choice", True),  # true must not match Literal[1]
        ("choice", "b"),
        ("color", True),
        ("color", "RED"),
        ("pair", [1]),
        ("pair", [1, "s", 2]),
        ("pair", "1s"),
        ("unique", "abc"),
        ("unique", {"a": 1}),
        ("items", {}),
        ("items", "abc"),
        ("scores", []),
        ("inner", "x"),
        ("inner", []),
        ("inner", None),
    ],
)
def test_wrong_types_are_rejected(key: str, value: Any) -> None:
    assert list(problems({**GOOD, key: value})) == [f"$.payload.{key}"]


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"inner": {"xPos": True}}, "$.payload.inner.xPos", "expected integer, got boolean"),
        ({"scores": {"a": False}}, "$.payload.scores.a", "expected number, got boolean"),
        ({"items": [{"xPos": 1}, 5]}, "$.payload.items[1]", "expected object, got integer"),
        ({"nums": [1, "2"]}, "$.payload.nums[1]", "expected integer, got string"),
        ({"items": [{"xPos": 1, "tags": ["a", 2]}]}, "$.payload.items[0].tags[1]", None),
    ],
)
def test_nested_problems_have_precise_paths(
    change: dict[str, Any], path: str, message: str | None
) -> None:
    found = problems({**GOOD, **change})
    assert list(found) == [path]
    if message is not None:
        assert found[path] == message


def test_every_problem_is_reported_at_once() -> None:
    bad = {
        **GOOD,
        "name": 1,
        "inner": {"xPos": True, "extra": 1},
        "scores": {"a": "x"},
        "flag": 0,
        "zzz": 1,
    }
    assert sorted(problems(bad)) == [
        "$.payload.flag",
        "$.payload.inner.extra",
        "$.payload.inner.xPos",
        "$.payload.name",
        "$.payload.scores.a",
        "$.payload.zzz",
    ]


@pytest.mark.parametrize("value", [[], "x", 1, None, True])
def test_an_object_is_required_at_the_top(value: Any) -> None:
    assert list(problems(value)) == ["$.payload"]


def test_accepted_scalars() -> None:
    assert problems({**GOOD, "maybe": 5, "choice": 1, "color": 1, "flag": True}) == {}
    # An int is a valid JSON number for a float field.
    result, _ = check(OUTER, {**GOOD, "scores": {"a": 3}}, "$")
    assert result is not None and result.scores == {"a": 3.0}


def test_sets_and_tuples_round_trip_as_json_arrays() -> None:
    value = Outer(
        name="n",
        inner=Inner(1),
        items=[],
        scores={},
        maybe=None,
        choice=1,
        color=Color.ONE,
        pair=(7, "x"),
        nums=(1, 2),
        unique=frozenset({3}),
    )
    raw = unstructure(value)
    assert raw["pair"] == [7, "x"] and raw["nums"] == [1, 2] and raw["unique"] == [3]
    assert raw["color"] == 1 and raw["inner"] == {"xPos": 1, "tags": []}
    assert check(OUTER, raw, "$")[0] == value


@attrs.frozen
class Collections:
    tags: set[str] = attrs.field(factory=set)
    seq: abc.Sequence[int] = ()


def test_abstract_collections_unstructure_to_lists() -> None:
    raw = unstructure(Collections({"a"}, (1, 2)))
    assert raw == {"tags": ["a"], "seq": [1, 2]}
    assert check(structurer(Collections), raw, "$") == (Collections({"a"}, [1, 2]), [])


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ({}, "object"),
        ([], "array"),
        ("", "string"),
        (1, "integer"),
        (1.0, "number"),
        (True, "boolean"),
        (None, "null"),
    ],
)
def test_type_names_are_json_names(value: Any, name: str) -> None:
    assert type_name(value) == name


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mode(str, enum.Enum):  # noqa: UP042 (the mix-in is the case under test)
    FAST = "fast"


@attrs.frozen
class Tuned:
    level: Level
    mode: Mode
    count: int


def test_int_and_str_mixin_enums_structure_to_members() -> None:
    # A hook for ``int`` / ``str`` also gets their enum subclasses: they must still
    # come back as members (a plain value would fail when it is sent again).
    tuned = structurer(Tuned)({"level": 2, "mode": "fast", "count": 3})
    assert tuned == Tuned(Level.HIGH, Mode.FAST, 3)
    assert type(tuned.level) is Level and type(tuned.mode) is Mode
    assert unstructure(tuned) == {"level": 2, "mode": "fast", "count": 3}
    assert problems({"level": True, "mode": "slow", "count": 1}, structurer(Tuned)) == {
        "$.payload.level": "expected one of [1, 2]",
        "$.payload.mode": "expected one of ['fast']",
    }
