"""The runtime primitives: clock, service loop, dispatcher."""

from __future__ import annotations

import threading
import time

import pytest

from tickerq._runtime.clock import ManualClock
from tickerq._runtime.dispatcher import Dispatcher, DispatcherStoppedError
from tickerq._runtime.service import Service
from tickerq.errors import TickerQError


def wait_for(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


class Counter(Service):
    def __init__(self, delay: float | None, **kwargs: object) -> None:
        super().__init__("tickerq-test-counter", **kwargs)  # type: ignore[arg-type]
        self.delay = delay
        self.count = 0
        self.finalized = False
        self.fail_next = False

    def run_once(self) -> float | None:
        self.count += 1
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return self.delay

    def failed(self, exc: Exception) -> float | None:
        return 0.0

    def finalize(self) -> None:
        self.finalized = True


def test_manual_clock_drives_the_loop() -> None:
    """A service on a ManualClock runs its next iteration only when time is advanced."""
    clock = ManualClock()
    service = Counter(10.0, clock=clock)
    service.start()
    assert wait_for(lambda: service.count == 1)
    time.sleep(0.05)
    assert 1 == service.count
    clock.advance(10.0)
    assert wait_for(lambda: service.count == 2)
    assert service.stop()
    assert service.finalized
    assert not service.running


def test_wake_runs_the_next_iteration_now() -> None:
    """wake() cuts the wait short; None as delay waits for a wake."""
    service = Counter(None)
    service.start()
    assert wait_for(lambda: service.count == 1)
    service.wake()
    assert wait_for(lambda: service.count == 2)
    assert service.stop(timeout=1.0)


def test_a_failing_iteration_does_not_end_the_loop() -> None:
    """An exception from run_once is handled and the loop goes on."""
    service = Counter(0.01)
    service.fail_next = True
    service.start()
    assert wait_for(lambda: service.count >= 3)
    assert service.running
    assert service.stop()


def test_stop_is_prompt_with_a_long_interval() -> None:
    """request_stop wakes a loop sleeping a long interval; wait_stopped returns at once."""
    service = Counter(3600.0)
    service.start()
    assert wait_for(lambda: service.count == 1)
    started = time.monotonic()
    service.request_stop()
    assert service.wait_stopped(time.monotonic() + 1.0)
    assert time.monotonic() - started < 0.5
    assert not service.running


def test_dispatcher_runs_user_code_off_the_caller_thread() -> None:
    """Submitted callables run on a dispatcher thread and their results come back."""
    dispatcher = Dispatcher(workers=2)
    caller = threading.current_thread().name
    future = dispatcher.submit(lambda: threading.current_thread().name)
    assert caller != future.result(timeout=2)
    assert future.result().startswith("tickerq-dispatch-")
    dispatcher.request_stop()
    assert dispatcher.wait_stopped(time.monotonic() + 1.0)


def test_dispatcher_survives_a_raising_callback() -> None:
    """A raising callback is logged, its future holds the error, and the next one runs."""
    dispatcher = Dispatcher()

    def boom() -> None:
        raise ValueError("bad handler")

    failed = dispatcher.submit(boom, description="test handler")
    ok = dispatcher.submit(lambda: 42)
    with pytest.raises(ValueError, match="bad handler"):
        failed.result(timeout=2)
    assert 42 == ok.result(timeout=2)
    dispatcher.request_stop()
    assert dispatcher.wait_stopped(time.monotonic() + 1.0)


def test_dispatcher_refuses_work_while_stopping_and_cancels_the_queue() -> None:
    """After request_stop, submit raises a TickerQError; work queued past the deadline is cancelled."""
    dispatcher = Dispatcher()
    release = threading.Event()
    blocker = dispatcher.submit(release.wait, 5)
    queued = dispatcher.submit(lambda: "never")
    dispatcher.request_stop()
    with pytest.raises(TickerQError):
        dispatcher.submit(lambda: None)
    assert isinstance(DispatcherStoppedError("x"), TickerQError)
    assert not dispatcher.wait_stopped(time.monotonic() + 0.1)
    assert queued.cancelled()
    release.set()
    assert blocker.result(timeout=2)
