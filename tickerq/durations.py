"""Durations: ``timedelta`` in the public API, seconds accepted, milliseconds on the wire."""

from __future__ import annotations

import math
import threading
from datetime import timedelta

from tickerq.errors import ConfigurationError

__all__ = ["Duration", "to_milliseconds", "to_timedelta"]

#: The longest duration accepted: threads wait with Event.wait(), which refuses more.
_LONGEST = float(int(threading.TIMEOUT_MAX))

#: What the public API accepts wherever it takes a duration.
Duration = timedelta | int | float


def to_timedelta(value: object, *, field: str, positive: bool = True, allow_zero: bool = False) -> timedelta:
    """Convert ``value`` (a ``timedelta`` or a number of seconds) to a ``timedelta``.

    Args:
        value: The value given by the user.
        field: The option's name, used in the error message.
        positive: Reject negative values.
        allow_zero: Accept zero even when ``positive`` is set.

    Raises:
        ConfigurationError: Naming ``field``, the value and what was expected.
    """
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > _LONGEST:
            raise _too_long(field, value)
        result = timedelta(seconds=value)
    else:
        raise ConfigurationError(
            f"{field}={value!r} ({type(value).__name__}) is not a duration: "
            "expected a datetime.timedelta or a number of seconds"
        )
    if result.total_seconds() > _LONGEST:
        raise _too_long(field, value)
    if positive and (result < timedelta(0) or (result == timedelta(0) and not allow_zero)):
        expected = "zero or more" if allow_zero else "greater than zero"
        raise ConfigurationError(f"{field}={value!r} is not allowed: expected a duration {expected}")
    return result


def _too_long(field: str, value: object) -> ConfigurationError:
    return ConfigurationError(
        f"{field}={value!r} is not allowed: expected a finite duration of at most {_LONGEST:g} seconds"
    )


def to_milliseconds(value: timedelta) -> int:
    """Whole milliseconds for the wire, rounded up so a short TTL never becomes 0."""
    return max(1, math.ceil(value.total_seconds() * 1000))
