"""The Triton tree kernel (pyzero/kernels/tree_triton.py), every layout it reads and two program shapes,
against the C++ node kernel, bit for bit.

On CPU it runs under TRITON_INTERPRET=1 (tests/conftest.py), so the models and batches are small;
on a GPU machine the same tests run on CUDA tensors.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
)

import pyzero
from pyzero import trees
from pyzero.kernels import libm_triton
from tests.trees.helpers import assert_binary_pair, finish_models, libm_exp_samples, mixed_data

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Batch sizes: one row, a partial program, more than one program (BLOCK_R = 64).
BATCHES = (1, 7, 130)


def _models():
    X, y = mixed_data(n=300)
    Xf = np.nan_to_num(X)
    cats = pd.DataFrame({"a": pd.Categorical(np.random.default_rng(1).integers(0, 5, 300)), "b": Xf[:, 0]})
    yc = (cats["a"].cat.codes.to_numpy() % 2) + cats["b"].to_numpy()
    return [
        ("xgb multiclass, NaN", X, xgb.XGBClassifier(n_estimators=3, max_depth=3).fit(X, y["multi"])),
        (
            "xgb categorical",
            cats,
            xgb.XGBRegressor(n_estimators=4, max_depth=3, enable_categorical=True, tree_method="hist").fit(
                cats, yc
            ),
        ),
        (
            "lightgbm binary, NaN",
            X,
            lgb.LGBMClassifier(n_estimators=4, num_leaves=6, verbose=-1).fit(X, y["bin"]),
        ),
        (
            "lightgbm categorical",
            cats,
            lgb.LGBMRegressor(n_estimators=4, num_leaves=6, min_child_samples=5, verbose=-1).fit(cats, yc),
        ),
        (
            "random forest (mean)",
            Xf,
            RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(Xf, y["multi"]),
        ),
        ("gradient boosting", Xf, GradientBoostingClassifier(n_estimators=3, max_depth=2).fit(Xf, y["bin"])),
        (
            "hist gradient boosting (float64)",
            X,
            HistGradientBoostingRegressor(max_iter=3, max_depth=3).fit(X, y["reg"]),
        ),
        ("isolation forest", Xf, IsolationForest(n_estimators=3, random_state=0).fit(Xf)),
    ]


# (layout-independent) program shapes: rows and trees per step, and trees split over programs.
BLOCKS = (
    {"block_r": 64, "block_t": 8},
    {"block_r": 16, "block_t": 1},
    {"block_r": 16, "block_t": 2, "tree_split": 2},
)


@pytest.mark.parametrize("case", range(8))
def test_triton_kernel_equals_the_cpu_kernel_bit_for_bit(case):
    name, X, model = _models()[case]
    cpu = trees.compile(model, backend="cpu", strategy="traverse")
    rows = X.iloc[:130] if isinstance(X, pd.DataFrame) else X[:130]
    # the kernel's output (raw scores) bit for bit; post-transforms use the device's math library
    ref, ref_leaves = cpu._raw(cpu._input(rows)[0]).numpy(), cpu.apply(rows)
    auto = trees.compile(model, backend="triton", device=DEVICE)
    for layout in auto._gpu.eligible:
        for blocks in BLOCKS:
            tri = trees.compile(model, backend="triton", device=DEVICE, tune={"layout": layout, **blocks})
            assert np.array_equal(tri._raw(tri._input(rows)[0]).cpu().numpy(), ref), (name, layout, blocks)
            assert np.array_equal(tri.apply(rows), ref_leaves), (name, layout, blocks)
            for n in BATCHES:  # every batch size gives each row the same bits
                part = rows.iloc[:n] if isinstance(rows, pd.DataFrame) else rows[:n]
                assert np.array_equal(tri._raw(tri._input(part)[0]).cpu().numpy(), ref[:n]), (name, layout, n)


def test_triton_finishes_its_sums_equal_to_the_libraries():
    """Note [Fused finish] in the Triton twin, whole and split programs: sigmoid in float32 and scaled in
    double, exp, and the binary [1 - p, p] (1 - p in the library's precision), equal to the library's
    bit for bit (glibc's exp in Triton, Note [Library exp]; under the interpreter with the device's
    fused multiply-add, tests/conftest.py)."""
    X, y = mixed_data(n=300)
    Xf = np.nan_to_num(X)
    models = [
        (X, xgb.XGBClassifier(n_estimators=4, max_depth=3).fit(X, y["bin"])),
        (X, lgb.LGBMClassifier(n_estimators=4, num_leaves=6, sigmoid=0.7, verbose=-1).fit(X, y["bin"])),
        (
            Xf,
            xgb.XGBRegressor(objective="count:poisson", n_estimators=4, max_depth=3).fit(
                Xf, np.abs(y["reg"])
            ),
        ),
    ]
    for data, model in models:
        cpu = trees.compile(model, backend="cpu")
        rows = data[:40]
        for split in (1, 2):
            blocks = {"layout": "compact-bfs", "block_r": 16, "block_t": 2, "tree_split": split}
            tri = trees.compile(model, backend="triton", device=DEVICE, tune=blocks)
            assert tri._launch("proba" if hasattr(model, "predict_proba") else "transformed") is not None
            if hasattr(model, "predict_proba"):
                want = model.predict_proba(rows).astype(np.float64)
                for x in (rows, torch.as_tensor(rows)):  # the pair after the kernel, in the kernel
                    proba = tri.predict_proba(x)
                    assert np.array_equal(proba, want), (type(model).__name__, split)
                    assert_binary_pair(proba, cpu.forest, split, type(x))
            assert np.array_equal(tri.predict(rows), model.predict(rows).astype(np.float64))


def test_triton_outputs_equal_the_native_libraries_bit_for_bit():
    """test_cuda_outputs_equal_the_native_libraries_bit_for_bit for the Triton twin: every finish model,
    its finish in the kernel, in finish_sums after it or on the host (Note [Host finishes]), whole and in
    batches of 7, equal to the native library's bit for bit (on the CPU under the interpreter: its first
    21 rows)."""
    checked = []
    n = 21 if DEVICE == "cpu" else None
    for model, rows in finish_models():
        method = next(m for m in ("predict_proba", "score_samples", "predict") if hasattr(model, m))
        tri = trees.compile(model, backend="triton", device=DEVICE, tune=False)
        name = type(model).__name__
        rows = rows[:n]
        want = getattr(model, method)(rows).astype(np.float64)
        assert np.array_equal(getattr(tri, method)(rows), want), name
        parts = [getattr(tri, method)(rows[i : i + 7]) for i in range(0, 21, 7)]
        assert np.array_equal(np.concatenate(parts), want[:21]), name
        checked.append(name)
    assert len(checked) == 20, checked


def test_triton_softmax_goes_through_finish_sums_equal_to_the_libraries():
    """XGBoost's and LightGBM's multiclass probabilities on a GPU backend: the kernel's sums, then one
    finish_sums call (Note [Fused finish]), equal to the library's bit for bit from numpy and tensor
    rows (under the interpreter, on the host; the CUDA tests cover the device's finish_sums)."""
    X, y = mixed_data(n=300)
    rows = X[:40]
    blocks = {"layout": "compact-bfs", "block_r": 16, "block_t": 2, "tree_split": 1}
    for model in (
        xgb.XGBClassifier(n_estimators=3, max_depth=3).fit(X, y["multi"]),
        lgb.LGBMClassifier(n_estimators=3, num_leaves=6, verbose=-1).fit(X, y["multi"]),
    ):
        tri = trees.compile(model, backend="triton", device=DEVICE, tune=blocks)
        assert tri._launch("proba")[0][0] == trees.compiled.FINISH_SOFTMAX
        want = model.predict_proba(rows).astype(np.float64)
        assert np.array_equal(tri.predict_proba(rows), want), type(model).__name__
        got = tri.predict_proba(torch.as_tensor(rows, device=DEVICE)).cpu().numpy()
        assert np.array_equal(got, want), type(model).__name__


def test_tree_predict_triton_function_and_errors():
    X, y = mixed_data(n=200)
    model = xgb.XGBRegressor(n_estimators=3, max_depth=3).fit(X, y["reg"])
    cf = trees.compile(model, backend="cpu")
    x = torch.as_tensor(X[:20], device=DEVICE)
    raw = pyzero.tree_predict_triton(cf.forest, x)
    assert torch.equal(raw.cpu()[:, 0], torch.as_tensor(cf.decision_function(X[:20])))
    leaves = pyzero.tree_predict_triton(cf.forest, x, leaves=True)
    assert torch.equal(leaves.cpu(), torch.as_tensor(cf.apply(X[:20])))
    with pytest.raises(
        ValueError, match=r"takes strategy auto, traverse \(node layouts\) or perfect .* got 'gemm'"
    ):
        trees.compile(model, backend="triton", strategy="gemm", device=DEVICE)
    with pytest.raises(ValueError, match=r"X must be a 2-D float32 or float64 tensor"):
        pyzero.tree_predict_triton(cf.forest, x[0])


def test_triton_backend_reads_inputs_like_lightgbm_inside_the_kernel():
    X, y = mixed_data(n=300)
    model = lgb.LGBMClassifier(n_estimators=3, num_leaves=6, verbose=-1).fit(X, y["bin"])
    for layout in ("perfect", "compact-bfs"):
        tri = trees.compile(model, backend="triton", device=DEVICE, tune={"layout": layout, "block_r": 128})
        report = trees.verify(model, tri, X[:50])  # tiny values, +-inf and NaN among the adversarial rows
        assert report["ok"], (layout, report)


def test_triton_reads_row_slots_like_the_cuda_kernel():
    """Note [Row slots] in the Triton twin: perfect layouts of one, three and two row copies give the node
    kernel's raw scores and leaves bit for bit, and x with another column count is refused."""
    from pyzero.kernels import tree_triton
    from pyzero.trees import compiled, gpu_layout
    from tests.trees.test_gpu_layouts import _row_slot_forests

    for name, f, base, rows, copies in _row_slot_forests():
        node = compiled.CompiledForest(f, torch.device("cpu"), "traverse", "cpu")
        x = torch.as_tensor(rows[:70])
        f32 = f.extra.get("accumulate") == "float32"
        ref_raw, ref_leaves = node._kernel.raw(x, base, f32), node._kernel.leaves(x)
        xd, bd = x.to(DEVICE), base.to(DEVICE)
        for lay in ("perfect", "perfect-blocked"):
            g = gpu_layout.GpuLayout(f, lay, torch.float32, torch.device(DEVICE))
            assert g.copies == copies, (name, lay)
            raw = tree_triton.walk(g, xd, bd, f32, False, 64, 8)
            assert torch.equal(raw.cpu(), ref_raw), (name, lay)
            leaves = tree_triton.walk(g, xd, bd, False, True, 64, 8)
            assert torch.equal(leaves.cpu().long(), ref_leaves), (name, lay)
        if copies > 1:
            with pytest.raises(ValueError, match=f"exactly {f.n_features} features for a layout of {copies}"):
                tree_triton.walk(g, torch.cat([xd, xd[:, :1]], dim=1), bd, f32, False, 64, 8)


def test_triton_libm_exp_equals_the_host_build():
    """Note [Library exp] in Triton (pyzero/kernels/libm_triton.py) equals libm_exp.h's host build, which
    test_backends holds to the host's libm, bit for bit (under the interpreter with the device's fused
    multiply-add, tests/conftest.py); other dtypes are refused."""
    for dtype in (torch.float32, torch.float64):
        x = libm_exp_samples(dtype, 2000 if DEVICE == "cpu" else 1 << 20, seed=2)
        want = torch.ops.pyzero.libm_exp(x)
        got = libm_triton.exp(x.to(DEVICE)).cpu()
        assert got.dtype == dtype and got.shape == x.shape
        same = (got == want) | (got.isnan() & want.isnan())
        assert bool(same.all()), (dtype, x[~same][:5], got[~same][:5], want[~same][:5])
    with pytest.raises(ValueError, match=r"x must be float32 or float64, got torch\.float16"):
        libm_triton.exp(torch.zeros(3, dtype=torch.float16))
