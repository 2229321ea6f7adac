"""The two scoring models: training frame, feature specs, training, artifacts.

Train/serve skew is avoided by construction: a model's features are polars expressions
over one frame shape — the candidate model (`CANDIDATE_SCHEMA`) plus the event's topics
as a list column `event_topics`. Training rows are brought into that shape (profiles go
through the extraction's own dedupe rule and candidate mapping), scoring frames get the
event's topics as a literal, and both are turned into a matrix by the same expressions,
with the vocabularies (tags, roles, topics) learned at training time and stored in the
artifact.

scikit-learn is imported where a model is trained (~1.1-2.3 s and ~90 MB). A fitted model is
kept as its trees' arrays (`domain/tree_ensemble.py`), which predict exactly what the estimator
predicts: loading and scoring (every weekly batch run, the model server) never import it, and
processes that never touch a model (exports, campaigns, sensors, the code server) neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

from eventreach_assets.domain.extract import DEDUPE_DESCENDING, DEDUPE_ORDER, to_candidate_model
from eventreach_assets.domain.features import interest_match_rows, split_tags
from eventreach_assets.domain.tree_ensemble import TreeEnsemble, ensure_same_predictions

ATTENDANCE_MODEL = "event-attendance-v3"
AFFINITY_MODEL = "interest-affinity-v2"

EVENT_TOPICS = "event_topics"  # list[str]: the event's topics, one list per row
# Bump when the artifact layout changes; `load` refuses versions it does not know. 1 pickled the
# scikit-learn estimator (still read: converted on load, which imports scikit-learn); 2 holds its
# trees as arrays.
FORMAT_VERSION = 2
_ESTIMATOR_FORMAT_VERSION = 1

# Columns of `build_training_frame`'s result, in order. The feature inputs carry the dtypes each
# model's spec casts its inputs to (the candidate model's categoricals become text), so the same
# expressions apply at training and at scoring time.
TRAINING_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "event_id": pl.String(),
    "invited_at": pl.Datetime("us"),
    "channel": pl.String(),
    "engagement_score": pl.Float64(),
    "event_attendance_history": pl.Int32(),
    "interest_tags": pl.List(pl.String()),
    "job_role": pl.String(),
    EVENT_TOPICS: pl.List(pl.String()),
    "interest_affinity": pl.Float64(),
    "attended": pl.Boolean(),
    "registered": pl.Boolean(),
}

# Columns that identify one invitation (not features): they make each row's hash unique.
ROW_KEY: tuple[str, ...] = ("customer_id", "event_id", "invited_at", "channel")

# Estimator settings (part of the model version). Gradient-boosted trees because they learn
# the tag x topic interactions the affinity model needs without hand-made crosses and handle
# NaN natively. learning_rate 0.2 x 100 iterations: same holdout AUC as 0.1 x 200 on the demo
# warehouse (0.835) at half the time.
DEFAULT_PARAMS: dict[str, Any] = {
    "max_iter": 100,
    "learning_rate": 0.2,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "validation_fraction": 0.1,
    "n_iter_no_change": 10,
}
HOLDOUT_FRACTION = 0.2
MAX_VOCABULARY = 256  # most frequent terms per vocabulary; rarer ones are dropped
# OpenMP threads for fitting and predicting. One by default: both model assets train at the
# same time on a 2-core host, and on a busy host OpenMP's spin-waiting made 2 threads 5-10x
# slower than 1 (measured); a dedicated training box can pass more to `train_model`.
DEFAULT_THREADS = 1


class ModelFormatError(ValueError):
    """A model artifact was written by an incompatible version of this code (or, for an artifact
    of format 1, which pickled the estimator, of scikit-learn)."""


# ---- features ------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """How one model turns a candidate x event frame into its feature columns."""

    model_id: str
    label: str  # boolean column of the training frame
    inputs: dict[str, pl.DataType]  # columns the features read, with their canonical dtypes
    vocabulary_sources: dict[str, str]  # vocabulary name -> column it is learned from
    build: Callable[[Mapping[str, Sequence[str]]], list[pl.Expr]]  # vocabularies -> named features
    # Larger histories are sampled (deterministically, by row hash) to this many rows. Fit time
    # grows with rows x features, so the wide model gets the smaller cap: both fit in < ~20 s
    # on one core.
    max_training_rows: int


def _numeric(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Float64).fill_null(float("nan")).alias(column)


def _multi_hot(column: str, name: str, vocabulary: Sequence[str]) -> list[pl.Expr]:
    """One 0/1 column per known term; terms outside the vocabulary contribute nothing."""
    return [
        pl.col(column).list.contains(pl.lit(term)).fill_null(False).cast(pl.Float64).alias(f"{name}={term}")
        for term in vocabulary
    ]


def _one_hot(column: str, name: str, vocabulary: Sequence[str]) -> list[pl.Expr]:
    """One 0/1 column per known value; an unknown or null value is all zeros."""
    return [
        (pl.col(column) == pl.lit(value)).fill_null(False).cast(pl.Float64).alias(f"{name}={value}")
        for value in vocabulary
    ]


def _attendance_features(_: Mapping[str, Sequence[str]]) -> list[pl.Expr]:
    return [
        _numeric("engagement_score"),
        _numeric("event_attendance_history"),
        interest_match_rows(pl.col("interest_tags"), pl.col(EVENT_TOPICS)).fill_null(0.0).alias("interest_affinity"),
    ]


def _affinity_features(vocabularies: Mapping[str, Sequence[str]]) -> list[pl.Expr]:
    return [
        *_multi_hot("interest_tags", "interest_tags", vocabularies["interest_tags"]),
        *_one_hot("job_role", "job_role", vocabularies["job_role"]),
        *_multi_hot(EVENT_TOPICS, "event_topic", vocabularies["event_topic"]),
    ]


_TAGS = pl.List(pl.String())

# Model id -> features; the ids and feature names are the program YAML's `scoringModels`.
MODEL_SPECS: dict[str, FeatureSpec] = {
    ATTENDANCE_MODEL: FeatureSpec(
        model_id=ATTENDANCE_MODEL,
        label="attended",
        inputs={
            "engagement_score": pl.Float64(),
            "event_attendance_history": pl.Int32(),
            "interest_tags": _TAGS,
            EVENT_TOPICS: _TAGS,
        },
        vocabulary_sources={},
        build=_attendance_features,
        max_training_rows=2_000_000,
    ),
    AFFINITY_MODEL: FeatureSpec(
        model_id=AFFINITY_MODEL,
        label="registered",
        inputs={"interest_tags": _TAGS, "job_role": pl.String(), EVENT_TOPICS: _TAGS},
        vocabulary_sources={"interest_tags": "interest_tags", "job_role": "job_role", "event_topic": EVENT_TOPICS},
        build=_affinity_features,
        max_training_rows=300_000,
    ),
}


def model_spec(model_id: str) -> FeatureSpec:
    """The feature spec of a model id, with the known ids in the error when it is unknown."""
    try:
        return MODEL_SPECS[model_id]
    except KeyError:
        raise KeyError(f"no feature spec for model {model_id!r}; known: {sorted(MODEL_SPECS)}") from None


def with_event_topics(candidates: pl.DataFrame, event_topics: Sequence[str]) -> pl.DataFrame:
    """Candidates of one event in the shape the feature expressions read (scoring time)."""
    return candidates.with_columns(pl.lit(list(event_topics), dtype=_TAGS).alias(EVENT_TOPICS))


def fit_vocabulary(frame: pl.DataFrame, column: str, max_size: int = MAX_VOCABULARY) -> list[str]:
    """Most frequent terms of a string or list[str] column, sorted; ties broken by the term."""
    values = pl.col(column)
    if isinstance(frame.schema[column], pl.List):
        values = values.explode()
    counts = (
        frame.select(values.alias("term"))
        .filter(pl.col("term").is_not_null() & (pl.col("term") != ""))
        .group_by("term")
        .len()
        .sort(["len", "term"], descending=[True, False])
        .head(max_size)
    )
    return sorted(counts["term"].to_list())


def feature_frame(model_id: str, frame: pl.DataFrame, vocabularies: Mapping[str, Sequence[str]]) -> pl.DataFrame:
    """The named feature columns of a model for rows shaped like `TRAINING_SCHEMA`'s inputs."""
    spec = model_spec(model_id)
    missing = [name for name in spec.inputs if name not in frame.columns]
    if missing:
        raise ValueError(f"model {model_id!r} needs columns {missing} that the frame does not have")
    casts = [pl.col(name).cast(dtype) for name, dtype in spec.inputs.items()]
    return frame.lazy().select(casts).select(spec.build(vocabularies)).collect()


