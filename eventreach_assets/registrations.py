"""Registrations coming in from the event platform: one ingestion function, two ways in.

The registrations feed (resources/feeds.py) hands its records to `ingest_registrations`; the
serving API's webhook will call it with the rows it received as a frame. Both go through the
same validation and the same idempotent store updates, so a registration delivered twice, or by
both paths, is recorded once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import polars as pl

from eventreach_assets.domain.engagement import QUARANTINE_SCHEMA, REGISTERED, WAITLISTED, link_verifier, records_frame
from eventreach_assets.domain.events import normalize_events
from eventreach_assets.domain.registrations import (
    INCOMING_SCHEMA,
    RegistrationOutcome,
    normalize_incoming,
    validate_registrations,
)
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.engagement import EngagementStoreResource
from eventreach_assets.resources.warehouse import WarehouseResource


def registered_customers(warehouse: WarehouseResource, store: CandidateStoreResource,
                         engagement: EngagementStoreResource, program_id: str, event_id: str,
                         now: datetime) -> pl.DataFrame:  # fmt: skip
    """Everyone registered for the event: the event platform's list, candidates marked registered
    and every registration ingested from the feed or webhook (waitlisted ones excluded)."""
    return pl.concat(
        [
            warehouse.event_registrations(event_id).select("customer_id"),
            store.registered_candidates(program_id, event_id, now=now).select("customer_id"),
            engagement.registrations(event_id, status=REGISTERED).select("customer_id"),
        ]
    ).unique(maintain_order=True)


STORED_COLUMNS = ("event_id", "customer_id", "registration_id", "registered_at", "channel", "campaign_id")


def ingest_registrations(
    incoming: pl.DataFrame | Sequence[Mapping[str, Any]],
    *,
    warehouse: WarehouseResource,
    store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    program: ProgramConfig,
    secret: bytes | str,
    now: datetime,
) -> RegistrationOutcome:
    """Validate a batch (feed records or a frame of INCOMING_SCHEMA), record accepted and
    waitlisted rows in the engagement store, and mark the accepted ones in the candidate store.

    Registrations already known (the platform's table in the warehouse, candidates marked by an
    earlier delivery, registered rows of the engagement store) count against capacity and make a
    redelivery a duplicate, so a replayed batch changes nothing; a waitlisted customer delivered
    again takes a seat if one has freed up. Tokens must be genuine "register" links for the row;
    their channel and campaign are what the registration is attributed to. Malformed feed lines
    come back in `rejected` (QUARANTINE_SCHEMA) with the other rejections.
    """
    if isinstance(incoming, pl.DataFrame):
        rows, malformed = normalize_incoming(incoming), pl.DataFrame(schema=QUARANTINE_SCHEMA)
    else:
        records, malformed = records_frame(incoming, INCOMING_SCHEMA)
        rows = normalize_incoming(records)
    event_ids = sorted(rows["event_id"].drop_nulls().unique().to_list())
    events = normalize_events(warehouse.events()).filter(pl.col("event_id").is_in(event_ids))
    known_events = events["event_id"].to_list()
    already = pl.concat(
        [
            registered_customers(warehouse, store, engagement, program.program_id, event_id, now)
            .select(pl.lit(event_id).alias("event_id"), pl.col("customer_id").cast(pl.String))
            for event_id in known_events
        ]
        or [pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String})]
    )
    customer_ids = sorted(rows["customer_id"].drop_nulls().unique().to_list())
    known_customers = set(warehouse.contacts(customer_ids)["customer_id"].to_list()) if customer_ids else set()

    outcome = validate_registrations(
        rows,
        events=events,
        known_customers=known_customers,
        already_registered=already,
        capacity_limit=program.event_config.capacity_limit,
        deadline_days=program.event_config.registration_deadline_days,
        verify=link_verifier(secret, action="register"),
    )
    stored = engagement.record_registrations(outcome.accepted.select(STORED_COLUMNS), REGISTERED, now)
    stored += engagement.record_registrations(outcome.waitlisted.select(STORED_COLUMNS), WAITLISTED, now)
    for (event_id,), accepted in outcome.accepted.group_by("event_id", maintain_order=True):
        store.mark_registered_many(
            program.program_id, str(event_id), accepted.select("customer_id", "registered_at", "channel")
        )
    rejected = pl.concat([malformed, outcome.rejected]).sort("source", "line", nulls_last=True, maintain_order=True)
    return replace(outcome, rejected=rejected, stored=stored)
