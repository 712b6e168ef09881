"""Compiled tree-ensemble inference: one forest IR, exact converters, batched traversal.

Work in progress (issue 4): scikit-learn DecisionTree / RandomForest / ExtraTrees / GradientBoosting
and XGBoost gbtree (numeric splits) converters, verify(), and the portable torch traversal strategy
are here; LightGBM, HistGradientBoosting, IsolationForest, XGBoost categorical splits, the GEMM and
perfect-tree strategies and the C++ kernel are not yet.
"""

from pyzero.trees.compiled import CompiledForest, compile, verify
from pyzero.trees.forest import Forest

__all__ = ["CompiledForest", "Forest", "compile", "verify"]
