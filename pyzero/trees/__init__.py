"""Compiled tree-ensemble inference: one forest IR, exact converters, batched traversal.

Work in progress (issue 4): scikit-learn DecisionTree / RandomForest / ExtraTrees / GradientBoosting
converters and the portable torch traversal strategy are here; XGBoost, LightGBM, HistGradientBoosting,
IsolationForest, the GEMM and perfect-tree strategies and the C++ kernel are not yet.
"""

from pyzero.trees.compiled import CompiledForest, compile, verify
from pyzero.trees.forest import Forest

__all__ = ["CompiledForest", "Forest", "compile", "verify"]
