"""Who holds (or held) a seat at an event, read from the warehouse, the candidate store and the
engagement store, and combined by `domain/seats.py` (the campaign guard reads the same three)."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from eventreach_assets.domain import seats
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.warehouse import WarehouseResource

# What the engagement store keeps of a registration (registered, waitlisted or cancelled).
STORED_COLUMNS = ("event_id", "customer_id", "registration_id", "registered_at", "channel", "campaign_id")


def _seat_sources(warehouse: WarehouseResource, store: CandidateStoreResource,
                  engagement: EngagementStoreResource, program_id: str, event_id: str,
                  now: datetime) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:  # fmt: skip
    return (
        warehouse.event_registrations(event_id),
        store.registered_candidates(program_id, event_id, now=now),
        engagement.registrations(event_id),
    )


def registered_customers(warehouse: WarehouseResource, store: CandidateStoreResource,
                         engagement: EngagementStoreResource, program_id: str, event_id: str,
                         now: datetime) -> pl.DataFrame:  # fmt: skip
    """Everyone holding a seat at the event (`domain.seats.seat_holders`)."""
    return seats.seat_holders(*_seat_sources(warehouse, store, engagement, program_id, event_id, now))


def current_registrations(warehouse: WarehouseResource, store: CandidateStoreResource,
                          engagement: EngagementStoreResource, program_id: str, event_id: str,
                          now: datetime) -> pl.DataFrame:  # fmt: skip
    """One row per customer who holds or held a place (`domain.seats.current_registrations`)."""
    return seats.current_registrations(
        event_id, *_seat_sources(warehouse, store, engagement, program_id, event_id, now)
    )
