"""Provider feedback in: SES events and SMTP DSNs from the `provider` feed change later sends.

`provider_feedback` ingests the files the provider feed's sensor handed to the run, like the other
feed assets (bad records quarantined next to the decision log with their reason, a replayed file
changes nothing). `ingestion/provider_feedback.py: ingest_provider_feedback` is the thin shell
around domain/feedback.py, callable without Dagster; its effects, protective ones first (a run dying
halfway leaves nobody reachable who should not be):

1. a complaint opts the customer out of every channel (`record_opt_outs`, source `complaint`);
2. a hard bounce, a complaint, or repeated soft bounces (the YAML's `deliverability`) suppress
   the ADDRESS on email for every later campaign (checked at send time, domain/sending.py);
3. every report is stored with the ledger message it is about, so the campaign report's
   delivered / bounced / complained are real and the circuit breaker can judge the campaign.

The circuit breaker (`breaker_decision`) is what a campaign's next wave asks before sending;
`rearm_circuit_breaker` (a job in the UI's launchpad) is how an operator re-arms it.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from eventreach_assets.assets.feeds import ENGAGEMENT, FeedBatch, ingest_feed_batch
from eventreach_assets.assets.metadata import table
from eventreach_assets.domain.feedback import (
    COUNTS_SCHEMA,
    FEEDBACK_FEED,
    BreakerDecision,
    DeliverabilityPolicy,
    breaker,
    breaker_for,
)
from eventreach_assets.ingestion import EngagementOutcome, ingest_provider_feedback
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.feeds import EngagementFeedResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ClockResource, ProgramResource


def feedback_by_type(outcome: EngagementOutcome) -> pl.DataFrame:
    return (
        outcome.accepted.group_by("channel", "feedback", "bounce_type")
        .len("rows")
        .sort("channel", "feedback", "bounce_type", nulls_last=True)
    )


def campaign_health(
    ledger: DeliveryLedgerResource, policy: DeliverabilityPolicy, campaigns: pl.DataFrame
) -> pl.DataFrame:
    """Counts, rates and the breaker's verdict of each (event_id, channel) in `campaigns`."""
    rows = []
    for event_id in sorted(campaigns["event_id"].unique().to_list()):
        counts = ledger.campaign_counts(event_id)
        for channel in sorted(campaigns.filter(pl.col("event_id") == event_id)["channel"].unique().to_list()):
            decision = breaker_for(counts, event_id, channel, policy)
            rows.append({"event_id": event_id, "channel": channel, **decision.as_metadata()})
    return pl.DataFrame(rows) if rows else pl.DataFrame(schema={"event_id": pl.String, "channel": pl.String})


def breaker_decision(
    ledger: DeliveryLedgerResource, policy: DeliverabilityPolicy, event_id: str, channel: str
) -> BreakerDecision:
    """The circuit breaker for one campaign (event x channel), on what was sent since its last
    re-arm: a wave asks this before sending and sends nothing when `.stop` (saying why)."""
    counts = ledger.campaign_counts(event_id, channel)
    row = counts.row(0, named=True) if counts.height else dict.fromkeys(COUNTS_SCHEMA, 0)
    return breaker(row["sent"], row["delivered"], row["bounced"], row["complained"], policy)


@dg.asset(**ENGAGEMENT, kinds={"json", "ses"}, tags={"stage": "engagement"})
def provider_feedback(
    context: dg.AssetExecutionContext,
    config: FeedBatch,
    engagement_feed: EngagementFeedResource,
    ledger: DeliveryLedgerResource,
    decision_log: DecisionLogResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Deliveries, bounces and complaints from SES event publishing and SMTP DSNs: complainers opted
    out of every channel, bounced addresses suppressed on email, the report's delivered / bounced /
    complained made real; the campaigns the batch touched are judged against the thresholds."""
    policy = program.load().deliverability
    outcomes: list[EngagementOutcome] = []

    def ingest(records: list[dict[str, Any]]) -> EngagementOutcome:
        outcomes.append(ingest_provider_feedback(records, ledger=ledger, policy=policy, now=clock.now()))
        return outcomes[-1]

    result = ingest_feed_batch(
        FEEDBACK_FEED, config.files, engagement_feed, decision_log, ingest, ("by_type", feedback_by_type)
    )
    touched = outcomes[0].accepted.filter(pl.col("event_id").is_not_null()).select("event_id", "channel").unique()
    health = campaign_health(ledger, policy, touched)
    for row in health.filter(pl.col("level") != "ok").iter_rows(named=True):
        context.log.warning(f"campaign {row['event_id']} x {row['channel']}: {row['level']}: {row['reasons']}")
    return dg.MaterializeResult(metadata={**(result.metadata or {}), "campaigns": table(health)})


class RearmConfig(dg.Config):
    """Which campaign's circuit breaker to re-arm, and who decided it (kept in the ledger)."""

    event_id: str = Field(description="The event (partition key), e.g. evt-2026-12-01-dataops")
    channel: str = Field(default="email", description="The campaign's channel")
    operator: str = Field(description="Who re-arms it (a name or handle, kept with the record)")


@dg.op(tags={"eventreach/stage": "deliverability"})
def rearm_breaker_op(
    context: dg.OpExecutionContext, config: RearmConfig, ledger: DeliveryLedgerResource, clock: ClockResource
) -> None:
    """Record the re-arm: from now on only messages sent after it (and their feedback) count."""
    now = clock.now()
    ledger.rearm_breaker(config.event_id, config.channel, now, config.operator)
    context.log.info(f"circuit breaker of {config.event_id} x {config.channel} re-armed at {now:%Y-%m-%d %H:%M} UTC")


@dg.job(
    name="rearm_circuit_breaker",
    tags={"eventreach/stage": "deliverability"},
    description="Re-arm a campaign's deliverability circuit breaker (event x channel) once the cause is fixed.",
)
def rearm_circuit_breaker() -> None:
    rearm_breaker_op()


feedback_assets = [provider_feedback]
