"""The dispatcher: user code runs here, never on a service thread.

Dead-node handlers, event subscribers, ``on_lost``, election callbacks and job
functions are handed to a :class:`Dispatcher`, so nothing a user writes can
delay a heartbeat, a renewal or a demotion. A callback that raises is logged
(and its future holds the exception); a slow one only delays the callbacks
queued behind it on the same worker.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from tickerq.errors import ShutdownError
from tickerq.events import Publisher

__all__ = ["DeferredPublisher", "Dispatcher", "DispatcherStoppedError", "Executor"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_Item = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any], str] | None


class DispatcherStoppedError(ShutdownError):
    """Work was handed to a dispatcher that is stopping or stopped."""


class Executor(Protocol):
    """Where work is queued: a :class:`Dispatcher`, or a strand over one (order kept)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, description: str = "", **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; raises ``DispatcherStoppedError`` while stopping."""
        ...


class Dispatcher:
    """A small pool of daemon worker threads fed from one FIFO queue.

    Workers start on the first :meth:`submit`, so a dispatcher nobody uses
    costs no thread. In a child forked after start the parent's workers do not
    exist: the queue is dropped (its futures were the parent's) and new workers
    start on demand.

    Args:
        name: Thread name prefix (``tickerq-dispatch``); workers are ``name-1``...
        workers: How many callbacks may run at once.
    """

    def __init__(self, name: str = "tickerq-dispatch", workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers!r}: expected at least 1")
        self.name = name
        self.workers = workers
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._pid = os.getpid()
        self._idle = threading.Condition()
        self._unfinished = 0  # submitted and not yet run (or cancelled)

    def submit(self, fn: Callable[..., T], /, *args: Any, description: str = "", **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a worker.

        Args:
            fn: The callable.
            description: What the call is, for the log line if it raises.

        Returns:
            A future with the result or the exception.

        Raises:
            DispatcherStoppedError: The dispatcher is stopping.
        """
        future: Future[T] = Future()
        with self._lock:
            if self._stopping:
                raise DispatcherStoppedError(f"{self.name} is stopping: {description or fn!r} was not run")
            self._ensure_workers()
            with self._idle:
                self._unfinished += 1
            future.add_done_callback(self._finished)
            self._queue.put((future, fn, args, kwargs, description))
        return future

    def _finished(self, _future: Future[Any]) -> None:
        with self._idle:
            self._unfinished -= 1
            if not self._unfinished:
                self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far has run (or was cancelled).

        Returns:
            True when idle; False when ``timeout`` seconds passed first.
        """
        with self._idle:
            return self._idle.wait_for(lambda: not self._unfinished, timeout)

    def _ensure_workers(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's workers and queue are not ours
            self._pid, self._threads, self._queue = os.getpid(), [], queue.SimpleQueue()
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        while len(self._threads) < self.workers:
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs, description = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                log.exception("%s failed", description or repr(fn))
                future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                future.set_result(result)

    # -- the service contract ----------------------------------------------

    def start(self) -> None:
        """Accept work again after a stop (workers start on demand)."""
        with self._lock:
            self._stopping = False

    def request_stop(self) -> None:
        """Refuse new work; queued work still runs until :meth:`wait_stopped`'s deadline."""
        with self._lock:
            self._stopping = True
            if self._pid == os.getpid():
                for _ in self._threads:
                    self._queue.put(None)

    def wait_stopped(self, deadline: float) -> bool:
        """Wait for the workers to finish, until ``deadline`` (``time.monotonic()``).

        Work still queued at the deadline is cancelled.

        Returns:
            True when every worker has ended.
        """
        if self._pid != os.getpid():
            return True
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        self._cancel_queued()  # (their stop marks too:)
        for _ in stuck:
            self._queue.put(None)  # a worker still running ends after its callable, not never
        if stuck:
            log.warning("%s still running user code at shutdown: %s", self.name, ", ".join(stuck))
            return False
        self._threads = []
        return True

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0].cancel()

    def __repr__(self) -> str:
        return f"Dispatcher(name={self.name!r}, workers={self.workers}, stopping={self._stopping})"


class DeferredPublisher:
    """Publishes to an event hub from the dispatcher, so subscribers never run on a service thread.

    Events keep their order when ``dispatcher`` is a strand (or a dispatcher of
    one worker). While the dispatcher is stopping, events are dropped (logged at
    debug level).

    Args:
        hub: The event hub whose subscribers get the events.
        dispatcher: Where the subscribers run: a dispatcher, or a strand over one.
    """

    def __init__(self, hub: Publisher, dispatcher: Executor) -> None:
        self.hub = hub
        self.dispatcher = dispatcher

    def publish(self, event: object) -> None:
        """Queue ``event`` for the hub's subscribers; returns at once."""
        try:
            self.dispatcher.submit(self.hub.publish, event, description=f"publishing {type(event).__name__}")
        except DispatcherStoppedError:
            log.debug("not published while stopping: %r", event)
