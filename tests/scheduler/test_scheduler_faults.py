"""The scheduler under real faults: lost replies, a slow dead-node release, Redis restarts, retention."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_until
from tests.netfault import FaultProxy
from tests.scheduler.cluster import producer_for, start_nodes, status
from tests.scheduler.conftest import Node
from tickerq import (
    FunctionRegistry,
    NodeHeartbeat,
    TickerFunctionContext,
    TickerQError,
    TickerStatus,
    ticker_function,
)
from tickerq.scheduler.model import FunctionLimits
from tickerq.testing import RedisServer


def test_lost_claim_reply_is_handed_back_while_other_jobs_run(
    registry: FunctionRegistry, node: Node, redis_server: RedisServer
) -> None:
    """A claim whose reply is lost while the node runs another job is handed back: run soon, exactly once."""
    runs: list[tuple[str, str, bool]] = []
    done = threading.Event()
    ticker_function("Busy", registry=registry)(lambda context: done.wait(15))
    ticker_function("LostReplyProbe", registry=registry)(
        lambda context: runs.append((context.job_id, context.node, context.is_rerun))
    )
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        node("worker", address=proxy.address, poll_interval=30, max_concurrency=4)
        _, producer = node("producer", init=False)
        busy = producer.schedule("Busy")
        wait_until(lambda: status(producer, busy) is TickerStatus.IN_PROGRESS, 5)
        # The claim reply carries the claimed record, which names the function.
        proxy.drop_reply_containing(b"LostReplyProbe")
        probe = producer.schedule("LostReplyProbe")
        wait_until(lambda: runs, 5)  # long before Busy ends (15 s)
        assert 1 == proxy.dropped
        wait_until(lambda: status(producer, probe) is TickerStatus.DONE, 5)
        assert TickerStatus.IN_PROGRESS == status(producer, busy)
        time.sleep(0.3)
        assert [(probe, "worker", False)] == runs
        done.set()
        wait_until(lambda: status(producer, busy) is TickerStatus.DONE, 5)


def test_lost_claim_reply_that_carried_outcomes_loses_and_doubles_nothing(
    registry: FunctionRegistry, node: Node, redis_server: RedisServer
) -> None:
    """A lost reply of a claim that also reported an outcome: that job stays DONE, the new one runs once."""
    runs: list[tuple[str, str, bool]] = []
    gate = threading.Event()
    ticker_function("Gated", registry=registry)(
        lambda context: runs.append((context.job_id, "", gate.wait(15)))
    )
    ticker_function("LostReplyProbe", registry=registry)(
        lambda context: runs.append((context.job_id, context.node, context.is_rerun))
    )
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        # One worker: while Gated runs there is no room, so the probe is claimed in the very
        # call that reports Gated's outcome.
        node("worker", address=proxy.address, poll_interval=30, max_concurrency=1)
        _, producer = node("producer", init=False)
        gated = producer.schedule("Gated")
        wait_until(lambda: status(producer, gated) is TickerStatus.IN_PROGRESS, 5)
        proxy.drop_reply_containing(b"LostReplyProbe")
        probe = producer.schedule("LostReplyProbe")
        time.sleep(0.2)  # the worker has seen the wake-up and found no room
        gate.set()
        wait_until(lambda: status(producer, probe) is TickerStatus.DONE, 5)
        assert 1 == proxy.dropped
        assert TickerStatus.DONE == status(producer, gated)
        time.sleep(0.3)
        assert [(gated, "", True), (probe, "worker", False)] == runs


@pytest.mark.slow
def test_slow_dead_node_release_does_not_stall_the_releasing_node(
    registry: FunctionRegistry, node: Node, redis_server: RedisServer
) -> None:
    """A dead node's 5,000 claims are released while the survivor keeps beating and running its own jobs."""
    own: list[float] = []
    released: Counter[tuple[str, bool]] = Counter()
    lock = threading.Lock()

    def record_release(context: TickerFunctionContext) -> None:
        with lock:
            released[(context.job_id, context.is_rerun)] += 1

    ticker_function("Own", registry=registry)(lambda context: own.append(time.monotonic()))
    ticker_function("Orphan", registry=registry)(record_release)
    ghost, producer = node("ghost", producer_only=True)
    ids = producer.schedule_many([{"function": "Orphan"}] * 5_000)
    batch = producer.store.claim_due("ghost", [FunctionLimits(name="Orphan", free_slots=5_000)], 5_000)
    assert 5_000 == len(batch.claims)
    started = batch.claims[:2_500]
    assert all(producer.store.start([(claim.job.id, claim.fence) for claim in started]))
    ghost.shutdown_resources()  # its heartbeat expires: the survivor finds it dead and releases it

    survivor, _ = node("survivor", max_concurrency=8)
    beats: list[float] = []
    survivor.events().subscribe(NodeHeartbeat, lambda event: beats.append(time.monotonic()))
    watcher, _ = node("watcher", init=False)
    seen_dead: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        context = watcher.redis_context()
        while not stop.wait(0.02):
            seen_dead.update(context.get_dead_nodes())

    thread = threading.Thread(target=watch, name="test-watcher")
    thread.start()
    try:
        asked: list[float] = []
        while len(released) < 5_000 and len(asked) < 100:
            asked.append(time.monotonic())
            producer.schedule("Own")
            wait_until(lambda: len(own) == len(asked), 2, interval=0.005)
            time.sleep(0.05)
        wait_until(lambda: len(released) == 5_000, 15, interval=0.05)
    finally:
        stop.set()
        thread.join(5)
    assert "ghost" in seen_dead
    assert "survivor" not in seen_dead
    assert max(b - a for a, b in itertools.pairwise(beats)) < 0.3 + 0.3  # never missed a TTL
    assert {1} == set(released.values())
    rerun_ids = {job_id for job_id, is_rerun in released if is_rerun}
    assert {claim.job.id for claim in started} == rerun_ids
    assert set(ids) == {job_id for job_id, _ in released}


