"""Registrations coming in from the event platform: one ingestion function, two ways in.

The registrations feed (the `ingested_registrations` asset) hands its records to
`ingest_registrations`; the Serving API's webhook calls it with the records it received. Both go
through the same validation and the same idempotent store updates, so a registration delivered
twice, or by both paths, is recorded once. A record with `"action": "cancel"` cancels a
registration (or a waitlist place, see cancellations.py): the seat is free again, and
`promote_from_waitlist` (waitlist.py) gives it to the earliest waitlisted customer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import polars as pl

from eventreach_assets.domain.engagement_schemas import CANCELLED, REGISTERED, WAITLISTED
from eventreach_assets.domain.events import normalize_events
from eventreach_assets.domain.feed_records import QUARANTINE_SCHEMA, link_verifier, records_frame
from eventreach_assets.domain.registrations import (
    ACTION_CANCEL,
    ACTION_REGISTER,
    CANCELLATION_RECORD,
    INCOMING_SCHEMA,
    UNKNOWN_ACTION,
    RegistrationOutcome,
    normalize_incoming,
    record_action,
    validate_registrations,
)
from eventreach_assets.ingestion.cancellations import record_cancellations
from eventreach_assets.ingestion.seats import STORED_COLUMNS, registered_customers
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.warehouse import WarehouseResource


@dataclass(frozen=True)
class _Batch:
    """A delivery split by action: registration rows (normalized INCOMING_SCHEMA), cancellation
    records (None when there are none), and the rows quarantined on the way (QUARANTINE_SCHEMA)."""

    rows: pl.DataFrame
    cancels: pl.DataFrame | None
    malformed: pl.DataFrame
    unknown: pl.DataFrame  # records with an action other than register / cancel


def _split_frame(incoming: pl.DataFrame) -> _Batch:
    """A frame of INCOMING_SCHEMA (optionally with `action`): cancellations apart, nothing malformed."""
    action = (
        pl.col("action").cast(pl.String).str.strip_chars().str.to_lowercase().fill_null(ACTION_REGISTER)
        if "action" in incoming.columns
        else pl.lit(ACTION_REGISTER)
    )
    is_cancel = incoming.select(action.replace("", ACTION_REGISTER) == ACTION_CANCEL).to_series()
    none = pl.DataFrame(schema=QUARANTINE_SCHEMA)
    cancels = incoming.filter(is_cancel) if is_cancel.any() else None
    return _Batch(normalize_incoming(incoming.filter(~is_cancel)), cancels, none, none)


def _split_records(incoming: Sequence[Mapping[str, Any]]) -> _Batch:
    """Feed or webhook records: registrations, cancellations, and unknown actions quarantined."""
    split = [(record, record_action(record)) for record in incoming]
    registrations = [r for r, action in split if action == ACTION_REGISTER or "_error" in r]
    others = [r for r, action in split if action != ACTION_REGISTER and "_error" not in r]
    records, malformed = records_frame(registrations, INCOMING_SCHEMA)
    rows = normalize_incoming(records)
    if not others:
        return _Batch(rows, None, malformed, pl.DataFrame(schema=QUARANTINE_SCHEMA))
    # Positions stay those of the whole batch (the webhook reports them by position).
    positions = {id(r): n for n, (r, _) in enumerate(split, start=1)}
    numbered = [{"_line": positions[id(r)], **r} for r in others]
    cancel_records, _ = records_frame(numbered, CANCELLATION_RECORD)
    cancels = cancel_records.with_columns(pl.col("action").str.strip_chars().str.to_lowercase())
    unknown = cancels.filter(pl.col("action") != ACTION_CANCEL).select(
        pl.col("_source").alias("source"), pl.col("_line").alias("line"), pl.col("event_id"),
        pl.lit(UNKNOWN_ACTION).alias("reason"), pl.col("_raw").alias("raw"),
    ).cast(QUARANTINE_SCHEMA)  # type: ignore[arg-type]  # fmt: skip
    return _Batch(rows, cancels.filter(pl.col("action") == ACTION_CANCEL), malformed, unknown)


def _batch_events(batch: _Batch, warehouse: WarehouseResource) -> pl.DataFrame:
    """The catalog rows of the events the batch names (registrations and cancellations)."""
    event_ids = sorted(batch.rows["event_id"].drop_nulls().unique().to_list())
    if batch.cancels is not None:
        cancelled = batch.cancels["event_id"].drop_nulls().cast(pl.String).unique().to_list()
        event_ids = sorted({*event_ids, *cancelled})
    return normalize_events(warehouse.events()).filter(pl.col("event_id").is_in(event_ids))


def _validate(
    rows: pl.DataFrame,
    events: pl.DataFrame,
    *,
    warehouse: WarehouseResource,
    store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    program: ProgramConfig,
    secret: bytes | str,
    now: datetime,
) -> RegistrationOutcome:
    """Judge the batch's registrations against everyone already registered, the known customers,
    capacity, the deadline and the customers who cancelled before."""
    known_events = events["event_id"].to_list()
    already = pl.concat(
        [
            registered_customers(warehouse, store, engagement, program.program_id, event_id, now).select(
                pl.lit(event_id).alias("event_id"), pl.col("customer_id").cast(pl.String)
            )
            for event_id in known_events
        ]
        or [pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String})]
    )
    customer_ids = sorted(rows["customer_id"].drop_nulls().unique().to_list())
    known_customers = set(warehouse.contacts(customer_ids)["customer_id"].to_list()) if customer_ids else set()
    cancelled_before = pl.concat(
        [engagement.registrations(event_id, status=CANCELLED) for event_id in known_events]
        or [pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String, "registered_at": pl.Datetime("us")})],
        how="diagonal_relaxed",
    )
    return validate_registrations(
        rows,
        events=events,
        known_customers=known_customers,
        already_registered=already,
        capacity_limit=program.event_config.capacity_limit,
        deadline_days=program.event_config.registration_deadline_days,
        verify=link_verifier(secret, action="register"),
        cancelled=cancelled_before.select("event_id", "customer_id", "registered_at"),
    )


def _store(
    outcome: RegistrationOutcome,
    store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    program_id: str,
    now: datetime,
) -> int:
    """Record accepted and waitlisted rows, mark the accepted candidates; rows new in the engagement store."""
    stored = engagement.record_registrations(outcome.accepted.select(STORED_COLUMNS), REGISTERED, now)
    stored += engagement.record_registrations(outcome.waitlisted.select(STORED_COLUMNS), WAITLISTED, now)
    for (event_id,), accepted in outcome.accepted.group_by("event_id", maintain_order=True):
        store.mark_registered_many(
            program_id, str(event_id), accepted.select("customer_id", "registered_at", "channel")
        )
    return stored


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

    Cancellation records (`"action": "cancel"`, see CANCELLATION_RECORD) are judged after the
    batch's registrations by `validate_cancellations`, recorded as status `cancelled` and returned
    in `cancelled`; records with another action are quarantined as UNKNOWN_ACTION.
    """
    batch = _split_frame(incoming) if isinstance(incoming, pl.DataFrame) else _split_records(incoming)
    events = _batch_events(batch, warehouse)
    outcome = _validate(batch.rows, events, warehouse=warehouse, store=store, engagement=engagement,
                        program=program, secret=secret, now=now)  # fmt: skip
    stored = _store(outcome, store, engagement, program.program_id, now)
    cancellation = record_cancellations(batch.cancels, events, warehouse, store, engagement, program, now)
    rejected = pl.concat([batch.malformed, outcome.rejected, batch.unknown, cancellation.outcome.rejected])
    rejected = rejected.sort("source", "line", nulls_last=True, maintain_order=True)
    return replace(
        outcome, rejected=rejected, stored=stored + cancellation.stored, cancelled=cancellation.outcome.accepted
    )
