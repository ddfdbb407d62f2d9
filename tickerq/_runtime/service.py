"""The one contract and loop shape of every background service.

huey's consumer shape, once: ``initialize(); while not stopped: run_once();
wait(wake, delay); finalize()``. Every service has the same three verbs for
its owner — :meth:`Service.start`, :meth:`Service.request_stop` and
:meth:`Service.wait_stopped` against a deadline — so the runtime can stop all
of them in a stated order against one deadline. A loop never dies: an
exception from ``run_once`` is logged and retried after a back-off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType
from typing import Self

from tickerq._runtime.clock import SYSTEM_CLOCK, Clock

__all__ = ["Service"]

log = logging.getLogger(__name__)

#: How long ``wait_stopped`` lets an iteration in flight finish before it calls
#: :meth:`Service.interrupt` to break blocking I/O.
GRACEFUL_STOP = 0.05


class Service:
    """A background loop on one daemon thread.

    Subclasses implement :meth:`run_once` and may override :meth:`initialize`,
    :meth:`finalize`, :meth:`interrupt` and :meth:`failed`.

    Args:
        name: The thread's name (``tickerq-...``), also used in log lines.
        clock: Where the loop takes time from and sleeps on.
    """

    def __init__(self, name: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.name = name
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- the owner's verbs -------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the loop's thread runs in this process (False in a forked child)."""
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the loop on a new thread; a no-op while it runs.

        In a child forked after start, the parent's thread does not exist:
        ``start()`` starts a fresh one with fresh events.
        """
        if self.running:
            return
        self._pid = os.getpid()
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(self._stop, self._wake), name=self.name, daemon=True
        )
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to stop after its current iteration; returns at once."""
        self._stop.set()
        self._wake.set()

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the loop to end, until ``deadline`` (a ``time.monotonic()`` reading).

        After a short grace, an iteration still in flight is interrupted
        (:meth:`interrupt`), e.g. by closing a connection blocked on a frozen
        server.

        Returns:
            True when the thread has ended (or never ran in this process).
        """
        thread = self._thread
        if thread is None or self._pid != os.getpid() or thread is threading.current_thread():
            return True
        thread.join(max(0.0, min(deadline - time.monotonic(), GRACEFUL_STOP)))
        if thread.is_alive():
            try:
                self.interrupt()
            except Exception:
                log.debug("%s: interrupt failed", self.name, exc_info=True)
            thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("%s did not stop in time; it is a daemon thread and will do no more work", self.name)
            return False
        self._thread = None
        return True

    def stop(self, timeout: float = 1.0) -> bool:
        """``request_stop()`` then ``wait_stopped()`` within ``timeout`` seconds."""
        self.request_stop()
        return self.wait_stopped(time.monotonic() + timeout)

    def wake(self) -> None:
        """Run the next iteration now instead of after the current delay."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested (iterations check it between steps)."""
        return self._stop.is_set()

    @property
    def forked(self) -> bool:
        """True in a child forked since this service was built or last started.

        Its thread, and any lock it held, are the parent's: a subclass checks
        this before it touches state that thread shares.
        """
        return self._pid != os.getpid()

    # -- what subclasses implement -----------------------------------------

    def initialize(self) -> None:
        """Called once on the service thread before the first iteration."""

    def run_once(self) -> float | None:
        """One iteration of the loop.

        Returns:
            Seconds until the next iteration, or None to wait for :meth:`wake`.
        """
        raise NotImplementedError

    def failed(self, exc: Exception) -> float | None:
        """Called when :meth:`run_once` raised; returns the delay before retrying."""
        log.exception("%s: iteration failed; retrying in 1 s", self.name, exc_info=exc)
        return 1.0

    def finalize(self) -> None:
        """Called once on the service thread after the last iteration."""

    def interrupt(self) -> None:
        """Break blocking I/O of an iteration in flight (called by ``wait_stopped``)."""

    # -- the loop ----------------------------------------------------------

    def _main(self, stop: threading.Event, wake: threading.Event) -> None:
        # The events are this thread's own: a later start() gets new ones.
        try:
            self.initialize()
            while not stop.is_set():
                wake.clear()  # before the iteration: a wake() during it is not lost
                try:
                    delay = self.run_once()
                except Exception as exc:  # a loop never dies: log, back off, go on
                    delay = self._failed_safely(exc)
                if stop.is_set():
                    break
                self.clock.wait(wake, delay)
        finally:
            try:
                self.finalize()
            except Exception:
                log.exception("%s: finalize failed", self.name)

    def _failed_safely(self, exc: Exception) -> float | None:
        try:
            return self.failed(exc)
        except Exception:
            log.exception("%s: failure handler failed; retrying in 1 s", self.name)
            return 1.0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, running={self.running})"
