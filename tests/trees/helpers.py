"""Shared assertion of the tree tests."""

from __future__ import annotations

import os

import numpy as np
import torch

from pyzero import _native, trees
from pyzero.trees import compiled, fast_cpu, torch_strategies

# Device of the torch strategies in the tests (bench/gpu_check.sh sets cuda).
DEVICE = os.environ.get("PYZERO_TEST_DEVICE", "cpu")
# Every way to run a forest: (backend, strategy). The default compile() is checked against the native
# library; each of these against the default, on the same rows.
VARIANTS = (
    ("cpu", "perfect"),
    ("cpu", "bitvector"),
    ("cpu", "traverse"),
    ("torch", "traverse"),
    ("torch", "perfect"),
    ("torch", "gemm"),
)
# Two ways of summing the same float64 leaf values may differ by rounding only (raw scores); outputs
# transformed in float32 (XGBoost's sigmoid/softmax) may differ by an ulp between CPU and GPU math
# libraries, so they are held to the bound against the native library.
VARIANT_ATOL = 1e-12
OUTPUT_ATOL = 1e-6


def mixed_data(n=500, features=6, seed=0, dtype=np.float32, zero_rate=0.0, coarse_column=True):
    """(X [n, features] of `dtype` with 5% NaN, zero_rate exact zeros and, with coarse_column, column 2 in
    steps of 0.5 (ties, so thresholds fall between repeated values), {target name: y}) for the
    converter tests: bin, multi (3 classes), reg, count (Poisson), rank (relevance 0-3)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(dtype)
    if coarse_column:
        X[:, 2] = np.round(X[:, 2] * 2) / 2
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < zero_rate] = 0.0
    Xf = np.nan_to_num(X)
    return X, {
        "bin": (Xf[:, 0] + Xf[:, 1] > 0).astype(int),
        "multi": np.digitize(Xf[:, 2], [-0.5, 0.5]),
        "reg": Xf[:, 0] * 2 + np.sin(Xf[:, 4]),
        "count": rng.poisson(np.exp(Xf[:, 0] * 0.5)),
        "rank": rng.integers(0, 4, n),
    }


def finish_models():
    """[(fitted model, rows)] of every finish a library applies to its sums (Note [Fused finish]):
    XGBoost's float32 sigmoid, exp and softmax (scipy's for multi:softmax) and binary:hinge's 0/1,
    LightGBM's double ones (a sigmoid scale too) and its log1p(exp(x)), scikit-learn's forest means,
    sigmoid (of 2 x for the exponential loss), softmax, numpy exp and IsolationForest score."""
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn import ensemble

    X, ys = mixed_data(n=2000)
    Xd = np.nan_to_num(X)  # scikit-learn's forests: no missing values
    return [
        (xgb.XGBClassifier(n_estimators=30, max_depth=6).fit(X, ys["bin"]), X),
        (xgb.XGBRegressor(n_estimators=30, max_depth=5, objective="count:poisson").fit(X, ys["count"]), X),
        (lgb.LGBMClassifier(n_estimators=30, verbose=-1).fit(X, ys["bin"]), X),
        (
            lgb.LGBMClassifier(n_estimators=30, verbose=-1, objective="binary", sigmoid=0.7).fit(
                X, ys["bin"]
            ),
            X,
        ),
        (lgb.LGBMRegressor(n_estimators=30, verbose=-1, objective="poisson").fit(X, ys["count"]), X),
        (  # log1p(exp(x)): the host's libm
            lgb.LGBMRegressor(n_estimators=10, verbose=-1, objective="cross_entropy_lambda").fit(
                X, ys["bin"] * 0.8 + 0.1
            ),
            X,
        ),
        (xgb.XGBClassifier(n_estimators=20, max_depth=6).fit(X, ys["multi"]), X),  # softmax in float32
        (xgb.XGBClassifier(n_estimators=8, objective="multi:softmax").fit(X, ys["multi"]), X),  # scipy's
        (xgb.XGBClassifier(n_estimators=8, objective="binary:hinge").fit(X, ys["bin"]), X),  # the sign
        (lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(X, ys["multi"]), X),  # softmax in double
        (  # rf: the softmax of the mean over rounds (three trees a round)
            lgb.LGBMClassifier(
                n_estimators=8, boosting_type="rf", bagging_freq=1, bagging_fraction=0.7, verbose=-1
            ).fit(X, ys["multi"]),
            X,
        ),
        (ensemble.RandomForestClassifier(20, max_depth=8, random_state=0).fit(Xd, ys["bin"]), Xd),
        (ensemble.RandomForestRegressor(20, max_depth=8, random_state=0).fit(Xd, ys["reg"]), Xd),
        (  # three classes: stored fractions that sum to 1 only to an ulp
            ensemble.RandomForestClassifier(20, max_depth=8, random_state=0).fit(Xd, ys["multi"]),
            Xd,
        ),
        (ensemble.GradientBoostingClassifier(n_estimators=20, max_depth=3).fit(Xd, ys["bin"]), Xd),
        (ensemble.GradientBoostingClassifier(n_estimators=10, max_depth=3).fit(Xd, ys["multi"]), Xd),
        (ensemble.GradientBoostingClassifier(n_estimators=10, loss="exponential").fit(Xd, ys["bin"]), Xd),
        (
            ensemble.HistGradientBoostingRegressor(max_iter=10, loss="poisson").fit(X, ys["count"]),
            X,
        ),  # np.exp
        (ensemble.HistGradientBoostingClassifier(max_iter=10).fit(X, ys["multi"]), X),  # numpy's softmax
        (ensemble.IsolationForest(n_estimators=20, random_state=0).fit(Xd), Xd),  # numpy's 2 ** -x
    ]


def libm_exp_samples(dtype: torch.dtype, n: int, seed: int = 0) -> torch.Tensor:
    """[~5 n] values of `dtype` (float32: expf's inputs, float64: exp's) that Note [Library exp] is held to
    the host's libm on: random bit patterns, results neither 0 nor infinite, the finishes' range, results
    near and below the smallest normal, and the special values."""
    rng = np.random.default_rng(seed)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    uint = np.uint32 if dtype == torch.float32 else np.uint64
    lo, hi = (-103.98, 88.73) if dtype == torch.float32 else (-745.2, 709.8)
    low_normal = -87.4 if dtype == torch.float32 else -708.4
    info = np.finfo(np_dtype)
    specials = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, info.smallest_subnormal, info.max, lo, hi]
    parts = [
        rng.integers(0, np.iinfo(uint).max, n, dtype=uint, endpoint=True).view(np_dtype),
        rng.uniform(lo, hi, n),
        rng.uniform(-40.0, 40.0, n),
        rng.uniform(lo, low_normal, n),
        rng.uniform(lo * 1.1, hi * 1.1, n),
        np.asarray(specials),
    ]
    return torch.from_numpy(np.concatenate([np.asarray(p, dtype=np_dtype) for p in parts]))


def variants(model):
    """CompiledForests of model for every backend and strategy that can run it."""
    forest = trees.compile(model, backend="torch", strategy="traverse").forest
    fits = torch_strategies.eligible(forest)
    if forest.extra.get("input") == "float64":  # Note [Binned float64 inputs]
        forest = fast_cpu.BinnedRows(forest).forest if fast_cpu.why_not_binned(forest) is None else None
    fits_cpu = {
        "perfect": forest is not None and fast_cpu.why_ineligible(forest) is None,
        "bitvector": forest is not None and fast_cpu.why_not_bitvector(forest) is None,
        "traverse": True,
    }
    for backend, strategy in VARIANTS:
        if (backend == "cpu" and not fits_cpu[strategy]) or (backend == "torch" and not fits[strategy]):
            continue
        yield (
            (backend, strategy),
            trees.compile(
                model, backend=backend, strategy=strategy, device=DEVICE if backend == "torch" else None
            ),
        )


def assert_exact(model, X, *context, leaves: bool = True) -> dict:
    """Compiles `model`, runs trees.verify on X (plus its adversarial rows) and asserts outputs within
    1e-6 and identical labels; with `leaves`, that the native leaf indices were compared and agree.
    Then every other backend and strategy (variants) must give the same outputs and leaves."""
    cf = trees.compile(model)
    report = trees.verify(model, cf, X)
    assert report["ok"], (type(model).__name__, *context, report)
    if leaves:
        assert report.get("leaves_equal") is True, (type(model).__name__, *context, report)
    rows, leaf_rows = compiled.verification_rows(model, cf, X)
    method = "predict_proba" if cf.forest.classes is not None else "decision_function"
    if cf.forest.post_transform == "isolation":
        method = "score_samples"
    ref, ref_raw, ref_leaves = getattr(cf, method)(rows), cf.decision_function(rows), cf.apply(leaf_rows)
    assert_binary_pair(ref, cf.forest, "default")
    for name, other in variants(model):
        x = rows if name[0] == "cpu" else _on(rows, other)
        out, raw = _np(getattr(other, method)(x)), _np(other.decision_function(x))
        assert_binary_pair(out, cf.forest, name)
        np.testing.assert_allclose(out, ref, atol=OUTPUT_ATOL, rtol=0, err_msg=str(name))
        np.testing.assert_allclose(raw, ref_raw, atol=VARIANT_ATOL, rtol=0, err_msg=f"raw {name}")
        xl = leaf_rows if name[0] == "cpu" else _on(leaf_rows, other)
        np.testing.assert_array_equal(_np(other.apply(xl)), ref_leaves, err_msg=str(name))
    return report


def assert_binary_pair(proba, forest, *context) -> None:
    """A binary classifier's [P(0), P(1)] (numpy or tensor; other outputs pass): P(0) is 1 - P(1) in the
    library's precision, float32 for XGBoost (Note [Fused finish])."""
    if forest.classes is None or forest.n_outputs != 1:
        return
    p = _np(proba)
    one = p[:, 1]
    want = (
        (1 - one.astype(np.float32)).astype(np.float64)
        if forest.extra.get("accumulate") == "float32"
        else 1 - one
    )
    np.testing.assert_array_equal(p[:, 0], want, err_msg=str(context))


