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

from collections.abc import Callable

from dependency_injector import containers, providers

from tickerq.events import EventHub
from tickerq.options import RedisOptions, SchedulerOptions, TickerQOptions
from tickerq.redis.connection import RedisConnections, open_connections
from tickerq.redis.context import RedisContext
from tickerq.redis.election import LeaderElection
from tickerq.redis.heartbeat import HeartbeatService

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
    """

    options = providers.Dependency(instance_of=TickerQOptions)
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


def add_tickerq(configure: Callable[[TickerQOptions], object] | None = None) -> TickerQContainer:
    """Build a container, like .NET's ``services.AddTickerQ(options => ...)``.

    Args:
        configure: Called with a fresh ``TickerQOptions`` to fill in, e.g.
            ``options.add_redis(configuration="localhost:6379")``.

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
    container = TickerQContainer(options=providers.Object(options.frozen_copy()))
    return container
