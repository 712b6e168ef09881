"""scikit-learn ensembles compiled to the forest IR agree with scikit-learn exactly, adversarial rows too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import datasets, ensemble, tree

from pyzero import trees
from pyzero.trees.forest import round_down_f32, round_up_f32
from tests.trees.helpers import assert_exact

# scikit-learn estimators that accept NaN in fit/predict (the others get NaN-free data).
NAN_OK = (
    tree.DecisionTreeClassifier,
    tree.DecisionTreeRegressor,
    ensemble.RandomForestClassifier,
    ensemble.RandomForestRegressor,
    ensemble.ExtraTreesClassifier,
    ensemble.ExtraTreesRegressor,
)


def data(n=400, features=7, nan_rate=0.05, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    X[:, 3] = np.round(X[:, 3] * 2) / 2  # repeated values: thresholds between equal-ish values
    X[rng.random(X.shape) < nan_rate] = np.nan
    Xf = np.nan_to_num(X)
    y_bin = (Xf[:, 0] + Xf[:, 1] > 0).astype(int)
    y_multi = np.digitize(Xf[:, 2], [-0.5, 0.5])
    y_reg = Xf[:, 0] * 2 + np.sin(Xf[:, 4])
    return X, y_bin, y_multi, y_reg


def models(depth):
    d = dict(max_depth=depth)
    return [
        (tree.DecisionTreeClassifier(random_state=0, **d), "multi"),
        (tree.DecisionTreeRegressor(random_state=0, **d), "reg2"),
        (ensemble.RandomForestClassifier(n_estimators=15, random_state=0, **d), "bin"),
        (ensemble.RandomForestRegressor(n_estimators=15, random_state=0, **d), "reg"),
        (ensemble.ExtraTreesClassifier(n_estimators=15, random_state=0, **d), "multi"),
        (ensemble.ExtraTreesRegressor(n_estimators=15, random_state=0, **d), "reg2"),
        (ensemble.GradientBoostingClassifier(n_estimators=15, random_state=0, **d), "bin"),
        (ensemble.GradientBoostingClassifier(n_estimators=10, random_state=0, **d), "multi"),
        (
            ensemble.GradientBoostingClassifier(n_estimators=10, loss="exponential", random_state=0, **d),
            "bin",
        ),
        (ensemble.GradientBoostingRegressor(n_estimators=15, random_state=0, **d), "reg"),
    ]


def fit(model, target):
    X, y_bin, y_multi, y_reg = data()
    if not isinstance(model, NAN_OK):
        X = np.nan_to_num(X)
    y = {"bin": y_bin, "multi": y_multi, "reg": y_reg, "reg2": np.stack([y_reg, y_multi], 1)}[target]
    return model.fit(X, y), X


@pytest.mark.parametrize("depth", [1, 3, 8, 12])
def test_every_converter_matches_sklearn_on_adversarial_inputs(depth):
    for model, target in models(depth):
        model, X = fit(model, target)
        assert_exact(model, X, target)


def test_real_dataset_that_ships_with_sklearn():
    X, y = datasets.load_breast_cancer(return_X_y=True)
    for model in (
        ensemble.RandomForestClassifier(30, random_state=0),
        ensemble.GradientBoostingClassifier(n_estimators=30),
    ):
        model.fit(X, y)
        assert trees.verify(model, trees.compile(model), X)["ok"]


def test_results_do_not_depend_on_batch_size():
    model, X = fit(ensemble.RandomForestRegressor(20, max_depth=8, random_state=0), "reg")
    cf = trees.compile(model)
    full = cf.predict(X)
    parts = np.concatenate([cf.predict(X[i : i + 7]) for i in range(0, X.shape[0], 7)])
    assert np.array_equal(full, parts)


@settings(max_examples=60, deadline=None)
@given(t=st.floats(-1e6, 1e6, allow_nan=False))
def test_directed_threshold_rounding_is_exact(t):
    """Note [Exact thresholds]: float32 x <= t (float64) iff x <= round_down(t); x < t iff x < round_up(t)."""
    down, up = round_down_f32(np.array([t]))[0], round_up_f32(np.array([t]))[0]
    assert float(down) <= t <= float(up)
    for x in (down, up, np.nextafter(down, np.float32(-np.inf)), np.nextafter(up, np.float32(np.inf))):
        assert (float(x) <= t) == (x <= down)
        assert (float(x) < t) == (x < up)


def test_torch_input_gives_torch_output_and_to_moves():
    model, X = fit(ensemble.GradientBoostingRegressor(n_estimators=5), "reg")
    cf = trees.compile(model)
    out = cf.predict(torch.as_tensor(X))
    assert isinstance(out, torch.Tensor) and np.allclose(out.numpy(), model.predict(X), atol=1e-6)
    assert cf.to("cpu").device == torch.device("cpu")


def test_errors_name_the_problem():
    model, X = fit(ensemble.RandomForestClassifier(3, max_depth=2, random_state=0), "bin")
    cf = trees.compile(model)
    with pytest.raises(ValueError, match=r"X must have shape \(rows, 7\)"):
        cf.predict(X[:, :5])
    with pytest.raises(TypeError, match="must hold numbers"):
        cf.predict(np.array([["a"] * 7]))
    with pytest.raises(ValueError, match=r"is on meta"):
        cf.predict(torch.zeros(2, 7, device="meta"))
    with pytest.raises(ValueError, match="not fitted"):
        trees.compile(ensemble.RandomForestClassifier())
    with pytest.raises(
        TypeError, match=r"does not support .*LinearRegression; supported: sklearn DecisionTree"
    ):
        from sklearn.linear_model import LinearRegression

        trees.compile(LinearRegression().fit(np.nan_to_num(X), np.arange(len(X))))
    with pytest.raises(AttributeError, match="regressor"):
        trees.compile(fit(tree.DecisionTreeRegressor(max_depth=2), "reg")[0]).predict_proba(X)
    gb = fit(ensemble.GradientBoostingClassifier(n_estimators=2, max_depth=2), "bin")[0]
    gb.loss = "a_future_loss"  # a loss whose link the converter does not know
    match = (
        r"GradientBoostingClassifier with loss 'a_future_loss' is not supported; supported: \['exponential'"
    )
    with pytest.raises(ValueError, match=match):
        trees.compile(gb)


@pytest.mark.parametrize(
    "kwargs", [{"n_estimators": 20}, {"n_estimators": 15, "max_features": 0.5, "max_samples": 100}]
)
def test_isolation_forest_scores_and_labels(kwargs):
    X = np.random.default_rng(0).standard_normal((500, 6)).astype(np.float32)
    model = ensemble.IsolationForest(random_state=0, contamination=0.1, **kwargs).fit(X)
    cf = trees.compile(model)
    report = trees.verify(model, cf, X)
    assert report["ok"] and report["labels_equal"], report
    assert set(report["max_abs_diff"]) == {"decision_function", "score_samples"}


def test_save_and_load_round_trip(tmp_path):
    model, X = fit(ensemble.GradientBoostingClassifier(n_estimators=10, max_depth=3), "multi")
    cf = trees.compile(model)
    path = tmp_path / "forest.npz"
    cf.save(path)
    back = trees.load(path)
    assert np.array_equal(back.predict_proba(X), cf.predict_proba(X))
    assert np.array_equal(back.predict(X), cf.predict(X))
    with pytest.raises(ValueError, match="not a pyzero forest"):
        np.savez(tmp_path / "other.npz", a=np.zeros(3))
        trees.load(tmp_path / "other.npz")


@pytest.mark.parametrize("depth", [1, 3, 8, 12])
def test_hist_gradient_boosting_compares_in_float64(depth):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 6))  # float64: HistGradientBoosting compares float64 inputs
    X[rng.random(X.shape) < 0.05] = np.nan
    Xf = np.nan_to_num(X)
    y_bin = (Xf[:, 0] + Xf[:, 1] > 0).astype(int)
    y_multi = np.digitize(Xf[:, 2], [-0.5, 0.5])
    y_reg = Xf[:, 0] * 2 + np.sin(Xf[:, 4])
    for model, y in (
        (ensemble.HistGradientBoostingClassifier(max_iter=15, max_depth=depth), y_bin),
        (ensemble.HistGradientBoostingClassifier(max_iter=8, max_depth=depth), y_multi),
        (ensemble.HistGradientBoostingRegressor(max_iter=15, max_depth=depth), y_reg),
        (
            ensemble.HistGradientBoostingRegressor(loss="poisson", max_iter=8, max_depth=depth),
            np.exp(y_reg / 4),
        ),
    ):
        model.fit(X, y)
        for backend in ("cpu", "torch"):  # both compare float64 inputs with the float64 thresholds
            report = trees.verify(model, trees.compile(model, backend=backend), X)
            assert report["ok"], (type(model).__name__, backend, report)
