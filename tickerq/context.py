"""``RedisContext``: the one object applications use for multi-node coordination.

The node runtime (:mod:`tickerq._runtime.node`) builds one per node: every
``container.redis_context()`` returns the same object until
``shutdown_resources()`` closes it (a later ``init_resources()`` builds a fresh
one on fresh connections). It does no I/O when built and starts no thread by
itself: the heartbeat is the runtime's; the lock watchdog and elections start
when first needed, and the runtime stops them in its shutdown order (elections
with the other services, then the watchdog and blocked callers; a context used
on its own stops them on :meth:`RedisContext.close`, or when its connections close).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TypeVar

import redis

from tickerq._redis.connection import RedisConnections
from tickerq._redis.keys import Keys
from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import Dispatcher
from tickerq.cache.cache import DistributedCache
from tickerq.durations import Duration
from tickerq.election.election import LeaderElection
from tickerq.election.election_timings import DEFAULT_LEASE, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD
from tickerq.events import EventHub
from tickerq.locks.lock import DEFAULT_TTL, Lease, Lock, LockManager
from tickerq.locks.lock_calls import retries_of
from tickerq.nodes.heartbeat import DeadNodeHandler
from tickerq.nodes.registry import NodeHealthStatus, NodeRegistry
from tickerq.options import RedisOptions

__all__ = ["RedisContext"]

T = TypeVar("T")


class RedisContext:
    """Node registry, dead-node detection, cache, locks and elections on Redis.

    Args:
        connections: The clients (owned by the container, or built by the caller).
        options: Frozen Redis options.
        node_id: This node's identifier.
        events: The in-process event hub.
        dispatcher: Where elections started from this context run their callbacks
            (the node runtime's shared one); None: each election its own.
        clock: Where elections take time from.
    """

    def __init__(
        self,
        connections: RedisConnections,
        options: RedisOptions,
        node_id: str,
        events: EventHub,
        *,
        dispatcher: Dispatcher | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.connections = connections
        self.dispatcher = dispatcher
        self.clock = clock
        self.options = options
        self.node_id = node_id
        self.events = events
        self.keys = Keys(options.instance_name)
        self.registry = NodeRegistry(
            connections.client,
            self.keys,
            node_id,
            options.heartbeat_ttl,
            interval=options.node_heartbeat_interval,
            foreign_dead_node_grace=options.foreign_grace,
        )
        self.dead_node_handlers: list[DeadNodeHandler] = []
        self._cache = DistributedCache(
            connections.fail_fast, self.keys, operation_timeout=options.sync_timeout
        )
        # Locks use the retry-free pool, so that a new connection to a hung server gives up
        # within one sync_timeout too; connection errors are still retried as the client's are.
        self._locks = LockManager(
            connections.fail_fast, connections.watchdog, self.keys, node_id,
            retries=retries_of(connections.client),
        )  # fmt: skip
        # Weak: an observer created per request must not pile up; a running
        # election is kept alive by its own thread.
        self._elections: weakref.WeakSet[LeaderElection] = weakref.WeakSet()
        self._elections_lock = threading.Lock()
        connections.add_close_hook(self.close)

    @property
    def client(self) -> redis.Redis:
        """The application's redis-py client (owned by the container)."""
        return self.connections.client

    # -- nodes -----------------------------------------------------------------

    def notify_node_alive(self) -> None:
        """Write this node's heartbeat and registry entry, with TTLs, in one round trip.

        Raises:
            RedisUnavailableError: Redis did not answer.
            KeyTypeError: The registry key holds another Redis type.
        """
        self.registry.beat()

    def get_registered_nodes(self) -> list[str]:
        """The node ids in the registry, in registration order.

        Tickerq nodes the registry lacks (a TickerQ .NET node's rewrite dropped them, or they
        died and no tickerq node has handled them yet) follow.
        """
        return list(self.registry.registered())

    def get_dead_nodes(self) -> list[str]:
        """Registered nodes whose heartbeat key is gone (one round trip; changes nothing)."""
        return list(self.registry.dead())

    def get_node_health(self) -> NodeHealthStatus:
        """Total, dead and healthy node counts, with the ids behind them (one round trip)."""
        return self.registry.health()

    def add_dead_node_handler(self, handler: DeadNodeHandler) -> None:
        """Call ``handler(node_id)`` for each dead node this node's heartbeat scan finds.

        Register handlers before ``init_resources()`` (resolving the context
        starts nothing) or right after it: the first heartbeat never scans. A
        node is removed from the registry only when every handler returned
        without raising; otherwise a later scan offers it again. Handlers must
        be idempotent: two nodes may handle the same dead node.
        """
        self.dead_node_handlers.append(handler)

    def remove_nodes(self, node_ids: Iterable[str]) -> list[str]:
        """Atomically drop nodes from the registry, but only those still without a heartbeat.

        Returns:
            The ids actually removed.
        """
        return self.registry.remove(node_ids)

    # -- cache -----------------------------------------------------------------

    def get_or_set_array(
        self,
        cache_key: str,
        factory: Callable[[], list[T] | None],
        expiration: Duration | None = None,
        *,
        item_type: type[T] | None = None,
    ) -> list[T] | None:
        """Return the cached list at ``{instance}{cache_key}``, or compute and store it.

        ``factory`` runs once per miss across threads, processes and nodes; its
        result is stored for ``expiration`` (``None`` is returned, not stored).
        When Redis is down or slow the call fails open: it returns
        ``factory()``'s result within about one ``sync_timeout``.

        Raises:
            InvalidKeyError: ``cache_key`` is empty or uses a reserved prefix.
        """
        return self._cache.get_or_set_array(cache_key, factory, expiration, item_type=item_type)

    def invalidate(self, cache_key: str) -> bool:
        """Remove a cache entry. Returns whether one existed."""
        return self._cache.invalidate(cache_key)

    # -- locks and elections ---------------------------------------------------

    def lock(
        self,
        name: str,
        ttl: Duration = DEFAULT_TTL,
        *,
        blocking: bool = True,
        wait_timeout: Duration | None = None,
        auto_renew: bool = True,
        on_lost: Callable[[Lease], None] | None = None,
        reentrant: bool = False,
    ) -> Lock:
        """A distributed lock on ``{instance}lock:{name}``; see :class:`tickerq.locks.lock.Lock`."""
        return self._locks.lock(
            name,
            ttl,
            blocking=blocking,
            wait_timeout=wait_timeout,
            auto_renew=auto_renew,
            on_lost=on_lost,
            reentrant=reentrant,
        )

    def leader_election(
        self,
        name: str,
        *,
        lease: Duration = DEFAULT_LEASE,
        renew_deadline: Duration = DEFAULT_RENEW_DEADLINE,
        retry_period: Duration = DEFAULT_RETRY_PERIOD,
        on_elected: Callable[[int, threading.Event], None] | None = None,
        on_demoted: Callable[[int], None] | None = None,
        on_new_leader: Callable[[str | None], None] | None = None,
    ) -> LeaderElection:
        """A leader election among the nodes; see :class:`tickerq.election.election.LeaderElection`.

        Nothing runs until ``start()``; an election never started only observes
        (``leader()``). Elections still alive when the context closes are stopped.

        Raises:
            ConfigurationError: The timings do not satisfy
                ``lease > renew_deadline > 1.2 x retry_period``.
        """
        election = LeaderElection(
            self.connections.client,
            self.keys,
            self.node_id,
            name,
            lease=lease,
            renew_deadline=renew_deadline,
            retry_period=retry_period,
            on_elected=on_elected,
            on_demoted=on_demoted,
            on_new_leader=on_new_leader,
            events=self.events,
            clients=self.connections,
            dispatcher=self.dispatcher,
            clock=self.clock,
        )
        with self._elections_lock:
            self._elections.add(election)
        return election

    def request_stop(self) -> None:
        """Tell every election started from this context to stop (no waiting); see :meth:`wait_stopped`."""
        with self._elections_lock:
            elections = list(self._elections)
        for election in elections:
            election.request_stop()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the elections told to stop by :meth:`request_stop`, until ``deadline``.

        ``deadline`` is a ``time.monotonic()`` reading.

        Returns:
            Whether every election's threads ended in time.
        """
        with self._elections_lock:
            elections = list(self._elections)
            self._elections.clear()
        ended = [election.wait_stopped(max(0.0, deadline - time.monotonic())) for election in elections]
        return all(ended)

    def release_waiters(self, deadline: float) -> None:
        """Stop the lock watchdog and release callers blocked here with ``ShutdownError``.

        Threads waiting in ``Lock.acquire()`` or for another caller's cache
        computation raise :class:`~tickerq.errors.ShutdownError` at once.
        """
        self._cache.close()
        self._locks.close(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop every election started from this context and the lock watchdog; release waiters.

        The elections are all told to stop first, then waited for against one
        deadline, so closing takes as long as the slowest of them (within one
        call timeout, 0.5 s, while Redis hangs), not their sum.
        """
        self.request_stop()
        deadline = time.monotonic() + 2.0
        self.wait_stopped(deadline)
        self.release_waiters(deadline)

    def __enter__(self) -> RedisContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        instance = self.options.instance_name
        return f"RedisContext(node={self.node_id!r}, instance={instance!r}, {self.connections!r})"
