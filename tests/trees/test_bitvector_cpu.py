"""The bitvector CPU kernel (Note [Bitvector trees], csrc/trees/tree_qs.h) against the torch reference
traversal, the node kernel bit for bit, the native libraries, batch sizes and thread counts; when the
CPU backend picks it; its errors."""

from __future__ import annotations

import copy
import re
import time

import numpy as np
import pytest
import torch

from pyzero import _native, trees
from pyzero.trees import compiled, fast_cpu
from pyzero.trees.fast_cpu import BitvectorForest, why_not_bitvector
from pyzero.trees.forest import leaves_per_tree
from tests.trees.helpers import assert_same_on_every_isa
from tests.trees.test_fast_cpu import (  # noqa: F401 (fixture)
    check,
    data,
    edge_forest,
    models,
    one_thread,
    rows_for,
)

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
C = _native.require("the bitvector kernel tests")


def wide_data(n=3000, seed=5):
    """Rows of 6 features whose trees grow wide and deep (num_leaves 255: 3-4 words of leaves a tree)."""
    rng = np.random.default_rng(seed)
    Xw = rng.standard_normal((n, 6)).astype(np.float32)
    return Xw, (Xw[:, 0] * Xw[:, 1] + np.sin(3 * Xw[:, 2]) > 0).astype(int)


