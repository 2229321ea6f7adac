"""Registrations coming in from the event platform: one ingestion function, two ways in.

The registrations feed (resources/feeds.py) hands its records to `ingest_registrations`; the
serving API's webhook will call it with the rows it received as a frame. Both go through the
same validation and the same idempotent store updates, so a registration delivered twice, or by
both paths, is recorded once. A record with `"action": "cancel"` cancels a registration (or a
waitlist place): the seat is free again, and `promote_from_waitlist` gives it to the earliest
waitlisted customer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import polars as pl

from eventreach_assets.domain.engagement_schemas import CANCELLED, REGISTERED, WAITLISTED
from eventreach_assets.domain.events import normalize_events
from eventreach_assets.domain.feed_records import QUARANTINE_SCHEMA, link_verifier, records_frame
from eventreach_assets.domain.filters import EventContext
from eventreach_assets.domain.registrations import (
    ACTION_CANCEL,
    ACTION_REGISTER,
    CANCELLATION_RECORD,
    CURRENT_SCHEMA,
    INCOMING_SCHEMA,
    UNKNOWN_ACTION,
    CancellationOutcome,
    RegistrationOutcome,
    normalize_incoming,
    promote_waitlist,
    record_action,
    validate_cancellations,
    validate_registrations,
)
from eventreach_assets.program.config import ProgramConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.engagement import EngagementStoreResource
from eventreach_assets.resources.warehouse import WarehouseResource


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

    Cancellation records (`"action": "cancel"`, see CANCELLATION_RECORD) are judged after the
    batch's registrations by `validate_cancellations`, recorded as status `cancelled` and returned
    in `cancelled`; records with another action are quarantined as UNKNOWN_ACTION.
    """
    cancels: pl.DataFrame | None = None
    unknown = pl.DataFrame(schema=QUARANTINE_SCHEMA)
    if isinstance(incoming, pl.DataFrame):
        malformed = pl.DataFrame(schema=QUARANTINE_SCHEMA)
        action = (
            pl.col("action").cast(pl.String).str.strip_chars().str.to_lowercase().fill_null(ACTION_REGISTER)
            if "action" in incoming.columns
            else pl.lit(ACTION_REGISTER)
        )
        is_cancel = incoming.select(action.replace("", ACTION_REGISTER) == ACTION_CANCEL).to_series()
        cancels = incoming.filter(is_cancel) if is_cancel.any() else None
        rows = normalize_incoming(incoming.filter(~is_cancel))
    else:
        split = [(record, record_action(record)) for record in incoming]
        registrations = [r for r, action in split if action == ACTION_REGISTER or "_error" in r]
        others = [r for r, action in split if action != ACTION_REGISTER and "_error" not in r]
        records, malformed = records_frame(registrations, INCOMING_SCHEMA)
        rows = normalize_incoming(records)
        if others:
            # Positions stay those of the whole batch (the webhook reports them by position).
            positions = {id(r): n for n, (r, _) in enumerate(split, start=1)}
            numbered = [{"_line": positions[id(r)], **r} for r in others]
            cancel_records, _ = records_frame(numbered, CANCELLATION_RECORD)
            cancels = cancel_records.with_columns(pl.col("action").str.strip_chars().str.to_lowercase())
            wrong = cancels.filter(pl.col("action") != ACTION_CANCEL)
            unknown = wrong.select(
                pl.col("_source").alias("source"), pl.col("_line").alias("line"), pl.col("event_id"),
                pl.lit(UNKNOWN_ACTION).alias("reason"), pl.col("_raw").alias("raw"),
            ).cast(QUARANTINE_SCHEMA)  # type: ignore[arg-type]  # fmt: skip
            cancels = cancels.filter(pl.col("action") == ACTION_CANCEL)
    event_ids = sorted(rows["event_id"].drop_nulls().unique().to_list())
    if cancels is not None:
        event_ids = sorted({*event_ids, *cancels["event_id"].drop_nulls().cast(pl.String).unique().to_list()})
    events = normalize_events(warehouse.events()).filter(pl.col("event_id").is_in(event_ids))
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

    outcome = validate_registrations(
        rows,
        events=events,
        known_customers=known_customers,
        already_registered=already,
        capacity_limit=program.event_config.capacity_limit,
        deadline_days=program.event_config.registration_deadline_days,
        verify=link_verifier(secret, action="register"),
        cancelled=cancelled_before.select("event_id", "customer_id", "registered_at"),
    )
    stored = engagement.record_registrations(outcome.accepted.select(STORED_COLUMNS), REGISTERED, now)
    stored += engagement.record_registrations(outcome.waitlisted.select(STORED_COLUMNS), WAITLISTED, now)
    for (event_id,), accepted in outcome.accepted.group_by("event_id", maintain_order=True):
        store.mark_registered_many(
            program.program_id, str(event_id), accepted.select("customer_id", "registered_at", "channel")
        )
    cancellation = _cancel(cancels, events, warehouse, store, engagement, program, now)
    stored += cancellation.stored
    rejected = pl.concat([malformed, outcome.rejected, unknown, cancellation.outcome.rejected])
    rejected = rejected.sort("source", "line", nulls_last=True, maintain_order=True)
    return replace(outcome, rejected=rejected, stored=stored, cancelled=cancellation.outcome.accepted)


