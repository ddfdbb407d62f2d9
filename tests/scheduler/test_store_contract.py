"""The job store contract (tickerq.scheduler.store), run against every store.

Each test names one guarantee of the contract. The memory store runs on a
ManualClock; the Redis store on a real redis-server, several store instances
on their own clients standing for several nodes, with real time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import attrs
import pytest

from tickerq._redis.keys import Keys
from tickerq._runtime.clock import ManualClock
from tickerq.errors import InvalidKeyError
from tickerq.scheduler.memory_store import MemoryJobStore
from tickerq.scheduler.model import (
    Claim,
    FunctionLimits,
    NewCron,
    NewJob,
    Outcome,
    OutcomeKind,
    TickerStatus,
)
from tickerq.scheduler.redis_store import RedisJobStore
from tickerq.scheduler.store import JobStore
from tickerq.testing import RedisServer

STORES = ["memory", "redis"]


@attrs.define
class Harness:
    """Stores standing for several nodes, and a way to let time pass on their clock."""

    kind: str
    stores: list[JobStore]
    advance: Callable[[float], None]

    @property
    def store(self) -> JobStore:
        return self.stores[0]


def _memory() -> Harness:
    clock = ManualClock()
    store = MemoryJobStore(clock=clock)
    return Harness("memory", [store, store, store], clock.advance)


def _redis(server: RedisServer) -> Iterator[Harness]:
    clients = [server.client() for _ in range(3)]
    try:
        stores: list[JobStore] = [RedisJobStore(client, Keys("tickerq:")) for client in clients]
        yield Harness("redis", stores, lambda seconds: time.sleep(seconds + 0.01))
    finally:
        for client in clients:
            client.close()


@pytest.fixture(params=STORES)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Each store under the contract."""
    if request.param == "memory":
        yield _memory()
    else:
        yield from _redis(request.getfixturevalue("redis_server"))


F = FunctionLimits(name="F", free_slots=1000)


def job(job_id: str, *, function: str = "F", delay_ms: int = 0, **fields: object) -> NewJob:
    return NewJob(id=job_id, function=function, delay_ms=delay_ms, **fields)  # type: ignore[arg-type]


def claim_all(store: JobStore, node: str = "n1", *functions: FunctionLimits) -> list[Claim]:
    return list(store.claim_due(node, functions or (F,), 1000).claims)


def outcome(claim: Claim, kind: OutcomeKind, **fields: object) -> Outcome:
    return Outcome(job_id=claim.job.id, fence=claim.fence, kind=kind, **fields)  # type: ignore[arg-type]


# -- adding and reading ---------------------------------------------------------


def test_added_job_is_idle_with_its_fields(harness: Harness) -> None:
    """add_jobs stores IDLE jobs with their fields and returns each due time."""
    store = harness.store
    before = store.now_ms()
    dues = store.add_jobs(
        [
            job("a", request=b'{"to":"x"}', retries=2, retry_intervals=(5, 10)),
            NewJob(id="b", function="G", due_ms=before + 60_000),
        ]
    )
    after = store.now_ms()
    record = store.get_job("a")
    assert record is not None
    assert (TickerStatus.IDLE, "F", b'{"to":"x"}', 2, (5, 10)) == (
        record.status,
        record.function,
        record.request,
        record.retries,
        record.retry_intervals,
    )
    assert before <= dues[0] <= after
    assert dues[0] == record.due_ms
    assert before <= record.created_ms <= after
    assert (0, None, 0, False, None) == (
        record.fence,
        record.node,
        record.retry_count,
        record.is_rerun,
        record.cron_id,
    )
    assert before + 60_000 == dues[1]
    assert store.get_job("missing") is None


def test_existing_id_is_left_as_it_is(harness: Harness) -> None:
    """Adding a job whose id exists changes nothing and returns the stored due time."""
    store = harness.store
    first = store.add_jobs([job("a", delay_ms=60_000)])[0]
    again = store.add_jobs([job("a", function="Other", request=b"1")])
    record = store.get_job("a")
    assert record is not None
    assert [first] == again
    assert ("F", None, first) == (record.function, record.request, record.due_ms)


def test_delay_counts_on_the_store_clock(harness: Harness) -> None:
    """delay_ms is added to the store's clock at the moment the job is stored."""
    store = harness.store
    before = store.now_ms()
    due = store.add_jobs([job("a", delay_ms=5_000)])[0]
    assert before + 5_000 <= due <= store.now_ms() + 5_000


