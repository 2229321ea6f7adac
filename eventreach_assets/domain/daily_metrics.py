"""The daily metrics: each active event's counts of the day and its rates so far, as datums in the
metrics frame (`metrics.METRICS_SCHEMA`) the metrics sink sends to CloudWatch (pure polars: no
Dagster, no I/O).

The counts add up, over the days, to the channel report's (`channel_report.py`), and the rates
are the channel report's over everything up to the end of the day, so the two cannot disagree.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import polars as pl

from eventreach_assets.domain.attribution import LAST_TOUCH, AttributionRule, registrants
from eventreach_assets.domain.campaign_records import CampaignRecords
from eventreach_assets.domain.channel_report import ALL, message_touches, report_rows, with_outcomes
from eventreach_assets.domain.delivery import DeliveryStatus
from eventreach_assets.domain.funnel import CLICKED, OPENED
from eventreach_assets.domain.metrics import EVENT_DIMENSION, PROGRAM_DIMENSION, validate_metrics

CHANNEL_DIMENSION = "Channel"
DAILY_COUNT_METRICS: dict[str, str] = {  # counted on the UTC day it happened
    "sent": "MessagesSent",
    "delivered": "MessagesDelivered",
    "bounced": "MessagesBounced",
    "complained": "Complaints",
    "opened": "MessagesOpened",
    "clicked": "MessagesClicked",
    "registered": "Registrations",
    "attended": "Attendees",
    "survey_responses": "SurveyResponses",
}
DAILY_RATE_METRICS: dict[str, str] = {  # cumulative to the end of the day, Percent
    "open_rate": "OpenRate",
    "click_through_rate": "ClickThroughRate",
    "conversion_rate": "ConversionRate",
    "bounce_rate": "BounceRate",
    "complaint_rate": "ComplaintRate",
    "registration_rate": "RegistrationRate",
    "attendance_rate": "AttendanceRate",
}

_SENT = DeliveryStatus.SENT.value
_TIME = pl.Datetime("us")
_DIMENSION = pl.Struct({"name": pl.String(), "value": pl.String()})


def _on_day(frame: pl.DataFrame, column: str, start: datetime, end: datetime) -> pl.DataFrame:
    return frame.filter(pl.col(column).is_between(pl.lit(start, _TIME), pl.lit(end, _TIME), closed="left"))


def _day_counts(records: CampaignRecords, rule: str, start: datetime, end: datetime) -> pl.DataFrame:
    """event_id, channel, metric (DAILY_COUNT_METRICS key), value: what happened on the day, per
    channel and over all channels ("all")."""
    keys = ["event_id", "channel"]
    deliveries = records.deliveries
    moment = pl.coalesce("sent_at", "updated_at") if "updated_at" in deliveries.columns else pl.col("sent_at")
    sent = _on_day(
        deliveries.filter(pl.col("status") == _SENT).with_columns(moment.alias("_at")), "_at", start, end
    ).select(*keys, pl.lit("sent").alias("metric"))
    outcomes = with_outcomes(deliveries)
    feedback = pl.concat(
        [
            _on_day(outcomes, f"_{name}_on", start, end).select(*keys, pl.lit(name).alias("metric"))
            for name in ("delivered", "bounced", "complained")
        ]
    )
    touches = _on_day(message_touches(records), "at", start, end).select(*keys, pl.col("stage").alias("metric"))
    people = registrants(records, rule)
    registered = _on_day(people, "registered_at", start, end).select(*keys, pl.lit("registered").alias("metric"))
    attended = _on_day(people.filter(pl.col("minutes").is_not_null()), "joined_at", start, end).select(
        *keys, pl.lit("attended").alias("metric")
    )
    answered = _on_day(people.filter(pl.col("rating").is_not_null()), "submitted_at", start, end).select(
        *keys, pl.lit("survey_responses").alias("metric")
    )
    every_answer = _on_day(records.survey.unique(["event_id", "customer_id"]), "submitted_at", start, end).select(
        "event_id", pl.lit(ALL).alias("channel"), pl.lit("survey_responses").alias("metric")
    )
    per_channel = pl.concat([sent, feedback, touches, registered, attended, answered]).with_columns(
        pl.col("metric").replace({OPENED: "opened", CLICKED: "clicked"})
    )
    overall = pl.concat(
        [
            per_channel.filter(pl.col("metric") != "survey_responses").with_columns(pl.lit(ALL).alias("channel")),
            every_answer,
        ]
    )
    return (
        pl.concat([per_channel.filter(pl.col("channel").is_not_null()), overall])
        .group_by("event_id", "channel", "metric")
        .agg(pl.len().cast(pl.Float64).alias("value"))
    )


def daily_metrics_frame(
    day: date,
    deliveries_all: pl.DataFrame,
    registrations_all: pl.DataFrame,
    interactions_all: pl.DataFrame,
    attendance_all: pl.DataFrame,
    survey_all: pl.DataFrame,
    program_id: str,
    *,
    rule: AttributionRule = LAST_TOUCH,
) -> pl.DataFrame:
    """The day's datums (metrics.METRICS_SCHEMA, validated) for every event with activity that day.

    Why two kinds: counts say what happened on the day (for trends and alarms), rates say where
    each campaign stands so far (for the use case's targets). Dimensions Program, Event, Channel
    (a channel or "all"); every datum is stamped 00:00 UTC of `day`, so a one-day period holds
    exactly that day.

    - counts (Count, DAILY_COUNT_METRICS), on the UTC day each thing happened: messages sent
      (`sent_at`), messages first opened / clicked (the first touch, as in `channel_report`),
      registrations (`registered_at`, by the `rule`'s channel), registrants who attended
      (`joined_at`) and survey answers (`submitted_at`; "all": every answer). Summed over days
      they give `channel_report`'s counts. Zeros are emitted for every channel of an active event.
    - rates (Percent, DAILY_RATE_METRICS): `channel_report`'s rates over everything up to the end
      of `day`, emitted only where defined (a 0 denominator emits nothing, never a false 0 %).

    An event with nothing dated on `day` gets no datums (no flat lines for finished events).
    """
    records = CampaignRecords.of(
        deliveries_all, registrations_all, interactions_all, attendance_all, survey_all, timed=True
    )
    start = datetime.combine(day, time())
    end = start + timedelta(days=1)
    counts = _day_counts(records, rule, start, end)
    active = counts.select("event_id").unique().sort("event_id")
    so_far = report_rows(records.until(end), {}, rule).join(active, on="event_id", how="semi")
    rows = pl.concat([_count_rows(so_far, counts), _rate_rows(so_far)], how="diagonal_relaxed").sort("_row", "_rank")
    return validate_metrics(_as_datums(rows, program_id, day))


def _count_rows(so_far: pl.DataFrame, counts: pl.DataFrame) -> pl.DataFrame:
    """Every count metric of every report row (`_row`) in metric order (`_rank`), 0 where nothing
    happened on the day."""
    channels = so_far.select("event_id", "channel").with_row_index("_row")
    grid = channels.join(pl.DataFrame({"metric": list(DAILY_COUNT_METRICS)}), how="cross").with_columns(
        pl.col("metric").replace_strict(list(DAILY_COUNT_METRICS), list(range(len(DAILY_COUNT_METRICS)))).alias("_rank")
    )
    return grid.join(counts, on=["event_id", "channel", "metric"], how="left", maintain_order="left").with_columns(
        pl.col("value").fill_null(0.0), pl.lit("Count").alias("unit")
    )


def _rate_rows(so_far: pl.DataFrame) -> pl.DataFrame:
    """The defined rates of every report row (`_row`), as percentages, ranked after the counts."""
    return (
        so_far.with_row_index("_row")
        .unpivot(index=["_row", "event_id", "channel"], on=list(DAILY_RATE_METRICS), variable_name="metric")
        .drop_nulls("value")
        .with_columns(
            (pl.col("value") * 100).alias("value"),
            pl.lit("Percent").alias("unit"),
            (
                pl.col("metric").replace_strict(list(DAILY_RATE_METRICS), list(range(len(DAILY_RATE_METRICS))))
                + len(DAILY_COUNT_METRICS)
            ).alias("_rank"),
        )
    )


def _dimension(name: str, value: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(name).alias("name"), value.alias("value")).cast(_DIMENSION)


def _as_datums(rows: pl.DataFrame, program_id: str, day: date) -> pl.DataFrame:
    """metrics.METRICS_SCHEMA: the metric's CloudWatch name, dimensions Program, Event and Channel,
    stamped 00:00 UTC of `day`."""
    names = {**DAILY_COUNT_METRICS, **DAILY_RATE_METRICS}
    return rows.select(
        pl.col("metric").replace_strict(names).alias("name"),
        pl.col("value").cast(pl.Float64),
        "unit",
        pl.concat_list(
            _dimension(PROGRAM_DIMENSION, pl.lit(program_id)),
            _dimension(EVENT_DIMENSION, pl.col("event_id")),
            _dimension(CHANNEL_DIMENSION, pl.col("channel")),
        ).alias("dimensions"),
        pl.lit(datetime.combine(day, time(), tzinfo=UTC)).cast(pl.Datetime("us", "UTC")).alias("timestamp"),
    )
