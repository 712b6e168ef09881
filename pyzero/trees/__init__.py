"""Compiled tree-ensemble inference: one forest IR, exact converters, batched traversal.

Work in progress (issue 4). Here: converters for scikit-learn DecisionTree / RandomForest /
ExtraTrees / GradientBoosting, XGBoost gbtree and LightGBM (numeric splits), verify(), and the
portable torch traversal strategy. Not yet: HistGradientBoosting, IsolationForest, categorical
splits, the GEMM and perfect-tree strategies, the C++ kernel, save/load.
"""

from pyzero.trees.compiled import CompiledForest, compile, verify
from pyzero.trees.forest import Forest

__all__ = ["CompiledForest", "Forest", "compile", "verify"]
