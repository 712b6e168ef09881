"""The perfect-tree CPU kernel (pyzero/trees/fast_cpu.py) against the torch reference traversal, the
native libraries, every ISA, batch sizes and thread counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import ensemble

from pyzero import _native, trees
from pyzero.trees import inputs, strategies
from pyzero.trees.compiled import adversarial_rows
from pyzero.trees.fast_cpu import PerfectForest, why_ineligible
from pyzero.trees.forest import CMP_LE, MISSING_NAN, MISSING_NONE, MISSING_ZERO
from tests.trees.helpers import assert_same_on_every_isa

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
C = _native.require("the perfect-tree kernel tests")

DEPTHS = (1, 3, 8, 12)


@pytest.fixture(autouse=True)
def one_thread():
    """The torch reference runs many small parallel regions, which crawl on a busy 2-core machine; the
    thread-count test below switches threads itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BATCHES = (1, 7, 64, 1000)


def data(n=500, features=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    X[:, 5] = np.abs(X[:, 5])  # no NaN in training: LightGBM gives this feature missing type None
    X[:, 5] = np.nan_to_num(X[:, 5])
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) + X[:, 5] > 0.8).astype(int)
    return X, y


def models(depth):
    X, y = data()
    leaves = max(2, min(2**depth, 64))
    return X, [
        ensemble.RandomForestClassifier(8, max_depth=depth, random_state=0).fit(X, y),
        ensemble.GradientBoostingRegressor(n_estimators=8, max_depth=depth, random_state=0).fit(
            np.nan_to_num(X), np.nan_to_num(X[:, 1])
        ),
        xgb.XGBClassifier(n_estimators=8, max_depth=depth, base_score=0.5, n_jobs=1).fit(X, y),
        xgb.XGBClassifier(n_estimators=6, max_depth=depth, objective="multi:softprob", n_jobs=1).fit(
            X, y + (X[:, 2] > 0)
        ),
        lgb.LGBMClassifier(
            n_estimators=8, max_depth=depth, num_leaves=leaves, min_child_samples=3, verbose=-1, n_jobs=1
        ).fit(X, y),
        lgb.LGBMRegressor(
            n_estimators=8, max_depth=depth, num_leaves=leaves, zero_as_missing=True, verbose=-1, n_jobs=1
        ).fit(X, np.nan_to_num(X[:, 1])),
    ]


def reference(forest, x, float32_accum):
    """The torch traversal on x as the library reads it (the kernel reads LightGBM inputs itself)."""
    x = inputs._library_reading(x, forest, torch)
    ft = strategies.ForestTensors(forest, torch.device("cpu"))
    base = torch.as_tensor(forest.base, dtype=torch.float64)
    return strategies.raw_scores(ft, x, forest.n_trees, "sum", base, float32_accum), strategies.leaves(ft, x)


def rows_for(forest, X, allow_inf=True):
    rows = np.concatenate([X, adversarial_rows(forest, X, allow_inf=allow_inf, allow_nan=True)])
    return torch.as_tensor(np.ascontiguousarray(rows, dtype=np.float32))


def check(pf, forest, x):
    base = torch.as_tensor(forest.base, dtype=torch.float64)
    for f32 in (False, True):
        raw_ref, leaves_ref = reference(forest, x, f32)
        raw = pf.raw(x, base, f32)
        if f32:
            assert torch.equal(raw, raw_ref)
        else:  # the reference sums trees with torch.sum: same values up to rounding
            torch.testing.assert_close(raw, raw_ref, rtol=0, atol=1e-12)
        assert torch.equal(pf.leaves(x), leaves_ref)


@pytest.mark.parametrize("depth", DEPTHS)
def test_matches_reference_on_adversarial_rows(depth):
    X, ms = models(depth)
    missing_seen = set()
    for model in ms:
        forest = trees.compile(model, backend="torch").forest
        pf = PerfectForest.from_forest(forest)
        assert pf is not None, (type(model).__name__, why_ineligible(forest))
        missing_seen |= set(np.unique(forest.missing[forest.feature >= 0]).tolist())
        check(pf, forest, rows_for(forest, X))
    if depth > 1:
        assert {MISSING_NAN, MISSING_NONE, MISSING_ZERO} <= missing_seen


def test_every_isa_batch_size_and_thread_count_agree():
    X, ms = models(8)
    for model in ms:
        forest = trees.compile(model, backend="torch").forest
        pf = PerfectForest.from_forest(forest)
        x = rows_for(forest, X)
        base = torch.as_tensor(forest.base, dtype=torch.float64)
        want = {f32: pf.raw(x, base, f32) for f32 in (False, True)}
        assert_same_on_every_isa(pf, x, base, want, pf.leaves(x), BATCHES)


