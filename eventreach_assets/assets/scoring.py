"""Step 3 of the weekly batch: two models, one combined 0..1 score, a score cache."""

import dagster as dg
import polars as pl

from eventreach_assets.assets.extraction import BATCH, current_event
from eventreach_assets.assets.metadata import counts_table, stopwatch
from eventreach_assets.assets.models import MODEL_ASSETS
from eventreach_assets.domain import scoring
from eventreach_assets.domain.candidate_items import EXTRA_ATTRIBUTES
from eventreach_assets.resources.candidate_store import CandidateStoreResource
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.scoring import ScoringResource
from eventreach_assets.resources.warehouse import WarehouseResource

# Candidate attributes carried to the store (campaigns need where and how to reach people).
CARRIED_COLUMNS = list(EXTRA_ATTRIBUTES)


def cached_probabilities(
    store: CandidateStoreResource,
    event_id: str,
    versions: dict[str, str],
    candidates: pl.DataFrame,
    clock: ClockResource,
) -> pl.DataFrame:
    """The cache entries of these candidates, in the shape `scoring.split_cached` reads."""
    parts = [
        store.get_cached_scores(event_id, model_id, version, candidates["customer_id"], clock.now()).with_columns(
            event_id=pl.lit(event_id), model_id=pl.lit(model_id), model_version=pl.lit(version)
        )
        for model_id, version in versions.items()
    ]
    return pl.concat(parts).select(*scoring.CACHE_KEY_COLUMNS, scoring.CACHE_PROBABILITY)


@dg.asset(
    **BATCH,
    deps=[*MODEL_ASSETS, "model_endpoints"],
    kinds={"polars", "scikitlearn"},
    tags={"stage": "score"},
    code_version="1",
)
def scored_candidates(
    context: dg.AssetExecutionContext,
    filtered_candidates: pl.DataFrame,
    warehouse: WarehouseResource,
    scoring_service: ScoringResource,
    candidate_store: CandidateStoreResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Eligible candidates with each model's probability, the combined score and its band."""
    config = program.load()
    event = current_event(warehouse, context.partition_key)
    model_ids = [spec.model_id for spec in config.scoring_models]
    with stopwatch() as watch:
        models = scoring_service.load_models(model_ids)
        versions = scoring.model_versions(models)
        cache = cached_probabilities(candidate_store, event.event_id, versions, filtered_candidates, clock)
        split = scoring.split_cached(filtered_candidates, event.event_id, versions, cache)
        fresh = scoring.score_in_batches(
            split.misses, event.topics, models, config.scoring.batch_size, predict=scoring_service.predict_batches
        )
        for model_id, version in versions.items():
            column = scoring.probability_column(model_id)
            candidate_store.put_cached_scores(
                event.event_id, model_id, version,
                fresh.select("customer_id", pl.col(column).alias(scoring.CACHE_PROBABILITY)),
                clock.now(), config.candidate_ttl_days,
            )  # fmt: skip
        bands = config.scoring.score_bands
        scored = (
            scoring.merge_scored(filtered_candidates, split.hits, fresh, model_ids)
            .with_columns(score_band=scoring.score_band_expr(pl.col(scoring.SCORE), bands.high, bands.medium))
            .join(filtered_candidates.select("customer_id", *CARRIED_COLUMNS), on="customer_id", maintain_order="left")
        )
    distribution = scoring.band_distribution(scored, high=bands.high, medium=bands.medium)
    band_counts = {band: scored.filter(pl.col("score_band") == band).height for band in scoring.BANDS}
    return dg.MaterializeResult(
        value=scored,
        metadata={
            "scored_candidates": scored.height,
            "score_bands": counts_table(band_counts, "band", scored.height),
            **{f"band_share_{band}": round(share, 4) for band, share in distribution.items()},
            "high_score_rate_pct": round(distribution.get("high", 0.0) * 100, 2),
            "cache_hit_rate": round(split.hit_rate, 4),
            "freshly_scored": fresh.height,
            "model_versions": versions,
            "batches": -(-fresh.height // config.scoring.batch_size),
            "mean_score": round(float(scored[scoring.SCORE].mean() or 0.0), 4),
            "dagster/row_count": scored.height,
            **watch.metadata(scored.height),
        },
    )