def deep_models():
    """Leaf-wise LightGBM classifiers (no depth limit: depth 16-28 on breast_cancer, deeper than the
    perfect kernel takes) of 31, 63 and 40 leaves, with NaN in the first ten columns (missing type NaN
    there, None in the others), and zero as missing."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    X[:, :10][np.random.default_rng(0).random((len(X), 10)) < 0.05] = np.nan
    return (
        X,
        [
            lgb.LGBMClassifier(n_estimators=12, verbose=-1, n_jobs=1).fit(X, y),
            lgb.LGBMClassifier(n_estimators=8, num_leaves=63, min_child_samples=5, verbose=-1, n_jobs=1).fit(
                X, y
            ),
            lgb.LGBMClassifier(n_estimators=8, num_leaves=40, zero_as_missing=True, verbose=-1, n_jobs=1).fit(
                X, y
            ),
        ],
    )


def wide_models():
    """LightGBM forests of depth 15-16 with NaN in two columns: binary of 255 leaves a tree (four words),
    three classes of 119-150 leaves (two and three words)."""
    Xw, yw = wide_data()
    Xw[:, :2][np.random.default_rng(1).random((len(Xw), 2)) < 0.05] = np.nan
    y3 = yw + (Xw[:, 3] > 0.5)
    kw = {"min_child_samples": 2, "verbose": -1, "n_jobs": 1}
    return Xw, [
        lgb.LGBMClassifier(n_estimators=6, num_leaves=255, **kw).fit(Xw, yw),
        lgb.LGBMClassifier(n_estimators=3, num_leaves=150, **kw).fit(Xw, y3),
    ]


@pytest.mark.parametrize("depth", (1, 3, 8, 12))
def test_matches_reference_on_adversarial_rows(depth):
    X, ms = models(depth)
    fitted = 0
    for model in ms:
        forest = trees.compile(model, backend="torch").forest
        if why_not_bitvector(forest) is not None:
            assert "leaves" in why_not_bitvector(forest)  # only trees of more than 256 leaves stay out
            continue
        fitted += 1
        check(BitvectorForest(forest), forest, rows_for(forest, X))
    assert fitted >= 4


# Batch sizes: the scalar code's groups (below kQsVectorMinRows), whole and partial vector groups, blocks.
BITVECTOR_BATCHES = (1, 5, 6, 16, 17, 64, 65)


def test_deep_leaf_wise_trees_equal_the_node_kernel_on_every_isa_batch_size_and_thread_count():
    X, ms = deep_models()
    Xw, wide = wide_models()
    words_seen = set()
    for X, model in [(X, m) for m in ms] + [(Xw, m) for m in wide]:
        node = trees.compile(model, backend="cpu", strategy="traverse")
        forest = node.forest
        assert forest.max_depth > fast_cpu.PERFECT_MAX_DEPTH and why_not_bitvector(forest) is None
        words_seen |= set(np.diff(BitvectorForest(forest).word_start.numpy()).tolist())
        x, _ = node._input(rows_for(forest, X).numpy())
        want = {f32: node._kernel.raw(x, node._base, f32) for f32 in (False, True)}
        want_leaves = node._kernel.leaves(x)
        assert_same_on_every_isa(BitvectorForest(forest), x, node._base, want, want_leaves, BITVECTOR_BATCHES)
    assert words_seen == {1, 2, 3, 4}, words_seen  # trees of one to four words of leaves


def test_the_cpu_backend_picks_it_for_small_deep_trees_and_agrees_with_the_native_library():
    X, ms = deep_models()
    for model in ms:
        cf = trees.compile(model)
        assert cf.strategy == "bitvector", fast_cpu.why_ineligible(cf.forest)
        report = trees.verify(model, cf, X)
        assert report["ok"], report
    shallow = trees.compile(models(3)[1][2])
    assert shallow.strategy == "perfect"  # shallow trees: the perfect kernel first
    rng = np.random.default_rng(0)  # depth 11 of <= 31 leaves: both fit, the bitvector kernel first
    Xd = rng.standard_normal((20000, 28)).astype(np.float32)
    yd = (Xd[:, 0] * Xd[:, 1] + np.sin(Xd[:, 2]) + 0.5 * Xd[:, 3] > 0).astype(int)
    deep = lgb.LGBMClassifier(n_estimators=30, max_depth=12, num_leaves=31, verbose=-1).fit(Xd, yd)
    cf = trees.compile(deep)
    assert cf.forest.max_depth >= fast_cpu.BITVECTOR_MIN_DEPTH and fast_cpu.why_ineligible(cf.forest) is None
    assert fast_cpu.prefers_bitvector(cf.forest) and cf.strategy == "bitvector"
    assert trees.compile(deep, strategy="perfect").strategy == "perfect"
    Xw, wide = wide_models()
    for model in wide:  # up to 255 leaves a tree
        cf = trees.compile(model)
        assert cf.forest.max_depth > fast_cpu.PERFECT_MAX_DEPTH and leaves_per_tree(cf.forest).max() > 128
        assert cf.strategy == "bitvector" and trees.verify(model, cf, Xw)["ok"]
    Xw, yw = wide_data(12000)  # wider still (depth 18): the node kernel
    wider = lgb.LGBMClassifier(n_estimators=3, num_leaves=400, min_child_samples=2, verbose=-1).fit(Xw, yw)
    cf = trees.compile(wider)
    assert cf.strategy == "traverse" and re.search(r"\d+ leaves > 256", why_not_bitvector(cf.forest))
    with pytest.raises(ValueError, match=r"strategy='bitvector' does not fit .*\d+ leaves > 256"):
        trees.compile(wider, strategy="bitvector")
    with pytest.raises(ValueError, match="strategy='bitvector' is a C\\+\\+ CPU kernel: use backend='cpu'"):
        trees.compile(ms[0], backend="torch", strategy="bitvector")
    hgb64 = compiled.CompiledForest(trees.compile(ms[0]).forest, torch.device("cpu"), "auto", "cpu")
    assert hgb64.strategy == "bitvector"


def test_lt_threshold_at_minus_infinity_default_directions_and_column_transforms():
    """x < -inf never holds (NaN threshold, sorted last: no number fails it, a NaN only when not
    default-left); NONE columns read NaN as 0 (no NaN list); ZERO columns treat tiny values as missing."""
    forest, rows = edge_forest(minus_inf=3, flip_defaults=True)
    check(BitvectorForest(forest), forest, rows)


def test_ops_check_their_arguments():
    X, ms = wide_models()
    forest = trees.compile(ms[1], backend="torch").forest  # two and three words a tree
    bv = BitvectorForest(forest)
    n_words = int(bv.word_start[-1])
    assert n_words > forest.n_trees
    x = torch.as_tensor(X[:40])
    base = torch.as_tensor(forest.base, dtype=torch.float64)
    raw_args = (*bv._nodes(), bv.values, bv.values32, bv.leaf_nodes, bv.column_kind, x, base, True)
    torch.library.opcheck(torch.ops.pyzero.tree_qs_raw.default, raw_args)
    torch.library.opcheck(
        torch.ops.pyzero.tree_qs_leaves.default, (*bv._nodes(), bv.leaf_nodes, bv.column_kind, x)
    )
    bad_word = bv.word.clone()
    bad_word[3] = n_words
    with pytest.raises(RuntimeError, match=rf"word must hold word numbers in \[0, {n_words}\)"):
        torch.ops.pyzero.tree_qs_raw(bv.threshold, bad_word, *raw_args[2:])
    bad_nan_word = bv.nan_word.clone()
    bad_nan_word[0] = -1
    with pytest.raises(RuntimeError, match=rf"nan_word must hold word numbers in \[0, {n_words}\)"):
        torch.ops.pyzero.tree_qs_raw(*raw_args[:4], bad_nan_word, *raw_args[5:])
    by_words = r"word_start must rise from 0 to the \d+ words of leaf_nodes, by 1 to 4 a tree"
    for bad in (
        torch.tensor([0, 5, *bv.word_start[2:].tolist()]),  # a tree of five words
        torch.tensor([0, 0, *bv.word_start[2:].tolist()]),  # a tree of none
        bv.word_start[:-1].contiguous(),  # words left over
    ):
        with pytest.raises(RuntimeError, match=by_words):
            torch.ops.pyzero.tree_qs_raw(*raw_args[:7], bad, *raw_args[8:])
    with pytest.raises(
        RuntimeError, match=r"leaf_nodes must be a contiguous int32 tensor of shape \(words, 64\)"
    ):
        torch.ops.pyzero.tree_qs_leaves(*bv._nodes(), bv.leaf_nodes.reshape(-1, 32), bv.column_kind, x)
    with pytest.raises(
        RuntimeError, match=r"values must be a contiguous float64 tensor of shape \(words, 64, outputs\)"
    ):
        torch.ops.pyzero.tree_qs_raw(*raw_args[:13], bv.values[1:], *raw_args[14:])
    bad_start = bv.start.clone()
    bad_start[1], bad_start[2] = bad_start[2], bad_start[1]
    if bad_start[1] != bad_start[2]:
        with pytest.raises(RuntimeError, match="start must rise from 0 to its list's length"):
            torch.ops.pyzero.tree_qs_raw(*raw_args[:3], bad_start, *raw_args[4:])
    with pytest.raises(RuntimeError, match=r"start needs n_features \+ 1 = 7 entries"):
        torch.ops.pyzero.tree_qs_raw(*raw_args[:3], bv.start[:-1].contiguous(), *raw_args[4:])
    with pytest.raises(RuntimeError, match="base must hold one float64 per output"):
        torch.ops.pyzero.tree_qs_raw(*raw_args[:-2], base[:0], True)
    with pytest.raises(RuntimeError, match="x must be a contiguous float32 tensor"):
        torch.ops.pyzero.tree_qs_raw(*raw_args[:-3], x.double(), base, True)
    # Note [Prepared CPU calls]: the plan gives the op's results and checks x alone
    assert torch.equal(bv.raw(x, base, True), torch.ops.pyzero.tree_qs_raw(*raw_args))
    assert torch.equal(
        bv.leaves(x).int(), torch.ops.pyzero.tree_qs_leaves(*bv._nodes(), bv.leaf_nodes, bv.column_kind, x)
    )
    with pytest.raises(RuntimeError, match=r"x has 5 features, the forest takes 6"):
        bv.raw(x[:, :5].contiguous(), base, True)
    with pytest.raises(RuntimeError, match="x must be a contiguous float32 tensor"):
        bv.leaves(x.double())
    leaves_only = C.QsPlan(list(bv._nodes()), None, None, bv.leaf_nodes, bv.column_kind, 6)
    with pytest.raises(RuntimeError, match=r"this bitvector plan has no leaf values \(leaves only\)"):
        leaves_only.raw(x, base, True)
    with pytest.raises(RuntimeError, match="give both values and values32, or neither"):
        C.QsPlan(list(bv._nodes()), bv.values, None, bv.leaf_nodes, bv.column_kind, 6)
    with pytest.raises(RuntimeError, match="a bitvector plan takes the 13 node arrays, got 12"):
        C.QsPlan(list(bv._nodes())[:12], bv.values, bv.values32, bv.leaf_nodes, bv.column_kind, 6)
    with pytest.raises(ValueError, match="does not fit the bitvector kernel: a tree has"):
        BitvectorForest(
            trees.compile(
                lgb.LGBMRegressor(n_estimators=2, num_leaves=300, min_child_samples=2, verbose=-1).fit(
                    *wide_data(6000)
                )
            ).forest
        )


def test_forests_both_kernels_take_time_them_on_the_first_large_batch(monkeypatch):
    """Note [CPU kernel choice]: small batches take the static choice; the first batch of at least
    CPU_TUNE_MIN_ROWS rows times both kernels and keeps the other one only when it is CPU_TUNE_MARGIN
    times faster; every choice gives the same bits."""
    X, ms = models(6)
    model = ms[2]  # XGBoost depth 6: both kernels take it
    cf = trees.compile(model)
    choice = cf._kernel
    assert (
        isinstance(choice, fast_cpu.CpuKernelChoice) and choice.static == "perfect" and choice.large is None
    )
    assert cf.strategy == "perfect"
    rows = np.tile(rows_for(cf.forest, X).numpy(), (4, 1))[: fast_cpu.CPU_TUNE_MIN_ROWS + 5]
    want = trees.compile(model, strategy="perfect").decision_function(rows)
    assert np.array_equal(cf.decision_function(rows[:100]), want[:100]) and choice.large is None
    assert np.array_equal(cf.decision_function(rows), want) and choice.large in ("perfect", "bitvector")
    assert cf.strategy == choice.large
    assert np.array_equal(trees.compile(model, strategy="bitvector").decision_function(rows), want)
    x = torch.as_tensor(rows)
    base = torch.as_tensor(cf.forest.base, dtype=torch.float64)
    ref = choice.kernels["perfect"].raw(x, base, True)
    for slow, chosen in (("perfect", "bitvector"), ("bitvector", "perfect")):
        choice = trees.compile(model)._kernel
        kernel = choice.kernels[slow]

        class Slow:
            def raw(self, x, base, f32, kernel=kernel):
                time.sleep(0.02)  # far beyond the margin and any noise
                return kernel.raw(x, base, f32)

        monkeypatch.setitem(choice.kernels, slow, Slow())
        assert torch.equal(choice.raw(x, base, True), ref)
        assert choice.large == chosen and choice.name_for(10) == "perfect", slow


def categorical_models():
    """test_categorical's coded rows (columns 0 and 2 categorical: 40 and 5 categories, 5% NaN) and
    models whose categorical splits cover both set directions and every out-of-domain rule: LightGBM
    (in the set goes left, no depth limit, outside (-1, 2**31) right), XGBoost partition and one-hot
    splits (in the set goes right, outside [0, 2**24) left)."""
    from tests.trees.test_categorical import coded

    X, y = coded()
    lgb_kw = {"verbose": -1, "n_jobs": 1, "min_data_per_group": 5, "cat_smooth": 1.0}
    xgb_kw = {"n_estimators": 6, "max_depth": 6, "enable_categorical": True, "tree_method": "hist"}
    ft = ["c", "q", "c", "q"]
    return X, [
        lgb.LGBMRegressor(n_estimators=8, **lgb_kw).fit(X, y, categorical_feature=[0, 2]),
        lgb.LGBMClassifier(n_estimators=8, num_leaves=100, min_child_samples=3, **lgb_kw).fit(
            X, (y > 0).astype(int), categorical_feature=[0, 2]
        ),
        xgb.XGBRegressor(feature_types=ft, max_cat_to_onehot=1, **xgb_kw).fit(X, y),
        xgb.XGBClassifier(feature_types=ft, max_cat_to_onehot=64, **xgb_kw).fit(
            X, np.digitize(y, [-0.5, 0.5])
        ),
    ]


# Categorical values at every edge of Note [Categorical splits]: negative (inside and outside LightGBM's
# domain), fractions (truncated), the last categories, beyond every set, at and past each library's
# domain end, infinities and NaN.
CATEGORY_EDGES = np.asarray(
    [-np.inf, -2.0, -1.0, -0.99, -0.5, -0.0, 0.0, 1e-40, 0.5, 1.0, 2.7, 3.0, 4.0, 4.99, 5.0, 31.0, 32.0,
     33.5, 39.0, 40.0, 41.0, 1e6, 2.0**24 - 1, 2.0**24, 2.0**31 - 128, 2.0**31, 3e38, np.inf, np.nan],
    dtype=np.float32,
)  # fmt: skip


def categorical_rows(forest, X):
    """X, the adversarial rows, and every CATEGORY_EDGES value in each categorical column (float32)."""
    rows = rows_for(forest, X).numpy()
    edges = np.repeat(rows[: len(CATEGORY_EDGES)], 2, axis=0)
    for c in np.unique(forest.feature[forest.cat_set >= 0]):
        edges[: len(CATEGORY_EDGES), c] = CATEGORY_EDGES
        edges[len(CATEGORY_EDGES) :, c] = CATEGORY_EDGES[::-1]
    return torch.as_tensor(np.ascontiguousarray(np.concatenate([rows, edges])))


def test_categorical_splits_equal_the_node_kernel_for_every_domain_rule_and_direction():
    """Categorical tables against the node kernel bit for bit (every ISA, batch split and thread count):
    as converted, with each out-of-domain rule (left, right, the node's default) and with every
    categorical node's default direction flipped; the cpu backend takes them and agrees with the
    native libraries."""
    from pyzero.trees.forest import CAT_INVALID_DEFAULT, CAT_INVALID_LEFT, CAT_INVALID_RIGHT

    X, ms = categorical_models()
    for model in ms:
        cf = trees.compile(model)
        assert cf.forest.has_categorical and cf.strategy == "bitvector", why_not_bitvector(cf.forest)
        assert trees.verify(model, cf, X)["ok"]
        base_forest = cf.forest
        cat = base_forest.cat_set >= 0
        for invalid in (None, CAT_INVALID_LEFT, CAT_INVALID_RIGHT, CAT_INVALID_DEFAULT, "flip"):
            forest = copy.deepcopy(base_forest)
            if invalid == "flip":
                forest.default_left[cat] = ~forest.default_left[cat]
            elif invalid is not None:
                forest.cat_domain = forest.cat_domain.copy()
                forest.cat_domain[2] = invalid
            node = compiled.CompiledForest(forest, torch.device("cpu"), "traverse", "cpu")
            x, _ = node._input(categorical_rows(forest, X).numpy())
            want = {f32: node._kernel.raw(x, node._base, f32) for f32 in (False, True)}
            assert_same_on_every_isa(
                BitvectorForest(forest), x, node._base, want, node._kernel.leaves(x), BITVECTOR_BATCHES
            )


def test_categorical_tables_hold_one_row_per_category_and_edge():
    """A categorical feature of K table categories has K + 3 rows; a mixed feature, a domain reaching
    below -1 or an oversized table keeps the forest off the kernel."""
    X, ms = categorical_models()
    forest = trees.compile(ms[0]).forest
    bv = BitvectorForest(forest)
    k = bv.cat_feature[:, 1]
    assert (bv.cat_feature[[1, 3], 0] == -1).all() and (bv.cat_feature[[0, 2], 0] >= 0).all()
    assert bv.cat_row_start.shape[0] == int((k[[0, 2]] + 3).sum()) + 1 and 5 <= k[0] <= 40 and k[2] <= 5
    assert bv.start[1] == bv.start[0] and bv.start[3] == bv.start[2]  # no sorted entries for them
    mixed = copy.deepcopy(forest)
    num = np.flatnonzero((mixed.feature == 1) & (mixed.cat_set < 0))[0]
    mixed.feature[num] = 0
    assert why_not_bitvector(mixed) == "a feature has both numeric and categorical splits"
    low = copy.deepcopy(forest)
    low.cat_domain = np.asarray([-2.0, 2.0**31, 1.0])
    assert why_not_bitvector(low) == "the categorical domain is not within (-1, 2**31]"
    big = copy.deepcopy(forest)
    big.cat_bits = big.cat_bits.copy()
    big.cat_bits = np.concatenate([big.cat_bits, np.zeros((big.cat_bits.shape[0], 1 << 14), np.uint32)], 1)
    big.cat_bits[big.cat_set[big.cat_set >= 0][0], -1] = 1 << 31  # category 2**19 + ...: a huge table
    assert re.fullmatch(r"categorical tables of \d+ \(value, node\) cells > 16777216", why_not_bitvector(big))
    x = torch.as_tensor(X[:20])
    args = (*bv._nodes(), bv.leaf_nodes, bv.column_kind, x)
    bad = bv.cat_feature.clone()
    bad[0, 0] = bv.cat_row_start.shape[0]
    with pytest.raises(RuntimeError, match=r"cat_feature rows must be -1 \(numeric\) or \(first row, K\)"):
        torch.ops.pyzero.tree_qs_leaves(*args[:8], bad, *args[9:])
    with pytest.raises(RuntimeError, match=r"cat_domain must lie within \(-1, 2\*\*31\] in float32"):
        torch.ops.pyzero.tree_qs_leaves(
            *args[:12], torch.tensor([-1.0, 5.0, 1.0], dtype=torch.float64), *args[13:]
        )
    bad_word = bv.cat_word.clone()
    bad_word[0] = int(bv.word_start[-1])
    with pytest.raises(RuntimeError, match=r"cat_word must hold word numbers"):
        torch.ops.pyzero.tree_qs_leaves(*args[:10], bad_word, *args[11:])
