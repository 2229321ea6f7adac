"""Events: what the pipeline knows about one (`EventContext`) and looking up the event a partition stands for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl


@dataclass(frozen=True)
class EventContext:
    """What filters, campaigns and messages need to know about the event a partition is for."""

    event_id: str
    name: str
    topics: list[str]
    start_time_utc: datetime  # naive UTC
    capacity: int
    target_regions: list[str]
    status: str = "scheduled"  # scheduled | cancelled (a cancelled event gets no further sends)
    duration_minutes: int = 60


def split_csv(column: str) -> pl.Expr:
    return pl.col(column).fill_null("").str.split(",").list.eval(pl.element().filter(pl.element() != ""))


def normalize_events(events: pl.DataFrame) -> pl.DataFrame:
    """Events with topics and target regions as lists (the warehouse stores CSV strings)."""
    return events.with_columns(
        split_csv("topics"),
        split_csv("target_regions"),
        pl.col("start_time_utc").cast(pl.Datetime("us")),
    )


class UnknownEventError(LookupError):
    """A partition key that names no event in the warehouse's events table."""


def event_context(events: pl.DataFrame, event_id: str) -> EventContext:
    """The event row for `event_id` as an EventContext, or a clear error naming the key."""
    rows = normalize_events(events.filter(pl.col("event_id") == event_id))
    if rows.height == 0:
        raise UnknownEventError(
            f"partition key {event_id!r} is not a known event: the warehouse's events table has no such event_id"
        )
    row = rows.row(0, named=True)
    if not row["topics"]:
        raise UnknownEventError(f"event {event_id!r} has no topics, so no candidate can match it")
    return EventContext(
        event_id=row["event_id"],
        name=row["name"],
        topics=list(row["topics"]),
        start_time_utc=row["start_time_utc"],
        capacity=int(row["capacity"]),
        target_regions=list(row["target_regions"]),
        status=str(row.get("status") or "scheduled"),
        duration_minutes=int(row.get("duration_minutes") or 60),
    )


def upcoming_event_ids(events: pl.DataFrame, now: datetime) -> list[str]:
    """Scheduled (not cancelled) events that have not started yet: the ones worth a batch."""
    return (
        normalize_events(events)
        .filter((pl.col("status") == "scheduled") & (pl.col("start_time_utc") > now))
        .sort("start_time_utc")["event_id"]
        .to_list()
    )


def upcoming_topics(events: pl.DataFrame, now: datetime) -> list[str]:
    """Every topic of the upcoming events: what a batch's shared profile snapshot must cover."""
    upcoming = upcoming_event_ids(events, now)
    rows = normalize_events(events).filter(pl.col("event_id").is_in(upcoming))
    return sorted(rows["topics"].explode().drop_nulls().unique().to_list())


REPORT_WINDOW_BEFORE = timedelta(days=30)  # reports for events starting within a month...
REPORT_WINDOW_AFTER = timedelta(days=8)  # ...or that started within the last 8 days (survey answers)


def reportable_event_ids(events: pl.DataFrame, now: datetime) -> list[str]:
    """Events whose campaign report is worth refreshing tonight (cancelled ones included: their
    report shows what was sent before the cancellation)."""
    start = pl.col("start_time_utc")
    return (
        normalize_events(events)
        .filter((start >= now - REPORT_WINDOW_AFTER) & (start <= now + REPORT_WINDOW_BEFORE))
        .sort("start_time_utc")["event_id"]
        .to_list()
    )
