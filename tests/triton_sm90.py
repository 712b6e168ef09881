"""Compiles every Triton kernel launch that pyzero's Triton backends make, for an H100 (sm_90), on a
machine without a GPU: the real launches of the tree twin (every layout, program shape, output and
finish of the models below), of Note [Library exp]'s helpers and of the fused AdamW, each compiled by
Triton (PTX, then ptxas to a cubin) instead of run. Prints one JSON line per distinct kernel:

    {"kernel", "constants" (its constexpr arguments by name), "signature" (the other arguments'
     types), "num_warps", "enable_fp_fusion",
     "ptx_ops" (counts of the floating-point PTX operations that set rounding)}

Run by tests/test_triton_sm90.py as ``python -m tests.triton_sm90`` without TRITON_INTERPRET (the
kernels must be JIT functions, not the interpreter's), so compile errors and approximate math show
up in CI before a GPU session does.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import sys
import warnings
from collections import Counter

import numpy as np
import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

# The card the kernels are compiled for (the device tool's H100 and H200).
TARGET = GPUTarget("cuda", 90, 32)
# PTX floating-point operations whose rounding the tree kernels' exactness depends on.
PTX_OPS = re.compile(
    r"\b((?:fma|div|rcp|sqrt|ex2|lg2|mul|add|sub)\.(?:rn\.|approx\.|full\.|ftz\.)*(?:f32|f64))\b"
)


class _TargetOnly:
    """The driver Triton asks for the target, device and stream; nothing is launched."""

    def get_current_target(self) -> GPUTarget:
        return TARGET

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


def _compile_instead_of_launch(compiled: dict):
    """JITFunction.run that compiles (warmup) and records the kernel instead of launching it."""
    run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        for param, arg in zip(self.params, args, strict=False):
            if param.name == "out_ptr":  # zeros: leaf ids and value rows the callers can index with
                arg.zero_()
        compiled[kernel.hash] = (self, kernel)
        return kernel

    return record


def _launch_everything() -> None:
    """The launches: the tree twin over the models of tests/trees (CPU tensors: only their shapes,
    dtypes and alignment reach the compiler), the libm helpers and the AdamW kernel."""
    import lightgbm as lgb
    import pandas as pd
    import xgboost as xgb
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
    )

    from pyzero import ops, trees
    from pyzero.kernels import libm_triton
    from tests.trees.helpers import mixed_data

    X, y = mixed_data(n=300)
    Xf = np.nan_to_num(X)
    cats = pd.DataFrame({"a": pd.Categorical(np.random.default_rng(1).integers(0, 5, 300)), "b": Xf[:, 0]})
    yc = (cats["a"].cat.codes.to_numpy() % 2) + cats["b"].to_numpy()
    models = [
        (X, xgb.XGBClassifier(n_estimators=4, max_depth=3).fit(X, y["bin"])),  # float32 sigmoid, pair
        (X, xgb.XGBClassifier(n_estimators=3, max_depth=3).fit(X, y["multi"])),  # sums for finish_sums
        (Xf, xgb.XGBRegressor(objective="count:poisson", n_estimators=4, max_depth=3).fit(Xf, y["count"])),
        (X, lgb.LGBMClassifier(n_estimators=4, num_leaves=6, sigmoid=0.7, verbose=-1).fit(X, y["bin"])),
        (
            X,
            lgb.LGBMRegressor(objective="poisson", n_estimators=4, num_leaves=6, verbose=-1).fit(
                X, y["count"]
            ),
        ),
        (
            cats,
            lgb.LGBMRegressor(n_estimators=4, num_leaves=6, min_child_samples=5, verbose=-1).fit(cats, yc),
        ),
        (Xf, RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(Xf, y["bin"])),  # mean
        (Xf, GradientBoostingClassifier(n_estimators=3, max_depth=2).fit(Xf, y["bin"])),  # double sigmoid
        (X, HistGradientBoostingRegressor(max_iter=3, max_depth=3).fit(X, y["reg"])),  # float64 rows
    ]
    shapes = ({"block_r": 64, "block_t": 8, "tree_split": 1}, {"block_r": 16, "block_t": 2, "tree_split": 2})
    for data, model in models:
        rows = data.iloc[:20] if isinstance(data, pd.DataFrame) else data[:20]
        for layout in trees.compile(model, backend="triton", device="cpu", tune=False)._gpu.eligible:
            for shape in shapes:
                cf = trees.compile(model, backend="triton", device="cpu", tune={"layout": layout, **shape})
                for method in ("predict_proba", "predict", "decision_function", "apply"):
                    if hasattr(model, method):
                        getattr(cf, method)(rows)
    for dtype in (torch.float32, torch.float64):
        libm_triton.exp(torch.zeros(10, dtype=dtype))
    p, g = torch.zeros(1000), torch.ones(1000)
    m, v = torch.zeros(1000), torch.zeros(1000)
    ops.fused_adamw([p], [g], [m], [v], [torch.tensor([1.0])], lr=1e-3, backend="triton")


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET: the kernels must be JIT functions to be compiled")
    driver.set_active(_TargetOnly())
    compiled: dict = {}
    JITFunction.run = _compile_instead_of_launch(compiled)
    import pyzero.kernels

    for module in pkgutil.iter_modules(pyzero.kernels.__path__):  # JIT functions: before the flag below
        importlib.import_module(f"pyzero.kernels.{module.name}")
    os.environ["TRITON_INTERPRET"] = "1"  # the backends' device checks then take CPU tensors
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # outputs are never written
        warnings.simplefilter("ignore")
        _launch_everything()
    for fn, kernel in compiled.values():
        names = [p.name for p in fn.params]
        constants = {names[path[0]]: value for path, value in kernel.src.constants.items() if len(path) == 1}
        line = {
            "kernel": fn.fn.__name__,
            "constants": {
                k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in constants.items()
            },
            "signature": {k: str(v) for k, v in kernel.src.signature.items() if v != "constexpr"},
            "num_warps": kernel.metadata.num_warps,
            "enable_fp_fusion": kernel.metadata.enable_fp_fusion,
            "ptx_ops": Counter(PTX_OPS.findall(kernel.asm["ptx"])),
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
