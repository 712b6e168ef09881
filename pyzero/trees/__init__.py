"""Compiled tree-ensemble inference: one forest IR, exact converters, batched traversal.

Work in progress (issue 4). Here: converters for scikit-learn DecisionTree / RandomForest /
ExtraTrees / GradientBoosting / HistGradientBoosting (float64 comparisons) / IsolationForest, XGBoost
gbtree and LightGBM (numeric splits), verify(), save/load, the portable torch traversal and a first
C++ kernel. Not yet: categorical splits, the GEMM and perfect-tree strategies, a fast (SIMD) kernel,
CUDA/Triton kernels.
"""

from pyzero.trees.compiled import CompiledForest, compile, load, verify
from pyzero.trees.forest import Forest

__all__ = ["CompiledForest", "Forest", "compile", "load", "verify"]
