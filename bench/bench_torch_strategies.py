"""Rows/s of the portable torch strategies (traverse, gemm, perfect) by depth and batch size; the
numbers behind torch_strategies.choose_strategy.

    python bench/bench_torch_strategies.py [--threads 2] [--depths 4,8,12] [--batches 1,100,10000]

XGBoost or LightGBM models (--library) of --trees trees on 28 features; raw scores
(strategy.raw_scores), median and best of interleaved repeats. A strategy that is ineligible for a
forest (size limits) prints "-". The tables behind the rule are in pyzero/trees/torch_strategies.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from pyzero.trees import compiled, strategies
from pyzero.trees import torch_strategies as ts

FEATURES = 28
TRAIN_ROWS = 20_000
# Wall-clock seconds of timed rounds per (depth, batch) cell; MIN_REPEATS..MAX_REPEATS rounds.
CELL_SECONDS = 2.0
MIN_REPEATS = 5
MAX_REPEATS = 400


def forest_for(library: str, n_trees: int, depth: int):
    """A binary classifier of n_trees trees: XGBoost (max_depth=depth, float32 accumulation), LightGBM
    (max_depth=depth, num_leaves=2^depth - 1) or LightGBM with num_leaves=31 and no depth limit."""
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(0)
    X = rng.standard_normal((TRAIN_ROWS, FEATURES)).astype(np.float32)
    y = X[:, :4].sum(axis=1) + np.sin(3 * X[:, 4:8]).sum(axis=1) + 0.5 * rng.standard_normal(TRAIN_ROWS) > 0
    if library == "xgboost":
        model = xgb.XGBClassifier(n_estimators=n_trees, max_depth=depth, tree_method="hist", n_jobs=2)
    elif library == "lightgbm":
        kw = dict(max_depth=depth, num_leaves=max(2, 2**depth - 1))
        model = lgb.LGBMClassifier(n_estimators=n_trees, verbose=-1, n_jobs=2, **kw)
    else:  # lightgbm31
        model = lgb.LGBMClassifier(n_estimators=n_trees, num_leaves=31, verbose=-1, n_jobs=2)
    return compiled.convert(model.fit(X, y.astype(int)))


def time_cells(fns: dict, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(median, min) seconds per call of each fn, called round-robin (so load from other processes hits all
    alike) until CELL_SECONDS have passed, with MIN_REPEATS rounds at least and MAX_REPEATS at most."""
    for fn in fns.values():
        fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < MIN_REPEATS or (time.perf_counter() - start < CELL_SECONDS and rounds < MAX_REPEATS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {k: (float(np.median(v)), float(np.min(v))) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--depths", default="4,8,12")
    ap.add_argument("--batches", default="1,100,10000")
    ap.add_argument("--library", default="xgboost", choices=["xgboost", "lightgbm", "lightgbm31"])
    ap.add_argument("--native", action="store_true", help="also time the C++ kernel (backend='cpu')")
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "out" / "bench_torch_strategies.json")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rng = np.random.default_rng(1)
    results = []
    names = ["traverse", "gemm", "perfect"]
    for depth in [int(d) for d in args.depths.split(",")]:
        forest = forest_for(args.library, args.trees, depth)
        base = torch.as_tensor(forest.base, dtype=torch.float64)
        f32 = forest.extra.get("accumulate") == "float32"
        built = {}
        for name in names:
            try:
                built[name] = ts.build(name, forest, device)
            except ValueError as e:
                print(f"depth {depth}: {name} ineligible ({e})")
        fns = {
            name: (
                lambda x, s=s, f=forest, b=base, f32=f32: s.raw_scores(x, f.n_trees, f.aggregation, b, f32)
            )
            for name, s in built.items()
        }
        if args.native:
            packed = strategies.PackedForest(forest)
            fns["cpu kernel"] = lambda x, p=packed, b=base, f32=f32: p.raw(x, b, f32)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.as_tensor(rng.standard_normal((batch, FEATURES)).astype(np.float32))
            row = {"depth": depth, "max_depth": forest.max_depth, "batch": batch}
            ref = built["traverse"].raw_scores(x, forest.n_trees, forest.aggregation, base, f32)
            for name, fn in fns.items():
                if name != "cpu kernel":
                    assert torch.equal(fn(x), ref), (name, depth, batch)
            for name, (median, best) in time_cells(fns, x).items():
                row[name] = round(batch / median)
                row[f"{name} best"] = round(batch / best)
            row["auto"] = ts.choose_strategy(forest, batch)
            results.append(row)
            print(row, flush=True)
    cols = ["depth", "max_depth", "batch", *names, *(["cpu kernel"] if args.native else [])]
    print(common.machine("cpu"))
    print("rows/s, median of the repeats (stalls when other processes share the cores count in):")
    common.print_table([{k: r.get(k, "-") for k in [*cols, "auto"]} for r in results], [*cols, "auto"])
    print("rows/s, best of the repeats:")
    best = [*cols[:3], *(f"{c} best" for c in cols[3:])]
    common.print_table([{k: r.get(k, "-") for k in best} for r in results], best)
    common.write_json(
        args.out, {"machine": common.machine("cpu"), "library": args.library, "results": results}
    )


if __name__ == "__main__":
    main()
