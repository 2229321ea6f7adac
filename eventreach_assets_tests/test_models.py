"""Training frame, features, training, versioning and artifacts of the scoring models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import polars as pl
import pytest
import sklearn
import yaml
from polars.testing import assert_frame_equal
from sklearn.ensemble import HistGradientBoostingClassifier

from eventreach_assets.domain.extract import validate_and_dedupe
from eventreach_assets.domain.features import interest_match, interest_match_rows, split_tags
from eventreach_assets.domain.models import (
    AFFINITY_MODEL,
    ATTENDANCE_MODEL,
    EVENT_TOPICS,
    MODEL_SPECS,
    TRAINING_SCHEMA,
    ModelFormatError,
    TrainedModel,
    build_training_frame,
    feature_frame,
    train_model,
    with_event_topics,
)
from eventreach_assets.domain.tree_ensemble import TreeEnsemble, UnsupportedModelError
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH

TAGS = ["ai", "cloud", "data", "devops", "iot", "mobile", "security", "web"]
ROLES = ["analyst", "engineer", "executive", "manager"]
BASE = datetime(2024, 1, 1)


def synthetic_warehouse(
    n_customers: int = 1500, invites_per_customer: int = 2, seed: int = 0, shuffle_labels: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(invitation_history, customer_profiles, events) with a known signal.

    attended depends strongly on engagement_score (and a little on history and affinity);
    registered on how many of the event's topics the customer's tags cover, and on being an
    engineer. The first 200 customers also have an older profile row with the opposite
    engagement, which the training frame must ignore (newest row wins).
    """
    rng = np.random.default_rng(seed)
    ids = np.array([f"c{i:05d}" for i in range(n_customers)])
    engagement = rng.random(n_customers)
    attendance = rng.poisson(2, n_customers).astype(np.int32)
    has_tag = rng.random((n_customers, len(TAGS))) < 0.3
    roles = rng.choice(ROLES, n_customers)
    tags = [",".join(t for t, on in zip(TAGS, row, strict=True) if on) or None for row in has_tag]
    profiles = pl.DataFrame(
        {
            "customer_id": ids,
            "interest_tags": tags,
            "event_attendance_history": attendance,
            "engagement_score": engagement,
            "geographic_region": "US",
            "job_role": roles,
            "account_status": "active",
            "is_verified": True,
            "fraud_flag": False,
            "marketplace": "US",
            "timezone": "America/New_York",
            "marketing_opt_out": False,
            "email": [f"{i}@example.test" for i in ids],
            "updated_at": BASE + timedelta(days=30),
        }
    )
    stale = profiles.head(200).with_columns(
        engagement_score=1.0 - pl.col("engagement_score"), updated_at=pl.lit(BASE), job_role=pl.lit("intern")
    )
    n_events = 6
    topic_idx = np.stack([rng.choice(len(TAGS), 2, replace=False) for _ in range(n_events)])
    event_has = np.zeros((n_events, len(TAGS)), dtype=bool)
    event_has[np.arange(n_events)[:, None], topic_idx] = True
    events = pl.DataFrame(
        {
            "event_id": [f"e{j}" for j in range(n_events)],
            "name": "Webinar",
            "topics": [",".join(TAGS[k] for k in row) for row in topic_idx],
            "event_type": "webinar",
            "speaker_popularity": 0.5,
            "start_time_utc": BASE,
            "duration_minutes": 60,
            "capacity": 1000,
            "target_regions": "US",
            "status": "scheduled",
            "created_at": BASE,
        }
    )
    customer = np.repeat(np.arange(n_customers), invites_per_customer)
    event = rng.integers(0, n_events, customer.size)
    affinity = (has_tag[customer] & event_has[event]).sum(axis=1) / event_has[event].sum(axis=1)
    attend_logit = -3.0 + 5.5 * engagement[customer] + 0.2 * attendance[customer] + 1.0 * affinity
    register_logit = -3.0 + 5.0 * affinity + 1.5 * (roles[customer] == "engineer")
    attended = rng.random(customer.size) < 1 / (1 + np.exp(-attend_logit))
    registered = rng.random(customer.size) < 1 / (1 + np.exp(-register_logit))
    if shuffle_labels:
        attended, registered = rng.permutation(attended), rng.permutation(registered)
    history = pl.DataFrame(
        {
            "customer_id": ids[customer],
            "event_id": [f"e{j}" for j in event],
            "channel": "email",
            "invited_at": BASE + timedelta(days=1),
            "opened": True,
            "clicked": False,
            "registered": registered,
            "attended": attended,
        }
    )
    return history, pl.concat([stale, profiles]), events


