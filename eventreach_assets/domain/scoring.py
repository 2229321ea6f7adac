"""Scoring math: batches, per-model probabilities, the combined score, bands, score cache.

Scored frames have one row per candidate: `customer_id`, one probability column per model
named by `probability_column` (`event-attendance-v3` -> `p_event_attendance_v3`), and
`score` (0..1). "Features of a batch" (`feature_matrix`) and "predict the batches' matrices"
(`predict_together` in process, or a remote endpoint via `predict=`) are separate steps so
the SageMaker path sends exactly the matrices the local path predicts on.

The score cache is keyed by customer_id x event_id x model_id x model_version: a retrained
model gets a new version, so its old probabilities simply stop matching. The helpers here
are pure; reading and writing the cache is the scoring resource's job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from eventreach_assets.domain.models import TrainedModel, with_event_topics

BANDS: tuple[str, ...] = ("high", "medium", "low")
SCORE = "score"

CACHE_KEY_COLUMNS: tuple[str, ...] = ("customer_id", "event_id", "model_id", "model_version")
CACHE_PROBABILITY = "probability"
CACHE_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "event_id": pl.String(),
    "model_id": pl.String(),
    "model_version": pl.String(),
    CACHE_PROBABILITY: pl.Float64(),
    "scored_at": pl.Datetime("us"),
}

# (model, one feature matrix per batch) -> P(label) per row of each, in order
PredictBatches = Callable[[TrainedModel, Sequence[np.ndarray]], Sequence[np.ndarray]]


def probability_column(model_id: str) -> str:
    """Column holding a model's probability: `p_` + the id with non-alphanumerics as `_`."""
    return "p_" + re.sub(r"[^0-9a-z]+", "_", model_id.lower()).strip("_")


def _probability_columns(model_ids: Sequence[str]) -> dict[str, str]:
    columns = {model_id: probability_column(model_id) for model_id in model_ids}
    if len(set(columns.values())) != len(columns):
        raise ValueError(f"model ids map to clashing column names: {columns}")
    return columns


# ---- combined score and bands --------------------------------------------------------


