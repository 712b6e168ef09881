"""The C++ tree kernel against the portable torch traversal, batch sizes, threads and the op schema."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import ensemble

from pyzero import trees
from tests.trees.helpers import finish_models, libm_exp_samples

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")


def fitted():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    y = (np.nan_to_num(X[:, 0]) > 0).astype(int)
    return X, [
        ensemble.RandomForestClassifier(10, max_depth=8, random_state=0).fit(X, y),
        xgb.XGBClassifier(n_estimators=10, max_depth=6).fit(X, y),
        lgb.LGBMRegressor(n_estimators=10, verbose=-1, zero_as_missing=True).fit(X, np.nan_to_num(X[:, 1])),
    ]


def outputs(cf, model, X):
    """The model's main continuous output through `cf` (probabilities or regression values)."""
    return np.asarray(
        cf.predict_proba(X) if hasattr(model, "predict_proba") else cf.predict(X), dtype=np.float64
    )


def test_cpu_kernel_equals_torch_strategy():
    X, models = fitted()
    for model in models:
        cpu, tor = trees.compile(model, backend="cpu"), trees.compile(model, backend="torch")
        assert cpu.backend == "cpu" and tor.backend == "torch"
        assert np.array_equal(cpu.apply(X), tor.apply(X))
        np.testing.assert_allclose(outputs(cpu, model, X), outputs(tor, model, X), atol=1e-12)


def test_cpu_kernel_ignores_batch_size_and_threads():
    X, models = fitted()
    big = np.tile(X, (5, 1))
    threads = torch.get_num_threads()
    for model in models:
        cf = trees.compile(model, backend="cpu")
        full = outputs(cf, model, big)
        parts = np.concatenate([outputs(cf, model, big[i : i + 37]) for i in range(0, big.shape[0], 37)])
        assert np.array_equal(full, parts)
        try:
            torch.set_num_threads(1)
            one = outputs(cf, model, big)
        finally:
            torch.set_num_threads(threads)
        assert np.array_equal(full, one)


