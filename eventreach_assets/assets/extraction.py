"""Step 1 of the weekly batch: extract candidates for an event from the warehouse."""

import dagster as dg

from eventreach_assets.assets.metadata import counts_table, stopwatch
from eventreach_assets.domain.events import EventContext, UnknownEventError, event_context
from eventreach_assets.domain.extract import validate_and_dedupe
from eventreach_assets.partitions import events_partitions
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.program import ProgramResource
from eventreach_assets.resources.warehouse import WarehouseResource

BATCH = {"group_name": "weekly_batch", "owners": ["team:data-platform"], "partitions_def": events_partitions}


def current_event(warehouse: WarehouseResource, partition_key: str) -> EventContext:
    """The event of this partition; an unknown key fails the asset with a clear message."""
    try:
        return event_context(warehouse.events(), partition_key)
    except UnknownEventError as error:
        raise dg.Failure(description=str(error)) from None


@dg.asset(**BATCH, kinds={"polars"}, tags={"stage": "extract"}, code_version="1")
def raw_candidates(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    decision_log: DecisionLogResource,
    program: ProgramResource,
) -> dg.MaterializeResult:
    """Profiles interested in the event's topics, validated and deduplicated: one row per customer."""
    event = current_event(warehouse, context.partition_key)
    with stopwatch() as watch:
        raw = warehouse.extract_candidates(event.topics)
        result = validate_and_dedupe(raw, program.load().marketplaces)
        quarantine_path = decision_log.write("quarantine", event.event_id, result.quarantine)
    context.log.info(
        f"event {event.event_id}: {result.extracted_rows} rows extracted, {result.candidates.height} candidates, "
        f"{result.quarantine.height} quarantined"
    )
    return dg.MaterializeResult(
        value=result.candidates,
        metadata={
            "event": event.name,
            "topics": ", ".join(event.topics),
            "extracted_rows": result.extracted_rows,
            "unique_candidates": result.candidates.height,
            "quarantined_rows": result.quarantine.height,
            "quarantine_by_reason": counts_table(result.quarantine_counts, "reason", result.extracted_rows),
            "quarantine_path": dg.MetadataValue.path(quarantine_path),
            "dagster/row_count": result.candidates.height,
            **watch.metadata(result.extracted_rows),
        },
    )
