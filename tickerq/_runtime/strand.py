"""A strand: callables run one at a time, in submission order, on a dispatcher's workers.

A source whose callbacks must keep their order (an election's ``on_elected``
before its ``on_demoted``, with its events in between) hands them to a strand
over a dispatcher: they never overlap nor overtake each other, whichever worker
runs them, while other sources use the dispatcher's other workers. So a shared
dispatcher of several workers keeps every source's order (asio's strand).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from tickerq._runtime.dispatcher import Dispatcher

__all__ = ["Strand"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_Item = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any], str]


class Strand:
    """Runs what is submitted in order, one at a time, on ``dispatcher``.

    At most one task of the strand is queued on or running in the dispatcher
    at a time; it runs the strand's callables until none is left. A callable
    that raises is logged (and its future holds the exception); the next one
    still runs. A child forked after use starts with an empty strand.

    Args:
        dispatcher: Where the callables run.
        name: What the strand serves, for log lines.
    """

    def __init__(self, dispatcher: Dispatcher, name: str) -> None:
        self.dispatcher = dispatcher
        self.name = name
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: deque[_Item] = deque()
        self._draining = False  # a task of ours is queued on the dispatcher or running
        self._runner: threading.Thread | None = None  # the thread running one of our callables

    def submit(self, fn: Callable[..., T], /, *args: Any, description: str = "", **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` after everything submitted before it.

        Args:
            fn: The callable.
            description: What the call is, for the log line if it raises.

        Returns:
            A future with the result or the exception.

        Raises:
            DispatcherStoppedError: The dispatcher is stopping (nothing was queued).
        """
        if self._pid != os.getpid():  # forked: the parent's queue and its task are not ours
            self._reset()
        future: Future[T] = Future()
        with self._lock:
            self._pending.append((future, fn, args, kwargs, description))
            if self._draining:
                return future
            self._draining = True
        self._start_task()
        return future

    def _start_task(self) -> None:
        """Queue our task on the dispatcher; when it refuses, what is pending is cancelled."""
        try:
            task = self.dispatcher.submit(self._drain, description=f"{self.name} (strand)")
        except BaseException:
            self._cancel_pending()
            raise
        task.add_done_callback(self._task_done)

    def running_here(self) -> bool:
        """True when called from one of this strand's callables."""
        return self._runner is threading.current_thread()

    def wait_idle(self, deadline: float) -> bool:
        """Wait until everything submitted so far has run, until ``deadline`` (``time.monotonic()``).

        Returns:
            True when nothing is left to run; also when called from one of the
            strand's callables (what is queued after it runs once it returns).
        """
        if self._pid != os.getpid():
            return True
        with self._lock:
            if self._runner is threading.current_thread():
                return True
            while self._draining:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._draining, self._runner = False, None
                    self._idle.notify_all()
                    return
                future, fn, args, kwargs, description = self._pending.popleft()
                self._runner = threading.current_thread()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                log.exception("%s failed", description or repr(fn))
                future.set_exception(exc)
            except BaseException as exc:  # the worker ends: another task runs what is left
                future.set_exception(exc)
                with self._lock:
                    self._runner = None
                    left = bool(self._pending)
                    if not left:
                        self._draining = False
                        self._idle.notify_all()
                if left:
                    with contextlib.suppress(Exception):  # refused: _start_task cancelled them
                        self._start_task()
                raise
            else:
                future.set_result(result)

    def _task_done(self, task: Future[None]) -> None:
        if task.cancelled():  # at the dispatcher's stop deadline: what is queued behind it goes too
            self._cancel_pending()

    def _cancel_pending(self) -> None:
        with self._lock:
            left = list(self._pending)
            self._pending.clear()
            self._draining, self._runner = False, None
            self._idle.notify_all()
        for future, *_ in left:
            future.cancel()

    def __repr__(self) -> str:
        return f"Strand(name={self.name!r}, pending={len(self._pending)}, dispatcher={self.dispatcher!r})"
