"""The heartbeat thread on a real Redis: timing, scans, handlers, outages, stop, fork."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta

import orjson
import pytest
import redis

from tests.conftest import wait_until
from tickerq._redis.keys import Keys
from tickerq.events import EventHub, NodeHeartbeat, NodesDead, RedisConnectionLost, RedisConnectionRestored
from tickerq.nodes.heartbeat import HeartbeatService
from tickerq.nodes.registry import NodeRegistry
from tickerq.testing import RedisServer

REGISTRY = "tickerq:nodes:registry"


def registry_data(client: redis.Redis) -> str | None:
    """The registry's JSON (the data field of its RedisCache hash)."""
    return client.hget(REGISTRY, "data")  # type: ignore[return-value]


def service(
    server: RedisServer, node: str, interval: float = 0.1, grace: float = 0.1, events: EventHub | None = None
) -> HeartbeatService:
    client = server.client(socket_timeout=0.5, socket_connect_timeout=0.5)
    registry = NodeRegistry(client, Keys("tickerq:"), node, timedelta(seconds=interval + grace))
    return HeartbeatService(
        registry, timedelta(seconds=interval), events or EventHub(), retry_interval=timedelta(seconds=0.1)
    )


def test_first_beat_is_written_before_start_returns(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """start() writes the heartbeat and registers the node before it returns."""
    with service(redis_server, "a", interval=60):
        assert redis_client.exists("tickerq:hb:a")
        assert ["a"] == orjson.loads(registry_data(redis_client))


def test_thread_is_a_named_daemon_that_beats_every_interval(redis_server: RedisServer) -> None:
    """The thread is the daemon 'tickerq-heartbeat' and publishes a heartbeat each interval."""
    events = EventHub()
    beats: list[NodeHeartbeat] = []
    events.subscribe(NodeHeartbeat, beats.append)
    with service(redis_server, "a", interval=0.05, events=events) as hb:
        wait_until(lambda: len(beats) >= 5)
        threads = [t for t in threading.enumerate() if t.name == "tickerq-heartbeat"]
        assert 1 == len(threads)
        assert threads[0].daemon
        assert hb.running
    assert beats[0].registered
    assert not any(beat.registered for beat in beats[1:])


def test_stop_is_fast_with_a_long_interval(redis_server: RedisServer) -> None:
    """stop() returns in well under a second with a 60 s interval, and is safe twice."""
    hb = service(redis_server, "a", interval=60)
    hb.start()
    thread = hb._thread
    started = time.monotonic()
    hb.stop()
    assert time.monotonic() - started < 0.5
    assert thread is not None
    assert not thread.is_alive()
    hb.stop()
    assert not hb.running


def test_dead_node_is_handled_and_removed(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The scanning node hands each dead node to the handlers, then drops it from the registry."""
    events = EventHub()
    dead_events: list[NodesDead] = []
    events.subscribe(NodesDead, dead_events.append)
    handled: list[str] = []
    victim = service(redis_server, "victim", interval=60, grace=0.1)
    victim.registry.beat()  # registered (without taking the scan lease)
    redis_client.delete("tickerq:hb:victim")
    hb = service(redis_server, "survivor", events=events)
    hb.add_dead_node_handler(handled.append)
    with hb:
        wait_until(lambda: dead_events)
    assert ["victim"] == handled
    assert ("victim",) == dead_events[0].removed
    assert ["survivor"] == orjson.loads(registry_data(redis_client))


def test_failing_handler_keeps_node_registered_until_it_succeeds(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A node whose handler raised stays registered and is offered again by a later scan."""
    calls: list[str] = []

    def flaky(node: str) -> None:
        calls.append(node)
        if len(calls) < 3:
            raise RuntimeError("database down")

    service(redis_server, "victim", interval=60).registry.beat()
    redis_client.delete("tickerq:hb:victim")
    hb = service(redis_server, "survivor", interval=0.05)
    hb.add_dead_node_handler(flaky)
    with hb:
        wait_until(lambda: "victim" not in orjson.loads(registry_data(redis_client)))
    assert ["victim"] * 3 == calls[:3]


def test_raising_subscriber_does_not_stop_the_thread(redis_server: RedisServer) -> None:
    """A subscriber that raises is logged; beats go on."""
    events = EventHub()
    beats: list[NodeHeartbeat] = []

    def broken(_: NodeHeartbeat) -> None:
        raise RuntimeError("dashboard bug")

    events.subscribe(NodeHeartbeat, broken)
    events.subscribe(NodeHeartbeat, beats.append)
    with service(redis_server, "a", interval=0.05, events=events) as hb:
        wait_until(lambda: len(beats) >= 3)
        assert hb.running


def test_corrupted_registry_is_repaired_by_the_running_thread(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage written into the registry is replaced by a valid array within an interval, and logged."""
    with service(redis_server, "a", interval=0.05):
        redis_client.hset(REGISTRY, "data", "garbage")
        wait_until(lambda: registry_data(redis_client) == '["a"]')
    assert "corrupted" in caplog.text


def test_wrong_type_registry_does_not_kill_the_thread(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A registry of the wrong Redis type is reported once and the thread keeps running."""
    caplog.set_level(logging.WARNING)
    with service(redis_server, "a", interval=0.05) as hb:
        redis_client.delete(REGISTRY)
        redis_client.rpush(REGISTRY, "x")
        wait_until(lambda: "holds a list" in caplog.text)
        time.sleep(0.3)
        assert hb.running
        assert 1 == caplog.text.count("holds a list")
        redis_client.delete(REGISTRY)
        wait_until(lambda: registry_data(redis_client) == '["a"]')


@pytest.mark.slow
def test_survives_redis_restart_and_logs_once(
    fault_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With redis-server stopped, the thread logs one warning, then re-registers when it returns."""
    caplog.set_level(logging.INFO)
    events = EventHub()
    seen: list[object] = []
    events.subscribe(RedisConnectionLost, seen.append)
    events.subscribe(RedisConnectionRestored, seen.append)
    with service(fault_server, "a", interval=0.05, events=events) as hb:
        fault_server.stop()
        wait_until(lambda: seen)
        time.sleep(0.5)  # several failing ticks
        fault_server.start()
        with fault_server.client(decode_responses=True) as client:
            wait_until(lambda: registry_data(client) == '["a"]')
        assert hb.running
    assert 1 == caplog.text.count("Redis unavailable")
    assert [RedisConnectionLost, RedisConnectionRestored] == [type(event) for event in seen]


def test_forked_child_does_not_believe_it_runs(redis_server: RedisServer) -> None:
    """In a child forked after start, running is False (its heartbeat thread does not exist)."""
    with service(redis_server, "a", interval=60) as hb:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.write(write, b"1" if hb.running else b"0")
            os._exit(0)
        os.waitpid(pid, 0)
        assert b"0" == os.read(read, 1)
        assert hb.running
