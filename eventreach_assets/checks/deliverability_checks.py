"""Deliverability checks per campaign (event x channel): bounce and complaint rates from the
providers' feedback against the YAML's `deliverability` thresholds.

WARN at the SES review thresholds (bounce rate >= 5 %, complaint rate >= 0.1 %); ERROR once the
circuit breaker's stop thresholds are reached (the next waves of the campaign are not sent until an
operator re-arms it: the `rearm_circuit_breaker` job). Rates below the minimum sample pass with
"not enough data". Neither blocks the asset: the sends already happened; the breaker is what stops
further ones. The check runs with every materialization of the campaign asset (each wave) and can be
executed again from the UI as feedback arrives.
"""

from collections.abc import Iterable

import dagster as dg

from eventreach_assets.assets.feedback import breaker_decision
from eventreach_assets.domain.campaign_kinds import CAMPAIGN_KINDS
from eventreach_assets.domain.feedback import FEEDBACK_CHANNELS, BreakerDecision
from eventreach_assets.partitions import events_partitions
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ProgramResource

# The campaign assets the circuit breaker guards (domain/campaign_kinds.py): asset -> channel.
EMAIL_CAMPAIGN_ASSETS: dict[str, str] = {kind.asset: kind.channel for kind in CAMPAIGN_KINDS.values() if kind.breaker}


def check_result(decision: BreakerDecision) -> dg.AssetCheckResult:
    """The check's verdict: passed when within the review thresholds, WARN at them, ERROR at the stop ones."""
    severity = dg.AssetCheckSeverity.ERROR if decision.stop else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        passed=not decision.warn,
        severity=severity,
        description=(
            "; ".join(decision.reasons)
            if decision.reasons
            else "within the SES review thresholds"
            + ("" if decision.bounce_rate is not None else " (not enough sent yet to judge)")
        ),
        metadata={
            **decision.as_metadata(),
            "bounce_rate_pct": round(100 * decision.bounce_rate, 3) if decision.bounce_rate is not None else -1.0,
            "complaint_rate_pct": (
                round(100 * decision.complaint_rate, 4) if decision.complaint_rate is not None else -1.0
            ),
            "breaker": "stopped" if decision.stop else "armed",
        },
    )


def build_deliverability_check(asset_name: str, channel: str) -> dg.AssetChecksDefinition:
    """The deliverability check of one campaign asset (per event partition) on `channel`."""
    if channel not in FEEDBACK_CHANNELS:
        raise ValueError(f"channel {channel!r} has no provider feedback; expected one of {FEEDBACK_CHANNELS}")

    @dg.asset_check(asset=asset_name, name=f"{asset_name}_deliverability", partitions_def=events_partitions)
    def deliverability(
        context: dg.AssetCheckExecutionContext, ledger: DeliveryLedgerResource, program: ProgramResource
    ) -> dg.AssetCheckResult:
        """Bounce rate (hard bounces / sent) and complaint rate (complaints / delivered) of the
        event's campaign on this channel since the breaker's last re-arm, against SES's thresholds."""
        policy = program.load().deliverability
        return check_result(breaker_decision(ledger, policy, context.partition_key, channel))

    return deliverability


def build_deliverability_checks(assets: Iterable[tuple[str, str]] | None = None) -> list[dg.AssetChecksDefinition]:
    """One check per (asset, channel); default: the email campaign assets."""
    pairs = list(EMAIL_CAMPAIGN_ASSETS.items()) if assets is None else list(assets)
    return [build_deliverability_check(asset_name, channel) for asset_name, channel in pairs]


deliverability_checks = build_deliverability_checks()
