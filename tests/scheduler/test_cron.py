"""Cron math: parsing, time zones, daylight-saving gaps and folds, and croniter agreement."""

from __future__ import annotations

from datetime import UTC, datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from tickerq import ConfigurationError
from tickerq.scheduler.cron import CronSchedule, normalize_expression, resolve_time_zone


def ms(*parts: int, tz: timezone | ZoneInfo = UTC) -> int:
    return int(datetime(*parts, tzinfo=tz).timestamp() * 1000)  # type: ignore[misc]


def local(instant_ms: int, zone: str) -> str:
    return datetime.fromtimestamp(instant_ms / 1000, ZoneInfo(zone)).strftime("%m-%d %H:%M:%S %Z")


def test_five_fields_get_seconds_zero() -> None:
    """A 5-field expression is the 6-field one with seconds = 0."""
    assert "0 */5 * * * *" == normalize_expression("*/5 * * * *", function="F")
    assert "*/10 * * * * *" == normalize_expression("  */10  * * * *  * ", function="F")
    assert "0 0 * * * *" == normalize_expression("@hourly", function="F")


@pytest.mark.parametrize(
    "expression", ["", "* * *", "* * * * * * *", "61 * * * * *", "0 0 0 30 2 *", "x * * * *"]
)
def test_invalid_expression_names_function_and_expression(expression: str) -> None:
    """An invalid expression raises ConfigurationError naming the function and the expression."""
    with pytest.raises(ConfigurationError) as info:
        normalize_expression(expression, function="Report")
    assert "'Report'" in str(info.value)
    assert repr(expression) in str(info.value)


def test_unknown_time_zone_is_refused() -> None:
    """A time zone that is not an IANA name raises ConfigurationError naming it."""
    assert "Europe/Berlin" == resolve_time_zone("Europe/Berlin").key
    for bad in ["Mars/Olympus", "", "../etc/passwd", 3]:
        with pytest.raises(ConfigurationError, match="time_zone"):
            resolve_time_zone(bad)


def test_seconds_field_comes_first() -> None:
    """'5 * * * * *' fires at second 5 of every minute."""
    schedule = CronSchedule.parse("5 * * * * *", function="F")
    start = ms(2024, 1, 1)
    assert [start + 5_000, start + 65_000] == schedule.between(start, start + 120_000, 10)


def test_next_after_is_strictly_after() -> None:
    """An occurrence exactly at the given instant is not returned again."""
    schedule = CronSchedule.parse("* * * * * *", function="F")
    assert 2_000 == schedule.next_after(1_000)
    assert 2_000 == schedule.next_after(1_999)
    assert 1_000 == schedule.next_after(999)


def test_time_zone_shifts_occurrences() -> None:
    """A daily 09:00 cron in New York fires at 14:00 UTC in winter and 13:00 UTC in summer."""
    schedule = CronSchedule.parse("0 0 9 * * *", "America/New_York", function="F")
    assert ms(2024, 1, 15, 14) == schedule.next_after(ms(2024, 1, 15))
    assert ms(2024, 7, 15, 13) == schedule.next_after(ms(2024, 7, 15))


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # Berlin jumps 02:00 CET -> 03:00 CEST on 2024-03-31.
        (
            "Europe/Berlin",
            (2024, 3, 31),
            ["03-30 02:30:00 CET", "03-31 03:00:00 CEST", "04-01 02:30:00 CEST"],
        ),
        # New York jumps 02:00 EST -> 03:00 EDT on 2024-03-10.
        (
            "America/New_York",
            (2024, 3, 10),
            ["03-09 02:30:00 EST", "03-10 03:00:00 EDT", "03-11 02:30:00 EDT"],
        ),
    ],
)
def test_occurrence_in_dst_gap_runs_at_next_valid_instant(
    zone: str, day: tuple[int, int, int], expected: list[str]
) -> None:
    """02:30 on the spring-forward day does not exist: it runs once, at the end of the gap (03:00)."""
    schedule = CronSchedule.parse("0 30 2 * * *", zone, function="F")
    start = ms(*day, tz=ZoneInfo(zone)) - 86_400_000
    assert expected == [local(x, zone) for x in schedule.between(start, start + 3 * 86_400_000, 10)]


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # Berlin goes back 03:00 CEST -> 02:00 CET on 2024-10-27.
        (
            "Europe/Berlin",
            (2024, 10, 27),
            ["10-26 02:30:00 CEST", "10-27 02:30:00 CEST", "10-28 02:30:00 CET"],
        ),
        # New York goes back 02:00 EDT -> 01:00 EST on 2024-11-03.
        (
            "America/New_York",
            (2024, 11, 3),
            ["11-02 01:30:00 EDT", "11-03 01:30:00 EDT", "11-04 01:30:00 EST"],
        ),
    ],
)
def test_occurrence_in_dst_fold_runs_once(zone: str, day: tuple[int, int, int], expected: list[str]) -> None:
    """A wall-clock time that happens twice on the fall-back day runs once, at its first instant."""
    hour = 2 if zone == "Europe/Berlin" else 1
    schedule = CronSchedule.parse(f"0 30 {hour} * * *", zone, function="F")
    start = ms(*day, tz=ZoneInfo(zone)) - 86_400_000
    assert expected == [local(x, zone) for x in schedule.between(start, start + 3 * 86_400_000, 10)]