@dataclass(frozen=True)
class _Cancelled:
    outcome: CancellationOutcome
    stored: int


def _cancel(
    cancels: pl.DataFrame | None,
    events: pl.DataFrame,
    warehouse: WarehouseResource,
    store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    program: ProgramConfig,
    now: datetime,
) -> _Cancelled:
    """Validate and record a batch's cancellations (after its registrations, so both apply)."""
    empty = validate_cancellations(
        pl.DataFrame(schema=CANCELLATION_RECORD), events=events, current=pl.DataFrame(schema=CURRENT_SCHEMA), now=now
    )
    if cancels is None or cancels.height == 0:
        return _Cancelled(empty, 0)
    event_ids = events["event_id"].to_list()
    current = pl.concat(
        [current_registrations(warehouse, store, engagement, program.program_id, e, now) for e in event_ids]
        or [pl.DataFrame(schema=CURRENT_SCHEMA)]
    )
    outcome = validate_cancellations(cancels, events=events, current=current, now=now)
    rows = outcome.accepted.with_columns(pl.coalesce("registered_at", "cancelled_at").alias("registered_at"))
    stored = engagement.record_registrations(rows.select(STORED_COLUMNS), CANCELLED, now)
    return _Cancelled(outcome, stored)


PROMOTED_COLUMNS = (*STORED_COLUMNS, "promoted_at")


def promote_from_waitlist(
    warehouse: WarehouseResource,
    store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    program_config: ProgramConfig,
    event: EventContext | str,
    now: datetime,
) -> pl.DataFrame:
    """Give the event's open seats to its earliest waitlisted customers; returns who was promoted
    now (PROMOTED_COLUMNS: event_id, customer_id, registration_id, registered_at, channel,
    campaign_id, promoted_at), for the waitlist-confirmation send.

    Seats are read fresh: the event's current capacity in the catalog (so a capacity raised there
    promotes as many as it opens) against everyone holding a seat now (cancellations freed theirs).
    Nobody is promoted for a cancelled event or once it has started. The promotion is the
    engagement store's waitlisted -> registered change, which happens once: running again, or
    after a redelivery, promotes nobody twice (and the ledger sends each confirmation once). Run
    it from one place at a time (a sensor or job), so two runs do not share out the same seats.
    """
    event_id = event if isinstance(event, str) else event.event_id
    promoted_schema = {
        "event_id": pl.String(), "customer_id": pl.String(), "registration_id": pl.String(),
        "registered_at": pl.Datetime("us"), "channel": pl.String(), "campaign_id": pl.String(),
        "promoted_at": pl.Datetime("us"),
    }  # fmt: skip
    nobody = pl.DataFrame(schema=promoted_schema)
    catalog = normalize_events(warehouse.events()).filter(pl.col("event_id") == event_id)
    if catalog.height == 0:
        return nobody
    row = catalog.row(0, named=True)
    moment = now if now.tzinfo is None else now.astimezone(UTC).replace(tzinfo=None)
    if str(row.get("status") or "scheduled") == "cancelled" or moment >= row["start_time_utc"]:
        return nobody
    registered = registered_customers(warehouse, store, engagement, program_config.program_id, event_id, now)
    waitlisted = engagement.registrations(event_id, status=WAITLISTED).join(
        registered.select(pl.col("customer_id").cast(pl.String)), on="customer_id", how="anti"
    )
    chosen = promote_waitlist(
        waitlisted, registered.height, int(row["capacity"]), program_config.event_config.capacity_limit
    )
    if chosen.height == 0:
        return nobody
    engagement.record_registrations(chosen.select(STORED_COLUMNS), REGISTERED, now)
    # Only the rows this call changed: a concurrent or earlier call may have promoted some already.
    now_registered = engagement.registrations(event_id, status=REGISTERED).filter(
        pl.col("recorded_at") == pl.lit(moment, dtype=pl.Datetime("us"))
    )
    promoted = chosen.join(now_registered.select("customer_id"), on="customer_id", how="semi", maintain_order="left")
    if promoted.height:
        store.mark_registered_many(
            program_config.program_id, event_id, promoted.select("customer_id", "registered_at", "channel")
        )
    return promoted.select(*STORED_COLUMNS, pl.lit(moment, dtype=pl.Datetime("us")).alias("promoted_at")).cast(
        promoted_schema  # type: ignore[arg-type]
    )
