"""Values stored the way TickerQ .NET stores them: .NET's ``RedisCache`` layout.

TickerQ .NET writes the heartbeat, the node registry and cache entries through
``IDistributedCache`` backed by Microsoft.Extensions.Caching.StackExchangeRedis, whose
``RedisCache`` stores every value as a Redis hash of exactly three fields:

- ``absexp``: the absolute expiry in .NET ticks (100 ns units since 0001-01-01 UTC), or -1;
- ``sldexp``: the sliding expiration as a tick count (a duration), or -1;
- ``data``: the value's bytes;

with the key's TTL set to the smaller of the time left to ``absexp`` and ``sldexp``, in
whole seconds. A reader sends ``HMGET key absexp sldexp data`` and, when ``sldexp`` is set,
renews the TTL. tickerq writes and reads the same layout (in Lua: ``lua/entry_lib.lua``),
so a Python node and a .NET node can share one Redis. Ticks exceed 2^53, so they travel as
exact decimal strings, never through a float.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = [
    "ABSOLUTE",
    "DATA",
    "FIELDS",
    "NOT_SET",
    "SLIDING",
    "TICKS_AT_UNIX_EPOCH",
    "duration_ticks",
    "sliding_renewal_ms",
    "ticks_to_unix_ms",
    "unix_ns_to_ticks",
]

ABSOLUTE, SLIDING, DATA = "absexp", "sldexp", "data"
#: The fields in the order a RedisCache reader asks for them.
FIELDS = (ABSOLUTE, SLIDING, DATA)
#: What RedisCache writes for an expiry that is not set.
NOT_SET = b"-1"
#: .NET ticks at 1970-01-01 UTC.
TICKS_AT_UNIX_EPOCH = 621_355_968_000_000_000


def duration_ticks(duration: timedelta) -> str:
    """A duration as an exact tick count (``TimeSpan.Ticks``), as a decimal string."""
    return str((duration // timedelta(microseconds=1)) * 10)


def unix_ns_to_ticks(unix_ns: int) -> int:
    """Unix time in nanoseconds as .NET ticks (``DateTimeOffset.UtcTicks``)."""
    return TICKS_AT_UNIX_EPOCH + unix_ns // 100


def ticks_to_unix_ms(ticks: int | bytes | str) -> int:
    """.NET ticks as unix milliseconds."""
    return (int(ticks) - TICKS_AT_UNIX_EPOCH) // 10_000


def sliding_renewal_ms(absexp: bytes | None, sldexp: bytes | None, now_ms: int) -> int | None:
    """The TTL a RedisCache reader sets after reading an entry: the smaller of ``sldexp`` and
    the time left to ``absexp``, in ms; None when the entry has no sliding expiration (or
    the fields are not tick counts) or the time is up."""
    if sldexp is None or sldexp == NOT_SET:
        return None
    try:
        window_ms = int(sldexp) // 10_000
        if absexp is not None and absexp != NOT_SET:
            window_ms = min(window_ms, ticks_to_unix_ms(absexp) - now_ms)
    except ValueError:
        return None
    return window_ms if window_ms > 0 else None
