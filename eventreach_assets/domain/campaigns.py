"""Campaign planning: who gets an invitation or a reminder, in which campaign, and when.

Pure polars, no Dagster. A campaign is one event x channel x segment (marketplace and
timezone) x local send date, so every customer gets the message at the configured wall-clock
time in *their* timezone ("10:00 local"), and the campaign id names everything a report or a
signed link needs to attribute a send. Send times are computed once per distinct timezone (a
handful) and joined back, so planning stays columnar at 50,000 rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from eventreach_assets.domain.delivery import MessageKind
from eventreach_assets.domain.events import EventContext
from eventreach_assets.domain.extract import KNOWN_TIMEZONES

DEFAULT_TIMEZONE = "UTC"  # customers without a (known) timezone are scheduled in UTC
UNKNOWN_MARKETPLACE = "unknown"
REMINDER_LEAD = timedelta(hours=1)  # a reminder is useless if it arrives as the event starts
# A segment whose local send time passed more than this long ago (the sensor was down, the batch
# was late) is not sent in the middle of the night: it moves to its next local send time.
WAVE_GRACE = timedelta(hours=2)

PLAN_COLUMNS: tuple[str, ...] = (
    "campaign_id",
    "segment",
    "send_at_local",  # naive wall-clock time in the customer's timezone
    "send_at_utc",  # naive UTC, what channel services schedule on
    "send_date_local",
)
SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "campaign_id": pl.String(),
    "segment": pl.String(),
    "marketplace": pl.String(),
    "timezone": pl.String(),
    "recipients": pl.UInt32(),
    "send_at_local": pl.Datetime("us"),
    "send_at_utc": pl.Datetime("us"),
}


# ---- capacity ---------------------------------------------------------------------------


def remaining_capacity(event_capacity: int, capacity_limit: int, registered: int) -> int:
    """Seats still open: the tighter of the event's and the program's capacity, minus registrations.

    Never negative, so `min(limit, remaining)` can be used directly as a head() size.
    """
    return max(0, min(event_capacity, capacity_limit) - max(0, registered))


# ---- time helpers ------------------------------------------------------------------------


@cache
def zone(name: str | None) -> ZoneInfo:
    """The zone for an IANA name; unknown or missing names fall back to UTC rather than failing a batch."""
    if not name:
        return ZoneInfo(DEFAULT_TIMEZONE)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TIMEZONE)


def parse_hhmm(value: str) -> time:
    """'10:00' -> time(10, 0); the YAML's sendTime / reminder time format."""
    try:
        hours, minutes = value.strip().split(":")
        return time(int(hours), int(minutes))
    except (ValueError, AttributeError) as error:
        raise ValueError(f"expected a time as HH:MM, got {value!r}") from error


