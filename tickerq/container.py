"""The dependency-injection container: providers only, no domain logic.

``add_tickerq(configure)`` mirrors .NET's ``services.AddTickerQ(options => ...)``:
the callback fills a ``TickerQOptions``, which is validated and frozen, and the
returned container provides the node.

Two Resources hold one :class:`~tickerq._runtime.node.NodeRuntime`, the one
owner of the node's pools, user-code dispatcher and background services:
``node`` is the runtime as built (resolving ``redis_context()`` builds it and
starts nothing), and ``node_runtime`` is the same runtime started, which
``init_resources()`` starts and ``shutdown_resources()`` stops in the runtime's
stated order against one deadline (see :mod:`tickerq._runtime.node`).
dependency-injector shuts ``node_runtime`` down before ``node``, whose own
shutdown then only closes the pools of a node that was built but never started.
Neither closes anything when merely garbage-collected: a context stays usable
for as long as anything holds it. The wiring itself lives in :mod:`tickerq._node`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NoReturn

from dependency_injector import containers, providers

from tickerq._node import (
    build_embedded_node,
    build_redis_node,
    built_node,
    no_election_without_redis,
    running_node,
)
from tickerq._runtime.clock import SYSTEM_CLOCK
from tickerq.errors import ConfigurationError
from tickerq.events import EventHub
from tickerq.options import TickerQOptions
from tickerq.scheduler.function import DEFAULT_REGISTRY, FunctionRegistry
from tickerq.scheduler.manager import TickerManager
from tickerq.scheduler.memory_store import MemoryJobStore

__all__ = ["TickerQContainer", "add_tickerq"]


def _redis_not_configured(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise ConfigurationError(
        "Redis is not configured: call options.add_redis(...) in the add_tickerq callback "
        "(without it, the scheduler runs on one node with an in-memory store)"
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
    node = providers.Resource(
        built_node,
        runtime=providers.Factory(
            build_redis_node,
            options=options,
            events=events,
            functions=ticker_functions,
            container=__self__,
            clock=clock,
        ),
    )
    node_runtime = providers.Resource(running_node, runtime=node)
    redis_connections = providers.Callable(operator.attrgetter("connections"), node)
    redis_context = providers.Callable(operator.attrgetter("context"), node)
    job_store = providers.Callable(operator.attrgetter("job_store"), node)
    heartbeat = providers.Callable(operator.attrgetter("heartbeat"), node_runtime)
    leader_election = providers.Callable(operator.attrgetter("election"), node_runtime)
    scheduler = providers.Callable(operator.attrgetter("scheduler_service"), node_runtime)
    ticker_manager = providers.Factory(
        TickerManager,
        store=job_store,
        registry=ticker_functions,
        time_zone=options.provided.scheduler.time_zone,
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
    job_store = providers.Singleton(
        MemoryJobStore, clock=clock, retention=options.provided.scheduler.job_retention
    )
    node = providers.Resource(
        built_node,
        runtime=providers.Factory(
            build_embedded_node,
            options=options,
            store=job_store,
            events=events,
            functions=ticker_functions,
            container=__self__,
            clock=clock,
        ),
    )
    node_runtime = providers.Resource(running_node, runtime=node)
    leader_election = providers.Callable(no_election_without_redis, options=options)
    scheduler = providers.Callable(operator.attrgetter("scheduler_service"), node_runtime)
    ticker_manager = providers.Factory(
        TickerManager,
        store=job_store,
        registry=ticker_functions,
        time_zone=options.provided.scheduler.time_zone,
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