def test_xgboost_margins_bit_equal_native():
    """With base_score=0.5 XGBoost starts every margin at 0 (logistic) or 0.5 (softprob). The base is
    passed explicitly: the converter's Forest.base comes from save_config's rounded text (see report)."""
    X, y = data(800)
    for model, margin0 in (
        (xgb.XGBClassifier(n_estimators=30, max_depth=8, base_score=0.5).fit(X, y), 0.0),
        (
            xgb.XGBClassifier(n_estimators=10, max_depth=5, objective="multi:softprob", base_score=0.5).fit(
                X, y + (X[:, 2] > 0)
            ),
            0.5,
        ),
    ):
        forest = trees.compile(model).forest
        assert forest.extra.get("accumulate") == "float32"
        pf = PerfectForest.from_forest(forest)
        x = rows_for(forest, X, allow_inf=False)  # XGBoost rejects inf
        native = model.get_booster().predict(xgb.DMatrix(x.numpy()), output_margin=True)
        base = torch.full((forest.n_outputs,), margin0, dtype=torch.float64)
        ours = pf.raw(x, base, True).numpy()
        assert np.array_equal(ours.astype(np.float32).reshape(native.shape), native)


def edge_forest(minus_inf: int = 1, flip_defaults: bool = False):
    """(forest, rows): an XGBoost forest (x < t splits) whose first `minus_inf` splits compare with -inf
    (x < -inf never holds), optionally every other split's default direction flipped, one feature read
    with MISSING_NONE (NaN as 0) and another with MISSING_ZERO, and rows with tiny values in it."""
    X, ms = models(3)
    forest = trees.compile(ms[2], backend="torch").forest  # XGBoost: CMP_LT
    split = np.flatnonzero(forest.feature >= 0)
    forest.threshold32[split[:minus_inf]] = -np.inf
    if flip_defaults:
        forest.default_left[split[1::2]] = ~forest.default_left[split[1::2]]
    forest.missing[forest.feature == forest.feature[split[0]]] = MISSING_NONE
    other = forest.feature[split[-1]]
    if other != forest.feature[split[0]]:
        forest.missing[forest.feature == other] = MISSING_ZERO
    rows = rows_for(forest, X).numpy().copy()
    rows[::7, other] = 1e-36  # tiny: missing under MISSING_ZERO
    return forest, torch.as_tensor(rows)


def test_lt_threshold_at_minus_infinity_and_column_transforms():
    """x < -inf never holds (NaN threshold); NONE columns read NaN as 0; ZERO columns treat tiny values as
    missing."""
    forest, rows = edge_forest()
    check(PerfectForest.from_forest(forest), forest, rows)


def test_ineligible_forests_return_none():
    _, ms = models(3)
    forest = trees.compile(ms[0], backend="torch").forest
    split = forest.feature >= 0
    mixed = trees.compile(ms[0], backend="torch").forest
    f0 = np.flatnonzero(split)[:2]
    mixed.feature[f0] = mixed.feature[f0[0]]
    mixed.missing[f0[1]] = MISSING_ZERO
    assert PerfectForest.from_forest(mixed) is None and "mixes" in why_ineligible(mixed)
    other_cmp = trees.compile(ms[0], backend="torch").forest
    other_cmp.cmp[np.flatnonzero(split)[0]] = CMP_LE + 7
    assert PerfectForest.from_forest(other_cmp) is None
    deep = trees.compile(ms[0], backend="torch").forest
    deep.depth[:] = 40
    assert PerfectForest.from_forest(deep) is None and "depth" in why_ineligible(deep)


def test_perfect_ops_opcheck():
    X, ms = models(3)
    forest = trees.compile(ms[3], backend="torch").forest
    pf = PerfectForest.from_forest(forest)
    x = torch.as_tensor(X[:40])
    base = torch.as_tensor(forest.base, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.pyzero.tree_perfect_raw.default,
        (pf.meta, pf.threshold, pf.values, pf.values32, pf.leaf_nodes, pf.column_kind, x, base, True),
    )
    torch.library.opcheck(
        torch.ops.pyzero.tree_perfect_leaves.default,
        (pf.meta, pf.threshold, pf.leaf_nodes, pf.column_kind, x),
    )


def test_tree_parallel_small_batches_equal_row_parallel():
    """Batches of a few rows over a large forest split the trees across threads (kTreeParallelMinTrees
    in tree_fast.h); sums keep the tree order, so results equal the one-thread and the large-batch ones."""
    X, _ = data()
    y = np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) ** 2
    for model in (
        xgb.XGBRegressor(n_estimators=300, max_depth=4).fit(X, y),
        lgb.LGBMRegressor(n_estimators=300, max_depth=4, num_leaves=15, verbose=-1).fit(X, y),
    ):
        forest = trees.compile(model, backend="cpu").forest
        pf = PerfectForest.from_forest(forest)
        base = torch.as_tensor(forest.base, dtype=torch.float64)
        x = rows_for(forest, X)[:64]
        for f32 in (False, True):
            whole = pf.raw(x, base, f32)  # row-parallel path
            for n in (1, 2):
                torch.set_num_threads(n)
                for r in range(0, 12, 3):
                    assert torch.equal(pf.raw(x[r : r + 3].contiguous(), base, f32), whole[r : r + 3]), (
                        n,
                        f32,
                    )
                    assert torch.equal(pf.raw(x[r : r + 1].contiguous(), base, f32), whole[r : r + 1]), (
                        n,
                        f32,
                    )
