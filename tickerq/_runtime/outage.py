"""Log a Redis outage once, not once per tick, and its end."""

from __future__ import annotations

import logging
import time

from tickerq.events import Publisher, RedisConnectionLost, RedisConnectionRestored

__all__ = ["OutageTracker"]


class OutageTracker:
    """Remembers whether a background loop is in an outage.

    Args:
        source: The loop's name, for logs and events.
        logger: Where to log.
        events: Where to publish connection lost/restored events.
    """

    def __init__(self, source: str, logger: logging.Logger, events: Publisher | None = None) -> None:
        self.source = source
        self._log = logger
        self._events = events
        self._since: float | None = None

    @property
    def in_outage(self) -> bool:
        """True between a failure and the next success."""
        return self._since is not None

    def failed(self, error: BaseException, *, unexpected: bool = False) -> None:
        """Record a failure; only the first of an outage is logged as a warning.

        Args:
            error: What failed.
            unexpected: Not a Redis error: the first one is logged with its traceback.
        """
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning(
                "%s: Redis unavailable or failing, will keep retrying: %s: %s",
                self.source,
                type(error).__name__,
                error,
                exc_info=error if unexpected else None,
            )
            if self._events is not None:
                self._events.publish(RedisConnectionLost(source=self.source, error=str(error)))
        else:
            self._log.debug("%s: still unavailable: %s", self.source, error)

    def succeeded(self) -> None:
        """Record a success; logs the end of an outage."""
        if self._since is None:
            return
        lasted = time.monotonic() - self._since
        self._since = None
        self._log.info("%s: Redis is back after %.1f s", self.source, lasted)
        if self._events is not None:
            self._events.publish(RedisConnectionRestored(source=self.source, outage_seconds=lasted))