def training_frame(**kwargs: object) -> pl.DataFrame:
    history, profiles, events = synthetic_warehouse(**kwargs)  # type: ignore[arg-type]
    return build_training_frame(history.lazy(), profiles.lazy(), events.lazy())


@pytest.fixture(scope="module")
def warehouse() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return synthetic_warehouse()


@pytest.fixture(scope="module")
def training(warehouse: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    history, profiles, events = warehouse
    return build_training_frame(history.lazy(), profiles.lazy(), events.lazy())


@pytest.fixture(scope="module")
def models(training: pl.DataFrame) -> dict[str, TrainedModel]:
    return {model_id: train_model(model_id, training) for model_id in MODEL_SPECS}


# ---- features ------------------------------------------------------------------------


@pytest.mark.parametrize("topics", [["ai", "cloud"], ["cloud", "ai", "cloud"], ["web"], []])
def test_interest_match_rows_equals_interest_match_for_one_event(topics: list[str]) -> None:
    tags = pl.DataFrame(
        {"tags": [["ai", "cloud"], ["ai", "ai"], [], None, ["web", "data"]]}, schema={"tags": pl.List(pl.String)}
    )
    frame = with_event_topics(tags, topics)
    got = frame.select(
        rows=interest_match_rows(pl.col("tags"), pl.col(EVENT_TOPICS)),
        constant=interest_match(pl.col("tags"), topics),
    )
    assert_frame_equal(got.select(pl.col("rows").alias("x")), got.select(pl.col("constant").alias("x")))


def test_interest_match_rows_uses_each_rows_topics() -> None:
    frame = pl.DataFrame({"tags": [["ai", "cloud"], ["ai", "cloud"]], "topics": [["ai", "web"], ["cloud", "ai"]]})
    assert frame.select(interest_match_rows(pl.col("tags"), pl.col("topics"))).to_series().to_list() == [0.5, 1.0]


def test_split_tags_matches_the_extraction_parse() -> None:
    frame = pl.DataFrame({"s": ["ai,cloud", None, "", "web"]})
    assert frame.select(split_tags(pl.col("s"))).to_series().to_list() == [["ai", "cloud"], [], [], ["web"]]


def test_feature_names_are_the_program_features(models: dict[str, TrainedModel]) -> None:
    program = yaml.safe_load(Path(DEFAULT_PROGRAM_PATH).read_text())
    configured = {spec["modelId"]: spec["features"] for spec in program["scoringModels"]}
    assert set(configured) == set(MODEL_SPECS)
    assert models[ATTENDANCE_MODEL].feature_names == configured[ATTENDANCE_MODEL]
    affinity = models[AFFINITY_MODEL]
    assert {name.split("=")[0] for name in affinity.feature_names} == set(configured[AFFINITY_MODEL])
    assert affinity.vocabularies["interest_tags"] == TAGS
    assert affinity.vocabularies["job_role"] == ROLES  # the stale "intern" rows are not in training
    assert set(affinity.vocabularies["event_topic"]) <= set(TAGS)


def test_unknown_role_and_tags_are_all_zero(models: dict[str, TrainedModel]) -> None:
    model = models[AFFINITY_MODEL]
    frame = pl.DataFrame(
        {"interest_tags": [["quantum"]], "job_role": ["astronaut"], EVENT_TOPICS: [["ai"]]},
    )
    features = feature_frame(AFFINITY_MODEL, frame, model.vocabularies).row(0, named=True)
    assert {name for name, value in features.items() if value} == {"event_topic=ai"}


def test_predict_matrix_rejects_the_wrong_width(models: dict[str, TrainedModel]) -> None:
    with pytest.raises(ValueError, match="3 columns"):
        models[ATTENDANCE_MODEL].predict_matrix(np.zeros((2, 4)))


# ---- training frame ------------------------------------------------------------------


def test_training_frame_joins_newest_profile_and_event(
    warehouse: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
) -> None:
    history, profiles, events = warehouse
    extra = pl.DataFrame(
        {
            "customer_id": ["nobody", "c00000", "c00001"],
            "event_id": ["e0", "no-such-event", "e0"],
            "channel": "email",
            "invited_at": BASE,
            "opened": None,
            "clicked": None,
            "registered": [True, True, None],
            "attended": [True, True, None],
        },
        schema=history.schema,
    )
    frame = build_training_frame(pl.concat([history, extra]).lazy(), profiles.lazy(), events.lazy())

    assert frame.schema == pl.Schema(TRAINING_SCHEMA)
    assert frame.height == history.height + 1  # unknown customer and unknown event dropped
    newest = profiles.filter(pl.col("updated_at") == pl.col("updated_at").max().over("customer_id"))
    joined = frame.join(newest.select("customer_id", newest_score="engagement_score"), on="customer_id")
    assert joined.height == frame.height
    assert (joined["engagement_score"] == joined["newest_score"]).all()
    assert "intern" not in frame["job_role"].to_list()
    # a null label is "did not"
    late = frame.filter((pl.col("customer_id") == "c00001") & (pl.col("invited_at") == BASE))
    assert late.select("attended", "registered").row(0) == (False, False)
    # interest_affinity is the event's topic coverage by the tags
    topics = dict(zip(events["event_id"], events["topics"].str.split(",").to_list(), strict=True))
    row = frame.filter(pl.col("interest_affinity") > 0).row(0, named=True)
    expected = len(set(row["interest_tags"]) & set(topics[row["event_id"]])) / len(set(topics[row["event_id"]]))
    assert row["interest_affinity"] == expected
    assert row[EVENT_TOPICS] == topics[row["event_id"]]


def test_training_frame_does_not_depend_on_input_order(
    warehouse: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], training: pl.DataFrame
) -> None:
    history, profiles, events = warehouse
    shuffled = build_training_frame(
        history.sample(fraction=1.0, shuffle=True, seed=1).lazy(),
        profiles.sample(fraction=1.0, shuffle=True, seed=2).lazy(),
        events.reverse().lazy(),
    )
    assert_frame_equal(shuffled, training)


