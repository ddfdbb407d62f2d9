"""The public scheduler API: decorator validation, registry, manager inputs and records."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from tickerq import (
    ConfigurationError,
    FunctionRegistry,
    SerializationError,
    TickerManager,
    TickerStatus,
    TimeTicker,
    ticker_function,
)
from tickerq._runtime.clock import ManualClock
from tickerq.scheduler.memory_store import MemoryJobStore


@pytest.fixture
def registry() -> FunctionRegistry:
    return FunctionRegistry()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall=1_767_225_600.0)  # 2026-01-01T00:00:00Z


@pytest.fixture
def manager(registry: FunctionRegistry, clock: ManualClock) -> TickerManager:
    return TickerManager(MemoryJobStore(clock=clock), registry)


def test_invalid_cron_at_decoration_names_function(registry: FunctionRegistry) -> None:
    """An invalid cron raises ConfigurationError at decoration, naming the function and the expression."""
    with pytest.raises(ConfigurationError, match=r"'Report'.*|.*'0 0 25 \* \* \*'") as info:
        ticker_function("Report", cron="0 0 25 * * *", registry=registry)
    assert "'Report'" in str(info.value)
    assert "'0 0 25 * * *'" in str(info.value)
    assert 0 == len(registry)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"cluster_concurrency": -1}, "cluster_concurrency"),
        ({"retries": -1}, "retries"),
        ({"retry_intervals": [1, "x"]}, "retry_intervals"),
        ({"skip_if_running": "yes"}, "skip_if_running"),
        ({"time_zone": "Mars/Base"}, "time_zone"),
    ],
)
def test_invalid_options_at_decoration(
    registry: FunctionRegistry, kwargs: dict[str, object], field: str
) -> None:
    """Each invalid decorator option raises ConfigurationError naming the field and the function."""
    with pytest.raises(ConfigurationError, match=field) as info:
        ticker_function("Job", registry=registry, **kwargs)  # type: ignore[arg-type]
    assert "'Job'" in str(info.value)


@pytest.mark.parametrize("name", ["", "has space", "a@b", 42])
def test_invalid_names_are_refused(registry: FunctionRegistry, name: object) -> None:
    """Function names must be non-empty strings without spaces or '@'."""
    with pytest.raises(ConfigurationError, match="name"):
        ticker_function(name, registry=registry)  # type: ignore[arg-type]


def test_duplicate_name_for_another_callable_is_refused(registry: FunctionRegistry) -> None:
    """Two different callables cannot share a name; the same callable may register again."""

    def first(context: object) -> None: ...

    def second(context: object) -> None: ...

    ticker_function("Dup", registry=registry)(first)
    ticker_function("Dup", registry=registry, retries=2)(first)
    assert 2 == registry.get("Dup").retries  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="already registered"):
        ticker_function("Dup", registry=registry)(second)


def test_decorator_returns_the_function_and_normalises_cron(registry: FunctionRegistry) -> None:
    """The decorated function is returned unchanged and its 5-field cron gets seconds = 0."""

    @ticker_function("Rollup", cron="*/5 * * * *", skip_if_running=True, registry=registry)
    def rollup(context: object) -> str:
        return "ran"

    assert "ran" == rollup(None)
    assert "0 */5 * * * *" == registry.get("Rollup").cron  # type: ignore[union-attr]
    assert "Rollup" == registry.name_of(rollup)


def test_schedule_relative_absolute_and_now(manager: TickerManager, clock: ManualClock) -> None:
    """at= takes a timedelta or seconds (store clock), an aware datetime, or None (now)."""
    now_ms = int(clock.time() * 1000)
    relative = manager.get(manager.schedule("Any", at=timedelta(seconds=10)))
    seconds = manager.get(manager.schedule("Any", at=2.5))
    absolute = manager.get(manager.schedule("Any", at=datetime(2026, 1, 2, tzinfo=UTC)))
    now = manager.get(manager.schedule("Any"))
    assert relative is not None
    assert seconds is not None
    assert absolute is not None
    assert now is not None
    assert datetime.fromtimestamp((now_ms + 10_000) / 1000, UTC) == relative.scheduled_for
    assert datetime.fromtimestamp((now_ms + 2_500) / 1000, UTC) == seconds.scheduled_for
    assert datetime(2026, 1, 2, tzinfo=UTC) == absolute.scheduled_for
    assert datetime.fromtimestamp(now_ms / 1000, UTC) == now.scheduled_for
    assert TickerStatus.IDLE == now.status
    assert now.scheduled_for.tzinfo is not None


def test_schedule_bad_inputs(manager: TickerManager) -> None:
    """A naive datetime, a negative delay, a bad name or an unencodable request raise TickerQErrors."""
    with pytest.raises(ConfigurationError, match="aware datetime"):
        manager.schedule("Any", at=datetime(2026, 1, 2))
    with pytest.raises(ConfigurationError, match="at="):
        manager.schedule("Any", at=timedelta(seconds=-1))
    with pytest.raises(ConfigurationError, match="name"):
        manager.schedule("bad name")
    with pytest.raises(ConfigurationError, match="function="):
        manager.schedule(lambda context: None)
    with pytest.raises(SerializationError):
        manager.schedule("Any", request=object())
    with pytest.raises(ConfigurationError, match="retries"):
        manager.schedule("Any", retries=-2)


@dataclasses.dataclass
class Email:
    to: str
    subject: str


def test_get_returns_immutable_record_with_request(manager: TickerManager) -> None:
    """get() returns a frozen record with the decoded request; unknown ids give None."""
    job_id = manager.schedule(
        "SendEmail", request=Email("a@example.com", "hi"), retries=3, retry_intervals=[30]
    )
    record = manager.get(job_id)
    assert record is not None
    assert {"to": "a@example.com", "subject": "hi"} == record.request
    assert (3, 0, None, None, None) == (
        record.retries,
        record.retry_count,
        record.executed_at,
        record.elapsed,
        record.exception_message,
    )
    with pytest.raises(AttributeError):
        record.status = TickerStatus.DONE  # type: ignore[misc]
    assert None is manager.get("no-such-job")


def test_function_defaults_apply_to_scheduled_jobs(
    registry: FunctionRegistry, manager: TickerManager
) -> None:
    """A registered function's retries and intervals are the defaults of schedule()."""
    ticker_function("Flaky", retries=4, retry_intervals=[1, 2], registry=registry)(lambda context: None)
    job = manager.store.get_job(manager.schedule("Flaky"))
    assert job is not None
    assert (4, (1, 2)) == (job.retries, job.retry_intervals)


