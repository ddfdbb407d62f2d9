"""The lease core shared by locks and elections: local deadline, renewal schedule, fence floors, the watch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import wait_until
from tickerq._runtime.clock import ManualClock
from tickerq._runtime.deadline_watch import DeadlineWatch
from tickerq._runtime.dispatcher import Dispatcher
from tickerq._runtime.lease import FenceFloors, LocalLease, drift_margin, hold_for


class RecordingRenewer:
    """A batch renewer that records batches and lets the test answer them (no Redis: the watch's
    scheduling is what is tested here; the lock renewer's round trips are tested in test_lock.py)."""

    def __init__(self) -> None:
        self.batches: list[list[LocalLease]] = []

    def submit(self, batch: list[LocalLease]) -> None:
        self.batches.append(batch)

    def start(self) -> None:
        pass

    def request_stop(self) -> None:
        pass

    def wait_stopped(self, deadline: float) -> bool:
        return True


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def watches() -> Iterator[list[DeadlineWatch]]:
    made: list[DeadlineWatch] = []
    yield made
    for watch in made:
        watch.request_stop()
        assert watch.wait_stopped(time.monotonic() + 2)


def lease(clock: ManualClock, name: str = "job", **kwargs: object) -> LocalLease:
    options: dict[str, object] = {
        "hold": 3.0,
        "renew_every": 1.0,
        "sent_at": clock.monotonic(),
        "clock": clock,
    }
    options.update(kwargs)
    return LocalLease(name=name, token=name, fence=1, **options)  # type: ignore[arg-type]


def test_drift_margin_is_one_percent_plus_two_ms() -> None:
    """A lease is believed for its ttl minus 1 % minus 2 ms."""
    assert 0.012 == pytest.approx(drift_margin(1.0))
    assert 9.898 == pytest.approx(hold_for(10.0))


def test_confirm_moves_the_deadline_from_sending_and_never_revives(clock: ManualClock) -> None:
    """A renewal holds until sent + hold; an older one, or one after the deadline, changes nothing."""
    held = lease(clock)
    start = clock.monotonic()
    clock.advance(1.0)
    assert held.confirm(start + 1.0, 3.0)
    assert start + 4.0 == held.valid_until
    assert held.confirm(start + 0.5, 3.0)  # sent before the last confirmed: the deadline stays
    assert start + 4.0 == held.valid_until
    clock.advance(3.0)
    assert not held.held
    assert not held.confirm(start + 3.9, 3.0)  # the belief had ended: not revived
    assert start + 4.0 == held.valid_until
    assert start + 1.0 + 1.0 == held.renew_at()
    assert start + 1.5 == held.renew_at(early=0.5)


def test_watch_declares_a_lease_lost_exactly_at_its_deadline(
    clock: ManualClock, watches: list[DeadlineWatch]
) -> None:
    """Time frozen: held until the clock reaches the deadline, then lost once; the owner's hook runs on
    the watch thread and on_lost on the dispatcher."""
    dispatcher = Dispatcher("test-lost")
    hooks: list[tuple[str, str]] = []
    lost: list[str] = []
    watch = DeadlineWatch("test-watch", clock=clock, expired_reason="deadline passed")
    watches.append(watch)
    watched = lease(
        clock,
        on_expired=lambda _, reason: hooks.append((reason, threading.current_thread().name)),
        on_lost=lambda _: lost.append(threading.current_thread().name),
        dispatcher=dispatcher,
    )
    assert watch.register(watched)
    clock.advance(2.99)
    wait_until(lambda: watch.running)
    assert watched.held
    clock.advance(0.02)
    assert watched.lost.wait(2)
    wait_until(lambda: lost)
    assert [("deadline passed", "test-watch")] == hooks
    assert ["test-lost-1"] == lost
    assert watched.lost_at == pytest.approx(watched.valid_until + 0.01)
    assert not watched.declare_lost("again")  # once
    wait_until(lambda: [] == watch.leases())
    dispatcher.request_stop()
    assert dispatcher.wait_stopped(time.monotonic() + 2)


def test_due_leases_go_to_the_renewer_as_one_batch_and_failures_back_off(
    clock: ManualClock, watches: list[DeadlineWatch]
) -> None:
    """Leases due within half an interval ride along in one batch; a failed batch is retried after a
    back-off, and a renewal in flight is never sent twice."""
    renewer = RecordingRenewer()
    watch = DeadlineWatch("test-renew", clock=clock, renewer=renewer)
    watches.append(watch)
    first = lease(clock, "first", auto_renew=True)
    clock.advance(0.4)
    second = lease(clock, "second", auto_renew=True)
    assert watch.register(first)
    assert watch.register(second)
    clock.advance(0.6)  # first is due; second is due within half an interval
    wait_until(lambda: renewer.batches)
    assert [["first", "second"]] == [[x.name for x in batch] for batch in renewer.batches]
    assert first.renewing.locked()
    assert second.renewing.locked()
    watch.renewal_failed(renewer.batches[0])
    watch.renewal_done(renewer.batches[0])
    assert not first.renewing.locked()
    time.sleep(0.05)  # the watch looks again at once...
    assert 1 == len(renewer.batches)  # ...and waits out the first back-off (50 ms) on the clock
    clock.advance(0.05)
    wait_until(lambda: 2 == len(renewer.batches))
    assert {"first", "second"} == {x.name for x in renewer.batches[1]}
    assert first.renewing.locked()  # in flight: not submitted again


def test_fence_floors_keep_the_highest_fence_and_longest_hold_and_forget_the_oldest() -> None:
    """A floor never goes down; past its limit the oldest name is forgotten."""
    floors = FenceFloors(limit=2)
    floors.raise_to("a", 5, 300)
    floors.raise_to("a", 3, 100)
    assert (5, 300) == floors.get("a")
    floors.raise_to("b", 1)
    floors.raise_to("c", 1)
    assert (0, 0) == floors.get("a")
    assert (1, 0) == floors.get("c")
