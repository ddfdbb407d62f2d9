"""Ticker functions: the ``@ticker_function`` decorator, its registry and the job context.

A node runs the functions of the registry it is given (the module-level
default registry, which the decorator fills, unless the container is given
another); the set is fixed when the node starts. Everything a decorator is
given is validated when it runs, so a typo fails at import, not at 3 a.m.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs

from tickerq.errors import ConfigurationError
from tickerq.scheduler.cron import normalize_expression, resolve_time_zone

__all__ = [
    "DEFAULT_REGISTRY",
    "FunctionRegistry",
    "TickerFunction",
    "TickerFunctionContext",
    "check_function_name",
    "check_retries",
    "ticker_function",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The longest function name: it is part of job ids and store keys.
_MAX_NAME = 200


def check_function_name(name: object) -> str:
    """A function name: a non-empty string without spaces, control characters or ``@``.

    Raises:
        ConfigurationError: Naming the value and what was expected.
    """
    if (
        not isinstance(name, str)
        or not name
        or len(name) > _MAX_NAME
        or "@" in name
        or any(ch.isspace() or not ch.isprintable() for ch in name)
    ):
        raise ConfigurationError(
            f"ticker function name {name!r} is not allowed: expected a non-empty string of at most "
            f"{_MAX_NAME} characters without spaces, control characters or '@'"
        )
    return name


def check_retries(retries: object, retry_intervals: object, *, function: str) -> tuple[int, tuple[int, ...]]:
    """Validate ``retries`` (extra attempts) and ``retry_intervals`` (whole seconds, the last repeats).

    Raises:
        ConfigurationError: Naming the function, the field and the value.
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigurationError(
            f"retries={retries!r} for ticker function {function!r} is not allowed: expected an integer >= 0"
        )
    if isinstance(retry_intervals, int | float) and not isinstance(retry_intervals, bool):
        retry_intervals = (retry_intervals,)
    if not isinstance(retry_intervals, Sequence) or isinstance(retry_intervals, str):
        raise ConfigurationError(
            f"retry_intervals={retry_intervals!r} for ticker function {function!r} is not allowed: "
            "expected a list of whole seconds"
        )
    intervals: list[int] = []
    for value in retry_intervals:
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or value != int(value):
            raise ConfigurationError(
                f"retry_intervals={retry_intervals!r} for ticker function {function!r} is not allowed: "
                f"{value!r} is not a whole number of seconds >= 0"
            )
        intervals.append(int(value))
    return retries, tuple(intervals)


