"""Steps 4 and 5: the candidates table (DynamoDB | SQLite) and its Parquet export."""

import dagster as dg
import polars as pl

from eventreach_assets.assets.extraction import BATCH
from eventreach_assets.assets.metadata import stopwatch
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.export import CandidateExportResource
from eventreach_assets.resources.program import ClockResource, ProgramResource

BATCH_READY_AT = "batch_ready_at"  # metadata key the invitation waves and the event-date sensor read


@dg.asset(**BATCH, kinds={"sqlite"}, tags={"stage": "store"}, code_version="1")
def candidates_table(
    context: dg.AssetExecutionContext,
    scored_candidates: pl.DataFrame,
    candidate_store: CandidateStoreResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """The event's candidates, one item per customer and invitation channel, TTL from the program."""
    config = program.load()
    channels = [channel.channel_id for channel in config.invitation_channels]
    now = clock.now()
    with stopwatch() as watch:
        # What DynamoDB's TTL does by itself: expired items and score-cache entries go.
        purged = candidate_store.purge_expired(now)
        summary = candidate_store.replace_event_candidates(
            config.program_id,
            context.partition_key,
            scored_candidates,
            channels,
            now=now,
            ttl_days=config.candidate_ttl_days,
            batch_write_size=config.storage.batch_write_size,
        )
    return dg.MaterializeResult(
        metadata={
            "customers": summary.customers,
            "channels": ", ".join(channels),
            "items_written": summary.items_written,
            "stale_items_deleted": summary.items_deleted,
            "registrations_preserved": summary.registered_preserved,
            "registered_items_retained": summary.registered_retained,
            "write_batches": summary.batches,
            "expired_entries_purged": purged,
            "expires_at": summary.expires_at.isoformat(),
            # When the event's candidates were ready, by the batch's clock: invitation waves start here.
            BATCH_READY_AT: now.isoformat(),
            "dagster/row_count": summary.items_written,
            **watch.metadata(summary.items_written),
        }
    )


@dg.asset(**BATCH, deps=[candidates_table], kinds={"parquet"}, tags={"stage": "export"}, code_version="1")
def candidates_export(
    context: dg.AssetExecutionContext,
    candidate_store: CandidateStoreResource,
    exporter: CandidateExportResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """The stored candidates of the event as hive-partitioned Parquet for the data warehouse."""
    config = program.load()
    now = clock.now()
    with stopwatch() as watch:
        items = candidate_store.exported_items(config.program_id, context.partition_key, now=now)
        result = exporter.export_event(config.program_id, context.partition_key, now.date(), items)
    return dg.MaterializeResult(
        metadata={
            "rows": result.rows,
            "bytes": result.bytes,
            "location": result.uri,
            "run_date": now.date().isoformat(),
            "dagster/row_count": result.rows,
            **watch.metadata(result.rows),
        }
    )
