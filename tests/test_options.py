"""Options: defaults, validation on assignment, callbacks and keywords, freezing, secrets."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import redis

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


def test_election_timings_are_checked_when_the_container_is_built() -> None:
    """An election whose renew deadline is not shorter than its lease is refused at add_tickerq time."""
    options = TickerQOptions()
    options.add_redis(configuration="localhost:6379")
    options.configure_scheduler(leader_election="chores", leader_lease=5, leader_renew_deadline=5)
    with pytest.raises(ConfigurationError, match="renew_deadline"):
        options.frozen_copy()