def to_utc_naive(moment: datetime) -> datetime:
    """Naive UTC (the project's convention); naive input is taken as UTC already."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def to_local(moment_utc: datetime, timezone: str | None) -> datetime:
    """Aware datetime in `timezone` for a naive-UTC (or aware) moment."""
    aware = moment_utc.replace(tzinfo=UTC) if moment_utc.tzinfo is None else moment_utc
    return aware.astimezone(zone(timezone))


def _local_at(day: date, at: time, timezone: str | None) -> datetime:
    """Aware local datetime for a wall-clock time; a time skipped by DST moves past the gap."""
    naive = datetime.combine(day, at)
    aware = naive.replace(tzinfo=zone(timezone))
    # Round-trip through UTC normalises non-existent local times (spring-forward gaps).
    return aware.astimezone(UTC).astimezone(zone(timezone))


def next_send_time(send_time: str | None, *, timezone: str | None, now: datetime, latest: datetime) -> datetime:
    """Next `send_time` local at or after `now` and before `latest`; `now` if none is left (or None).

    Returns an aware local datetime. "Before the event" matters: an invitation scheduled for
    after the event starts is worse than one sent right away.
    """
    now_local = to_local(now, timezone)
    if send_time is None:
        return now_local
    at = parse_hhmm(send_time)
    candidate = _local_at(now_local.date(), at, timezone)
    if candidate < now_local:
        candidate = _local_at(now_local.date() + timedelta(days=1), at, timezone)
    if to_utc_naive(candidate) >= to_utc_naive(latest):
        return now_local
    return candidate


def reminder_send_time(
    event: EventContext,
    *,
    days_before: int,
    time_of_day: str | None,
    now: datetime,
    timezone: str | None,
    lead: timedelta = REMINDER_LEAD,
) -> datetime:
    """When a reminder is scheduled for one timezone (aware local): `time_of_day` local on the
    event's local date minus `days_before`, or `now` when no time is configured.

    Never later than `lead` before the start: where the event starts before 09:00 local (01:00 in
    Tokyo for a 16:00 UTC event) a "day of" reminder at 09:00 would arrive after it.
    """
    if time_of_day is None:
        return to_local(now, timezone)
    event_day = to_local(event.start_time_utc, timezone).date()
    planned = _local_at(event_day - timedelta(days=days_before), parse_hhmm(time_of_day), timezone)
    return min(planned, to_local(event.start_time_utc - lead, timezone))


def reminder_due(event: EventContext, days_before: int, time: str | None, now: datetime, timezone: str | None) -> bool:
    """Whether a reminder for customers in `timezone` should go out at `now`: its scheduled
    moment has come and the event has not started yet (a sensor can poll this per timezone)."""
    scheduled = reminder_send_time(event, days_before=days_before, time_of_day=time, now=now, timezone=timezone)
    now_utc = to_utc_naive(now)
    return to_utc_naive(scheduled) <= now_utc < to_utc_naive(event.start_time_utc)


# ---- planning ----------------------------------------------------------------------------


def _schedule_frame(timezones: list[str], compute: Callable[[str], datetime]) -> pl.DataFrame:
    """One row per distinct timezone with its local and UTC send moments."""
    rows = []
    for name in timezones:
        local = compute(name)
        rows.append(
            {
                "timezone": name,
                "send_at_local": local.replace(tzinfo=None),
                "send_at_utc": to_utc_naive(local),
                "send_date_local": local.date(),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "timezone": pl.String,
            "send_at_local": pl.Datetime("us"),
            "send_at_utc": pl.Datetime("us"),
            "send_date_local": pl.Date,
        },
    )


def _normalised(frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Lazy frame with non-null marketplace and timezone columns (added if the store lacks them)."""
    lazy = frame.lazy()
    names = lazy.collect_schema().names()
    if "customer_id" not in names:
        raise ValueError("candidates need a customer_id column")
    if "marketplace" not in names:
        lazy = lazy.with_columns(pl.lit(None, dtype=pl.String).alias("marketplace"))
    if "timezone" not in names:
        lazy = lazy.with_columns(pl.lit(None, dtype=pl.String).alias("timezone"))
    known = pl.col("timezone").is_in(sorted(KNOWN_TIMEZONES))
    return lazy.with_columns(
        pl.col("marketplace").fill_null(UNKNOWN_MARKETPLACE),
        pl.when(pl.col("timezone").is_not_null() & known)
        .then(pl.col("timezone"))
        .otherwise(pl.lit(DEFAULT_TIMEZONE))
        .alias("timezone"),
    )


def _with_schedule(lazy: pl.LazyFrame, schedule: pl.DataFrame, campaign_prefix: pl.Expr) -> pl.DataFrame:
    return (
        lazy.join(schedule.lazy(), on="timezone", how="left", maintain_order="left")
        .with_columns(pl.concat_str([pl.col("marketplace"), pl.col("timezone")], separator="|").alias("segment"))
        .with_columns(
            pl.concat_str(
                [
                    campaign_prefix,
                    pl.col("marketplace"),
                    pl.col("timezone"),
                    pl.col("send_date_local").dt.to_string("%Y-%m-%d"),
                ],
                separator=":",
            ).alias("campaign_id")
        )
        .collect()
    )