def test_schedule_many_validates_all_then_stores(manager: TickerManager) -> None:
    """schedule_many stores every job (TimeTicker or mapping), and nothing when one is invalid."""
    ids = manager.schedule_many(
        [TimeTicker(function="A", request=1), {"function": "B", "at": timedelta(seconds=5)}]
        + [TimeTicker(function="C", request=i) for i in range(1_200)]
    )
    assert 1_202 == len(set(ids))
    assert ["A", "B"] == [manager.get(job_id).function for job_id in ids[:2]]  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError):
        manager.schedule_many([TimeTicker(function="D"), {"function": "E", "when": 5}])
    with pytest.raises(ConfigurationError):
        manager.schedule_many([TimeTicker(function="F"), TimeTicker(function="G", at=datetime(2026, 1, 1))])
    assert None is manager.store.next_due_ms(["D", "F"])


def test_cancel_before_run(manager: TickerManager) -> None:
    """Cancelling a waiting job makes it CANCELLED; cancelling again or an unknown id returns False."""
    job_id = manager.schedule("Any", at=60)
    assert manager.cancel(job_id)
    assert TickerStatus.CANCELLED == manager.get(job_id).status  # type: ignore[union-attr]
    assert not manager.cancel(job_id)
    assert not manager.cancel("unknown")


def test_add_cron_is_idempotent_and_validated(manager: TickerManager, clock: ManualClock) -> None:
    """add_cron returns the same id for the same definition; other zones are other crons."""
    first = manager.add_cron("Report", "0 */5 * * * *", request={"kind": "daily"})
    assert first == manager.add_cron("Report", "0 */5 * * *  *")
    assert first == manager.add_cron("Report", "*/5 * * * *")
    berlin = manager.add_cron("Report", "0 */5 * * * *", time_zone="Europe/Berlin")
    assert berlin != first
    record = manager.get_cron(first)
    assert record is not None
    assert ("0 */5 * * * *", "UTC", True, {"kind": "daily"}) == (
        record.expression,
        record.time_zone,
        record.enabled,
        record.request,
    )
    assert datetime.fromtimestamp(clock.time() + 300, UTC) == record.next_occurrence
    with pytest.raises(ConfigurationError, match="'Report'"):
        manager.add_cron("Report", "not a cron")
    with pytest.raises(ConfigurationError, match="time_zone"):
        manager.add_cron("Report", "* * * * *", time_zone="Nowhere")
    assert {first, berlin} == {cron.id for cron in manager.list_crons()}


def test_cron_controls(manager: TickerManager, clock: ManualClock) -> None:
    """run_now adds an occurrence due now; disable/enable/remove act on the cron; unknown ids say so."""
    cron_id = manager.add_cron("Report", "0 0 * * * *")
    job_id = manager.run_now(cron_id)
    assert job_id is not None
    job = manager.get(job_id)
    assert job is not None
    assert cron_id == job.cron_id
    assert TickerStatus.IDLE == job.status
    assert manager.disable_cron(cron_id)
    assert not manager.get_cron(cron_id).enabled  # type: ignore[union-attr]
    clock.advance(7_200)
    assert manager.enable_cron(cron_id)
    enabled = manager.get_cron(cron_id)
    assert enabled is not None
    assert enabled.enabled
    # Occurrences missed while disabled are not run: the next one is after now.
    assert enabled.next_occurrence == datetime.fromtimestamp(clock.time() + 3_600, UTC)
    assert manager.remove_cron(cron_id)
    assert not manager.remove_cron(cron_id)
    assert not manager.disable_cron(cron_id)
    assert not manager.enable_cron(cron_id)
    assert None is manager.run_now(cron_id)
