"""What only the in-memory store has: wake listeners and its injectable clock."""

from __future__ import annotations

import pytest

from tickerq._runtime.clock import ManualClock
from tickerq.scheduler.memory_store import MemoryJobStore, retry_delay_ms
from tickerq.scheduler.model import FunctionLimits, NewCron, NewJob, Outcome, OutcomeKind


def test_now_is_the_clock_wall_time_in_ms() -> None:
    """The store's clock is the injected clock's wall time in milliseconds."""
    clock = ManualClock(wall=1_000.5)
    store = MemoryJobStore(clock=clock)
    assert 1_000_500 == store.now_ms()
    clock.advance(2)
    assert 1_002_500 == store.now_ms()


def test_wake_listeners_hear_of_due_work() -> None:
    """Listeners get the earliest due time of added, retried and materialised work."""
    clock = ManualClock(wall=100.0)
    store = MemoryJobStore(clock=clock)
    heard: list[int] = []
    store.add_wake_listener(heard.append)
    store.add_jobs([NewJob(id="a", function="F", delay_ms=500), NewJob(id="b", function="F", due_ms=99_000)])
    claim = store.claim_due("n1", [FunctionLimits(name="F", free_slots=1)], 1).claims[0]
    store.finish([Outcome(job_id=claim.job.id, fence=claim.fence, kind=OutcomeKind.HANDED_BACK)])
    store.add_cron(NewCron(id="c", function="F", expression="* * * * * *", time_zone="UTC"), 101_000)
    store.materialize_cron("c", 101_000, 101_000, 102_000, 0)
    store.remove_wake_listener(heard.append)
    store.add_jobs([NewJob(id="c", function="F")])
    assert [99_000, 100_000, 101_000, 101_000] == heard


def test_a_failing_listener_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises does not break add_jobs."""
    store = MemoryJobStore(clock=ManualClock())

    def broken(_: int) -> None:
        raise RuntimeError("listener bug")

    store.add_wake_listener(broken)
    assert 1 == len(store.add_jobs([NewJob(id="a", function="F")]))
    assert "wake listener" in caplog.text


def test_retry_delay_repeats_the_last_interval() -> None:
    """Retry n waits intervals[n-1] seconds; past the end the last repeats; none means at once."""
    assert [1000, 2000, 2000, 2000] == [retry_delay_ms((1, 2), n) for n in (1, 2, 3, 9)]
    assert 0 == retry_delay_ms((), 1)
