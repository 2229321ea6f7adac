"""When each step of an event's lifecycle is due: reminders, attendance tracking, the survey.

Pure: the event-date sensor asks `due_stages(events, now, ...)` every few minutes and launches
one run per row, with a run key that names the event, the stage and the moment it was due.
The moment is computed from the event's current start time, so a rescheduled event gets its
steps at the new dates (new run keys) and a cancelled event gets none.

Stages (use case "Scheduled Jobs" and the program's `eventConfig.reminderSchedule`; the
campaign stages are the rows of `domain.campaign_kinds.CAMPAIGN_KINDS`):
- email and in-app invitations: once the weekly batch has stored the event's candidates, then at
  each segment's local send time (10:00 / 14:00) that the last wave reported (`next_due_at`),
  until the registration deadline;
- push reminder: `daysBefore` days before the start, until the start;
- day-of email: from the first moment any customer's 09:00 (the YAML's time) on the event's
  local date can have come (15 hours before the start), until the start; the asset sends only
  to customers whose local 09:00 has come and reports when the next timezone is due
  (`next_due_at`), which the sensor launches next;
- attendance tracking: once the event has ended (start + duration) plus a grace period for
  the platform's export, then hourly (`next_due_at`) until the export is in, for a week;
- post-event survey: one day after the start, for a week.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from eventreach_assets.domain.campaign_kinds import CAMPAIGN_KINDS, Trigger, kinds_with
from eventreach_assets.domain.campaigns import parse_hhmm
from eventreach_assets.domain.events import normalize_events
from eventreach_assets.program.config import ReminderSpec

ATTENDANCE_GRACE = timedelta(minutes=30)
FOLLOW_UP_WINDOW = timedelta(days=7)
INVITATION_LOOKAHEAD = timedelta(days=60)  # invitation waves may open this long before the event

PUSH_REMINDER = CAMPAIGN_KINDS["push_reminders"].stage
DAY_OF_EMAIL = CAMPAIGN_KINDS["day_of_reminders"].stage
SURVEY = CAMPAIGN_KINDS["post_event_surveys"].stage
ATTENDANCE = "attendance"
REMINDER_STAGES = {"push": PUSH_REMINDER, "email": DAY_OF_EMAIL}  # reminderSchedule channel -> stage


@dataclass(frozen=True)
class Stage:
    """One lifecycle step: the job the sensor launches and the channel its runs are tagged with."""

    name: str
    job_name: str
    asset_name: str
    channel: str
    repeats: bool = False  # runs again at the `next_due_at` its last run reported (waves, attendance)
    after_batch: bool = False  # opens only once the weekly batch has stored the event's candidates


STAGES: dict[str, Stage] = {
    **{
        kind.stage: Stage(
            kind.stage,
            kind.job,
            kind.asset,
            kind.channel,
            repeats=kind.repeats,
            after_batch=kind.trigger == Trigger.WAVES,
        )
        for kind in CAMPAIGN_KINDS.values()
        if kind.trigger != Trigger.CATALOG
    },
    ATTENDANCE: Stage(ATTENDANCE, "attendance_tracking", "event_attendance", "event-platform", repeats=True),
}
WAVE_STAGES = [kind.stage for kind in kinds_with(Trigger.WAVES)]

DUE_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "stage": pl.String(),
    "due_at": pl.Datetime("us"),
    "until": pl.Datetime("us"),
    "start_time_utc": pl.Datetime("us"),
}


def first_local_time(start_utc: pl.Expr, days_before: int, time_of_day: str) -> pl.Expr:
    """The earliest UTC moment at which any customer can be due for a reminder at `time_of_day`
    local on the event's local date minus `days_before`.

    Wherever the event starts at local time s, the reminder is due s - time_of_day (+ the days)
    before the start; s < 24:00, so nobody is due earlier than (24:00 - time_of_day) + days before.
    """
    at = parse_hhmm(time_of_day)
    return start_utc - pl.duration(days=days_before + 1) + pl.duration(hours=at.hour, minutes=at.minute)


def lifecycle_schedule(
    events: pl.DataFrame, reminders: Sequence[ReminderSpec], registration_deadline_days: int = 1
) -> pl.DataFrame:
    """Every scheduled event's stages with the window in which each is due (DUE_SCHEMA).

    Invitation waves are due until the registration deadline (the sensor opens them only once
    the batch is ready). Cancelled events get no rows: nothing more is sent for them.
    """
    scheduled = normalize_events(events).filter(pl.col("status") == "scheduled")
    start = pl.col("start_time_utc")
    ended = start + pl.duration(minutes=pl.col("duration_minutes").fill_null(0)) + ATTENDANCE_GRACE
    survey_due = start + pl.duration(days=1)
    deadline = start - pl.duration(days=registration_deadline_days)
    windows: list[tuple[str, pl.Expr, pl.Expr]] = [
        (stage, start - INVITATION_LOOKAHEAD, deadline) for stage in WAVE_STAGES
    ]  # stage, due_at, until
    for reminder in reminders:
        stage = REMINDER_STAGES.get(reminder.channel)
        if stage is not None:
            due = (
                start - pl.duration(days=reminder.days_before)
                if reminder.time is None
                else first_local_time(start, reminder.days_before, reminder.time)
            )
            windows.append((stage, due, start))
    windows.append((ATTENDANCE, ended, ended + FOLLOW_UP_WINDOW))
    windows.append((SURVEY, survey_due, survey_due + FOLLOW_UP_WINDOW))
    parts = [
        scheduled.select("event_id", pl.lit(stage).alias("stage"), due.alias("due_at"), until.alias("until"), start)
        for stage, due, until in windows
    ]
    return pl.concat(parts).cast(DUE_SCHEMA).sort("due_at", "event_id")  # type: ignore[arg-type]


def due_stages(schedule: pl.DataFrame, now: datetime, event_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """The stages whose window contains `now` (due_at <= now < until), for `event_ids` if given."""
    due = schedule.filter((pl.col("due_at") <= now) & (pl.lit(now) < pl.col("until")))
    return due if event_ids is None else due.filter(pl.col("event_id").is_in(list(event_ids)))


def stage_run_key(event_id: str, stage: str, start_time_utc: datetime, due_at: datetime) -> str:
    """Names the event, the stage, the start it was computed from and the moment it fell due:
    a repeated tick asks for the same key (Dagster launches it once); a reschedule asks anew."""
    return f"{stage}:{event_id}:{start_time_utc:%Y%m%dT%H%M}:{due_at:%Y%m%dT%H%M}"
