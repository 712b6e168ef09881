"""The C++ tree kernel against the portable torch traversal, batch sizes, threads and the op schema."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import ensemble

from pyzero import trees

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
