"""XGBoost models compiled from their JSON agree with XGBoost (adversarial rows, NaN, missing=, rounds)."""

from __future__ import annotations

import numpy as np
import pytest

from pyzero import trees
from pyzero.trees.compiled import adversarial_rows
from tests.trees.helpers import assert_exact, mixed_data

xgb = pytest.importorskip("xgboost")


data = mixed_data


def models(depth):
    d = dict(max_depth=depth, n_estimators=12, random_state=0)
    return [
        (xgb.XGBClassifier(**d), "bin"),
        (xgb.XGBClassifier(objective="binary:logitraw", **d), "bin"),
        (xgb.XGBClassifier(**d), "multi"),
        (xgb.XGBClassifier(objective="multi:softmax", **d), "multi"),
        (xgb.XGBRegressor(**d), "reg"),
        (xgb.XGBRegressor(objective="reg:logistic", **d), "bin"),
        (xgb.XGBRegressor(objective="count:poisson", **d), "count"),
        (xgb.XGBRFClassifier(max_depth=depth, n_estimators=6, random_state=0), "bin"),
        (xgb.XGBRFRegressor(max_depth=depth, n_estimators=6, random_state=0), "reg"),
    ]


@pytest.mark.parametrize("depth", [1, 3, 8, 12])
def test_xgboost_models_match_on_adversarial_inputs(depth):
    X, ys = data()
    for model, target in models(depth):
        model.fit(X, ys[target])
        assert_exact(model, X, model.objective, target)
        # Margins are bit-identical: same float32 base (estimated base_score included), same order.
        for backend in ("cpu", "torch"):
            ours = trees.compile(model, backend=backend).decision_function(X)
            native = model.get_booster().predict(xgb.DMatrix(X), output_margin=True)
            np.testing.assert_array_equal(np.asarray(ours, dtype=np.float32), native.reshape(np.shape(ours)))


@pytest.mark.parametrize("objective", ["rank:pairwise", "rank:ndcg"])
def test_rankers(objective):
    X, ys = data()
    qid = np.repeat(np.arange(50), 10)
    model = xgb.XGBRanker(objective=objective, n_estimators=10, max_depth=4).fit(X, ys["rank"], qid=qid)
    assert trees.verify(model, trees.compile(model), X)["ok"]


def test_missing_value_parameter_and_iteration_range():
    X, ys = data()
    Xz = np.nan_to_num(X)  # zeros now mean "missing"
    model = xgb.XGBRegressor(n_estimators=20, max_depth=5, missing=0.0).fit(Xz, ys["reg"])
    cf = trees.compile(model)
    assert np.max(np.abs(cf.predict(Xz) - model.predict(Xz))) <= 1e-6
    part = trees.compile(model, iteration_range=(0, 7))
    assert np.max(np.abs(part.predict(Xz) - model.predict(Xz, iteration_range=(0, 7)))) <= 1e-6


def test_estimated_base_score_is_used():
    """XGBoost estimates base_score from the targets at fit time; the margin must start from it."""
    X, ys = data()
    y = ys["reg"] + 100.0
    model = xgb.XGBRegressor(n_estimators=3, max_depth=2).fit(X, y)
    cf = trees.compile(model)
    assert np.max(np.abs(cf.predict(X) - model.predict(X))) <= 1e-4 * 100  # float32 at magnitude 100


