"""The event funnel (invited → opened → clicked → registered → reminded → attended → rated) per
channel and over all channels, and the one rule for "opened" and "clicked" that the funnel and
the campaign report (domain/channel_report.py) share (pure polars, no Dagster, no I/O).
"""

from __future__ import annotations

import polars as pl

from eventreach_assets.domain.delivery import DeliveryStatus, MessageKind
from eventreach_assets.domain.engagement_schemas import REGISTERED
from eventreach_assets.domain.feed_records import utc_naive

FUNNEL_STAGES: tuple[str, ...] = ("invited", "opened", "clicked", "registered", "reminded", "attended", "rated")
ALL_CHANNELS = "all"
FUNNEL_SCHEMA: dict[str, pl.DataType] = {
    "stage": pl.String(),
    "channel": pl.String(),  # a channel, or "all" (each customer once across channels)
    "count": pl.Int64(),  # distinct customers
    "rate_of_previous": pl.Float64(),  # count / the previous stage's count in the same channel
    "average_minutes_watched": pl.Float64(),  # attended rows only
    "average_rating": pl.Float64(),  # rated rows only
}
REMINDER_KINDS: tuple[str, ...] = (MessageKind.REMINDER.value, MessageKind.DAY_OF.value)
OPENED, CLICKED = "opened", "clicked"
TOUCH_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "channel": pl.String(),
    "campaign_id": pl.String(),  # the message's campaign (from its link token)
    "stage": pl.String(),  # opened | clicked
    "at": pl.Datetime("us"),  # naive UTC: when the interaction or registration happened
}


