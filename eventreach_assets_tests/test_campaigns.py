"""Campaign planning: who is invited, in which campaign, and when (per customer timezone)."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from eventreach_assets.domain.campaigns import (
    next_send_time,
    plan_invitations,
    plan_reminders,
    remaining_capacity,
    reminder_due,
    segment_summary,
)
from eventreach_assets.domain.delivery import MessageKind
from eventreach_assets.domain.filters import EventContext

EVENT = EventContext(
    event_id="ev-1",
    name="Data Summit",
    topics=["data"],
    start_time_utc=datetime(2026, 1, 20, 16, 0),  # Tue 17:00 Berlin, 11:00 New York
    capacity=5000,
    target_regions=["US", "DE"],
)
MONDAY_8_UTC = datetime(2026, 1, 12, 8, 0)  # 09:00 Berlin, 03:00 New York, 17:00 Tokyo


def candidates() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3", "c4", "c5", "c6"],
            "score": [0.91, 0.95, 0.91, 0.55, 0.7, 0.8],
            "marketplace": ["DE", "US", "DE", "US", "JP", "DE"],
            "timezone": ["Europe/Berlin", "America/New_York", "Europe/Berlin", "America/New_York", "Asia/Tokyo", None],
            "email": [f"c{i}@example.com" for i in range(1, 7)],
        }
    )


def plan(**overrides: object) -> pl.DataFrame:
    arguments: dict = {
        "event": EVENT,
        "channel": "email",
        "limit": 50_000,
        "remaining_capacity": 10_000,
        "send_time": "10:00",
        "now": MONDAY_8_UTC,
    }
    arguments.update(overrides)
    return plan_invitations(candidates(), **arguments)


def test_remaining_capacity_is_the_tighter_limit_minus_registrations_never_negative():
    assert remaining_capacity(5000, 10_000, 1200) == 3800
    assert remaining_capacity(50_000, 10_000, 1200) == 8800
    assert remaining_capacity(100, 10_000, 150) == 0


def test_keeps_top_by_score_with_ties_by_customer_id():
    result = plan(limit=3)
    assert result["customer_id"].to_list() == ["c2", "c1", "c3"]


def test_remaining_capacity_caps_the_plan_and_zero_plans_nothing():
    assert plan(limit=50_000, remaining_capacity=2)["customer_id"].to_list() == ["c2", "c1"]
    empty = plan(remaining_capacity=0)
    assert empty.height == 0
    assert {"campaign_id", "send_at_utc", "segment"} <= set(empty.columns)
    assert segment_summary(empty).height == 0


def test_each_segment_gets_ten_local():
    result = plan()
    by_customer = {row["customer_id"]: row for row in result.iter_rows(named=True)}
    berlin = by_customer["c1"]
    # 10:00 Berlin (CET, UTC+1) = 09:00 UTC, still ahead at 08:00 UTC: same day.
    assert berlin["send_at_local"] == datetime(2026, 1, 12, 10, 0)
    assert berlin["send_at_utc"] == datetime(2026, 1, 12, 9, 0)
    assert berlin["segment"] == "DE|Europe/Berlin"
    assert berlin["campaign_id"] == "ev-1:email:DE:Europe/Berlin:2026-01-12"
    new_york = by_customer["c2"]
    assert new_york["send_at_utc"] == datetime(2026, 1, 12, 15, 0)  # 10:00 EST
    # 17:00 in Tokyo already: 10:00 has passed, so tomorrow 10:00 JST = 01:00 UTC.
    tokyo = by_customer["c5"]
    assert tokyo["send_at_local"] == datetime(2026, 1, 13, 10, 0)
    assert tokyo["send_at_utc"] == datetime(2026, 1, 13, 1, 0)
    assert tokyo["campaign_id"].endswith(":JP:Asia/Tokyo:2026-01-13")
    # A missing timezone is scheduled in UTC rather than dropped.
    assert by_customer["c6"]["timezone"] == "UTC"
    assert by_customer["c6"]["send_at_utc"] == datetime(2026, 1, 12, 10, 0)


def test_summary_is_one_campaign_per_segment():
    summary = segment_summary(plan())
    assert summary.columns == [
        "campaign_id",
        "segment",
        "marketplace",
        "timezone",
        "recipients",
        "send_at_local",
        "send_at_utc",
    ]
    counts = dict(zip(summary["segment"], summary["recipients"], strict=True))
    assert counts == {"DE|Europe/Berlin": 2, "US|America/New_York": 2, "JP|Asia/Tokyo": 1, "DE|UTC": 1}
    assert summary["send_at_utc"].is_sorted()


def test_no_ten_oclock_left_before_the_event_sends_now():
    late = datetime(2026, 1, 20, 12, 0)  # event at 16:00 UTC; Berlin's next 10:00 is after it
    result = plan(now=late)
    berlin = result.filter(pl.col("customer_id") == "c1").row(0, named=True)
    assert berlin["send_at_utc"] == late
    assert berlin["send_at_local"] == datetime(2026, 1, 20, 13, 0)
    # New York's 10:00 EST (15:00 UTC) is still before the event.
    new_york = result.filter(pl.col("customer_id") == "c2").row(0, named=True)
    assert new_york["send_at_utc"] == datetime(2026, 1, 20, 15, 0)


def test_no_send_time_sends_now():
    result = plan(send_time=None)
    assert result["send_at_utc"].unique().to_list() == [MONDAY_8_UTC]


def test_summer_time_is_respected():
    summer_event = EventContext("ev-2", "S", [], datetime(2026, 7, 30, 12, 0), 10, [])
    moment = next_send_time(
        "10:00", timezone="Europe/Berlin", now=datetime(2026, 7, 6, 6, 0), latest=summer_event.start_time_utc
    )
    assert moment.replace(tzinfo=None) == datetime(2026, 7, 6, 10, 0)
    assert moment.utcoffset().total_seconds() == 7200  # CEST: 10:00 Berlin = 08:00 UTC


def test_bad_send_time_is_rejected():
    with pytest.raises(ValueError, match="HH:MM"):
        plan(send_time="ten")


def registered() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": ["r1", "r2", "r3"],
            "marketplace": ["DE", "US", "JP"],
            "timezone": ["Europe/Berlin", "America/New_York", "Asia/Tokyo"],
        }
    )


def test_day_of_reminder_at_nine_local_on_the_local_event_day():
    result = plan_reminders(
        registered(),
        event=EVENT,
        days_before=0,
        time="09:00",
        now=MONDAY_8_UTC,
        channel="email",
        kind=MessageKind.DAY_OF,
    )
    rows = {row["customer_id"]: row for row in result.iter_rows(named=True)}
    assert rows["r1"]["send_at_utc"] == datetime(2026, 1, 20, 8, 0)  # 09:00 CET
    assert rows["r2"]["send_at_utc"] == datetime(2026, 1, 20, 14, 0)  # 09:00 EST
    # In Tokyo the event starts at 01:00 on Wednesday: 09:00 would be after it, so the reminder
    # goes an hour before the start instead.
    assert rows["r3"]["send_at_local"] == datetime(2026, 1, 21, 0, 0)
    assert rows["r3"]["send_at_utc"] == datetime(2026, 1, 20, 15, 0)
    assert rows["r1"]["campaign_id"] == "ev-1:email:day-of:DE:Europe/Berlin:2026-01-20"  # kind from days_before
    explicit = plan_reminders(
        registered(), event=EVENT, days_before=0, time="09:00", now=MONDAY_8_UTC, kind=MessageKind.SURVEY
    )
    assert explicit["campaign_id"][0].startswith("ev-1:push:survey:")
    assert not result["late"].any()
    assert not result["too_late"].any()


def test_push_reminder_without_time_goes_now_and_late_launch_is_flagged():
    day_before = datetime(2026, 1, 19, 9, 0)
    now_plan = plan_reminders(registered(), event=EVENT, days_before=1, time=None, now=day_before)
    assert now_plan["send_at_utc"].unique().to_list() == [day_before]
    late_plan = plan_reminders(registered(), event=EVENT, days_before=1, time="08:00", now=day_before)
    berlin = late_plan.filter(pl.col("customer_id") == "r1").row(0, named=True)
    assert berlin["late"] and berlin["send_at_utc"] == day_before  # 08:00 CET = 07:00 UTC passed
    after = plan_reminders(registered(), event=EVENT, days_before=1, time=None, now=datetime(2026, 1, 20, 17, 0))
    assert after["too_late"].all()


def test_reminder_due():
    assert not reminder_due(EVENT, 0, "09:00", datetime(2026, 1, 20, 7, 59), "Europe/Berlin")
    assert reminder_due(EVENT, 0, "09:00", datetime(2026, 1, 20, 8, 0), "Europe/Berlin")
    assert not reminder_due(EVENT, 0, "09:00", datetime(2026, 1, 20, 16, 0), "Europe/Berlin")  # started
    assert reminder_due(EVENT, 1, None, datetime(2026, 1, 19, 9, 0), "Asia/Tokyo")