def test_deep_unbalanced_trees_walk_in_groups_with_every_batch_split():
    """Note [Deep trees on the CPU]: leaf-wise LightGBM trees deeper than kLockstepMaxDepth (and than the
    perfect kernel takes) walk on the node kernel in groups of rows; batches split into 1, 7 and 37 rows
    (groups cut short) and one thread give the same bits, equal to the GPU layouts' host twin (row by
    row, the same summation order) and within 1e-6 of LightGBM, with LightGBM's leaves (apply), NaN,
    zeros and values at the thresholds included."""
    from pyzero.trees import gpu_layout

    rng = np.random.default_rng(5)
    X = rng.standard_normal((3000, 6)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    y = (np.nan_to_num(X[:, 0]) * np.nan_to_num(X[:, 1]) + np.sin(3 * np.nan_to_num(X[:, 2])) > 0).astype(int)
    model = lgb.LGBMClassifier(n_estimators=20, num_leaves=255, min_child_samples=2, verbose=-1).fit(X, y)
    cf = trees.compile(model, backend="cpu", strategy="traverse")  # (the default: the bitvector kernel)
    assert cf.forest.max_depth > 14, cf.forest.max_depth
    rows, _ = trees.compiled.verification_rows(model, cf, X[:300])
    x, _ = cf._input(rows)
    twin = gpu_layout.GpuLayout(cf.forest, "wide", cf._input_dtype, torch.device("cpu"))
    full = cf.decision_function(rows)
    assert np.array_equal(full, twin.walk(x, cf._base, False, False, [256, 1, 1, 1])[:, 0].numpy())
    np.testing.assert_allclose(cf.predict_proba(rows), model.predict_proba(rows), atol=1e-6, rtol=0)
    leaves = cf.apply(rows)
    assert np.array_equal(leaves, model.predict(rows, pred_leaf=True))
    assert np.array_equal(np.concatenate([cf.apply(rows[i : i + 7]) for i in range(0, len(rows), 7)]), leaves)
    for size in (1, 7, 37):
        parts = np.concatenate([cf.decision_function(rows[i : i + size]) for i in range(0, len(rows), size)])
        assert np.array_equal(parts, full), size
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert np.array_equal(cf.decision_function(rows), full)
    finally:
        torch.set_num_threads(threads)


def test_tree_ops_opcheck():
    X, models = fitted()
    packed = trees.compile(models[0], backend="cpu", strategy="traverse")._kernel
    x = torch.as_tensor(X)
    base = torch.zeros(packed.values.shape[1], dtype=torch.float64)
    args = (*packed._arrays(), x)
    torch.library.opcheck(torch.ops.pyzero.tree_predict_raw.default, (*args, base, False))
    torch.library.opcheck(torch.ops.pyzero.tree_predict_leaves.default, args)


def test_backend_and_strategy_errors():
    X, models = fitted()
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'gpu'"):
        trees.compile(models[0], backend="gpu")
    with pytest.raises(ValueError, match=r"backend='cuda' needs a CUDA device, got cpu"):
        trees.compile(models[0], backend="cuda")
    with pytest.raises(ValueError, match=r"strategy must be one of .* got 'fast'"):
        trees.compile(models[0], strategy="fast")
    with pytest.raises(ValueError, match="'gemm' is a torch strategy"):
        trees.compile(models[0], backend="cpu", strategy="gemm")
    deep = ensemble.RandomForestRegressor(3, max_depth=20, random_state=0).fit(
        np.nan_to_num(X), np.arange(len(X))
    )
    assert trees.compile(deep, backend="torch", strategy="traverse").forest.max_depth > 14
    with pytest.raises(ValueError, match="strategy='perfect' does not fit"):
        trees.compile(deep, backend="cpu", strategy="perfect")


def test_tensors_the_kernel_takes_as_they_are_and_those_it_converts():
    """CompiledForest._as_is: a contiguous float32 tensor goes straight to a kernel that reads inputs as
    the library does; LightGBM's reading (|x| <= 1e-35 -> 0, +-inf clamped) and XGBoost's missing=
    value still apply where the kernel does not do them, and other dtypes and layouts are converted."""
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    edge = X[:8].copy()
    edge[0, 0], edge[1, 0], edge[2, 0], edge[3, 0] = 1e-36, -1e-36, np.inf, -np.inf
    edge[4, 0] = -1.0  # XGBoost's missing= value below
    cases = (
        lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(X, y),
        xgb.XGBClassifier(n_estimators=5, max_depth=3, missing=-1.0).fit(X, y),
    )
    for model in cases:
        native = model.predict_proba(edge)
        for backend in ("cpu", "torch"):
            cf = trees.compile(model, backend=backend)
            x = torch.as_tensor(edge)
            out = cf.predict_proba(x)
            np.testing.assert_allclose(out.numpy(), native, atol=1e-6, rtol=0)
            assert cf._input(x)[0] is x or not cf._plain_inputs, backend
            for other in (x.double(), x.t().contiguous().t()):  # converted: float64, not contiguous
                assert cf._input(other)[0] is not other
                np.testing.assert_allclose(cf.predict_proba(other).numpy(), native, atol=1e-6, rtol=0)
    x = torch.as_tensor(edge)
    read = trees.compile(cases[0], backend="torch")._input(x)[0]  # the torch strategies read raw values
    assert read is not x and read[0, 0] == 0 and read[1, 0] == 0 and read[2, 0] == np.finfo(np.float32).max
    assert trees.compile(cases[0], backend="cpu")._input(x)[0] is x  # the C++ kernel reads like LightGBM
    read = trees.compile(cases[1], backend="cpu")._input(x)[0]  # missing=-1.0 becomes NaN first
    assert read is not x and torch.isnan(read[4, 0]) and not torch.isnan(x[4, 0])


def test_cpu_outputs_equal_the_native_libraries_bit_for_bit():
    """Note [Fused finish] on the cpu backend: the kernels' sums go through the same steps as the native
    libraries (float32 expf for XGBoost, double exp for LightGBM, their softmax, scikit-learn's numpy
    softmax and IsolationForest score, the mean for forests), so probabilities, scores and transformed
    predictions equal theirs bit for bit (our float64 values are the library's float32 values exactly,
    XGBoost's binary 1 - p included), whole and in batches of 1 and 7 rows, on every kernel the forest
    takes."""
    for model, rows in finish_models():
        method = next(m for m in ("predict_proba", "score_samples", "predict") if hasattr(model, m))
        want = getattr(model, method)(rows)
        for strategy in ("auto", "perfect", "bitvector", "traverse"):
            try:
                cf = trees.compile(model, backend="cpu", strategy=strategy)
            except ValueError:
                continue  # the forest does not fit this kernel
            got = getattr(cf, method)(rows)
            assert np.array_equal(got, want.astype(np.float64)), (type(model).__name__, strategy)
            for size in (1, 7):
                parts = [getattr(cf, method)(rows[i : i + size]) for i in range(0, 70, size)]
                assert np.array_equal(np.concatenate(parts), got[:70]), (type(model).__name__, strategy, size)


def test_finish_sums_checks_its_arguments():
    from pyzero import _native

    C = _native.require("finish_sums")
    raw = torch.zeros((3, 2), dtype=torch.float64)
    base = torch.zeros(2, dtype=torch.float64)
    assert C.finish_sums(raw, base, [1.0, 1.0, 0.0, 0.0], True).equal(
        torch.full((3, 2), 0.5, dtype=torch.float64)
    )
    with pytest.raises(
        RuntimeError, match=r"raw must be a contiguous float64 CPU or CUDA tensor of shape \(rows, outputs\)"
    ):
        C.finish_sums(raw.float(), base, [1.0, 1.0, 0.0, 0.0], True)
    with pytest.raises(RuntimeError, match="base must hold one float64 per output"):
        C.finish_sums(raw, base[:1], [1.0, 1.0, 0.0, 0.0], True)
    with pytest.raises(RuntimeError, match="finish pair needs one output, the forest has 2"):
        C.finish_sums(raw, base, [1.0, 1.0, 0.0, 1.0], True)
    with pytest.raises(RuntimeError, match=r"finish must be \[\] or \[kind, scale, divisor, pair\], got 3"):
        C.finish_sums(raw, base, [1.0, 1.0, 0.0], True)
    with pytest.raises(RuntimeError, match="softmax takes scale 1, a divisor >= 0 and no pair"):
        C.finish_sums(raw, base, [3.0, 2.0, 0.0, 0.0], True)
    rows = torch.tensor([[0.5, -1.0], [3.0, 3.0]], dtype=torch.float64)
    shift = torch.tensor([0.25, -0.5], dtype=torch.float64)
    for f32 in (False, True):
        p = C.finish_sums(rows, base, [3.0, 1.0, 0.0, 0.0], f32)
        torch.testing.assert_close(p, torch.softmax(rows, dim=1), rtol=0, atol=1e-7)
        mean = C.finish_sums(rows, shift, [3.0, 1.0, 4.0, 0.0], f32)  # the mean first: sums / 4 + base
        assert torch.equal(mean, C.finish_sums(rows / 4 + shift, shift, [3.0, 1.0, 0.0, 0.0], f32))


def test_libm_exp_equals_the_host_libm():
    """Note [Library exp]: the libm_exp op's host build (the code the GPU finish runs) equals the host's
    expf (through ctypes) and exp (math.exp) bit for bit; tests/cpp/test_libm_exp.cpp covers every float."""
    import ctypes
    import ctypes.util

    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.expf.restype, libm.expf.argtypes = ctypes.c_float, [ctypes.c_float]
    for dtype, host in ((torch.float32, libm.expf), (torch.float64, math.exp)):
        x = libm_exp_samples(dtype, 4000)
        got = torch.ops.pyzero.libm_exp(x)
        assert got.dtype == dtype and got.shape == x.shape
        want = torch.tensor([_host_exp(host, v) for v in x.tolist()], dtype=dtype)
        same = (got == want) | (got.isnan() & want.isnan())
        assert bool(same.all()), (dtype, x[~same][:5], got[~same][:5], want[~same][:5])
    with pytest.raises(RuntimeError, match="x must be float32 or float64, got Half"):
        torch.ops.pyzero.libm_exp(torch.zeros(3, dtype=torch.float16))


def test_libm_softplus_is_the_host_log1p_of_exp():
    """LightGBM's cross_entropy_lambda output (Note [Host finishes]): log1p(exp(x)) with the host's libm,
    element for element as math.log1p(math.exp(x)) gives it; other dtypes and devices are refused."""
    x = libm_exp_samples(torch.float64, 2000)
    got = torch.ops.pyzero.libm_softplus(x)
    want = torch.tensor([math.log1p(_host_exp(math.exp, v)) for v in x.tolist()], dtype=torch.float64)
    assert bool(((got == want) | (got.isnan() & want.isnan())).all())
    with pytest.raises(RuntimeError, match="x must be a float64 CPU tensor, got Float"):
        torch.ops.pyzero.libm_softplus(x.float())


def _host_exp(host, v: float) -> float:
    """host(v), with Python's OverflowError as libm's infinity."""
    try:
        return host(v)
    except OverflowError:
        return math.inf
