"""The dependency-injection container: providers only, no domain logic.

``add_tickerq(configure)`` mirrors .NET's ``services.AddTickerQ(options => ...)``:
the callback fills a ``TickerQOptions``, which is validated and frozen, and the
returned container wires the Redis connections (a Resource), the
``RedisContext`` (a Singleton) and the heartbeat thread (a Resource).

Shutdown order matters: dependency-injector shuts a Resource down before the
Resources it *directly* depends on, so the heartbeat takes the connections as
an argument of its own (not only through the context): the thread stops
before the pools close.
"""

from __future__ import annotations

from collections.abc import Callable

from dependency_injector import containers, providers

from tickerq.events import EventHub
from tickerq.options import RedisOptions, TickerQOptions
from tickerq.redis.connection import RedisConnections, open_connections
from tickerq.redis.context import RedisContext
from tickerq.redis.heartbeat import HeartbeatService

__all__ = ["TickerQContainer", "add_tickerq"]


def _heartbeat(
    context: RedisContext, connections: RedisConnections, options: RedisOptions, events: EventHub
) -> HeartbeatService:
    # ``connections`` is taken for the shutdown order (see the module docstring).
    assert context.connections is connections
    return HeartbeatService(
        context.registry,
        options.node_heartbeat_interval,
        events,
        retry_interval=options.outage_retry_interval,
    )


class TickerQContainer(containers.DeclarativeContainer):
    """Providers for one tickerq node.

    ``init_resources()`` connects (raising ``ConnectionFailedError`` if Redis is
    unreachable and ``abort_on_connect_fail`` is set), writes the first
    heartbeat and starts the heartbeat thread. ``shutdown_resources()`` stops
    every thread, then closes the pools tickerq created.
    """

    options = providers.Dependency(instance_of=TickerQOptions)
    events = providers.Singleton(EventHub)
    redis_connections = providers.Resource(open_connections, options=options.provided.redis)
    redis_context = providers.Singleton(
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