def feature_matrix(model_id: str, frame: pl.DataFrame, vocabularies: Mapping[str, Sequence[str]]) -> np.ndarray:
    """`feature_frame` as the float64 matrix the estimator takes (NaN for missing numbers)."""
    return feature_frame(model_id, frame, vocabularies).to_numpy().astype(np.float64, copy=False)


# ---- training frame -----------------------------------------------------------------


def latest_profiles(profiles: pl.LazyFrame) -> pl.LazyFrame:
    """One candidate-model row per customer, chosen by the extraction's dedupe rule."""
    return to_candidate_model(
        profiles.sort(["customer_id", *DEDUPE_ORDER], descending=[False, *DEDUPE_DESCENDING], nulls_last=True).filter(
            pl.col("customer_id").is_first_distinct()
        )
    )


def build_training_frame(history: pl.LazyFrame, profiles: pl.LazyFrame, events: pl.LazyFrame) -> pl.DataFrame:
    """Past invitations with the features of both models and their labels (`TRAINING_SCHEMA`).

    Each invitation is joined to the customer's newest profile row (the row the scorer would
    see) and to its event's topics. Invitations whose customer or event is unknown are
    dropped; a null label counts as "did not" (no record of attending is not attending).
    Sorted on every scalar column so the frame never depends on the warehouse's row order.
    """
    customers = latest_profiles(profiles.lazy()).select(
        "customer_id", "engagement_score", "event_attendance_history", "interest_tags", "job_role"
    )
    event_topics = (
        events.lazy()
        .select("event_id", split_tags(pl.col("topics")).alias(EVENT_TOPICS))
        .unique("event_id", keep="first", maintain_order=True)
    )
    frame = (
        history.lazy()
        .select(
            "customer_id",
            "event_id",
            pl.col("invited_at").cast(pl.Datetime("us")),
            "channel",
            pl.col("attended").fill_null(False),
            pl.col("registered").fill_null(False),
        )
        .join(customers, on="customer_id", how="inner")
        .join(event_topics, on="event_id", how="inner")
        .with_columns(
            interest_match_rows(pl.col("interest_tags"), pl.col(EVENT_TOPICS)).fill_null(0.0).alias("interest_affinity")
        )
        .select([pl.col(name).cast(dtype) for name, dtype in TRAINING_SCHEMA.items()])
        .sort(["customer_id", "event_id", "invited_at", "channel", "attended", "registered"], nulls_last=True)
    )
    return frame.collect()


