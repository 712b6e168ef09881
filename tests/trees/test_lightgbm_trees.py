"""LightGBM models compiled from dump_model() agree with LightGBM (missing types, tiny values, rf, leaves)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from pyzero import trees
from pyzero.trees import convert_lightgbm
from pyzero.trees.compiled import adversarial_rows
from tests.trees.helpers import assert_exact, mixed_data

lgb = pytest.importorskip("lightgbm")


data = functools.partial(mixed_data, n=600, zero_rate=0.05, coarse_column=False)


def models(depth):
    kw = dict(
        n_estimators=12, max_depth=depth, num_leaves=min(2**depth, 255), verbose=-1, min_child_samples=3
    )
    return [
        (lgb.LGBMClassifier(**kw), "bin"),
        (lgb.LGBMClassifier(sigmoid=0.5, **kw), "bin"),
        (lgb.LGBMClassifier(**kw), "multi"),
        (lgb.LGBMClassifier(objective="multiclassova", **kw), "multi"),
        (lgb.LGBMRegressor(**kw), "reg"),
        (lgb.LGBMRegressor(zero_as_missing=True, **kw), "reg"),
        (lgb.LGBMRegressor(use_missing=False, **kw), "reg"),
        (lgb.LGBMRegressor(boosting_type="rf", bagging_freq=1, bagging_fraction=0.7, **kw), "reg"),
    ]


@pytest.mark.parametrize("depth", [1, 3, 8, 12])
def test_lightgbm_models_match_on_adversarial_inputs(depth):
    X, ys = data()
    for model, target in models(depth):
        model.fit(X, ys[target])
        assert_exact(model, X, model.get_params()["objective"], target)


def test_lambdarank_and_num_iteration():
    X, ys = data()
    model = lgb.LGBMRanker(n_estimators=10, verbose=-1, min_child_samples=3).fit(
        X, ys["rank"], group=[10] * 60
    )
    assert trees.verify(model, trees.compile(model), X)["ok"]
    reg = lgb.LGBMRegressor(n_estimators=20, verbose=-1).fit(X, ys["reg"])
    part = trees.compile(reg, num_iteration=7)
    assert np.max(np.abs(part.predict(X) - reg.predict(X, num_iteration=7))) <= 1e-6


def test_every_regression_objective_equals_lightgbm_bit_for_bit():
    """The identity, exp and sigmoid (cross_entropy) outputs of LightGBM's regression objectives equal
    its predictions bit for bit; an objective whose output transform is not known is refused by name."""
    X, ys = data()
    positive = np.exp(ys["reg"] / 4)
    targets = {"cross_entropy": 1 / (1 + np.exp(-ys["reg"])), "xentropy": 1 / (1 + np.exp(-ys["reg"]))}
    objectives = ("regression", "regression_l1", "huber", "fair", "quantile", "mape", "poisson", "gamma")
    for objective in (*objectives, "tweedie", "cross_entropy", "xentropy"):
        y = targets.get(objective, positive)
        model = lgb.LGBMRegressor(n_estimators=10, objective=objective, verbose=-1).fit(X, y)
        cf = trees.compile(model, backend="cpu")
        assert np.array_equal(cf.predict(X), model.predict(X)), objective
    with pytest.raises(TypeError, match="LightGBM objective 'made_up sigmoid:1' is not supported"):
        convert_lightgbm._objective("made_up sigmoid:1")


def test_cross_entropy_lambda_and_custom_objectives_equal_lightgbm_bit_for_bit():
    """cross_entropy_lambda's output log1p(exp(score)) with the host's libm (Note [Host finishes], every
    backend), on adversarial rows too, and a custom objective's raw predictions equal LightGBM's bit for
    bit on the cpu backend; a classifier with a custom objective (whose predict_proba LightGBM leaves
    raw) is refused by name."""
    X, ys = data()
    y = 1 / (1 + np.exp(-ys["reg"]))
    lam = lgb.LGBMRegressor(n_estimators=20, objective="cross_entropy_lambda", verbose=-1).fit(X, y)
    rows = np.vstack(
        [X, adversarial_rows(trees.compile(lam).forest, X[:100], allow_inf=True, allow_nan=True)]
    )
    cf = trees.compile(lam, backend="cpu")
    assert cf.forest.post_transform == "softplus" and cf._host_finish
    assert np.array_equal(cf.predict(rows), lam.predict(rows))
    assert np.array_equal(cf.decision_function(rows), lam.predict(rows, raw_score=True))
    portable = trees.compile(lam, backend="torch")  # its sums within float64 rounding of LightGBM's
    np.testing.assert_allclose(portable.predict(rows), lam.predict(rows), rtol=1e-12, atol=0)

    def squared(y_true, y_pred):
        return y_pred - y_true, np.ones_like(y_true)

    custom = lgb.LGBMRegressor(n_estimators=8, objective=squared, verbose=-1).fit(X, ys["reg"])
    assert np.array_equal(trees.compile(custom, backend="cpu").predict(X), custom.predict(X))
    classifier = lgb.LGBMClassifier(n_estimators=2, objective=squared, verbose=-1).fit(X, ys["bin"])
    with pytest.raises(TypeError, match="LGBMClassifier with a custom objective is not supported"):
        trees.compile(classifier)


def test_random_forest_mode_reports_the_sum_and_predicts_the_mean():
    """boosting_type="rf": LightGBM's raw scores (decision_function, raw_score=True) are the sum of the
    trees, its predictions the post-transform of their mean over rounds (multiclass: one tree per class
    a round); both bit for bit, whole and one row at a time (the prepared calls), on every backend."""
    X, ys = data()
    kw = dict(n_estimators=8, boosting_type="rf", bagging_freq=1, bagging_fraction=0.7, verbose=-1)
    for model, method in (
        (lgb.LGBMRegressor(**kw).fit(X, ys["reg"]), "predict"),
        (lgb.LGBMClassifier(**kw).fit(X, ys["bin"]), "predict_proba"),
        (lgb.LGBMClassifier(**kw).fit(X, ys["multi"]), "predict_proba"),
    ):
        want, want_raw = getattr(model, method)(X), model.predict(X, raw_score=True)
        for strategy in ("auto", "traverse"):
            cf = trees.compile(model, backend="cpu", strategy=strategy)
            assert np.array_equal(getattr(cf, method)(X), want), (method, strategy)
            assert np.array_equal(cf.decision_function(X), want_raw), (method, strategy)
            for _ in range(2):  # the second call of a batch size goes through its prepared call
                assert np.array_equal(cf.decision_function(X[:1]), want_raw[:1]), (method, strategy)
                assert np.array_equal(getattr(cf, method)(X[:1]), want[:1]), (method, strategy)
        torch_backend = trees.compile(model, backend="torch")
        np.testing.assert_allclose(torch_backend.decision_function(X), want_raw, rtol=0, atol=1e-12)
        np.testing.assert_allclose(getattr(torch_backend, method)(X), want, rtol=0, atol=1e-12)


def test_bundled_datasets():
    """scikit-learn's bundled datasets: wine (3 classes) and diabetes (regression)."""
    from sklearn import datasets

    Xw, yw = datasets.load_wine(return_X_y=True)
    clf = lgb.LGBMClassifier(n_estimators=20, verbose=-1, min_child_samples=5).fit(Xw, yw)
    assert_exact(clf, Xw.astype(np.float32), "wine")
    Xd, yd = datasets.load_diabetes(return_X_y=True)
    assert_exact(
        lgb.LGBMRegressor(n_estimators=20, verbose=-1).fit(Xd, yd), Xd.astype(np.float32), "diabetes"
    )