# -- claiming -------------------------------------------------------------------


def test_due_jobs_are_claimed_earliest_first_and_future_ones_wait(harness: Harness) -> None:
    """claim_due takes due IDLE jobs earliest first, leaves future ones, and says when to look again."""
    store = harness.store
    now = store.now_ms()
    store.add_jobs(
        [
            NewJob(id="late", function="F", due_ms=now - 10),
            NewJob(id="early", function="F", due_ms=now - 1000),
            NewJob(id="future", function="F", due_ms=now + 60_000),
        ]
    )
    batch = store.claim_due("n1", [F], 10)
    assert ["early", "late"] == [claim.job.id for claim in batch.claims]
    assert now + 60_000 == batch.next_due_ms
    assert batch.now_ms >= now
    for claim in batch.claims:
        assert (TickerStatus.QUEUED, "n1", claim.fence) == (claim.job.status, claim.job.node, claim.job.fence)
    assert TickerStatus.IDLE == store.get_job("future").status  # type: ignore[union-attr]


def test_claim_respects_limit_and_free_slots(harness: Harness) -> None:
    """A node claims no more than the limit and each function's free slots."""
    store = harness.store
    store.add_jobs([job(f"f{i}") for i in range(5)] + [job(f"g{i}", function="G") for i in range(5)])
    limited = store.claim_due("n1", [F, FunctionLimits(name="G", free_slots=5)], 3)
    assert 3 == len(limited.claims)
    assert limited.next_due_ms is not None
    assert limited.next_due_ms <= limited.now_ms
    slots = store.claim_due(
        "n1", [FunctionLimits(name="F", free_slots=1), FunctionLimits(name="G", free_slots=2)], 10
    )
    assert Counter({"F": 1, "G": 2}) == Counter(claim.job.function for claim in slots.claims)
    full = store.claim_due("n1", [FunctionLimits(name="F", free_slots=0)], 10)
    assert ((), None) == (full.claims, full.next_due_ms)


def test_fences_rise_with_every_claim(harness: Harness) -> None:
    """Every claim gets a fence above every fence given before, across nodes."""
    store = harness.store
    store.add_jobs([job(f"j{i}") for i in range(6)])
    fences: list[int] = []
    for i in range(3):
        batch = harness.stores[i].claim_due(f"n{i}", [F], 2)
        fences.extend(claim.fence for claim in batch.claims)
    assert 6 == len(fences)
    assert sorted(set(fences)) == fences
    assert fences[0] > 0


def test_racing_claimers_claim_each_job_exactly_once(harness: Harness) -> None:
    """Many threads on several nodes racing claim_due on the same due jobs claim each once."""
    store = harness.store
    ids = [f"j{i}" for i in range(300)]
    for start in range(0, len(ids), 100):
        store.add_jobs([job(job_id) for job_id in ids[start : start + 100]])
    claimed: list[Claim] = []
    guard = threading.Lock()
    go = threading.Barrier(9)

    def claimer(index: int) -> None:
        node_store = harness.stores[index % 3]
        go.wait()
        while True:
            batch = node_store.claim_due(f"n{index}", [FunctionLimits(name="F", free_slots=7)], 7)
            if not batch.claims:
                return
            with guard:
                claimed.extend(batch.claims)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(ids) == sorted(claim.job.id for claim in claimed)
    assert len(claimed) == len({claim.fence for claim in claimed})


def test_unlisted_function_stays_idle_and_visible(harness: Harness) -> None:
    """A job for a function the node does not have is never claimed and stays visible as IDLE."""
    store = harness.store
    due = store.add_jobs([job("new", function="NewFunction")])[0]
    assert [] == claim_all(store)
    record = store.get_job("new")
    assert record is not None
    assert TickerStatus.IDLE == record.status
    assert due == store.next_due_ms(["NewFunction"])
    assert store.next_due_ms(["F"]) is None
    assert ["new"] == [
        c.job.id for c in claim_all(store, "n2", FunctionLimits(name="NewFunction", free_slots=1))
    ]


