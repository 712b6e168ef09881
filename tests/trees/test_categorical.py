"""Categorical splits (Note [Categorical splits]), pandas category columns and scipy.sparse inputs agree
with scikit-learn, XGBoost and LightGBM, on both backends, unseen/negative/huge categories too."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import ensemble

from pyzero import trees

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
pd = pytest.importorskip("pandas")

BACKENDS = ("cpu", "torch")
N_CATS = 40  # more than 32, so the bitsets span two words


def coded(n=1500, seed=0, nan_rate=0.05):
    """Two integer-coded categorical columns (0 and 2) and two numeric ones; y depends on both."""
    rng = np.random.default_rng(seed)
    X = np.stack(
        [
            rng.integers(0, N_CATS, n),
            rng.standard_normal(n),
            rng.integers(0, 5, n),
            rng.standard_normal(n),
        ],
        axis=1,
    ).astype(np.float32)
    X[rng.random(X.shape) < nan_rate] = np.nan
    Xf = np.nan_to_num(X)
    y = np.sin(Xf[:, 0] * 1.3) + (Xf[:, 2] == 3) + 0.5 * Xf[:, 1]
    return X, y


def check(model, X, *context):
    for backend in BACKENDS:
        cf = trees.compile(model, backend=backend)
        assert cf.forest.has_categorical, context
        report = trees.verify(model, cf, X)
        assert report["ok"], (type(model).__name__, backend, *context, report)
        assert report.get("leaves_equal") in (True, None)


@pytest.mark.parametrize("depth", [1, 3, 8, 12])
def test_xgboost_categorical_partition_and_onehot(depth):
    X, y = coded()
    for onehot in (1, 64):  # 1: partition splits; 64: one-hot splits (one category per node)
        common = dict(
            n_estimators=8,
            max_depth=depth,
            enable_categorical=True,
            max_cat_to_onehot=onehot,
            tree_method="hist",
        )
        ft = ["c", "q", "c", "q"]
        reg = xgb.XGBRegressor(feature_types=ft, **common).fit(X, y)
        check(reg, X, "reg", onehot)
        clf = xgb.XGBClassifier(feature_types=ft, **common).fit(X, np.digitize(y, [-0.5, 0.5]))
        check(clf, X, "multiclass", onehot)


@pytest.mark.parametrize("depth", [1, 3, 8, 12])
def test_lightgbm_categorical(depth):
    X, y = coded()
    common = dict(
        n_estimators=8, max_depth=depth, num_leaves=min(2**depth, 31), verbose=-1, min_data_per_group=5,
        cat_smooth=1.0,
    )  # fmt: skip
    reg = lgb.LGBMRegressor(**common).fit(X, y, categorical_feature=[0, 2])
    check(reg, X, "reg")
    clf = lgb.LGBMClassifier(**common).fit(X, (y > 0).astype(int), categorical_feature=[0, 2])
    check(clf, X, "binary")


@pytest.mark.parametrize("depth", [1, 3, 8, 12])
def test_hist_gradient_boosting_categorical(depth):
    X, y = coded()
    X = X.astype(np.float64)
    X[:, 0] = X[:, 0] * 3 + 7  # raw categories need not be 0..n-1: the model encodes them
    reg = ensemble.HistGradientBoostingRegressor(max_iter=8, max_depth=depth, categorical_features=[0, 2])
    check(reg.fit(X, y), X, "reg")
    clf = ensemble.HistGradientBoostingClassifier(max_iter=8, max_depth=depth, categorical_features=[2, 0])
    check(clf.fit(X, np.digitize(y, [-0.5, 0.5])), X, "multiclass")


def test_hist_gradient_boosting_categorical_trained_on_float32_with_nan():
    # scikit-learn lists NaN as a float32 category here (np.float32, not a Python float): it is missing
    X, y = coded()
    X = X.astype(np.float32)
    X[::7, 0] = np.nan
    clf = ensemble.HistGradientBoostingClassifier(max_iter=8, categorical_features=[0]).fit(X, y > 0)
    cf = trees.compile(clf)
    assert not any(np.isnan(c) for c in cf.forest.categories[0])
    report = trees.verify(clf, cf, X)
    assert report["ok"], report


def frames(n=1500, seed=0):
    """A DataFrame with a string category column, an int category column and numbers (train), and a
    test frame whose categories are re-ordered, with NaN and with a category never seen in training."""
    rng = np.random.default_rng(seed)
    colors = ["red", "green", "blue", "cyan", "magenta", "yellow"]
    df = pd.DataFrame(
        {
            "x": rng.standard_normal(n),
            "color": pd.Categorical(rng.choice(colors, n), categories=colors),
            "size": pd.Categorical(rng.choice([3, 7, 9, 11], n)),
            "z": rng.standard_normal(n),
        }
    )
    y = np.isin(df.color.astype(str), ["red", "blue", "yellow"]) + (df["size"].astype(int) > 8) + 0.3 * df.x
    test = df.iloc[:300].copy()
    test["color"] = pd.Categorical(test.color.astype(str), categories=list(reversed(colors)))
    test.loc[test.index[:20], "color"] = np.nan
    unseen = test.copy()
    unseen["color"] = pd.Categorical(
        ["purple" if i % 3 == 0 else c for i, c in enumerate(test.color.astype(object))]
    )
    return df, np.asarray(y, dtype=np.float64), test, unseen


def test_dataframes_with_category_columns():
    df, y, test, unseen = frames()
    models = [
        ensemble.HistGradientBoostingRegressor(max_iter=10, categorical_features="from_dtype").fit(df, y),
        lgb.LGBMRegressor(n_estimators=10, verbose=-1, min_data_per_group=5).fit(df, y),
        xgb.XGBRegressor(n_estimators=10, enable_categorical=True, max_cat_to_onehot=1).fit(df, y),
    ]
    for model in models:
        for backend in BACKENDS:
            cf = trees.compile(model, backend=backend)
            for frame in (test, unseen):
                if isinstance(model, xgb.XGBRegressor) and frame is unseen:
                    with pytest.raises(ValueError, match="'color' holds category 'purple' not seen"):
                        cf.predict(frame)
                    continue
                report = trees.verify(model, cf, frame)
                assert report["ok"], (type(model).__name__, backend, report)
                assert report["adversarial"] is False


def test_sparse_inputs_xgboost_absent_is_missing_others_zero():
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((600, 6)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.5] = 0.0
    X = sp.csr_matrix(dense)
    y = dense[:, 0] + (dense[:, 1] == 0) + dense[:, 2] * dense[:, 3]
    for model in (
        xgb.XGBRegressor(n_estimators=10, max_depth=4).fit(X, y),
        ensemble.RandomForestRegressor(n_estimators=5, max_depth=6, random_state=0).fit(dense, y),
        lgb.LGBMRegressor(n_estimators=10, verbose=-1).fit(dense, y),
    ):
        for backend in BACKENDS:
            cf = trees.compile(model, backend=backend)
            ours = cf.predict(X)
            np.testing.assert_allclose(ours, model.predict(X), atol=1e-6, rtol=0)
            np.testing.assert_array_equal(ours, cf.predict(sp.csc_matrix(X)))
    # XGBoost reads an absent entry as missing, not as 0.0: the two disagree on this model.
    xgb_model = xgb.XGBRegressor(n_estimators=10, max_depth=4).fit(X, y)
    cf = trees.compile(xgb_model)
    assert not np.array_equal(cf.predict(X), cf.predict(dense))


def test_save_load_keeps_categories(tmp_path):
    df, y, test, _ = frames()
    model = lgb.LGBMRegressor(n_estimators=5, verbose=-1, min_data_per_group=5).fit(df, y)
    cf = trees.compile(model)
    cf.save(tmp_path / "f.npz")
    back = trees.load(tmp_path / "f.npz")
    assert back.forest.categories == cf.forest.categories
    np.testing.assert_array_equal(back.predict(test), cf.predict(test))


def test_category_errors():
    _, _, test, _ = frames()
    model = ensemble.RandomForestRegressor(n_estimators=3, random_state=0).fit(
        np.zeros((10, 4)), np.arange(10)
    )
    cf = trees.compile(model)
    with pytest.raises(TypeError, match="column 'color' has dtype category"):
        cf.predict(test)
    with pytest.raises(TypeError, match="must hold numbers"):
        cf.predict(np.array([["a", "b", "c", "d"]]))
