"""The scheduler as the node runtime runs it: the executor loop, its wake-ups, its store wiring.

A :class:`SchedulerRunner` puts together what one node needs to run jobs: the
:class:`~tickerq.scheduler.executor.SchedulerService` on a store of its own (a
Redis store gets its own small pool, so that stopping can break a call blocked
on a frozen server), the :class:`~tickerq.scheduler.wake.WakeSubscriber` for a
Redis store (or the memory store's wake listener), and the dead-node handler
that hands a dead node's jobs back. It has the runtime's service contract
(start, request stop, wait stopped against a deadline), so the node runtime
stops it first, while the heartbeat still keeps the node alive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from tickerq._redis.connection import RedisConnections
from tickerq._redis.keys import Keys
from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq.events import EventHub, Publisher
from tickerq.nodes.heartbeat import DeadNodeHandler
from tickerq.options import SchedulerOptions
from tickerq.scheduler.executor import SchedulerService
from tickerq.scheduler.function import FunctionRegistry
from tickerq.scheduler.memory_store import MemoryJobStore
from tickerq.scheduler.redis_store import RedisJobStore
from tickerq.scheduler.store import JobStore
from tickerq.scheduler.wake import WakeSubscriber

__all__ = ["SchedulerRunner"]

log = logging.getLogger(__name__)

#: Size of the executor loop's own pool.
_POOL_SIZE = 2

#: Connect and reply timeout of the wake subscription's own connection (s). redis-py's
#: PubSub reconnects inside a failed read; on a frozen server that reconnect blocks for
#: one such timeout, which bounds how long stopping the subscriber can take.
_WAKE_TIMEOUT = 0.5


class SchedulerRunner:
    """Runs this node's scheduler: the executor loop and its wake-ups.

    Nothing runs, and no pool is taken, until :meth:`start`.

    Args:
        store: The job store (a Redis store is re-made on a pool of its own at start).
        options: The scheduler options.
        functions: The functions this node runs (snapshotted at start).
        events: Where job lifecycle events go (published on the job workers).
        service_events: Where the loops' own events (outages) go: never published
            on a service thread, so the runtime passes a deferred publisher.
        container: Handed to job functions as ``context.container``.
        clients: Where a Redis store's own pool comes from (it follows a failover
            and closes with the node's pools); with ``keys``.
        keys: The Redis store's key names (to re-make it on its own pool).
        dead_node_handlers: The heartbeat's handler list: the runner adds
            "hand back this dead node's jobs" while it runs.
        clock: Where the loops take time from.
    """

    def __init__(
        self,
        store: JobStore,
        options: SchedulerOptions,
        functions: FunctionRegistry,
        *,
        events: EventHub,
        service_events: Publisher | None = None,
        container: Any = None,
        clients: RedisConnections | None = None,
        keys: Keys | None = None,
        dead_node_handlers: list[DeadNodeHandler] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.options = options
        self.functions = functions
        self.events = events
        self.service_events = service_events
        self.container = container
        self.clients = clients
        self.keys = keys
        self._clients: list[redis.Redis] = []  # the loops' own, from ``clients``
        self.dead_node_handlers = dead_node_handlers
        self.clock = clock
        self.service: SchedulerService | None = None
        self.wake: WakeSubscriber | None = None
        self._store: JobStore = store
        self._release_node: Callable[[str], object] | None = None

    @property
    def running(self) -> bool:
        """True while the executor loop runs in this process."""
        return self.service is not None and self.service.running

    @property
    def running_jobs(self) -> int:
        """How many attempts run on this node now."""
        return 0 if self.service is None else self.service.running_jobs

    @property
    def grace(self) -> float:
        """How long stopping may take beyond the loops themselves: ``shutdown_timeout`` while jobs run."""
        return self.options.shutdown_timeout.total_seconds() if self.running_jobs else 0.0

    def start(self) -> None:
        """Start the loop and its wake-ups; a no-op while running."""
        if self.running:
            return
        store = wake_store = self.store
        interrupt: Callable[[], object] | None = None
        wake_interrupt: Callable[[], object] | None = None
        if isinstance(store, RedisJobStore) and self.clients is not None and self.keys is not None:
            client = self.clients.derive_client(_POOL_SIZE)
            wake_client = self.clients.derive_client(1, _WAKE_TIMEOUT)
            self._clients = [client, wake_client]
            interrupt, wake_interrupt = (
                client.connection_pool.disconnect,
                wake_client.connection_pool.disconnect,
            )
            store = RedisJobStore(client, self.keys, retention=self.options.job_retention)
            wake_store = RedisJobStore(wake_client, self.keys, retention=self.options.job_retention)
        self._store = store
        service = SchedulerService(
            store,
            self.functions.snapshot(),
            self.options.node_identifier,
            self.options,
            container=self.container,
            events=self.events,
            outage_events=self.service_events,
            clock=self.clock,
            interrupt=interrupt,
        )
        wake: WakeSubscriber | None = None
        if isinstance(wake_store, RedisJobStore):
            events = self.service_events if self.service_events is not None else self.events
            wake = WakeSubscriber(
                wake_store, service.on_store_wake, events=events, interrupt=wake_interrupt, clock=self.clock
            )
        elif isinstance(store, MemoryJobStore):
            store.add_wake_listener(service.on_store_wake)
        if self.dead_node_handlers is not None:
            self._release_node = store.release_node
            self.dead_node_handlers.append(store.release_node)
        self.service, self.wake = service, wake
        service.start()
        if wake is not None:
            wake.start()

    def request_stop(self) -> None:
        """Stop claiming and waking; running jobs get ``shutdown_timeout`` to finish. Returns at once."""
        if self.wake is not None:
            self.wake.request_stop()
        if self.service is not None:
            self.service.request_stop()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the loops, until ``deadline`` (``time.monotonic()``).

        Jobs still running at ``shutdown_timeout`` are cancelled and handed back
        by the loop before it ends.

        Returns:
            True when both loops ended in time.
        """
        stopped = True
        if self.wake is not None:
            stopped = self.wake.wait_stopped(deadline)
        if self.service is not None:
            stopped = self.service.wait_stopped(deadline) and stopped
            if isinstance(self._store, MemoryJobStore):
                self._store.remove_wake_listener(self.service.on_store_wake)
        handlers, release = self.dead_node_handlers, self._release_node
        if handlers is not None and release is not None and release in handlers:
            handlers.remove(release)
        self._release_node = None
        clients, self._clients = self._clients, []
        for client in clients:
            if self.clients is not None:
                self.clients.release_client(client)
        self._store = self.store
        return stopped

    def stop(self, timeout: float) -> bool:
        """:meth:`request_stop`, then :meth:`wait_stopped` within ``timeout`` seconds plus the grace."""
        self.request_stop()
        return self.wait_stopped(time.monotonic() + timeout + self.grace)

    def __repr__(self) -> str:
        return f"SchedulerRunner(node={self.options.node_identifier!r}, running={self.running})"
