"""Step 1 of the weekly batch: extract candidates for an event from the warehouse.

The program's `extraction` setting picks how (docs/speed.md): `per_event`, each event partition
extracts, validates and deduplicates its own rows (the event's predicate pushed down); or
`weekly_snapshot`, `profile_snapshot` does that work once per batch for all upcoming events
(their predicates' union pushed down) and each event partition reads its rows from it.
"""

from datetime import datetime
from typing import Any

import dagster as dg
import polars as pl

from eventreach_assets.assets.metadata import Stopwatch, counts_table, stopwatch
from eventreach_assets.domain.events import EventContext, UnknownEventError, event_context, upcoming_topics
from eventreach_assets.domain.extract import (
    SET_BY_DEDUPE,
    ExtractResult,
    candidates_at,
    event_extract,
    profile_snapshot_rows,
    snapshot_unusable,
    validate_and_dedupe,
)
from eventreach_assets.partitions import events_partitions
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.parquet_io.base import ALLOW_MISSING, RowsOf, register_rebuilder
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.warehouse import WarehouseResource

OWNERS = {"group_name": "weekly_batch", "owners": ["team:data-platform"]}
BATCH = {**OWNERS, "partitions_def": events_partitions}
PROFILE_SNAPSHOT = "profile_snapshot"
SNAPSHOT_AS_OF, SNAPSHOT_TOPICS = "as_of", "covered_topics"  # profile_snapshot metadata the events read
# An event's candidates drawn from the snapshot are stored as row numbers in it; a later run (a step
# re-executed alone, in a fresh process) rebuilds them with this, registered as the code loads.
register_rebuilder(candidates_at)


def current_event(warehouse: WarehouseResource, partition_key: str) -> EventContext:
    """The event of this partition; an unknown key fails the asset with a clear message."""
    try:
        return event_context(warehouse.events(), partition_key)
    except UnknownEventError as error:
        raise dg.Failure(description=str(error)) from None


def extract_timed(warehouse: WarehouseResource, topics: list[str], watch: Stopwatch) -> pl.DataFrame:
    """The profiles of `topics` from the warehouse, `watch` stopped when they are in (its seconds:
    the extraction's)."""
    raw = warehouse.extract_candidates(topics)
    watch.stop()
    return raw


@dg.asset(**OWNERS, kinds={"polars", "parquet"}, tags={"stage": "extract"}, code_version="1")
def profile_snapshot(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, program: ProgramResource, clock: ClockResource
) -> dg.MaterializeResult:
    """This batch week's profile rows, validated, newest first: what every upcoming event would
    extract (the union of their predicates, pushed down), so each event partition reads it
    instead of extracting, validating and sorting every profile again."""
    now = clock.now()
    topics = upcoming_topics(warehouse.events(), now)
    if not topics:
        context.log.info("no upcoming event: no snapshot taken")
        return dg.MaterializeResult(
            metadata={SNAPSHOT_AS_OF: now.isoformat(), SNAPSHOT_TOPICS: [], "rows": 0, "reason": "no upcoming event"}
        )
    with stopwatch() as watch:
        # The extract is passed on, not kept here: the snapshot's sort runs without it.
        snapshot = profile_snapshot_rows(extract_timed(warehouse, topics, watch), program.load().marketplaces)
        extracted = watch.seconds  # stopped when the extraction returned
    reasons = snapshot.group_by("reason").len().drop_nulls().sort("reason")
    return dg.MaterializeResult(
        value=snapshot,
        metadata={
            SNAPSHOT_AS_OF: now.isoformat(),
            SNAPSHOT_TOPICS: topics,
            "rows": snapshot.height,
            "quarantine_by_reason": counts_table(dict(reasons.iter_rows()), "reason", snapshot.height),
            "extract_s": round(extracted, 3),
            "validate_and_sort_s": round(watch.seconds - extracted, 3),
            "dagster/row_count": snapshot.height,
            **watch.metadata(snapshot.height),
        },
    )


def extract_event(
    warehouse: WarehouseResource, program: ProgramResource, partition_key: str
) -> tuple[EventContext, ExtractResult]:
    """The partition's event and its own extraction (its predicate pushed down), validated and
    deduplicated. The catalog read and the extraction share one warehouse session (one login on
    Snowflake), closed before the validation. The candidates are kept to the run's end: the
    extract is read compact.

    The validation is handed the extract's only reference (popped from a one-item list, as the
    snapshot's asset passes its extract as a call's result): its text columns replaced by
    categoricals are freed as it goes. A local variable held them to the end (at 3M profiles the
    extraction's peak 1,827-1,842 -> 1,603-1,620 MiB, docs/speed.md)."""
    with warehouse.reading():
        event = current_event(warehouse, partition_key)
        extract = [warehouse.extract_candidates(event.topics, compact=True)]
    return event, validate_and_dedupe(extract.pop(), program.load().marketplaces)


