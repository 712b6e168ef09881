"""How fast, and how exact, is pyzero.trees against the native predictors (scikit-learn, XGBoost,
LightGBM) and Hummingbird (best of its three tree strategies) on the same threads?

    python bench/bench_trees.py [--rows 10000] [--repeats 5]

Prints rows/s and an `exact` column (max |pyzero - native| <= 1e-6), writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from pyzero import trees

FEATURES = 28  # Hummingbird's benchmark configuration (HIGGS-like width)
TRAIN_ROWS = 20_000
EXACT_TOL = 1e-6


def models(n_trees: int, depth: int):
    out = []
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier

    out.append(("XGBoost", xgb.XGBClassifier(n_estimators=n_trees, max_depth=depth, tree_method="hist")))
    out.append(
        (
            "LightGBM",
            lgb.LGBMClassifier(n_estimators=n_trees, max_depth=depth, num_leaves=2**depth - 1, verbose=-1),
        )
    )
    out.append(
        ("sklearn RF", RandomForestClassifier(n_estimators=min(n_trees, 100), max_depth=depth, n_jobs=-1))
    )
    return out


def native_fn(name, model):
    if name == "XGBoost":
        booster = model.get_booster()
        return lambda X: booster.inplace_predict(X)
    return lambda X: model.predict_proba(X)[:, 1]


def hummingbird_best(model, X, repeats):
    try:
        import hummingbird.ml as hb
    except ImportError:
        return None, None
    best, best_name = 0.0, None
    for impl in ("gemm", "tree_trav", "perf_tree_trav"):
        try:
            hm = hb.convert(model, "torch", extra_config={"tree_implementation": impl})
        except Exception:  # Hummingbird does not cover every model/strategy pair
            continue
        r = common.rows_per_s(lambda Z, hm=hm: hm.predict_proba(Z), X, repeats)
        if r > best:
            best, best_name = r, impl
    return best, best_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--configs", default="100x8,500x8", help="trees x depth, comma separated")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "bench_trees.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    Xtr = rng.standard_normal((TRAIN_ROWS, FEATURES)).astype(np.float32)
    y = (Xtr[:, :4].sum(axis=1) + 0.5 * rng.standard_normal(TRAIN_ROWS) > 0).astype(int)
    X = rng.standard_normal((args.rows, FEATURES)).astype(np.float32)
    rows = []
    for cfg in args.configs.split(","):
        n_trees, depth = (int(v) for v in cfg.split("x"))
        for name, model in models(n_trees, depth):
            model.fit(Xtr, y)
            native = native_fn(name, model)
            cf = trees.compile(model)
            diff = float(
                np.max(
                    np.abs(np.asarray(cf.predict_proba(X))[:, 1] - np.asarray(native(X), dtype=np.float64))
                )
            )
            r_native = common.rows_per_s(native, X, args.repeats)
            r_ours = common.rows_per_s(cf.predict_proba, X, args.repeats)
            r_hb, hb_impl = hummingbird_best(model, X, args.repeats)
            lat_ours = 1e6 / common.rows_per_s(cf.predict_proba, X[:1], args.repeats * 20)
            lat_native = 1e6 / common.rows_per_s(native, X[:1], args.repeats * 20)
            rows.append(
                {
                    "model": f"{name} {getattr(model, 'n_estimators', n_trees)}x{depth}",
                    "native rows/s": f"{r_native:,.0f}",
                    "pyzero rows/s": f"{r_ours:,.0f}",
                    "vs native": f"{r_ours / r_native:.2f}x",
                    "hummingbird rows/s": "-" if r_hb is None else f"{r_hb:,.0f} ({hb_impl})",
                    "vs hummingbird": "-" if not r_hb else f"{r_ours / r_hb:.1f}x",
                    "batch-1 us (pyzero/native)": f"{lat_ours:.0f}/{lat_native:.0f}",
                    "exact": str(diff <= EXACT_TOL),
                    "max diff": diff,
                }
            )
    where = common.machine("cpu")
    common.write_json(args.out, {"machine": where, "rows": rows, "batch": args.rows})
    print(f"\ntree inference, batch {args.rows}, {FEATURES} features; {where}; pyzero backend {cf.backend}")
    common.print_table(
        rows,
        ["model", "native rows/s", "pyzero rows/s", "vs native", "hummingbird rows/s", "vs hummingbird",
         "batch-1 us (pyzero/native)", "exact"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
