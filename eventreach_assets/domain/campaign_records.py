"""The records every campaign figure is computed from: the delivery ledger's rows and the engagement
store's, checked for the columns each computation reads and normalised (ids as text, times as
naive UTC), so attribution, the channel report and the daily metrics read them the same way
(pure polars: no Dagster, no I/O).

Aware or ISO text times are converted, as the feeds' validators do (`feed_records.utc_naive`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from eventreach_assets.domain.feed_records import utc_naive
from eventreach_assets.domain.feedback import OUTCOME_COLUMNS

# What each function reads (the ledger's and the engagement store's columns).
DELIVERY_COLUMNS = ("event_id", "customer_id", "channel", "kind", "status", "campaign_id")
REGISTRATION_COLUMNS = ("event_id", "customer_id", "channel", "campaign_id", "status", "registered_at")
INTERACTION_COLUMNS = ("event_id", "customer_id", "channel", "campaign_id", "action", "occurred_at")
ATTENDANCE_COLUMNS = ("event_id", "customer_id", "minutes_watched")
SURVEY_COLUMNS = ("event_id", "customer_id", "rating")
_TIME = pl.Datetime("us")


def check_columns(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Raise ValueError naming the missing `columns` of `frame`, or its rows without an event_id."""
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks columns {missing} (has {frame.columns})")
    nulls = frame.select(pl.col("event_id").is_null().sum()).item() if "event_id" in frame.columns else 0
    if nulls:
        raise ValueError(f"{what} frame has {nulls} rows without an event_id")


def _texts(frame: pl.DataFrame, *names: str) -> list[pl.Expr]:
    return [pl.col(name).cast(pl.String) for name in names if name in frame.columns]


def _times(frame: pl.DataFrame, *names: str) -> list[pl.Expr]:
    return [utc_naive(name, frame.schema[name]) for name in names if name in frame.columns]


@dataclass(frozen=True)
class CampaignRecords:
    """The five inputs with ids as text and times as naive UTC."""

    deliveries: pl.DataFrame
    registrations: pl.DataFrame
    interactions: pl.DataFrame
    attendance: pl.DataFrame
    survey: pl.DataFrame

    @classmethod
    def of(
        cls,
        deliveries: pl.DataFrame,
        registrations: pl.DataFrame,
        interactions: pl.DataFrame,
        attendance: pl.DataFrame,
        survey: pl.DataFrame,
        *,
        timed: bool = False,
    ) -> CampaignRecords:
        """Checked and normalised; `timed` also requires the times the daily metrics count by."""
        extra = {"deliveries": ("sent_at",), "attendance": ("joined_at",), "survey": ("submitted_at",)}
        for frame, columns, what in (
            (deliveries, DELIVERY_COLUMNS, "deliveries"),
            (registrations, REGISTRATION_COLUMNS, "registrations"),
            (interactions, INTERACTION_COLUMNS, "interactions"),
            (attendance, ATTENDANCE_COLUMNS, "attendance"),
            (survey, SURVEY_COLUMNS, "survey"),
        ):
            check_columns(frame, columns + (extra.get(what, ()) if timed else ()), what)
        # Provider feedback (feedback.message_outcomes); without it nothing is known to be delivered.
        absent = [pl.lit(None, dtype).alias(name) for name, dtype in OUTCOME_COLUMNS.items() if name not in deliveries]
        return cls(
            deliveries=deliveries.with_columns(
                *_texts(deliveries, *DELIVERY_COLUMNS), *_times(deliveries, "sent_at", "updated_at", *OUTCOME_COLUMNS)
            ).with_columns(absent),
            registrations=registrations.with_columns(
                *_texts(registrations, *REGISTRATION_COLUMNS[:-1]), *_times(registrations, "registered_at")
            ),
            interactions=interactions.with_columns(
                *_texts(interactions, *INTERACTION_COLUMNS[:-1]), *_times(interactions, "occurred_at")
            ),
            attendance=attendance.with_columns(
                *_texts(attendance, "event_id", "customer_id"),
                pl.col("minutes_watched").cast(pl.Float64),
                *_times(attendance, "joined_at"),
            ),
            survey=survey.with_columns(
                *_texts(survey, "event_id", "customer_id"),
                pl.col("rating").cast(pl.Float64),
                *_times(survey, "submitted_at"),
            ),
        )

    def event_ids(self) -> list[str]:
        frames = (self.deliveries, self.registrations, self.interactions, self.attendance, self.survey)
        return sorted(set(pl.concat([frame["event_id"].cast(pl.String) for frame in frames]).drop_nulls().to_list()))

    def until(self, end: datetime) -> CampaignRecords:
        """What had happened before `end`: rows with their time < end (a message by `sent_at`,
        else `updated_at`: a row that is not sent counts from its last change)."""
        cut = pl.lit(end, _TIME)
        moment = pl.coalesce("sent_at", "updated_at") if "updated_at" in self.deliveries.columns else pl.col("sent_at")
        return CampaignRecords(
            deliveries=self.deliveries.filter(moment < cut).with_columns(
                pl.when(pl.col(name) < cut).then(pl.col(name)).alias(name) for name in OUTCOME_COLUMNS
            ),
            registrations=self.registrations.filter(pl.col("registered_at") < cut),
            interactions=self.interactions.filter(pl.col("occurred_at") < cut),
            attendance=self.attendance.filter(pl.col("joined_at") < cut),
            survey=self.survey.filter(pl.col("submitted_at") < cut),
        )
