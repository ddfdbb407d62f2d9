"""The runtime primitives: clock, service loop, dispatcher."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from tickerq._runtime.clock import ManualClock
from tickerq._runtime.dispatcher import Dispatcher, DispatcherStoppedError
from tickerq._runtime.service import Service
from tickerq._runtime.strand import Strand
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


def test_forked_is_true_only_in_a_child_forked_after_start() -> None:
    """Service.forked is False where the service started and True in a child forked since."""
    service = Counter(None)
    service.start()
    assert not service.forked
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, f"{service.forked} {service.running}".encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        assert "True False" == pipe.read()
    assert service.stop()


def test_strand_keeps_order_on_a_dispatcher_of_several_workers() -> None:
    """Two strands on one 4-worker dispatcher: each runs its callables in order, never two at once."""
    dispatcher = Dispatcher(workers=4)
    strands = [Strand(dispatcher, name) for name in ("a", "b")]
    ran: dict[str, list[int]] = {"a": [], "b": []}
    running: dict[str, int] = {"a": 0, "b": 0}
    overlapped: list[str] = []

    def step(name: str, i: int) -> int:
        running[name] += 1
        if running[name] > 1:
            overlapped.append(name)
        time.sleep(0.001)
        ran[name].append(i)
        running[name] -= 1
        return i

    futures = [strand.submit(step, strand.name, i) for i in range(50) for strand in strands]
    assert sorted(list(range(50)) * 2) == sorted(f.result(timeout=5) for f in futures)
    assert all(strand.wait_idle(time.monotonic() + 5) for strand in strands)
    assert {"a": list(range(50)), "b": list(range(50))} == ran
    assert [] == overlapped
    dispatcher.request_stop()
    assert dispatcher.wait_stopped(time.monotonic() + 1.0)


def test_strand_logs_a_raising_callable_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A callable that raises is logged with its description; its future holds the error; the next runs."""
    dispatcher = Dispatcher()
    strand = Strand(dispatcher, "test")

    def boom() -> None:
        raise ValueError("bad callback")

    with caplog.at_level(logging.ERROR, logger="tickerq._runtime.strand"):
        failed = strand.submit(boom, description="the boom callback")
        ok = strand.submit(lambda: 42)
        assert 42 == ok.result(timeout=2)
    with pytest.raises(ValueError, match="bad callback"):
        failed.result()
    assert ["the boom callback failed"] == [r.getMessage() for r in caplog.records]
    dispatcher.request_stop()
    assert dispatcher.wait_stopped(time.monotonic() + 1.0)


def test_strand_wait_idle_waits_for_what_is_queued_but_not_from_inside() -> None:
    """wait_idle() is False while a callable blocks past its deadline; True once all ran, and from inside."""
    dispatcher = Dispatcher()
    strand = Strand(dispatcher, "test")
    release = threading.Event()
    inside: list[bool] = []

    def blocker() -> None:
        inside.append(strand.running_here() and strand.wait_idle(time.monotonic()))
        release.wait(5)

    strand.submit(blocker)
    after = strand.submit(lambda: "after")
    assert not strand.running_here()
    assert not strand.wait_idle(time.monotonic() + 0.05)
    release.set()
    assert strand.wait_idle(time.monotonic() + 2)
    assert "after" == after.result(timeout=0)
    assert [True] == inside
    dispatcher.request_stop()
    assert dispatcher.wait_stopped(time.monotonic() + 1.0)


def test_strand_on_a_stopped_dispatcher_refuses_and_stays_usable() -> None:
    """submit() on a stopping dispatcher raises a TickerQError; after start() the strand runs again."""
    dispatcher = Dispatcher()
    strand = Strand(dispatcher, "test")
    dispatcher.request_stop()
    with pytest.raises(DispatcherStoppedError):
        strand.submit(lambda: None)
    assert strand.wait_idle(time.monotonic())
    assert dispatcher.wait_stopped(time.monotonic() + 1.0)
    dispatcher.start()
    assert "again" == strand.submit(lambda: "again").result(timeout=2)
    dispatcher.request_stop()
    assert dispatcher.wait_stopped(time.monotonic() + 1.0)


def test_strand_work_queued_at_the_dispatchers_stop_deadline_is_cancelled() -> None:
    """Strand work still queued at the dispatcher's stop deadline is cancelled; the strand is then idle."""
    dispatcher = Dispatcher()
    strand = Strand(dispatcher, "test")
    release = threading.Event()
    dispatcher.submit(release.wait, 5)  # the only worker is busy
    first, second = strand.submit(lambda: 1), strand.submit(lambda: 2)
    dispatcher.request_stop()
    assert not dispatcher.wait_stopped(time.monotonic() + 0.05)
    assert first.cancelled()
    assert second.cancelled()
    assert strand.wait_idle(time.monotonic())
    release.set()


def test_dispatcher_wait_idle_waits_for_everything_submitted() -> None:
    """wait_idle() returns once every submitted callable has run, and times out while one blocks."""
    dispatcher = Dispatcher(workers=2)
    release = threading.Event()
    done: list[int] = []
    dispatcher.submit(release.wait, 5)
    for i in range(5):
        dispatcher.submit(done.append, i)
    assert not dispatcher.wait_idle(0.05)
    release.set()
    assert dispatcher.wait_idle(2)
    assert [0, 1, 2, 3, 4] == sorted(done)
    dispatcher.request_stop()
    assert dispatcher.wait_stopped(time.monotonic() + 1.0)


def test_a_worker_busy_past_the_stop_deadline_ends_when_its_callable_returns() -> None:
    """A worker still running user code at wait_stopped's deadline ends as soon as that code returns."""
    dispatcher = Dispatcher("test-late")
    release = threading.Event()
    dispatcher.submit(release.wait, 5)
    dispatcher.request_stop()
    assert not dispatcher.wait_stopped(time.monotonic() + 0.05)
    release.set()
    assert wait_for(lambda: not any(t.name.startswith("test-late") for t in threading.enumerate()))
