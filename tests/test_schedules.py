"""When periodic tasks fall due (taskworker.schedules): pure functions of a
schedule, a time zone and a fixed `now`, checked against instants worked out by
hand from the calendar (not from croniter)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskworker.registry import RegistryError, task
from taskworker.schedules import Schedule, latest_tick, next_tick, show


def at(text: str) -> datetime:
    """An instant given in UTC: at("2024-10-27 00:30")."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ticks(schedule: Schedule, start: str, count: int, tz: str = "UTC") -> list[str]:
    """The `count` ticks after `start`, as UTC text."""
    found, now = [], at(start)
    for _ in range(count):
        now = next_tick(schedule, now, tz)
        found.append(show(now))
    return found


def test_every_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    every = Schedule(every=30)
    now = at("2024-01-01 12:00:45.250")
    assert latest_tick(every, now) == at("2024-01-01 12:00:30")
    assert next_tick(every, now) == at("2024-01-01 12:01:00")
    # On a tick: that tick is the latest due one, the next is one interval on.
    assert latest_tick(every, at("2024-01-01 12:00:30")) == at("2024-01-01 12:00:30")
    assert next_tick(every, at("2024-01-01 12:00:30")) == at("2024-01-01 12:01:00")
    # 7s does not divide a minute: still multiples of 7 s since 1970, whoever asks.
    seven = Schedule(every=7)
    tick = latest_tick(seven, now)
    assert tick.timestamp() % 7 == 0 and now - timedelta(seconds=7) < tick <= now
    # Time zones play no part in an interval.
    assert latest_tick(every, now, "Asia/Kolkata") == latest_tick(every, now)
    half = Schedule(every=0.5)
    assert ticks(half, "2024-01-01 00:00:00.2", 3) == [
        "2024-01-01T00:00:00.5Z", "2024-01-01T00:00:01Z", "2024-01-01T00:00:01.5Z"]


def test_cron_in_utc_by_default() -> None:
    five = Schedule(cron="*/5 * * * *")
    assert latest_tick(five, at("2024-01-01 12:07:13")) == at("2024-01-01 12:05")
    assert latest_tick(five, at("2024-01-01 12:05:00")) == at("2024-01-01 12:05")
    assert next_tick(five, at("2024-01-01 12:05:00")) == at("2024-01-01 12:10")
    assert next_tick(five, at("2024-01-01 12:59:59.9")) == at("2024-01-01 13:00")


def test_cron_follows_cron_tz_across_the_seasons() -> None:
    nine = Schedule(cron="0 9 * * *")
    # 09:00 in Berlin is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST).
    assert next_tick(nine, at("2024-01-15 00:00"), "Europe/Berlin") == at("2024-01-15 08:00")
    assert next_tick(nine, at("2024-07-15 00:00"), "Europe/Berlin") == at("2024-07-15 07:00")
    assert latest_tick(nine, at("2024-07-15 06:59"), "Europe/Berlin") == at("2024-07-14 07:00")
    # A zone with a half-hour offset: every hour on the hour there is :30 in UTC.
    assert ticks(Schedule(cron="0 * * * *"), "2024-01-01 00:00", 2, "Asia/Kolkata") == [
        "2024-01-01T00:30:00Z", "2024-01-01T01:30:00Z"]


def test_dst_spring_forward_runs_a_skipped_time_at_the_jump() -> None:
    # Berlin, 2024-03-31: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never happens.
    daily = Schedule(cron="30 2 * * *")
    assert ticks(daily, "2024-03-30 12:00", 2, "Europe/Berlin") == [
        "2024-03-31T01:00:00Z", "2024-04-01T00:30:00Z"]


def test_dst_fall_back_runs_a_fixed_time_once_and_every_hour_twice() -> None:
    # Berlin, 2024-10-27: 03:00 CEST goes back to 02:00 CET (at 01:00 UTC), so the
    # wall times 02:00-02:59 happen twice: 00:xx UTC and 01:xx UTC.
    daily = Schedule(cron="30 2 * * *")
    assert ticks(daily, "2024-10-26 12:00", 2, "Europe/Berlin") == [
        "2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"]
    # During the second 02:xx the latest due run is still the first 02:30.
    assert latest_tick(daily, at("2024-10-27 01:45"), "Europe/Berlin") == at("2024-10-27 00:30")
    assert next_tick(daily, at("2024-10-27 01:10"), "Europe/Berlin") == at("2024-10-28 01:30")
    hourly = Schedule(cron="0 * * * *")  # hour field `*`: each real hour runs
    assert ticks(hourly, "2024-10-26 23:30", 3, "Europe/Berlin") == [
        "2024-10-27T00:00:00Z", "2024-10-27T01:00:00Z", "2024-10-27T02:00:00Z"]


def test_schedule_text_round_trips() -> None:
    for text in ("cron */5 * * * *", "every 30s", "every 0.5s", "every 1234567s"):
        assert str(Schedule.parse(text)) == text
    for bad in ("cron */5 * * *", "cron 61 * * * *", "every 0s", "every", "hourly"):
        with pytest.raises(ValueError):
            Schedule.parse(bad)


def test_registry_records_the_schedule_that_processes_agree_on() -> None:
    def job(payload: str | None) -> None:
        return None

    task("test_schedules.long_interval", every=1234567)(job)
    task("test_schedules.half", every="500ms")(job)
    with pytest.raises(RegistryError, match="not a valid 5-field cron"):
        task("test_schedules.bad", cron="*/5 * * * * *")(job)
    from taskworker import registry

    assert registry.get("test_schedules.long_interval").schedule == "every 1234567s"
    assert registry.get("test_schedules.half").schedule == "every 0.5s"
