"""The node runtime: one owner of every service; ordered shutdown against one deadline; user code
on the dispatcher only; callers released at shutdown; fork; every pool follows a failover."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import wait_until
from tickerq import (
    FunctionRegistry,
    LeaderChanged,
    LeadershipAcquired,
    NodeHeartbeat,
    NodesDead,
    RedisConnectionLost,
    RedisConnectionRestored,
    TickerFinished,
    TickerFunctionContext,
    TickerQContainer,
    TickerQOptions,
    TickerStatus,
    add_tickerq,
    ticker_function,
)
from tickerq._runtime.node import NodeRuntime
from tickerq.errors import ShutdownError
from tickerq.testing import RedisServer

#: Threads that keep a heartbeat, a lease, a deadline or a loop: user code never runs on them.
SERVICE_PREFIXES = ("tickerq-heartbeat", "tickerq-scheduler", "tickerq-election-")


def node(
    address: str,
    name: str = "n1",
    *,
    functions: FunctionRegistry | None = None,
    election: str | None = "chores",
    **redis: Any,
) -> TickerQContainer:
    redis.setdefault("node_heartbeat_interval", 0.1)
    redis.setdefault("outage_retry_interval", 0.1)

    def configure(options: TickerQOptions) -> None:
        options.configure_scheduler(
            node_identifier=name,
            leader_election=election,
            leader_lease=1.0,
            leader_renew_deadline=0.6,
            leader_retry_period=0.1,
            shutdown_timeout=2,
            poll_interval=0.5,
        )
        options.add_redis(configuration=address, **redis)

    return add_tickerq(configure, functions=functions or FunctionRegistry())


def tickerq_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tickerq-") and t.is_alive()]


def test_container_runs_one_runtime_that_owns_every_service(redis_server: RedisServer) -> None:
    """init_resources starts one NodeRuntime holding the context, heartbeat, election and scheduler."""
    container = node(redis_server.address)
    container.init_resources()
    try:
        runtime = container.node_runtime()
        assert isinstance(runtime, NodeRuntime)
        assert runtime.running
        assert runtime.context is container.redis_context()
        assert runtime.heartbeat is container.heartbeat()
        assert runtime.election is container.leader_election()
        assert runtime.scheduler_service is container.scheduler()
        assert runtime.connections is container.redis_connections()
        election = container.leader_election()
        assert election is not None
        wait_until(lambda: election.is_leader)
    finally:
        container.shutdown_resources()
    assert not runtime.running
    assert [] == tickerq_threads()


def test_shutdown_stops_services_in_the_stated_order(redis_server: RedisServer) -> None:
    """Scheduler and elections told first; scheduler, elections, heartbeat waited in turn; then
    callers released, the dispatcher drained and the pools closed."""
    container = node(redis_server.address)
    container.init_resources()
    runtime = container.node_runtime()
    container.shutdown_resources()
    assert [
        "scheduler: stop requested",
        "elections: stop requested",
        "scheduler: stopped",
        "elections: stopped",
        "heartbeat: stopped",
        "callers released",
        "dispatcher",
        "pools closed",
    ] == runtime.steps
    assert runtime.connections is not None
    assert runtime.connections.closed


def test_job_handed_back_at_shutdown_while_the_node_still_beats(redis_server: RedisServer) -> None:
    """A job still running at shutdown is handed back before the heartbeat stops: the node never
    looked dead to another node while its job was being returned."""
    functions = FunctionRegistry()
    started = threading.Event()

    @ticker_function("Long", registry=functions)
    def long(context: TickerFunctionContext) -> None:
        started.set()
        context.cancelled.wait(10)

    container = node(redis_server.address, functions=functions, election=None)
    container.init_resources()
    runtime = container.node_runtime()
    manager = container.ticker_manager()
    job = manager.schedule("Long")
    wait_until(started.is_set)
    container.shutdown_resources()
    assert runtime.steps.index("scheduler: stopped") < runtime.steps.index("heartbeat: stopped")
    record = manager.get(job)
    assert record is not None
    assert TickerStatus.IDLE == record.status  # handed back, to run again elsewhere


@pytest.mark.slow
def test_shutdown_meets_one_deadline_with_redis_frozen_and_releases_waiters(
    fault_server: RedisServer,
) -> None:
    """Redis frozen, with an election, a running scheduler, a lock waiter and a cache waiter:
    shutdown_resources returns within about a second and both waiters raise ShutdownError."""
    container = node(fault_server.address)
    container.init_resources()
    ctx = container.redis_context()
    election = container.leader_election()
    assert election is not None
    wait_until(lambda: election.is_leader)
    assert container.scheduler() is not None
    holder = ctx.lock("busy", ttl=30).acquire()
    outcomes: dict[str, BaseException | None] = {}

    def record(name: str, call: Callable[[], object]) -> threading.Thread:
        def run() -> None:
            try:
                call()
                outcomes[name] = None
            except BaseException as exc:
                outcomes[name] = exc

        thread = threading.Thread(target=run, name=f"test-{name}", daemon=True)
        thread.start()
        return thread

    computing, finish = threading.Event(), threading.Event()

    def slow_factory() -> list[int]:
        computing.set()
        finish.wait(10)
        return [1]

    lock_waiter = record("lock", lambda: ctx.lock("busy", ttl=30).acquire())
    cache_leader = record("cache-leader", lambda: ctx.get_or_set_array("k", slow_factory))
    wait_until(computing.is_set)
    cache_waiter = record("cache", lambda: ctx.get_or_set_array("k", lambda: [2]))
    time.sleep(0.2)  # both waiters are parked: the lock's in line, the cache's on the leader's flight
    assert lock_waiter.is_alive()
    assert cache_waiter.is_alive()
    fault_server.pause()
    try:
        started = time.monotonic()
        container.shutdown_resources()
        took = time.monotonic() - started
        lock_waiter.join(1)
        cache_waiter.join(1)
    finally:
        fault_server.resume()
        finish.set()
    cache_leader.join(10)
    assert took <= 1.2
    assert isinstance(outcomes["lock"], ShutdownError)
    assert isinstance(outcomes["cache"], ShutdownError)
    assert holder.fence >= 1
    assert not [name for name in tickerq_threads() if name.startswith(SERVICE_PREFIXES)]


@pytest.mark.slow
def test_user_callbacks_run_on_dispatcher_threads_only(fault_server: RedisServer) -> None:
    """Subscribers, election callbacks and dead-node handlers, across an outage, run on
    tickerq-dispatch threads, never on a heartbeat, scheduler or election thread."""
    seen: dict[str, set[str]] = {}

    def recorder(what: str) -> Callable[..., None]:
        def record(*_args: object) -> None:
            seen.setdefault(what, set()).add(threading.current_thread().name)

        return record

    dead = node(fault_server.address, "dead", election=None, node_heartbeat_grace=0.1)
    dead.redis_context().notify_node_alive()
    container = node(fault_server.address)
    events = container.events()
    for event_type in (
        NodeHeartbeat,
        NodesDead,
        LeadershipAcquired,
        LeaderChanged,
        RedisConnectionLost,
        RedisConnectionRestored,
    ):
        events.subscribe(event_type, recorder(event_type.__name__))
    ctx = container.redis_context()
    ctx.add_dead_node_handler(recorder("dead-node handler"))
    container.init_resources()
    try:
        other = ctx.leader_election(
            "other",
            lease=1.0,
            renew_deadline=0.6,
            retry_period=0.1,
            on_elected=recorder("on_elected"),
            on_new_leader=recorder("on_new_leader"),
        )
        other.start()
        wait_until(
            lambda: {"on_elected", "LeadershipAcquired", "dead-node handler", "NodesDead"} <= set(seen)
        )
        fault_server.stop()
        wait_until(lambda: "RedisConnectionLost" in seen)
        fault_server.start()
        wait_until(lambda: "RedisConnectionRestored" in seen, timeout=15)
    finally:
        container.shutdown_resources()
        dead.shutdown_resources()
    names = set().union(*seen.values())
    assert names
    assert all(name.startswith("tickerq-dispatch-") for name in names), seen


def test_forked_child_restarts_the_whole_node_cleanly(redis_server: RedisServer) -> None:
    """A child forked after init sees no running runtime; shutdown then init there runs a full node
    (heartbeat, election, scheduler) while the parent keeps running."""
    container = node(redis_server.address, "parent")
    container.init_resources()
    try:
        parent_runtime = container.node_runtime()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = b"0"
            try:
                assert parent_runtime.forked
                assert not parent_runtime.running
                container.shutdown_resources()
                container.init_resources()
                child_runtime = container.node_runtime()
                ok = (
                    child_runtime is not parent_runtime
                    and child_runtime.running
                    and container.heartbeat().running
                    and container.scheduler() is not None
                    and container.scheduler().running
                )
                container.shutdown_resources()
                status = b"1" if ok else b"2"
            finally:
                os.write(write, status)
                os._exit(0)
        os.waitpid(pid, 0)
        assert b"1" == os.read(read, 1)
        assert parent_runtime.running
        assert not parent_runtime.forked
        assert container.heartbeat().running
        ctx = container.redis_context()
        before = ctx.client.hget("tickerq:hb:parent", "data")
        wait_until(lambda: ctx.client.hget("tickerq:hb:parent", "data") != before)
    finally:
        container.shutdown_resources()


@pytest.mark.slow
def test_scheduler_runs_a_job_after_a_master_failover_between_endpoints() -> None:
    """After the roles of two endpoints swap, a job scheduled on the new master runs there."""
    functions = FunctionRegistry()
    ran: list[str] = []

    @ticker_function("AfterFailover", registry=functions)
    def after(context: TickerFunctionContext) -> None:
        ran.append(context.job_id)

    with RedisServer() as first, RedisServer() as second:
        with second.client() as admin:
            admin.replicaof(first.host, first.port)
        container = node(f"{second.address},{first.address}", functions=functions, election=None)
        finished: list[TickerFinished] = []
        container.events().subscribe(TickerFinished, finished.append)
        container.init_resources()
        try:
            with first.client() as a, second.client() as b:
                wait_until(lambda: a.exists("tickerq:hb:n1"))
                b.replicaof("NO", "ONE")
                a.replicaof(second.host, second.port)
                b.delete("tickerq:hb:n1")
                wait_until(lambda: b.exists("tickerq:hb:n1"), timeout=10)  # the node moved
                job = container.ticker_manager().schedule("AfterFailover", timedelta(0))
                wait_until(lambda: job in ran, timeout=10)
                wait_until(lambda: any(event.job_id == job for event in finished))
        finally:
            container.shutdown_resources()
