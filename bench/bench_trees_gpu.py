"""pyzero.trees' portable torch strategies on a CUDA GPU against Hummingbird (best of its three
strategies, torch backend on the same GPU) and the native CPU predictors (all CPU threads), with an
`exact` column (max |pyzero - native| <= 1e-6).

    python bench/bench_trees_gpu.py [--configs 100x8,500x8] [--batches 10k,1M] [--out results.json]

Inputs are numpy arrays on the host for every predictor (so transfers are included); pyzero is also
timed on a tensor already on the GPU ("pyzero dev").
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from bench_trees import higgs_like, parse_ints

from pyzero import trees

TRAIN_ROWS = 20_000
EXACT_TOL = 1e-6
# Seconds each predictor is timed for (after one warm-up call), at least MIN_CALLS calls.
BUDGET_S = 1.0
MIN_CALLS = 3


def timed(fn, budget_s: float = BUDGET_S) -> float:
    """Median seconds per call of fn (CUDA synchronised)."""
    fn()
    torch.cuda.synchronize()
    times, start = [], time.perf_counter()
    while len(times) < MIN_CALLS or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def models(n_trees: int, depth: int, X: np.ndarray, y: np.ndarray) -> list[tuple[str, object]]:
    out = []
    try:
        import xgboost as xgb

        out.append(("XGBoost", xgb.XGBClassifier(n_estimators=n_trees, max_depth=depth, tree_method="hist")))
    except ImportError:
        pass
    try:
        import lightgbm as lgb

        out.append(
            (
                "LightGBM",
                lgb.LGBMClassifier(n_estimators=n_trees, max_depth=depth, num_leaves=2**depth, verbose=-1),
            )
        )
    except ImportError:
        pass
    from sklearn.ensemble import RandomForestClassifier

    out.append(("sklearn RF", RandomForestClassifier(n_estimators=n_trees, max_depth=depth, n_jobs=-1)))
    return [(name, m.fit(X, y)) for name, m in out]


def hummingbird(model) -> dict[str, object]:
    try:
        import hummingbird.ml as hb
    except ImportError:
        return {}
    out = {}
    for strategy in ("gemm", "tree_trav", "perf_tree_trav"):
        try:
            hm = hb.convert(model, "torch", extra_config={"tree_implementation": strategy}).to("cuda")
            out[strategy] = hm
        except Exception as e:  # Hummingbird does not cover every model/strategy pair
            print(f"  hummingbird {strategy}: {type(e).__name__}: {str(e)[:100]}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="100x8,500x8")
    p.add_argument("--batches", default="10k,1M")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    batches = parse_ints(args.batches)
    X_all, y_all = higgs_like(np.random.default_rng(0), TRAIN_ROWS + max(batches))
    X_train, y_train = X_all[:TRAIN_ROWS], y_all[:TRAIN_ROWS]
    X_bench = X_all[TRAIN_ROWS:]
    rows = []
    for cfg in args.configs.split(","):
        n_trees, depth = (int(v) for v in cfg.split("x"))
        for name, model in models(n_trees, depth, X_train, y_train):
            cf = trees.compile(model, device="cuda")
            cf_triton = trees.compile(model, backend="triton", device="cuda")
            cf_cuda = trees.compile(model, backend="cuda", device="cuda")
            hbs = hummingbird(model)
            for batch in batches:
                Xb = X_bench[:batch]
                xd = torch.as_tensor(Xb, device="cuda")
                native = np.asarray(model.predict_proba(Xb))[:, 1]
                ours = np.asarray(cf.predict_proba(Xb))[:, 1]
                ours_triton = np.asarray(cf_triton.predict_proba(Xb))[:, 1]
                ours_cuda = np.asarray(cf_cuda.predict_proba(Xb))[:, 1]
                rec = {
                    "model": name,
                    "trees": n_trees,
                    "depth": depth,
                    "batch": batch,
                    "strategy": cf._torch_for(batch).name,
                    "max_diff": float(
                        max(np.max(np.abs(o - native)) for o in (ours, ours_triton, ours_cuda))
                    ),
                    "native": batch / timed(partial(model.predict_proba, Xb)),
                    "pyzero": batch / timed(partial(cf.predict_proba, Xb)),
                    "pyzero dev": batch / timed(partial(cf.predict_proba, xd)),
                    "triton dev": batch / timed(partial(cf_triton.predict_proba, xd)),
                    "cuda dev": batch / timed(partial(cf_cuda.predict_proba, xd)),
                }
                hb_rates = {}
                for s, hm in hbs.items():
                    try:
                        hb_rates[s] = batch / timed(partial(hm.predict_proba, Xb))
                    except torch.OutOfMemoryError:  # Hummingbird's gemm at 1M rows: tens of GB
                        print(f"  hummingbird {s} at {batch:,} rows: out of GPU memory")
                        torch.cuda.empty_cache()
                if hb_rates:
                    best = max(hb_rates, key=hb_rates.get)
                    rec["hummingbird"], rec["hb strategy"] = hb_rates[best], best
                rows.append(rec)
                print(rec, flush=True)
    table = [
        {
            "model": r["model"],
            "trees x depth": f"{r['trees']}x{r['depth']}",
            "batch": f"{r['batch']:,}",
            "strategy": r["strategy"],
            "native (CPU)": f"{r['native'] / 1e6:.2f} M",
            "pyzero": f"{r['pyzero'] / 1e6:.2f} M",
            "pyzero dev": f"{r['pyzero dev'] / 1e6:.2f} M",
            "triton dev": f"{r['triton dev'] / 1e6:.2f} M",
            "cuda dev": f"{r['cuda dev'] / 1e6:.2f} M",
            "HB best": f"{r['hummingbird'] / 1e6:.2f} M ({r['hb strategy']})" if "hummingbird" in r else "-",
            "x HB": f"{r['pyzero'] / r['hummingbird']:.1f}x" if "hummingbird" in r else "-",
            "exact": "yes" if r["max_diff"] <= EXACT_TOL else f"no ({r['max_diff']:.1e})",
        }
        for r in rows
    ]
    print(
        f"\n{common.machine('cuda')}: rows/s (numpy in, probabilities out; 'pyzero dev': torch strategies, "
        "input on the GPU; 'triton dev' / 'cuda dev': the Triton / CUDA node kernels, input on the GPU)"
    )
    common.print_table(table, list(table[0]) if table else [])
    if args.out:
        common.write_json(args.out, {"machine": common.machine("cuda"), "rows": rows})
    return 0 if all(r["max_diff"] <= EXACT_TOL for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