def _positive_or_none(name: str, value: object, function: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(
            f"{name}={value!r} for ticker function {function!r} is not allowed: "
            "expected an integer >= 1 or None"
        )
    return value


@attrs.frozen(kw_only=True)
class TickerFunction:
    """A registered function and how it may run.

    Attributes:
        name: The name jobs refer to it by.
        fn: The callable, ``fn(context)``.
        cron: Its cron expression (normalised, 6 fields), if it has one in code.
        time_zone: The cron's IANA zone; None means the scheduler's.
        max_concurrency: At most this many at once on one node (None: the node's limit).
        cluster_concurrency: At most this many at once in the whole cluster.
        skip_if_running: A cron occurrence is SKIPPED while the previous one runs anywhere.
        retries: Default extra attempts after a failure.
        retry_intervals: Default seconds between attempts (the last one repeats).
        request_type: When set, the request is built as this class (dataclass,
            attrs class) instead of being left as decoded JSON.
    """

    name: str
    fn: Callable[[TickerFunctionContext], object] = attrs.field(eq=False)
    cron: str | None = None
    time_zone: str | None = None
    max_concurrency: int | None = None
    cluster_concurrency: int | None = None
    skip_if_running: bool = False
    retries: int = 0
    retry_intervals: tuple[int, ...] = ()
    request_type: type[Any] | None = None


class FunctionRegistry:
    """Ticker functions by name. Thread-safe; the decorator fills :data:`DEFAULT_REGISTRY`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._functions: dict[str, TickerFunction] = {}

    def add(self, function: TickerFunction) -> TickerFunction:
        """Register ``function``.

        Registering the same callable again (a module imported twice) replaces
        the entry; another callable under a taken name is refused.

        Raises:
            ConfigurationError: The name is taken by another callable.
        """
        with self._lock:
            existing = self._functions.get(function.name)
            if existing is not None and _identity(existing.fn) != _identity(function.fn):
                raise ConfigurationError(
                    f"ticker function {function.name!r} is already registered for "
                    f"{existing.fn.__module__}.{existing.fn.__qualname__}: names must be unique"
                )
            self._functions[function.name] = function
        return function

    def get(self, name: str) -> TickerFunction | None:
        """The function registered under ``name``, or None."""
        return self._functions.get(name)

    def name_of(self, function: object) -> str:
        """The name of a registered callable, or ``function`` itself when it is a name.

        Raises:
            ConfigurationError: ``function`` is neither a name nor a registered callable.
        """
        if isinstance(function, str):
            return check_function_name(function)
        for registered in self.snapshot().values():
            if registered.fn is function:
                return registered.name
        raise ConfigurationError(
            f"function={function!r} is not allowed: expected a ticker function name or a callable "
            "decorated with @ticker_function"
        )

    def snapshot(self) -> dict[str, TickerFunction]:
        """A copy of the registry (what a node fixes when it starts)."""
        with self._lock:
            return dict(self._functions)

    def __iter__(self) -> Iterator[TickerFunction]:
        return iter(self.snapshot().values())

    def __len__(self) -> int:
        return len(self._functions)

    def __repr__(self) -> str:
        return f"FunctionRegistry({sorted(self._functions)})"


def _identity(fn: Callable[..., Any]) -> tuple[str, str]:
    return (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn)))


#: The registry ``@ticker_function`` fills unless given another.
DEFAULT_REGISTRY = FunctionRegistry()


def ticker_function(
    name: str,
    *,
    cron: str | None = None,
    time_zone: str | None = None,
    max_concurrency: int | None = None,
    cluster_concurrency: int | None = None,
    skip_if_running: bool = False,
    retries: int = 0,
    retry_intervals: Sequence[int] = (),
    request_type: type[Any] | None = None,
    registry: FunctionRegistry | None = None,
) -> Callable[[F], F]:
    """Register a function the scheduler can run, by name.

    The function is called with a :class:`TickerFunctionContext` and is
    returned unchanged, so it can still be called directly.

    Args:
        name: The name jobs refer to it by (unique in the registry).
        cron: A cron expression (6 fields, seconds first; 5 fields mean
            seconds = 0) on which the scheduler runs it.
        time_zone: The cron's IANA time zone (default: ``SchedulerOptions.time_zone``).
        max_concurrency: At most this many at once on one node.
        cluster_concurrency: At most this many at once in the whole cluster.
        skip_if_running: Mark a cron occurrence SKIPPED while the previous one
            still runs anywhere.
        retries: Default extra attempts after a failure.
        retry_intervals: Default seconds between attempts (the last repeats).
        request_type: Build the request as this class (a dataclass or attrs class).
        registry: Where to register (default :data:`DEFAULT_REGISTRY`).

    Raises:
        ConfigurationError: A value is invalid (an invalid cron names the
            function and the expression), or the name is taken.
    """
    check_function_name(name)
    normalized = None if cron is None else normalize_expression(cron, function=name)
    if time_zone is not None:
        resolve_time_zone(time_zone, field=f"time_zone of ticker function {name!r}")
    max_concurrency = _positive_or_none("max_concurrency", max_concurrency, name)
    cluster_concurrency = _positive_or_none("cluster_concurrency", cluster_concurrency, name)
    if not isinstance(skip_if_running, bool):
        raise ConfigurationError(
            f"skip_if_running={skip_if_running!r} for ticker function {name!r} is not allowed: "
            "expected True or False"
        )
    retries, intervals = check_retries(retries, retry_intervals, function=name)
    if request_type is not None and not isinstance(request_type, type):
        raise ConfigurationError(
            f"request_type={request_type!r} for ticker function {name!r} is not allowed: expected a class"
        )
    target = DEFAULT_REGISTRY if registry is None else registry

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise ConfigurationError(f"@ticker_function({name!r}) decorates {fn!r}, which is not callable")
        target.add(
            TickerFunction(
                name=name,
                fn=fn,
                cron=normalized,
                time_zone=time_zone,
                max_concurrency=max_concurrency,
                cluster_concurrency=cluster_concurrency,
                skip_if_running=skip_if_running,
                retries=retries,
                retry_intervals=intervals,
                request_type=request_type,
            )
        )
        return fn

    return decorate


@attrs.frozen(kw_only=True)
class TickerFunctionContext:
    """What a running ticker function is given.

    Attributes:
        job_id: The job's id (a cron occurrence's is ``"{cron_id}@{ms}"``).
        function: The function's name.
        container: The tickerq container, for services (``container.redis_context()``).
        request: The decoded request (JSON value, or ``request_type`` instance), or None.
        retry_count: Failed attempts before this one.
        scheduled_for: When this attempt was due (aware, UTC); a cron
            occurrence's own time.
        is_rerun: The job was handed back mid-attempt (its node died or shut
            down) and runs again.
        node: The node running it.
        fence: The claim's fence, rising with every claim: pass it on to
            resources that should refuse a stale writer.
        cancelled: Set when the job is cancelled or the node shuts down; long
            jobs should check it and return.
        cron_id: The cron this occurrence belongs to, if any.
    """

    job_id: str
    function: str
    container: Any = attrs.field(repr=False)
    request: Any = attrs.field(repr=False)
    retry_count: int
    scheduled_for: datetime
    is_rerun: bool
    node: str
    fence: int
    cancelled: threading.Event = attrs.field(factory=threading.Event, repr=False)
    cron_id: str | None = None