def test_train_serve_skew_features_are_identical(
    warehouse: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], training: pl.DataFrame, models: dict[str, TrainedModel]
) -> None:
    """The features a training row gets equal those the scorer builds for that customer and event."""
    _, profiles, events = warehouse
    candidates = validate_and_dedupe(profiles, ["US"]).candidates  # the real extraction path
    for event in events.iter_rows(named=True):
        rows = training.filter(pl.col("event_id") == event["event_id"]).unique("customer_id", keep="first")
        rows = rows.sort("customer_id")
        serving = candidates.join(rows.select("customer_id"), on="customer_id", how="semi").sort("customer_id")
        assert serving.height == rows.height > 0
        topics = event["topics"].split(",")
        for model_id, model in models.items():
            at_training = feature_frame(model_id, rows, model.vocabularies)
            at_scoring = pl.DataFrame(
                model.feature_matrix(with_event_topics(serving, topics)), schema=model.feature_names, orient="row"
            )
            assert_frame_equal(at_training, at_scoring)
            # the comparison is not vacuous: the event-dependent features are set
            if model_id == ATTENDANCE_MODEL:
                assert at_scoring["interest_affinity"].max() > 0
            else:
                assert all(at_scoring[f"event_topic={topic}"].min() == 1.0 for topic in topics)
            np.testing.assert_array_equal(
                model.predict_proba(serving, topics), model.predict_matrix(at_training.to_numpy())
            )


# ---- training ------------------------------------------------------------------------


