"""Which channel a registration is credited to (last-touch or first-touch), and the registrants
with their credited channel, attendance and survey answer that every campaign figure counts
(pure polars: no Dagster, no I/O).

The report must credit each registration to exactly one channel so the channels' registrations
add up to the total; `attribute_registrations` says how.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from eventreach_assets.domain.campaign_records import DELIVERY_COLUMNS, CampaignRecords
from eventreach_assets.domain.engagement_schemas import ATTENDANCE_SCHEMA, REGISTERED, SURVEY_SCHEMA

LAST_TOUCH, FIRST_TOUCH = "last-touch", "first-touch"
RULES: tuple[str, ...] = (LAST_TOUCH, FIRST_TOUCH)
AttributionRule = Literal["last-touch", "first-touch"]

ATTRIBUTION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "channel": pl.String(),  # null: no link channel and no open or click before registering
    "rule": pl.String(),
}


def attributed_registrations(records: CampaignRecords, rule: str) -> pl.DataFrame:
    """ATTRIBUTION_SCHEMA plus `registered_at`, one row per registered event x customer."""
    if rule not in RULES:
        raise ValueError(f"attribution rule must be one of {list(RULES)}, got {rule!r}")
    registered = (
        records.registrations.filter(pl.col("status") == REGISTERED)
        .sort("registered_at", nulls_last=True, maintain_order=True)
        .unique(["event_id", "customer_id"], keep="first", maintain_order=True)
        .select("event_id", "customer_id", pl.col("channel").alias("_link"), "registered_at")
    )
    # Touches before registering, in a total order: time, then a click after an open at the same
    # instant (the click is the later, stronger touch), then channel name.
    prior = (
        records.interactions.filter(pl.col("action").is_in(["open", "click"]) & pl.col("channel").is_not_null())
        .join(registered.select("event_id", "customer_id", "registered_at"), on=["event_id", "customer_id"])
        .filter(pl.col("occurred_at") <= pl.col("registered_at"))
        .sort("occurred_at", pl.col("action") == "click", "channel")
        .group_by("event_id", "customer_id", maintain_order=True)
        .agg(pl.col("channel").first().alias("_first"), pl.col("channel").last().alias("_last"))
    )
    touched = registered.join(prior, on=["event_id", "customer_id"], how="left", maintain_order="left")
    channel = (pl.coalesce("_link", "_last") if rule == LAST_TOUCH else pl.coalesce("_first", "_link")).alias("channel")
    return touched.select("event_id", "customer_id", channel, pl.lit(rule).alias("rule"), "registered_at")


def attribute_registrations(
    registrations: pl.DataFrame, interactions: pl.DataFrame, rule: AttributionRule = LAST_TOUCH
) -> pl.DataFrame:
    """The channel each registration is credited to (ATTRIBUTION_SCHEMA), one row per registered
    customer x event, in registration order.

    Why a rule at all: a customer invited by email and by banner may touch both before
    registering, and the report must credit each registration to exactly one channel so the
    channels' registrations add up to the total.

    - last-touch (default): the channel of the link the registration came through (the register
      token's, `registrations.channel`); when that is unknown, the channel of the customer's last
      open or click of this event's messages at or before registering.
    - first-touch: the channel of the customer's earliest open or click of this event's messages
      at or before registering; with none, the registration's own channel.

    Touches at the same instant are ordered open before click, then by channel name, so the
    result never depends on row order. Only status registered counts (waitlisted customers hold
    no seat); a customer with several registration rows for an event counts once (the earliest).
    A registration nothing can attribute keeps a null channel: it is counted, not dropped.
    """
    empty = pl.DataFrame(schema={name: pl.String() for name in DELIVERY_COLUMNS})
    records = CampaignRecords.of(empty, registrations, interactions, _empty_attendance(), _empty_survey())
    return attributed_registrations(records, rule).drop("registered_at").cast(ATTRIBUTION_SCHEMA)


def _empty_attendance() -> pl.DataFrame:
    return pl.DataFrame(schema=ATTENDANCE_SCHEMA)


def _empty_survey() -> pl.DataFrame:
    return pl.DataFrame(schema=SURVEY_SCHEMA)


def registrants(records: CampaignRecords, rule: str) -> pl.DataFrame:
    """Registered customers with their attributed channel, registration time, minutes watched
    (null: did not attend) and survey rating (null: no answer)."""
    person = ["event_id", "customer_id"]
    attended = (
        records.attendance.sort("minutes_watched", descending=True, nulls_last=True)
        .unique(person, keep="first")
        .select(*person, pl.col("minutes_watched").alias("minutes"), *_maybe(records.attendance, "joined_at"))
    )
    answered = records.survey.unique(person, keep="first").select(
        *person, "rating", *_maybe(records.survey, "submitted_at")
    )
    return (
        attributed_registrations(records, rule)
        .join(attended, on=person, how="left", maintain_order="left")
        .join(answered, on=person, how="left", maintain_order="left")
    )


def _maybe(frame: pl.DataFrame, name: str) -> list[str]:
    return [name] if name in frame.columns else []
