"""Options: defaults, validation on assignment, callbacks and keywords, freezing, secrets."""

from __future__ import annotations

import inspect
import re
import socket
from datetime import timedelta

import pytest
import redis

from tickerq import LeaderElection, RedisContext, add_tickerq
from tickerq.election.election_timings import DEFAULT_LEASE, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD
from tickerq.errors import ConfigurationError, TickerQError
from tickerq.options import RedisOptions, SchedulerOptions, TickerQOptions


def test_redis_defaults_match_the_spec() -> None:
    """Defaults: instance "tickerq:", 1 min interval, 20 s grace, 3 retries, 5 s timeouts, abort on fail."""
    options = RedisOptions()
    assert "tickerq:" == options.instance_name
    assert timedelta(minutes=1) == options.node_heartbeat_interval
    assert timedelta(seconds=20) == options.node_heartbeat_grace
    assert timedelta(seconds=80) == options.heartbeat_ttl
    assert 3 == options.connect_retry
    assert timedelta(seconds=5) == options.connect_timeout == options.sync_timeout
    assert options.abort_on_connect_fail is True
    assert options.client is None


def test_node_identifier_defaults_to_host_name() -> None:
    """SchedulerOptions.node_identifier defaults to socket.gethostname()."""
    assert socket.gethostname() == SchedulerOptions().node_identifier


@pytest.mark.parametrize("value", [30, 0.5, timedelta(milliseconds=250)])
def test_durations_accept_seconds_and_timedelta(value: object) -> None:
    """A duration option accepts a timedelta or a number of seconds (sub-second too)."""
    options = RedisOptions()
    options.node_heartbeat_interval = value  # type: ignore[assignment]
    expected = value if isinstance(value, timedelta) else timedelta(seconds=value)  # type: ignore[arg-type]
    assert expected == options.node_heartbeat_interval


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("node_heartbeat_interval", 0, "greater than zero"),
        ("node_heartbeat_interval", -1, "greater than zero"),
        ("node_heartbeat_interval", "1m", "timedelta or a number of seconds"),
        ("node_heartbeat_grace", -0.5, "zero or more"),
        ("connect_timeout", True, "timedelta or a number of seconds"),
        ("connect_retry", -1, "integer >= 0"),
        ("connect_retry", 1.5, "integer >= 0"),
        ("abort_on_connect_fail", "yes", "True or False"),
        ("instance_name", "", "non-empty string"),
        ("instance_name", "has space:", "without spaces"),
        ("max_connections", 0, "integer >= 1"),
        ("client", "localhost", "redis.Redis client"),
        ("configuration", "localhost:notaport", "notaport"),
    ],
)
def test_bad_values_fail_at_assignment_naming_field_and_value(
    field: str, value: object, expected: str
) -> None:
    """A bad value raises ConfigurationError (a ValueError) naming the field, value and expectation."""
    options = RedisOptions()
    with pytest.raises(ConfigurationError) as caught:
        setattr(options, field, value)
    message = str(caught.value)
    assert expected in message
    assert isinstance(caught.value, TickerQError)
    assert isinstance(caught.value, ValueError)
    if field != "configuration":
        assert field in message


def test_grace_may_be_zero() -> None:
    """A zero grace is allowed (TTL = interval)."""
    options = RedisOptions()
    options.node_heartbeat_grace = 0
    assert timedelta(0) == options.node_heartbeat_grace


def test_add_redis_accepts_callback_keywords_or_both() -> None:
    """add_redis applies keywords, then the callback; calling it again updates the same options."""
    options = TickerQOptions()

    def configure(r: RedisOptions) -> None:
        r.instance_name = "app:"

    options.add_redis(configure, configuration="localhost:6379", connect_retry=1)
    options.add_redis(node_heartbeat_interval=10)
    assert options.redis is not None
    assert ("localhost:6379", "app:", 1, timedelta(seconds=10)) == (
        options.redis.configuration,
        options.redis.instance_name,
        options.redis.connect_retry,
        options.redis.node_heartbeat_interval,
    )


def test_configure_scheduler_accepts_callback_or_keywords() -> None:
    """configure_scheduler sets node_identifier by keyword or callback."""
    options = TickerQOptions()
    options.configure_scheduler(node_identifier="web-01")
    assert "web-01" == options.scheduler.node_identifier
    options.configure_scheduler(lambda s: setattr(s, "node_identifier", "web-02"))
    assert "web-02" == options.scheduler.node_identifier


def test_unknown_keyword_is_named() -> None:
    """An unknown option name raises ConfigurationError listing it."""
    with pytest.raises(ConfigurationError, match="no option 'heartbeat'"):
        TickerQOptions().add_redis(heartbeat=5)


