"""JSON for every byte tickerq writes to Redis: orjson, never pickle.

A shared store must not be a code-execution path, so values are plain JSON.
``dumps`` accepts what orjson accepts natively (JSON values, dataclasses,
``datetime``, ``uuid``, enums, tuples) plus attrs instances and sets.
``structure`` turns a decoded JSON object back into an instance of a given
class, which is how cached dataclasses and attrs instances round-trip.
Structuring is shallow: a nested object comes back as a ``dict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import orjson

from tickerq.errors import SerializationError

__all__ = ["dumps", "dumps_array", "loads", "loads_array", "structure"]

T = TypeVar("T")


def _default(obj: Any) -> Any:
    """orjson's hook for types it does not know natively."""
    if attrs.has(type(obj)):
        # Not recursive: orjson calls this hook again for nested attrs instances.
        return attrs.asdict(obj, recurse=False)
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"{type(obj).__qualname__} is not JSON serializable")


def dumps(value: object) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON.

    Args:
        value: JSON values, dataclasses, attrs instances, sets and whatever
            orjson encodes natively, nested in any way.

    Returns:
        The JSON document.

    Raises:
        SerializationError: Something in ``value`` has no JSON form.
    """
    try:
        return orjson.dumps(value, default=_default)
    except orjson.JSONEncodeError as exc:
        raise SerializationError(f"cannot encode a {type(value).__qualname__} as JSON: {exc}") from exc


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode one JSON document.

    Raises:
        SerializationError: ``data`` is not valid UTF-8 JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"not a JSON document: {exc}") from exc


def dumps_array(value: list[Any] | tuple[Any, ...]) -> bytes:
    """Encode a list (or tuple) as a JSON array.

    Raises:
        SerializationError: ``value`` is not a list or tuple, or an item has no JSON form.
    """
    if not isinstance(value, list | tuple):
        raise SerializationError(f"expected a list, got a {type(value).__qualname__}")
    return dumps(value)


def loads_array(data: bytes, item_type: type[T] | None = None) -> list[Any]:
    """Decode a JSON array, building each item as ``item_type`` when given (see :func:`structure`).

    Raises:
        SerializationError: ``data`` is not a JSON array, or an item does not fit ``item_type``.
    """
    value = loads(data)
    if value.__class__ is not list:
        raise SerializationError(f"expected a JSON array, got a JSON {_JSON_NAMES.get(type(value), 'value')}")
    if item_type is None:
        return value
    return [structure(item, item_type) for item in value]


def structure(value: Any, item_type: type[T]) -> T:
    """Turn a decoded JSON value back into an ``item_type``.

    A JSON object becomes ``item_type(**fields)``; for attrs classes the field
    names are mapped to their ``__init__`` aliases (so ``_private`` fields
    work), and fields excluded from ``__init__`` (attrs or dataclass
    ``init=False``) are dropped. Any other value must already be an instance of
    ``item_type`` (``str``, ``int``, ``list`` ...) and is returned unchanged.

    Raises:
        SerializationError: The value does not fit ``item_type`` (wrong JSON
            type, missing or unknown fields, a validator refused it).
    """
    if isinstance(value, dict) and item_type is not dict:
        try:
            constructor = _CONSTRUCTORS.get(item_type) or _constructor(item_type)
            return constructor(value)  # type: ignore[no-any-return]
        except Exception as exc:  # the class's own __init__ and validators may raise anything
            raise SerializationError(
                f"cannot build a {item_type.__qualname__} from the JSON object {_preview(value)}: {exc}"
            ) from exc
    if isinstance(value, item_type):
        return value
    raise SerializationError(f"expected a {item_type.__qualname__}, got the JSON value {_preview(value)}")


#: Per-class constructors, built once: classes are few and live as long as the process.
_CONSTRUCTORS: dict[type[Any], Callable[[dict[str, Any]], Any]] = {}


def _constructor(cls: type[Any]) -> Callable[[dict[str, Any]], Any]:
    """Build and remember the function that makes ``cls`` from the dict its instances encode to."""
    constructor = _CONSTRUCTORS[cls] = _make_constructor(cls)
    return constructor


def _make_constructor(cls: type[Any]) -> Callable[[dict[str, Any]], Any]:
    if attrs.has(cls):
        aliases = {field.name: field.alias for field in attrs.fields(cls) if field.init}
        skipped = frozenset(field.name for field in attrs.fields(cls) if not field.init)
        return lambda fields: cls(**{aliases.get(k, k): v for k, v in fields.items() if k not in skipped})
    if dataclasses.is_dataclass(cls):
        skipped = frozenset(field.name for field in dataclasses.fields(cls) if not field.init)
        if skipped:
            return lambda fields: cls(**{k: v for k, v in fields.items() if k not in skipped})
    return lambda fields: cls(**fields)


_JSON_NAMES = {
    dict: "object",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _preview(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
