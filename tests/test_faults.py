"""Real faults under a running node: frozen server, read-only failover, fork, start-up scans."""

from __future__ import annotations

import os
import threading
import time

import orjson
import pytest
import redis

from tests.conftest import wait_until
from tickerq import TickerQContainer, TickerQOptions, add_tickerq
from tickerq.testing import RedisServer


def node(configuration: str, name: str = "n1", **redis_fields: object) -> TickerQContainer:
    def configure(options: TickerQOptions) -> None:
        options.configure_scheduler(node_identifier=name)
        options.add_redis(configuration=configuration, **redis_fields)

    return add_tickerq(configure)


def alive_tickerq_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tickerq-") and t.is_alive()]


@pytest.mark.slow
def test_shutdown_is_fast_while_a_tick_is_blocked_on_a_frozen_server(fault_server: RedisServer) -> None:
    """With redis-server frozen (SIGSTOP) mid-tick, shutdown_resources still stops every thread within 1 s."""
    container = node(fault_server.address, node_heartbeat_interval=0.05)
    container.init_resources()
    fault_server.pause()
    try:
        time.sleep(0.3)  # the heartbeat is now waiting on a server that never answers
        started = time.monotonic()
        container.shutdown_resources()
        took = time.monotonic() - started
    finally:
        fault_server.resume()
    assert took < 1.0
    assert [] == alive_tickerq_threads()


@pytest.mark.slow
def test_start_without_abort_is_bounded_when_redis_is_frozen(fault_server: RedisServer) -> None:
    """Without abort, a frozen server delays init by about one sync_timeout; the node recovers later."""
    fault_server.pause()
    container = node(
        fault_server.address,
        abort_on_connect_fail=False,
        sync_timeout=0.5,
        connect_timeout=0.5,
        node_heartbeat_interval=0.2,
        outage_retry_interval=0.1,
    )
    try:
        started = time.monotonic()
        container.init_resources()
        took = time.monotonic() - started
        fault_server.resume()
        with fault_server.client() as client:
            wait_until(lambda: client.exists("tickerq:hb:n1"), timeout=10)
    finally:
        fault_server.resume()
        container.shutdown_resources()
    assert took < 1.5


@pytest.mark.slow
def test_heartbeat_survives_a_read_only_server(redis_server: RedisServer, fault_server: RedisServer) -> None:
    """Refused writes (the server became a replica) do not kill the thread; beats resume after."""
    container = node(fault_server.address, node_heartbeat_interval=0.05, outage_retry_interval=0.05)
    container.init_resources()
    try:
        with fault_server.client() as admin:
            admin.replicaof(redis_server.host, redis_server.port)
            wait_until(lambda: admin.info("replication")["role"] == "slave")
            time.sleep(0.3)  # several ticks fail with READONLY
            assert container.heartbeat().running
            admin.replicaof("NO", "ONE")
            wait_until(lambda: admin.exists("tickerq:hb:n1"), timeout=5)
        assert container.heartbeat().running
    finally:
        container.shutdown_resources()


def test_first_beat_leaves_dead_nodes_to_the_handlers(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A node that died before start-up is handed to handlers registered after init_resources, not dropped."""
    old = node(redis_server.address, "old-worker", node_heartbeat_interval=60)
    old.redis_context().notify_node_alive()
    redis_client.delete("tickerq:hb:old-worker")  # it died
    container = node(redis_server.address, "new-worker", node_heartbeat_interval=0.1)
    handled: list[str] = []
    container.init_resources()
    try:
        assert ["old-worker", "new-worker"] == orjson.loads(
            redis_client.hget("tickerq:nodes:registry", "data")
        )
        container.redis_context().add_dead_node_handler(handled.append)
        wait_until(lambda: handled)
        wait_until(
            lambda: orjson.loads(redis_client.hget("tickerq:nodes:registry", "data")) == ["new-worker"]
        )
    finally:
        container.shutdown_resources()
        old.shutdown_resources()
    assert ["old-worker"] == handled


@pytest.mark.slow
def test_node_follows_a_master_failover_between_endpoints() -> None:
    """With two endpoints, after the roles swap the heartbeat finds the new master by itself."""
    with RedisServer() as first, RedisServer() as second:
        with second.client() as admin:
            admin.replicaof(first.host, first.port)
        container = node(
            f"{second.address},{first.address}", node_heartbeat_interval=0.1, outage_retry_interval=0.1
        )
        container.init_resources()
        try:
            with first.client() as a, second.client() as b:
                wait_until(lambda: a.exists("tickerq:hb:n1"))
                b.replicaof("NO", "ONE")
                a.replicaof(second.host, second.port)
                b.delete("tickerq:hb:n1")
                wait_until(lambda: b.exists("tickerq:hb:n1"), timeout=10)
                assert ["n1"] == container.redis_context().get_registered_nodes()
        finally:
            container.shutdown_resources()


def test_restart_in_a_forked_child_leaves_the_parent_working(redis_server: RedisServer) -> None:
    """The documented post-fork start (shutdown, then init) runs a child node; the parent keeps working."""
    container = node(redis_server.address, "parent", node_heartbeat_interval=0.1)
    container.init_resources()
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = b"0"
            try:
                assert not container.heartbeat().running
                container.shutdown_resources()
                container.init_resources()
                running = container.heartbeat().running
                nodes = container.redis_context().get_registered_nodes()
                container.shutdown_resources()
                status = b"1" if running and "parent" in nodes else b"2"
            finally:
                os.write(write, status)
                os._exit(0)
        os.waitpid(pid, 0)
        assert b"1" == os.read(read, 1)
        ctx = container.redis_context()
        assert ["parent"] == ctx.get_registered_nodes()
        assert container.heartbeat().running
        before = ctx.client.hget("tickerq:hb:parent", "data")
        wait_until(lambda: ctx.client.hget("tickerq:hb:parent", "data") != before)
    finally:
        container.shutdown_resources()


@pytest.mark.slow
def test_election_and_locks_follow_a_master_failover_between_endpoints() -> None:
    """After the roles of two endpoints swap, the election leads again steadily on the new master
    and a lock can be taken there."""
    with RedisServer() as first, RedisServer() as second:
        with second.client() as admin:
            admin.replicaof(first.host, first.port)

        def configure(options: TickerQOptions) -> None:
            options.configure_scheduler(
                node_identifier="n1",
                leader_election="chores",
                leader_lease=1.0,
                leader_renew_deadline=0.6,
                leader_retry_period=0.1,
            )
            options.add_redis(
                configuration=f"{second.address},{first.address}",
                node_heartbeat_interval=0.1,
                outage_retry_interval=0.1,
            )

        container = add_tickerq(configure)
        container.init_resources()
        try:
            election = container.leader_election()
            assert election is not None
            wait_until(lambda: election.is_leader)
            with first.client() as a, second.client() as b:
                b.replicaof("NO", "ONE")
                a.replicaof(second.host, second.port)
                # The new master's copy of the lease came from the old one: wait until the
                # leadership is renewed *there*, which only an election that moved can do.
                b.delete("tickerq:tq:election:chores")
                wait_until(lambda: b.exists("tickerq:tq:election:chores") and election.is_leader, timeout=10)
                deadline = time.monotonic() + 2.0  # steadily: leading for 2 s more, never lost
                while time.monotonic() < deadline:
                    assert election.is_leader
                    time.sleep(0.05)
                lock = container.redis_context().lock("after-failover", ttl=5, blocking=False)
                assert lock.acquire()
                assert b.exists("tickerq:lock:after-failover")
                lock.release()
        finally:
            container.shutdown_resources()