def test_add_redis_without_connection_fails_when_frozen() -> None:
    """add_redis without configuration or client is refused when the container is built."""
    options = TickerQOptions()
    options.add_redis(instance_name="x:")
    with pytest.raises(ConfigurationError, match="without a connection"):
        options.frozen_copy()


def test_frozen_copy_refuses_changes_and_is_independent() -> None:
    """The frozen copy refuses assignment; later changes to the original do not reach it."""
    options = TickerQOptions()
    options.add_redis(configuration="localhost:6379")
    frozen = options.frozen_copy()
    assert frozen.redis is not None
    with pytest.raises(ConfigurationError, match="cannot be changed after add_tickerq"):
        frozen.redis.instance_name = "other:"
    options.redis.instance_name = "changed:"  # type: ignore[union-attr]
    assert "tickerq:" == frozen.redis.instance_name


def test_password_never_in_repr_or_errors() -> None:
    """The password in a configuration string is masked in repr and never echoed by errors."""
    options = RedisOptions()
    options.configuration = "localhost:6379,password=hunter2secret"
    assert "hunter2secret" not in repr(options)
    assert "hunter2secret" not in str(TickerQOptions(redis=options))
    with pytest.raises(ConfigurationError) as caught:
        options.configuration = "localhost:6379,password=hunter2secret,bogus=1"
    assert "hunter2secret" not in str(caught.value)
    assert "bogus" in str(caught.value)


def test_client_option_takes_a_redis_client() -> None:
    """An existing redis.Redis can be given instead of a connection string."""
    client = redis.Redis()
    options = TickerQOptions()
    options.add_redis(client=client)
    assert options.frozen_copy().redis.client is client  # type: ignore[union-attr]


def test_election_timings_are_checked_when_configured() -> None:
    """An election whose renew deadline is not shorter than its lease is refused by configure_scheduler."""
    options = TickerQOptions()
    options.add_redis(configuration="localhost:6379")
    with pytest.raises(ConfigurationError, match="renew_deadline"):
        options.configure_scheduler(leader_election="chores", leader_lease=5, leader_renew_deadline=5)


# --- unknown attributes ---------------------------------------------------------------


def test_misspelt_option_in_the_callback_is_refused_with_a_suggestion() -> None:
    """r.node_heartbeat_intervall = 5 in the callback raises ConfigurationError suggesting the right name."""

    def configure(r: RedisOptions) -> None:
        r.configuration = "localhost:6379"
        r.node_heartbeat_intervall = 5  # type: ignore[attr-defined]

    with pytest.raises(ConfigurationError) as caught:
        TickerQOptions().add_redis(configure)
    message = str(caught.value)
    assert "'node_heartbeat_intervall'" in message
    assert "did you mean 'node_heartbeat_interval'?" in message


@pytest.mark.parametrize(
    ("options", "name", "suggestion"),
    [
        (RedisOptions(), "Configuration", "configuration"),
        (RedisOptions(), "NodeHeartbeatInterval", "node_heartbeat_interval"),
        (RedisOptions(), "abort_on_connect_failure", "abort_on_connect_fail"),
        (SchedulerOptions(), "node_identifer", "node_identifier"),
        (SchedulerOptions(), "leader_renewal_deadline", "leader_renew_deadline"),
        (TickerQOptions(), "schedular", "scheduler"),
    ],
)
def test_unknown_attribute_names_the_closest_option(options: object, name: str, suggestion: str) -> None:
    """Assigning an attribute that is no option raises ConfigurationError naming it and the closest option."""
    with pytest.raises(ConfigurationError) as caught:
        setattr(options, name, 1)
    message = str(caught.value)
    assert f"{type(options).__name__} has no option {name!r}" in message
    assert f"did you mean {suggestion!r}?" in message
    assert not hasattr(options, name)


@pytest.mark.parametrize("name", ["colour", "_frozen", "__dict__"])
def test_unknown_attribute_without_a_close_match_lists_the_options(name: str) -> None:
    """An attribute unlike any option (private state included) is refused, listing the options."""
    options = RedisOptions()
    with pytest.raises(ConfigurationError, match=r"expected one of .*node_heartbeat_interval") as caught:
        setattr(options, name, True)
    assert "did you mean" not in str(caught.value)
    assert options.frozen_copy().configuration is None  # still usable, and not frozen by the attempt
    options.configuration = "localhost:6379"


def test_misspelt_keyword_suggests_the_closest_option() -> None:
    """The keyword form also suggests the closest option name."""
    with pytest.raises(ConfigurationError, match="did you mean 'node_heartbeat_interval'"):
        TickerQOptions().add_redis(configuration="localhost:6379", node_heartbeat_intervall=5)


# --- election timings -----------------------------------------------------------------


