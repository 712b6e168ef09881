"""Rows/s of the perfect-tree CPU kernel (pyzero/trees/fast_cpu.py) against XGBoost's inplace_predict,
LightGBM's predict and the PackedForest kernel, on the same threads; methods are interleaved within
every repeat and the medians reported, because the 2-core machine is shared.

    python bench/bench_fast_cpu.py [--rows 10000] [--trees 100] [--depths 8] [--repeats 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pyzero import trees
from pyzero.trees import strategies
from pyzero.trees.fast_cpu import PerfectForest

FEATURES = 28
TRAIN_ROWS = 20_000


def median_seconds(fns: dict, repeats: int) -> dict:
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def run_depth(args, depth: int, Xtr, y, X) -> None:
    import lightgbm as lgb
    import xgboost as xgb

    x = torch.as_tensor(X)
    xm = xgb.XGBClassifier(
        n_estimators=args.trees, max_depth=depth, tree_method="hist", n_jobs=args.threads
    ).fit(Xtr, y)
    lm = lgb.LGBMClassifier(
        n_estimators=args.trees, max_depth=depth, num_leaves=2**depth - 1, verbose=-1, n_jobs=args.threads
    ).fit(Xtr, y)
    booster = xm.get_booster()
    fns, extra = {}, {}
    fns["XGBoost inplace_predict"] = lambda: booster.inplace_predict(X)
    fns["LightGBM predict"] = lambda: lm.predict(X, raw_score=True, num_threads=args.threads)
    for name, model in (("XGBoost", xm), ("LightGBM", lm)):
        f = trees.compile(model).forest
        pf = PerfectForest.from_forest(f)
        pk = strategies.PackedForest(f)
        base = torch.as_tensor(f.base, dtype=torch.float64)
        f32 = f.extra.get("accumulate") == "float32"
        extra[name] = (f.max_depth, pf is not None)
        if pf is not None:
            fns[f"{name} perfect"] = lambda pf=pf, base=base, f32=f32: pf.raw(x, base, f32)
        fns[f"{name} packed"] = lambda pk=pk, base=base, f32=f32: pk.raw(x, base, f32)
    res = median_seconds(fns, args.repeats)
    print(
        f"--- {args.trees} trees, max_depth {depth} (IR depths {extra}), {args.rows} rows, "
        f"{FEATURES} features, {args.threads} threads, torch {torch.__version__}"
    )
    for k, s in res.items():
        print(f"{k:28s} {args.rows / s / 1e6:8.3f} M rows/s")
    if args.latency:
        x1, X1 = x[:1], X[:1]
        lat = {
            "XGBoost inplace_predict": lambda: booster.inplace_predict(X1),
            "LightGBM predict": lambda: lm.predict(X1, raw_score=True, num_threads=args.threads),
        }
        for name, model in (("XGBoost", xm), ("LightGBM", lm)):
            f = trees.compile(model).forest
            pf, pk = PerfectForest.from_forest(f), strategies.PackedForest(f)
            base = torch.as_tensor(f.base, dtype=torch.float64)
            if pf is not None:
                lat[f"{name} perfect"] = lambda pf=pf, base=base: pf.raw(x1, base, True)
            lat[f"{name} packed"] = lambda pk=pk, base=base: pk.raw(x1, base, True)
        res = median_seconds(lat, 300)
        for k, s in res.items():
            print(f"batch 1 {k:28s} {s * 1e6:8.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--depths", default="8")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency", action="store_true", help="also batch-1 latency (microseconds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    Xtr = rng.standard_normal((TRAIN_ROWS, FEATURES)).astype(np.float32)
    y = (Xtr[:, :4].sum(axis=1) + 0.5 * rng.standard_normal(TRAIN_ROWS) > 0).astype(int)
    X = rng.standard_normal((args.rows, FEATURES)).astype(np.float32)
    for depth in [int(d) for d in args.depths.split(",")]:
        run_depth(args, depth, Xtr, y, X)


if __name__ == "__main__":
    main()
