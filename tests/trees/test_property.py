"""Property test: on hypothesis-generated datasets (repeated values, NaN, integer-coded categories),
every converter's compiled forest agrees exactly with its library on random and adversarial rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import ensemble

from tests.trees.helpers import assert_exact

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

EXAMPLES = 6  # each example trains three models; keep the suite fast


@st.composite
def datasets(draw):
    """(X float32 [rows, features] with column 0 an integer category, y float64 [rows], depth)."""
    rows = draw(st.integers(60, 400))
    features = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)) * draw(st.sampled_from([1e-3, 1.0, 1e4]))
    levels = draw(st.integers(2, 50))
    X[:, 0] = rng.integers(0, levels, rows)
    if features > 2:  # a coarse column: many ties, so thresholds fall between repeated values
        X[:, 2] = np.round(X[:, 2])
    X[rng.random(X.shape) < draw(st.sampled_from([0.0, 0.05, 0.3]))] = np.nan
    Xf = np.nan_to_num(X)
    y = np.sin(Xf[:, 0]) + Xf[:, 1] / (1 + np.abs(Xf[:, 1])) + rng.normal(0, 0.1, rows)
    return X.astype(np.float32), y, draw(st.sampled_from([1, 3, 8, 12]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=datasets())
def test_converters_exact_on_generated_data(data):
    X, y, depth = data
    label = (y > np.median(y)).astype(int)
    models = [
        ensemble.RandomForestRegressor(n_estimators=5, max_depth=depth, random_state=0).fit(X, y),
        xgb.XGBClassifier(n_estimators=5, max_depth=depth).fit(X, label),
        xgb.XGBRegressor(
            n_estimators=5,
            max_depth=depth,
            enable_categorical=True,
            feature_types=["c"] + ["q"] * (X.shape[1] - 1),
        ).fit(X, y),
        lgb.LGBMRegressor(
            n_estimators=5, max_depth=depth, num_leaves=min(2**depth, 63), min_child_samples=2, verbose=-1
        ).fit(X, y, categorical_feature=[0]),
    ]
    for model in models:
        assert_exact(model, X, depth)
