"""The feed assets: registrations, link interactions, survey answers, and each event's attendance.

Each feed asset ingests the files its sensor handed to the run (run config), through the same
ingestion functions the Serving API's webhook calls (eventreach_assets/ingestion/); rejected rows
are quarantined with their reason next to the decision log, never dropped. Attendance is per
event: the event-date sensor launches it once the event has ended, and again every hour until the
platform's export is in.
"""

from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

import dagster as dg
import polars as pl
from pydantic import Field

from eventreach_assets.assets.extraction import current_event
from eventreach_assets.assets.metadata import NEXT_DUE_AT, PLANNED_AT, stopwatch, table
from eventreach_assets.domain.engagement_schemas import CANCELLED, REGISTERED, WAITLISTED
from eventreach_assets.domain.registrations import RegistrationOutcome
from eventreach_assets.ingestion import (
    ingest_attendance,
    ingest_registrations,
    ingest_survey,
    ingest_tracking,
    quarantine,
    registered_customers,
)
from eventreach_assets.partitions import events_partitions
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.feeds import EngagementFeedResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.link_signing import LinkSigningResource
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.warehouse import WarehouseResource

ENGAGEMENT = {"group_name": "engagement", "owners": ["team:events"]}


class FeedBatch(dg.Config):
    """The feed files one run ingests, in order (set by the feed's sensor; a retry reads the same)."""

    files: list[str] = Field(description="file names in the feed, e.g. 20261130T101500Z-0001.jsonl")


def feed_metadata(files: list[str], summary: dict[str, int], quarantined: str | None) -> dict[str, object]:
    """What an operator reads on a feed run: which files, what happened to the rows (no PII)."""
    return {
        **{key: summary[key] for key in ("accepted", "rejected") if key in summary},
        "files": len(files),
        "first_file": files[0] if files else "",
        "last_file": files[-1] if files else "",
        "outcomes": table(pl.DataFrame({"outcome": list(summary), "rows": list(summary.values())})),
        **({"quarantine": dg.MetadataValue.path(quarantined)} if quarantined else {}),
    }


def batch_name(files: list[str]) -> str:
    return files[-1].removesuffix(".jsonl") if files else "empty"


class FeedOutcome(Protocol):
    accepted: pl.DataFrame
    rejected: pl.DataFrame

    def summary(self) -> dict[str, int]: ...


def ingest_feed_batch(
    feed: str,
    files: list[str],
    engagement_feed: EngagementFeedResource,
    decision_log: DecisionLogResource,
    ingest: Callable[[list[dict[str, Any]]], FeedOutcome],
    breakdown: tuple[str, Callable[[Any], pl.DataFrame]],
) -> dg.MaterializeResult:
    """Read the run's files, ingest them, quarantine the rejected rows, report what happened."""
    with stopwatch() as watch:
        records = engagement_feed.read(feed, files)
        outcome = ingest(records)
        quarantined = quarantine(decision_log, feed, batch_name(files), outcome.rejected)
    name, summarize = breakdown
    return dg.MaterializeResult(
        metadata={
            **feed_metadata(files, outcome.summary(), quarantined),
            name: table(summarize(outcome)),
            "dagster/row_count": outcome.accepted.height,
            **watch.metadata(len(records)),
        }
    )


def registrations_per_event(outcome: RegistrationOutcome) -> pl.DataFrame:
    """Rows per event and outcome; `cancelled` rows free seats (the waitlist sensor reads them)."""
    parts = [outcome.accepted.select("event_id", outcome=pl.lit(REGISTERED)),
             outcome.waitlisted.select("event_id", outcome=pl.lit(WAITLISTED))]  # fmt: skip
    if outcome.cancelled is not None:
        parts.append(outcome.cancelled.select(pl.col("event_id").cast(pl.String), outcome=pl.lit(CANCELLED)))
    return pl.concat(parts).group_by("event_id", "outcome").len("rows").sort("event_id", "outcome")


def interactions_by_action(outcome: FeedOutcome) -> pl.DataFrame:
    return outcome.accepted.group_by("channel", "action").len("rows").sort("channel", "action")


def ratings_per_event(outcome: FeedOutcome) -> pl.DataFrame:
    return (
        outcome.accepted.group_by("event_id")
        .agg(pl.len().alias("responses"), pl.col("rating").cast(pl.Float64).mean().round(2).alias("average_rating"))
        .sort("event_id")
    )