def _column(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    """`name` from `frame` as `dtype` (times as naive UTC), or nulls when the frame lacks it."""
    if name not in frame.columns:
        return pl.lit(None, dtype).alias(name)
    if isinstance(dtype, pl.Datetime):
        return utc_naive(name, frame.schema[name])
    return pl.col(name).cast(dtype)


def engagement_touches(interactions: pl.DataFrame, registrations: pl.DataFrame) -> pl.DataFrame:
    """Every sign that a message was opened or clicked (TOUCH_SCHEMA), one row per sign and stage.

    The one rule for "opened" and "clicked", shared by the funnel and the campaign report: an open
    proves opened; a click proves opened and clicked (mail clients often block the open pixel); a
    registration (status registered) through a channel's link proves both (the register link is a
    link clicked). Unsubscribes prove nothing. A registration without a channel is no sign.
    """

    def signs(frame: pl.DataFrame, stage: str, at: str) -> pl.DataFrame:
        return frame.select(
            _column(frame, "event_id", pl.String()),
            pl.col("customer_id").cast(pl.String),
            pl.col("channel").cast(pl.String),
            _column(frame, "campaign_id", pl.String()),
            pl.lit(stage, pl.String()).alias("stage"),
            _column(frame, at, pl.Datetime("us")).alias("at"),
        )

    through_link = registrations.filter((pl.col("status") == REGISTERED) & pl.col("channel").is_not_null())
    return pl.concat(
        [
            signs(interactions.filter(pl.col("action").is_in(["open", "click"])), OPENED, "occurred_at"),
            signs(through_link, OPENED, "registered_at"),
            signs(interactions.filter(pl.col("action") == "click"), CLICKED, "occurred_at"),
            signs(through_link, CLICKED, "registered_at"),
        ]
    ).cast(TOUCH_SCHEMA)


def event_funnel(
    *,
    deliveries: pl.DataFrame,
    registrations: pl.DataFrame,
    interactions: pl.DataFrame,
    attendance: pl.DataFrame,
    survey: pl.DataFrame,
) -> pl.DataFrame:
    """The use case's funnel for one event, per channel and over all channels (FUNNEL_SCHEMA).

    Inputs are one event's ledger deliveries (customer_id, channel, kind, status) and engagement
    records (the store's schemas). Rules, all counting distinct customers:

    - invited: a sent invitation on the channel (ledger status sent, kind invitation);
    - opened: an open on the channel's messages, or a click or registration through them (a click
      proves the message was opened; mail clients often block the open pixel) — `engagement_touches`;
    - clicked: a click on the channel's links, or a registration through them (the register link
      is a link clicked) — `engagement_touches`;
    - registered: status registered (waitlisted customers hold no seat), channel = the channel the
      registration is attributed to (its link token's);
    - reminded: sent a reminder or a day-of message (any channel);
    - attended: an attendance record (`average_minutes_watched` over those customers);
    - rated: a survey answer (`average_rating`).

    From registered on, a customer's channel is their registration's attributed channel, so a
    channel's row follows the customers it brought in; customers without a registration (e.g.
    registered before EventReach, or attending without one) count in "all" only. `rate_of_previous`
    is null for the first stage and when the previous count is 0; stages are not intersected with
    earlier ones, so it can exceed 1 (e.g. reminders also reach registrants from the warehouse).
    Every stage x channel appears, with count 0 when nobody reached it.
    """
    members = _stage_members(deliveries, registrations, interactions, attendance, survey)
    per_channel = members.filter(pl.col("channel").is_not_null()).unique(
        ["stage", "channel", "customer_id"], keep="first", maintain_order=True
    )
    overall = members.with_columns(pl.lit(ALL_CHANNELS).alias("channel")).unique(
        ["stage", "channel", "customer_id"], keep="first", maintain_order=True
    )
    counted = (
        pl.concat([overall, per_channel])
        .group_by("stage", "channel")
        .agg(pl.len().cast(pl.Int64).alias("count"), pl.col("value").mean().alias("average"))
    )
    return _funnel_table(counted, [ALL_CHANNELS, *sorted(set(per_channel["channel"].to_list()))])


def _stage_members(
    deliveries: pl.DataFrame,
    registrations: pl.DataFrame,
    interactions: pl.DataFrame,
    attendance: pl.DataFrame,
    survey: pl.DataFrame,
) -> pl.DataFrame:
    """stage, channel, customer_id, value (minutes watched, rating): who reached each stage, by
    the channel that stage counts them in (see event_funnel), duplicates not yet removed."""
    sent = deliveries.filter(pl.col("status") == DeliveryStatus.SENT.value)
    registered = registrations.filter(pl.col("status") == REGISTERED).select("customer_id", "channel")
    attributed = registered.filter(pl.col("channel").is_not_null()).unique("customer_id", keep="first")
    touches = engagement_touches(interactions, registrations)

    def touched(name: str) -> pl.DataFrame:
        return touches.filter(pl.col("stage") == name).select("customer_id", "channel")

    def by_registration(frame: pl.DataFrame, value: str | None = None) -> pl.DataFrame:
        """The stage's customers with their registration's channel (null without one)."""
        measure = pl.col(value) if value else pl.lit(None)
        picked = frame.select("customer_id", measure.cast(pl.Float64).alias("value"))
        return picked.join(attributed, on="customer_id", how="left", maintain_order="left")

    return pl.concat(
        [
            _stage("invited", sent.filter(pl.col("kind") == MessageKind.INVITATION.value)),
            _stage("opened", touched(OPENED)),
            _stage("clicked", touched(CLICKED)),
            _stage("registered", registered),
            _stage("reminded", by_registration(sent.filter(pl.col("kind").is_in(REMINDER_KINDS)))),
            _stage("attended", by_registration(attendance, "minutes_watched")),
            _stage("rated", by_registration(survey, "rating")),
        ]
    )


def _stage(name: str, part: pl.DataFrame) -> pl.DataFrame:
    """`part`'s customers as members of stage `name` (stage, channel, customer_id, value)."""
    return part.select(
        pl.lit(name).alias("stage"),
        pl.col("channel").cast(pl.String),
        pl.col("customer_id").cast(pl.String),
        (pl.col("value") if "value" in part.columns else pl.lit(None)).cast(pl.Float64).alias("value"),
    )


def _funnel_table(counted: pl.DataFrame, channels: list[str]) -> pl.DataFrame:
    """FUNNEL_SCHEMA: every stage x channel in stage order, 0 where nobody reached it, with the rate
    of the previous stage and the averages of the attended and rated stages."""
    grid = pl.DataFrame(
        {
            "stage": [name for name in FUNNEL_STAGES for _ in channels],
            "channel": channels * len(FUNNEL_STAGES),
            "_order": [index for index in range(len(FUNNEL_STAGES)) for _ in channels],
        },
        schema={"stage": pl.String(), "channel": pl.String(), "_order": pl.Int64()},
    )
    previous = pl.col("count").shift(1).over("channel", order_by="_order")
    return (
        grid.join(counted, on=["stage", "channel"], how="left", maintain_order="left")
        .with_columns(pl.col("count").fill_null(0))
        .select(
            "stage",
            "channel",
            "count",
            pl.when(previous > 0).then(pl.col("count") / previous).alias("rate_of_previous"),
            pl.when(pl.col("stage") == "attended").then(pl.col("average")).alias("average_minutes_watched"),
            pl.when(pl.col("stage") == "rated").then(pl.col("average")).alias("average_rating"),
        )
        .cast(FUNNEL_SCHEMA)
    )
