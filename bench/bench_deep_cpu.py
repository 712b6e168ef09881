"""Forests the perfect-tree kernel does not take, on the CPU: leaf-wise LightGBM trees too deep for it,
LightGBM and XGBoost forests with categorical splits, and scikit-learn's HistGradientBoosting, which
compares float64 inputs (Note [Binned float64 inputs]). Rows/s of pyzero's bitvector kernel (Note
[Bitvector trees]), perfect-tree kernel where the forest fits it, and node kernel (Note [Deep trees on
the CPU]) against the library's own predict_proba, on the same threads, methods interleaved within every
repeat, medians reported; and batch-1 latency.

    python bench/bench_deep_cpu.py [--trees 100] [--repeats 21] [--threads 2] [--only NAME] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer

from pyzero import trees
from pyzero.trees.forest import leaf_mask

# (name, library, data, classifier arguments): "breast_cancer" predicts the training rows tiled 20 times
# (11k rows), as in trees_demo.py; "synthetic" trains on 20k rows of 28 features and predicts 10k of
# them; "categorical" the same with 12 features, the first CATEGORICAL of them categories.
FORESTS = (
    ("31 leaves (the demo's)", "lightgbm", "breast_cancer", {}),
    (
        "63 leaves, min_child_samples 5",
        "lightgbm",
        "breast_cancer",
        {"num_leaves": 63, "min_child_samples": 5},
    ),
    (
        "63 leaves, NaN in 10 columns",
        "lightgbm",
        "breast_cancer",
        {"num_leaves": 63, "min_child_samples": 5, "nan": True},
    ),
    (
        "127 leaves, min_child_samples 3",
        "lightgbm",
        "breast_cancer",
        {"num_leaves": 127, "min_child_samples": 3},
    ),
    (
        "255 leaves, min_child_samples 2",
        "lightgbm",
        "breast_cancer",
        {"num_leaves": 255, "min_child_samples": 2},
    ),
    ("28 features, 127 leaves", "lightgbm", "synthetic", {"num_leaves": 127}),
    ("28 features, 255 leaves", "lightgbm", "synthetic", {"num_leaves": 255}),
    ("categorical, 31 leaves", "lightgbm", "categorical", {}),
    ("categorical, depth 6", "xgboost", "categorical", {"max_depth": 6}),
    ("categorical, depth 8", "xgboost", "categorical", {"max_depth": 8}),
    ("HistGradientBoosting, 31 leaves", "sklearn", "synthetic64", {}),
    ("HistGradientBoosting, depth 6", "sklearn", "synthetic64", {"max_depth": 6}),
    ("HistGradientBoosting, categorical", "sklearn", "categorical", {}),
)
# "categorical" data: its first four columns are categories (30, 30, 200 and 200 of them).
CATEGORICAL = (30, 30, 200, 200)


def dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training rows, labels, the batch to predict), float32 rows."""
    if name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
        X = X.astype(np.float32)
        return X, y, np.tile(X, (20, 1))
    rng = np.random.default_rng(0)
    if name in ("synthetic", "synthetic64"):  # synthetic64: float64 rows, 3% NaN
        X = rng.standard_normal((20000, 28))
        if name == "synthetic":
            X = X.astype(np.float32)
        y = (X[:, 0] * X[:, 1] + np.sin(X[:, 2]) + 0.5 * X[:, 3] > 0).astype(int)
        if name == "synthetic64":
            X[rng.random(X.shape) < 0.03] = np.nan
        return X, y, X[:10000]
    X = rng.standard_normal((20000, 12)).astype(np.float32)
    for c, n in enumerate(CATEGORICAL):
        X[:, c] = rng.integers(0, n, X.shape[0])
    y = ((X[:, 0] % 3 == 0) ^ (X[:, 2] > 100) ^ (X[:, 5] > 0)).astype(int)
    return X, y, X[:10000]


def fit(library: str, data: str, kw: dict, X: np.ndarray, y: np.ndarray, trees_: int, threads: int):
    """The classifier of `library`, categorical columns declared on the categorical data."""
    cats = list(range(len(CATEGORICAL))) if data == "categorical" else []
    if library == "xgboost":
        import xgboost as xgb

        types = ["c" if c in cats else "q" for c in range(X.shape[1])]
        return xgb.XGBClassifier(
            n_estimators=trees_, n_jobs=threads, tree_method="hist", enable_categorical=True,
            feature_types=types, max_cat_to_onehot=1, **kw,
        ).fit(X, y)  # fmt: skip
    if library == "sklearn":
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(
            max_iter=trees_, early_stopping=False, categorical_features=cats or None, **kw
        )
        return model.fit(X, y)
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=trees_, verbose=-1, n_jobs=threads, **kw)
    return model.fit(X, y, categorical_feature=cats or "auto")


def medians(fns: dict, repeats: int, arg) -> dict:
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(arg)
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="", help="run the forests whose name contains this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for name, library, data, kw in FORESTS:
        if args.only not in name:
            continue
        kw = dict(kw)
        X, y, batch = dataset(data)
        if kw.pop("nan", False):
            X[:, :10][np.random.default_rng(0).random((len(X), 10)) < 0.05] = np.nan
            batch = np.tile(X, (20, 1))
        model = fit(library, data, kw, X, y, args.trees, args.threads)
        fns = {"native": model.predict_proba}
        for strategy in ("perfect", "bitvector", "traverse"):
            try:
                cf = trees.compile(model, backend="cpu", strategy=strategy)
            except ValueError:  # the forest does not fit the perfect kernel
                continue
            assert trees.verify(model, cf, X)["ok"]
            fns[strategy] = cf.predict_proba
        for fn in fns.values():
            fn(batch)
        t = medians(fns, args.repeats, batch)
        lat = medians(fns, args.repeats * 20, X[:1])
        forest = trees.compile(model).forest
        depth = forest.max_depth
        leaves = int(leaf_mask(forest).sum())
        row = {
            "forest": name,
            "library": library,
            "max_depth": depth,
            "mean_leaves": leaves / forest.n_trees,
            "rows": len(batch),
            "rows_per_s": {k: len(batch) / v for k, v in t.items()},
            "batch1_us": {k: v * 1e6 for k, v in lat.items()},
        }
        results.append(row)
        r = row["rows_per_s"]
        kernels = ", ".join(
            f"{k} {v / 1e6:.2f} M rows/s ({v / r['native']:.2f}x)" for k, v in r.items() if k != "native"
        )
        print(
            f"{library} {name:<32} depth {depth:>2}, {row['mean_leaves']:.0f} leaves: {kernels}, "
            f"{library} {r['native'] / 1e6:.2f} M; batch 1 us: "
            + ", ".join(f"{k} {v:.1f}" for k, v in row["batch1_us"].items())
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"threads": args.threads, "trees": args.trees, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