@dg.asset(**ENGAGEMENT, kinds={"json"}, tags={"stage": "engagement"})
def ingested_registrations(
    config: FeedBatch,
    engagement_feed: EngagementFeedResource,
    warehouse: WarehouseResource,
    candidate_store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    link_signing: LinkSigningResource,
    decision_log: DecisionLogResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Registrations from the event platform: validated, stored once, over capacity waitlisted."""
    ingest = partial(
        ingest_registrations, warehouse=warehouse, store=candidate_store, engagement=engagement,
        program=program.load(), secret=link_signing.key(), now=clock.now(),
    )  # fmt: skip
    return ingest_feed_batch("registrations", config.files, engagement_feed, decision_log, ingest,
                             ("per_event", registrations_per_event))  # fmt: skip


@dg.asset(**ENGAGEMENT, kinds={"json"}, tags={"stage": "engagement"})
def link_interactions(
    config: FeedBatch,
    engagement_feed: EngagementFeedResource,
    engagement: EngagementStoreResource,
    ledger: DeliveryLedgerResource,
    link_signing: LinkSigningResource,
    decision_log: DecisionLogResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Opens, clicks and unsubscribes from the tracking links; an unsubscribe stops every later send."""
    ingest = partial(ingest_tracking, ledger=ledger, store=engagement, secret=link_signing.key(), now=clock.now())
    return ingest_feed_batch("tracking", config.files, engagement_feed, decision_log, ingest,
                             ("by_channel_and_action", interactions_by_action))  # fmt: skip


@dg.asset(**ENGAGEMENT, kinds={"json"}, tags={"stage": "engagement"})
def survey_responses(
    config: FeedBatch,
    engagement_feed: EngagementFeedResource,
    engagement: EngagementStoreResource,
    link_signing: LinkSigningResource,
    decision_log: DecisionLogResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Survey answers (1-5 and free text) from attendees; comments are stored, never shown here."""
    ingest = partial(ingest_survey, store=engagement, secret=link_signing.key(), now=clock.now())
    return ingest_feed_batch("survey", config.files, engagement_feed, decision_log, ingest,
                             ("per_event", ratings_per_event))  # fmt: skip


ATTENDANCE_RETRY = timedelta(hours=1)  # how soon the sensor looks again for a missing export


@dg.asset(**ENGAGEMENT, partitions_def=events_partitions, kinds={"json"}, tags={"stage": "attendance"})
def event_attendance(
    context: dg.AssetExecutionContext,
    engagement_feed: EngagementFeedResource,
    warehouse: WarehouseResource,
    candidate_store: CandidateStoreResource,
    engagement: EngagementStoreResource,
    decision_log: DecisionLogResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Who joined the ended event and for how long, from the event platform's attendance export."""
    event = current_event(warehouse, context.partition_key)
    now = clock.now()
    with stopwatch() as watch:
        files = engagement_feed.new_files("attendance", limit=100_000)
        outcome = ingest_attendance(
            engagement_feed.read("attendance", files), warehouse=warehouse, store=engagement, now=now,
            event_id=event.event_id,
        )  # fmt: skip
        quarantined = quarantine(decision_log, "attendance", event.event_id, outcome.rejected)
        attended = engagement.attendance(event.event_id)
        registered = registered_customers(warehouse, candidate_store, engagement, program.load().program_id,
                                          event.event_id, now).height  # fmt: skip
    received = attended.height > 0
    if not received:
        context.log.warning(
            f"no attendance for event {event.event_id!r} in the attendance feed yet ({len(files)} files read); "
            f"the event-date sensor looks again in {ATTENDANCE_RETRY}"
        )
    metadata: dict[str, object] = {
        **feed_metadata(files, outcome.summary(), quarantined),
        "export_received": received,
        "attended": attended.height,
        "registered": registered,
        "attendance_rate_pct": round(100.0 * attended.height / registered, 1) if registered else 0.0,
        "average_minutes_watched": round(float(attended["minutes_watched"].mean() or 0.0), 1),
        "dagster/row_count": attended.height,
        PLANNED_AT: now.isoformat(),
        # Until the platform's export is in, the event-date sensor launches this again at this time.
        **({} if received else {NEXT_DUE_AT: (now + ATTENDANCE_RETRY).isoformat()}),
        **watch.metadata(attended.height),
    }
    return dg.MaterializeResult(metadata=metadata)


feed_assets = [ingested_registrations, link_interactions, survey_responses, event_attendance]
