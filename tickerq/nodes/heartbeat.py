"""The heartbeat thread: proves this node alive and finds the dead ones.

Every interval the node writes its heartbeat (one round trip). The one node
that takes the interval's scan lease also gets the dead nodes in that same
reply, hands each to the dead-node handlers (the scheduler registers "release
this node's jobs"), and drops from the registry those whose handlers all
succeeded. A lease can lapse, so two nodes may handle the same dead node at
once: handlers must be idempotent.

The first beat, written by :meth:`HeartbeatService.start` (or, when Redis is down
then, the first that succeeds, retried every ``retry_interval``), never scans:
handlers registered right after start-up still see the nodes that died before it.
Nor do the first beats after a failed one: when Redis was down (or restarted)
for longer than the heartbeat TTL, every node's heartbeat expired meanwhile, and
the first node back must not declare the others dead (and hand their running jobs
to someone else) before they had ``QUIET_BEATS_AFTER_OUTAGE`` intervals to beat again.

The handlers get tickerq's own dead nodes only (their work is in tickerq's store), also
those a TickerQ .NET node already removed from the registry. A dead .NET node is left to the
.NET survivors for a grace period, then removed by the scan (reported in ``NodesDead``).

The first successful beat also looks for another live process using this node's
identifier: it warns, or with ``refuse_duplicate`` makes :meth:`HeartbeatService.start`
raise ``ConfigurationError`` (the thread, when it makes that first beat, ends instead).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

import redis

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.dispatcher import DeferredPublisher, Dispatcher
from tickerq._runtime.outage import OutageTracker
from tickerq._runtime.service import Service
from tickerq._runtime.strand import Strand
from tickerq.errors import ConfigurationError, ShutdownError, TickerQError
from tickerq.events import EventHub, NodeHeartbeat, NodesDead
from tickerq.nodes.registry import Beat, NodeRegistry

__all__ = ["DeadNodeHandler", "HeartbeatService"]

log = logging.getLogger(__name__)

#: Called with a dead node's id; raising means "not handled, try again later".
DeadNodeHandler = Callable[[str], object]

#: The scan lease is a bit shorter than the interval, so that the first node
#: to beat in each interval finds it free.
_SCAN_LEASE_FRACTION = 0.8

#: Beats after a failed one that do not scan (the other nodes are reconnecting too,
#: and their heartbeats may have expired meanwhile: they are not dead).
QUIET_BEATS_AFTER_OUTAGE = 2


class HeartbeatService(Service):
    """Runs :meth:`NodeRegistry.beat` every interval on the service thread ``tickerq-heartbeat``.

    A runtime :class:`~tickerq._runtime.service.Service`: :meth:`start`, then
    :meth:`stop`, or :meth:`request_stop` and :meth:`wait_stopped` against a
    deadline (how the node runtime stops it, last of its services). Also a
    context manager.

    Args:
        registry: The node registry to beat into (on a client of its own: a
            tick in flight may be interrupted by ``stop()``).
        interval: Time between heartbeats.
        events: Where ``NodeHeartbeat`` and ``NodesDead`` are published.
        retry_interval: Time between attempts while Redis is unavailable
            (never longer than ``interval``).
        handlers: The dead-node handlers, shared with whoever registers them
            (the container shares the context's list).
        interrupt: Called by ``stop()`` to wake a tick blocked on a frozen
            server (closes the heartbeat's connection).
        on_failure: Called after a failed tick (e.g. to look for a new master).
        beat_on_start: Whether ``start()`` writes the first heartbeat itself.
        refuse_duplicate: Refuse to run when another live process beats under this
            node's identifier (else only warn).
        dispatcher: Where dead-node handlers and event subscribers run (user code
            never runs on the heartbeat thread, so a slow handler cannot delay a
            beat); events keep their order on a strand of it. Default: a
            one-worker dispatcher of its own, stopped with the service; a given
            one (the node runtime's) is not stopped here.
        remover: The registry that removes handled dead nodes, from the dispatcher
            (default ``registry``; the container passes one on the main pool, as
            the heartbeat's own connection is the heartbeat thread's).
        clock: Where the loop takes time from and sleeps on.
    """

    def __init__(
        self,
        registry: NodeRegistry,
        interval: timedelta,
        events: EventHub,
        *,
        retry_interval: timedelta = timedelta(seconds=5),
        handlers: list[DeadNodeHandler] | None = None,
        interrupt: Callable[[], object] | None = None,
        on_failure: Callable[[], object] | None = None,
        beat_on_start: bool = True,
        refuse_duplicate: bool = False,
        dispatcher: Dispatcher | None = None,
        remover: NodeRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__("tickerq-heartbeat", clock=clock)
        self.registry = registry
        self.interval = interval.total_seconds()
        self.retry_interval = min(retry_interval.total_seconds(), self.interval)
        self._scan_lease = interval * _SCAN_LEASE_FRACTION
        self._owns_dispatcher = dispatcher is None
        self._dispatcher = dispatcher if dispatcher is not None else Dispatcher("tickerq-heartbeat-callbacks")
        self._events = DeferredPublisher(events, Strand(self._dispatcher, "heartbeat events"))
        self._remover = remover if remover is not None else registry
        self._handling: set[str] = set()  # dead nodes whose handlers are queued or running
        self._handling_lock = threading.Lock()
        self._handlers = handlers if handlers is not None else []
        self._interrupt = interrupt
        self._on_failure = on_failure
        #: Whether ``start()`` writes the first heartbeat (the runtime sets it from its start-up check).
        self.beat_on_start = beat_on_start
        self._refuse_duplicate = refuse_duplicate
        self._joined = False  # True after this process's first successful beat
        self._refused: ConfigurationError | None = None
        self._quiet = 0  # successful beats to make before the next scan
        self._answered = False  # the last attempt got an answer: wait a whole interval
        self._waited = False  # the first iteration only waits (start() made the first attempt)
        self._outage = OutageTracker("heartbeat", log, self._events)
        self.last_beat: Beat | None = None

    def add_dead_node_handler(self, handler: DeadNodeHandler) -> None:
        """Call ``handler(node_id)`` for each dead node this node's scan finds.

        A node is removed from the registry only when every handler returned
        without raising; otherwise the next scan offers it again.
        """
        self._handlers.append(handler)

    def start(self) -> None:
        """Write the first heartbeat now (when Redis answers), then start the thread.

        Safe to call again; in a child forked after start, it starts a new thread.

        Raises:
            ConfigurationError: ``refuse_duplicate`` is set and another live process beats
                under this node's identifier.
        """
        if self.running:
            return
        if self.forked:
            self._joined = False  # a forked child is another process, with its own token
        self._refused = None
        if self._owns_dispatcher:
            self._dispatcher.start()
        # Not beating now (Redis was down at start-up) counts as a failed beat: the
        # thread tries again after the retry interval, not after a whole interval.
        self._answered = self.beat_on_start and self.tick(scan=False)
        self._quiet = 0 if self._answered else 1
        if self._refused is not None:
            raise self._refused
        self._waited = False
        super().start()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the thread (interrupting a tick blocked on a frozen server), until ``deadline``.

        A dispatcher of the service's own is stopped too; a shared one is its owner's.

        Returns:
            True when the thread has ended.
        """
        stopped = super().wait_stopped(deadline)
        if self._owns_dispatcher:
            self._dispatcher.request_stop()
            stopped = self._dispatcher.wait_stopped(deadline) and stopped
        return stopped

    def interrupt(self) -> None:
        """Close the heartbeat's connection, waking a tick blocked on a frozen server."""
        if self._interrupt is not None:
            self._interrupt()

    def run_once(self) -> float | None:
        """Wait out the interval after the last attempt, then beat (and scan once a beat succeeded)."""
        if self._waited:
            # The first beat that succeeds does not scan, also when it is not start()'s, nor
            # do the first ones after a failure.
            self._answered = self.tick(scan=self._quiet == 0)
            if not self._answered:
                self._quiet = max(self._quiet, QUIET_BEATS_AFTER_OUTAGE)
            elif self._quiet:
                self._quiet -= 1
            if self._refused is not None:
                self.request_stop()
                return None
        self._waited = True
        return self.interval if self._answered else self.retry_interval

    def tick(self, scan: bool = True) -> bool:
        """One heartbeat (and scan, if ``scan`` and this node gets the lease). Never raises.

        Returns:
            True when Redis answered.
        """
        try:
            first = not self._joined
            beat = self.registry.beat(
                self._scan_lease if scan else None,
                first=first,
                refuse_duplicate=first and self._refuse_duplicate,
            )
            self._joined = True
            self._outage.succeeded()
            self.last_beat = beat
            self._events.publish(
                NodeHeartbeat(
                    node=self.registry.node_id, timestamp_ms=beat.timestamp_ms, registered=beat.registered
                )
            )
            if beat.dead or beat.foreign_removed:
                self._dispatch_dead(beat.dead or (), beat.foreign_removed)
        except ConfigurationError as exc:  # refused: another live process uses our node identifier
            self._outage.succeeded()
            self._refused = exc
            log.error("%s", exc)
            return False
        except Exception as exc:  # a tick never ends the thread: every failure is ridden out
            if self.stopping:  # interrupted by our own stop: not an outage
                log.debug("heartbeat: stopped mid-beat: %s", exc)
                return False
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: Exception) -> None:
        self._outage.failed(exc, unexpected=not isinstance(exc, TickerQError | redis.RedisError))
        if self._on_failure is not None:
            try:
                self._on_failure()
            except Exception:
                log.debug("heartbeat failure hook failed", exc_info=True)

    def _dispatch_dead(self, dead: tuple[str, ...], foreign_removed: tuple[str, ...]) -> None:
        """Hand the scan's dead nodes to the dispatcher: handlers never run on this thread."""
        with self._handling_lock:
            fresh = tuple(node for node in dead if node not in self._handling)  # not offered twice at once
            self._handling.update(fresh)
        if not fresh and not foreign_removed:
            return
        try:
            self._dispatcher.submit(
                self._handle_dead,
                fresh,
                foreign_removed,
                description="handling dead nodes " + ", ".join(fresh),
            )
        except ShutdownError:
            with self._handling_lock:
                self._handling.difference_update(fresh)

    def _handle_dead(self, dead: tuple[str, ...], foreign_removed: tuple[str, ...] = ()) -> None:
        """On the dispatcher: run the handlers, remove the handled nodes, publish ``NodesDead``."""
        try:
            handled = [node for node in dead if self._run_handlers(node)]
            removed = [*(self._remover.remove(handled) if handled else []), *foreign_removed]
        finally:
            with self._handling_lock:
                self._handling.difference_update(dead)
        log.info(
            "dead nodes found: %s; removed from the registry: %s",
            ", ".join((*dead, *foreign_removed)),
            ", ".join(removed) or "none",
        )
        self._events.hub.publish(
            NodesDead(
                detected_by=self.registry.node_id, nodes=(*dead, *foreign_removed), removed=tuple(removed)
            )
        )

    def _run_handlers(self, node: str) -> bool:
        ok = True
        for handler in list(self._handlers):
            try:
                handler(node)
            except Exception:
                log.exception("dead-node handler %r failed for node %s; it stays registered", handler, node)
                ok = False
        return ok

    def __repr__(self) -> str:
        node = self.registry.node_id
        return f"HeartbeatService(node={node!r}, interval={self.interval}s, running={self.running})"
