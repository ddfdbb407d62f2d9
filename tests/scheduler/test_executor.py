"""The scheduler running jobs on one node with the in-memory store (the embedded default)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import attrs
import pytest

from tests.conftest import wait_until
from tickerq import (
    ConfigurationError,
    FunctionRegistry,
    TickerFailed,
    TickerFinished,
    TickerFunctionContext,
    TickerManager,
    TickerQueued,
    TickerRecord,
    TickerStarted,
    TickerStatus,
    add_tickerq,
    ticker_function,
)
from tickerq._runtime.clock import ManualClock
from tickerq.scheduler.materializer import CronMaterializer
from tickerq.scheduler.memory_store import MemoryJobStore

Node = Callable[..., tuple[Any, TickerManager]]


@pytest.fixture
def registry() -> FunctionRegistry:
    return FunctionRegistry()


@pytest.fixture
def node(registry: FunctionRegistry) -> Iterator[Node]:
    """Start an embedded node with the given scheduler options; stopped at the end."""
    started: list[Any] = []

    def start(*, init: bool = True, **options: Any) -> tuple[Any, TickerManager]:
        options.setdefault("shutdown_timeout", 2)
        container = add_tickerq(lambda o: o.configure_scheduler(**options), functions=registry)
        started.append(container)
        if init:
            container.init_resources()
        return container, container.ticker_manager()

    yield start
    for container in started:
        container.shutdown_resources()


def status(manager: TickerManager, job_id: str) -> TickerStatus | None:
    record = manager.get(job_id)
    return None if record is None else record.status


def test_job_runs_with_its_context(registry: FunctionRegistry, node: Node) -> None:
    """A scheduled job runs once on a worker thread, with request, fence, node and an aware due time."""
    seen: list[tuple[TickerFunctionContext, str]] = []

    @ticker_function("Echo", registry=registry)
    def echo(context: TickerFunctionContext) -> None:
        seen.append((context, threading.current_thread().name))

    container, manager = node(node_identifier="solo")
    job_id = manager.schedule("Echo", request={"to": "a@example.com"})
    wait_until(lambda: status(manager, job_id) is TickerStatus.DONE, 5)
    [(context, thread)] = seen
    assert thread.startswith("tickerq-worker")
    assert (job_id, "Echo", {"to": "a@example.com"}, "solo", 0, False) == (
        context.job_id,
        context.function,
        context.request,
        context.node,
        context.retry_count,
        context.is_rerun,
    )
    assert context.fence > 0
    assert context.container is container
    record = manager.get(job_id)
    assert record is not None
    assert record.scheduled_for == context.scheduled_for
    assert record.executed_at is not None
    assert record.elapsed is not None
    assert "solo" == record.node


def test_request_type_builds_an_instance(registry: FunctionRegistry, node: Node) -> None:
    """With request_type, the function gets an instance of that class."""

    @attrs.frozen
    class Email:
        to: str

    got: list[object] = []
    ticker_function("Send", request_type=Email, registry=registry)(
        lambda context: got.append(context.request)
    )
    _, manager = node()
    manager.schedule("Send", request=Email("b@example.com"))
    wait_until(lambda: got, 5)
    assert [Email("b@example.com")] == got


def test_retries_follow_intervals(registry: FunctionRegistry, node: Node) -> None:
    """A failing job is retried ``retries`` times, the given intervals apart, then FAILED with its message."""
    attempts: list[tuple[float, int]] = []

    @ticker_function("Flaky", registry=registry)
    def flaky(context: TickerFunctionContext) -> None:
        attempts.append((time.monotonic(), context.retry_count))
        raise ValueError(f"attempt {context.retry_count}")

    _, manager = node()
    job_id = manager.schedule("Flaky", retries=2, retry_intervals=[0, 1])
    wait_until(lambda: status(manager, job_id) is TickerStatus.FAILED, 8)
    assert [0, 1, 2] == [count for _, count in attempts]
    assert attempts[2][0] - attempts[1][0] >= 0.95
    record = manager.get(job_id)
    assert record is not None
    assert (3, "ValueError: attempt 2") == (record.retry_count, record.exception_message)


def test_retry_then_success(registry: FunctionRegistry, node: Node) -> None:
    """A job that fails once and then succeeds ends DONE with one failed attempt counted."""

    @ticker_function("OnceFlaky", retries=1, registry=registry)
    def once(context: TickerFunctionContext) -> None:
        if context.retry_count == 0:
            raise RuntimeError("first")

    _, manager = node()
    job_id = manager.schedule("OnceFlaky")
    wait_until(lambda: status(manager, job_id) is TickerStatus.DONE, 5)
    assert 1 == manager.get(job_id).retry_count  # type: ignore[union-attr]


def test_cancel_during_run_sets_cancelled(registry: FunctionRegistry, node: Node) -> None:
    """Cancelling a running job sets context.cancelled; the job ends CANCELLED and is not retried."""
    running = threading.Event()

    @ticker_function("Long", retries=3, registry=registry)
    def long(context: TickerFunctionContext) -> None:
        running.set()
        assert context.cancelled.wait(10)
        raise RuntimeError("stopped on request")

    _, manager = node()
    job_id = manager.schedule("Long")
    assert running.wait(5)
    assert manager.cancel(job_id)
    wait_until(lambda: status(manager, job_id) is TickerStatus.CANCELLED, 5)


def test_producer_only_node_runs_nothing(registry: FunctionRegistry, node: Node) -> None:
    """A producer-only node (and a manager without init_resources) schedules but never runs jobs."""
    ran = threading.Event()
    ticker_function("Work", registry=registry)(lambda context: ran.set())
    container, producer = node(producer_only=True)
    assert None is container.scheduler()
    job_id = producer.schedule("Work")
    _, not_started = node(init=False)
    other = not_started.schedule("Work")
    assert not ran.wait(0.5)
    assert TickerStatus.IDLE == status(producer, job_id)
    assert TickerStatus.IDLE == status(not_started, other)


def test_unknown_function_stays_pending(registry: FunctionRegistry, node: Node) -> None:
    """A job for a function this node does not have stays IDLE and visible; the others run."""
    ticker_function("Known", registry=registry)(lambda context: None)
    _, manager = node()
    unknown = manager.schedule("NotDeployedYet")
    known = manager.schedule("Known")
    wait_until(lambda: status(manager, known) is TickerStatus.DONE, 5)
    time.sleep(0.2)
    assert TickerStatus.IDLE == status(manager, unknown)


def test_exception_handler_gets_record_and_exception(registry: FunctionRegistry, node: Node) -> None:
    """The exception_handler option is called on a worker with the job record and the exception."""
    calls: list[tuple[TickerRecord, BaseException, str]] = []
    error = KeyError("missing")

    def handler(record: TickerRecord, exc: BaseException) -> None:
        calls.append((record, exc, threading.current_thread().name))

    def boom(context: TickerFunctionContext) -> None:
        raise error

    ticker_function("Boom", registry=registry)(boom)
    _, manager = node(exception_handler=handler)
    job_id = manager.schedule("Boom")
    wait_until(lambda: calls, 5)
    [(record, exc, thread)] = calls
    assert exc is error
    assert (job_id, TickerStatus.FAILED, "KeyError: 'missing'") == (
        record.id,
        record.status,
        record.exception_message,
    )
    assert thread.startswith("tickerq-worker")


def test_lifecycle_events(registry: FunctionRegistry, node: Node) -> None:
    """TickerQueued, TickerStarted, then TickerFinished or TickerFailed reach the event hub."""
    ticker_function("Ok", registry=registry)(lambda context: None)

    def bad(context: TickerFunctionContext) -> None:
        raise RuntimeError("no")

    ticker_function("Bad", registry=registry)(bad)
    container, manager = node()
    events: list[object] = []
    container.events().subscribe(object, events.append)
    ok, failed = manager.schedule("Ok"), manager.schedule("Bad", at=0.05)
    wait_until(lambda: sum(isinstance(e, TickerFinished | TickerFailed) for e in events) == 2, 5)
    kinds = [(type(e).__name__, e.job_id) for e in events if hasattr(e, "job_id")]
    assert [("TickerQueued", ok), ("TickerStarted", ok), ("TickerFinished", ok)] == [
        k for k in kinds if k[1] == ok
    ]
    assert ["TickerQueued", "TickerStarted", "TickerFailed"] == [k for k, j in kinds if j == failed]
    assert all(isinstance(e, TickerQueued | TickerStarted | TickerFinished | TickerFailed) for e in events)


def test_max_concurrency_per_function_and_node(registry: FunctionRegistry, node: Node) -> None:
    """A function with max_concurrency=2 never runs more than 2 at once; the node total is respected too."""
    lock = threading.Lock()
    current = {"Limited": 0, "all": 0}
    peak = {"Limited": 0, "all": 0}

    def work(context: TickerFunctionContext) -> None:
        with lock:
            for key in {context.function, "all"} & current.keys():
                current[key] += 1
                peak[key] = max(peak[key], current[key])
        time.sleep(0.05)
        with lock:
            for key in {context.function, "all"} & current.keys():
                current[key] -= 1

    ticker_function("Limited", max_concurrency=2, registry=registry)(work)
    ticker_function("Free", registry=registry)(work)
    _, manager = node(max_concurrency=3)
    ids = manager.schedule_many([{"function": "Limited"}] * 8 + [{"function": "Free"}] * 8)
    wait_until(lambda: all(status(manager, i) is TickerStatus.DONE for i in ids), 10)
    assert 2 == peak["Limited"]
    assert 3 == peak["all"]


def test_shutdown_hands_unfinished_jobs_back(registry: FunctionRegistry, node: Node) -> None:
    """A job still running after shutdown_timeout gets cancelled set and is handed back as a re-run."""
    running = threading.Event()
    contexts: list[TickerFunctionContext] = []
    release = threading.Event()

    @ticker_function("Stubborn", registry=registry)
    def stubborn(context: TickerFunctionContext) -> None:
        contexts.append(context)
        running.set()
        release.wait(10)

    container, manager = node(shutdown_timeout=0.2)
    job_id = manager.schedule("Stubborn")
    assert running.wait(5)
    started = time.monotonic()
    container.shutdown_resources()
    try:
        assert time.monotonic() - started < 1.5
        assert contexts[0].cancelled.is_set()
        record = manager.get(job_id)
        assert record is not None
        assert (TickerStatus.IDLE, True) == (record.status, record.is_rerun)
    finally:
        release.set()
    # Started again, the node runs it as a re-run.
    running.clear()
    container.init_resources()
    assert running.wait(5)
    assert contexts[-1].is_rerun
    release.set()
    wait_until(lambda: status(manager, job_id) is TickerStatus.DONE, 5)


def test_shutdown_waits_for_running_jobs(registry: FunctionRegistry, node: Node) -> None:
    """A job that finishes within shutdown_timeout completes normally during shutdown."""
    running = threading.Event()

    @ticker_function("Short", registry=registry)
    def short(context: TickerFunctionContext) -> None:
        running.set()
        time.sleep(0.3)

    container, manager = node(shutdown_timeout=5)
    job_id = manager.schedule("Short")
    assert running.wait(5)
    container.shutdown_resources()
    assert TickerStatus.DONE == status(manager, job_id)


def test_cron_runs_every_second(registry: FunctionRegistry, node: Node) -> None:
    """A decorator cron '* * * * * *' runs once per second, at its second, on time."""
    runs: list[tuple[float, float]] = []

    @ticker_function("Tick", cron="* * * * * *", registry=registry)
    def tick(context: TickerFunctionContext) -> None:
        runs.append((context.scheduled_for.timestamp(), time.time()))

    node()
    wait_until(lambda: len(runs) >= 3, 6)
    scheduled = [s for s, _ in runs]
    assert all(b - a == 1.0 for a, b in itertools.pairwise(scheduled))
    assert all(0 <= started - due < 0.5 for due, started in runs)


def test_skip_if_running(registry: FunctionRegistry, node: Node) -> None:
    """With skip_if_running, occurrences due while the previous one runs are SKIPPED, never overlapping."""
    active = []
    overlap = []

    @ticker_function("Slow", cron="* * * * * *", skip_if_running=True, registry=registry)
    def slow(context: TickerFunctionContext) -> None:
        overlap.append(bool(active))
        active.append(1)
        time.sleep(1.6)
        active.pop()

    _, manager = node()
    [cron] = manager.list_crons()
    wait_until(lambda: len(overlap) >= 2, 8)
    assert [False, False] == overlap[:2]
    prefix = f"{cron.id}@"
    skipped = [
        job
        for job in manager.store._jobs.values()  # type: ignore[attr-defined]
        if job.id.startswith(prefix) and job.status is TickerStatus.SKIPPED
    ]
    assert skipped


def test_run_now_and_disable(registry: FunctionRegistry, node: Node) -> None:
    """run_now runs one extra occurrence at once; a disabled cron materialises nothing."""
    ran: list[str] = []
    ticker_function("Report", registry=registry)(lambda context: ran.append(context.job_id))
    _, manager = node()
    cron_id = manager.add_cron("Report", "0 0 0 1 1 *")  # yearly: not due during the test
    job_id = manager.run_now(cron_id)
    wait_until(lambda: ran, 5)
    assert [job_id] == ran
    every = manager.add_cron("Report", "* * * * * *")
    assert manager.disable_cron(every)
    time.sleep(1.5)
    assert [job_id] == ran


def test_redis_context_without_redis_is_a_configuration_error(node: Node) -> None:
    """In the embedded default, redis_context() raises ConfigurationError saying Redis is not configured."""
    container, _ = node()
    with pytest.raises(ConfigurationError, match="Redis is not configured"):
        container.redis_context()


@pytest.mark.parametrize("policy", ["run_once", "skip"])
def test_missed_occurrences_after_downtime(policy: str) -> None:
    """After downtime, a cron runs at most one missed occurrence (none with 'skip'); the rest are counted."""
    clock = ManualClock(wall=1_767_225_600.0)
    store = MemoryJobStore(clock=clock)
    manager = TickerManager(store, FunctionRegistry())
    cron_id = manager.add_cron("Tick", "* * * * * *")
    materializer = CronMaterializer(store, ["Tick"], policy, timedelta(seconds=5))
    clock.advance(3_600)  # the cluster was down for an hour
    materializer.run(store.now_ms())
    cron = store.get_cron(cron_id)
    assert cron is not None
    due = [job for job in store._jobs.values() if job.cron_id == cron_id]  # type: ignore[attr-defined]
    now = store.now_ms()
    recent = [job for job in due if job.due_ms > now - 5_000]  # within the threshold: run normally
    stale = [job for job in due if job.due_ms <= now - 5_000]
    assert (1 if policy == "run_once" else 0) == len(stale)
    assert 3_600 - 5 == cron.skipped_count + len(stale)
    assert [now - 4_000 + 1_000 * i for i in range(7)] == sorted(job.due_ms for job in recent)
    if stale:
        assert now - 5_000 == stale[0].due_ms  # the latest missed occurrence
