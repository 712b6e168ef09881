"""Portable torch strategies over the forest IR (any torch device, no extension needed)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pyzero.trees.forest import (
    CAT_INVALID_DEFAULT,
    CAT_INVALID_LEFT,
    CMP_CAT_IN_LEFT,
    CMP_CAT_IN_RIGHT,
    CMP_LE,
    CMP_LT,
    MISSING_NONE,
    MISSING_ZERO,
    ZERO_THRESHOLD,
    Forest,
)

# Rows per block of the traversal: the [rows, trees] node-index tensor never exceeds this x trees.
TRAVERSE_ROW_BLOCK = 4096
# On accelerators: fewer, larger blocks (each block is ~10 kernel launches per level).
TRAVERSE_ROW_BLOCK_ACCELERATOR = 1 << 18


def _row_block(x: Tensor) -> int:
    return TRAVERSE_ROW_BLOCK if x.device.type == "cpu" else TRAVERSE_ROW_BLOCK_ACCELERATOR


class ForestTensors:
    """The Forest's node arrays as torch tensors on one device."""

    def __init__(self, forest: Forest, device: torch.device) -> None:
        def t(a, dtype):
            return torch.as_tensor(a).to(device=device, dtype=dtype)

        self.feature = t(forest.feature, torch.int64).clamp(min=0)  # leaves read feature 0, then stay put
        self.threshold = t(forest.threshold32, torch.float32)
        self.threshold64 = t(forest.threshold64, torch.float64)
        self.left = t(forest.left, torch.int64)
        self.right = t(forest.right, torch.int64)
        self.default_left = t(forest.default_left, torch.bool)
        self.le = t(forest.cmp == CMP_LE, torch.bool)
        self.value = t(forest.value, torch.float64)
        self.missing = t(forest.missing, torch.int64)
        self.leaf_id = t(forest.leaf_id, torch.int64)
        self.any_special_missing = bool((forest.missing != 0).any())
        self.roots = t(forest.roots, torch.int64)
        self.max_depth = forest.max_depth
        self.has_categorical = forest.has_categorical
        if self.has_categorical:  # Note [Categorical splits] (forest.py)
            self.cat_set = t(forest.cat_set, torch.int64)
            self.cat_in_left = t(forest.cmp == CMP_CAT_IN_LEFT, torch.bool)
            self.cat_bits = t(forest.cat_bits.astype(np.int64), torch.int64)
            lo, hi, invalid = (float(v) for v in forest.cat_domain)
            self.cat_lo, self.cat_hi, self.cat_invalid = lo, hi, int(invalid)


def categorical_left(ft: ForestTensors, node: Tensor, v: Tensor) -> Tensor:
    """Whether categorical node `node` sends non-missing value v left (Note [Categorical splits])."""
    valid = (v >= ft.cat_lo) & (v < ft.cat_hi)
    c = torch.where(valid, v, torch.zeros_like(v)).trunc().long()
    words = ft.cat_bits.shape[1]
    word = c >> 5
    bits = ft.cat_bits[ft.cat_set[node].clamp(min=0), word.clamp(0, words - 1)]  # any node: v may be wild
    in_set = (word >= 0) & (word < words) & (((bits >> (c & 31)) & 1) == 1)
    left = torch.where(ft.cat_in_left[node], in_set, ~in_set)
    if ft.cat_invalid == CAT_INVALID_DEFAULT:
        invalid_left = ft.default_left[node]
    else:
        invalid_left = torch.full_like(left, ft.cat_invalid == CAT_INVALID_LEFT)
    return torch.where(valid, left, invalid_left)


def traverse(ft: ForestTensors, x: Tensor) -> Tensor:
    """Leaf node id reached in every tree: x [rows, features] -> int64 [rows, trees]. float32 x is
    compared with the directed float32 thresholds, float64 x with the native float64 ones.

    One step per depth level for all (row, tree) pairs at once; leaves point to themselves.
    """
    node = ft.roots.expand(x.shape[0], -1).clone()
    for _ in range(ft.max_depth):
        v = torch.gather(x, 1, ft.feature[node])
        thr = (ft.threshold64 if x.dtype == torch.float64 else ft.threshold)[node]
        is_nan = torch.isnan(v)
        missing = is_nan
        if ft.any_special_missing:  # LightGBM's missing types (see forest.MISSING_*)
            kind = ft.missing[node]
            v = torch.where(is_nan & (kind == MISSING_NONE), torch.zeros_like(v), v)
            zero = is_nan | (v.abs() <= ZERO_THRESHOLD)
            missing = torch.where(kind == MISSING_ZERO, zero, is_nan & (kind != MISSING_NONE))
        go_left = torch.where(ft.le[node], v <= thr, v < thr)
        if ft.has_categorical:
            go_left = torch.where(ft.cat_set[node] >= 0, categorical_left(ft, node, v), go_left)
        go_left = torch.where(missing, ft.default_left[node], go_left)
        node = torch.where(go_left, ft.left[node], ft.right[node])
    return node


