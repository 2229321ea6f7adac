"""Campaign planning: who is invited, in which campaign, and when (per customer timezone)."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from eventreach_assets.domain.campaigns import (
    ALL_INVITED,
    NO_CANDIDATES,
    NOTHING_DUE,
    PRIOR_SCHEMA,
    REGISTRATION_CLOSED,
    SOLD_OUT,
    WAVE_GRACE,
    InvitationWave,
    next_send_time,
    plan_invitation_wave,
    plan_reminders,
    remaining_capacity,
    reminder_due,
    segment_summary,
)
from eventreach_assets.domain.delivery import MessageKind
from eventreach_assets.domain.events import EventContext

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


def wave(frame: pl.DataFrame | None = None, **overrides: object) -> InvitationWave:
    arguments: dict = {
        "prior": pl.DataFrame(schema=PRIOR_SCHEMA),
        "outstanding": 0,
        "event": EVENT,
        "channel": "email",
        "limit": 50_000,
        "remaining_capacity": 10_000,
        "send_time": "10:00",
        "batch_ready_at": MONDAY_8_UTC,
        "now": MONDAY_8_UTC,
        "deadline": EVENT.start_time_utc,
    }
    arguments.update(overrides)
    if "now" in overrides and "batch_ready_at" not in overrides:
        arguments["batch_ready_at"] = arguments["now"]
    return plan_invitation_wave(candidates() if frame is None else frame, **arguments)


def plan(**overrides: object) -> pl.DataFrame:
    """Everything the campaign selected (due now and waiting for its local time), by score."""
    return wave(**overrides).planned.sort(["score", "customer_id"], descending=[True, False])


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


# ---- invitation waves: the real local send time of every segment ------------------------------------


def test_the_first_wave_sends_only_segments_whose_local_time_has_come():
    at_nine = datetime(2026, 1, 12, 9, 0)  # 10:00 Berlin has just come; New York's 10:00 is 15:00 UTC
    first = wave(batch_ready_at=MONDAY_8_UTC, now=at_nine)
    assert sorted(first.due["customer_id"]) == ["c1", "c3"]  # Berlin only
    assert (first.due["send_at_utc"] <= at_nine).all()
    assert (first.deferred["send_at_utc"] > at_nine).all()
    assert first.next_due_at == datetime(2026, 1, 12, 10, 0)  # the UTC segment (no timezone known)
    assert first.reason is None


def test_later_waves_send_the_next_segment_and_never_a_started_one_again():
    at_fifteen = datetime(2026, 1, 12, 15, 0)
    prior = pl.DataFrame(
        {"customer_id": ["c1", "c3", "c6"], "campaign_id": ["ev-1:email:DE:Europe/Berlin:2026-01-12"] * 2
         + ["ev-1:email:DE:UTC:2026-01-12"], "status": ["sent", "sent", "sent"]}
    )  # fmt: skip
    later = wave(prior=prior, outstanding=3, batch_ready_at=MONDAY_8_UTC, now=at_fifteen)
    assert sorted(later.due["customer_id"]) == ["c2", "c4"]  # New York, at its 10:00
    assert later.deferred["customer_id"].to_list() == ["c5"]  # Tokyo waits for its Tuesday 10:00
    assert later.next_due_at == datetime(2026, 1, 13, 1, 0)


def test_a_segment_missed_by_more_than_the_grace_moves_to_its_next_local_send_time():
    # The batch was ready at 08:00 UTC but the wave only ran at 20:00 UTC: Berlin's 10:00 was 11 hours ago.
    late = datetime(2026, 1, 12, 20, 0)
    assert late - datetime(2026, 1, 12, 9, 0) > WAVE_GRACE
    result = wave(batch_ready_at=MONDAY_8_UTC, now=late)
    berlin = result.deferred.filter(pl.col("customer_id") == "c1").row(0, named=True)
    assert berlin["send_at_local"] == datetime(2026, 1, 13, 10, 0)  # not at 21:00 local: tomorrow 10:00
    assert "c1" not in result.due["customer_id"].to_list()


def test_transient_failures_are_retried_and_capacity_counts_outstanding_invitations():
    prior = pl.DataFrame(
        {"customer_id": ["c1"], "campaign_id": ["ev-1:email:DE:Europe/Berlin:2026-01-12"],
         "status": ["failed_transient"]}
    )  # fmt: skip
    result = wave(prior=prior, outstanding=1, remaining_capacity=3, now=datetime(2026, 1, 12, 23, 30))
    assert result.retries == 1 and "c1" in result.due["customer_id"].to_list()
    assert result.budget == 2  # 3 seats, 1 invitation still outstanding
    assert result.planned.height == 3


def test_empty_cases_succeed_with_a_reason():
    sold_out = wave(remaining_capacity=0)
    assert sold_out.due.height == 0 and sold_out.reason == SOLD_OUT
    assert {"campaign_id", "send_at_utc", "segment"} <= set(sold_out.due.columns)
    no_one = wave(pl.DataFrame(schema={"customer_id": pl.String, "score": pl.Float64}))
    assert no_one.planned.height == 0 and no_one.reason == NO_CANDIDATES
    everyone = wave(prior=candidates().select("customer_id", campaign_id=pl.lit("x"), status=pl.lit("sent")))
    assert everyone.planned.height == 0 and everyone.reason == ALL_INVITED
    waiting = wave(now=datetime(2026, 1, 12, 8, 30))
    assert waiting.due.height == 0 and waiting.reason == NOTHING_DUE and waiting.next_due_at is not None
    closed = wave(now=datetime(2026, 1, 19, 17, 0), deadline=datetime(2026, 1, 19, 16, 0))
    assert closed.planned.height == 0 and closed.reason == REGISTRATION_CLOSED