# ---- the trained model --------------------------------------------------------------


@dataclass(frozen=True)
class ModelMetrics:
    """Holdout quality of a trained model; what the asset reports and the AUC check reads."""

    auc: float
    brier: float
    brier_baseline: float  # Brier score of always predicting the training positive rate
    positive_rate: float  # in the rows used (train + holdout)
    source_rows: int  # labelled rows handed to `train_model`
    training_rows: int  # rows the estimator was fitted on (after sampling and holdout)
    holdout_rows: int
    iterations: int  # boosting iterations kept by early stopping
    train_seconds: float
    calibration: list[dict[str, float]] = field(default_factory=list)  # deciles of the prediction

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainedModel:
    """A fitted model plus everything needed to rebuild its features for new candidates."""

    model_id: str
    version: str  # 12 hex of sha256(training content, params, library versions)
    trees: TreeEnsemble  # the fitted estimator's trees, which predict
    vocabularies: dict[str, list[str]]
    feature_names: list[str]
    metrics: ModelMetrics
    params: dict[str, Any]

    @property
    def spec(self) -> FeatureSpec:
        return model_spec(self.model_id)

    def feature_matrix(self, frame: pl.DataFrame) -> np.ndarray:
        """Features of rows that carry the spec's inputs (candidates + `event_topics`)."""
        return feature_matrix(self.model_id, frame, self.vocabularies)

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """P(label) per row of a feature matrix built by `feature_matrix` (the remote path's payload)."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names):
            raise ValueError(
                f"{self.model_id}: expected a matrix with {len(self.feature_names)} columns, got {matrix.shape}"
            )
        return self.trees.predict_proba(matrix)

    def predict_proba(self, candidates: pl.DataFrame, event_topics: Sequence[str]) -> np.ndarray:
        """P(label) for each candidate of an event with these topics."""
        return self.predict_matrix(self.feature_matrix(with_event_topics(candidates, event_topics)))

    def save(self, path: Path) -> None:
        """Write the artifact atomically (a reader never sees half a file): plain values and the
        trees' numpy arrays, nothing that needs scikit-learn to read."""
        import joblib

        payload = {
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            "version": self.version,
            "trees": self.trees.to_arrays(),
            "vocabularies": self.vocabularies,
            "feature_names": self.feature_names,
            "metrics": self.metrics.as_dict(),
            "params": self.params,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                joblib.dump(payload, handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> TrainedModel:
        """Read an artifact written by `save` (a pickle: load only files this project wrote). One of
        format 1 (the estimator pickled) is read too, with the scikit-learn it was written with."""
        import joblib

        payload = joblib.load(Path(path))
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        if found == _ESTIMATOR_FORMAT_VERSION:
            trees = _trees_of_pickled_estimator(path, payload)
        elif found == FORMAT_VERSION:
            try:
                trees = TreeEnsemble.from_arrays(payload["trees"])
            except (KeyError, TypeError, ValueError) as error:
                raise ModelFormatError(f"{path}: the model's trees are unreadable: {error}") from error
        else:
            raise ModelFormatError(
                f"{path}: model artifact format {found!r}, this code reads formats "
                f"{_ESTIMATOR_FORMAT_VERSION} and {FORMAT_VERSION}; re-materialize the model assets"
            )
        return cls(
            model_id=payload["model_id"],
            version=payload["version"],
            trees=trees,
            vocabularies=payload["vocabularies"],
            feature_names=payload["feature_names"],
            metrics=ModelMetrics(**payload["metrics"]),
            params=payload["params"],
        )


def _trees_of_pickled_estimator(path: Path, payload: dict[str, Any]) -> TreeEnsemble:
    """The trees of a format-1 artifact's estimator, which unpickled only with the scikit-learn
    release that wrote it."""
    import sklearn

    if payload["sklearn_version"] != sklearn.__version__:
        raise ModelFormatError(
            f"{path}: trained with scikit-learn {payload['sklearn_version']}, running "
            f"{sklearn.__version__}; re-materialize the model assets"
        )
    return TreeEnsemble.from_histgradientboosting(payload["estimator"])


def calibration_table(predicted: np.ndarray, observed: np.ndarray, bins: int = 10) -> pl.DataFrame:
    """Equal-count bins of the prediction: mean predicted vs observed rate, and count."""
    frame = pl.DataFrame({"p": np.asarray(predicted, dtype=np.float64), "y": np.asarray(observed, dtype=np.float64)})
    n = max(frame.height, 1)
    return (
        frame.with_columns(decile=((pl.col("p").rank("ordinal") - 1) * bins // n).cast(pl.Int32))
        .group_by("decile")
        .agg(
            mean_predicted=pl.col("p").mean(),
            observed_rate=pl.col("y").mean(),
            count=pl.len().cast(pl.Int64),
        )
        .sort("decile")
    )


def _version(model_id: str, content_hash: bytes, settings: Mapping[str, Any]) -> str:
    """Stable id of (training data, settings, libraries): identical retrains get the same version."""
    import sklearn

    digest = hashlib.sha256()
    header = {
        "model_id": model_id,
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "sklearn": sklearn.__version__,
        "polars": pl.__version__,  # row hashes are only stable within a polars version
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update(content_hash)
    return digest.hexdigest()[:12]


def _canonical_rows(spec: FeatureSpec, training: pl.DataFrame) -> pl.DataFrame:
    """The labelled rows with the model's inputs, in row-hash order (`_row_hash`), so neither
    sampling nor the version depends on the input's row order.

    The row key takes part in the hash: many invitations share the same features and label, and
    hashing only those would keep or drop identical rows together (and put copies on both sides
    of the holdout, inflating its AUC).
    """
    columns = [pl.col(name).cast(dtype) for name, dtype in spec.inputs.items()]
    keys = [pl.col(name) for name in ROW_KEY if name in training.columns]
    data = training.select(*keys, *columns, pl.col(spec.label).cast(pl.Boolean)).filter(
        pl.col(spec.label).is_not_null()
    )
    return (
        data.with_columns(_row_hash=data.hash_rows(seed=0))
        .sort("_row_hash", maintain_order=True)
        .drop([key.meta.output_name() for key in keys])
    )


def _labels(model_id: str, spec: FeatureSpec, data: pl.DataFrame) -> np.ndarray:
    """The label as 0/1; raises when either class has fewer than 5 rows (no meaningful holdout)."""
    labels = data[spec.label].cast(pl.Int8).to_numpy()
    positives = int(labels.sum())
    if min(positives, labels.size - positives) < 5:
        raise ValueError(
            f"{model_id}: need at least 5 positive and 5 negative '{spec.label}' rows to train, "
            f"got {positives} positive of {labels.size}"
        )
    return labels


def _holdout_metrics(
    estimator: HistGradientBoostingClassifier,
    y_train: np.ndarray,
    y_holdout: np.ndarray,
    predicted: np.ndarray,
    positive_rate: float,
    source_rows: int,
    started: float,
) -> ModelMetrics:
    """How well the fitted model predicts the holdout, against always predicting the training rate."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    return ModelMetrics(
        auc=float(roc_auc_score(y_holdout, predicted)),
        brier=float(brier_score_loss(y_holdout, predicted)),
        brier_baseline=float(brier_score_loss(y_holdout, np.full(y_holdout.size, y_train.mean()))),
        positive_rate=positive_rate,
        source_rows=source_rows,
        training_rows=int(y_train.size),
        holdout_rows=int(y_holdout.size),
        iterations=int(estimator.n_iter_),
        train_seconds=round(time.perf_counter() - started, 3),
        calibration=calibration_table(predicted, y_holdout).to_dicts(),
    )


def train_model(
    model_id: str,
    training: pl.DataFrame,
    *,
    seed: int = 0,
    max_rows: int | None = None,
    params: Mapping[str, Any] | None = None,
    threads: int = DEFAULT_THREADS,
) -> TrainedModel:
    """Fit one model on a training frame (`build_training_frame`) and measure it on a holdout.

    Rows are put in a canonical order (by row hash) first, so neither the result nor the
    version depends on the input's row order; a history above `max_rows` (default: the
    spec's `max_training_rows`) is sampled by taking the first `max_rows` of that order
    (deterministic, effectively uniform). The holdout is a stratified 20%; vocabularies are
    learned on the training part only. `threads` changes speed, never the result.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    started = time.perf_counter()
    spec = model_spec(model_id)
    max_rows = spec.max_training_rows if max_rows is None else max_rows
    settings = {**DEFAULT_PARAMS, **(params or {})}
    data = _canonical_rows(spec, training)
    source_rows = data.height
    content_hash = hashlib.sha256(data["_row_hash"].to_numpy().tobytes()).digest()
    version = _version(
        model_id, content_hash, {"params": settings, "seed": seed, "max_rows": max_rows, "holdout": HOLDOUT_FRACTION}
    )
    data = data.head(max_rows).drop("_row_hash")
    labels = _labels(model_id, spec, data)
    train_idx, holdout_idx = train_test_split(
        np.arange(labels.size), test_size=HOLDOUT_FRACTION, stratify=labels, random_state=seed
    )
    train_part, holdout_part = data[np.sort(train_idx)], data[np.sort(holdout_idx)]
    vocabularies = {name: fit_vocabulary(train_part, column) for name, column in spec.vocabulary_sources.items()}
    train_features = feature_frame(model_id, train_part, vocabularies)
    x_train = train_features.to_numpy().astype(np.float64, copy=False)
    y_train = train_part[spec.label].cast(pl.Int8).to_numpy()
    y_holdout = holdout_part[spec.label].cast(pl.Int8).to_numpy()

    estimator = HistGradientBoostingClassifier(**settings, random_state=seed)
    holdout_matrix = feature_matrix(model_id, holdout_part, vocabularies)
    with threadpool_limits(limits=threads, user_api="openmp"):
        estimator.fit(x_train, y_train)
        predicted = estimator.predict_proba(holdout_matrix)[:, 1]
    # The model is kept as its trees' arrays: they must predict what the estimator predicts.
    trees = TreeEnsemble.from_histgradientboosting(estimator)
    ensure_same_predictions(trees, predicted, holdout_matrix, model_id)
    metrics = _holdout_metrics(estimator, y_train, y_holdout, predicted, float(labels.mean()), source_rows, started)
    return TrainedModel(
        model_id=model_id,
        version=version,
        trees=trees,
        vocabularies=vocabularies,
        feature_names=train_features.columns,
        metrics=metrics,
        params=settings,
    )