def raw_scores(
    ft: ForestTensors,
    x: Tensor,
    n_trees: int,
    aggregation: str,
    base: Tensor,
    float32_sequential: bool = False,
) -> Tensor:
    """Aggregated leaf values before the post-transform: float64 [rows, outputs], in row blocks.

    float32_sequential: accumulate base, tree 0, tree 1, ... in float32, one tree at a time, as
    XGBoost's predictor does, so results match its float32 outputs bit for bit.
    """
    step = _row_block(x)
    out = [
        aggregate(
            ft.value[traverse(ft, x[start : start + step])], n_trees, aggregation, base, float32_sequential
        )
        for start in range(0, x.shape[0], step)
    ]
    if not out:
        return torch.zeros((0, base.shape[0]), dtype=torch.float64, device=x.device)
    return torch.cat(out)


def aggregate(v: Tensor, n_trees: int, aggregation: str, base: Tensor, float32_sequential: bool) -> Tensor:
    """Leaf values v [rows, trees, outputs] (float64) -> raw scores [rows, outputs] (float64): sum or mean
    plus base, or with float32_sequential base, tree 0, tree 1, ... added in float32 (XGBoost's order).
    Every torch strategy aggregates here, so they agree bit for bit."""
    if float32_sequential:
        acc = base.to(torch.float32).expand(v.shape[0], -1).clone()
        v32 = v.to(torch.float32)
        for t in range(v32.shape[1]):
            acc += v32[:, t]
        return acc.to(torch.float64)
    s = v.sum(dim=1)
    if aggregation == "mean":
        s = s / n_trees
    return s + base


def leaves(ft: ForestTensors, x: Tensor) -> Tensor:
    """Leaf node id reached in every tree, int64 [rows, trees], in row blocks."""
    if x.shape[0] == 0:
        return torch.zeros((0, ft.roots.shape[0]), dtype=torch.int64, device=x.device)
    step = _row_block(x)
    return torch.cat([traverse(ft, x[s : s + step]) for s in range(0, x.shape[0], step)])


# Bit layout of a packed node's first word (see csrc/trees/tree_cpu.h).
FEATURE_BITS = 24
DEFAULT_LEFT_BIT = 24
CMP_LT_BIT = 25
MISSING_SHIFT = 26
CATEGORICAL_BIT = 28


class PackedForest:
    """The Forest as 16-byte nodes for the C++ kernel (csrc/trees/tree_cpu.h)."""

    def __init__(self, forest: Forest) -> None:
        if forest.n_features >= 1 << FEATURE_BITS:
            raise ValueError(f"the C++ kernel handles at most {1 << FEATURE_BITS} features")
        meta = (
            np.maximum(forest.feature, 0).astype(np.int64)
            | (forest.default_left.astype(np.int64) << DEFAULT_LEFT_BIT)
            | (np.isin(forest.cmp, (CMP_LT, CMP_CAT_IN_RIGHT)).astype(np.int64) << CMP_LT_BIT)
            | (forest.missing.astype(np.int64) << MISSING_SHIFT)
            | ((forest.cat_set >= 0).astype(np.int64) << CATEGORICAL_BIT)
        ).astype(np.int32)
        # Categorical nodes: CMP_LT_BIT means "in set goes right", threshold holds the set's row.
        thr = np.where(
            forest.cat_set >= 0, forest.cat_set, forest.threshold32.astype(np.float32).view(np.int32)
        )
        self.nodes = torch.as_tensor(
            np.stack([meta, thr, forest.left, forest.right], axis=1).astype(np.int32)
        )
        self.values = torch.as_tensor(np.ascontiguousarray(forest.value, dtype=np.float64))
        self.roots = torch.as_tensor(forest.roots.astype(np.int32))
        self.depths = torch.as_tensor(forest.depth.astype(np.int32))
        self.threshold64 = torch.as_tensor(np.ascontiguousarray(forest.threshold64, dtype=np.float64))
        bits = forest.cat_bits if forest.cat_bits.shape[0] else np.zeros((1, 1), dtype=np.uint32)
        self.cat_bits = torch.as_tensor(np.ascontiguousarray(bits, dtype=np.uint32).view(np.int32))
        self.cat_domain = torch.as_tensor(np.asarray(forest.cat_domain, dtype=np.float64))

    def _arrays(self) -> tuple[Tensor, ...]:
        return (
            self.nodes,
            self.values,
            self.roots,
            self.depths,
            self.threshold64,
            self.cat_bits,
            self.cat_domain,
        )

    def raw(self, x: Tensor, base: Tensor, float32_accum: bool) -> Tensor:
        return torch.ops.pyzero.tree_predict_raw(*self._arrays(), x, base, float32_accum)

    def leaves(self, x: Tensor) -> Tensor:
        return torch.ops.pyzero.tree_predict_leaves(*self._arrays(), x).long()
