"""The engagement feeds: tracking hits, attendance, survey answers.

The thin shell around domain/engagement_feeds.py's validators: read what validation needs from the
resources passed in, validate, write the accepted rows to the engagement store (every write
idempotent, so a replayed feed file stores nothing new) and return what happened
(`ingest_records` in outcome.py is the shared skeleton). Rejected rows are returned, not written:
the caller quarantines them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import polars as pl

from eventreach_assets.domain.engagement_feeds import validate_attendance, validate_survey, validate_tracking
from eventreach_assets.domain.events import normalize_events
from eventreach_assets.domain.feed_records import (
    ATTENDANCE_RECORD,
    SURVEY_RECORD,
    TRACKING_RECORD,
    Validation,
    claims_frame,
    link_verifier,
)
from eventreach_assets.ingestion.outcome import EngagementOutcome, Records, ingest_records
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.warehouse import WarehouseResource

UNSUBSCRIBE_SOURCE = "unsubscribe-link"


def ingest_tracking(
    records: Records,
    *,
    ledger: DeliveryLedgerResource,
    store: EngagementStoreResource,
    secret: bytes | str,
    now: datetime,
) -> EngagementOutcome:
    """Store genuine opens, clicks and unsubscribes; an unsubscribe opts the customer out of
    every channel in the ledger (which the send loop checks right before each send).

    Opt-outs are recorded before the interactions are stored: if the run dies in between, the
    retry stores the interactions, and a customer is never left subscribed after their click.
    Each customer's earliest unsubscribe in the batch is the opt-out time; the ledger keeps the
    first one ever recorded.
    """

    def opt_out(accepted: pl.DataFrame) -> dict[str, int]:
        unsubscribes = (
            accepted.filter(pl.col("action") == "unsubscribe")
            .group_by("customer_id")
            .agg(pl.col("occurred_at").min())
            .sort("customer_id")
        )
        for customer_id, at in unsubscribes.iter_rows():
            ledger.record_opt_out(customer_id, None, UNSUBSCRIBE_SOURCE, at)
        return {"unsubscribed_customers": unsubscribes.height}

    return ingest_records(
        "tracking", records, TRACKING_RECORD,
        judge=lambda rows: validate_tracking(rows, link_verifier(secret), now=now),
        act=opt_out, store=store.record_interactions,
    )  # fmt: skip


def ingest_attendance(
    records: Records,
    *,
    warehouse: WarehouseResource,
    store: EngagementStoreResource,
    now: datetime,
    event_id: str | None = None,
) -> EngagementOutcome:
    """Store who attended which (started) event and how long they watched, checked against the
    warehouse's events catalog (start time, duration).

    With `event_id` (the per-event attendance run) only that event's records are judged; records
    naming another event are left for that event's run and counted as `other_events`. Records
    naming no event and malformed lines cannot be attributed and are rejected in every run.
    """

    def judge(rows: pl.DataFrame) -> Validation:
        mine = (
            rows if event_id is None else rows.filter((pl.col("event_id") == event_id) | pl.col("event_id").is_null())
        )
        result = validate_attendance(mine, normalize_events(warehouse.events()), now)
        if event_id is None:
            return result
        return replace(result, notes={**result.notes, "other_events": rows.height - mine.height})

    return ingest_records("attendance", records, ATTENDANCE_RECORD, judge=judge, store=store.record_attendance)


def ingest_survey(
    records: Records,
    *,
    store: EngagementStoreResource,
    secret: bytes | str,
    now: datetime,
) -> EngagementOutcome:
    """Store survey answers of customers who attended (per the engagement store's attendance).

    An answer that arrives before its attendance record is rejected as not_an_attendee, with the
    record kept in `rejected`; replaying it after the attendance feed caught up stores it.
    """
    verify = link_verifier(secret)

    def judge(rows: pl.DataFrame) -> Validation:
        claimed = claims_frame(rows["token"].to_list(), verify)
        event_ids = sorted(claimed.filter(pl.col("claim_action") == "survey")["claim_event_id"].unique().to_list())
        attended = pl.concat(
            [store.attendance(event_id).select("event_id", "customer_id") for event_id in event_ids]
            or [pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String})]
        )
        return validate_survey(rows, verify, attended, now=now)

    return ingest_records("survey", records, SURVEY_RECORD, judge=judge, store=store.record_survey_responses)
