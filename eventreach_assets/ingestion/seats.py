"""Who holds (or held) a seat at an event, read across the three places a registration lands.

The event platform's list (warehouse), the candidate store's `registered` marks and the engagement
store's records all say something about a seat; every ingestion step, the campaign guard and the
waitlist read them through these two functions, so they agree on who is in.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from eventreach_assets.domain.engagement import CANCELLED, REGISTERED
from eventreach_assets.domain.registrations import CURRENT_SCHEMA
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.warehouse import WarehouseResource

# What the engagement store keeps of a registration (registered, waitlisted or cancelled).
STORED_COLUMNS = ("event_id", "customer_id", "registration_id", "registered_at", "channel", "campaign_id")


def registered_customers(warehouse: WarehouseResource, store: CandidateStoreResource,
                         engagement: EngagementStoreResource, program_id: str, event_id: str,
                         now: datetime) -> pl.DataFrame:  # fmt: skip
    """Everyone holding a seat at the event: the event platform's list, candidates marked registered
    and every registration ingested from the feed or webhook; waitlisted customers and cancelled
    registrations excluded (a cancellation recorded here outranks a stale platform list or mark)."""
    recorded = engagement.registrations(event_id)
    cancelled = recorded.filter(pl.col("status") == CANCELLED).select(pl.col("customer_id").cast(pl.String))
    return (
        pl.concat(
            [
                warehouse.event_registrations(event_id).select(pl.col("customer_id").cast(pl.String)),
                store.registered_candidates(program_id, event_id, now=now).select(
                    pl.col("customer_id").cast(pl.String)
                ),
                recorded.filter(pl.col("status") == REGISTERED).select(pl.col("customer_id").cast(pl.String)),
            ]
        )
        .unique(maintain_order=True)
        .join(cancelled, on="customer_id", how="anti", maintain_order="left")
    )


def current_registrations(warehouse: WarehouseResource, store: CandidateStoreResource,
                          engagement: EngagementStoreResource, program_id: str, event_id: str,
                          now: datetime) -> pl.DataFrame:  # fmt: skip
    """CURRENT_SCHEMA: one row per customer who holds or held a place at the event, the engagement
    store's record first (it knows waitlisted and cancelled), then the candidate store's marks and
    the platform's list (registered)."""
    recorded = engagement.registrations(event_id).select(
        pl.col(name).cast(dtype) for name, dtype in CURRENT_SCHEMA.items()
    )
    marked = store.registered_candidates(program_id, event_id, now=now).select(
        pl.lit(event_id).alias("event_id"),
        pl.col("customer_id").cast(pl.String),
        pl.lit(REGISTERED).alias("status"),
        pl.lit(None, pl.String).alias("registration_id"),
        pl.col("status_at").dt.convert_time_zone("UTC").dt.replace_time_zone(None).alias("registered_at"),
        pl.col("registered_channel").cast(pl.String).alias("channel"),
        pl.lit(None, pl.String).alias("campaign_id"),
    )
    platform = warehouse.event_registrations(event_id)
    listed = platform.select(
        pl.lit(event_id).alias("event_id"),
        pl.col("customer_id").cast(pl.String),
        pl.lit(REGISTERED).alias("status"),
        pl.lit(None, pl.String).alias("registration_id"),
        (pl.col("registered_at") if "registered_at" in platform.columns else pl.lit(None)).alias("registered_at"),
        (pl.col("channel") if "channel" in platform.columns else pl.lit(None)).alias("channel"),
        pl.lit(None, pl.String).alias("campaign_id"),
    )
    frames = [frame.cast(CURRENT_SCHEMA) for frame in (recorded, marked, listed)]  # type: ignore[arg-type]
    return pl.concat(frames).unique(["event_id", "customer_id"], keep="first", maintain_order=True)
