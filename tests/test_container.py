"""The container as users wire it: add_tickerq, init/shutdown, singletons, ownership, faults, secrets."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from datetime import timedelta

import orjson
import pytest
import redis

import tickerq
from tests.conftest import wait_until
from tickerq import (
    ConfigurationError,
    ConnectionFailedError,
    NodeHeartbeat,
    RedisOptions,
    TickerQOptions,
    add_tickerq,
)
from tickerq.testing import RedisServer, free_port


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tickerq-heartbeat"]


def test_issue_example_registers_and_shuts_down(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The registration example: first heartbeat written by init_resources, thread stopped by shutdown."""

    def configure(options: TickerQOptions) -> None:
        options.configure_scheduler(node_identifier="web-01")

        def redis_options(r: RedisOptions) -> None:
            r.configuration = redis_server.address
            r.instance_name = "tickerq:"
            r.node_heartbeat_interval = timedelta(minutes=1)

        options.add_redis(redis_options)

    container = add_tickerq(configure)
    container.init_resources()
    try:
        assert redis_client.exists("tickerq:hb:web-01")
        assert ["web-01"] == orjson.loads(redis_client.hget("tickerq:nodes:registry", "data"))
        assert 79_000 < redis_client.pttl("tickerq:hb:web-01") <= 80_000
        ctx = container.redis_context()
        assert ctx is container.redis_context()
        assert ["web-01"] == ctx.get_registered_nodes()
        assert [] == ctx.get_dead_nodes()
        assert 1 == len(heartbeat_threads())
    finally:
        started = time.monotonic()
        container.shutdown_resources()
        stopped_in = time.monotonic() - started
    assert stopped_in < 1.0
    assert [] == heartbeat_threads()
    assert ctx.connections.closed


def test_context_without_init_starts_nothing(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Resolving redis_context without init_resources works, starts no thread and registers no node."""
    container = add_tickerq(lambda o: o.add_redis(configuration=redis_server.address))
    ctx = container.redis_context()
    assert [] == ctx.get_registered_nodes()
    assert [] == heartbeat_threads()
    assert not redis_client.exists("tickerq:nodes:registry")
    container.shutdown_resources()


def test_context_outlives_its_container(redis_server: RedisServer) -> None:
    """A context stays usable after its container is dropped and collected; shutdown alone closes it."""
    container = add_tickerq(
        lambda o: (
            o.configure_scheduler(node_identifier="n1"),
            o.add_redis(configuration=redis_server.address),
        )
    )
    ctx = container.redis_context()
    ctx.notify_node_alive()
    del container
    gc.collect()
    assert ["n1"] == ctx.get_registered_nodes()
    assert not ctx.connections.closed


def test_events_reach_subscribers(redis_server: RedisServer) -> None:
    """The container's event hub receives the heartbeats of its node."""
    container = add_tickerq(
        lambda o: o.add_redis(configuration=redis_server.address, node_heartbeat_interval=0.05)
    )
    beats: list[NodeHeartbeat] = []
    container.events().subscribe(NodeHeartbeat, beats.append)
    container.init_resources()
    try:
        wait_until(lambda: len(beats) >= 3)
    finally:
        container.shutdown_resources()


def test_add_redis_without_connection_is_refused() -> None:
    """add_redis() with neither configuration nor client raises ConfigurationError at add_tickerq."""
    with pytest.raises(ConfigurationError, match="without a connection"):
        add_tickerq(lambda o: o.add_redis(instance_name="x:"))


def test_wrong_password_fails_init_without_leaking_it(caplog: pytest.LogCaptureFixture) -> None:
    """With abort_on_connect_fail, a wrong password fails init_resources; the password is nowhere."""
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="right-Pa55") as server:
        container = add_tickerq(
            lambda o: o.add_redis(configuration=f"{server.address},password=wrong-Pa55,connectRetry=0")
        )
        with pytest.raises(ConnectionFailedError) as caught:
            container.init_resources()
        container.shutdown_resources()
    assert server.address in str(caught.value)
    assert "wrong-Pa55" not in str(caught.value)
    assert "wrong-Pa55" not in caplog.text


