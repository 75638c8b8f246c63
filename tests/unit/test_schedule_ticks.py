"""Tick arithmetic of schedules (`flowmill._schedules`): cron in a time zone, every=."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flowmill._schedules import dedup_key, iter_ticks, jitter_for, next_tick

PARIS = ZoneInfo("Europe/Paris")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def paris(ticks: list[int]) -> list[str]:
    return [datetime.fromtimestamp(t / 1000, PARIS).isoformat() for t in ticks]


def test_every_ticks_on_multiples_of_the_interval_since_the_epoch() -> None:
    assert next_tick("every:300000", None, 1_000) == 300_000
    assert next_tick("every:300000", None, 300_000) == 600_000  # strictly after


def test_a_wildcard_hour_fires_in_both_repeated_hours_of_a_fall_back() -> None:
    start = ms(datetime(2026, 10, 24, 23, 0, tzinfo=UTC))  # 01:00 CEST on 25 October
    ticks = list(itertools.islice(iter_ticks("cron:*/30 * * * *", "Europe/Paris", start), 5))
    assert paris(ticks) == [
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
    ]


def test_after_the_second_hour_began_a_fixed_time_waits_for_the_next_day() -> None:
    start = ms(datetime(2026, 10, 25, 1, 0, tzinfo=UTC))  # 02:00 CET, the repeated hour
    assert paris([next_tick("cron:30 2 * * *", "Europe/Paris", start)]) == [
        "2026-10-26T02:30:00+01:00"
    ]


def test_jitter_and_keys_are_fixed_by_schedule_and_tick() -> None:
    assert jitter_for("a", 60_000, 0) == 0
    assert jitter_for("a", 60_000, 1000) == jitter_for("a", 60_000, 1000) < 1000
    assert dedup_key("a", 60_000) == "schedule:a:60000"
