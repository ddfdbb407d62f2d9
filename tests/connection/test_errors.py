"""One error translation: refusals from a real server reach callers as TickerQErrors with fields."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tickerq import TickerQContainer, TickerQOptions, add_tickerq
from tickerq._redis.translate import translate
from tickerq.errors import (
    KeyTypeError,
    RedisCommandError,
    RedisReadOnlyError,
    RedisUnavailableError,
    TickerQError,
)
from tickerq.testing import RedisServer


def node(address: str) -> TickerQContainer:
    def configure(options: TickerQOptions) -> None:
        options.configure_scheduler(node_identifier="n1")
        options.add_redis(configuration=address, connect_retry=0, sync_timeout=1.0)

    return add_tickerq(configure)


@pytest.fixture
def replica(fault_server: RedisServer) -> Iterator[RedisServer]:
    """A server that replicates ``fault_server``: it refuses writes with READONLY."""
    with RedisServer() as server:
        with server.client() as admin:
            admin.replicaof(fault_server.host, fault_server.port)
        yield server


def test_a_replica_refuses_heartbeats_and_locks_with_a_read_only_error(replica: RedisServer) -> None:
    """notify_node_alive() and lock().acquire() on a replica raise RedisReadOnlyError (a TickerQError)."""
    container = node(replica.address)
    ctx = container.redis_context()
    try:
        with pytest.raises(RedisReadOnlyError) as beat:
            ctx.notify_node_alive()
        assert "heartbeat" == beat.value.operation
        assert isinstance(beat.value, RedisUnavailableError)
        with pytest.raises(RedisReadOnlyError) as acquire:
            ctx.lock("jobs", ttl=5, blocking=False).acquire()
        assert isinstance(acquire.value, TickerQError)
    finally:
        container.shutdown_resources()


def test_a_full_server_refuses_writes_with_a_command_error(fault_server: RedisServer) -> None:
    """With maxmemory reached and noeviction, writes raise RedisCommandError(code='OOM')."""
    container = node(fault_server.address)
    ctx = container.redis_context()
    with fault_server.client() as admin:
        admin.set("ballast", "x" * 100_000)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
    try:
        with pytest.raises(RedisCommandError) as beat:
            ctx.notify_node_alive()
        assert "OOM" == beat.value.code
        with pytest.raises(RedisCommandError) as acquire:
            ctx.lock("jobs", ttl=5, blocking=False).acquire()
        assert "OOM" == acquire.value.code
    finally:
        with fault_server.client() as admin:
            admin.config_set("maxmemory", "0")
        container.shutdown_resources()


@pytest.mark.parametrize(
    ("error", "expected", "code"),
    [
        (redis.exceptions.NoPermissionError("this user has no permissions"), RedisCommandError, "NOPERM"),
        (redis.exceptions.ResponseError("BUSY Redis is busy running a script"), RedisUnavailableError, None),
        (redis.exceptions.BusyLoadingError("Redis is loading"), RedisUnavailableError, None),
        (redis.exceptions.ResponseError("WRONGTYPE Operation against a key"), KeyTypeError, None),
        (redis.exceptions.ReadOnlyError("You can't write"), RedisReadOnlyError, None),
        (redis.exceptions.TimeoutError("Timeout reading"), RedisUnavailableError, None),
        (redis.exceptions.ResponseError("ERR unknown command"), RedisCommandError, "ERR"),
        (  # Redis 6 wraps an error raised inside a script
            redis.exceptions.ResponseError(
                "Error running script (call to f_92ec): @user_script:82: @user_script: 82: "
                "-READONLY You can't write against a read only replica."
            ),
            RedisReadOnlyError,
            None,
        ),
        (
            redis.exceptions.ResponseError(
                "Error running script (call to f_92ec): @user_script:9: -OOM command not allowed"
            ),
            RedisCommandError,
            "OOM",
        ),
    ],
)
def test_translation_table(error: redis.RedisError, expected: type[TickerQError], code: str | None) -> None:
    """Each redis-py error class or reply code maps to its tickerq error, with the fields set."""
    translated = translate(error, "op", key="k", name="n")
    assert expected is type(translated)
    assert ("op", "k", "n") == (translated.operation, translated.key, translated.name)
    if code is not None:
        assert isinstance(translated, RedisCommandError)
        assert code == translated.code
