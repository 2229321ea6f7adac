"""Engagement coming in from the feeds: tracking hits, attendance, survey answers.

The thin shell around domain/engagement_feeds.py, like registrations.py: read what validation
needs from the resources passed in, validate, write the accepted rows to the engagement store (every
write idempotent, so a replayed feed file stores nothing new) and return what happened.
Rejected rows (QUARANTINE_SCHEMA) are returned, not written: the caller quarantines them.
Summaries are counts only (no ids, emails or comments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from eventreach_assets.domain.engagement_feeds import validate_attendance, validate_survey, validate_tracking
from eventreach_assets.domain.events import normalize_events
from eventreach_assets.domain.feed_records import (
    ATTENDANCE_RECORD,
    SURVEY_RECORD,
    TRACKING_RECORD,
    claims_frame,
    link_verifier,
    records_frame,
)
from eventreach_assets.resources.engagement import EngagementStoreResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.warehouse import WarehouseResource

UNSUBSCRIBE_SOURCE = "unsubscribe-link"
Records = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class EngagementOutcome:
    """What one feed batch did: `accepted` rows (the store's schema), `rejected` rows
    (QUARANTINE_SCHEMA, malformed lines included), how many rows were new in the store, and other
    counts worth reporting (customers unsubscribed, comments truncated, records left for another
    event's run). `summary()["records"]` counts the rows judged: accepted + rejected."""

    feed: str
    accepted: pl.DataFrame
    rejected: pl.DataFrame
    stored: int
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        """Counts per outcome and per rejection reason (run metadata and logs: no PII)."""
        reasons = dict(self.rejected.group_by("reason").len().sort("reason").iter_rows())
        totals = {
            "records": self.accepted.height + self.rejected.height,
            "accepted": self.accepted.height,
            "rejected": self.rejected.height,
            "stored": self.stored,
        }
        return {**totals, **self.counts, **reasons}


def _rejected(*parts: pl.DataFrame) -> pl.DataFrame:
    return pl.concat(parts).sort("source", "line", nulls_last=True, maintain_order=True)


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
    rows, malformed = records_frame(records, TRACKING_RECORD)
    result = validate_tracking(rows, link_verifier(secret), now=now)
    unsubscribes = (
        result.accepted.filter(pl.col("action") == "unsubscribe")
        .group_by("customer_id")
        .agg(pl.col("occurred_at").min())
        .sort("customer_id")
    )
    for customer_id, at in unsubscribes.iter_rows():
        ledger.record_opt_out(customer_id, None, UNSUBSCRIBE_SOURCE, at)
    stored = store.record_interactions(result.accepted) if result.accepted.height else 0
    return EngagementOutcome(
        feed="tracking",
        accepted=result.accepted,
        rejected=_rejected(malformed, result.rejected),
        stored=stored,
        counts={"unsubscribed_customers": unsubscribes.height},
    )


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
    rows, malformed = records_frame(records, ATTENDANCE_RECORD)
    counts: dict[str, int] = {}
    if event_id is not None:
        mine = rows.filter((pl.col("event_id") == event_id) | pl.col("event_id").is_null())
        counts["other_events"] = rows.height - mine.height
        rows = mine
    events = normalize_events(warehouse.events())
    result = validate_attendance(rows, events, now)
    stored = store.record_attendance(result.accepted) if result.accepted.height else 0
    return EngagementOutcome(
        feed="attendance",
        accepted=result.accepted,
        rejected=_rejected(malformed, result.rejected),
        stored=stored,
        counts=counts,
    )


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
    rows, malformed = records_frame(records, SURVEY_RECORD)
    verify = link_verifier(secret)
    claimed = claims_frame(rows["token"].to_list(), verify)
    event_ids = sorted(claimed.filter(pl.col("claim_action") == "survey")["claim_event_id"].unique().to_list())
    attended = pl.concat(
        [store.attendance(event_id).select("event_id", "customer_id") for event_id in event_ids]
        or [pl.DataFrame(schema={"event_id": pl.String, "customer_id": pl.String})]
    )
    result = validate_survey(rows, verify, attended, now=now)
    stored = store.record_survey_responses(result.accepted) if result.accepted.height else 0
    return EngagementOutcome(
        feed="survey",
        accepted=result.accepted,
        rejected=_rejected(malformed, result.rejected),
        stored=stored,
        counts=dict(result.notes),
    )
