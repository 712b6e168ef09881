"""Tree part of the main job: train LightGBM, XGBoost and scikit-learn models on a dataset that ships
with scikit-learn, compile each with pyzero.trees, verify it against the native library on random and
adversarial rows, and time both (rows/s, median of repeats).

    python examples/trees_demo.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn import datasets, ensemble

from pyzero import trees

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import rows_per_s  # the benchmarks' timing helper

REPEATS = 5


def main() -> int:
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    candidates = [
        ("scikit-learn RandomForest", ensemble.RandomForestClassifier(100, max_depth=8, random_state=0))
    ]
    try:
        import xgboost as xgb

        candidates.append(("XGBoost", xgb.XGBClassifier(n_estimators=100, max_depth=6)))
    except ImportError:
        print("xgboost not installed: skipped")
    try:
        import lightgbm as lgb

        candidates.append(("LightGBM", lgb.LGBMClassifier(n_estimators=100, verbose=-1)))
    except ImportError:
        print("lightgbm not installed: skipped")
    batch = np.tile(X, (20, 1))  # ~11k rows
    header = [
        "verify rows",
        "worst diff",
        "exact",
        "native rows/s",
        "pyzero rows/s",
        "x native",
        "pyzero path",
    ]
    widths = [11, 11, 6, 14, 14, 9, 14]
    print(f"{'model':<26} " + " ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    ok = True
    for name, model in candidates:
        model.fit(X, y)
        cf = trees.compile(model)
        report = trees.verify(model, cf, X)
        ok &= report["ok"]
        native = rows_per_s(model.predict_proba, batch, REPEATS)
        ours = rows_per_s(cf.predict_proba, batch, REPEATS)
        print(
            f"{name:<26} {report['rows']:>11} {report['worst']:>11.1e} {report['ok']!s:>6} "
            f"{native:>14,.0f} {ours:>14,.0f} {ours / native:>8.1f}x {cf.backend + '/' + cf.strategy:>14}"
        )
    print(
        "pyzero path: cpu/perfect = the SIMD perfect-tree C++ kernel (Note [Perfect trees]);\n"
        "cpu/bitvector = the bitvector kernel of trees of <= 256 leaves (Note [Bitvector trees]; timed\n"
        "against the perfect kernel on the first large batch where both fit, Note [CPU kernel choice]);\n"
        "cpu/traverse = the node kernel (categorical, or deep and wide forests); torch/* = the portable\n"
        "torch strategies."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