def plan_reminders(
    registered: pl.DataFrame | pl.LazyFrame,
    *,
    event: EventContext,
    days_before: int,
    time: str | None,
    now: datetime,
    channel: str = "push",
    kind: MessageKind | None = None,
) -> pl.DataFrame:
    """One reminder per registered customer, at `time` local on the event's local date minus
    `days_before` (now if `time` is None).

    Adds the plan columns plus `late` (the scheduled moment has passed: send now, the event has
    not started) and `too_late` (the event has started: do not send). `send_at_*` of a late row is
    `now`, so a launch after the scheduled time still reminds everyone once.
    campaign_id = event:channel:kind:marketplace:timezone:local send date; `kind` defaults to
    "reminder" for days_before > 0 and "day-of" on the event day.
    """
    if kind is None:
        kind = MessageKind.REMINDER if days_before > 0 else MessageKind.DAY_OF
    lazy = _normalised(registered).unique(subset="customer_id", keep="first", maintain_order=True)
    timezones = lazy.select(pl.col("timezone").unique().sort()).collect()["timezone"].to_list()
    now_utc = to_utc_naive(now)

    def scheduled(name: str) -> datetime:
        planned = reminder_send_time(event, days_before=days_before, time_of_day=time, now=now, timezone=name)
        return to_local(now, name) if to_utc_naive(planned) < now_utc else planned

    schedule = _schedule_frame(timezones, scheduled)
    planned_utc = {
        name: to_utc_naive(reminder_send_time(event, days_before=days_before, time_of_day=time, now=now, timezone=name))
        for name in timezones
    }
    schedule = schedule.with_columns(
        pl.col("timezone")
        .replace_strict(planned_utc, return_dtype=pl.Datetime("us"), default=None)
        .lt(pl.lit(now_utc, dtype=pl.Datetime("us")))
        .alias("late"),
        pl.lit(now_utc >= to_utc_naive(event.start_time_utc)).alias("too_late"),
    )
    return _with_schedule(lazy, schedule, pl.lit(f"{event.event_id}:{channel}:{kind}"))


def plan_follow_up(
    customers: pl.DataFrame | pl.LazyFrame, *, event: EventContext, channel: str, kind: MessageKind, now: datetime
) -> pl.DataFrame:
    """One message per customer, sent now (e.g. the post-event survey): the plan columns with
    campaign_id = event:channel:kind:marketplace:timezone:local send date."""
    lazy = _normalised(customers).unique(subset="customer_id", keep="first", maintain_order=True)
    timezones = lazy.select(pl.col("timezone").unique().sort()).collect()["timezone"].to_list()
    schedule = _schedule_frame(timezones, lambda name: to_local(now, name))
    return _with_schedule(lazy, schedule, pl.lit(f"{event.event_id}:{channel}:{kind}"))