def extracted(context: dg.AssetExecutionContext, event: EventContext, result: ExtractResult, how: str,
              quarantine_path: str, watch: Stopwatch) -> dg.MaterializeResult:  # fmt: skip
    """The event's candidates and the metadata analysts read, however they were extracted. Drawn
    from the week's snapshot, they are stored as their rows' numbers in it (`RowsOf`)."""
    value: pl.DataFrame | RowsOf = result.candidates
    if result.snapshot_rows is not None:
        value = RowsOf(
            value=result.candidates,
            source=dg.AssetKey(PROFILE_SNAPSHOT),
            row_numbers=result.snapshot_rows,
            own_columns=result.candidates.select(SET_BY_DEDUPE),
            rebuild=candidates_at,
        )
    context.log.info(
        f"event {event.event_id} ({how}): {result.extracted_rows} rows extracted, {result.candidates.height} "
        f"candidates, {result.quarantine.height} quarantined"
    )
    return dg.MaterializeResult(
        value=value,
        metadata={
            "event": event.name,
            "topics": ", ".join(event.topics),
            "extraction": how,
            "extracted_rows": result.extracted_rows,
            "unique_candidates": result.candidates.height,
            "quarantined_rows": result.quarantine.height,
            "quarantine_by_reason": counts_table(result.quarantine_counts, "reason", result.extracted_rows),
            "quarantine_path": dg.MetadataValue.path(quarantine_path),
            "dagster/row_count": result.candidates.height,
            **watch.metadata(result.extracted_rows),
        },
    )


@dg.asset(**BATCH, name="raw_candidates", kinds={"polars"}, tags={"stage": "extract"}, code_version="1")
def raw_candidates_per_event(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    decision_log: DecisionLogResource,
    program: ProgramResource,
) -> dg.MaterializeResult:
    """Profiles interested in the event's topics, validated and deduplicated: one row per customer."""
    with stopwatch() as watch:
        event, result = extract_event(warehouse, program, context.partition_key)
        quarantine_path = decision_log.write("quarantine", event.event_id, result.quarantine)
    return extracted(context, event, result, "per_event", quarantine_path, watch)


def latest_snapshot(instance: dg.DagsterInstance) -> tuple[datetime | None, list[str]]:
    """When the stored snapshot was taken and which topics it covers (None, [] when never)."""
    entry = instance.get_latest_materialization_event(dg.AssetKey(PROFILE_SNAPSHOT))
    metadata: dict[str, Any] = entry.asset_materialization.metadata if entry and entry.asset_materialization else {}
    if SNAPSHOT_AS_OF not in metadata:
        return None, []
    topics = metadata[SNAPSHOT_TOPICS].value if SNAPSHOT_TOPICS in metadata else []
    return datetime.fromisoformat(str(metadata[SNAPSHOT_AS_OF].value)), [str(topic) for topic in topics or []]


@dg.asset(
    **BATCH, name="raw_candidates", kinds={"polars"}, tags={"stage": "extract"}, code_version="1",
    ins={"snapshot": dg.AssetIn(PROFILE_SNAPSHOT, metadata={ALLOW_MISSING: True})},
)  # fmt: skip
def raw_candidates_from_snapshot(
    context: dg.AssetExecutionContext,
    snapshot: pl.DataFrame | None,
    warehouse: WarehouseResource,
    decision_log: DecisionLogResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Profiles interested in the event's topics, validated and deduplicated: one row per customer,
    read from this week's profile snapshot; without a usable one, extracted for the event alone."""
    event = current_event(warehouse, context.partition_key)
    as_of, covered = latest_snapshot(context.instance)
    why_not = "no profile snapshot stored" if snapshot is None else snapshot_unusable(as_of, covered, event.topics,
                                                                                      clock.now())  # fmt: skip
    with stopwatch() as watch:
        if snapshot is not None and why_not is None:
            result, how = event_extract(snapshot, event.topics), f"weekly_snapshot (as of {as_of:%Y-%m-%d %H:%M})"
        else:
            context.log.warning(f"event {event.event_id}: {why_not}; extracting the event on its own")
            _, result = extract_event(warehouse, program, context.partition_key)
            how = f"per_event (fallback: {why_not})"
        quarantine_path = decision_log.write("quarantine", event.event_id, result.quarantine)
    return extracted(context, event, result, how, quarantine_path, watch)


def extraction_assets(extraction: str) -> list[dg.AssetsDefinition]:
    """The extraction assets for the program's `extraction` setting (`per_event` | `weekly_snapshot`)."""
    if extraction == "weekly_snapshot":
        return [profile_snapshot, raw_candidates_from_snapshot]
    return [profile_snapshot, raw_candidates_per_event]