def test_the_base_margin_is_pinned_to_the_bit():
    """The estimated base_score goes through the logit link: of two float32 neighbours that both
    reproduce a 10-tree forest's margins on the probe rows, the first round tells the right one (the
    wrong one missed 16 of these 1500 rows by an ulp, and their probabilities with them)."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((1500, 5)).astype(np.float32)
        X[rng.random(X.shape) < 0.05] = np.nan
        y = np.nan_to_num(X[:, 0]) + np.sin(np.nan_to_num(X[:, 1])) > 0
        model = xgb.XGBClassifier(n_estimators=10, max_depth=4).fit(X, y)
        cf = trees.compile(model, backend="cpu")
        margins = model.predict(X, output_margin=True)
        assert np.array_equal(cf.decision_function(X), margins.astype(np.float64)), seed
        assert np.array_equal(cf.predict_proba(X), model.predict_proba(X).astype(np.float64)), seed


def test_log_link_quantile_and_multi_target_regressors_equal_xgboost_bit_for_bit():
    """reg:gamma and reg:tweedie (exp of the margin), reg:quantileerror with one and two quantiles, and a
    two-target regressor (one tree per target a round): predictions equal XGBoost's on adversarial rows
    too."""
    X, ys = data()
    y = np.exp(ys["reg"] / 4)
    for kw, target in (
        ({"objective": "reg:gamma"}, y),
        ({"objective": "reg:tweedie", "tweedie_variance_power": 1.7}, y),
        ({"objective": "reg:quantileerror", "quantile_alpha": 0.3}, y),
        ({"objective": "reg:quantileerror", "quantile_alpha": np.array([0.2, 0.8])}, y),
        ({"objective": "reg:squarederror"}, np.c_[ys["reg"], ys["reg"] ** 2]),
    ):
        model = xgb.XGBRegressor(n_estimators=12, max_depth=4, **kw).fit(X, target)
        cf = trees.compile(model, backend="cpu")
        want = model.predict(X)
        assert cf.predict(X).shape == want.shape, kw
        assert np.array_equal(cf.predict(X), want.astype(np.float64)), kw
        assert trees.verify(model, cf, X)["ok"], kw


def test_hinge_and_survival_objectives_equal_xgboost_bit_for_bit():
    """binary:hinge (labels and 0/1 probabilities from the margin's sign, on every backend),
    survival:cox (expf of the margin, a hazard ratio) and survival:aft (a Booster trained on interval
    labels: exp of the float32 margin in double, then float32) equal XGBoost's outputs bit for bit, on
    adversarial rows too."""
    X, ys = data()
    hinge = xgb.XGBClassifier(objective="binary:hinge", n_estimators=12, max_depth=4).fit(X, ys["bin"])
    want = hinge.predict_proba(X).astype(np.float64)
    assert set(np.unique(want)) == {0.0, 1.0}
    for backend in ("cpu", "torch"):
        cf = trees.compile(hinge, backend=backend)
        assert cf.forest.post_transform == "hinge"
        assert np.array_equal(cf.predict_proba(X), want), backend
        assert np.array_equal(cf.predict(X), hinge.predict(X)), backend
        assert np.array_equal(
            cf.decision_function(X), hinge.predict(X, output_margin=True).astype(np.float64)
        )
    assert trees.verify(hinge, trees.compile(hinge, backend="cpu"), X)["ok"]
    rng = np.random.default_rng(0)
    time = np.abs(np.nan_to_num(X[:, 1])) + 0.1
    censored = np.where(rng.random(len(X)) < 0.3, -time, time)  # negative: censored
    cox = xgb.XGBRegressor(objective="survival:cox", n_estimators=30, max_depth=5).fit(X, censored)
    cf = trees.compile(cox, backend="cpu")
    rows = np.vstack([X, adversarial_rows(cf.forest, X[:100], allow_inf=False, allow_nan=True)])
    assert np.array_equal(cf.predict(rows), cox.predict(rows).astype(np.float64))
    dm = xgb.DMatrix(X)
    dm.set_float_info("label_lower_bound", time)
    dm.set_float_info("label_upper_bound", np.where(rng.random(len(X)) < 0.3, np.inf, time))
    aft = xgb.train({"objective": "survival:aft", "max_depth": 5}, dm, num_boost_round=30)
    rows = np.vstack(
        [X, adversarial_rows(trees.compile(aft).forest, X[:100], allow_inf=False, allow_nan=True)]
    )
    want = aft.predict(xgb.DMatrix(rows)).astype(np.float64)
    for backend in ("cpu", "torch"):
        assert np.array_equal(trees.compile(aft, backend=backend).predict(rows), want), backend


def test_vector_leaf_trees_equal_xgboost_bit_for_bit():
    """multi_strategy='multi_output_tree': one tree a round whose leaves hold a value per target or class
    (a leaf's right child indexes leaf_weights): a three-target regressor and a three-class classifier
    equal XGBoost's predictions and probabilities bit for bit, on adversarial rows too."""
    X, ys = data()
    kw = {"n_estimators": 12, "max_depth": 4, "multi_strategy": "multi_output_tree", "tree_method": "hist"}
    targets = np.c_[ys["reg"], ys["reg"] ** 2, np.nan_to_num(X[:, 2])]
    for model, method in (
        (xgb.XGBRegressor(**kw).fit(X, targets), "predict"),
        (xgb.XGBClassifier(**kw).fit(X, ys["multi"]), "predict_proba"),
    ):
        cf = trees.compile(model, backend="cpu")
        assert cf.forest.n_trees == 12 and cf.forest.n_outputs == 3
        rows = np.vstack([X, adversarial_rows(cf.forest, X[:100], allow_inf=False, allow_nan=True)])
        want = getattr(model, method)(rows).astype(np.float64)
        assert np.array_equal(getattr(cf, method)(rows), want), method
        assert np.array_equal(cf.predict(rows), model.predict(rows)), method


def test_unfitted_model_is_named():
    with pytest.raises(ValueError, match="XGBClassifier is not fitted"):
        trees.compile(xgb.XGBClassifier())


def test_bundled_datasets():
    """scikit-learn's bundled datasets: wine (3 classes) and diabetes (regression)."""
    from sklearn import datasets

    Xw, yw = datasets.load_wine(return_X_y=True)
    assert_exact(xgb.XGBClassifier(n_estimators=20, max_depth=4).fit(Xw, yw), Xw.astype(np.float32), "wine")
    Xd, yd = datasets.load_diabetes(return_X_y=True)
    assert_exact(
        xgb.XGBRegressor(n_estimators=20, max_depth=6).fit(Xd, yd), Xd.astype(np.float32), "diabetes"
    )
