"""A small in-process event hub.

Heartbeats, dead nodes, leadership changes and (later) ticker lifecycle are
published here; a dashboard, metrics exporter or log subscribes. A subscriber
that raises is logged and never stops the publisher, which is usually a
background thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import attrs

__all__ = [
    "EventHub",
    "LeaderChanged",
    "LeadershipAcquired",
    "LeadershipLost",
    "NodeHeartbeat",
    "NodesDead",
    "Publisher",
    "RedisConnectionLost",
    "RedisConnectionRestored",
    "TickerFailed",
    "TickerFinished",
    "TickerQueued",
    "TickerStarted",
]

log = logging.getLogger(__name__)

E = TypeVar("E")


@attrs.frozen(kw_only=True)
class NodeHeartbeat:
    """This node wrote its heartbeat. ``timestamp_ms`` is Redis server time."""

    node: str
    timestamp_ms: int
    registered: bool  #: True when this beat added the node to the registry


@attrs.frozen(kw_only=True)
class NodesDead:
    """The dead-node scan found nodes whose heartbeat key is gone.

    ``removed`` are those whose dead-node handlers all succeeded and that were
    then dropped from the registry.
    """

    detected_by: str
    nodes: tuple[str, ...]
    removed: tuple[str, ...]


@attrs.frozen(kw_only=True)
class RedisConnectionLost:
    """A background loop lost Redis (published once per outage)."""

    source: str
    error: str


@attrs.frozen(kw_only=True)
class RedisConnectionRestored:
    """A background loop reached Redis again after an outage."""

    source: str
    outage_seconds: float


@attrs.frozen(kw_only=True)
class LeadershipAcquired:
    """This node became leader of ``election`` for ``term``."""

    election: str
    node: str
    term: int


@attrs.frozen(kw_only=True)
class LeadershipLost:
    """This node stopped leading ``election`` (resigned, demoted or stopped)."""

    election: str
    node: str
    term: int
    reason: str


@attrs.frozen(kw_only=True)
class LeaderChanged:
    """The observed leader of ``election`` changed (``leader`` may be None)."""

    election: str
    leader: str | None
    term: int


@attrs.frozen(kw_only=True)
class TickerQueued:
    """``node`` claimed job ``job_id`` (status QUEUED) and is about to start it."""

    job_id: str
    function: str
    node: str
    scheduled_for: datetime


@attrs.frozen(kw_only=True)
class TickerStarted:
    """An attempt of job ``job_id`` started on ``node`` (status IN_PROGRESS)."""

    job_id: str
    function: str
    node: str
    fence: int
    retry_count: int
    is_rerun: bool


@attrs.frozen(kw_only=True)
class TickerFinished:
    """An attempt ended without an exception; ``status`` is ``"Done"`` or ``"Cancelled"``."""

    job_id: str
    function: str
    node: str
    status: str
    elapsed: timedelta


@attrs.frozen(kw_only=True)
class TickerFailed:
    """An attempt raised; ``will_retry`` tells whether another attempt is scheduled."""

    job_id: str
    function: str
    node: str
    error: str
    retry_count: int  #: failed attempts, this one included
    will_retry: bool
    elapsed: timedelta


class Publisher(Protocol):
    """Anything events can be published to: an :class:`EventHub`, or one deferred to a dispatcher."""

    def publish(self, event: object) -> None:
        """Deliver or queue ``event``."""
        ...


class EventHub:
    """Synchronous publish/subscribe by event type, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[type[Any], tuple[Callable[[Any], None], ...]] = {}

    def subscribe(self, event_type: type[E], callback: Callable[[E], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every published event of ``event_type``.

        Subscribing to ``object`` receives every event.

        Returns:
            A function that removes this subscription (safe to call twice).
        """
        with self._lock:
            self._subscribers[event_type] = (*self._subscribers.get(event_type, ()), callback)

        def unsubscribe() -> None:
            with self._lock:
                current = self._subscribers.get(event_type, ())
                self._subscribers[event_type] = tuple(cb for cb in current if cb is not callback)

        return unsubscribe

    def publish(self, event: object) -> None:
        """Deliver ``event`` to its subscribers on the calling thread.

        A subscriber that raises is logged; the others still run and the
        publisher never sees the exception.
        """
        for event_type in type(event).__mro__:
            for callback in self._subscribers.get(event_type, ()):
                try:
                    callback(event)
                except Exception:
                    log.exception("event subscriber %r failed on %r", callback, event)
