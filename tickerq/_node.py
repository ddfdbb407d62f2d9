"""Assembling a node: the parts a :class:`~tickerq._runtime.node.NodeRuntime` owns, from the options.

The container's providers call these; they hold the wiring so that the
container holds providers only. Building does no I/O but the start-up check
(``abort_on_connect_fail``) and master discovery, and starts no thread.
"""

from __future__ import annotations

from typing import Any

from tickerq._redis.connection import open_connections
from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import DeferredPublisher, Dispatcher
from tickerq._runtime.node import DISPATCH_WORKERS, NodeRuntime
from tickerq._runtime.strand import Strand
from tickerq.context import RedisContext
from tickerq.errors import ConfigurationError
from tickerq.events import EventHub
from tickerq.nodes.heartbeat import HeartbeatService
from tickerq.options import TickerQOptions
from tickerq.scheduler.function import FunctionRegistry
from tickerq.scheduler.memory_store import MemoryJobStore
from tickerq.scheduler.redis_store import RedisJobStore
from tickerq.scheduler.runner import SchedulerRunner

__all__ = [
    "build_embedded_node",
    "build_redis_node",
    "built_node",
    "no_election_without_redis",
    "running_node",
]


def build_redis_node(
    options: TickerQOptions, *, events: EventHub, functions: FunctionRegistry, container: Any, clock: Clock
) -> NodeRuntime:
    """Build (not start) a node on Redis: pools, context, heartbeat, election, scheduler.

    Raises:
        ConnectionFailedError: Redis is unreachable and ``abort_on_connect_fail`` is set.
        ConfigurationError: Redis is not configured.
    """
    redis_options, scheduler_options = options.redis, options.scheduler
    if redis_options is None:
        raise ConfigurationError(
            "Redis is not configured: call options.add_redis(...) in the add_tickerq callback"
        )
    connections = open_connections(redis_options)
    try:
        connections.check()
    except BaseException:
        connections.close()
        raise
    dispatcher = Dispatcher("tickerq-dispatch", workers=DISPATCH_WORKERS)
    node_id = scheduler_options.node_identifier
    context = RedisContext(connections, redis_options, node_id, events, dispatcher=dispatcher, clock=clock)
    heartbeat = HeartbeatService(
        context.registry.on_client(connections.heartbeat),
        redis_options.node_heartbeat_interval,
        events,
        retry_interval=redis_options.outage_retry_interval,
        handlers=context.dead_node_handlers,
        interrupt=connections.interrupt_heartbeat,
        on_failure=connections.rediscover,
        beat_on_start=connections.reachable,
        refuse_duplicate=redis_options.on_duplicate_node == "refuse",
        dispatcher=dispatcher,
        remover=context.registry,
        clock=clock,
    )
    election = None
    if scheduler_options.leader_election is not None:
        election = context.leader_election(
            scheduler_options.leader_election,
            lease=scheduler_options.leader_lease,
            renew_deadline=scheduler_options.leader_renew_deadline,
            retry_period=scheduler_options.leader_retry_period,
        )
    job_store = RedisJobStore(context.client, context.keys, retention=scheduler_options.job_retention)
    scheduler = None
    if scheduler_options.producer_only:
        # A producer still beats and may win the dead-node scan: it must hand a dead
        # worker's jobs back, or they would leave the registry with it and stay claimed.
        context.add_dead_node_handler(job_store.release_node)
    else:
        scheduler = SchedulerRunner(
            job_store,
            scheduler_options,
            functions,
            events=events,
            service_events=DeferredPublisher(events, Strand(dispatcher, "scheduler events")),
            container=container,
            clients=connections,
            keys=context.keys,
            dead_node_handlers=context.dead_node_handlers,
            clock=clock,
        )
    return NodeRuntime(
        node_id=node_id,
        dispatcher=dispatcher,
        clock=clock,
        connections=connections,
        context=context,
        heartbeat=heartbeat,
        election=election,
        scheduler=scheduler,
        job_store=job_store,
    )


def build_embedded_node(
    options: TickerQOptions,
    *,
    store: MemoryJobStore,
    events: EventHub,
    functions: FunctionRegistry,
    container: Any,
    clock: Clock = SYSTEM_CLOCK,
) -> NodeRuntime:
    """Build (not start) a node without Redis: the scheduler on an in-memory store."""
    scheduler_options = options.scheduler
    dispatcher = Dispatcher("tickerq-dispatch", workers=DISPATCH_WORKERS)
    scheduler = None
    if not scheduler_options.producer_only:
        scheduler = SchedulerRunner(
            store,
            scheduler_options,
            functions,
            events=events,
            service_events=DeferredPublisher(events, Strand(dispatcher, "scheduler events")),
            container=container,
            clock=clock,
        )
    return NodeRuntime(
        node_id=scheduler_options.node_identifier,
        dispatcher=dispatcher,
        clock=clock,
        scheduler=scheduler,
        job_store=store,
    )


def no_election_without_redis(options: TickerQOptions) -> None:
    """The embedded node's election: none; asking for one is a configuration error.

    Raises:
        ConfigurationError: ``configure_scheduler(leader_election=...)`` without Redis.
    """
    if options.scheduler.leader_election is not None:
        raise ConfigurationError(
            "Redis is not configured: call options.add_redis(...) in the add_tickerq callback "
            "(a leader election needs Redis)"
        )


class _NodeResource:
    """What a container Resource enters and exits; no ``__del__``: garbage collection closes nothing.

    (A generator Resource would be closed, and so shut the node down, when a
    container is collected while a context it handed out is still in use.)
    """

    def __init__(self, runtime: NodeRuntime, *, start: bool) -> None:
        self.runtime = runtime
        self._start = start

    def __enter__(self) -> NodeRuntime:
        if self._start:
            self.runtime.start()
        return self.runtime

    def __exit__(self, *exc_info: object) -> None:
        self.runtime.shutdown()


def built_node(runtime: NodeRuntime) -> _NodeResource:
    """The Resource of a built node: nothing starts; shutdown closes what it holds (its pools)."""
    return _NodeResource(runtime, start=False)


def running_node(runtime: NodeRuntime) -> _NodeResource:
    """The Resource of a started node: starts it, and shuts it down in the stated order."""
    return _NodeResource(runtime, start=True)