def test_finished_jobs_and_their_index_entries_expire_after_retention(
    registry: FunctionRegistry, node: Node, redis_client: redis.Redis
) -> None:
    """DONE, FAILED and CANCELLED jobs are gone after job_retention, and no index keeps them."""
    ticker_function("Fine", registry=registry)(lambda context: None)

    def broken(context: TickerFunctionContext) -> None:
        raise RuntimeError("boom")

    ticker_function("Broken", registry=registry)(broken)
    _, manager = node("worker", job_retention=timedelta(seconds=1))
    ids = [manager.schedule("Fine") for _ in range(20)] + [manager.schedule("Broken") for _ in range(5)]
    cancelled = manager.schedule("Fine", at=timedelta(hours=1))
    manager.cancel(cancelled)
    wait_until(lambda: all(status(manager, i) in {TickerStatus.DONE, TickerStatus.FAILED} for i in ids), 5)
    assert 25 + 1 == redis_client.zcard("tickerq:tq:finished")
    wait_until(lambda: all(manager.get(i) is None for i in [*ids, cancelled]), 5)
    wait_until(lambda: 0 == redis_client.zcard("tickerq:tq:finished"), 5)  # trimmed by the worker's chore
    job_keys = ("jobs:", "job:", "due:", "running:", "claims:", "finished")
    leftovers = [key for key in redis_client.scan_iter("tickerq:tq:*") if key[11:].startswith(job_keys)]
    assert [] == leftovers


@pytest.mark.multiprocess
@pytest.mark.slow
def test_redis_restart_with_persistence_loses_and_doubles_nothing(
    processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """redis-server killed and restarted (appendonly) under 3 node processes: every job runs exactly once."""
    log = tmp_path / "runs.log"
    env = {f"node-{i}": {"TICKERQ_TEST_RUN_LOG": str(log)} for i in range(3)}
    with RedisServer(appendonly=True) as server:
        start_nodes(server, processes, 3, **env)
        container, producer = producer_for(server)
        try:
            long = producer.schedule_many([{"function": "Record", "request": 1.5}] * 12)
            short = producer.schedule_many([{"function": "Record", "at": 1.0}] * 100)
            wait_until(lambda: sum(status(producer, i) is TickerStatus.IN_PROGRESS for i in long) >= 4, 5)
            server.kill()  # a crash, down longer than the heartbeat TTL (0.6 s): every heartbeat expires
            time.sleep(1.5)
            server.start()
            wait_until(lambda: all(status(producer, i) is TickerStatus.DONE for i in long + short), 20, 0.1)
            time.sleep(1.0)  # a doubled run would show up by now
            runs = Counter(line.split("|")[0] for line in log.read_text().splitlines())
            assert set(long + short) == set(runs)
            assert {1} == set(runs.values())
        finally:
            container.shutdown_resources()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["run_once", "skip"])