def test_secrets_absent_from_reprs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The password appears in no repr of options, context or connections, and in no log line."""
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="Top-Secret-77") as server:
        container = add_tickerq(
            lambda o: o.add_redis(
                configuration=f"{server.address},password=Top-Secret-77", node_heartbeat_interval=0.05
            )
        )
        container.init_resources()
        ctx = container.redis_context()
        server.stop()
        wait_until(lambda: "Redis unavailable" in caplog.text)  # an outage was logged
        server.start()
        texts = [repr(container.options()), repr(ctx), repr(ctx.connections), repr(ctx.options), caplog.text]
        container.shutdown_resources()
    for text in texts:
        assert "Top-Secret-77" not in text


@pytest.mark.slow
def test_node_without_abort_comes_up_when_redis_does(fault_server: RedisServer) -> None:
    """abort_on_connect_fail=False: init succeeds with Redis down and the node registers once it is up."""
    fault_server.stop()
    container = add_tickerq(
        lambda o: (
            o.configure_scheduler(node_identifier="patient"),
            o.add_redis(
                configuration=fault_server.address,
                abort_on_connect_fail=False,
                connect_retry=0,
                node_heartbeat_interval=0.2,
                outage_retry_interval=0.1,
            ),
        )
    )
    container.init_resources()
    try:
        fault_server.start()
        with fault_server.client() as client:
            wait_until(lambda: client.exists("tickerq:hb:patient"), timeout=5)
    finally:
        container.shutdown_resources()


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".example.com", "h" * 10_000])
def test_host_that_is_not_a_dns_name_is_refused_when_configured(host: str) -> None:
    """A host the resolver cannot encode is a ConfigurationError at add_redis, even without abort."""
    with pytest.raises(ConfigurationError, match="not a DNS name"):
        add_tickerq(lambda o: o.add_redis(configuration=f"{host}:6379", abort_on_connect_fail=False))
    with pytest.raises(ConfigurationError, match="not a DNS name"):
        add_tickerq(
            lambda o: o.add_redis(
                lambda r: setattr(r, "configuration", f"redis://{host}:6379/0"), abort_on_connect_fail=False
            )
        )


def test_node_started_during_an_outage_registers_within_the_retry_interval(fault_server: RedisServer) -> None:
    """Redis down at init, 1 min interval: the node registers within outage_retry_interval once it is up."""
    fault_server.stop()
    container = add_tickerq(
        lambda o: (
            o.configure_scheduler(node_identifier="late"),
            o.add_redis(
                configuration=fault_server.address,
                abort_on_connect_fail=False,
                connect_retry=0,
                outage_retry_interval=0.5,
            ),
        )
    )
    container.init_resources()
    try:
        assert timedelta(minutes=1) == container.options().redis.node_heartbeat_interval
        fault_server.start()
        up = time.monotonic()
        with fault_server.client(decode_responses=True) as client:
            wait_until(lambda: client.exists("tickerq:hb:late"), timeout=3)
            registered = time.monotonic() - up
            assert ["late"] == container.redis_context().get_registered_nodes()
        assert registered < 0.5 + 1.0  # one retry interval, plus slack for a loaded machine
    finally:
        container.shutdown_resources()


def test_unreachable_with_abort_raises_quickly() -> None:
    """abort_on_connect_fail=True with nothing listening: init_resources raises ConnectionFailedError."""
    port = free_port()
    container = add_tickerq(lambda o: o.add_redis(configuration=f"127.0.0.1:{port}", connect_retry=1))
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError, match=f"127.0.0.1:{port}"):
        container.init_resources()
    assert time.monotonic() - started < 3
    container.shutdown_resources()


def test_given_client_is_not_closed(redis_server: RedisServer) -> None:
    """A client passed with add_redis(client=...) still works after shutdown_resources."""
    client = redis_server.client()
    container = add_tickerq(lambda o: o.add_redis(client=client))
    container.init_resources()
    container.shutdown_resources()
    assert client.ping()
    client.close()


def test_forked_child_is_not_running(redis_server: RedisServer) -> None:
    """A child forked after init_resources knows its heartbeat thread is not running."""
    container = add_tickerq(lambda o: o.add_redis(configuration=redis_server.address))
    container.init_resources()
    try:
        heartbeat = container.heartbeat()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, b"1" if heartbeat.running else b"0")
            os._exit(0)
        os.waitpid(pid, 0)
        assert b"0" == os.read(read, 1)
    finally:
        container.shutdown_resources()


def test_public_names() -> None:
    """The package re-exports its public API with a sorted __all__."""
    assert sorted(tickerq.__all__) == tickerq.__all__
    for name in tickerq.__all__:
        assert hasattr(tickerq, name)


def tickerq_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tickerq-") and t.is_alive()]


def test_restart_after_shutdown_gets_a_fresh_context(redis_server: RedisServer) -> None:
    """init, shutdown, init again: a new context on new connections, with working locks."""
    container = add_tickerq(lambda o: o.add_redis(configuration=redis_server.address))
    container.init_resources()
    first = container.redis_context()
    container.shutdown_resources()
    container.init_resources()
    try:
        second = container.redis_context()
        assert first is not second
        assert first.connections.closed
        assert not second.connections.closed
        with second.lock("after-restart", ttl=5) as lease:
            assert lease.fence >= 1
    finally:
        container.shutdown_resources()


def test_shutdown_stops_every_thread(redis_server: RedisServer) -> None:
    """shutdown_resources stops the heartbeat, the lock watchdog and elections, within a second."""
    container = add_tickerq(lambda o: o.add_redis(configuration=redis_server.address))
    container.init_resources()
    ctx = container.redis_context()
    lease = ctx.lock("held-at-shutdown", ttl=30).acquire()
    election = ctx.leader_election("chores")
    election.start()
    wait_until(lambda: election.is_leader)
    assert "tickerq-heartbeat" in tickerq_threads()
    started = time.monotonic()
    container.shutdown_resources()
    assert time.monotonic() - started < 1.0
    assert [] == tickerq_threads()
    assert lease.fence >= 1


def test_container_runs_the_nodes_election(redis_server: RedisServer) -> None:
    """configure_scheduler(leader_election=...) makes init_resources campaign; one of two nodes leads."""

    def node(name: str) -> tickerq.TickerQContainer:
        return add_tickerq(
            lambda o: (
                o.configure_scheduler(
                    node_identifier=name,
                    leader_election="chores",
                    leader_lease=1.5,
                    leader_renew_deadline=1.0,
                    leader_retry_period=0.2,
                ),
                o.add_redis(configuration=redis_server.address),
            )
        )

    first, second = node("n1"), node("n2")
    first.init_resources()
    second.init_resources()
    try:
        elections = [first.leader_election(), second.leader_election()]
        wait_until(lambda: any(e.is_leader for e in elections))
        assert 1 == sum(e.is_leader for e in elections)
        leader = next(e for e in elections if e.is_leader)
        assert leader.leader() in {"n1", "n2"}
    finally:
        first.shutdown_resources()
        second.shutdown_resources()
    assert [] == tickerq_threads()


def test_no_election_unless_asked(redis_server: RedisServer) -> None:
    """Without leader_election, the container's election provider gives None and starts no thread."""
    container = add_tickerq(lambda o: o.add_redis(configuration=redis_server.address))
    container.init_resources()
    try:
        assert container.leader_election() is None
        assert not [name for name in tickerq_threads() if name.startswith("tickerq-election")]
    finally:
        container.shutdown_resources()
