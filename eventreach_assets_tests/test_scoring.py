"""Batch scoring, the combined score, bands, drift and the score-cache helpers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from eventreach_assets.domain.extract import validate_and_dedupe
from eventreach_assets.domain.models import (
    AFFINITY_MODEL,
    ATTENDANCE_MODEL,
    TrainedModel,
    build_training_frame,
    train_model,
)
from eventreach_assets.domain.scoring import (
    CACHE_KEY_COLUMNS,
    CACHE_SCHEMA,
    band_distribution,
    band_drift,
    cache_key_frame,
    cache_rows,
    combine_scores,
    feature_matrix,
    iter_batches,
    merge_scored,
    model_versions,
    predict_together,
    probability_column,
    score_band_expr,
    score_in_batches,
    split_cached,
)
from eventreach_assets_tests.test_models import synthetic_warehouse

TOPICS = ["ai", "cloud"]
EVENT = "evt-1"
NOW = datetime(2024, 3, 4, 3, 15)
P_ATTEND, P_AFFINITY = "p_event_attendance_v3", "p_interest_affinity_v2"


@pytest.fixture(scope="module")
def models() -> dict[str, TrainedModel]:
    history, profiles, events = synthetic_warehouse(n_customers=1000)
    training = build_training_frame(history.lazy(), profiles.lazy(), events.lazy())
    return {model_id: train_model(model_id, training) for model_id in (ATTENDANCE_MODEL, AFFINITY_MODEL)}


@pytest.fixture(scope="module")
def candidates() -> pl.DataFrame:
    _, profiles, _ = synthetic_warehouse(n_customers=523, seed=5)
    return validate_and_dedupe(profiles, ["US"]).candidates.sample(fraction=1.0, shuffle=True, seed=3)


class CountingPredict:
    """A stand-in for the remote endpoint: predicts locally and records the matrices it got."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.calls = 0

    def __call__(self, model: TrainedModel, matrices: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.calls += len(matrices)  # one remote call per batch's matrix
        self.rows[model.model_id] = self.rows.get(model.model_id, 0) + sum(matrix.shape[0] for matrix in matrices)
        return [model.predict_matrix(matrix) for matrix in matrices]


# ---- combined score and bands --------------------------------------------------------


def test_combine_scores_is_an_equal_weight_mean_by_default() -> None:
    score = combine_scores({"a": np.array([0.2, 0.9, 0.0]), "b": pl.Series([0.6, 0.5, 1.0])})
    assert score.name == "score"
    np.testing.assert_allclose(score.to_numpy(), [0.4, 0.7, 0.5])


def test_combine_scores_weights_and_clipping() -> None:
    score = combine_scores({"a": np.array([0.2, 1.0]), "b": np.array([0.8, 0.0])}, {"a": 3.0, "b": 1.0})
    np.testing.assert_allclose(score.to_numpy(), [0.35, 0.75])
    clipped = combine_scores({"a": np.array([1.0 + 1e-9, -1e-9])})
    assert clipped.to_list() == [1.0, 0.0]
    single = combine_scores({"a": np.array([0.3])}, {"a": 2.0})
    assert single.to_list() == pytest.approx([0.3])


@pytest.mark.parametrize(
    ("probabilities", "weights", "message"),
    [
        ({}, None, "at least one"),
        ({"a": np.array([0.1])}, {"b": 1.0}, "same models"),
        ({"a": np.array([0.1])}, {"a": 0.0}, "positive sum"),
        ({"a": np.array([0.1]), "b": np.array([0.2])}, {"a": 1.0, "b": -1.0}, "non-negative"),
        ({"a": np.array([0.1, np.nan])}, None, "NaN"),
        ({"a": pl.Series([0.1, None])}, None, "null"),
    ],
)
def test_combine_scores_rejects_bad_input(
    probabilities: dict[str, np.ndarray], weights: dict[str, float] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        combine_scores(probabilities, weights)


def test_score_band_boundaries() -> None:
    scores = pl.DataFrame({"score": [0.0, 0.3999, 0.4, 0.6999, 0.7, 1.0, None]})
    bands = scores.select(score_band_expr(pl.col("score"), high=0.7, medium=0.4)).to_series().to_list()
    assert bands == ["low", "low", "medium", "medium", "high", "high", None]
    with pytest.raises(ValueError, match="medium < high"):
        score_band_expr(pl.col("score"), high=0.4, medium=0.7)


def test_band_distribution_and_drift() -> None:
    scores = pl.DataFrame({"score": [0.1, 0.5, 0.5, 0.8, 0.9, 0.95, 0.2, 0.45, 0.75, 0.71]})
    current = band_distribution(scores, high=0.7, medium=0.4)
    assert current == pytest.approx({"high": 0.5, "medium": 0.3, "low": 0.2})
    assert band_distribution(scores.clear(), high=0.7, medium=0.4) == {"high": 0.0, "medium": 0.0, "low": 0.0}
    drift = band_drift(current, {"high": 0.3, "medium": 0.5, "low": 0.2})
    assert drift == pytest.approx({"high": 20.0, "medium": -20.0, "low": 0.0})
    assert band_drift(current, {}) == pytest.approx({"high": 50.0, "medium": 30.0, "low": 20.0})


# ---- batch scoring -------------------------------------------------------------------


def test_iter_batches_slices_in_order() -> None:
    frame = pl.DataFrame({"customer_id": [f"c{i}" for i in range(11)]})
    batches = list(iter_batches(frame, 5))
    assert [b.height for b in batches] == [5, 5, 1]
    assert_frame_equal(pl.concat(batches), frame)
    assert list(iter_batches(frame.clear(), 5)) == []
    with pytest.raises(ValueError, match="positive"):
        list(iter_batches(frame, 0))


def test_probability_column_names() -> None:
    assert probability_column(ATTENDANCE_MODEL) == P_ATTEND
    assert probability_column(AFFINITY_MODEL) == P_AFFINITY


def test_batched_scoring_equals_unbatched(models: dict[str, TrainedModel], candidates: pl.DataFrame) -> None:
    whole = score_in_batches(candidates, TOPICS, models, batch_size=candidates.height)
    batched = score_in_batches(candidates, TOPICS, models, batch_size=50)
    assert_frame_equal(batched, whole, check_exact=True)
    assert whole.columns == ["customer_id", P_ATTEND, P_AFFINITY, "score"]
    assert whole["customer_id"].to_list() == candidates["customer_id"].to_list()
    np.testing.assert_array_equal(
        whole[P_ATTEND].to_numpy(), models[ATTENDANCE_MODEL].predict_proba(candidates, TOPICS)
    )
    np.testing.assert_array_equal(
        whole[P_AFFINITY].to_numpy(), models[AFFINITY_MODEL].predict_proba(candidates, TOPICS)
    )
    assert_series_equal(whole["score"], combine_scores({"a": whole[P_ATTEND], "b": whole[P_AFFINITY]}))
    assert whole["score"].is_between(0.0, 1.0).all()
    assert whole[P_ATTEND].n_unique() > 10  # real predictions, not a constant


def test_batches_predicted_together_are_each_batch_predicted(
    models: dict[str, TrainedModel], candidates: pl.DataFrame
) -> None:
    """In process the batches' matrices are evaluated as one and split back (`predict_together`):
    each batch gets exactly what predicting it alone gives."""
    model = models[AFFINITY_MODEL]
    matrices = [feature_matrix(model, candidates.slice(start, 97), TOPICS) for start in range(0, candidates.height, 97)]
    together = predict_together(model, matrices)
    assert [len(values) for values in together] == [len(matrix) for matrix in matrices]
    for values, matrix in zip(together, matrices, strict=True):
        np.testing.assert_array_equal(values, model.predict_matrix(matrix))
    assert predict_together(model, []) == []


def test_the_in_process_scorer_evaluates_a_models_batches_in_one_call(
    tmp_path, monkeypatch: pytest.MonkeyPatch, models: dict[str, TrainedModel], candidates: pl.DataFrame
) -> None:
    """The local deployment's scorer walks a model's trees once for all batches (SageMaker's gets
    one request per batch), with each batch's values as predicting it alone."""
    from eventreach_assets.domain.tree_ensemble import TreeEnsemble
    from eventreach_assets.resources.model_registry.local import LocalModelRegistry
    from eventreach_assets.resources.scoring.in_process import InProcessScoring

    model = models[ATTENDANCE_MODEL]
    matrices = [
        feature_matrix(model, candidates.slice(start, 100), TOPICS) for start in range(0, candidates.height, 100)
    ]
    alone = [model.predict_matrix(matrix) for matrix in matrices]
    calls: list[int] = []
    evaluate = TreeEnsemble.predict_proba

    def counted(trees: TreeEnsemble, matrix: np.ndarray) -> np.ndarray:
        calls.append(len(matrix))
        return evaluate(trees, matrix)

    monkeypatch.setattr(TreeEnsemble, "predict_proba", counted)
    scorer = InProcessScoring(registry=LocalModelRegistry(base_dir=str(tmp_path)))
    together = scorer.predict_batches(model, matrices)
    assert calls == [candidates.height]
    for values, expected in zip(together, alone, strict=True):
        np.testing.assert_array_equal(values, expected)


def test_a_backend_answering_the_wrong_shape_fails_scoring(
    models: dict[str, TrainedModel], candidates: pl.DataFrame
) -> None:
    def one_short(model: TrainedModel, matrices: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [model.predict_matrix(matrix)[:-1] for matrix in matrices]

    with pytest.raises(
        ValueError, match=r"event-attendance-v3: expected \[100, 100, 100, 100, 100, 23\] probabilities"
    ):
        score_in_batches(candidates, TOPICS, models, batch_size=100, predict=one_short)


def test_event_topics_change_the_scores(models: dict[str, TrainedModel], candidates: pl.DataFrame) -> None:
    one = score_in_batches(candidates, ["ai", "cloud"], models, batch_size=100)
    other = score_in_batches(candidates, ["iot", "mobile"], models, batch_size=100)
    assert not np.array_equal(one[P_AFFINITY].to_numpy(), other[P_AFFINITY].to_numpy())


def test_remote_predict_gets_the_same_matrices_in_batches(
    models: dict[str, TrainedModel], candidates: pl.DataFrame
) -> None:
    remote = CountingPredict()
    scored = score_in_batches(candidates, TOPICS, models, batch_size=100, predict=remote)
    assert remote.calls == 6 * len(models)  # 523 rows -> 6 batches, one call per model each
    assert remote.rows == dict.fromkeys(models, candidates.height)
    assert_frame_equal(scored, score_in_batches(candidates, TOPICS, models, batch_size=100))
    matrix = feature_matrix(models[ATTENDANCE_MODEL], candidates, TOPICS)
    assert matrix.shape == (candidates.height, 3)


def test_scoring_no_candidates(models: dict[str, TrainedModel], candidates: pl.DataFrame) -> None:
    scored = score_in_batches(candidates.clear(), TOPICS, models, batch_size=100)
    assert scored.height == 0
    assert scored.schema == pl.Schema(
        {"customer_id": pl.String, P_ATTEND: pl.Float64, P_AFFINITY: pl.Float64, "score": pl.Float64}
    )


def test_weights_reach_the_score(models: dict[str, TrainedModel], candidates: pl.DataFrame) -> None:
    only_attendance = {ATTENDANCE_MODEL: 1.0, AFFINITY_MODEL: 0.0}
    scored = score_in_batches(candidates, TOPICS, models, batch_size=100, weights=only_attendance)
    assert_series_equal(scored["score"], scored[P_ATTEND].clip(0.0, 1.0).alias("score"))


# ---- score cache ---------------------------------------------------------------------


def test_cache_key_frame(models: dict[str, TrainedModel], candidates: pl.DataFrame) -> None:
    versions = model_versions(models)
    keys = cache_key_frame(candidates, EVENT, versions)
    assert keys.columns == list(CACHE_KEY_COLUMNS)
    assert keys.height == candidates.height * 2
    assert keys.unique().height == keys.height
    assert set(zip(keys["model_id"], keys["model_version"], strict=True)) == set(versions.items())
    assert (keys["event_id"] == EVENT).all()


def test_cache_round_trip_scores_only_misses(models: dict[str, TrainedModel], candidates: pl.DataFrame) -> None:
    versions = model_versions(models)
    full = score_in_batches(candidates, TOPICS, models, batch_size=100)

    # empty cache: everything is a miss
    empty = split_cached(candidates, EVENT, versions, pl.DataFrame(schema=CACHE_SCHEMA))
    assert (empty.hits.height, empty.misses.height) == (0, candidates.height)
    assert_frame_equal(empty.misses, candidates)

    # a cache written from the first run, minus 40 customers' attendance probability
    written = cache_rows(full, EVENT, versions, scored_at=NOW)
    assert written.schema == pl.Schema(CACHE_SCHEMA)
    assert written.height == candidates.height * 2
    dropped = candidates["customer_id"].head(40)
    partial = written.filter(
        ~(pl.col("customer_id").is_in(dropped.to_list()) & (pl.col("model_id") == ATTENDANCE_MODEL))
    )
    split = split_cached(candidates, EVENT, versions, partial.lazy())
    assert split.misses["customer_id"].to_list() == dropped.to_list()
    assert split.hits.height == candidates.height - 40
    assert split.hit_rate == pytest.approx((candidates.height - 40) / candidates.height)

    remote = CountingPredict()
    fresh = score_in_batches(split.misses, TOPICS, models, batch_size=100, predict=remote)
    assert remote.rows == dict.fromkeys(models, 40)  # hits are not rescored, misses are
    merged = merge_scored(candidates, split.hits, fresh, list(models))
    assert_frame_equal(merged, full, check_exact=True)

    # writing back the fresh scores makes the next run all hits
    refreshed = pl.concat([partial, cache_rows(fresh, EVENT, versions, scored_at=NOW)])
    again = split_cached(candidates, EVENT, versions, refreshed)
    assert again.misses.height == 0
    assert_frame_equal(merge_scored(candidates, again.hits, fresh.clear(), list(models)), full, check_exact=True)


def test_cache_misses_on_new_version_other_event_or_stale_rows(
    models: dict[str, TrainedModel], candidates: pl.DataFrame
) -> None:
    versions = model_versions(models)
    full = score_in_batches(candidates, TOPICS, models, batch_size=1000)
    cache = cache_rows(full, EVENT, versions, scored_at=NOW)
    retrained = {**versions, ATTENDANCE_MODEL: "0123456789ab"}
    assert split_cached(candidates, EVENT, retrained, cache).misses.height == candidates.height
    assert split_cached(candidates, "other-event", versions, cache).misses.height == candidates.height
    stale = split_cached(candidates, EVENT, versions, cache, not_before=NOW + timedelta(seconds=1))
    assert stale.misses.height == candidates.height
    assert split_cached(candidates, EVENT, versions, cache, not_before=NOW).misses.height == 0


def test_cache_duplicate_keys_keep_the_newest(models: dict[str, TrainedModel], candidates: pl.DataFrame) -> None:
    versions = model_versions(models)
    full = score_in_batches(candidates, TOPICS, models, batch_size=1000)
    old = cache_rows(full.with_columns(pl.col(P_ATTEND) * 0.0), EVENT, versions, scored_at=NOW - timedelta(days=1))
    cache = pl.concat([cache_rows(full, EVENT, versions, scored_at=NOW), old])
    split = split_cached(candidates, EVENT, versions, cache)
    assert_frame_equal(merge_scored(candidates, split.hits, full.clear(), list(models)), full)


def test_merge_refuses_unscored_or_doubly_scored(models: dict[str, TrainedModel], candidates: pl.DataFrame) -> None:
    full = score_in_batches(candidates, TOPICS, models, batch_size=1000)
    with pytest.raises(ValueError, match="no probability"):
        merge_scored(candidates, full.head(10), full.slice(20), list(models))
    with pytest.raises(ValueError, match="both"):
        merge_scored(candidates, full.head(10), full, list(models))
    with pytest.raises(ValueError, match="one row per customer_id"):
        split_cached(pl.concat([candidates, candidates.head(1)]), EVENT, model_versions(models), full.clear())
