"""The weekly batch's own numbers, published where operators watch (CloudWatch | local files)."""

from typing import Any

import dagster as dg

from eventreach_assets.assets.extraction import BATCH
from eventreach_assets.assets.storage import candidates_table
from eventreach_assets.domain.metrics import batch_metrics_frame
from eventreach_assets.resources.metrics_sink import MetricsSinkResource
from eventreach_assets.resources.program import ClockResource, ProgramResource

STAGE_ASSETS = ("raw_candidates", "filtered_candidates", "scored_candidates", "candidates_table")


def latest_metadata(instance: dg.DagsterInstance, asset_name: str, partition_key: str) -> dict[str, Any]:
    """Metadata values of an asset's latest materialization for one event partition."""
    records_filter = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset_name), asset_partitions=[partition_key])
    records = instance.fetch_materializations(records_filter, limit=1).records
    if not records or records[0].asset_materialization is None:
        raise dg.Failure(f"{asset_name} has no materialization for event {partition_key!r}: run the weekly batch first")
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}


def table_counts(table: Any, key: str, value: str) -> dict[str, int]:
    return {record.data[key]: int(record.data[value]) for record in table.records}


@dg.asset(**BATCH, deps=[candidates_table], kinds={"cloudwatch"}, tags={"stage": "metrics"}, code_version="1")
def batch_metrics(
    context: dg.AssetExecutionContext,
    metrics_sink: MetricsSinkResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Rows per stage, removals per filter, score bands and durations of this event's batch."""
    stages = {name: latest_metadata(context.instance, name, context.partition_key) for name in STAGE_ASSETS}
    raw, filtered, scored, stored = (stages[name] for name in STAGE_ASSETS)
    removed = {f: n for f, n in table_counts(filtered["funnel"], "filter_id", "removed").items() if f != "input"}
    datums = batch_metrics_frame(
        program_id=program.load().program_id,
        event_id=context.partition_key,
        stage_counts={
            "extracted_rows": raw["extracted_rows"],
            "unique_candidates": raw["unique_candidates"],
            "quarantined_rows": raw["quarantined_rows"],
            "eligible_candidates": filtered["eligible_candidates"],
            "scored_candidates": scored["scored_candidates"],
            "stored_items": stored["items_written"],
        },
        removed_by_filter=removed,
        score_bands=table_counts(scored["score_bands"], "band", "count"),
        durations_s={name: float(metadata["duration_s"]) for name, metadata in stages.items()},
        at=clock.now(),
    )
    published = metrics_sink.publish(datums)
    return dg.MaterializeResult(
        metadata={"datums_published": published, "metric_names": ", ".join(sorted(set(datums["name"])))}
    )
