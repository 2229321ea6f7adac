"""A fitted model's trees as arrays (`domain/tree_ensemble.py`): the estimator's predictions
without scikit-learn (the artifacts that hold them: test_models.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from eventreach_assets.domain.tree_ensemble import TreeEnsemble, UnsupportedModelError, ensure_same_predictions


def fitted(
    seed: int = 0, rows: int = 3000, missing_share: float = 0.15
) -> tuple[HistGradientBoostingClassifier, np.ndarray]:
    """A binary model on continuous, count and 0/1 features, some missing in training (so splits
    send NaN both ways), and the training matrix."""
    rng = np.random.default_rng(seed)
    matrix = np.column_stack(
        [
            rng.random(rows),
            rng.poisson(2, rows).astype(np.float64),
            (rng.random(rows) < 0.3).astype(np.float64),
            rng.normal(size=rows),
        ]
    )
    logit = 3 * matrix[:, 0] - 0.5 * matrix[:, 1] + 1.5 * matrix[:, 2] * (matrix[:, 3] > 0)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    matrix[rng.random(matrix.shape) < missing_share] = np.nan
    estimator = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=15, min_samples_leaf=10, random_state=seed)
    return estimator.fit(matrix, labels), matrix


def probe_rows(ensemble: TreeEnsemble, seed: int = 1) -> np.ndarray:
    """Rows that meet every split's edge: each threshold itself, the values just around it, NaN,
    +-inf, and random values; repeated, so the rows share decision classes."""
    rng = np.random.default_rng(seed)
    columns = []
    for thresholds in ensemble.split_thresholds:
        edges = np.concatenate([thresholds, np.nextafter(thresholds, np.inf), np.nextafter(thresholds, -np.inf)])
        values = np.concatenate([edges, [np.nan, np.inf, -np.inf, 0.0], rng.normal(size=200) * 3])
        columns.append(rng.choice(values, 20_000))
    return np.column_stack(columns)


def test_the_trees_predict_what_the_estimator_predicts() -> None:
    estimator, training = fitted()
    trees = TreeEnsemble.from_histgradientboosting(estimator)
    assert trees.n_trees == estimator.n_iter_
    for matrix in (training, probe_rows(trees)):
        # The raw score is the same sums in the same order: equal to the last bit.
        np.testing.assert_array_equal(trees.raw_scores(matrix), estimator.decision_function(matrix))
        np.testing.assert_allclose(trees.predict_proba(matrix), estimator.predict_proba(matrix)[:, 1], rtol=1e-12)
    # A NaN where training had none still follows the estimator (its default side).
    dense, _ = fitted(seed=2, missing_share=0.0)
    dense_trees = TreeEnsemble.from_histgradientboosting(dense)
    holes = probe_rows(dense_trees)
    holes[::3, 0] = np.nan
    np.testing.assert_array_equal(dense_trees.raw_scores(holes), dense.decision_function(holes))


def test_rows_are_walked_once_per_decision_class() -> None:
    trees = TreeEnsemble.from_histgradientboosting(fitted()[0])
    distinct = probe_rows(trees)[:500]
    matrix = np.random.default_rng(3).permutation(np.tile(distinct, (20, 1)))  # 10,000 rows, 500 distinct
    classes = trees.decision_classes(matrix)
    assert 1 < classes.max() + 1 <= 500  # many rows, fewer classes
    # Rows of one class are on the same side of every threshold of every feature, NaN apart.
    for feature, thresholds in enumerate(trees.split_thresholds):
        column = matrix[:, feature]
        sides = pl.DataFrame(
            {
                "class": classes,
                "nan": np.isnan(column),
                **{f"left_of_{i}": column <= threshold for i, threshold in enumerate(thresholds)},
            }
        )
        assert sides.group_by("class").n_unique().drop("class").max_horizontal().max() == 1
    # The same prediction as walking every row.
    walked = 1 / (1 + np.exp(-trees.raw_scores(matrix)))
    np.testing.assert_array_equal(trees.predict_proba(matrix), walked)


def test_empty_and_wrong_matrices() -> None:
    trees = TreeEnsemble.from_histgradientboosting(fitted()[0])
    assert trees.predict_proba(np.empty((0, 4))).shape == (0,)
    with pytest.raises(ValueError, match="4 columns"):
        trees.predict_proba(np.zeros((2, 3)))


def test_models_it_cannot_reproduce_are_refused() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.random((300, 2))
    three_classes = HistGradientBoostingClassifier(max_iter=5).fit(matrix, rng.integers(0, 3, 300))
    with pytest.raises(UnsupportedModelError, match="3 trees per iteration"):
        TreeEnsemble.from_histgradientboosting(three_classes)
    categories = np.column_stack([rng.integers(0, 4, 300), rng.random(300)])
    categorical = HistGradientBoostingClassifier(max_iter=5, categorical_features=[0]).fit(
        categories, (categories[:, 0] == 2).astype(int)
    )
    with pytest.raises(UnsupportedModelError, match="categorical"):
        TreeEnsemble.from_histgradientboosting(categorical)


def test_predictions_that_differ_fail_the_check() -> None:
    estimator, training = fitted()
    trees = TreeEnsemble.from_histgradientboosting(estimator)
    expected = estimator.predict_proba(training)[:, 1]
    ensure_same_predictions(trees, expected, training, "m")  # the same: passes
    arrays = trees.to_arrays()
    leaves = np.flatnonzero(arrays["is_leaf"])
    value = arrays["value"].copy()
    value[leaves[0]] += 1e-6  # one leaf of one tree, slightly off
    changed = TreeEnsemble.from_arrays({**arrays, "value": value})
    with pytest.raises(UnsupportedModelError, match="m: the tree arrays predict differently"):
        ensure_same_predictions(changed, expected, training, "m")


def test_arrays_round_trip_and_are_checked() -> None:
    trees = TreeEnsemble.from_histgradientboosting(fitted()[0])
    arrays = trees.to_arrays()
    matrix = probe_rows(trees)
    np.testing.assert_array_equal(TreeEnsemble.from_arrays(arrays).predict_proba(matrix), trees.predict_proba(matrix))
    right = arrays["right"].copy()
    right[np.flatnonzero(~arrays["is_leaf"])[0]] = len(right)
    with pytest.raises(ValueError, match="outside the node arrays"):
        TreeEnsemble.from_arrays({**arrays, "right": right})
    with pytest.raises(ValueError, match=r"feature outside 0\.\.2"):
        TreeEnsemble.from_arrays({**arrays, "n_features": 3})
    # A child pointing back at its tree's root: a walk that would never end stops with an error.
    left = arrays["left"].copy()
    left[np.flatnonzero(~arrays["is_leaf"])] = arrays["roots"][0]
    with pytest.raises(ValueError, match="cycle"):
        TreeEnsemble.from_arrays({**arrays, "left": left}).predict_proba(np.full((2, 4), -np.inf))