def split_due(plan: pl.DataFrame, now: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows whose send time has come, rows still in the future): a reminder run sends the first
    and leaves the rest to the run launched at their time."""
    is_due = pl.col("send_at_utc") <= pl.lit(to_utc_naive(now), dtype=pl.Datetime("us"))
    return plan.filter(is_due), plan.filter(~is_due)


def segment_summary(plan: pl.DataFrame) -> pl.DataFrame:
    """One row per campaign (segment x send date) with its size and scheduled times, for metadata."""
    if plan.height == 0:
        return pl.DataFrame(schema=SUMMARY_SCHEMA)
    return (
        plan.group_by(["campaign_id", "segment", "marketplace", "timezone"])
        .agg(
            pl.len().cast(pl.UInt32).alias("recipients"),
            pl.col("send_at_local").min(),
            pl.col("send_at_utc").min(),
        )
        .sort(["send_at_utc", "segment"])
        .select(list(SUMMARY_SCHEMA))
    )


# ---- invitation waves -------------------------------------------------------------------

PRIOR_SCHEMA: dict[str, pl.DataType] = {"customer_id": pl.String(), "campaign_id": pl.String(), "status": pl.String()}
RETRYABLE = "failed_transient"  # the ledger status a later wave sends again

# Why a wave sends nothing: metadata says it in words an events team reads.
SOLD_OUT = "sold_out: no seats left"
REGISTRATION_CLOSED = "registration_closed: the registration deadline has passed"
NO_CANDIDATES = "no_candidates: nobody in the candidates table qualifies for this channel"
ALL_INVITED = "everyone_already_invited: every selected customer has this invitation"
NOTHING_DUE = "nothing_due: the next segment's local send time has not come yet"


def registration_deadline(event: EventContext, deadline_days: int) -> datetime:
    """The last moment an invitation is worth sending: registration closes `deadline_days` before."""
    return event.start_time_utc - timedelta(days=deadline_days)


@dataclass(frozen=True)
class InvitationWave:
    """One run of an invitation campaign: what goes out now, what waits for its local time, and why."""

    due: pl.DataFrame  # plan rows to send now (retries of transient failures first)
    deferred: pl.DataFrame  # selected rows whose segment's local send time is still ahead
    budget: int  # new invitations this wave could still select (seats and limit left)
    retries: int  # earlier transient failures sent again
    reason: str | None  # why nothing is due, when nothing is

    @property
    def next_due_at(self) -> datetime | None:
        """When the next segment is due (naive UTC): the event-date sensor launches the next wave then."""
        return self.deferred["send_at_utc"].min() if self.deferred.height else None  # type: ignore[return-value]

    @property
    def planned(self) -> pl.DataFrame:
        return pl.concat([self.due, self.deferred], how="vertical_relaxed")


def plan_invitation_wave(
    candidates: pl.DataFrame | pl.LazyFrame,
    *,
    prior: pl.DataFrame,
    outstanding: int,
    event: EventContext,
    channel: str,
    limit: int,
    remaining_capacity: int,
    send_time: str | None,
    batch_ready_at: datetime,
    now: datetime,
    deadline: datetime,
) -> InvitationWave:
    """The invitations of one wave: true per-segment local send times, stable across waves.

    - Each segment (marketplace x timezone) is sent at the first `send_time` local at or after the
      moment the batch was ready (`batch_ready_at`), before `deadline`; a segment whose time has
      passed by more than `WAVE_GRACE` moves to its next local send time, so nobody gets an
      invitation in the middle of their night; none left before the deadline: now.
    - `prior` are the ledger rows this campaign already has (customer, campaign, status): those
      customers are never planned again, except `failed_transient` ones, which are retried now;
      a segment that already went out (its campaign id is in `prior`) takes no new members.
    - New invitations are capped by what is left of `limit` and by the seats left
      (`remaining_capacity`) minus `outstanding` invitations not yet turned into registrations,
      so the campaign never invites more people than there are seats.
    """
    if "score" not in candidates.collect_schema().names():
        raise ValueError("candidates need a score column")
    prior = prior.select(list(PRIOR_SCHEMA)).cast(PRIOR_SCHEMA)  # type: ignore[arg-type]
    budget = max(0, min(limit - prior.height, remaining_capacity - outstanding))
    anchor = max(to_utc_naive(batch_ready_at), to_utc_naive(now) - WAVE_GRACE)
    ranked = _ranked(candidates)
    timezones = ranked["timezone"].unique().sort().to_list()
    schedule = _schedule_frame(
        timezones, lambda name: next_send_time(send_time, timezone=name, now=anchor, latest=deadline)
    )
    planned = _with_schedule(ranked.lazy(), schedule, pl.lit(f"{event.event_id}:{channel}"))
    retry_ids = prior.filter(pl.col("status") == RETRYABLE).select("customer_id")
    retries = planned.join(retry_ids, on="customer_id", how="semi", maintain_order="left").with_columns(
        send_at_utc=pl.lit(to_utc_naive(now), dtype=pl.Datetime("us"))
    )
    fresh = (
        planned.join(prior.select("customer_id"), on="customer_id", how="anti", maintain_order="left")
        .filter(~pl.col("campaign_id").is_in(prior["campaign_id"].unique().implode()))
        .head(budget)
    )
    is_due = pl.col("send_at_utc") <= pl.lit(to_utc_naive(now), dtype=pl.Datetime("us"))
    due = pl.concat([retries, fresh.filter(is_due)], how="vertical_relaxed")
    deferred = fresh.filter(~is_due)
    if to_utc_naive(now) >= to_utc_naive(deadline):  # registration closed: nothing new goes out
        return InvitationWave(due.head(0), deferred.head(0), budget, 0, REGISTRATION_CLOSED)
    reason = None if due.height else _why_nothing_due(deferred, remaining_capacity, ranked)
    return InvitationWave(due=due, deferred=deferred, budget=budget, retries=retries.height, reason=reason)


def _ranked(candidates: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Each customer once (their best row), best score first; ties by customer id."""
    return (
        _normalised(candidates)
        .sort(["score", "customer_id"], descending=[True, False], nulls_last=True)
        .unique(subset="customer_id", keep="first", maintain_order=True)
        .collect()
    )


def _why_nothing_due(deferred: pl.DataFrame, remaining_capacity: int, ranked: pl.DataFrame) -> str:
    """The reason a wave with nothing due gives, most telling first."""
    if deferred.height:
        return NOTHING_DUE
    if remaining_capacity <= 0:
        return SOLD_OUT
    if ranked.height == 0:
        return NO_CANDIDATES
    return ALL_INVITED
