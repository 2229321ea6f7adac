"""What the events team reviews: the daily metrics and each event's campaign report.

Both are computed from the delivery ledger and the engagement records (never from counters kept
on the side), by `domain/daily_metrics.py`, `domain/channel_report.py`, `domain/attribution.py`
and `domain/holdout.py`. The daily metrics go to the metrics sink (CloudWatch on aws); the report
is a table, two charts and a standalone HTML file under the data dir.
"""

import base64
from collections.abc import Callable
from datetime import date

import dagster as dg
import polars as pl

from eventreach_assets.assets.metadata import stopwatch, table
from eventreach_assets.assets.metrics import STAGE_ASSETS, latest_metadata
from eventreach_assets.domain import charts
from eventreach_assets.domain.attribution import attribute_registrations
from eventreach_assets.domain.channel_report import channel_report
from eventreach_assets.domain.daily_metrics import daily_metrics_frame
from eventreach_assets.domain.holdout import holdout_lift
from eventreach_assets.partitions import daily_partitions, events_partitions
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.engagement_store import EngagementStoreResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.metrics_sink import MetricsSinkResource
from eventreach_assets.resources.program import ProgramResource

REPORTING = {"group_name": "reporting", "owners": ["team:events"]}


def engagement_records(
    ledger: DeliveryLedgerResource, engagement: EngagementStoreResource, event_ids: list[str]
) -> dict[str, pl.DataFrame]:
    """Every record the metrics are computed from, for these (at least one) events; each read is a
    key query per event."""
    if not event_ids:
        raise ValueError("engagement_records needs at least one event")

    def gather(read: Callable[[str], pl.DataFrame]) -> pl.DataFrame:
        return pl.concat([read(event_id) for event_id in event_ids], how="diagonal_relaxed")

    return {
        "deliveries": gather(ledger.deliveries_with_feedback),  # provider feedback: delivered, bounced, complained
        "registrations": gather(engagement.registrations),
        "interactions": gather(engagement.interactions),
        "attendance": gather(engagement.attendance),
        "survey": gather(engagement.survey_responses),
    }


def png_markdown(title: str, png: bytes) -> dg.MetadataValue:
    """A chart the Dagster UI shows inline (Markdown image with a data URI)."""
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")


@dg.asset(**REPORTING, partitions_def=daily_partitions, kinds={"cloudwatch"}, tags={"stage": "metrics"})
def daily_metrics(
    context: dg.AssetExecutionContext,
    ledger: DeliveryLedgerResource,
    engagement: EngagementStoreResource,
    metrics_sink: MetricsSinkResource,
    program: ProgramResource,
) -> dg.MaterializeResult:
    """The day's sends and engagement per event and channel (use case: daily 11:59 PM aggregation)."""
    day = date.fromisoformat(context.partition_key)
    event_ids = list(context.instance.get_dynamic_partitions(events_partitions.name))
    if not event_ids:
        return dg.MaterializeResult(metadata={"day": context.partition_key, "events": 0, "datums_published": 0})
    with stopwatch() as watch:
        records = engagement_records(ledger, engagement, event_ids)
        config = program.load()
        datums = daily_metrics_frame(
            day, *records.values(), program_id=config.program_id, rule=config.metrics.attribution
        )
        published = metrics_sink.publish(datums) if datums.height else 0
    figures = (
        datums.with_columns(
            pl.col("dimensions").list.eval(pl.element().struct.field("value")).list.join(" / ").alias("where")
        )
        .select("where", "name", "value", "unit")
        .sort("where", "name")
    )
    return dg.MaterializeResult(
        metadata={
            "day": context.partition_key,
            "events": len(event_ids),
            "datums_published": published,
            "figures": table(figures),
            "dagster/row_count": datums.height,
            **watch.metadata(datums.height),
        }
    )