def test_inconsistent_timings_are_refused_at_the_assignment() -> None:
    """In the callback, leader_lease=5 then leader_renew_deadline=10 fails on the second line."""
    assigned: list[str] = []

    def configure(s: SchedulerOptions) -> None:
        s.leader_lease = 5  # type: ignore[assignment]
        assigned.append("leader_lease")
        s.leader_renew_deadline = 10  # type: ignore[assignment]
        assigned.append("leader_renew_deadline")

    with pytest.raises(ConfigurationError) as caught:
        TickerQOptions().configure_scheduler(configure)
    assert ["leader_lease"] == assigned
    assert "leader_lease=5 s must be longer than leader_renew_deadline=10 s" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"leader_lease": 5, "leader_renew_deadline": 10}, "leader_renew_deadline=10 s"),
        ({"leader_renew_deadline": 2, "leader_retry_period": 2}, "1.2 x leader_retry_period=2 s"),
        ({"leader_lease": 3, "leader_retry_period": 2.5}, "leader_lease=3 s"),
        ({"leader_lease": 5}, "leader_renew_deadline=10 s"),  # against the default deadline
        ({"leader_retry_period": 9}, "leader_retry_period=9 s"),
    ],
)
def test_inconsistent_timings_by_keyword_are_refused_and_change_nothing(
    fields: dict[str, object], expected: str
) -> None:
    """configure_scheduler(...) with timings that cannot fit raises at once and changes no option."""
    options = TickerQOptions()
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        options.configure_scheduler(**fields)
    assert SchedulerOptions() == options.scheduler


def test_refused_keywords_do_not_count_as_assigned_timings() -> None:
    """A refused configure_scheduler(leader_lease=...) leaves no lease to constrain later assignments."""
    options = TickerQOptions()
    with pytest.raises(ConfigurationError):
        options.configure_scheduler(leader_lease=15, leader_renew_deadline=20)

    def configure(s: SchedulerOptions) -> None:
        s.leader_retry_period = 13  # type: ignore[assignment]  # fits a lease above 15.6 s, set next
        s.leader_lease = 20  # type: ignore[assignment]
        s.leader_renew_deadline = 16  # type: ignore[assignment]

    scheduler = options.configure_scheduler(configure)
    assert timedelta(seconds=20) == scheduler.leader_lease


def test_timing_against_a_default_is_refused_when_the_callback_returns() -> None:
    """leader_lease=5 in a callback (deadline left at 10 s) is refused when configure_scheduler returns."""
    options = TickerQOptions()
    with pytest.raises(ConfigurationError, match="leader_lease=5 s must be longer"):
        options.configure_scheduler(lambda s: setattr(s, "leader_lease", 5))


def test_timings_set_outside_configure_are_refused_by_add_tickerq() -> None:
    """Timings set on options.scheduler directly are refused by add_tickerq, with no election too."""

    def configure(options: TickerQOptions) -> None:
        options.add_redis(configuration="localhost:6379")
        options.scheduler.leader_renew_deadline = 20  # type: ignore[assignment]

    expected = "leader_lease=15 s must be longer than leader_renew_deadline=20 s"
    with pytest.raises(ConfigurationError, match=expected):
        add_tickerq(configure)


@pytest.mark.parametrize(
    "order",
    [
        ("leader_lease", "leader_renew_deadline", "leader_retry_period"),
        ("leader_retry_period", "leader_renew_deadline", "leader_lease"),
        ("leader_renew_deadline", "leader_lease", "leader_retry_period"),
    ],
)
@pytest.mark.parametrize("target", [(60, 40, 10), (3, 2, 0.5)])
def test_consistent_timings_are_accepted_in_any_order(
    order: tuple[str, ...], target: tuple[float, float, float]
) -> None:
    """Timings that fit together are accepted whatever order the callback assigns them in."""
    values = dict(zip(("leader_lease", "leader_renew_deadline", "leader_retry_period"), target, strict=True))

    def configure(s: SchedulerOptions) -> None:
        for name in order:
            setattr(s, name, values[name])

    scheduler = TickerQOptions().configure_scheduler(configure)
    assert [timedelta(seconds=v) for v in target] == [
        scheduler.leader_lease,
        scheduler.leader_renew_deadline,
        scheduler.leader_retry_period,
    ]


def test_election_defaults_live_in_one_place() -> None:
    """SchedulerOptions, RedisContext.leader_election and LeaderElection share one set of default timings."""
    defaults = (DEFAULT_LEASE, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD)
    options = SchedulerOptions()
    used = [(options.leader_lease, options.leader_renew_deadline, options.leader_retry_period)]
    for function in (RedisContext.leader_election, LeaderElection.__init__):
        parameters = inspect.signature(function).parameters
        used.append(tuple(parameters[n].default for n in ("lease", "renew_deadline", "retry_period")))
    for values in used:
        assert all(value is default for value, default in zip(values, defaults, strict=True))
