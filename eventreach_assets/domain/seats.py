"""Who holds (or held) a seat at an event, from the three places a registration lands.

The event platform's list (warehouse), the candidate store's `registered` marks and the engagement
store's records all say something about a seat. Every ingestion step, the campaign guard and the
waitlist combine them through these two functions, so they agree on who is in.
"""

from __future__ import annotations

import polars as pl

from eventreach_assets.domain.engagement_schemas import CANCELLED, REGISTERED
from eventreach_assets.domain.registrations import CURRENT_SCHEMA


def seat_holders(platform: pl.DataFrame, marked: pl.DataFrame, recorded: pl.DataFrame) -> pl.DataFrame:
    """Everyone holding a seat: the platform's list (`platform`), candidates marked registered
    (`marked`) and every registration ingested (`recorded`, with `status`); waitlisted customers and
    cancelled registrations excluded (a recorded cancellation outranks a stale platform list or mark)."""
    customer = pl.col("customer_id").cast(pl.String)
    cancelled = recorded.filter(pl.col("status") == CANCELLED).select(customer)
    return (
        pl.concat(
            [
                platform.select(customer),
                marked.select(customer),
                recorded.filter(pl.col("status") == REGISTERED).select(customer),
            ]
        )
        .unique(maintain_order=True)
        .join(cancelled, on="customer_id", how="anti", maintain_order="left")
    )


def current_registrations(
    event_id: str, platform: pl.DataFrame, marked: pl.DataFrame, recorded: pl.DataFrame
) -> pl.DataFrame:
    """CURRENT_SCHEMA: one row per customer who holds or held a place at the event, the engagement
    store's record first (it knows waitlisted and cancelled), then the candidate store's marks and
    the platform's list (registered)."""
    stored = recorded.select(pl.col(name).cast(dtype) for name, dtype in CURRENT_SCHEMA.items())
    from_marks = marked.select(
        pl.lit(event_id).alias("event_id"),
        pl.col("customer_id").cast(pl.String),
        pl.lit(REGISTERED).alias("status"),
        pl.lit(None, pl.String).alias("registration_id"),
        pl.col("status_at").dt.convert_time_zone("UTC").dt.replace_time_zone(None).alias("registered_at"),
        pl.col("registered_channel").cast(pl.String).alias("channel"),
        pl.lit(None, pl.String).alias("campaign_id"),
    )
    from_platform = platform.select(
        pl.lit(event_id).alias("event_id"),
        pl.col("customer_id").cast(pl.String),
        pl.lit(REGISTERED).alias("status"),
        pl.lit(None, pl.String).alias("registration_id"),
        (pl.col("registered_at") if "registered_at" in platform.columns else pl.lit(None)).alias("registered_at"),
        (pl.col("channel") if "channel" in platform.columns else pl.lit(None)).alias("channel"),
        pl.lit(None, pl.String).alias("campaign_id"),
    )
    frames = [frame.cast(CURRENT_SCHEMA) for frame in (stored, from_marks, from_platform)]  # type: ignore[arg-type]
    return pl.concat(frames).unique(["event_id", "customer_id"], keep="first", maintain_order=True)
