"""Asset checks on the weekly batch that analysts review in the UI.

Policy checks recompute their answer from the sources (warehouse, store) rather than trusting
the asset's own bookkeeping, so a bug in a filter cannot also hide itself.

Each check's work is a plain function returning its `AssetCheckResult` (the frames and
resources in, no Dagster context); the asset check hands it its inputs and partition. The bench's
bare run calls the same functions, so the reference it sets Dagster beside does the checks' work
too (docs/speed.md).
"""

from datetime import timedelta

import dagster as dg
import polars as pl

from eventreach_assets.assets.filtering import filter_inputs
from eventreach_assets.domain import scoring
from eventreach_assets.domain.candidate_items import store_vs_scored
from eventreach_assets.domain.filters import FrequencyCapFilter, build_filter_chain
from eventreach_assets.partitions import events_partitions
from eventreach_assets.program.config import ScoringConfig
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.export import CandidateExportResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.warehouse import WarehouseResource

SAMPLE = 5  # ids shown in a failing check's metadata (customer ids only, never contact data)


def unique_customer_verdict(raw_candidates: pl.DataFrame) -> dg.AssetCheckResult:
    """Whether every candidate is one customer's only row, with no null id."""
    ids = raw_candidates["customer_id"]
    # Distinct 64-bit hashes prove distinct ids: the normal case is one pass over integers (2.47M
    # ids at 3M profiles: 0.08 s, against 0.55 s for the strings' own `n_unique`). Only when two
    # hashes meet are the ids themselves compared, and the duplicated ones found.
    repeated = ids.hash().n_unique() < ids.len() and ids.n_unique() < ids.len()
    duplicated = ids.filter(ids.is_duplicated()).unique() if repeated else ids.clear()
    nulls = ids.null_count()
    return dg.AssetCheckResult(
        passed=duplicated.len() == 0 and nulls == 0,
        metadata={
            "duplicated_customers": duplicated.len(),
            "null_customer_ids": nulls,
            "sample": ", ".join(duplicated.head(SAMPLE).to_list()),
        },
    )


@dg.asset_check(asset="raw_candidates", partitions_def=events_partitions, blocking=True)
def raw_candidates_unique_customer(raw_candidates: pl.DataFrame) -> dg.AssetCheckResult:
    """One row per customer per event: dedupe worked, so nobody is scored or invited twice."""
    return unique_customer_verdict(raw_candidates)


def policy_verdict(
    filtered_candidates: pl.DataFrame,
    warehouse: WarehouseResource,
    ledger: DeliveryLedgerResource,
    program: ProgramResource,
    clock: ClockResource,
    partition_key: str,
) -> dg.AssetCheckResult:
    """The event's survivors against its registrations, opt-outs and past invitations, read again."""
    inputs = filter_inputs(warehouse, ledger, program, clock, partition_key)
    cap_filter = next((f for f in build_filter_chain(program.load()) if isinstance(f, FrequencyCapFilter)), None)
    cap = cap_filter.parameters.max_invitations_per_month if cap_filter else 2**31
    window = cap_filter.history_window() if cap_filter else timedelta(0)  # without a cap: none read
    survivors = filtered_candidates.lazy().select("customer_id", "marketing_opt_out")
    registered = survivors.join(inputs.registrations.select("customer_id").unique(), on="customer_id", how="semi")
    opted_out = survivors.filter(pl.col("marketing_opt_out"))
    recent = inputs.invitations.filter(
        pl.col("invited_at").is_between(inputs.as_of - window, inputs.as_of, closed="left")
    )
    over_cap = (
        survivors.join(recent, on="customer_id", how="inner").group_by("customer_id").len().filter(pl.col("len") >= cap)
    )
    registered_ids, opted_out_ids, over_cap_ids = (
        frame["customer_id"] for frame in pl.collect_all([registered, opted_out, over_cap])
    )
    registered_count = inputs.registrations.select(pl.col("customer_id").n_unique()).collect().item()
    at_capacity = registered_count >= inputs.effective_capacity
    over_capacity = filtered_candidates.height if at_capacity else 0
    violations = registered_ids.len() + opted_out_ids.len() + over_cap_ids.len() + over_capacity
    return dg.AssetCheckResult(
        passed=violations == 0,
        metadata={
            "already_registered": registered_ids.len(),
            "opted_out": opted_out_ids.len(),
            "over_frequency_cap": over_cap_ids.len(),
            "survivors_of_a_full_event": over_capacity,
            "sample": ", ".join(pl.concat([registered_ids, opted_out_ids, over_cap_ids]).head(SAMPLE).to_list()),
        },
    )


