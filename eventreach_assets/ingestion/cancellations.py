"""Cancellation records of a registrations batch: judged against who holds a place now, then stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from eventreach_assets.domain.engagement_schemas import CANCELLED
from eventreach_assets.domain.registrations import (
    CANCELLATION_RECORD,
    CURRENT_SCHEMA,
    CancellationOutcome,
    validate_cancellations,
)
from eventreach_assets.ingestion.seats import STORED_COLUMNS, current_registrations
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.warehouse import WarehouseResource


@dataclass(frozen=True)
class Cancelled:
    """What a batch's cancellations did, and how many rows were new in the engagement store."""

    outcome: CancellationOutcome
    stored: int


def record_cancellations(
    cancels: pl.DataFrame | None,
    events: pl.DataFrame,
    warehouse: WarehouseResource,
    store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    program: ProgramConfig,
    now: datetime,
) -> Cancelled:
    """Validate and record a batch's cancellations (after its registrations, so both apply)."""
    empty = validate_cancellations(
        pl.DataFrame(schema=CANCELLATION_RECORD), events=events, current=pl.DataFrame(schema=CURRENT_SCHEMA), now=now
    )
    if cancels is None or cancels.height == 0:
        return Cancelled(empty, 0)
    event_ids = events["event_id"].to_list()
    current = pl.concat(
        [current_registrations(warehouse, store, engagement, program.program_id, e, now) for e in event_ids]
        or [pl.DataFrame(schema=CURRENT_SCHEMA)]
    )
    outcome = validate_cancellations(cancels, events=events, current=current, now=now)
    rows = outcome.accepted.with_columns(pl.coalesce("registered_at", "cancelled_at").alias("registered_at"))
    stored = engagement.record_registrations(rows.select(STORED_COLUMNS), CANCELLED, now)
    return Cancelled(outcome, stored)
