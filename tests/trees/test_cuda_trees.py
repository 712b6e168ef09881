"""On a CUDA device: the portable torch strategies and the CUDA node kernel give the CPU results bit for
bit (tensors in and out stay on the GPU); categorical forests included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import ensemble

from pyzero import trees
from pyzero.trees import torch_strategies

pytestmark = pytest.mark.cuda


def fitted_models():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((800, 6)).astype(np.float32)
    X[:, 0] = rng.integers(0, 12, 800)
    X[rng.random(X.shape) < 0.05] = np.nan
    Xf = np.nan_to_num(X)
    y = (np.sin(Xf[:, 0]) + Xf[:, 1] > 0).astype(int)
    out = [
        ensemble.RandomForestClassifier(20, max_depth=8, random_state=0).fit(X, y),
        ensemble.GradientBoostingClassifier(n_estimators=20, max_depth=3).fit(Xf, y),
        ensemble.HistGradientBoostingClassifier(max_iter=20, categorical_features=[0]).fit(X, y),
    ]
    try:
        import xgboost as xgb

        out.append(xgb.XGBClassifier(n_estimators=20, max_depth=6).fit(X, y))
        out.append(
            xgb.XGBClassifier(
                n_estimators=20, max_depth=4, enable_categorical=True, feature_types=["c"] + ["q"] * 5
            ).fit(X, y)
        )
    except ImportError:
        pass
    try:
        import lightgbm as lgb

        out.append(lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(X, y, categorical_feature=[0]))
        out.append(lgb.LGBMClassifier(n_estimators=20, verbose=-1, zero_as_missing=True).fit(Xf, y))
    except ImportError:
        pass
    return X, out


def test_torch_strategies_on_cuda_equal_cpu():
    X, models = fitted_models()
    for model in models:
        cpu = trees.compile(model, backend="torch", strategy="traverse")
        dtype = cpu._input_dtype
        ref = cpu.predict_proba(torch.as_tensor(X, dtype=dtype))
        ref_raw = cpu.decision_function(torch.as_tensor(X, dtype=dtype))
        ref_leaves = cpu.apply(torch.as_tensor(X, dtype=dtype))
        fits = torch_strategies.eligible(cpu.forest)
        for strategy in ("auto", "traverse", "perfect", "gemm"):
            if strategy != "auto" and not fits[strategy]:
                continue
            cf = trees.compile(model, backend="torch", strategy=strategy, device="cuda")
            x = torch.as_tensor(X, dtype=dtype, device="cuda")
            out = cf.predict_proba(x)
            assert out.device.type == "cuda"
            # raw scores bit for bit up to float64 summation order; float32 transforms (XGBoost) may
            # round differently in the GPU's math library: within the 1e-6 bound.
            torch.testing.assert_close(cf.decision_function(x).cpu(), ref_raw, atol=1e-12, rtol=0)
            torch.testing.assert_close(out.cpu(), ref, atol=1e-6, rtol=0)
            assert torch.equal(cf.apply(x).cpu(), ref_leaves), (type(model).__name__, strategy)
            np.testing.assert_allclose(cf.predict_proba(X), ref.numpy(), atol=1e-6, rtol=0)


# Batch sizes of the CUDA kernel test: one row, odd, one block's worth, many blocks.
CUDA_BATCHES = (1, 7, 128, 10_000)


def test_cuda_kernel_equals_the_cpu_node_kernel_bit_for_bit():
    import pyzero

    X, models = fitted_models()
    rng = np.random.default_rng(1)
    big = X[rng.integers(0, len(X), max(CUDA_BATCHES))]
    for model in models:
        cpu = trees.compile(model, backend="cpu", strategy="traverse")
        gpu = trees.compile(model, backend="cuda", device="cuda")
        dtype = cpu._input_dtype
        ref_raw = cpu.decision_function(big)
        ref_leaves = cpu.apply(big)
        for n in CUDA_BATCHES:  # each row gets the same bits at every batch size
            x = torch.as_tensor(big[:n], dtype=dtype, device="cuda")
            assert np.array_equal(gpu.decision_function(x).cpu().numpy(), ref_raw[:n]), (
                type(model).__name__,
                n,
            )
            assert np.array_equal(gpu.apply(x).cpu().numpy(), ref_leaves[:n]), (type(model).__name__, n)
        np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), atol=1e-6, rtol=0)
        x7 = torch.as_tensor(big[:7], dtype=dtype)
        assert torch.equal(pyzero.tree_predict_cuda(cpu.forest, x7.cuda()).cpu(), cpu._raw(cpu._input(x7)[0]))
