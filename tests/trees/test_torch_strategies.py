"""GEMM and perfect-tree strategies agree bit for bit with strategies.traverse (leaves and raw scores)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from sklearn import ensemble, tree

from pyzero.trees import compiled, strategies
from pyzero.trees import torch_strategies as ts
from pyzero.trees.forest import CMP_LE, CMP_LT, MISSING_NAN, MISSING_NONE, MISSING_ZERO, concat_trees
from tests.trees.helpers import mixed_data

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

DEPTHS = [1, 3, 8, 12]
CPU = torch.device("cpu")


data = functools.partial(mixed_data, zero_rate=0.05)


# Adversarial rows kept per forest (a random subset; deep forests have tens of thousands).
MAX_ADVERSARIAL = 3000


def probe_rows(forest, X, seed=0):
    """X, random rows sprinkled with NaN / +-0 / +-inf / tiny values, and adversarial rows."""
    rng = np.random.default_rng(seed)
    noisy = X[rng.integers(0, X.shape[0], 300)].copy()
    specials = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-36, -1e-36], dtype=X.dtype)
    mask = rng.random(noisy.shape) < 0.2
    noisy[mask] = rng.choice(specials, size=int(mask.sum()))
    clean = np.nan_to_num(X, nan=0.0)
    adv = compiled.adversarial_rows(forest, clean, True, True, seed)
    if adv.shape[0] > MAX_ADVERSARIAL:
        adv = adv[rng.choice(adv.shape[0], MAX_ADVERSARIAL, replace=False)]
    return np.concatenate([X, noisy, adv])


def assert_same(forest, rows, block_bytes=ts.BLOCK_BYTES, names=("gemm", "perfect")):
    """Every named strategy gives strategies.leaves and strategies.raw_scores bit for bit."""
    ft = strategies.ForestTensors(forest, CPU)
    x = torch.as_tensor(rows)
    base = torch.as_tensor(forest.base, dtype=torch.float64)
    ref_leaves = strategies.leaves(ft, x)
    native_f32 = forest.extra.get("accumulate") == "float32"
    for name in names:
        s = ts.build(name, forest, CPU, block_bytes)
        got = s.leaves(x)
        assert got.dtype == torch.int64 and got.shape == (x.shape[0], forest.n_trees)
        assert torch.equal(got, ref_leaves), (name, forest.source, (got != ref_leaves).sum())
        for f32, agg in {(native_f32, forest.aggregation), (True, "sum"), (False, "mean")}:
            ref = strategies.raw_scores(ft, x, forest.n_trees, agg, base, f32)
            raw = s.raw_scores(x, forest.n_trees, agg, base, f32)
            assert torch.equal(raw, ref), (name, forest.source, f32, agg, (raw - ref).abs().max())


def sklearn_models(depth):
    d = dict(max_depth=depth, random_state=0)
    return [
        (tree.DecisionTreeClassifier(**d), "multi", True),
        (ensemble.RandomForestClassifier(n_estimators=8, **d), "bin", True),
        (ensemble.RandomForestRegressor(n_estimators=4, **d), "reg", True),
        (ensemble.GradientBoostingClassifier(n_estimators=8, **d), "bin", False),
        (ensemble.GradientBoostingClassifier(n_estimators=5, **d), "multi", False),
    ]


def boosted_models(depth):
    x = dict(max_depth=depth, n_estimators=10, random_state=0)
    g = dict(n_estimators=10, max_depth=depth, num_leaves=min(2**depth, 255), verbose=-1, min_child_samples=3)
    return [
        (xgb.XGBClassifier(objective="binary:logistic", **x), "bin"),  # float32_sequential
        (xgb.XGBClassifier(objective="multi:softprob", **x), "multi"),
        (lgb.LGBMClassifier(**g), "bin"),  # NaN and zeros in the data: missing kinds NaN and None
        (lgb.LGBMRegressor(zero_as_missing=True, **g), "reg"),  # missing kind Zero
        (lgb.LGBMRegressor(use_missing=False, **g), "reg"),
    ]


@pytest.mark.parametrize("depth", DEPTHS)
def test_sklearn_models(depth):
    X, ys = data()
    for model, target, nan_ok in sklearn_models(depth):
        Xm = X if nan_ok else np.nan_to_num(X)
        forest = compiled.convert(model.fit(Xm, ys[target]))
        assert forest.max_depth <= depth
        assert_same(forest, probe_rows(forest, Xm))


@pytest.mark.parametrize("depth", DEPTHS)
def test_xgboost_and_lightgbm_models(depth):
    X, ys = data()
    kinds = set()
    for model, target in boosted_models(depth):
        forest = compiled.convert(model.fit(X, ys[target]))
        kinds |= set(np.unique(forest.missing[forest.feature >= 0]).tolist())
        assert_same(forest, probe_rows(forest, X))
    if depth > 1:
        assert kinds == {MISSING_NAN, MISSING_NONE, MISSING_ZERO}


def test_xgboost_forest_is_float32_sequential():
    X, ys = data()
    forest = compiled.convert(xgb.XGBClassifier(n_estimators=30, max_depth=4).fit(X, ys["bin"]))
    assert forest.extra.get("accumulate") == "float32"
    assert_same(forest, probe_rows(forest, X))


@pytest.mark.parametrize("depth", [3, 8])
def test_hist_gradient_boosting_compares_float64(depth):
    X, ys = data(dtype=np.float64)
    model = ensemble.HistGradientBoostingClassifier(max_iter=8, max_depth=depth).fit(X, ys["multi"])
    forest = compiled.convert(model)
    assert forest.extra["input"] == "float64"
    rows = probe_rows(forest, X)
    assert rows.dtype == np.float64
    assert_same(forest, rows)


def random_forest(seed, n_trees=7, depth=6, features=4, outputs=2):
    """Hand-built forest mixing everything the IR allows: unbalanced trees, one-leaf trees, CMP_LE and
    CMP_LT trees, missing kinds per node, NaN and infinite thresholds, random default directions."""
    rng = np.random.default_rng(seed)
    grid = np.array([-1.0, -0.5, 0.0, 1e-36, 0.3, 1.0 / 3.0, 2.0, np.inf, -np.inf])  # float64 thresholds
    trees = []
    for t in range(n_trees):
        feature, threshold, left, right = [], [], [], []

        def grow(d, feature=feature, threshold=threshold, left=left, right=right, t=t):
            i = len(feature)
            feature.append(-1), threshold.append(0.0), left.append(-1), right.append(-1)
            if t == 0 or d == depth or (d > 0 and rng.random() < 0.3):
                return i
            feature[i] = int(rng.integers(features))
            threshold[i] = np.nan if (t == 1 and d == 0) else float(rng.choice(grid))
            left[i] = grow(d + 1)
            right[i] = grow(d + 1)
            return i

        grow(0)
        n = len(feature)
        trees.append(
            {
                "feature": np.array(feature),
                "threshold": np.array(threshold),
                "left": np.array(left),
                "right": np.array(right),
                "cmp": CMP_LT if t % 2 else CMP_LE,
                "default_left": rng.random(n) < 0.5,
                "missing": rng.choice([MISSING_NAN, MISSING_NONE, MISSING_ZERO], size=n),
                "value": rng.standard_normal((n, outputs)),
            }
        )
    forest = concat_trees(
        trees, n_features=features, base=np.array([0.5, -0.25]), source="random", aggregation="sum"
    )
    g32 = np.concatenate([grid.astype(np.float32), forest.threshold32])
    vals = np.concatenate(
        [g32, np.nextafter(g32, np.float32(np.inf)), np.nextafter(g32, np.float32(-np.inf))]
    )
    vals = np.concatenate([vals, np.array([np.nan, -0.0, 1e-36, -1e-36], dtype=np.float32)])
    rows = rng.choice(vals, size=(3000, features))
    return forest, rows


@pytest.mark.parametrize("seed", range(4))
def test_hand_built_forests_with_mixed_node_kinds(seed):
    forest, rows = random_forest(seed)
    assert set(np.unique(forest.cmp).tolist()) == {CMP_LE, CMP_LT}
    assert_same(forest, rows)
    assert_same(forest, rows.astype(np.float64))
    assert_same(forest, np.nan_to_num(rows, nan=2.0))  # NaN-free input: the fast path without isnan


def test_row_blocks_do_not_change_results():
    X, ys = data()
    forest = compiled.convert(xgb.XGBClassifier(n_estimators=6, max_depth=5).fit(X, ys["multi"]))
    rows = probe_rows(forest, X)[:700]
    for name in ("gemm", "perfect"):
        s = ts.build(name, forest, CPU, block_bytes=1)
        assert s.block_rows(torch.as_tensor(rows)) == 1
        tiny = ts.build(name, forest, CPU, block_bytes=37 * s._row_bytes(torch.as_tensor(rows)))
        assert tiny.block_rows(torch.as_tensor(rows)) == 37  # 19 blocks, the last one short
    assert_same(forest, rows, block_bytes=1)
    assert_same(forest, rows[:1])
    for name in ("gemm", "perfect"):  # (strategies.leaves rejects 0 rows)
        s = ts.build(name, forest, CPU)
        assert s.leaves(torch.as_tensor(rows[:0])).shape == (0, forest.n_trees)
        raw = s.raw_scores(torch.as_tensor(rows[:0]), forest.n_trees, "sum", torch.as_tensor(forest.base))
        assert raw.shape == (0, forest.n_outputs)


def test_empty_input_and_one_leaf_trees():
    X, ys = data()
    constant = np.zeros_like(np.nan_to_num(X))  # constant features: every tree is one leaf
    forest = compiled.convert(
        ensemble.RandomForestRegressor(3, max_depth=1, random_state=0).fit(constant, ys["reg"])
    )
    assert forest.max_depth == 0
    assert_same(forest, X)


def depth_forest(depth, n_trees=20):
    X, ys = data()
    model = xgb.XGBRegressor(n_estimators=n_trees, max_depth=depth, random_state=0).fit(X, ys["reg"])
    return compiled.convert(model)


def chain_forest(depth):
    """One tree, a chain of `depth` splits (each left child a leaf): deep but with few leaves."""
    n = 2 * depth + 1
    left, right = np.full(n, -1), np.full(n, -1)
    left[0 : 2 * depth : 2], right[0 : 2 * depth : 2] = np.arange(1, n, 2), np.arange(2, n + 1, 2)
    t = {
        "feature": np.where(left >= 0, 0, -1),
        "threshold": np.linspace(-1, 1, n),
        "left": left,
        "right": right,
        "cmp": CMP_LE,
        "default_left": np.ones(n, bool),
        "value": np.arange(n, dtype=float)[:, None],
    }
    return concat_trees([t], n_features=1, base=np.zeros(1), source="chain")


def test_choose_strategy_uses_depth_and_batch():
    full2, full4, full8, chain = depth_forest(2), depth_forest(4), depth_forest(8), chain_forest(14)
    profiles = {"full8": ts.profile(full8), "chain": ts.profile(chain)}
    assert profiles["full8"]["leaf_depth"] > ts.GEMM_MAX_LEAF_DEPTH_SMALL_BATCH
    assert profiles["chain"] == {
        "gemm": True, "perfect": True, "traverse": True, "depth": 14, "leaf_depth": 4
    }  # fmt: skip
    assert_same(chain, np.linspace(-1.5, 1.5, 101, dtype=np.float32)[:, None])
    small, large = 1, 10_000
    assert ts.choose_strategy(full2, small) == ts.choose_strategy(full2, large) == "gemm"  # tiny trees
    assert ts.choose_strategy(full4, small) == "gemm"  # one pass instead of a step per level
    assert ts.choose_strategy(full4, ts.GEMM_SMALL_BATCH_ROWS + 1) == "perfect"  # the I x L matmul dominates
    assert ts.choose_strategy(full8, small) == ts.choose_strategy(full8, large) == "perfect"
    assert ts.choose_strategy(chain, small) == "gemm"  # deep, but 15 leaves
    assert ts.choose_strategy(chain, large) == "traverse"  # deeper than PERFECT_MAX_AUTO_DEPTH
    assert ts.choose_strategy(chain, large, profiles["chain"]) == "traverse"


def test_ineligible_forests_are_rejected_clearly(monkeypatch):
    forest = depth_forest(3)
    cat = compiled.convert(xgb.XGBRegressor(n_estimators=2, max_depth=3).fit(*_xy()))
    cat.cmp = cat.cmp.copy()
    cat.cmp[cat.feature >= 0] = 2  # e.g. a categorical split kind the strategies do not implement
    for name in ("gemm", "perfect"):
        with pytest.raises(ValueError, match=rf"{name} cannot run .*cmp kinds \[2\].*'traverse'"):
            ts.build(name, cat, CPU)
    assert ts.unsupported_reason(cat) is not None and ts.unsupported_reason(forest) is None
    assert ts.choose_strategy(cat, 1) == "traverse" and ts.choose_strategy(cat, 10_000) == "traverse"
    assert ts.eligible(cat) == {"gemm": False, "perfect": False, "traverse": True}

    monkeypatch.setattr(ts, "PERFECT_MAX_DEPTH", 2)
    with pytest.raises(ValueError, match=r"perfect cannot run .*PERFECT_MAX_DEPTH = 2"):
        ts.PerfectForest(forest, CPU)
    assert not ts.eligible(forest)["perfect"]
    monkeypatch.setattr(ts, "GEMM_MAX_MATRIX_BYTES", 64)
    with pytest.raises(ValueError, match=r"gemm cannot run .*GEMM_MAX_MATRIX_BYTES"):
        ts.GemmForest(forest, CPU)
    assert ts.choose_strategy(forest, 1) == "traverse"
    with pytest.raises(ValueError, match="strategy must be one of"):
        ts.build("hummingbird", forest, CPU)


def _xy():
    X, ys = data()
    return X, ys["reg"]


def test_traverse_wrapper_has_the_same_interface():
    forest = depth_forest(4, n_trees=5)
    x = torch.as_tensor(data()[0])
    base = torch.as_tensor(forest.base)
    s = ts.build("traverse", forest, CPU)
    ft = strategies.ForestTensors(forest, CPU)
    assert torch.equal(s.leaves(x), strategies.leaves(ft, x))
    ref = strategies.raw_scores(ft, x, 5, "sum", base, True)
    assert torch.equal(s.raw_scores(x, 5, "sum", base, True), ref)