@dg.asset_check(asset="filtered_candidates", partitions_def=events_partitions, blocking=True)
def filtered_candidates_policy(
    context: dg.AssetCheckExecutionContext,
    filtered_candidates: pl.DataFrame,
    warehouse: WarehouseResource,
    ledger: DeliveryLedgerResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.AssetCheckResult:
    """No opted-out, already-registered or over-frequency-cap customer survives, nor anyone for a full event."""
    return policy_verdict(filtered_candidates, warehouse, ledger, program, clock, context.partition_key)


def valid_scores_verdict(scored_candidates: pl.DataFrame) -> dg.AssetCheckResult:
    """Whether the score and every model probability are numbers within [0, 1]."""
    columns = [c for c in scored_candidates.columns if c == scoring.SCORE or c.startswith("p_")]
    bad = scored_candidates.filter(
        pl.any_horizontal(
            [pl.col(c).is_null() | pl.col(c).is_nan() | (pl.col(c) < 0) | (pl.col(c) > 1) for c in columns]
        )
    )
    return dg.AssetCheckResult(
        passed=bad.height == 0 and scoring.SCORE in columns,
        metadata={"checked_columns": ", ".join(columns), "invalid_rows": bad.height,
                  "sample": ", ".join(bad["customer_id"].head(SAMPLE).to_list())},
    )  # fmt: skip


@dg.asset_check(asset="scored_candidates", partitions_def=events_partitions, blocking=True)
def scored_candidates_valid_scores(scored_candidates: pl.DataFrame) -> dg.AssetCheckResult:
    """Every score and model probability is a number within [0, 1]: nothing else may be stored."""
    return valid_scores_verdict(scored_candidates)


def band_shares(scored_candidates: pl.DataFrame, config: ScoringConfig) -> dict[str, float]:
    """The share of the scored candidates in each of the program's score bands (the drift's current mix)."""
    return scoring.band_distribution(scored_candidates, high=config.score_bands.high, medium=config.score_bands.medium)


def previous_band_shares(
    instance: dg.DagsterInstance, partition_key: str, current_run_id: str
) -> tuple[dict[str, float], str] | None:
    """Band shares of this event's previous materialization (other events' audiences differ by design)."""
    records_filter = dg.AssetRecordsFilter(asset_key=dg.AssetKey("scored_candidates"), asset_partitions=[partition_key])
    for record in instance.fetch_materializations(records_filter, limit=5).records:
        materialization = record.asset_materialization
        if record.run_id == current_run_id or materialization is None:
            continue
        metadata = materialization.metadata
        shares = {b: float(metadata[f"band_share_{b}"].value) for b in scoring.BANDS if f"band_share_{b}" in metadata}
        if shares:
            return shares, f"run {record.run_id[:8]}"
    return None


@dg.asset_check(asset="scored_candidates", partitions_def=events_partitions, blocking=False)
def scored_candidates_band_drift(
    context: dg.AssetCheckExecutionContext, scored_candidates: pl.DataFrame, program: ProgramResource
) -> dg.AssetCheckResult:
    """Warn when the high/medium/low mix moves more than the program allows since the previous run."""
    config = program.load().scoring
    current = band_shares(scored_candidates, config)
    baseline = previous_band_shares(context.instance, context.partition_key, context.run.run_id)
    if baseline is None:
        return dg.AssetCheckResult(passed=True, metadata={"baseline": "none yet", **_shares("current", current)})
    previous, source = baseline
    drift = scoring.band_drift(current, previous)
    worst = max(abs(points) for points in drift.values())
    return dg.AssetCheckResult(
        passed=worst <= config.band_drift_warn_points,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "baseline": source,
            "max_drift_points": round(worst, 2),
            **_shares("current", current),
            **_shares("previous", previous),
        },
    )


def _shares(prefix: str, shares: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{band}_pct": round(share * 100, 2) for band, share in shares.items()}


def store_verdict(
    scored_candidates: pl.DataFrame,
    candidate_store: CandidateStoreResource,
    program: ProgramResource,
    clock: ClockResource,
    partition_key: str,
) -> dg.AssetCheckResult:
    """The event's live items in the store, read back, against the scored set the batch wrote."""
    config = program.load()
    items = candidate_store.event_item_keys(config.program_id, partition_key, now=clock.now())
    differences = store_vs_scored(items, scored_candidates["customer_id"], len(config.invitation_channels))
    return dg.AssetCheckResult(
        passed=not any(differences.values()),
        metadata={
            "scored_customers": scored_candidates.height,
            "stored_customers": items["customer_id"].n_unique(),
            "stored_items": items.height,
            **differences,
        },
    )


@dg.asset_check(
    asset="candidates_table",
    partitions_def=events_partitions,
    blocking=True,
    additional_ins={"scored_candidates": dg.AssetIn("scored_candidates")},
)
def candidates_table_matches_scored(
    context: dg.AssetCheckExecutionContext,
    scored_candidates: pl.DataFrame,
    candidate_store: CandidateStoreResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.AssetCheckResult:
    """Store = scored set: every scored customer on every invitation channel. Only live items are read
    (TTL not passed), so an item written with a TTL already past counts as missing."""
    return store_verdict(scored_candidates, candidate_store, program, clock, context.partition_key)


def export_verdict(
    candidate_store: CandidateStoreResource,
    exporter: CandidateExportResource,
    program: ProgramResource,
    clock: ClockResource,
    partition_key: str,
) -> dg.AssetCheckResult:
    """The event's exported file, read back, against its live items in the store."""
    config = program.load()
    now = clock.now()
    keys = ["customer_id", "channel"]
    stored = candidate_store.event_item_keys(config.program_id, partition_key, now=now).select(keys)
    exported = exporter.read_event(config.program_id, partition_key, now.date(), columns=keys)
    only_stored = stored.join(exported, on=keys, how="anti").height
    only_exported = exported.join(stored, on=keys, how="anti").height
    return dg.AssetCheckResult(
        passed=stored.height == exported.height and only_stored == 0 and only_exported == 0,
        metadata={"store_items": stored.height, "exported_rows": exported.height,
                  "missing_from_export": only_stored, "not_in_store": only_exported},
    )  # fmt: skip


@dg.asset_check(asset="candidates_export", partitions_def=events_partitions, blocking=True)
def candidates_export_matches_store(
    context: dg.AssetCheckExecutionContext,
    candidate_store: CandidateStoreResource,
    exporter: CandidateExportResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.AssetCheckResult:
    """The exported Parquet holds exactly the store's items of the event (count and keys)."""
    return export_verdict(candidate_store, exporter, program, clock, context.partition_key)