def combine_scores(
    probabilities: Mapping[str, np.ndarray | pl.Series], weights: Mapping[str, float] | None = None
) -> pl.Series:
    """Combined 0..1 score: the weighted mean of the models' probabilities, clipped to [0, 1].

    Why a weighted mean: both models output probabilities of related outcomes (attends,
    registers) on the same 0..1 scale, and the use case asks for one "combined score
    0.0-1.0" read against fixed bands (0.4 / 0.7). A mean stays on that scale, keeps the
    bands meaningful, and still works with one model. Why equal weights by default: the use
    case gives none and we have no experiment saying one model should count more; weights
    are a parameter for when one does. Clipping only guards against float error and remote
    endpoints returning values marginally outside [0, 1].
    """
    if not probabilities:
        raise ValueError("combine_scores needs at least one model's probabilities")
    weights = dict(weights) if weights is not None else dict.fromkeys(probabilities, 1.0)
    if set(weights) != set(probabilities):
        raise ValueError(f"weights {sorted(weights)} do not name the same models as {sorted(probabilities)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    frame = pl.DataFrame({model_id: pl.Series(values, dtype=pl.Float64) for model_id, values in probabilities.items()})
    if frame.select(pl.any_horizontal(pl.all().is_null() | pl.all().is_nan()).any()).item():
        raise ValueError("probabilities contain null or NaN")
    total = sum(weights.values())
    weighted = pl.sum_horizontal([pl.col(model_id) * (weight / total) for model_id, weight in weights.items()])
    return frame.select(weighted.clip(0.0, 1.0).alias(SCORE)).to_series()


def score_band_expr(score: pl.Expr, high: float, medium: float) -> pl.Expr:
    """'high' (>= high), 'medium' (>= medium), else 'low'; null stays null. Bounds are inclusive below."""
    if not 0.0 <= medium < high <= 1.0:
        raise ValueError(f"need 0 <= medium < high <= 1, got medium={medium}, high={high}")
    return (
        pl.when(score.is_null())
        .then(pl.lit(None, dtype=pl.String))
        .when(score >= high)
        .then(pl.lit("high"))
        .when(score >= medium)
        .then(pl.lit("medium"))
        .otherwise(pl.lit("low"))
    )


def band_distribution(scores: pl.DataFrame, *, high: float, medium: float, column: str = SCORE) -> dict[str, float]:
    """Share (0..1) of scored candidates per band; every band present, all 0.0 when empty."""
    counts = scores.select(score_band_expr(pl.col(column), high, medium).alias("band")).group_by("band").len()
    by_band = dict(zip(counts["band"].to_list(), counts["len"].to_list(), strict=True))
    total = scores.height
    return {band: (by_band.get(band, 0) / total if total else 0.0) for band in BANDS}


def band_drift(current: Mapping[str, float], previous: Mapping[str, float]) -> dict[str, float]:
    """Percentage points each band's share moved (current - previous), comparable to `bandDriftWarnPoints`."""
    bands = [*BANDS, *sorted(set(current) | set(previous) - set(BANDS))]
    return {band: round((current.get(band, 0.0) - previous.get(band, 0.0)) * 100.0, 6) for band in bands}


# ---- batch scoring -------------------------------------------------------------------


def iter_batches(frame: pl.DataFrame, batch_size: int) -> Iterator[pl.DataFrame]:
    """Zero-copy slices of at most `batch_size` rows (the use case scores 5000 at a time)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return frame.iter_slices(batch_size)


def feature_matrix(model: TrainedModel, candidates: pl.DataFrame, event_topics: Sequence[str]) -> np.ndarray:
    """The matrix a model (local or behind an endpoint) predicts on for these candidates."""
    return model.feature_matrix(with_event_topics(candidates, event_topics))


def predict_together(model: TrainedModel, matrices: Sequence[np.ndarray]) -> list[np.ndarray]:
    """In process, the batches' matrices evaluated as one and split back: a model walks each
    decision class once (`TreeEnsemble`), and the classes recur from batch to batch (98,525
    candidates in batches of 5,000: ~4,000 classes in all, ~30,000-40,000 counted batch by batch)."""
    if not matrices:
        return []
    ends = np.cumsum([len(matrix) for matrix in matrices])[:-1]
    return np.split(model.predict_matrix(np.concatenate(matrices)), ends)


def empty_scores(model_ids: Sequence[str]) -> pl.DataFrame:
    """A scored frame with no rows, for the all-cached or no-candidates case."""
    columns = _probability_columns(model_ids)
    return pl.DataFrame(
        schema={"customer_id": pl.String(), **dict.fromkeys(columns.values(), pl.Float64()), SCORE: pl.Float64()}
    )


def score_in_batches(
    candidates: pl.DataFrame,
    event_topics: Sequence[str],
    models: Mapping[str, TrainedModel],
    batch_size: int,
    *,
    weights: Mapping[str, float] | None = None,
    predict: PredictBatches | None = None,
) -> pl.DataFrame:
    """Score candidates of one event: customer_id, one `p_<model>` column per model, `score`.

    Each model gets one feature matrix per batch of `batch_size` rows. `predict` defaults to the
    in-process model (`predict_together`); the remote path passes a function that sends each
    batch's matrix to the model's endpoint. Rows keep the candidates' order.
    """
    predict = predict or predict_together
    columns = _probability_columns(list(models))
    batches = list(iter_batches(candidates, batch_size))
    if not batches:
        return empty_scores(list(models))
    probabilities = {}
    for model_id, model in models.items():
        values = predict(model, [feature_matrix(model, batch, event_topics) for batch in batches])
        shapes, expected = [np.shape(batch_values) for batch_values in values], [batch.height for batch in batches]
        if shapes != [(rows,) for rows in expected]:
            raise ValueError(f"{model_id}: expected {expected} probabilities per batch, got shapes {shapes}")
        probabilities[columns[model_id]] = np.concatenate(values).astype(np.float64, copy=False)
    scored = candidates.select("customer_id").with_columns(**probabilities)
    return scored.with_columns(
        combine_scores({model_id: scored[column] for model_id, column in columns.items()}, weights)
    )


# ---- score cache ---------------------------------------------------------------------


def model_versions(models: Mapping[str, TrainedModel]) -> dict[str, str]:
    """model_id -> version, the part of the cache key that comes from the models."""
    return {model_id: model.version for model_id, model in models.items()}


def cache_key_frame(candidates: pl.DataFrame, event_id: str, versions: Mapping[str, str]) -> pl.DataFrame:
    """The cache keys to look up: one row per candidate x model (`CACHE_KEY_COLUMNS`)."""
    keys = pl.DataFrame(
        {"model_id": list(versions), "model_version": list(versions.values())},
        schema={"model_id": pl.String(), "model_version": pl.String()},
    )
    return (
        candidates.select(pl.col("customer_id").cast(pl.String))
        .with_columns(event_id=pl.lit(event_id, dtype=pl.String))
        .join(keys, how="cross")
        .select(CACHE_KEY_COLUMNS)
    )


@dataclass(frozen=True)
class CacheSplit:
    """Candidates whose every model probability is cached, and the rest."""

    hits: pl.DataFrame  # customer_id + one `p_<model>` column per model, from the cache
    misses: pl.DataFrame  # candidate rows (all columns) to score with every model

    @property
    def hit_rate(self) -> float:
        total = self.hits.height + self.misses.height
        return self.hits.height / total if total else 0.0


def split_cached(
    candidates: pl.DataFrame,
    event_id: str,
    versions: Mapping[str, str],
    cache: pl.DataFrame | pl.LazyFrame,
    *,
    not_before: datetime | None = None,
) -> CacheSplit:
    """Split candidates into cache hits (probabilities joined) and misses (to score).

    A hit needs a row for every model at its current version for this event; a customer
    missing any model is rescored with all of them (one scoring path, and a retrained model
    changes every key anyway). Rows with `scored_at` before `not_before` are ignored (the
    store's TTL may delete late). Duplicate cache keys keep the newest `scored_at`.
    """
    if candidates["customer_id"].n_unique() != candidates.height:
        raise ValueError("candidates must have one row per customer_id")
    columns = _probability_columns(list(versions))
    cached = cache.lazy().filter(pl.col("event_id") == event_id)
    if not_before is not None:
        cached = cached.filter(pl.col("scored_at") >= not_before)
    if "scored_at" in cached.collect_schema().names():
        cached = cached.sort("scored_at", descending=True, nulls_last=True)
    cached = cached.unique(list(CACHE_KEY_COLUMNS), keep="first")
    found = candidates.lazy().select("customer_id")
    for model_id, version in versions.items():
        probability = cached.filter((pl.col("model_id") == model_id) & (pl.col("model_version") == version)).select(
            "customer_id", pl.col(CACHE_PROBABILITY).cast(pl.Float64).alias(columns[model_id])
        )
        found = found.join(probability, on="customer_id", how="left", maintain_order="left")
    found = found.filter(pl.all_horizontal(pl.col(list(columns.values())).fill_nan(None).is_not_null())).collect()
    misses = candidates.join(found.select("customer_id"), on="customer_id", how="anti", maintain_order="left")
    return CacheSplit(hits=found, misses=misses)


def cache_rows(
    scored: pl.DataFrame, event_id: str, versions: Mapping[str, str], *, scored_at: datetime
) -> pl.DataFrame:
    """The rows to write back to the cache (`CACHE_SCHEMA`) for freshly scored candidates."""
    columns = _probability_columns(list(versions))
    parts = [
        scored.select(
            pl.col("customer_id").cast(pl.String),
            pl.lit(event_id, dtype=pl.String).alias("event_id"),
            pl.lit(model_id, dtype=pl.String).alias("model_id"),
            pl.lit(version, dtype=pl.String).alias("model_version"),
            pl.col(columns[model_id]).cast(pl.Float64).alias(CACHE_PROBABILITY),
            pl.lit(scored_at, dtype=pl.Datetime("us")).alias("scored_at"),
        )
        for model_id, version in versions.items()
    ]
    return pl.concat(parts) if parts else pl.DataFrame(schema=CACHE_SCHEMA)


def merge_scored(
    candidates: pl.DataFrame,
    hits: pl.DataFrame,
    fresh: pl.DataFrame,
    model_ids: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
) -> pl.DataFrame:
    """Cached and freshly scored probabilities for every candidate, with the combined score.

    The score is recomputed from the probabilities so cached rows follow the current weights.
    Rows follow the candidates' order; a candidate in neither frame is an error.
    """
    columns = _probability_columns(model_ids)
    keep = ["customer_id", *columns.values()]
    merged = candidates.select("customer_id").join(
        pl.concat([hits.select(keep), fresh.select(keep)]), on="customer_id", how="left", maintain_order="left"
    )
    if merged.height != candidates.height:
        raise ValueError("a customer appears in both the cache hits and the fresh scores")
    unscored = merged.filter(pl.any_horizontal(pl.col(list(columns.values())).is_null()))
    if unscored.height:
        raise ValueError(f"{unscored.height} candidates have no probability, e.g. {unscored['customer_id'][0]!r}")
    if merged.height == 0:
        return empty_scores(model_ids)
    return merged.with_columns(
        combine_scores({model_id: merged[column] for model_id, column in columns.items()}, weights)
    )
