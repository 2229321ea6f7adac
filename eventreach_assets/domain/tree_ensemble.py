"""A fitted gradient-boosted tree model as plain arrays, predicting without scikit-learn.

Why: scoring runs in every weekly batch run and in the model server, and importing scikit-learn
to unpickle and run `HistGradientBoostingClassifier` costs 1.1-2.3 s a process (SciPy and all of
`sklearn.ensemble` come with it) for ~0.2-0.4 s of prediction. A `TreeEnsemble` holds what
prediction reads — every tree's nodes (feature, threshold, where NaN goes, children, leaf
values) and the baseline — as numpy arrays that load without scikit-learn.

It predicts what the estimator predicts, value for value: each row walks the same nodes with the
same test (NaN follows `missing_go_to_left`, otherwise `x <= threshold` goes left), the raw score
is the baseline plus each tree's leaf value added in the trees' order, as scikit-learn adds them,
and the probability is the logistic of it. `train_model` checks it against the estimator on the
holdout every time a model is fitted (`ensure_same_predictions`).

It is fast by walking each distinct decision once: two rows that fall on the same side of every
threshold the model uses on each of their features (NaN counted apart) take the same path in every
tree, so the rows are put into those classes first (a `searchsorted` per feature, a hash of the
bins) and one row of each class walks the trees. One event's 98,525 candidates make ~4,000 classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

# Node arrays of every tree, concatenated; `roots` says where each tree starts. Children are
# indices into the same arrays.
NODE_ARRAYS: dict[str, type] = {
    "feature": np.int32,
    "threshold": np.float64,
    "missing_left": np.bool_,
    "left": np.int32,
    "right": np.int32,
    "is_leaf": np.bool_,
    "value": np.float64,
}
# Relative difference allowed between this evaluation and scikit-learn's: the walk and the sum
# are the same operations; only the logistic's `exp` may come from another math library.
SAME_PREDICTION_RTOL = 1e-12


class UnsupportedModelError(ValueError):
    """An estimator this evaluation does not reproduce (multiclass, categorical splits)."""


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A binary gradient-boosted tree model: P(label) = logistic(baseline + sum of tree leaves)."""

    n_features: int
    baseline: float
    roots: np.ndarray  # int32, one per tree, in the order the trees are added
    nodes: dict[str, np.ndarray]  # NODE_ARRAYS, every tree's nodes concatenated

    def __post_init__(self) -> None:
        missing = sorted(set(NODE_ARRAYS) - set(self.nodes))
        sizes = {len(self.nodes[name]) for name in NODE_ARRAYS if name in self.nodes}
        if missing or len(sizes) != 1:
            raise ValueError(f"tree ensemble node arrays: missing {missing}, lengths {sorted(sizes)}")
        size = sizes.pop()
        inner = ~self.nodes["is_leaf"]
        children = np.concatenate([self.nodes["left"][inner], self.nodes["right"][inner], self.roots])
        features = self.nodes["feature"][inner]
        if children.size and (children.min() < 0 or children.max() >= size):
            raise ValueError("tree ensemble: a child or root index outside the node arrays")
        if features.size and (features.min() < 0 or features.max() >= self.n_features):
            raise ValueError(f"tree ensemble: a split on a feature outside 0..{self.n_features - 1}")

    @cached_property
    def split_thresholds(self) -> list[np.ndarray]:
        """Per feature, the sorted thresholds it is split at: a value's class is its place among them."""
        inner = ~self.nodes["is_leaf"]
        features, thresholds = self.nodes["feature"][inner], self.nodes["threshold"][inner]
        return [np.unique(thresholds[features == feature]) for feature in range(self.n_features)]

    @classmethod
    def from_histgradientboosting(cls, estimator: HistGradientBoostingClassifier) -> TreeEnsemble:
        """The arrays of a fitted binary `HistGradientBoostingClassifier` (its `_predictors`)."""
        if estimator.n_trees_per_iteration_ != 1:
            raise UnsupportedModelError(f"{estimator.n_trees_per_iteration_} trees per iteration: binary models only")
        trees = [iteration[0].nodes for iteration in estimator._predictors]
        if any(tree["is_categorical"].any() for tree in trees):
            raise UnsupportedModelError("categorical splits are not supported")
        offsets = np.cumsum([0, *(len(tree) for tree in trees)])
        columns = {
            "feature": "feature_idx",
            "threshold": "num_threshold",
            "missing_left": "missing_go_to_left",
            "is_leaf": "is_leaf",
            "value": "value",
        }
        nodes = {
            name: np.concatenate([tree[field] for tree in trees]).astype(NODE_ARRAYS[name])
            for name, field in columns.items()
        }
        for side in ("left", "right"):  # children are per-tree indices: make them global
            nodes[side] = np.concatenate([tree[side] + offset for tree, offset in zip(trees, offsets, strict=False)])
            nodes[side] = nodes[side].astype(np.int32)
        return cls(
            n_features=int(estimator.n_features_in_),
            baseline=float(np.asarray(estimator._baseline_prediction).reshape(-1)[0]),
            roots=offsets[:-1].astype(np.int32),
            nodes=nodes,
        )

    # -- artifact --

    def to_arrays(self) -> dict[str, Any]:
        """Plain values and numpy arrays (what a model artifact stores; no scikit-learn object)."""
        return {"n_features": self.n_features, "baseline": self.baseline, "roots": self.roots, **self.nodes}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> TreeEnsemble:
        """The inverse of `to_arrays`; raises ValueError naming what is missing or inconsistent."""
        missing = sorted({"n_features", "baseline", "roots", *NODE_ARRAYS} - set(arrays))
        if missing:
            raise ValueError(f"tree ensemble arrays lack {missing}")
        return cls(
            n_features=int(arrays["n_features"]),
            baseline=float(arrays["baseline"]),
            roots=np.asarray(arrays["roots"], dtype=np.int32),
            nodes={name: np.asarray(arrays[name], dtype=dtype) for name, dtype in NODE_ARRAYS.items()},
        )

    # -- prediction --

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def decision_classes(self, matrix: np.ndarray) -> np.ndarray:
        """Per row, a class id (0..k-1): rows of one class are on the same side of every split."""
        bins = {
            str(feature): np.where(
                np.isnan(matrix[:, feature]),
                len(thresholds) + 1,  # NaN: its own class, as its own path
                np.searchsorted(thresholds, matrix[:, feature], side="left"),  # x <= t[i] iff bin <= i
            ).astype(np.int32)
            for feature, thresholds in enumerate(self.split_thresholds)
            if len(thresholds)
        }
        if not bins:  # no split at all: one class
            return np.zeros(matrix.shape[0], dtype=np.int64)
        classes = pl.DataFrame(bins).select(pl.struct(pl.all()).rank("dense")).to_series()
        return classes.to_numpy().astype(np.int64) - 1

    def raw_scores(self, matrix: np.ndarray) -> np.ndarray:
        """Baseline plus each tree's leaf value, per row, every row walking every tree."""
        rows, trees = matrix.shape[0], self.n_trees
        nodes = self.nodes
        values = np.ascontiguousarray(matrix, dtype=np.float64).reshape(-1)
        has_nan = bool(np.isnan(values).any())  # without NaN, `x <= threshold` alone decides
        # One (row, tree) pair per walk; the pairs still inside a tree step down together.
        node = np.tile(self.roots, rows)
        row_start = np.repeat(np.arange(rows) * self.n_features, trees)
        walking = np.flatnonzero(~nodes["is_leaf"][node])
        for _ in range(len(nodes["is_leaf"])):  # no path is longer than the nodes: ends at the leaves
            if not walking.size:
                break
            at = node[walking]
            value = values[row_start[walking] + nodes["feature"][at]]
            go_left = value <= nodes["threshold"][at]
            if has_nan:
                go_left |= np.isnan(value) & nodes["missing_left"][at]
            after = np.where(go_left, nodes["left"][at], nodes["right"][at])
            node[walking] = after
            walking = walking[~nodes["is_leaf"][after]]
        if walking.size:
            raise ValueError("tree ensemble: a path longer than the node arrays (the trees hold a cycle)")
        leaves = nodes["value"][node].reshape(rows, trees)
        raw = np.full(rows, self.baseline)
        for tree in range(trees):  # in the trees' order, as scikit-learn sums them
            raw += leaves[:, tree]
        return raw

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """P(label) per row of `matrix` (float64, one column per feature, NaN for missing)."""
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix with {self.n_features} columns, got {matrix.shape}")
        if matrix.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        classes = self.decision_classes(matrix)
        _, first_row = np.unique(classes, return_index=True)  # one row of each class, by class id
        raw = self.raw_scores(matrix[first_row])
        return (1.0 / (1.0 + np.exp(-raw)))[classes]


def ensure_same_predictions(ensemble: TreeEnsemble, expected: np.ndarray, matrix: np.ndarray, what: str) -> None:
    """Raise when the ensemble's predictions for `matrix` differ from `expected` (scikit-learn's)
    beyond `SAME_PREDICTION_RTOL`: a scikit-learn release that changed how its trees are stored
    or read must fail the training that meets it, not score silently otherwise."""
    predicted = ensemble.predict_proba(matrix)
    expected = np.asarray(expected, dtype=np.float64)
    if predicted.shape != expected.shape or not np.allclose(predicted, expected, rtol=SAME_PREDICTION_RTOL, atol=0):
        worst = float(np.max(np.abs(predicted - expected))) if predicted.shape == expected.shape else float("nan")
        raise UnsupportedModelError(
            f"{what}: the tree arrays predict differently from the estimator (largest difference {worst!r}, "
            f"shapes {predicted.shape} / {expected.shape})"
        )