def test_models_learn_the_signal(models: dict[str, TrainedModel]) -> None:
    attendance, affinity = models[ATTENDANCE_MODEL].metrics, models[AFFINITY_MODEL].metrics
    assert attendance.auc > 0.75
    assert affinity.auc > 0.7
    for metrics in (attendance, affinity):
        assert metrics.brier < metrics.brier_baseline
        assert metrics.training_rows + metrics.holdout_rows == metrics.source_rows == 3000
        assert metrics.holdout_rows == 600
        assert len(metrics.calibration) == 10
        assert sum(row["count"] for row in metrics.calibration) == metrics.holdout_rows
        predicted = [row["mean_predicted"] for row in metrics.calibration]
        assert predicted == sorted(predicted)
        assert 0 < metrics.positive_rate < 1


def test_attendance_model_needs_engagement(training: pl.DataFrame) -> None:
    """Without the engagement signal the attendance model loses most of its AUC."""
    blind = training.with_columns(engagement_score=pl.lit(0.5))
    assert train_model(ATTENDANCE_MODEL, blind).metrics.auc < 0.7


def test_shuffled_labels_give_chance_auc() -> None:
    shuffled = training_frame(shuffle_labels=True)
    for model_id in MODEL_SPECS:
        assert 0.4 < train_model(model_id, shuffled).metrics.auc < 0.6


def test_version_is_stable_and_content_addressed(training: pl.DataFrame, models: dict[str, TrainedModel]) -> None:
    model = models[ATTENDANCE_MODEL]
    again = train_model(ATTENDANCE_MODEL, training.sample(fraction=1.0, shuffle=True, seed=7))
    assert len(model.version) == 12
    assert again.version == model.version
    np.testing.assert_array_equal(
        again.predict_matrix(model.feature_matrix(training)), model.predict_matrix(model.feature_matrix(training))
    )
    flipped = training.with_columns(
        attended=pl.when(pl.int_range(pl.len()) == 0).then(~pl.col("attended")).otherwise("attended")
    )
    assert train_model(ATTENDANCE_MODEL, flipped).version != model.version
    assert train_model(ATTENDANCE_MODEL, training, seed=1).version != model.version
    assert models[AFFINITY_MODEL].version != model.version


def test_large_histories_are_sampled_deterministically(training: pl.DataFrame) -> None:
    first = train_model(ATTENDANCE_MODEL, training, max_rows=1000)
    second = train_model(ATTENDANCE_MODEL, training.reverse(), max_rows=1000)
    assert first.metrics.source_rows == 3000
    assert first.metrics.training_rows + first.metrics.holdout_rows == 1000
    assert first.version == second.version
    assert first.metrics.auc == second.metrics.auc


def test_training_needs_both_classes(training: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="positive and 5 negative"):
        train_model(ATTENDANCE_MODEL, training.with_columns(attended=pl.lit(True)))
    with pytest.raises(KeyError, match="known"):
        train_model("no-such-model", training)


# ---- artifacts -----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, training: pl.DataFrame, models: dict[str, TrainedModel]) -> None:
    for model_id, model in models.items():
        path = tmp_path / "models" / f"{model_id}.joblib"
        model.save(path)
        loaded = TrainedModel.load(path)
        assert (loaded.model_id, loaded.version, loaded.feature_names) == (model_id, model.version, model.feature_names)
        assert loaded.vocabularies == model.vocabularies
        assert loaded.metrics == model.metrics
        np.testing.assert_array_equal(
            loaded.predict_matrix(loaded.feature_matrix(training)), model.predict_matrix(model.feature_matrix(training))
        )
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(f"{m}.joblib" for m in models)


def test_load_rejects_other_formats(tmp_path: Path, models: dict[str, TrainedModel]) -> None:
    path = tmp_path / "model.joblib"
    models[ATTENDANCE_MODEL].save(path)
    payload = joblib.load(path)
    joblib.dump({**payload, "format_version": 0}, path)
    with pytest.raises(ModelFormatError, match="format 0"):
        TrainedModel.load(path)
    joblib.dump({**payload, "trees": {**payload["trees"], "left": payload["trees"]["left"][:-1]}}, path)
    with pytest.raises(ModelFormatError, match=r"trees are unreadable: .*lengths"):
        TrainedModel.load(path)
    joblib.dump({**payload, "trees": {"baseline": 0.0}}, path)
    with pytest.raises(ModelFormatError, match=r"trees are unreadable: .*lack"):
        TrainedModel.load(path)
    joblib.dump(["not", "a", "model"], path)
    with pytest.raises(ModelFormatError, match="list"):
        TrainedModel.load(path)


