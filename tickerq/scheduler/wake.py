"""The wake subscriber: a small service that turns the store's pub/sub into wake-ups.

Any node that schedules work (or returns it: retries, hand-backs, dead-node
releases) makes the Redis store PUBLISH the earliest due time. This service
(``tickerq-scheduler-wake``) listens on its own connection and wakes the
scheduler loop, so a job due now starts within milliseconds instead of a
polling interval. After a lost subscription it wakes the loop anyway: a
message may have been missed while it was away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis.client

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock
from tickerq._runtime.outage import OutageTracker
from tickerq._runtime.service import Service
from tickerq.events import Publisher
from tickerq.scheduler.redis_store import RedisJobStore, parse_wake

__all__ = ["WakeSubscriber"]

log = logging.getLogger(__name__)

#: How long one read waits for a message: a stop is noticed within this (closing the
#: subscription from another thread does not wake a blocked read).
READ_TIMEOUT = 0.2


class WakeSubscriber(Service):
    """Calls ``wake(due_ms)`` for every wake message of ``store``.

    Args:
        store: The Redis job store whose channel to follow.
        wake: What to call (the scheduler's ``on_store_wake``).
        events: Where outage events go.
        retry_interval: Time between attempts to subscribe again after a failure.
        interrupt: Breaks a call blocked on a frozen server (closes the pool's connections).
    """

    def __init__(
        self,
        store: RedisJobStore,
        wake: Callable[[int | None], object],
        *,
        events: Publisher | None = None,
        retry_interval: float = 1.0,
        interrupt: Callable[[], object] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__("tickerq-scheduler-wake", clock=clock)
        self.store = store
        self._notify = wake
        self._retry_interval = retry_interval
        self._pubsub: redis.client.PubSub | None = None
        self._interrupt = interrupt
        self._outage = OutageTracker("scheduler wake-ups", log, events)

    def run_once(self) -> float | None:
        """Read one message (or time out) and pass it on."""
        if self._pubsub is None:
            self._pubsub = self.store.subscribe_wake()
            self._outage.succeeded()
            self._notify(None)  # messages published while we were not listening are not replayed
        message: Any = self._pubsub.get_message(timeout=READ_TIMEOUT)
        due = parse_wake(message)
        if due is not None:
            self._notify(due)
        return 0.0

    def failed(self, exc: Exception) -> float | None:
        """The subscription broke: drop it, retry shortly."""
        if self.stopping:  # interrupted by our own stop: not an outage
            log.debug("%s: stopped mid-read: %s", self.name, exc)
            self._close()
            return None
        self._outage.failed(exc)
        self._close()
        return self._retry_interval

    def interrupt(self) -> None:
        """Break a call in flight by closing the subscription (and the pool's connections)."""
        self._close()
        if self._interrupt is not None:
            self._interrupt()

    def finalize(self) -> None:
        """Unsubscribe and give the connection back."""
        self._close()

    def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                log.debug("closing the wake subscription failed", exc_info=True)
