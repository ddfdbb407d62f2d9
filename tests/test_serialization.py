"""JSON encoding of cached values: orjson, dataclasses, attrs, and the way back."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickerq.errors import SerializationError, TickerQError
from tickerq.serialization import dumps, dumps_array, loads, loads_array, structure


@dataclasses.dataclass(frozen=True)
class Product:
    sku: str
    price: float
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Slugged:
    name: str
    slug: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.slug = self.name.lower()


@attrs.frozen
class Point:
    x: int
    _label: str  # init alias "label"
    area: int = attrs.field(init=False, default=0)


@attrs.frozen
class Route:
    name: str
    start: Point


@attrs.frozen
class Positive:
    value: int = attrs.field(validator=attrs.validators.gt(0))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=5), children, max_size=5
        )
    ),
    max_leaves=20,
)


def test_dumps_is_compact_json() -> None:
    """Values encode as compact UTF-8 JSON."""
    assert b'[1,"\xc3\xa9",{"a":null}]' == dumps([1, "é", {"a": None}])


@settings(deadline=None)  # a shared 2-core machine: timing is not what we test
@given(json_values)
def test_json_values_round_trip(value: Any) -> None:
    """Any JSON value survives dumps then loads unchanged."""
    assert value == loads(dumps(value))


def test_dataclass_round_trips_with_structure() -> None:
    """A dataclass encodes as an object and structure() rebuilds an equal instance."""
    product = Product(sku="a-1", price=9.5, tags=["new"])
    assert {"sku": "a-1", "price": 9.5, "tags": ["new"]} == loads(dumps(product))
    assert product == structure(loads(dumps(product)), Product)


def test_dataclass_init_false_fields_are_dropped_when_structuring() -> None:
    """Fields excluded from __init__ are encoded but not passed back to the constructor."""
    assert Slugged("Hello") == structure(loads(dumps(Slugged("Hello"))), Slugged)


def test_attrs_private_field_round_trips_through_its_alias() -> None:
    """attrs instances encode by field name and rebuild through __init__ aliases."""
    point = Point(x=1, label="a")
    assert {"x": 1, "_label": "a", "area": 0} == loads(dumps(point))
    assert point == structure(loads(dumps(point)), Point)


def test_nested_attrs_encode_and_structure_shallowly() -> None:
    """Nested attrs instances encode as nested objects; structure() builds only the outer one."""
    route = Route(name="r", start=Point(x=1, label="a"))
    rebuilt = structure(loads(dumps(route)), Route)
    assert {"x": 1, "_label": "a", "area": 0} == rebuilt.start  # type: ignore[comparison-overlap]


def test_sets_datetimes_and_tuples_encode() -> None:
    """Sets and tuples become arrays, datetimes RFC 3339 strings."""
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert [[1], [2, 3], "2024-01-02T03:04:05+00:00"] == loads(dumps([{1}, (2, 3), when]))


def test_unencodable_value_raises_serialization_error() -> None:
    """An object with no JSON form raises SerializationError, a TickerQError and TypeError."""
    with pytest.raises(SerializationError, match="JSON") as info:
        dumps([object()])
    assert isinstance(info.value, TickerQError)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("data", [b"", b"not json", b"[1,", b"\xff\xfe"])
def test_loads_rejects_invalid_json(data: bytes) -> None:
    """Invalid JSON raises SerializationError."""
    with pytest.raises(SerializationError, match="not a JSON document"):
        loads(data)


@pytest.mark.parametrize(
    ("data", "kind"), [(b'{"a":1}', "object"), (b'"s"', "string"), (b"1", "number"), (b"null", "null")]
)
def test_loads_array_rejects_other_json_types(data: bytes, kind: str) -> None:
    """loads_array() names the JSON type it found instead of an array."""
    with pytest.raises(SerializationError, match=f"expected a JSON array, got a JSON {kind}"):
        loads_array(data)


def test_dumps_array_rejects_non_lists() -> None:
    """dumps_array() accepts lists and tuples only."""
    assert b"[1,2]" == dumps_array((1, 2))
    with pytest.raises(SerializationError, match="expected a list, got a dict"):
        dumps_array({"a": 1})  # type: ignore[arg-type]


@given(
    st.lists(
        st.builds(Product, sku=st.text(max_size=5), price=st.floats(-1e9, 1e9), tags=st.lists(st.text()))
    )
)
def test_dataclass_arrays_round_trip(products: list[Product]) -> None:
    """An array of dataclasses comes back equal through loads_array(item_type=...)."""
    assert products == loads_array(dumps_array(products), Product)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"x": 1}, "cannot build a Point"),  # missing field
        ({"x": 1, "_label": "a", "zz": 2}, "cannot build a Point"),  # unknown field
        ([1, 2], "expected a Point"),
        ("text", "expected a Point"),
    ],
)
def test_structure_rejects_values_that_do_not_fit(value: object, match: str) -> None:
    """Values that do not fit item_type raise SerializationError naming the class."""
    with pytest.raises(SerializationError, match=match):
        structure(value, Point)


def test_structure_reports_validator_failures() -> None:
    """A validator refusing a stored value surfaces as SerializationError."""
    with pytest.raises(SerializationError, match="Positive"):
        structure({"value": -1}, Positive)


def test_structure_passes_matching_scalars_and_dicts_through() -> None:
    """Scalars of item_type, and dicts for item_type=dict, come back unchanged."""
    assert "a" == structure("a", str)
    assert {"a": 1} == structure({"a": 1}, dict)
