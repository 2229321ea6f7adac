"""Checks analysts rely on before they quote a number from the report or the daily metrics."""

from datetime import timedelta
from itertools import pairwise

import dagster as dg
import polars as pl

from eventreach_assets.assets.reporting import campaign_report, daily_metrics, engagement_records
from eventreach_assets.domain.attribution import attribute_registrations
from eventreach_assets.domain.channel_report import channel_report
from eventreach_assets.partitions import events_partitions
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ClockResource, ProgramResource

FUNNEL_ORDER = ("sent", "opened", "clicked", "registered")


def recomputed(
    event_id: str, ledger: DeliveryLedgerResource, engagement: EngagementStoreResource, program: ProgramResource
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, pl.DataFrame]]:
    """The report's channel table and attribution, recomputed from the records."""
    config = program.load().metrics
    records = engagement_records(ledger, engagement, [event_id])
    channels = channel_report(**records, unit_costs=config.unit_costs, rule=config.attribution)
    attribution = attribute_registrations(records["registrations"], records["interactions"], config.attribution)
    return channels, attribution, records


@dg.asset_check(asset=campaign_report, name="funnel_monotone", partitions_def=events_partitions)
def funnel_monotone(
    context: dg.AssetCheckExecutionContext,
    ledger: DeliveryLedgerResource,
    engagement: EngagementStoreResource,
    program: ProgramResource,
) -> dg.AssetCheckResult:
    """Per channel: opened ≤ sent, clicked ≤ opened, and (last-touch) registered ≤ clicked: a
    stage cannot grow. First-touch may credit a channel its registrant only opened, so there the
    last step is registered ≤ opened."""
    channels, _, _ = recomputed(context.partition_key, ledger, engagement, program)
    per_channel = channels.filter(pl.col("channel") != "all")
    order = FUNNEL_ORDER if program.load().metrics.attribution == "last-touch" else ("sent", "opened", "registered")
    broken = per_channel.filter(
        pl.any_horizontal(pl.col(later) > pl.col(earlier) for earlier, later in pairwise(order))
    )
    return dg.AssetCheckResult(
        passed=broken.height == 0,
        metadata={"channels_checked": per_channel.height, "violations": ", ".join(broken["channel"].to_list())},
    )


@dg.asset_check(asset=campaign_report, name="attribution_sums_to_registrations", partitions_def=events_partitions)
def attribution_sums_to_registrations(
    context: dg.AssetCheckExecutionContext,
    ledger: DeliveryLedgerResource,
    engagement: EngagementStoreResource,
    program: ProgramResource,
) -> dg.AssetCheckResult:
    """Every registration is attributed to exactly one channel: the parts add up to the whole."""
    _, attribution, records = recomputed(context.partition_key, ledger, engagement, program)
    registrations = records["registrations"].filter(pl.col("status") == "registered")["customer_id"].n_unique()
    attributed = attribution.height
    return dg.AssetCheckResult(
        passed=attributed == registrations and attribution["customer_id"].is_unique().all(),
        metadata={"registrations": registrations, "attributed": attributed},
    )


@dg.asset_check(asset=campaign_report, name="attendance_within_registrations", partitions_def=events_partitions)
def attendance_within_registrations(
    context: dg.AssetCheckExecutionContext,
    ledger: DeliveryLedgerResource,
    engagement: EngagementStoreResource,
    program: ProgramResource,
) -> dg.AssetCheckResult:
    """Attended ≤ registered in the report (walk-ins without a registration are counted apart)."""
    channels, _, _ = recomputed(context.partition_key, ledger, engagement, program)
    total = channels.filter(pl.col("channel") == "all").row(0, named=True)
    return dg.AssetCheckResult(
        passed=total["attended"] <= total["registered"],
        metadata={"attended": total["attended"], "registered": total["registered"]},
    )


@dg.asset_check(asset=daily_metrics, name="yesterday_published")
def yesterday_published(context: dg.AssetCheckExecutionContext, clock: ClockResource) -> dg.AssetCheckResult:
    """Run at 00:30 by its schedule: yesterday's daily metrics exist (the 23:59 run succeeded)."""
    yesterday = (clock.now() - timedelta(days=1)).date().isoformat()
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=daily_metrics.key, asset_partitions=[yesterday]), limit=1
    ).records
    return dg.AssetCheckResult(
        passed=bool(records),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"day": yesterday, "published": bool(records)},
    )


report_checks = [funnel_monotone, attribution_sums_to_registrations, attendance_within_registrations,
                 yesterday_published]  # fmt: skip
