"""The dependency-injection container: providers only, no domain logic.

``add_tickerq(configure)`` mirrors .NET's ``services.AddTickerQ(options => ...)``:
the callback fills a ``TickerQOptions``, which is validated and frozen, and the
returned container wires the Redis connections, the ``RedisContext`` and the
heartbeat thread.

All three are Resources, which dependency-injector shuts down in dependency
order: heartbeat first, then the context (lock watchdog, elections), then the
pools. It only orders Resources that *directly* depend on each other, so the
heartbeat takes the connections as an argument of its own. The context is a
Resource rather than a Singleton for the same reason, and so that a container
started again after ``shutdown_resources()`` gets a fresh context on fresh
connections. None of them closes anything when merely garbage-collected: a
context stays usable for as long as anything holds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from dependency_injector import containers, providers

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq.errors import ConfigurationError
from tickerq.events import EventHub
from tickerq.options import RedisOptions, SchedulerOptions, TickerQOptions
from tickerq.redis.connection import RedisConnections, open_connections
from tickerq.redis.context import RedisContext
from tickerq.redis.election import LeaderElection
from tickerq.redis.heartbeat import HeartbeatService
from tickerq.scheduler.executor import SchedulerService
from tickerq.scheduler.function import DEFAULT_REGISTRY, FunctionRegistry
from tickerq.scheduler.manager import TickerManager
from tickerq.scheduler.memory_store import MemoryJobStore
from tickerq.scheduler.redis_store import RedisJobStore
from tickerq.scheduler.store import JobStore
from tickerq.scheduler.wake import WakeSubscriber

__all__ = ["TickerQContainer", "add_tickerq"]


def _heartbeat(
    context: RedisContext, connections: RedisConnections, options: RedisOptions, events: EventHub
) -> HeartbeatService:
    # ``connections`` is taken for the shutdown order (see the module docstring).
    assert context.connections is connections
    return HeartbeatService(
        context.registry.on_client(connections.heartbeat),
        options.node_heartbeat_interval,
        events,
        retry_interval=options.outage_retry_interval,
        handlers=context.dead_node_handlers,
        interrupt=connections.interrupt_heartbeat,
        on_failure=connections.rediscover,
        beat_on_start=connections.reachable,
        refuse_duplicate=options.on_duplicate_node == "refuse",
        remover=context.registry,
    )


def _leader_election(context: RedisContext, options: SchedulerOptions) -> LeaderElection | None:
    if options.leader_election is None:
        return None
    return context.leader_election(
        options.leader_election,
        lease=options.leader_lease,
        renew_deadline=options.leader_renew_deadline,
        retry_period=options.leader_retry_period,
    )


def _redis_job_store(context: RedisContext, options: SchedulerOptions) -> RedisJobStore:
    return RedisJobStore(context.client, context.keys, retention=options.job_retention)


def _scheduler(
    *,
    store: JobStore,
    options: SchedulerOptions,
    events: EventHub,
    functions: FunctionRegistry,
    container: Any,
    context: RedisContext | None = None,
    heartbeat: HeartbeatService | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Iterator[SchedulerService | None]:
    # ``heartbeat`` is taken for the shutdown order: the scheduler stops (and hands
    # its jobs back) while the node is still alive and connected.
    if options.producer_only:
        # A producer still beats and may win the dead-node scan: it must hand a dead
        # worker's jobs back, or they would leave the registry with it and stay claimed.
        if context is not None:
            context.add_dead_node_handler(store.release_node)
        try:
            yield None
        finally:
            if context is not None and store.release_node in context.dead_node_handlers:
                context.dead_node_handlers.remove(store.release_node)
        return
    interrupt: Callable[[], object] | None = None
    if context is not None and isinstance(store, RedisJobStore):
        # The loops get a pool of their own, so stopping can break a call blocked on a frozen server.
        client = context.connections.derive_client(2)
        interrupt = client.connection_pool.disconnect
        store = RedisJobStore(client, context.keys, retention=options.job_retention)
    service = SchedulerService(
        store,
        functions.snapshot(),
        options.node_identifier,
        options,
        container=container,
        events=events,
        clock=clock,
        interrupt=interrupt,
    )
    wake: WakeSubscriber | None = None
    if isinstance(store, RedisJobStore):
        wake = WakeSubscriber(store, service.on_store_wake, events=events, interrupt=interrupt)
    elif isinstance(store, MemoryJobStore):
        store.add_wake_listener(service.on_store_wake)
    if context is not None:
        context.add_dead_node_handler(store.release_node)
    service.start()
    if wake is not None:
        wake.start()
    try:
        yield service
    finally:
        if wake is not None:
            wake.request_stop()
        service.request_stop()
        # Running jobs get shutdown_timeout to finish; the loops themselves stop at once
        # (a call blocked on a frozen server is interrupted).
        grace = options.shutdown_timeout.total_seconds() if service.running_jobs else 0.0
        deadline = time.monotonic() + grace + 0.5
        if wake is not None:
            wake.wait_stopped(deadline)
        service.wait_stopped(deadline)
        if isinstance(store, MemoryJobStore):
            store.remove_wake_listener(service.on_store_wake)
        if context is not None and store.release_node in context.dead_node_handlers:
            context.dead_node_handlers.remove(store.release_node)


def _redis_not_configured(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise ConfigurationError(
        "Redis is not configured: call options.add_redis(...) in the add_tickerq callback "
        "(without it, the scheduler runs on one node with an in-memory store)"
    )


def _embedded_leader_election(options: SchedulerOptions) -> None:
    if options.leader_election is not None:
        _redis_not_configured()


class TickerQContainer(containers.DeclarativeContainer):
    """Providers for one tickerq node.

    ``redis_context()`` returns the same ``RedisContext`` on every call until
    ``shutdown_resources()``; resolving it without ``init_resources()`` starts
    no thread and registers no node.

    ``leader_election()`` is the node's election when
    ``configure_scheduler(leader_election="name")`` asked for one (else None);
    ``init_resources()`` starts it.

    ``init_resources()`` connects (raising ``ConnectionFailedError`` if Redis is
    unreachable and ``abort_on_connect_fail`` is set), writes the first
    heartbeat and starts the heartbeat thread. ``shutdown_resources()`` stops
    every thread, then closes the pools tickerq created.

    ``ticker_manager()`` schedules, cancels and queries jobs; without
    ``init_resources()`` it is a producer and nothing runs. ``init_resources()``
    starts the scheduler (``scheduler()``) unless ``producer_only`` is set;
    ``shutdown_resources()`` stops it first.
    """

    __self__ = providers.Self()
    options = providers.Dependency(instance_of=TickerQOptions)
    ticker_functions = providers.Dependency(instance_of=FunctionRegistry, default=DEFAULT_REGISTRY)
    clock = providers.Object(SYSTEM_CLOCK)
    events = providers.Singleton(EventHub)
    redis_connections = providers.Resource(open_connections, options=options.provided.redis)
    redis_context = providers.Resource(
        RedisContext,
        connections=redis_connections,
        options=options.provided.redis,
        node_id=options.provided.scheduler.node_identifier,
        events=events,
    )
    heartbeat = providers.Resource(
        _heartbeat,
        context=redis_context,
        connections=redis_connections,
        options=options.provided.redis,
        events=events,
    )
    leader_election = providers.Resource(
        _leader_election, context=redis_context, options=options.provided.scheduler
    )
    job_store = providers.Resource(
        _redis_job_store, context=redis_context, options=options.provided.scheduler
    )
    ticker_manager = providers.Factory(
        TickerManager,
        store=job_store,
        registry=ticker_functions,
        time_zone=options.provided.scheduler.time_zone,
    )
    scheduler = providers.Resource(
        _scheduler,
        store=job_store,
        options=options.provided.scheduler,
        events=events,
        functions=ticker_functions,
        container=__self__,
        context=redis_context,
        heartbeat=heartbeat,
        clock=clock,
    )


class EmbeddedContainer(containers.DeclarativeContainer):
    """The same API without Redis: one node, an in-memory job store.

    ``redis_context()``, ``redis_connections()`` and ``heartbeat()`` raise a
    ``ConfigurationError`` saying Redis is not configured.
    """

    __self__ = providers.Self()
    options = providers.Dependency(instance_of=TickerQOptions)
    ticker_functions = providers.Dependency(instance_of=FunctionRegistry, default=DEFAULT_REGISTRY)
    clock = providers.Object(SYSTEM_CLOCK)
    events = providers.Singleton(EventHub)
    redis_connections = providers.Callable(_redis_not_configured)
    redis_context = providers.Callable(_redis_not_configured)
    heartbeat = providers.Callable(_redis_not_configured)
    leader_election = providers.Callable(_embedded_leader_election, options=options.provided.scheduler)
    job_store = providers.Singleton(
        MemoryJobStore, clock=clock, retention=options.provided.scheduler.job_retention
    )
    ticker_manager = providers.Factory(
        TickerManager,
        store=job_store,
        registry=ticker_functions,
        time_zone=options.provided.scheduler.time_zone,
    )
    scheduler = providers.Resource(
        _scheduler,
        store=job_store,
        options=options.provided.scheduler,
        events=events,
        functions=ticker_functions,
        container=__self__,
        clock=clock,
    )


def add_tickerq(
    configure: Callable[[TickerQOptions], object] | None = None, *, functions: FunctionRegistry | None = None
) -> TickerQContainer:
    """Build a container, like .NET's ``services.AddTickerQ(options => ...)``.

    Without ``add_redis`` the container is the embedded default: the same
    scheduler API on one node with an in-memory job store.

    Args:
        configure: Called with a fresh ``TickerQOptions`` to fill in, e.g.
            ``options.add_redis(configuration="localhost:6379")``.
        functions: The ticker functions this node runs (default: those
            registered with ``@ticker_function``).

    Returns:
        The container. Call ``init_resources()`` to start the node and
        ``shutdown_resources()`` to stop it.

    Raises:
        ConfigurationError: An option is invalid, or Redis was added without a
            configuration string or client.
    """
    options = TickerQOptions()
    if configure is not None:
        configure(options)
    frozen = options.frozen_copy()
    kind = TickerQContainer if frozen.redis is not None else EmbeddedContainer
    container = kind(options=providers.Object(frozen))
    if functions is not None:
        container.ticker_functions.override(providers.Object(functions))
    return container  # type: ignore[return-value]
