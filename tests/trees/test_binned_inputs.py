"""Note [Binned float64 inputs] (pyzero/trees/fast_cpu.py): pyzero::bin_rows against numpy's
searchsorted, its errors, and HistGradientBoosting forests on the float32 kernels through binned rows
against the float64 node kernel and scikit-learn, bit for bit, on rows at every threshold and one ulp
around it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn import ensemble

from pyzero import _native, trees
from pyzero.trees import fast_cpu, strategies
from pyzero.trees.compiled import adversarial_rows
from pyzero.trees.forest import CMP_CAT_IN_LEFT, CMP_LE, CMP_LT, MISSING_NONE

_native.require("the binned-input tests")


def bin_rows(x: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    starts = np.zeros(len(edges) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([e.size for e in edges])
    flat = np.concatenate(edges) if edges else np.zeros(0)
    return torch.ops.pyzero.bin_rows(
        torch.from_numpy(x), torch.from_numpy(flat), torch.from_numpy(starts)
    ).numpy()


def test_bin_rows_counts_the_thresholds_below_each_value():
    """Ranks as numpy's searchsorted (side left) gives them; NaN stays NaN, and a feature without
    thresholds passes as float32."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        features = int(rng.integers(1, 5))
        edges = [np.unique(rng.integers(-20, 20, int(rng.integers(0, 300))) / 2.0) for _ in range(features)]
        x = rng.integers(-25, 25, (int(rng.integers(1, 40)), features)) / 2.0
        x[rng.random(x.shape) < 0.1] = np.nan
        x.flat[: min(4, x.size)] = [np.inf, -np.inf, -0.0, 0.0][: min(4, x.size)]
        want = np.stack([np.searchsorted(e, x[:, c], side="left") for c, e in enumerate(edges)], axis=1)
        bare = np.asarray([e.size == 0 for e in edges])  # no thresholds: the value itself
        want = np.where(np.isnan(x) | bare, x, want).astype(np.float32)
        np.testing.assert_array_equal(bin_rows(x, edges), want)


