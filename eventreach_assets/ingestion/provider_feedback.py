"""Provider feedback in: SES events and SMTP DSNs judged, then acted on through the ledger.

Effects, protective ones first (a run dying halfway leaves nobody reachable who should not be):
a complaint opts the customer out of every channel, hard bounces / complaints / repeated soft
bounces suppress the address on email, and every report is stored with the ledger message it is
about (the campaign report's delivered / bounced / complained, the circuit breaker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from eventreach_assets.domain.feedback import (
    DeliverabilityPolicy,
    complaint_opt_outs,
    normalize_feedback,
    resolve,
    suppressions,
)
from eventreach_assets.ingestion.outcome import EngagementOutcome
from eventreach_assets.resources.ledger import ALL_CHANNELS, DeliveryLedgerResource

COMPLAINT_SOURCE = "complaint"  # the opt-out source a complaint records


def ingest_provider_feedback(
    records: Sequence[Mapping[str, Any]],
    *,
    ledger: DeliveryLedgerResource,
    policy: DeliverabilityPolicy,
    now: datetime,
) -> EngagementOutcome:
    """Judge a provider batch, then opt out complainers, suppress addresses, store the reports."""
    batch = normalize_feedback(records, now)
    accepted = batch.accepted
    resolved = resolve(accepted, ledger.messages_by_provider_id(accepted["provider_message_id"]))
    opt_outs = complaint_opt_outs(resolved).with_columns(
        pl.lit(ALL_CHANNELS).alias("channel"), pl.lit(COMPLAINT_SOURCE).alias("source")
    )
    opted = ledger.record_opt_outs(opt_outs) if opt_outs.height else 0
    bounced_addresses = accepted.filter(pl.col("feedback") == "bounced")["recipient"].unique()
    earliest = accepted["occurred_at"].min()
    history = (
        ledger.bounce_history(bounced_addresses, earliest - timedelta(days=policy.transient_bounce_window_days))
        if bounced_addresses.len() and isinstance(earliest, datetime)
        else accepted.clear()
    )
    suppress = suppressions(accepted, history, policy)
    suppressed = ledger.suppress_addresses(suppress) if suppress.height else 0
    stored = ledger.record_feedback(resolved) if resolved.height else 0
    per_feedback = dict(resolved.group_by("feedback").len().iter_rows())
    return EngagementOutcome(
        "provider",
        accepted=resolved,
        rejected=batch.rejected,
        stored=stored,
        counts={
            **{name: per_feedback.get(name, 0) for name in ("delivered", "bounced", "complained")},
            "rejected_by_provider": per_feedback.get("rejected", 0),  # SES Reject events (not sent at all)
            "ignored": batch.ignored,
            "unmatched": resolved.filter(pl.col("event_id").is_null()).height,
            "suppressed_addresses": suppressed,
            "complainers_opted_out": opted,
        },
    )