def test_an_artifact_loads_and_scores_without_scikit_learn(tmp_path: Path, models: dict[str, TrainedModel]) -> None:
    """What the batch's scoring step and the model server pay: no scikit-learn import."""
    model = models[AFFINITY_MODEL]
    path = tmp_path / "model.joblib"
    model.save(path)
    script = textwrap.dedent(
        f"""
        import json
        import sys
        import numpy as np
        from eventreach_assets.domain.models import TrainedModel
        model = TrainedModel.load({str(path)!r})
        matrix = np.zeros((3, len(model.feature_names)))
        print(json.dumps(model.predict_matrix(matrix).tolist()))
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("sklearn", "scipy"))
        print(loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    probabilities, loaded = result.stdout.strip().splitlines()
    assert loaded == "[]"
    assert json.loads(probabilities) == model.predict_matrix(np.zeros((3, len(model.feature_names)))).tolist()


def _format_one_artifact(path: Path, model: TrainedModel, frame: pl.DataFrame, sklearn_version: str) -> np.ndarray:
    """An artifact as format 1 wrote it (the estimator pickled) for `model`'s features; returns
    the estimator's predictions on `frame`."""
    matrix = model.feature_matrix(frame)
    estimator = HistGradientBoostingClassifier(max_iter=20, random_state=0)
    estimator.fit(matrix, (np.arange(matrix.shape[0]) % 3 == 0) ^ (matrix[:, 0] > np.nanmedian(matrix[:, 0])))
    joblib.dump(
        {
            "format_version": 1,
            "sklearn_version": sklearn_version,
            "model_id": model.model_id,
            "version": model.version,
            "estimator": estimator,
            "vocabularies": model.vocabularies,
            "feature_names": model.feature_names,
            "metrics": model.metrics.as_dict(),
            "params": model.params,
        },
        path,
    )
    return estimator.predict_proba(matrix)[:, 1]


def test_an_artifact_of_format_one_still_loads(
    tmp_path: Path, training: pl.DataFrame, models: dict[str, TrainedModel]
) -> None:
    model = models[ATTENDANCE_MODEL]
    path = tmp_path / "old.joblib"
    expected = _format_one_artifact(path, model, training, sklearn.__version__)
    loaded = TrainedModel.load(path)
    assert (loaded.model_id, loaded.version, loaded.feature_names) == (
        model.model_id,
        model.version,
        model.feature_names,
    )
    np.testing.assert_allclose(loaded.predict_matrix(model.feature_matrix(training)), expected, rtol=1e-12)
    # Saved again, it is format 2 and predicts the same.
    loaded.save(path)
    assert joblib.load(path)["format_version"] == 2
    np.testing.assert_allclose(
        TrainedModel.load(path).predict_matrix(model.feature_matrix(training)), expected, rtol=1e-12
    )
    _format_one_artifact(path, model, training, "0.0.1")
    with pytest.raises(ModelFormatError, match=r"scikit-learn 0\.0\.1"):
        TrainedModel.load(path)


def test_training_fails_when_the_trees_would_predict_otherwise(
    training: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train_model` compares the kept trees with the estimator on the holdout."""
    honest = TreeEnsemble.from_histgradientboosting

    def leaves_off(estimator: object) -> TreeEnsemble:
        arrays = honest(estimator).to_arrays()
        value = arrays["value"].copy()
        value[np.flatnonzero(arrays["is_leaf"])] += 1e-3
        return TreeEnsemble.from_arrays({**arrays, "value": value})

    monkeypatch.setattr(TreeEnsemble, "from_histgradientboosting", staticmethod(leaves_off))
    with pytest.raises(UnsupportedModelError, match=f"{ATTENDANCE_MODEL}: the tree arrays predict differently"):
        train_model(ATTENDANCE_MODEL, training)
