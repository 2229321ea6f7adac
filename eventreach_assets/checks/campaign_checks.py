"""Checks on every campaign send: once per customer, never to an opted-out customer, within capacity."""

import dagster as dg
import polars as pl

from eventreach_assets.domain.campaign_kinds import CAMPAIGN_KINDS
from eventreach_assets.domain.delivery import MessageKind
from eventreach_assets.partitions import events_partitions
from eventreach_assets.resources.campaign_services import CampaignServices
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ClockResource

SAMPLE = 5


def sent_deliveries(ledger: DeliveryLedgerResource, event_id: str, asset_name: str) -> pl.DataFrame:
    kind = CAMPAIGN_KINDS[asset_name]
    return ledger.deliveries(event_id, channel=kind.channel, kind=kind.kind).filter(pl.col("status") == "sent")


def sent_once_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_name, name=f"{asset_name}_sent_once", partitions_def=events_partitions, blocking=True)
    def sent_once(context: dg.AssetCheckExecutionContext, ledger: DeliveryLedgerResource) -> dg.AssetCheckResult:
        """No customer got this message twice for this event date (ledger rows and provider ids both
        unique); reminders, day-of and updates go once per date (`occurrence`)."""
        sent = sent_deliveries(ledger, context.partition_key, asset_name)
        repeated = sent.filter(pl.struct("customer_id", "occurrence").is_duplicated())["customer_id"].unique()
        repeated_ids = sent.filter(pl.col("provider_message_id").is_duplicated()).height
        return dg.AssetCheckResult(
            passed=repeated.len() == 0 and repeated_ids == 0,
            metadata={"sent": sent.height, "customers_messaged_twice": repeated.len(),
                      "repeated_provider_ids": repeated_ids, "sample": ", ".join(repeated.head(SAMPLE).to_list())},
        )  # fmt: skip

    return sent_once


def no_opted_out_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_name, name=f"{asset_name}_no_opted_out", partitions_def=events_partitions)
    def no_opted_out(context: dg.AssetCheckExecutionContext, ledger: DeliveryLedgerResource) -> dg.AssetCheckResult:
        """Nobody was messaged after opting out (the weekly filter removes earlier opt-outs from the warehouse)."""
        sent = sent_deliveries(ledger, context.partition_key, asset_name)
        opt_outs = ledger.opt_outs(sent["customer_id"], CAMPAIGN_KINDS[asset_name].channel)
        violators = (
            sent.join(opt_outs, on="customer_id", how="inner")
            .filter(pl.col("opted_out_at") <= pl.col("sent_at"))["customer_id"]
            .unique()
            .sort()
        )
        return dg.AssetCheckResult(
            passed=violators.len() == 0,
            metadata={"sent": sent.height, "messaged_after_opt_out": violators.len(),
                      "sample": ", ".join(violators.head(SAMPLE).to_list())},
        )  # fmt: skip

    return no_opted_out


def well_formed_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_name, name=f"{asset_name}_well_formed", partitions_def=events_partitions)
    def well_formed(context: dg.AssetCheckExecutionContext, ledger: DeliveryLedgerResource) -> dg.AssetCheckResult:
        """Every email had one-click unsubscribe headers and (invitations) a valid .ics, or was not sent."""
        kind = CAMPAIGN_KINDS[asset_name]
        rows = ledger.deliveries(context.partition_key, channel=kind.channel, kind=kind.kind)
        invalid = rows.filter(pl.col("reason").fill_null("").str.starts_with("invalid_message"))
        return dg.AssetCheckResult(
            passed=invalid.height == 0,
            metadata={"messages": rows.height, "invalid": invalid.height,
                      "first_problem": invalid["reason"][0] if invalid.height else ""},
        )  # fmt: skip

    return well_formed


def within_capacity_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_name, name=f"{asset_name}_within_capacity", partitions_def=events_partitions,
                    blocking=True)  # fmt: skip
    def within_capacity(
        context: dg.AssetCheckExecutionContext, services: CampaignServices, clock: ClockResource
    ) -> dg.AssetCheckResult:
        """Never more invitations on this channel than seats the event had left when it went out."""
        event = services.event(context.partition_key)
        capacity = min(event.capacity, services.config().event_config.capacity_limit)
        registered = services.registered(context.partition_key, clock.now()).height
        sent = sent_deliveries(services.ledger, context.partition_key, asset_name).height
        return dg.AssetCheckResult(
            passed=sent <= capacity,
            metadata={"sent": sent, "capacity": capacity, "registered_now": registered},
        )

    return within_capacity


def build_campaign_checks(asset_name: str) -> list[dg.AssetChecksDefinition]:
    """A sending asset's checks: sent once and never after an opt-out; well-formed (email);
    within capacity (invitations)."""
    checks = [sent_once_check(asset_name), no_opted_out_check(asset_name)]
    if CAMPAIGN_KINDS[asset_name].channel == "email":
        checks.append(well_formed_check(asset_name))
    if CAMPAIGN_KINDS[asset_name].kind == MessageKind.INVITATION:
        checks.append(within_capacity_check(asset_name))
    return checks


campaign_checks = [check for name in CAMPAIGN_KINDS for check in build_campaign_checks(name)]
