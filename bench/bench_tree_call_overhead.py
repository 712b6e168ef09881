"""Host time per call of the GPU tree path at batch 1 (Note [Prepared walks] in
csrc/trees/tree_walk_plan.h): the pyzero::tree_walk op through the dispatcher, a prepared WalkPlan, and
predict_proba through the full path and through its prepared calls, for tensor and numpy rows.

The forest is one stump, so the walk itself costs next to nothing and the times are the call overhead.
--device cpu (the default) wires the CUDA backend's Python side to the op's host twin on CPU tensors;
--device cuda runs the real CUDA backend (synchronised after every call). Medians of interleaved calls.

    python bench/bench_tree_call_overhead.py [--device cpu] [--calls 20000]
"""

from __future__ import annotations

import argparse

import common
import lightgbm as lgb
import numpy as np
import torch

from pyzero import _native, trees
from pyzero.trees import gpu

FEATURES = 28


def compiled(model, device: str, prepared: bool):
    """The model on the CUDA backend (on `device` cpu: its Python side over the op's host twin)."""
    if device == "cuda":
        cf = trees.compile(model, device="cuda")
    else:
        cf = trees.compile(model, backend="cpu")
        cf.backend = "cuda"
        cf._gpu = cf._kernel = gpu.GpuRunner(cf.forest, cf.device, "cuda", cf._input_dtype, tune=False)
        cf._plans = {kind: _native.C.WalkPlans() for kind in ("raw", "transformed", "proba")}
    if not prepared:
        cf._plans = {}
    return cf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--calls", type=int, default=20_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, FEATURES)).astype(np.float32)
    model = lgb.LGBMClassifier(n_estimators=1, num_leaves=2, verbose=-1).fit(X, X[:, 0] > 0)
    fast, full = compiled(model, args.device, True), compiled(model, args.device, False)
    rows = X[:1].copy()
    x = torch.as_tensor(rows, device=args.device)
    for cf in (fast, full):  # tunes the bucket and prepares its calls
        cf.predict_proba(x), cf.predict_proba(rows)
    cfg = fast._gpu.config(1)
    lay = fast._gpu.layout(cfg.layout)
    finish, f32 = fast._launch("proba")
    plan = fast._plans["proba"].plan_for(x)

    def synced(fn):
        if args.device == "cpu":
            return fn

        def call():
            fn()
            torch.cuda.synchronize()

        return call

    fns = {
        "tree_walk op": lambda: lay.walk(x, fast._base, f32, False, cfg.cuda_args(), finish=finish),
        "WalkPlan": lambda: plan(x),
        "predict_proba tensor, full path": lambda: full.predict_proba(x),
        "predict_proba tensor, prepared": lambda: fast.predict_proba(x),
        "predict_proba numpy, full path": lambda: full.predict_proba(rows),
        "predict_proba numpy, prepared": lambda: fast.predict_proba(rows),
    }
    med = common.interleaved_medians({k: synced(f) for k, f in fns.items()}, "cpu", args.calls, warmup=200)
    print(f"one stump, batch 1, {common.machine(args.device)}: median host us per call")
    for name, s in med.items():
        print(f"  {name:34s} {s * 1e6:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
