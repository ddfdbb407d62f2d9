"""Options that ``add_tickerq(lambda options: ...)`` callbacks fill in.

Each option is validated (and converted) when it is assigned, so a bad value
fails on the line that set it, with a message naming the field, the value and
what was expected; an attribute that is no option is refused too, naming the
closest one. ``add_tickerq`` freezes a copy: later changes to the user's object do
not reach a running container, and the frozen copy refuses changes.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar, cast

import attrs
import redis

from tickerq._redis.connection_string import ConnectionSettings, mask_configuration, parse_configuration
from tickerq.durations import to_timedelta
from tickerq.election.election_timings import (
    DEFAULT_LEASE,
    DEFAULT_RENEW_DEADLINE,
    DEFAULT_RETRY_PERIOD,
    check_timings,
)
from tickerq.errors import ConfigurationError
from tickerq.scheduler.cron import resolve_time_zone

__all__ = ["RedisOptions", "SchedulerOptions", "TickerQOptions"]

T = TypeVar("T")
C = TypeVar("C", bound=type)


def _refuse_when_frozen(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> Any:
    if getattr(instance, "_frozen", False):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} cannot be changed after add_tickerq() "
            "has built the container: configure it inside the add_tickerq callback"
        )
    return value


_ON_SETATTR: list[Callable[[Any, attrs.Attribute[Any], Any], Any]] = [
    _refuse_when_frozen,
    attrs.setters.convert,
    attrs.setters.validate,
]


def _duration(value: object, field: attrs.Attribute[Any]) -> timedelta:
    return to_timedelta(value, field=field.name)


def _grace(value: object, field: attrs.Attribute[Any]) -> timedelta:
    return to_timedelta(value, field=field.name, allow_zero=True)


def _duration_field(default: timedelta, *, allow_zero: bool = False) -> Any:
    return attrs.field(
        default=default, converter=attrs.Converter(_grace if allow_zero else _duration, takes_field=True)
    )


def _optional_grace(value: object, field: attrs.Attribute[Any]) -> timedelta | None:
    return None if value is None else to_timedelta(value, field=field.name, allow_zero=True)


def _optional_grace_field() -> Any:
    return attrs.field(default=None, converter=attrs.Converter(_optional_grace, takes_field=True))


def _one_of(*allowed: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
        if value not in allowed:
            raise ConfigurationError(
                f"{field.name}={value!r} is not allowed: expected one of {', '.join(map(repr, allowed))}"
            )

    return check


def _int_at_least(minimum: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigurationError(
                f"{field.name}={value!r} is not allowed: expected an integer >= {minimum}"
            )

    return check


def _bool(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{field.name}={value!r} is not allowed: expected True or False")


def _identifier(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ConfigurationError(
            f"{field.name}={value!r} is not allowed: expected a non-empty string without spaces "
            "or control characters"
        )


def _configuration(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{field.name} of type {type(value).__name__} is not allowed: expected a connection string"
        )
    parse_configuration(value)  # raises ConfigurationError naming the bad part, password masked


def _client(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, redis.Redis):
        raise ConfigurationError(
            f"{field.name}={type(value).__name__} instance is not allowed: "
            "expected a redis.Redis client or None"
        )


def _time_zone(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    resolve_time_zone(value, field=field.name)


def _callable_or_none(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{field.name}={value!r} is not allowed: expected a callable or None")


#: What the scheduler does with cron occurrences missed by more than the threshold.
MISSED_OCCURRENCE_POLICIES = ("run_once", "skip")


def _missed_policy(_instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    if value not in MISSED_OCCURRENCE_POLICIES:
        raise ConfigurationError(
            f"{field.name}={value!r} is not allowed: expected one of "
            + ", ".join(map(repr, MISSED_OCCURRENCE_POLICIES))
        )


def _masked(value: str | None) -> str:
    return repr(None) if value is None else repr(mask_configuration(value))


def _public_fields(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in attrs.fields(cls) if not field.name.startswith("_"))


def _unknown_option(owner: str, name: str, names: Iterable[str]) -> ConfigurationError:
    """The error for an option name that does not exist, suggesting the closest one."""
    # Compared without case or underscores, so .NET spellings ("NodeHeartbeatInterval") match too.
    by_key = {option.lower().replace("_", ""): option for option in names}
    close = difflib.get_close_matches(name.lower().replace("_", ""), list(by_key), n=1)
    hint = f"did you mean {by_key[close[0]]!r}? " if close else ""
    return ConfigurationError(
        f"{owner} has no option {name!r}: {hint}expected one of {', '.join(sorted(by_key.values()))}"
    )


def _refuse_unknown_attributes(cls: C) -> C:
    """Make assigning an attribute that is no option raise ConfigurationError.

    Applied after attrs built the class, around the ``__setattr__`` attrs made (which
    converts and validates), so a misspelt option in an ``add_tickerq`` callback fails
    on its line as the keyword form does. Private state is set with
    ``object.__setattr__`` (as attrs' ``__init__`` does when a class has hooks).
    """
    names = frozenset(_public_fields(cls))
    assign = cast("Callable[[object, str, object], None]", cls.__setattr__)

    def setattr_known(self: object, name: str, value: object) -> None:
        if name not in names:
            raise _unknown_option(type(self).__name__, name, names)
        assign(self, name, value)

    cls.__setattr__ = setattr_known  # type: ignore[assignment]
    return cls


class _Options:
    """Shared behaviour: keyword updates with clear errors, and freezing."""

    _frozen: bool

    def update(self, **fields: Any) -> None:
        """Assign several fields at once, each validated, then check them together.

        All or nothing: when one fails, the fields keep the values they had.

        Raises:
            ConfigurationError: A field does not exist, its value is invalid, or
                the values do not fit together.
        """
        names = _public_fields(type(self))
        for name in fields:
            if name not in names:
                raise _unknown_option(type(self).__name__, name, names)
        # Every field, private bookkeeping too (which timings were assigned).
        before = {field.name: getattr(self, field.name) for field in attrs.fields(type(self))}  # type: ignore[arg-type]
        try:
            for name, value in fields.items():
                setattr(self, name, value)
            self.check()
        except ConfigurationError:
            for name, value in before.items():
                object.__setattr__(self, name, value)  # values that were valid: no hooks needed
            raise

    def check(self) -> None:
        """Check that the fields fit together (each is validated on assignment).

        Raises:
            ConfigurationError: They do not.
        """

    def frozen_copy(self: T) -> T:
        """A copy that refuses further changes (what the container keeps)."""
        copy = attrs.evolve(self)  # type: ignore[misc]
        object.__setattr__(copy, "_frozen", True)
        return copy


@_refuse_unknown_attributes
@attrs.define(kw_only=True, on_setattr=_ON_SETATTR)
class RedisOptions(_Options):
    """How tickerq reaches Redis and how often a node proves it is alive.

    Attributes:
        configuration: Connection string: ``"localhost:6379"``,
            ``"host:6379,password=x,ssl=true"``, ``"s1:26379,s2:26379,serviceName=m"``
            (Sentinel), ``redis://``, ``rediss://`` or ``unix://`` URLs. Options
            given in the string (``connectTimeout`` ...) win over the fields below.
        client: An existing ``redis.Redis`` to use instead; tickerq never closes it.
        instance_name: Prefix of every key (``"{tickerq}:"`` keeps all keys in one
            Redis Cluster slot).
        node_heartbeat_interval: How often a node writes its heartbeat.
        node_heartbeat_grace: Added to the interval to give the heartbeat's TTL.
        connect_retry: Retries of a failed connection or command (redis-py backoff).
        connect_timeout: Timeout of one connection attempt.
        sync_timeout: Timeout of one command's reply.
        abort_on_connect_fail: Raise from ``init_resources()`` when Redis cannot be
            reached; with False the node starts and connects when Redis comes up.
        max_connections: Size of the blocking connection pool.
        pool_timeout: How long a thread waits for a free pooled connection.
        outage_retry_interval: How often background loops retry during an outage.
        foreign_dead_node_grace: How long a dead node that is not a tickerq node (a TickerQ
            .NET node sharing the registry) stays registered, for the .NET survivors to
            release its work and remove it, before a tickerq node removes it. ``None``
            (default): 10 heartbeat TTLs.
        on_duplicate_node: What a starting node does when a live heartbeat under its
            node identifier belongs to another process: ``"warn"`` (log a warning, the
            default) or ``"refuse"`` (``init_resources()`` raises ``ConfigurationError``).
    """

    configuration: str | None = attrs.field(default=None, validator=_configuration, repr=_masked)
    client: redis.Redis | None = attrs.field(default=None, validator=_client, repr=lambda c: type(c).__name__)
    instance_name: str = attrs.field(default="tickerq:", validator=_identifier)
    node_heartbeat_interval: timedelta = _duration_field(timedelta(minutes=1))
    node_heartbeat_grace: timedelta = _duration_field(timedelta(seconds=20), allow_zero=True)
    connect_retry: int = attrs.field(default=3, validator=_int_at_least(0))
    connect_timeout: timedelta = _duration_field(timedelta(seconds=5))
    sync_timeout: timedelta = _duration_field(timedelta(seconds=5))
    abort_on_connect_fail: bool = attrs.field(default=True, validator=_bool)
    max_connections: int = attrs.field(default=50, validator=_int_at_least(1))
    pool_timeout: timedelta = _duration_field(timedelta(seconds=5))
    outage_retry_interval: timedelta = _duration_field(timedelta(seconds=5))
    foreign_dead_node_grace: timedelta | None = _optional_grace_field()
    on_duplicate_node: str = attrs.field(default="warn", validator=_one_of("warn", "refuse"))
    _frozen: bool = attrs.field(default=False, init=False, repr=False, eq=False)

    @property
    def connection_settings(self) -> ConnectionSettings | None:
        """``configuration`` parsed (once: the parse that validated it is reused), or None."""
        return None if self.configuration is None else parse_configuration(self.configuration)

    @property
    def heartbeat_ttl(self) -> timedelta:
        """The heartbeat key's TTL: interval + grace."""
        return self.node_heartbeat_interval + self.node_heartbeat_grace

    @property
    def foreign_grace(self) -> timedelta:
        """``foreign_dead_node_grace``, or 10 heartbeat TTLs when it is None."""
        if self.foreign_dead_node_grace is not None:
            return self.foreign_dead_node_grace
        return self.heartbeat_ttl * 10


_TIMINGS = {
    "leader_lease": "lease",
    "leader_renew_deadline": "renew_deadline",
    "leader_retry_period": "retry_period",
}


def _check_assigned_timing(instance: SchedulerOptions, attribute: attrs.Attribute[Any], value: Any) -> Any:
    """Check a timing against the other timings the user has assigned (not the defaults).

    So ``leader_lease = 5`` then ``leader_renew_deadline = 10`` fails on the second
    line, while timings that fit together are accepted in any order. A timing that
    does not fit a default is caught by :meth:`SchedulerOptions.check`.
    """
    assigned = instance._assigned_timings | {attribute.name}
    known = {_TIMINGS[n]: value if n == attribute.name else getattr(instance, n) for n in assigned}
    check_timings(**known, prefix="leader_")
    object.__setattr__(instance, "_assigned_timings", assigned)
    return value


def _timing_field(default: timedelta) -> Any:
    return attrs.field(
        default=default,
        converter=attrs.Converter(_duration, takes_field=True),
        on_setattr=[*_ON_SETATTR, _check_assigned_timing],
    )


@_refuse_unknown_attributes
@attrs.define(kw_only=True, on_setattr=_ON_SETATTR)
class SchedulerOptions(_Options):
    """Scheduler-wide options.

    Attributes:
        node_identifier: This node's unique name (default: the host name). Give
            every process its own, e.g. ``f"{socket.gethostname()}-{os.getpid()}"``
            when one host runs several workers.
        leader_election: When set, ``init_resources()`` starts a leader election
            of this name for the node (``container.leader_election()``), for
            cluster-wide chores that one node at a time must do.
        leader_lease: The election's lease (Kubernetes default 15 s).
        leader_renew_deadline: The leader demotes itself when it could not
            renew for this long (10 s); must be shorter than the lease.
        leader_retry_period: Time between campaign/renew attempts (2 s); the
            deadline must exceed 1.2 x this. The three timings are checked
            against each other as soon as two are assigned, and against the
            defaults when ``configure_scheduler`` returns.
        time_zone: IANA zone of crons that name none (``"UTC"``).
        max_concurrency: Jobs this node runs at once, all functions together
            (default: the CPU count).
        producer_only: The node schedules, cancels and queries but never runs jobs.
        shutdown_timeout: How long ``shutdown_resources()`` lets running jobs
            finish before it sets ``context.cancelled`` and hands them back.
        exception_handler: ``handler(record, exception)``, called on the worker
            thread when an attempt raises (``record`` is a ``TickerRecord``).
        missed_occurrence_policy: ``"run_once"`` runs the latest cron
            occurrence missed by more than the threshold (downtime), ``"skip"``
            none; the others are counted as skipped and logged once.
        missed_occurrence_threshold: How late an occurrence may start and still
            run normally (30 s).
        job_retention: How long finished jobs are kept (7 days).
        poll_interval: The scheduler's safety poll, in case a wake-up is lost (5 s).
    """

    node_identifier: str = attrs.field(factory=socket.gethostname, validator=_identifier)
    leader_election: str | None = attrs.field(default=None, validator=attrs.validators.optional(_identifier))
    leader_lease: timedelta = _timing_field(DEFAULT_LEASE)
    leader_renew_deadline: timedelta = _timing_field(DEFAULT_RENEW_DEADLINE)
    leader_retry_period: timedelta = _timing_field(DEFAULT_RETRY_PERIOD)
    time_zone: str = attrs.field(default="UTC", validator=_time_zone)
    max_concurrency: int = attrs.field(factory=lambda: os.cpu_count() or 1, validator=_int_at_least(1))
    producer_only: bool = attrs.field(default=False, validator=_bool)
    shutdown_timeout: timedelta = _duration_field(timedelta(seconds=30), allow_zero=True)
    exception_handler: Callable[[Any, BaseException], object] | None = attrs.field(
        default=None, validator=_callable_or_none, eq=False
    )
    missed_occurrence_policy: str = attrs.field(default="run_once", validator=_missed_policy)
    missed_occurrence_threshold: timedelta = _duration_field(timedelta(seconds=30))
    job_retention: timedelta = _duration_field(timedelta(days=7))
    poll_interval: timedelta = _duration_field(timedelta(seconds=5))
    _frozen: bool = attrs.field(default=False, init=False, repr=False, eq=False)
    _assigned_timings: frozenset[str] = attrs.field(factory=frozenset, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        self.check()  # timings given to the constructor (or copied by frozen_copy)

    def check(self) -> None:
        """Check the election timings: ``lease > renew_deadline > 1.2 x retry_period``.

        Raises:
            ConfigurationError: Naming the fields and their values.
        """
        check_timings(
            lease=self.leader_lease,
            renew_deadline=self.leader_renew_deadline,
            retry_period=self.leader_retry_period,
            prefix="leader_",
        )


@_refuse_unknown_attributes
@attrs.define(kw_only=True)
class TickerQOptions:
    """The root object handed to the ``add_tickerq`` callback."""

    scheduler: SchedulerOptions = attrs.field(factory=SchedulerOptions)
    redis: RedisOptions | None = None

    def configure_scheduler(
        self, callback: Callable[[SchedulerOptions], object] | None = None, /, **fields: Any
    ) -> SchedulerOptions:
        """Set scheduler options by keyword, by callback, or both (keywords first).

        Returns:
            The scheduler options, for chaining.
        """
        self.scheduler.update(**fields)
        if callback is not None:
            callback(self.scheduler)
            self.scheduler.check()
        return self.scheduler

    def add_redis(
        self, callback: Callable[[RedisOptions], object] | None = None, /, **fields: Any
    ) -> RedisOptions:
        """Enable the Redis integration; set its options by keyword, callback, or both.

        Calling it again updates the same options.

        Returns:
            The Redis options, for chaining.
        """
        if self.redis is None:
            self.redis = RedisOptions()
        self.redis.update(**fields)
        if callback is not None:
            callback(self.redis)
            self.redis.check()
        return self.redis

    def frozen_copy(self) -> TickerQOptions:
        """Validate the whole and return a frozen copy for the container.

        Raises:
            ConfigurationError: Redis was added without a configuration or client,
                or the leader election's timings do not fit together.
        """
        self.scheduler.check()
        if self.redis is not None and self.redis.configuration is None and self.redis.client is None:
            raise ConfigurationError(
                "add_redis() was called without a connection: set configuration "
                '(e.g. "localhost:6379") or client (a redis.Redis)'
            )
        return TickerQOptions(
            scheduler=self.scheduler.frozen_copy(),
            redis=self.redis.frozen_copy() if self.redis is not None else None,
        )