def test_every_second_through_a_gap_has_no_duplicates() -> None:
    """A per-second cron crossing Berlin's spring-forward gap yields strictly increasing instants."""
    schedule = CronSchedule.parse("* * * * * *", "Europe/Berlin", function="F")
    start = ms(2024, 3, 31, 0, 59, 58)  # 01:59:58 CET
    assert [start + 1000 * i for i in range(1, 6)] == schedule.between(start, start + 5_000, 100)


def test_every_second_skips_the_fold_second_pass() -> None:
    """A per-second cron does not repeat the wall-clock hour Berlin's fall-back replays."""
    schedule = CronSchedule.parse("* * * * * *", "Europe/Berlin", function="F")
    first_pass_end = ms(2024, 10, 27, 0, 59, 59)  # 02:59:59 CEST
    assert ms(2024, 10, 27, 2) == schedule.next_after(first_pass_end)  # 03:00:00 CET
    # Asked from inside the second pass, it also waits for 03:00 CET.
    assert ms(2024, 10, 27, 2) == schedule.next_after(ms(2024, 10, 27, 1, 30))


def test_between_is_bounded() -> None:
    """between() returns at most ``limit`` occurrences; count_between stops at its cap."""
    schedule = CronSchedule.parse("* * * * * *", function="F")
    assert 10 == len(schedule.between(0, 86_400_000, 10))
    assert 500 == schedule.count_between(0, 86_400_000, 500)
    assert 60 == schedule.count_between(0, 60_000, 500)


EXPRESSIONS = st.sampled_from(
    [
        "* * * * * *",
        "*/7 * * * * *",
        "0 */5 * * * *",
        "30 15 2 * * *",
        "0 0 9 * * 1-5",
        "0 0 0 1 * *",
        "15,45 * 8-17 * * *",
    ]
)
INSTANTS = st.integers(min_value=ms(2000, 1, 1), max_value=ms(2037, 1, 1))
ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])


@settings(max_examples=150, deadline=None)
@given(expression=EXPRESSIONS, zone=ZONES, start=INSTANTS)
def test_occurrences_strictly_increase(expression: str, zone: str, start: int) -> None:
    """Occurrences are strictly increasing, on whole seconds, and after the start, in any zone."""
    found = CronSchedule.parse(expression, zone, function="F").between(start, start + 40 * 86_400_000, 30)
    assert found
    assert all(b > a for a, b in zip([start, *found], found, strict=False))
    assert all(x % 1000 == 0 for x in found)


@settings(max_examples=150, deadline=None)
@given(expression=EXPRESSIONS, start=INSTANTS)
def test_matches_croniter_in_utc(expression: str, start: int) -> None:
    """Without daylight-saving time, occurrences are exactly croniter's."""
    reference = croniter(expression, datetime.fromtimestamp(start / 1000, UTC), second_at_beginning=True)
    expected = [int(reference.get_next(datetime).timestamp() * 1000) for _ in range(20)]
    assert expected == CronSchedule.parse(expression, function="F").between(start, expected[-1], 20)


def test_last_between_is_the_latest_occurrence() -> None:
    """last_between returns the latest occurrence in the window, or None when there is none."""
    schedule = CronSchedule.parse("0 */5 * * * *", function="F")
    start = ms(2024, 1, 1)
    assert start + 15 * 60_000 == schedule.last_between(start, start + 17 * 60_000)
    assert start + 15 * 60_000 == schedule.last_between(start, start + 15 * 60_000)
    assert None is schedule.last_between(start, start + 4 * 60_000)


@settings(max_examples=60, deadline=None)
@given(expression=EXPRESSIONS.filter(lambda e: not e.startswith("*")), zone=ZONES, start=INSTANTS)
def test_last_between_agrees_with_between(expression: str, zone: str, start: int) -> None:
    """last_between is the last element of between over the same window, in any zone."""
    schedule = CronSchedule.parse(expression, zone, function="F")
    found = schedule.between(start, start + 3 * 86_400_000, 100_000)
    assert (found[-1] if found else None) == schedule.last_between(start, start + 3 * 86_400_000)