def test_cluster_concurrency_holds_under_racing_claimers(harness: Harness) -> None:
    """With cluster_concurrency=2, racing nodes never hold more than 2 jobs of the function at once."""
    store = harness.store
    store.add_jobs([job(f"j{i}") for i in range(20)])
    limits = FunctionLimits(name="F", free_slots=2, cluster_concurrency=2)
    held = 0
    most = 0
    done: list[str] = []
    guard = threading.Lock()
    deadline = time.monotonic() + 30

    def node(index: int) -> None:
        nonlocal held, most
        node_store = harness.stores[index % 3]
        while time.monotonic() < deadline:
            with guard:
                if len(done) == 20:
                    return
            batch = node_store.claim_due(f"n{index}", [limits], 2)
            with guard:
                held += len(batch.claims)
                most = max(most, held)
            for claim in batch.claims:
                assert [True] == node_store.start([(claim.job.id, claim.fence)])
                with guard:
                    held -= 1
                    done.append(claim.job.id)
                assert [True] == node_store.finish([outcome(claim, OutcomeKind.DONE)])

    threads = [threading.Thread(target=node, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(35)
    assert 20 == len(set(done)) == len(done)
    assert most <= 2


def test_skip_if_running_marks_the_next_occurrence_skipped(harness: Harness) -> None:
    """A cron occurrence is SKIPPED while another occurrence of the same cron runs."""
    store = harness.store
    now = store.now_ms()
    store.add_cron(NewCron(id="c1", function="F", expression="* * * * * *", time_zone="UTC"), now - 3000)
    assert store.materialize_cron("c1", now - 3000, now - 3000, now - 2000, 0)
    first = store.claim_due("n1", [F], 1).claims[0]
    assert "c1" == first.job.cron_id
    assert store.materialize_cron("c1", now - 2000, now - 2000, now - 1000, 0)
    store.add_jobs([job("plain")])
    limits = FunctionLimits(name="F", free_slots=5, skip_if_running=True)
    batch = store.claim_due("n2", [limits], 5)
    assert (f"c1@{now - 2000}",) == batch.skipped
    assert ["plain"] == [claim.job.id for claim in batch.claims]
    assert TickerStatus.SKIPPED == store.get_job(f"c1@{now - 2000}").status  # type: ignore[union-attr]
    assert [True] == store.finish([outcome(first, OutcomeKind.DONE)])
    assert store.materialize_cron("c1", now - 1000, now - 1000, now + 60_000, 0)
    assert [f"c1@{now - 1000}"] == [c.job.id for c in store.claim_due("n2", [limits], 5).claims]


# -- running and finishing ------------------------------------------------------


def test_start_and_finish_record_the_attempt(harness: Harness) -> None:
    """start marks IN_PROGRESS with executed_at; finish DONE keeps elapsed and the node."""
    store = harness.store
    store.add_jobs([job("a")])
    claim = claim_all(store)[0]
    assert [True] == store.start([(claim.job.id, claim.fence)], started_ms=123)
    running = store.get_job("a")
    assert running is not None
    assert (TickerStatus.IN_PROGRESS, 123, "n1") == (running.status, running.executed_at_ms, running.node)
    assert [True] == store.finish([outcome(claim, OutcomeKind.DONE, elapsed_ms=7)])
    done = store.get_job("a")
    assert done is not None
    assert (TickerStatus.DONE, 123, 7, "n1", claim.fence) == (
        done.status,
        done.executed_at_ms,
        done.elapsed_ms,
        done.node,
        done.fence,
    )
    assert [False] == store.finish([outcome(claim, OutcomeKind.DONE)])
    assert [False] == store.start([(claim.job.id, claim.fence)])


def test_claim_with_start_is_in_progress_at_once(harness: Harness) -> None:
    """claim_due(start=True) hands out IN_PROGRESS jobs with executed_at set to the claim's time."""
    store = harness.store
    store.add_jobs([job("a")])
    batch = store.claim_due("n1", [F], 10, start=True)
    claim = batch.claims[0]
    assert (TickerStatus.IN_PROGRESS, batch.now_ms) == (claim.job.status, claim.job.executed_at_ms)
    stored = store.get_job("a")
    assert stored is not None
    assert (TickerStatus.IN_PROGRESS, batch.now_ms) == (stored.status, stored.executed_at_ms)
    assert [True] == store.start([("a", claim.fence)])
    assert batch.now_ms == store.get_job("a").executed_at_ms  # type: ignore[union-attr]
    assert [True] == store.finish([outcome(claim, OutcomeKind.DONE)])


def test_claim_records_outcomes_first_as_finish_does(harness: Harness) -> None:
    """claim_due(outcomes=...) records them as finish would (stale fences ignored), then claims."""
    store = harness.store
    store.add_jobs([job("done"), job("retry", retries=1), job("back")])
    claims = {claim.job.id: claim for claim in store.claim_due("n1", [F], 10, start=True).claims}
    store.add_jobs([job("next")])
    outcomes = [
        outcome(claims["done"], OutcomeKind.DONE, elapsed_ms=5),
        outcome(claims["retry"], OutcomeKind.FAILED, exception_message="boom"),
        outcome(claims["back"], OutcomeKind.HANDED_BACK),
        Outcome(job_id="done", fence=claims["done"].fence - 1, kind=OutcomeKind.DONE),  # stale
    ]
    batch = store.claim_due("n1", [F], 10, start=True, outcomes=outcomes, retention=timedelta(hours=1))
    assert (True, True, True, False) == batch.finished
    assert ["back", "next", "retry"] == sorted(claim.job.id for claim in batch.claims)
    again = {claim.job.id: claim.job for claim in batch.claims}
    assert (True, 1) == (again["back"].is_rerun, again["retry"].retry_count)
    assert "boom" == again["retry"].exception_message
    done = store.get_job("done")
    assert done is not None
    assert (TickerStatus.DONE, 5) == (done.status, done.elapsed_ms)


def test_outcomes_free_cluster_concurrency_room_in_the_same_claim(harness: Harness) -> None:
    """A slot that claim_due's own outcomes free counts towards cluster_concurrency at once."""
    store = harness.store
    store.add_jobs([job("a"), job("b")])
    limits = FunctionLimits(name="F", free_slots=5, cluster_concurrency=1)
    first = store.claim_due("n1", [limits], 5, start=True)
    assert ["a"] == [claim.job.id for claim in first.claims]
    assert () == store.claim_due("n2", [limits], 5).claims
    batch = store.claim_due("n1", [limits], 5, outcomes=[outcome(first.claims[0], OutcomeKind.DONE)])
    assert ((True,), ["b"]) == (batch.finished, [claim.job.id for claim in batch.claims])


def test_claim_with_outcomes_reports_held_after_them_and_its_claims(harness: Harness) -> None:
    """ClaimBatch.held counts the node's claims after its outcomes are recorded and new claims taken."""
    store = harness.store
    store.add_jobs([job("a"), job("b"), job("c")])
    claims = store.claim_due("n1", [F], 3, start=True).claims
    store.add_jobs([job("d")])
    batch = store.claim_due(
        "n1",
        [F],
        1,
        start=True,
        outcomes=[outcome(claims[0], OutcomeKind.DONE), outcome(claims[1], OutcomeKind.DONE)],
    )
    assert ((True, True), 1, 2) == (batch.finished, len(batch.claims), batch.held)


def test_wrong_fence_is_refused(harness: Harness) -> None:
    """start and finish under a fence the job does not hold change nothing."""
    store = harness.store
    store.add_jobs([job("a")])
    claim = claim_all(store)[0]
    assert [False, False] == store.start([(claim.job.id, claim.fence + 1), ("missing", 1)])
    assert [False] == store.finish([Outcome(job_id="a", fence=claim.fence - 1, kind=OutcomeKind.DONE)])
    assert TickerStatus.QUEUED == store.get_job("a").status  # type: ignore[union-attr]


def test_failed_attempts_retry_after_intervals_and_the_last_repeats(harness: Harness) -> None:
    """A failure with retries left is IDLE again, due after the next interval; the last interval repeats."""
    store = harness.store
    store.add_jobs([job("a", retries=3, retry_intervals=(1, 2))])
    expected_delays = [1000, 2000, 2000]
    for attempt, delay in enumerate(expected_delays, start=1):
        claim = claim_all(store)[0]
        store.start([(claim.job.id, claim.fence)])
        before = store.now_ms()
        assert [True] == store.finish(
            [outcome(claim, OutcomeKind.FAILED, exception_message=f"boom {attempt}")]
        )
        after = store.now_ms()
        record = store.get_job("a")
        assert record is not None
        assert (TickerStatus.IDLE, attempt, f"boom {attempt}") == (
            record.status,
            record.retry_count,
            record.exception_message,
        )
        assert before + delay <= record.due_ms <= after + delay
        assert [] == claim_all(store)
        if attempt < len(expected_delays):
            harness.advance(delay / 1000)


def test_last_failure_without_retries_left_is_failed(harness: Harness) -> None:
    """With no retries left a failure is final (FAILED); no intervals means the retry is due at once."""
    store = harness.store
    store.add_jobs([job("a", retries=1)])
    first = claim_all(store)[0]
    store.finish([outcome(first, OutcomeKind.FAILED, exception_message="one")])
    second = claim_all(store)[0]
    assert second.fence > first.fence
    assert 1 == second.job.retry_count
    store.finish([outcome(second, OutcomeKind.FAILED, exception_message="two")])
    record = store.get_job("a")
    assert record is not None
    assert (TickerStatus.FAILED, 2, "two") == (record.status, record.retry_count, record.exception_message)
    assert [] == claim_all(store)


def test_handed_back_job_is_due_again(harness: Harness) -> None:
    """HANDED_BACK makes a started job IDLE, due now, with is_rerun; an unstarted one without."""
    store = harness.store
    store.add_jobs([job("started"), job("unstarted")])
    claims = {claim.job.id: claim for claim in claim_all(store)}
    store.start([("started", claims["started"].fence)])
    assert [True, True] == store.finish(
        [outcome(claim, OutcomeKind.HANDED_BACK) for claim in claims.values()]
    )
    again = {claim.job.id: claim.job for claim in claim_all(store, "n2")}
    assert {"started": True, "unstarted": False} == {
        job_id: record.is_rerun for job_id, record in again.items()
    }


# -- cancelling -----------------------------------------------------------------


def test_cancel_before_the_run(harness: Harness) -> None:
    """Cancelling an IDLE job makes it CANCELLED at once and it is never claimed."""
    store = harness.store
    store.add_jobs([job("a")])
    cancelled = store.cancel("a")
    assert cancelled is not None
    assert TickerStatus.CANCELLED == cancelled.status
    assert [] == claim_all(store)
    assert store.cancel("missing") is None
    assert TickerStatus.CANCELLED == store.cancel("a").status  # type: ignore[union-attr]


def test_cancel_of_a_claimed_job_stops_its_start(harness: Harness) -> None:
    """A QUEUED job whose cancel was requested is refused by start and CANCELLED."""
    store = harness.store
    store.add_jobs([job("a")])
    claim = claim_all(store)[0]
    requested = store.cancel("a")
    assert requested is not None
    assert (TickerStatus.QUEUED, True) == (requested.status, requested.cancel_requested)
    assert [False] == store.start([(claim.job.id, claim.fence)])
    assert TickerStatus.CANCELLED == store.get_job("a").status  # type: ignore[union-attr]


def test_cancel_during_the_run(harness: Harness) -> None:
    """A running job's cancel reaches cancel_requests; its failure is CANCELLED, not retried."""
    store = harness.store
    store.add_jobs([job("a", retries=5), job("b")])
    claims = {claim.job.id: claim for claim in claim_all(store)}
    store.start([(job_id, claim.fence) for job_id, claim in claims.items()])
    assert set() == store.cancel_requests(["a", "b"])
    store.cancel("a")
    assert {"a"} == store.cancel_requests(["a", "b", "missing"])
    assert [True] == store.finish([outcome(claims["a"], OutcomeKind.FAILED, exception_message="interrupted")])
    assert TickerStatus.CANCELLED == store.get_job("a").status  # type: ignore[union-attr]
    store.cancel("b")
    assert [True] == store.finish([outcome(claims["b"], OutcomeKind.CANCELLED)])
    assert TickerStatus.CANCELLED == store.get_job("b").status  # type: ignore[union-attr]
    assert [] == claim_all(store)


# -- dead nodes -----------------------------------------------------------------


def test_release_node_hands_back_and_stale_finish_is_ignored(harness: Harness) -> None:
    """After release_node and a re-claim elsewhere, the dead node's late finish is ignored."""
    store_a, store_b = harness.stores[0], harness.stores[1]
    store_a.add_jobs([job("a")])
    old = claim_all(store_a, "node-a")[0]
    assert [True] == store_a.start([("a", old.fence)])
    assert ["a"] == store_b.release_node("node-a")
    released = store_b.get_job("a")
    assert released is not None
    assert (TickerStatus.IDLE, True) == (released.status, released.is_rerun)
    assert released.due_ms <= store_b.now_ms()
    new = claim_all(store_b, "node-b")[0]
    assert new.fence > old.fence
    assert new.job.is_rerun
    assert [False] == store_a.finish([outcome(old, OutcomeKind.DONE)])
    assert [False] == store_a.start([("a", old.fence)])
    current = store_b.get_job("a")
    assert current is not None
    assert (TickerStatus.QUEUED, "node-b") == (current.status, current.node)
    assert [True] == store_b.finish([outcome(new, OutcomeKind.DONE)])


def test_release_node_is_idempotent(harness: Harness) -> None:
    """Releasing a node twice hands its claims back once; other nodes' claims stay."""
    store = harness.store
    store.add_jobs([job("a"), job("b")])
    mine = store.claim_due("dead", [F], 1).claims[0]
    other = store.claim_due("alive", [F], 1).claims[0]
    released = [harness.stores[i].release_node("dead") for i in range(3)]
    assert [[mine.job.id], [], []] == released
    record = store.get_job(mine.job.id)
    assert record is not None
    assert (TickerStatus.IDLE, False) == (record.status, record.is_rerun)
    assert TickerStatus.QUEUED == store.get_job(other.job.id).status  # type: ignore[union-attr]
    assert [] == store.release_node("never-seen")


def test_released_job_with_cancel_requested_is_cancelled(harness: Harness) -> None:
    """A dead node's job whose cancel was requested is CANCELLED, not run again."""
    store = harness.store
    store.add_jobs([job("a")])
    claim = claim_all(store, "dead")[0]
    store.start([("a", claim.fence)])
    store.cancel("a")
    assert ["a"] == store.release_node("dead")
    assert TickerStatus.CANCELLED == store.get_job("a").status  # type: ignore[union-attr]


def test_skipped_outcome_finishes_the_job_as_skipped(harness: Harness) -> None:
    """A SKIPPED outcome (a missed cron occurrence) finishes the job as SKIPPED and frees the claim."""
    store = harness.store
    store.add_jobs([job("a")])
    claim = claim_all(store)[0]
    assert [True] == store.finish([outcome(claim, OutcomeKind.SKIPPED)])
    assert TickerStatus.SKIPPED == store.get_job("a").status  # type: ignore[union-attr]
    assert 0 == store.claim_due("n1", [F], 0).held


def test_release_node_keeps_only_the_claims_given_with_their_fence(harness: Harness) -> None:
    """release_node(keep=...) hands back the node's other claims; a kept id needs its current fence."""
    store = harness.store
    store.add_jobs([job("a"), job("b"), job("c")])
    claims = {claim.job.id: claim for claim in claim_all(store, "live")}
    store.start([("a", claims["a"].fence)])
    other = store.add_jobs([job("x")]) and claim_all(store, "other")[0]
    keep = [("a", claims["a"].fence), ("b", claims["b"].fence + 1000)]
    assert ["b", "c"] == sorted(store.release_node("live", keep=keep))
    kept = store.get_job("a")
    assert kept is not None
    assert (TickerStatus.IN_PROGRESS, "live") == (kept.status, kept.node)
    for job_id in ("b", "c"):
        record = store.get_job(job_id)
        assert record is not None
        assert (TickerStatus.IDLE, False) == (record.status, record.is_rerun)
    assert TickerStatus.QUEUED == store.get_job(other.job.id).status  # type: ignore[union-attr]
    assert [] == store.release_node("live", keep=keep[:1])
    assert [True] == store.finish([outcome(claims["a"], OutcomeKind.DONE)])
    assert {"b", "c"} == {claim.job.id for claim in claim_all(store, "live")}


def test_release_node_with_keep_hands_back_started_claims_not_as_reruns(harness: Harness) -> None:
    """A live node's unknown claims (never run there, even if claimed started) come back without is_rerun."""
    store = harness.store
    store.add_jobs([job("a"), job("b")])
    claims = store.claim_due("live", [F], 2, start=True).claims
    assert ["b"] == store.release_node("live", keep=[("a", claims[0].fence)])
    assert ["a"] == store.release_node("live", keep=[])
    again = {claim.job.id: claim.job for claim in store.claim_due("n2", [F], 2, start=True).claims}
    assert {"a": False, "b": False} == {job_id: job.is_rerun for job_id, job in again.items()}
    assert sorted(again) == store.release_node("n2")  # without keep: they had started
    assert {True} == {claim.job.is_rerun for claim in claim_all(store, "n3")}


def test_skipped_outcome_of_a_started_claim_leaves_no_executed_time(harness: Harness) -> None:
    """A claim made started then reported SKIPPED (it never ran) keeps no executed_at."""
    store = harness.store
    store.add_jobs([job("a")])
    claim = store.claim_due("n1", [F], 1, start=True).claims[0]
    assert [True] == store.finish([outcome(claim, OutcomeKind.SKIPPED)])
    skipped = store.get_job("a")
    assert skipped is not None
    assert (TickerStatus.SKIPPED, None) == (skipped.status, skipped.executed_at_ms)


def test_claim_reports_how_many_claims_the_node_holds(harness: Harness) -> None:
    """ClaimBatch.held counts the node's claims after the call, earlier ones included."""
    store = harness.store
    store.add_jobs([job(f"j{i}") for i in range(5)])
    assert 2 == store.claim_due("n1", [F], 2).held
    finished = store.claim_due("n1", [F], 1)
    assert 3 == finished.held
    store.finish([outcome(finished.claims[0], OutcomeKind.DONE)])
    assert 1 == store.claim_due("n2", [F], 1).held
    assert 3 == store.claim_due("n1", [F], 1).held
    store.release_node("n1")
    assert 0 == store.claim_due("n1", [F], 0).held


@pytest.mark.slow
def test_release_node_hands_back_thousands_of_claims(harness: Harness) -> None:
    """A dead node's 1,200 claims (more than one release step) are all handed back, once."""
    store = harness.store
    store.add_jobs([job(f"j{i:04}") for i in range(1_200)])
    claims = claim_all(store, "dead") + claim_all(store, "dead")
    assert 1_200 == len(claims)
    store.start([(claim.job.id, claim.fence) for claim in claims[:600]])
    released = store.release_node("dead")
    assert sorted(f"j{i:04}" for i in range(1_200)) == released
    assert [] == harness.stores[1].release_node("dead")
    reclaimed = store.claim_due("alive", [attrs.evolve(F, free_slots=2_000)], 2_000).claims
    assert 1_200 == len(reclaimed)
    assert 600 == sum(claim.job.is_rerun for claim in reclaimed)


# -- crons ----------------------------------------------------------------------


def cron(cron_id: str = "c1", expression: str = "0 * * * * *", **fields: object) -> NewCron:
    return NewCron(id=cron_id, function="F", expression=expression, time_zone="UTC", **fields)  # type: ignore[arg-type]


def test_add_cron_is_idempotent_and_listed(harness: Harness) -> None:
    """add_cron returns the existing cron for the same function, expression and time zone."""
    store = harness.store
    first = store.add_cron(cron("c1", request=b"[1]", retries=2, retry_intervals=(3,)), 1_000)
    assert (True, 1_000, 0, b"[1]", 2, (3,)) == (
        first.enabled,
        first.next_ms,
        first.skipped_count,
        first.request,
        first.retries,
        first.retry_intervals,
    )
    assert first == store.add_cron(cron("c2"), 5_000)
    other = store.add_cron(cron("c3", expression="0 0 * * * *"), 7_000)
    assert ["c1", "c3"] == sorted(c.id for c in store.list_crons())
    assert other == store.get_cron("c3")
    assert store.remove_cron("c3")
    assert not store.remove_cron("c3")
    assert store.get_cron("c3") is None
    assert ["c1"] == [c.id for c in store.list_crons()]


def test_cron_ids_may_not_contain_an_at_sign() -> None:
    """A cron id with '@' is refused: occurrence ids are f"{cron_id}@{ms}"."""
    with pytest.raises(InvalidKeyError, match="'@'"):
        cron("a@b")


def test_enable_and_disable(harness: Harness) -> None:
    """A disabled cron materialises nothing until enabled again."""
    store = harness.store
    store.add_cron(cron(), 1_000)
    disabled = store.set_cron_enabled("c1", False)
    assert disabled is not None
    assert not disabled.enabled
    assert not store.materialize_cron("c1", 1_000, 1_000, 2_000, 0)
    assert store.get_job("c1@1000") is None
    enabled = store.set_cron_enabled("c1", True)
    assert enabled is not None
    assert enabled.enabled
    assert store.materialize_cron("c1", 1_000, 1_000, 2_000, 0)
    assert store.set_cron_enabled("missing", True) is None


def test_materialize_cron_creates_one_occurrence_under_racing_nodes(harness: Harness) -> None:
    """Nodes racing to materialise the same occurrence: one wins, the occurrence exists once."""
    store = harness.store
    now = store.now_ms()
    store.add_cron(cron(request=b'{"k":1}', retries=1), now - 1000)
    results: list[bool] = []
    go = threading.Barrier(9)

    def materialise(index: int) -> None:
        go.wait()
        results.append(
            harness.stores[index % 3].materialize_cron("c1", now - 1000, now - 1000, now + 59_000, 3)
        )

    threads = [threading.Thread(target=materialise, args=(i,)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [True] + [False] * 8 == sorted(results, reverse=True)
    record = store.get_cron("c1")
    assert record is not None
    assert (now + 59_000, 3) == (record.next_ms, record.skipped_count)
    claims = claim_all(store)
    assert [f"c1@{now - 1000}"] == [claim.job.id for claim in claims]
    occurrence = claims[0].job
    assert ("c1", now - 1000, b'{"k":1}', 1) == (
        occurrence.cron_id,
        occurrence.due_ms,
        occurrence.request,
        occurrence.retries,
    )


def test_materialize_without_occurrence_only_advances(harness: Harness) -> None:
    """materialize_cron with no occurrence advances the cron and counts skipped ones."""
    store = harness.store
    store.add_cron(cron(), 1_000)
    assert store.materialize_cron("c1", 1_000, None, 9_000, 8)
    assert not store.materialize_cron("c1", 1_000, None, 9_000, 8)
    assert not store.materialize_cron("missing", 1_000, None, 9_000, 0)
    record = store.get_cron("c1")
    assert record is not None
    assert (9_000, 8) == (record.next_ms, record.skipped_count)
    assert [] == claim_all(store)


def test_run_now_adds_one_extra_occurrence_due_now(harness: Harness) -> None:
    """run_now adds a distinct occurrence due now each time; unknown crons give None."""
    store = harness.store
    store.add_cron(cron(), store.now_ms() + 3_600_000)
    first = store.run_now("c1")
    second = store.run_now("c1")
    assert first is not None
    assert second is not None
    assert first != second
    assert store.run_now("missing") is None
    claims = claim_all(store)
    assert sorted([first, second]) == sorted(claim.job.id for claim in claims)
    assert all(claim.job.cron_id == "c1" for claim in claims)
    record = store.get_cron("c1")
    assert record is not None
    assert record.next_ms is not None
    assert record.next_ms > store.now_ms()


# -- retention ------------------------------------------------------------------


def test_finished_jobs_expire_after_retention(harness: Harness) -> None:
    """A finished job is gone after its retention and expire_finished trims its index entry."""
    store = harness.store
    store.add_jobs([job("short"), job("long")])
    claims = {claim.job.id: claim for claim in claim_all(store)}
    store.finish([outcome(claims["short"], OutcomeKind.DONE)], timedelta(milliseconds=200))
    store.finish([outcome(claims["long"], OutcomeKind.DONE)], timedelta(hours=1))
    assert 0 == store.expire_finished()
    assert store.get_job("short") is not None
    harness.advance(0.3)
    assert store.get_job("short") is None
    assert 1 == store.expire_finished()
    assert 0 == store.expire_finished()
    assert TickerStatus.DONE == store.get_job("long").status  # type: ignore[union-attr]


def test_expire_finished_respects_its_limit(harness: Harness) -> None:
    """expire_finished drops at most ``limit`` entries per call."""
    store = harness.store
    store.add_jobs([job(f"j{i}") for i in range(5)])
    store.finish(
        [outcome(claim, OutcomeKind.DONE) for claim in claim_all(store)], timedelta(milliseconds=100)
    )
    harness.advance(0.2)
    assert [2, 2, 1, 0] == [store.expire_finished(2) for _ in range(4)]
