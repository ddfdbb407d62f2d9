"""A queue of user callbacks run in order on one daemon thread of their own.

A background loop (an election's renewal, say) hands its callbacks here, so a
slow or raising callback can neither delay the loop nor stop it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["CallbackThread"]

log = logging.getLogger(__name__)


class CallbackThread:
    """Runs submitted callbacks in submission order; one that raises is logged and skipped.

    The thread starts at construction and ends after :meth:`close`.

    Args:
        name: The thread's name.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., object], tuple[object, ...]] | None]
        self._queue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, callback: Callable[..., object], *args: object) -> None:
        """Queue ``callback(*args)``."""
        self._queue.put((callback, args))

    def close(self, timeout: float) -> bool:
        """Run what is queued, then end the thread; wait up to ``timeout`` seconds for it.

        Returns:
            Whether the thread ended in time (True when called from a callback,
            which ends the thread once it returns).
        """
        self._queue.put(None)
        if self.thread is threading.current_thread():
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            callback, args = item
            try:
                callback(*args)
            except Exception:
                log.exception("callback %r%r failed", callback, args)
