"""Cron math: 6-field expressions (seconds first) in an IANA time zone.

Expressions are parsed by croniter. Occurrences are computed on the zone's
wall clock and then mapped to instants, which settles daylight-saving time:

- an occurrence whose wall-clock time does not exist (the spring-forward gap)
  runs at the next valid instant, the end of the gap (several occurrences
  falling into one gap run once there);
- an occurrence whose wall-clock time happens twice (the autumn fold) runs
  once, at its first instant.

Times cross this module as integer Unix milliseconds; occurrences fall on
whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterError, croniter

from tickerq.errors import ConfigurationError

__all__ = ["CronSchedule", "normalize_expression", "resolve_time_zone"]

#: The aliases croniter knows, in the 6-field form.
_ALIASES = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

#: How many wall-clock candidates one step may look at before giving up: a
#: per-second cron queried from the second pass of a fold skips up to an hour
#: of candidates (3,600) that already ran in the first pass.
_MAX_CANDIDATES = 100_000


def normalize_expression(expression: object, *, function: str) -> str:
    """Validate a cron expression and return its 6-field form, seconds first.

    Five fields are accepted (seconds = 0), and the aliases ``@hourly``,
    ``@daily``, ``@weekly``, ``@monthly`` and ``@yearly``.

    Args:
        expression: The expression given by the user.
        function: The ticker function it belongs to, for the error message.

    Raises:
        ConfigurationError: Naming the function and the expression, when it is
            not a valid cron expression or never occurs.
    """
    if not isinstance(expression, str):
        raise ConfigurationError(
            f"cron={expression!r} of ticker function {function!r} is not allowed: "
            "expected a cron expression string such as '0 */5 * * * *'"
        )
    fields = expression.split()
    if len(fields) == 1 and fields[0].lower() in _ALIASES:
        return _ALIASES[fields[0].lower()]
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise ConfigurationError(
            f"cron={expression!r} of ticker function {function!r} has {len(fields)} fields: expected 6 "
            "(second minute hour day-of-month month day-of-week) or 5 (seconds = 0)"
        )
    normalized = " ".join(fields)
    try:
        croniter(normalized, datetime(2000, 1, 1), second_at_beginning=True).get_next(datetime)
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"cron={expression!r} of ticker function {function!r} is not a valid cron expression: {exc}"
        ) from exc
    return normalized


def resolve_time_zone(name: object, *, field: str = "time_zone") -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``"UTC"``, ``"Europe/Berlin"``).

    Raises:
        ConfigurationError: Naming ``field`` and the value, when it is not a known zone.
    """
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise ConfigurationError(
        f"{field}={name!r} is not allowed: expected an IANA time zone name such as 'UTC' or 'Europe/Berlin'"
    )


@attrs.frozen
class CronSchedule:
    """A normalised expression in a zone; computes its occurrences as instants.

    Build it with :meth:`parse` (validates) or directly from a stored,
    already normalised expression.
    """

    expression: str
    zone: ZoneInfo

    @classmethod
    def parse(cls, expression: object, time_zone: object = "UTC", *, function: str) -> CronSchedule:
        """Validate both parts; see :func:`normalize_expression` and :func:`resolve_time_zone`."""
        return cls(normalize_expression(expression, function=function), resolve_time_zone(time_zone))

    def next_after(self, after_ms: int) -> int:
        """The first occurrence strictly after ``after_ms`` (Unix ms)."""
        return next(self._after(after_ms))

    def between(self, after_ms: int, until_ms: int, limit: int) -> list[int]:
        """Occurrences in ``(after_ms, until_ms]``, at most ``limit`` of them, in order."""
        found: list[int] = []
        for instant in self._after(after_ms):
            if instant > until_ms or len(found) >= limit:
                break
            found.append(instant)
        return found

    def count_between(self, after_ms: int, until_ms: int, cap: int) -> int:
        """How many occurrences fall in ``(after_ms, until_ms]``, counting no further than ``cap``."""
        return len(self.between(after_ms, until_ms, cap))

    def last_between(self, after_ms: int, until_ms: int) -> int | None:
        """The latest occurrence in ``(after_ms, until_ms]``, or None."""
        zone = self.zone
        start = datetime.fromtimestamp(until_ms // 1000, zone).replace(tzinfo=None, fold=0)
        candidates = croniter(self.expression, start + timedelta(seconds=1), second_at_beginning=True)
        for _ in range(_MAX_CANDIDATES):
            instant = _instant(candidates.get_prev(datetime), zone)
            if instant <= after_ms:
                return None
            if instant <= until_ms:  # else a gap mapped it past the end: look further back
                return instant
        return None

    def _after(self, after_ms: int) -> Iterator[int]:
        """Strictly increasing occurrences after ``after_ms``, for ever."""
        zone = self.zone
        local = datetime.fromtimestamp(after_ms // 1000, zone).replace(tzinfo=None, fold=0)
        candidates = croniter(self.expression, local, second_at_beginning=True)
        last = after_ms
        misses = 0
        while True:
            instant = _instant(candidates.get_next(datetime), zone)
            if instant > last:
                misses = 0
                last = instant
                yield instant
            else:  # inside a gap already served, or a fold's second pass
                misses += 1
                if misses > _MAX_CANDIDATES:
                    raise ConfigurationError(f"cron {self.expression!r} in {zone.key} has no next occurrence")


def _instant(naive: datetime, zone: ZoneInfo) -> int:
    """The instant (ms) of a wall-clock time: its first one in a fold, the gap's end in a gap."""
    aware = naive.replace(tzinfo=zone, fold=0)
    seconds = int(aware.timestamp())
    if datetime.fromtimestamp(seconds, zone).replace(tzinfo=None) == naive:
        return seconds * 1000
    # A gap: fold=0 reads it with the offset before the jump, fold=1 with the one
    # after; the transition lies between the two readings.
    low, high = sorted((int(aware.replace(fold=1).timestamp()), seconds))
    after = _offset(high, zone)
    while low < high:
        middle = (low + high) // 2
        if _offset(middle, zone) == after:
            high = middle
        else:
            low = middle + 1
    return high * 1000


def _offset(seconds: int, zone: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(seconds, zone).utcoffset()