def test_catch_up_after_whole_cluster_downtime_is_bounded(
    registry: FunctionRegistry, node: Node, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    """All nodes down for 5 cron periods: one catch-up runs (none with 'skip'); the rest are accounted for."""
    ran: list[float] = []
    ticker_function("Tick", cron="* * * * * *", registry=registry)(
        lambda context: ran.append(context.scheduled_for.timestamp())
    )
    options = {"missed_occurrence_policy": policy, "missed_occurrence_threshold": 1}
    first, manager = node("a", **options)
    wait_until(lambda: len(ran) >= 2, 5)
    first.shutdown_resources()
    stopped = time.time()
    time.sleep(5)  # the whole cluster is down
    restarted = time.time()
    node("b", **options)
    wait_until(lambda: any(at > restarted for at in ran), 5)
    time.sleep(0.5)
    [cron] = manager.store.list_crons()
    missed = [at for at in ran if stopped < at <= restarted - 1]  # older than the threshold at restart
    assert (1 if policy == "run_once" else 0) == len(missed), (stopped, restarted, sorted(ran))
    assert len(ran) == len(set(ran))  # no occurrence twice
    # Every missed occurrence that did not run is accounted for: a SKIPPED record (one stored
    # ahead of the downtime) or the cron's count (one never stored), never silently lost.
    not_run = [
        second
        for second in range(int(stopped) + 1, int(restarted))
        if second not in ran and status(manager, f"{cron.id}@{second * 1000}") is not TickerStatus.SKIPPED
    ]
    assert 1 <= len(not_run) <= cron.skipped_count
    assert any("were skipped" in record.getMessage() for record in caplog.records)


def test_job_for_a_function_no_live_node_has_stays_pending(registry: FunctionRegistry, node: Node) -> None:
    """On Redis, a job for a function no running node has stays IDLE and visible while others run."""
    ticker_function("Deployed", registry=registry)(lambda context: None)
    node("worker")
    _, producer = node("producer", init=False)
    pending = producer.schedule("NotDeployedYet")
    done = producer.schedule("Deployed")
    wait_until(lambda: status(producer, done) is TickerStatus.DONE, 5)
    time.sleep(0.3)
    record = producer.get(pending)
    assert record is not None
    assert (TickerStatus.IDLE, None) == (record.status, record.node)


@pytest.mark.slow
def test_redis_data_loss_loses_pending_jobs_but_nodes_keep_working(
    registry: FunctionRegistry, node: Node, fault_server: RedisServer
) -> None:
    """A restart without persistence loses pending jobs; running ones finish; new jobs run exactly once."""
    runs: Counter[str] = Counter()
    gate = threading.Event()
    ticker_function("Wait", registry=registry)(lambda context: gate.wait(10))
    ticker_function("Count", registry=registry)(lambda context: runs.update([context.job_id]))
    node("worker", address=fault_server.address)
    _, producer = node("producer", init=False, address=fault_server.address)
    running = producer.schedule("Wait")
    pending = producer.schedule("Count", at=timedelta(hours=1))
    wait_until(lambda: status(producer, running) is TickerStatus.IN_PROGRESS, 5)
    fault_server.restart()  # no persistence: every key is gone
    gate.set()
    after = wait_until(lambda: _try_schedule(producer, "Count"), 5)
    wait_until(lambda: runs[str(after)] == 1, 10)
    time.sleep(0.5)
    assert (None, None) == (producer.get(pending), producer.get(running))
    assert Counter({str(after): 1}) == runs


def _try_schedule(manager: object, function: str) -> str | None:
    try:
        return manager.schedule(function)  # type: ignore[attr-defined, no-any-return]
    except TickerQError:  # Redis still coming back
        return None


def test_a_producer_only_node_releases_a_dead_workers_jobs(
    registry: FunctionRegistry, node: Node, redis_client: redis.Redis
) -> None:
    """When a producer-only node is the one whose scan finds a dead worker, the worker's claims are
    handed back (not dropped with it from the registry), and a worker started later runs them once."""
    runs: Counter[tuple[str, bool]] = Counter()
    lock = threading.Lock()

    def record(context: TickerFunctionContext) -> None:
        with lock:
            runs[(context.job_id, context.is_rerun)] += 1

    ticker_function("Orphan", registry=registry)(record)
    ghost, producer = node("ghost", producer_only=True)
    ids = producer.schedule_many([{"function": "Orphan"}] * 10)
    batch = producer.store.claim_due("ghost", [FunctionLimits(name="Orphan", free_slots=10)], 10)
    assert all(producer.store.start([(claim.job.id, claim.fence) for claim in batch.claims]))
    ghost.shutdown_resources()  # dies holding 10 running jobs
    node("web", producer_only=True)  # the only live node: its scan finds the ghost dead
    wait_until(lambda: not redis_client.sismember("tickerq:tq:nodes", "ghost"), 10)
    node("worker", max_concurrency=4)
    wait_until(lambda: len(runs) == 10, 10)
    assert {(job_id, True) for job_id in ids} == set(runs)
    assert {1} == set(runs.values())
