"""The heartbeat thread: proves this node alive and finds the dead ones.

Every interval the node writes its heartbeat (one round trip). The one node
that takes the interval's scan lease also gets the dead nodes in that same
reply, hands each to the dead-node handlers (the scheduler registers "release
this node's jobs"), and drops from the registry those whose handlers all
succeeded. A lease can lapse, so two nodes may handle the same dead node at
once: handlers must be idempotent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType

from tickerq.errors import KeyTypeError, RedisUnavailableError
from tickerq.events import EventHub, NodeHeartbeat, NodesDead
from tickerq.redis.outage import OutageTracker
from tickerq.redis.registry import Beat, NodeRegistry

__all__ = ["DeadNodeHandler", "HeartbeatService"]

log = logging.getLogger(__name__)

#: Called with a dead node's id; raising means "not handled, try again later".
DeadNodeHandler = Callable[[str], object]

#: The scan lease is a bit shorter than the interval, so that the first node
#: to beat in each interval finds it free.
_SCAN_LEASE_FRACTION = 0.8


class HeartbeatService:
    """Runs :meth:`NodeRegistry.beat` every interval on a daemon thread.

    Use it as a context manager (that is how the container runs it) or call
    :meth:`start` and :meth:`stop`.

    Args:
        registry: The node registry to beat into.
        interval: Time between heartbeats.
        events: Where ``NodeHeartbeat`` and ``NodesDead`` are published.
        retry_interval: Time between attempts while Redis is unavailable
            (never longer than ``interval``).
    """

    def __init__(
        self,
        registry: NodeRegistry,
        interval: timedelta,
        events: EventHub,
        *,
        retry_interval: timedelta = timedelta(seconds=5),
    ) -> None:
        self.registry = registry
        self.interval = interval.total_seconds()
        self.retry_interval = min(retry_interval.total_seconds(), self.interval)
        self._scan_lease = interval * _SCAN_LEASE_FRACTION
        self._events = events
        self._handlers: list[DeadNodeHandler] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._outage = OutageTracker("heartbeat", log, events)
        self.last_beat: Beat | None = None

    def add_dead_node_handler(self, handler: DeadNodeHandler) -> None:
        """Call ``handler(node_id)`` for each dead node this node's scan finds.

        A node is removed from the registry only when every handler returned
        without raising; otherwise the next scan offers it again.
        """
        self._handlers.append(handler)

    @property
    def running(self) -> bool:
        """True while the thread runs in this process (False in a forked child)."""
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Write the first heartbeat now (when Redis answers), then start the thread.

        Safe to call again; in a child forked after start, it starts a new thread.
        """
        if self.running:
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        self.tick()
        self._thread = threading.Thread(target=self._run, name="tickerq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for it. Safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout)

    def tick(self) -> bool:
        """One heartbeat (and scan, if this node gets the lease). Never raises.

        Returns:
            True when Redis answered.
        """
        try:
            beat = self.registry.beat(self._scan_lease)
        except (RedisUnavailableError, KeyTypeError) as exc:
            self._outage.failed(exc)
            return False
        except Exception:
            log.exception("heartbeat failed unexpectedly")
            return False
        self._outage.succeeded()
        self.last_beat = beat
        node = self.registry.node_id
        self._events.publish(
            NodeHeartbeat(node=node, timestamp_ms=beat.timestamp_ms, registered=beat.registered)
        )
        if beat.dead:
            self._handle_dead(beat.dead)
        return True

    def _handle_dead(self, dead: tuple[str, ...]) -> None:
        handled = [node for node in dead if self._run_handlers(node)]
        removed: list[str] = []
        if handled:
            try:
                removed = self.registry.remove(handled)
            except (RedisUnavailableError, KeyTypeError) as exc:
                self._outage.failed(exc)
        log.info(
            "dead nodes found: %s; removed from the registry: %s",
            ", ".join(dead),
            ", ".join(removed) or "none",
        )
        self._events.publish(NodesDead(detected_by=self.registry.node_id, nodes=dead, removed=tuple(removed)))

    def _run_handlers(self, node: str) -> bool:
        ok = True
        for handler in self._handlers:
            try:
                handler(node)
            except Exception:
                log.exception("dead-node handler %r failed for node %s; it stays registered", handler, node)
                ok = False
        return ok

    def _run(self) -> None:
        delay = self.retry_interval if self._outage.in_outage else self.interval
        while not self._stop.wait(delay):
            ok = self.tick()
            delay = self.interval if ok else self.retry_interval

    def __enter__(self) -> HeartbeatService:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        node = self.registry.node_id
        return f"HeartbeatService(node={node!r}, interval={self.interval}s, running={self.running})"