def test_bin_rows_names_bad_arguments():
    x, edges = torch.zeros((2, 2), dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    starts = torch.tensor([0, 1, 3])
    assert torch.ops.pyzero.bin_rows(x, edges, starts).dtype == torch.float32
    with pytest.raises(
        RuntimeError, match=r"x must be a contiguous float64 CPU tensor of shape \(rows, features\)"
    ):
        torch.ops.pyzero.bin_rows(x.float(), edges, starts)
    with pytest.raises(RuntimeError, match="edges must be a contiguous 1-D float64 tensor"):
        torch.ops.pyzero.bin_rows(x, edges.float(), starts)
    with pytest.raises(
        RuntimeError, match="starts must be a contiguous int64 tensor of n_features \\+ 1 = 3"
    ):
        torch.ops.pyzero.bin_rows(x, edges, starts[:2])
    with pytest.raises(RuntimeError, match="starts must run from 0 to 3"):
        torch.ops.pyzero.bin_rows(x, edges, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="starts must not decrease \\(feature 0\\)"):
        torch.ops.pyzero.bin_rows(x, torch.zeros(0, dtype=torch.float64), torch.tensor([0, -1, 0]))


def test_bin_rows_encodes_categories_as_the_python_encoding():
    """Note [Encoded categories]: features flagged `encoded` take the code of the known category (an
    edge) their value equals, NaN for unknown values, fractions, NaN and infinities (inputs.py's
    _encode_numeric), while the other features are binned as before, in one call."""
    rng = np.random.default_rng(4)
    for _ in range(100):
        features = int(rng.integers(1, 5))
        encoded = rng.random(features) < 0.5
        edges, codes = [], []
        for flag in encoded:
            values = np.unique(rng.integers(-30, 30, int(rng.integers(0, 40))) / 2.0)
            edges.append(values)
            codes.append(rng.permutation(values.size).astype(np.float32) if flag else np.zeros(values.size))
        x = rng.integers(-35, 35, (int(rng.integers(1, 40)), features)) / 2.0 + (rng.random((1, 1)) < 0.2) / 4
        x[rng.random(x.shape) < 0.1] = np.nan
        x.flat[: min(4, x.size)] = [np.inf, -np.inf, -0.0, 0.0][: min(4, x.size)]
        want = []
        for c, e in enumerate(edges):
            if encoded[c]:
                pos = np.minimum(np.searchsorted(e, x[:, c]), max(e.size - 1, 0))
                hit = e[pos] == x[:, c] if e.size else np.zeros(x.shape[0], dtype=bool)
                want.append(np.where(hit, codes[c][pos] if e.size else 0, np.nan))
            else:
                rank = np.searchsorted(e, x[:, c], side="left")
                want.append(np.where(np.isnan(x[:, c]) | (e.size == 0), x[:, c], rank))
        starts = np.concatenate([[0], np.cumsum([e.size for e in edges])]).astype(np.int64)
        got = torch.ops.pyzero.bin_rows(
            torch.from_numpy(x),
            torch.from_numpy(np.concatenate(edges)),
            torch.from_numpy(starts),
            torch.from_numpy(np.concatenate(codes).astype(np.float32)),
            torch.from_numpy(encoded),
        )
        np.testing.assert_array_equal(got.numpy(), np.stack(want, axis=1).astype(np.float32))


def test_bin_rows_names_bad_encodings():
    x, edges, starts = torch.zeros((2, 2), dtype=torch.float64), torch.zeros(3, dtype=torch.float64), None
    starts = torch.tensor([0, 1, 3])
    codes, encoded = torch.zeros(3), torch.tensor([True, False])
    assert torch.ops.pyzero.bin_rows(x, edges, starts, codes, encoded).tolist() == [[0.0, 0.0]] * 2
    with pytest.raises(RuntimeError, match="codes and encoded go together"):
        torch.ops.pyzero.bin_rows(x, edges, starts, codes)
    with pytest.raises(
        RuntimeError, match=r"codes must be a contiguous float32 tensor of one code per edge \(3\)"
    ):
        torch.ops.pyzero.bin_rows(x, edges, starts, codes[:2], encoded)
    with pytest.raises(RuntimeError, match="codes must be a contiguous float32"):
        torch.ops.pyzero.bin_rows(x, edges, starts, codes.double(), encoded)
    with pytest.raises(
        RuntimeError, match="encoded must be a contiguous bool tensor of n_features = 2 flags"
    ):
        torch.ops.pyzero.bin_rows(x, edges, starts, codes, encoded.int())


def hgb_models():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((800, 6))  # float64: HistGradientBoosting compares float64 inputs
    X[:, 3] = np.round(X[:, 3] * 3) / 3  # ties: thresholds between repeated values
    X[rng.random(X.shape) < 0.05] = np.nan
    Xz = np.nan_to_num(X)
    y = np.nan_to_num(X[:, 0]) + np.sin(np.nan_to_num(X[:, 1])) + rng.normal(0, 0.2, 800)
    return X, [
        ensemble.HistGradientBoostingClassifier(max_iter=20, max_depth=3).fit(X, y > 0),
        ensemble.HistGradientBoostingClassifier(max_iter=10).fit(X, np.digitize(y, [-0.5, 0.5])),
        ensemble.HistGradientBoostingRegressor(max_iter=20, max_leaf_nodes=63).fit(X, y),
        ensemble.HistGradientBoostingRegressor(max_iter=10, max_depth=6).fit(Xz, y),  # NaN never seen
    ]


def test_binned_forests_equal_the_float64_node_kernel_and_the_library_bit_for_bit():
    """Every float32 kernel that takes the binned forest (perfect, bitvector, the timed choice): raw
    sums, leaves and the library's outputs equal the float64 node kernel's and scikit-learn's on random
    rows, rows at every threshold and one float64 ulp on each side, infinities, NaN and -0.0."""
    X, models = hgb_models()
    for model in models:
        name = type(model).__name__
        node = trees.compile(model, backend="cpu", strategy="traverse")
        assert isinstance(node._kernel, strategies.PackedForest)
        rows = np.concatenate([X[:200], adversarial_rows(node.forest, X[:50], True, True, seed=2)])
        rows[:5, 0] = [-0.0, 0.0, np.inf, -np.inf, np.nan]
        x = torch.from_numpy(rows)
        want_raw, want_leaves = node._kernel.raw(x, node._base, False), node._kernel.leaves(x)
        method = "predict_proba" if hasattr(model, "predict_proba") else "predict"
        want = getattr(model, method)(rows)
        kinds = 0
        for strategy in ("perfect", "bitvector", "auto"):
            try:
                cf = trees.compile(model, backend="cpu", strategy=strategy)
            except ValueError as e:
                assert "PERFECT_MAX_DEPTH" in str(e) or "leaves" in str(e), e
                continue
            assert isinstance(cf._kernel, fast_cpu.BinnedKernel), (name, strategy)
            for n in (1, 7, len(rows)):
                assert torch.equal(cf._kernel.raw(x[:n], cf._base, False), want_raw[:n]), (name, strategy, n)
                assert torch.equal(cf._kernel.leaves(x[:n]), want_leaves[:n]), (name, strategy, n)
            assert np.array_equal(getattr(cf, method)(rows), want), (name, strategy)
            kinds += 1
        assert kinds >= 2, name


def categorical_model():
    """(rows, HistGradientBoostingClassifier with categorical features 0 and 3)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((1500, 5))
    X[:, 0] = rng.integers(0, 40, 1500)
    X[:, 3] = rng.integers(0, 7, 1500) * 1.5
    X[rng.random(X.shape) < 0.04] = np.nan
    y = (np.nan_to_num(X[:, 0]) % 3 == 0) ^ (np.nan_to_num(X[:, 1]) > 0)
    return X, ensemble.HistGradientBoostingClassifier(max_iter=15, categorical_features=[0, 3]).fit(X, y)


def test_categorical_forests_keep_their_codes_through_the_binning():
    """HistGradientBoosting with categorical features (their inputs encoded as codes, unknown and
    negative categories NaN): the numeric features binned, the codes passed as they are, on the
    bitvector kernel, equal to the float64 node kernel and scikit-learn bit for bit."""
    X, model = categorical_model()
    rows = X[:300].copy()
    rows[:6, 0] = [45.0, -1.0, 2.5, 1e300, -0.0, 39.0]  # unknown, negative, a fraction, huge, -0, last
    rows[6:9, 3] = [10.5, 4.5, -1.5]
    cf = trees.compile(model, backend="cpu")
    assert isinstance(cf._kernel, fast_cpu.BinnedKernel) and cf.strategy == "bitvector"
    node = trees.compile(model, backend="cpu", strategy="traverse")
    x = cf._input(rows)[0]
    assert torch.equal(cf._kernel.raw(x, cf._base, False), node._kernel.raw(x, node._base, False))
    assert torch.equal(cf._kernel.leaves(x), node._kernel.leaves(x))
    assert np.array_equal(cf.predict_proba(rows), model.predict_proba(rows))
    assert trees.verify(model, cf, X)["ok"]


def test_prepared_calls_encode_categories():
    """Note [Encoded categories]: a categorical HistGradientBoosting forest's prepared CPU calls take
    numeric rows as they are and encode them in C++, equal to scikit-learn bit for bit at batch 1 and 7
    (unknown, negative, fractional and huge categories, -0.0, NaN), from numpy (any dtype, order or
    flags) and tensors; forests with string categories keep the Python encoding."""
    X, model = categorical_model()
    rows = X[:70].copy()
    rows[:6, 0] = [45.0, -1.0, 2.5, 1e300, -0.0, 39.0]
    rows[6:10, 3] = [10.5, 4.5, -1.5, 3.0]
    cf = trees.compile(model, backend="cpu")
    assert cf._kernel.encodes and set(cf._plans) == {"raw", "proba"}
    want, raw = model.predict_proba(rows), model.decision_function(rows)
    for size in (1, 7):
        for i in range(0, 70, size):
            part = rows[i : i + size]
            assert cf._prepared("proba", part) is not None
            assert np.array_equal(cf.predict_proba(part), want[i : i + size]), (size, i)
            assert np.array_equal(cf.predict_proba(torch.from_numpy(part)).numpy(), want[i : i + size])
            assert np.array_equal(cf.decision_function(part), raw[i : i + size])
    assert np.array_equal(cf.predict(rows), model.predict(rows))
    # other numpy rows of a small batch are converted first, as the general path converts them
    frozen = rows[10:17].copy()
    frozen.flags.writeable = False
    for other in (rows[10:17].astype(np.float32), np.nan_to_num(rows[10:17]).astype(np.int64), frozen):
        assert cf._prepared("proba", other) is not None
        assert np.array_equal(cf.predict_proba(other), model.predict_proba(other.astype(np.float64)))
    assert np.asfortranarray(rows[:7]).flags.c_contiguous is False
    assert np.array_equal(cf.predict_proba(np.asfortranarray(rows[:7])), want[:7])
    forest = replace(cf.forest, categories={0: ["a", "b"], 3: cf.forest.categories[3]})
    assert fast_cpu.BinnedRows(forest).encoding is None


def test_why_not_binned():
    _, models = hgb_models()
    forest = trees.compile(models[0], backend="cpu").forest
    assert fast_cpu.why_not_binned(forest) is None
    lt = forest.threshold64.copy()
    cases = {
        "a split is neither x <= t nor categorical": {
            "cmp": np.where(forest.feature >= 0, CMP_LT, forest.cmp).astype(np.int8)
        },
        "a split's missing value is not NaN": {"missing": np.full_like(forest.missing, MISSING_NONE)},
        "a threshold is NaN": {"threshold64": np.where(forest.feature >= 0, np.nan, lt)},
    }
    for reason, change in cases.items():
        assert fast_cpu.why_not_binned(replace(forest, **change)) == reason
    cat = trees.compile(categorical_model()[1], backend="cpu").forest
    assert fast_cpu.why_not_binned(cat) is None
    numeric = np.flatnonzero((cat.feature >= 0) & (cat.cmp == CMP_LE))
    feature = cat.feature.copy()
    feature[numeric[0]] = cat.feature[cat.cmp == CMP_CAT_IN_LEFT][0]  # a numeric split on a categorical one
    mixed = replace(cat, feature=feature)
    assert fast_cpu.why_not_binned(mixed) == "a feature has both numeric and categorical splits"
    raw = replace(cat, encode_numeric=False)  # inputs not encoded: not codes below 256
    assert fast_cpu.why_not_binned(raw) == "a categorical feature's inputs are not encoded as codes"
    with pytest.raises(ValueError, match="forest inputs cannot be binned: a categorical feature's inputs"):
        fast_cpu.BinnedRows(raw)


def test_category_encoding_is_the_same_in_numpy_and_torch():
    """HistGradientBoosting's input encoding (codes of the known categories, unknown -> NaN): the numpy
    path of small batches and the torch path of the others agree, and the tables are made once."""
    from pyzero.trees import inputs

    X, model = categorical_model()
    forest = trees.compile(model, backend="cpu").forest
    rows = X[:50].copy()
    rows[:5, 0] = [45.0, -1.0, 2.5, 1e300, -0.0]
    rows[5:8, 3] = [10.5, 4.5, np.nan]
    by_numpy = inputs._encode_numeric(rows, forest)
    by_torch = inputs._encode_numeric(torch.from_numpy(rows), forest).numpy()
    np.testing.assert_array_equal(by_numpy, by_torch)
    assert np.isnan(by_numpy[:4, 0]).all() and by_numpy[4, 0] == forest.categories[0].index(0.0)
    assert np.isnan(by_numpy[5, 3]) and np.isnan(by_numpy[7, 3])
    assert by_numpy[6, 3] == forest.categories[3].index(4.5)
    assert inputs.category_codes(forest) is inputs.category_codes(forest)
    np.testing.assert_array_equal(rows[:, [1, 2, 4]], by_numpy[:, [1, 2, 4]])  # other columns untouched