def _on(rows, cf):
    import torch

    return torch.as_tensor(np.asarray(rows), dtype=cf._input_dtype).to(cf.device)


def _np(out):
    return out.cpu().numpy() if hasattr(out, "cpu") else np.asarray(out)


def assert_same_on_every_isa(kernel, x, base, want_raw: dict, want_leaves, batches) -> None:
    """kernel.raw (float64 and float32 sums) and kernel.leaves (a C++ CPU kernel of fast_cpu) on every ISA
    this processor runs, on 1 and 2 threads, whole and in batches of each of `batches` rows: want_raw[f32]
    and want_leaves bit for bit. Restores the ISA and the thread count."""
    C = _native.require("the CPU kernel ISA tests")
    threads = torch.get_num_threads()
    isa, ran = C.cpu_isa(), set()
    try:
        for name in ("scalar", "avx2", "avx512"):
            try:
                C.set_cpu_isa(name)
            except ValueError:
                continue  # not supported by this processor
            ran.add(name)
            for n in (1, 2):
                torch.set_num_threads(n)
                for f32 in (False, True):
                    assert torch.equal(kernel.raw(x, base, f32), want_raw[f32]), (name, n, f32)
                assert torch.equal(kernel.leaves(x), want_leaves), (name, n)
                for b in batches:
                    parts = [
                        kernel.raw(x[i : i + b], base, True) for i in range(0, min(x.shape[0], 3 * b + 5), b)
                    ]
                    assert torch.equal(torch.cat(parts), want_raw[True][: sum(p.shape[0] for p in parts)]), (
                        name,
                        b,
                    )
                    assert torch.equal(kernel.leaves(x[:b]), want_leaves[:b]), (name, b)
    finally:
        C.set_cpu_isa(isa)
        torch.set_num_threads(threads)
    assert "scalar" in ran and isa in ran