@dg.asset(**REPORTING, partitions_def=events_partitions, kinds={"html"}, tags={"stage": "report"})
def campaign_report(
    context: dg.AssetExecutionContext,
    ledger: DeliveryLedgerResource,
    engagement: EngagementStoreResource,
    decision_log: DecisionLogResource,
    program: ProgramResource,
) -> dg.MaterializeResult:
    """One event's campaign: funnel per channel, attribution, costs, holdout lift, batch figures."""
    config = program.load().metrics
    event_id = context.partition_key
    with stopwatch() as watch:
        records = engagement_records(ledger, engagement, [event_id])
        channels = channel_report(**records, unit_costs=config.unit_costs, rule=config.attribution)
        attribution = attribute_registrations(records["registrations"], records["interactions"],
                                                     config.attribution)  # fmt: skip
        by_channel = attribution.group_by("channel").len("registrations").sort("channel")
        lift = holdout_lift(
            records["deliveries"], records["registrations"], channel=config.holdout.channel,
            min_sample_per_arm=config.holdout.min_sample_per_arm, confidence=config.holdout.confidence,
        )  # fmt: skip
        processing = processing_figures(context.instance, event_id)
        funnel_png = charts.funnel_chart_png(channels)
        attribution_png = charts.attribution_chart_png(by_channel)
        tables = {"Channels": channels, "Attribution": by_channel, "Holdout lift": lift.as_frame(),
                  "Weekly batch": processing}  # fmt: skip
        html = charts.html_report(
            f"Campaign report: {event_id}",
            tables,
            {"Funnel": funnel_png, "Attribution": attribution_png},
            [f"Attribution rule: {config.attribution}.", lift.summary()],
        )
        path = decision_log.write_file("reports", event_id, "campaign_report.html", html.encode("utf-8"))
    return dg.MaterializeResult(
        metadata={
            "channels": table(channels),
            "attribution": table(by_channel),
            "attribution_rule": config.attribution,
            "lift": lift.summary(),
            "weekly_batch": table(processing),
            "funnel_chart": png_markdown("funnel", funnel_png),
            "attribution_chart": png_markdown("attribution", attribution_png),
            "report": dg.MetadataValue.path(path),
            **watch.metadata(),
        }
    )


PROCESSING_FIGURES = {  # (asset, metadata key) of the batch's own materializations -> figure
    ("raw_candidates", "extracted_rows"): "profile rows extracted",
    ("raw_candidates", "unique_candidates"): "unique candidates",
    ("filtered_candidates", "eligible_candidates"): "eligible after filters",
    ("filtered_candidates", "filter_pass_rate_pct"): "filter pass rate %",
    ("scored_candidates", "high_score_rate_pct"): "high-score rate %",
    ("candidates_table", "items_written"): "stored items",
}


def processing_figures(instance: dg.DagsterInstance, event_id: str) -> pl.DataFrame:
    """The batch's processing metrics (use case: duration, throughput, pass rate, high-score
    rate), read from its own latest materializations: the run records, not a side counter."""

    def latest(asset_name: str) -> dict[str, object]:
        try:
            return latest_metadata(instance, asset_name, event_id)
        except dg.Failure:  # the batch has not run for this event
            return {}

    stages = {name: latest(name) for name in STAGE_ASSETS}
    rows = [
        (figure, str(stages[asset_name][key]))
        for (asset_name, key), figure in PROCESSING_FIGURES.items()
        if key in stages[asset_name]
    ]
    seconds = sum(float(str(metadata.get("duration_s", 0.0))) for metadata in stages.values())
    if seconds > 0:
        extracted = float(str(stages["raw_candidates"].get("extracted_rows", 0)))
        rows += [("batch duration s", f"{seconds:.1f}"), ("throughput rows/min", f"{extracted / seconds * 60:,.0f}")]
    return pl.DataFrame(rows, schema={"figure": pl.String, "value": pl.String}, orient="row")


reporting_assets = [daily_metrics, campaign_report]
