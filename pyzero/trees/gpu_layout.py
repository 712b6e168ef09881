"""The forest in the GPU layouts of Note [GPU layouts] (csrc/trees/tree_walk.h): perfect trees (heap
order, blocks of two levels, or tiles of 32; their nodes compare row slots, Note [Row slots]), compact
8-byte nodes (breadth- or depth-first, children side by side) and the 16-byte nodes in IR order.

`build(forest, layout)` converts (or says why the forest does not fit); `GpuLayout.walk` runs
pyzero::tree_walk, the CUDA kernel on CUDA tensors and its host twin on CPU tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyzero.trees import fast_cpu, strategies
from pyzero.trees.forest import CMP_CAT_IN_RIGHT, CMP_LT, Forest, leaf_mask, levels, tree_of

LAYOUTS = ("perfect", "perfect-blocked", "perfect-tiled", "compact-bfs", "compact-dfs", "wide")
FORMAT = {
    "perfect": 0,
    "compact-bfs": 1,
    "compact-dfs": 1,
    "wide": 2,
    "perfect-blocked": 3,
    "perfect-tiled": 4,
}
PERFECT_LAYOUTS = ("perfect", "perfect-blocked", "perfect-tiled")
# Perfect layouts whose trees lie one after another (tree_chunk > 0 stages them as they are).
CHUNKABLE_LAYOUTS = ("perfect", "perfect-blocked")
# kPerfectTiled (Note [GPU layouts]): trees per tile, and the deepest trees it takes (a tile of 32 trees
# of depth 8 and the rows of a block fill an H100's shared memory: Note [Tiled walk]).
TILED_TREES = 32
TILED_MAX_DEPTH = 8
# Perfect layouts: most values a row holds (Note [Row slots] in csrc/trees/tree_walk.h: up to three
# copies of every feature; slots are 32-bit in the kernels).
MAX_ROW_SLOTS = 1 << 24
# Layouts only the CUDA kernel reads (the Triton twin walks the others).
CUDA_ONLY_LAYOUTS = ("perfect-tiled",)
# Compact node fields (kC8* in tree_walk.h).
C8_FEATURE_BITS = 13
C8_DEFAULT_LEFT_BIT = 13
C8_CMP_LT_BIT = 14
C8_MISSING_SHIFT = 15
C8_CATEGORICAL_BIT = 17
C8_OFFSET_SHIFT = 18
C8_MAX_OFFSET = (1 << (32 - C8_OFFSET_SHIFT)) - 1


def why_not(forest: Forest, layout: str, input_dtype: torch.dtype) -> str | None:
    """None when `forest` fits `layout` for inputs of input_dtype, else the reason it does not."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if forest.n_trees == 0 and layout != "wide":
        return "no trees"
    if layout in PERFECT_LAYOUTS:
        if input_dtype != torch.float32:
            return "the perfect layout compares float32 inputs only"
        why = fast_cpu.why_ineligible(forest)
        if why is None and 3 * forest.n_features >= MAX_ROW_SLOTS:
            why = f"more than {MAX_ROW_SLOTS // 3 - 1} features"
        if why is None and layout == "perfect-tiled":
            if forest.n_outputs != 1:
                return "tiles hold one output per leaf"
            if forest.max_depth > TILED_MAX_DEPTH:
                return f"trees deeper than {TILED_MAX_DEPTH} (a tile of them does not fit shared memory)"
        return why
    if layout.startswith("compact"):
        if forest.n_features > 1 << C8_FEATURE_BITS:
            return f"more than {1 << C8_FEATURE_BITS} features"
        if _positions(forest, layout)[1] > C8_MAX_OFFSET:
            return f"a child lies more than {C8_MAX_OFFSET} nodes after its parent"
    return None


def _positions(forest: Forest, layout: str) -> tuple[np.ndarray, int]:
    """(position of every IR node in the compact layout, the largest parent-to-children offset)."""
    n = forest.feature.shape[0]
    ids = np.arange(n)
    internal = ~leaf_mask(forest)
    tree = tree_of(forest)
    by_level = levels(forest)
    pos = np.empty(n, dtype=np.int64)
    if layout == "compact-bfs":  # tree by tree, level by level
        nodes = np.concatenate(by_level)
        level = np.concatenate([np.full(lv.shape[0], i) for i, lv in enumerate(by_level)])
        order = nodes[np.lexsort((np.arange(nodes.shape[0]), level, tree[nodes]))]
        pos[order] = np.arange(order.shape[0])
    else:  # depth-first: the root, then the children pair of every split node in preorder
        size = np.ones(n, dtype=np.int64)
        for lv in reversed(by_level):
            inner = lv[internal[lv]]
            size[inner] = 1 + size[forest.left[inner]] + size[forest.right[inner]]
        pre = np.zeros(n, dtype=np.int64)
        for lv in by_level:
            inner = lv[internal[lv]]
            pre[forest.left[inner]] = pre[inner] + 1
            pre[forest.right[inner]] = pre[inner] + 1 + size[forest.left[inner]]
        split = ids[internal]
        split = split[np.lexsort((pre[split], tree[split]))]
        first = np.searchsorted(tree[split], np.arange(forest.n_trees))
        rank = np.arange(split.shape[0]) - first[tree[split]]
        start = forest.roots.astype(np.int64)  # trees keep their IR node ranges
        pos[forest.roots] = start
        pos[forest.left[split]] = start[tree[split]] + 1 + 2 * rank
        pos[forest.right[split]] = start[tree[split]] + 2 + 2 * rank
    split = ids[internal]
    offset = pos[forest.left[split]] - pos[split]
    if not np.array_equal(pos[forest.right[split]], pos[forest.left[split]] + 1) or (offset < 1).any():
        raise AssertionError("compact layout: children must follow their parent side by side")
    return pos, int(offset.max(initial=0))


class GpuLayout:
    """One layout's arrays (on `device`) for pyzero::tree_walk; `copies`: the row copies its nodes read
    (Note [Row slots]; 1 for node layouts)."""

    def __init__(self, forest: Forest, layout: str, input_dtype: torch.dtype, device: torch.device) -> None:
        reason = why_not(forest, layout, input_dtype)
        if reason is not None:
            raise ValueError(f"this {forest.source or 'forest'} does not fit layout {layout!r}: {reason}")
        self.layout = layout
        self.format = FORMAT[layout]
        self.n_trees = forest.n_trees
        self.n_outputs = forest.n_outputs
        self.n_features = forest.n_features
        self.max_depth = forest.max_depth
        self.cat_domain = [float(v) for v in forest.cat_domain]
        empty_i = torch.zeros(0, dtype=torch.int32)
        empty_d = torch.zeros(0, dtype=torch.float64)
        cat_bits = torch.zeros((1, 1), dtype=torch.int32)
        column_kind = torch.zeros(0, dtype=torch.int8)
        self.depth = 0
        self.copies = 1  # Note [Row slots] in csrc/trees/tree_walk.h
        if layout in PERFECT_LAYOUTS:
            p = fast_cpu.PerfectForest(forest)
            nodes, self.copies = _slot_nodes(p, forest.n_features)
            values, threshold64 = p.values.reshape(-1, forest.n_outputs), empty_d
            if layout == "perfect-blocked":
                nodes = _blocked(nodes, p.depth)
            elif layout == "perfect-tiled":
                nodes, values = _tiled(nodes, values, p.depth)
            roots, leaf_nodes = empty_i, p.leaf_nodes.reshape(-1)
            if bool((p.column_kind != 0).any()):
                column_kind = p.column_kind
            self.depth = p.depth
        elif layout == "wide":
            packed = strategies.PackedForest(forest)
            nodes, roots, leaf_nodes = packed.nodes, packed.roots, empty_i
            values, threshold64, cat_bits = packed.values, packed.threshold64, packed.cat_bits
        else:
            nodes, roots, threshold64 = _compact(forest, layout)
            leaf_nodes = empty_i
            values = torch.as_tensor(np.ascontiguousarray(forest.value, dtype=np.float64))
            cat_bits = strategies.PackedForest(forest).cat_bits
        if forest.extra.get("accumulate") == "float32" and forest.aggregation != "mean":
            values = values.to(torch.float32)  # the float32 each sum adds: half the bytes (leaf_value)
        if layout not in PERFECT_LAYOUTS and fast_cpu.reads_like_lightgbm(
            forest
        ):  # prepare_value in tree_walk.h
            column_kind = torch.full((forest.n_features,), fast_cpu.COLUMN_LIGHTGBM_READING, dtype=torch.int8)
        self.node_bytes = 16 if layout == "wide" else 8
        # perfect layouts: (node stride, leaf slots) of one tree, what a staged tree takes in shared memory
        self.tree_shape = (int(nodes.shape[1]), 1 << self.depth) if layout in CHUNKABLE_LAYOUTS else None
        self.tensors = tuple(
            t.to(device) for t in (nodes, roots, leaf_nodes, values, threshold64, cat_bits, column_kind)
        )

    def walk(
        self,
        x: Tensor,
        base: Tensor,
        float32_accum: bool,
        leaves: bool,
        config: list[int],
        emulate: bool = False,
        finish: tuple[float, ...] = (),
    ) -> Tensor:
        """raw float64 [rows, outputs] (base + leaf values in tree order) or, with leaves=True, the IR
        leaf node id of every tree, int32 [rows, trees]. config: [threads, lanes, ilp, stage, tree_chunk,
        tiled] (Notes [GPU tree kernel] and [Tiled walk] in csrc/cuda/tree_launch.h); finish: () or
        (kind, scale, divisor, pair) of Note [Fused finish] in csrc/trees/tree_walk.h ([rows, 2] when
        pair).
        emulate=True runs the CUDA kernel's own code on CPU tensors (Note [Kernel emulation] in
        csrc/trees/kernel_emu.h; slow, for tests)."""
        op = torch.ops.pyzero.tree_walk_emulated if emulate else torch.ops.pyzero.tree_walk
        return op(*self._forest_args(), x, base, float32_accum, leaves, config, list(finish))

    def _forest_args(self) -> tuple:
        """The leading arguments of pyzero::tree_walk (and of a WalkPlan): the layout's format, tensors,
        categorical domain, depth and feature count."""
        nodes, roots, leaf_nodes, values, threshold64, cat_bits, column_kind = self.tensors
        return (
            self.format,
            nodes,
            roots,
            leaf_nodes,
            values,
            threshold64,
            cat_bits,
            self.cat_domain,
            column_kind,
            self.depth,
            self.n_features,
            self.copies,
        )

    def plan(
        self,
        x_like: Tensor,
        base: Tensor,
        float32_accum: bool,
        leaves: bool,
        config: list[int],
        emulate: bool = False,
        finish: tuple[float, ...] = (),
        flat: bool = False,
        host_rows: int = 0,
    ) -> Any:
        """walk() with every argument but x bound and checked once (Note [Prepared walks] in
        csrc/trees/tree_walk_plan.h): a pyzero._C.WalkPlan whose call plan(x) takes x like x_like (its
        dtype, device and columns, any rows) and returns walk(x, ...) bit for bit; flat=True gives sums of
        one column as [rows]; host_rows > 0 makes a staged plan: up to host_rows rows on the host, walked
        on x_like's device, outputs back on the host."""
        from pyzero import _native

        return _native.require("pyzero.trees prepared walks").WalkPlan(
            *self._forest_args(),
            x_like,
            base,
            float32_accum,
            leaves,
            config,
            list(finish),
            emulate,
            flat,
            host_rows,
        )


def _slot_nodes(p: fast_cpu.PerfectForest, n_features: int) -> tuple[Tensor, int]:
    """Perfect nodes [trees, stride, 2] of (row slot, float32 threshold bits) and the row copies they
    read (Note [Row slots] in csrc/trees/tree_walk.h): a node's rule `isnan(x) ? default_left : x <= t`
    becomes `slot value <= t` on copy 0 (as is), 1 (NaN as -inf) or 2 (NaN as 0, numbers as 1, t 0.5)."""
    meta = p.meta.numpy().view(np.uint32)
    thr = p.threshold.numpy()
    feature = (meta & fast_cpu.META_FEATURE_MASK).astype(np.int64)
    default_left = (meta >> fast_cpu.DEFAULT_LEFT_BIT) != 0
    column = p.column_kind.numpy()
    can_be_nan = (column[feature] & fast_cpu.COLUMN_MISSING_MASK) != fast_cpu.COLUMN_NAN_TO_ZERO
    copy = np.where(default_left & can_be_nan, np.where(np.isnan(thr), 2, 1), 0)
    thr = np.where(copy == 2, np.float32(0.5), thr).astype(np.float32)
    slot = (copy * n_features + feature).astype(np.int32)
    nodes = np.stack([slot, thr.view(np.int32)], axis=2)
    return torch.as_tensor(nodes), int(copy.max(initial=0)) + 1


def blocked_slots(depth: int) -> int:
    """Node slots of a blocked perfect tree of `depth` (blocked_slots in tree_walk.h)."""
    groups = (depth + 1) // 2
    return (4**groups - 1) // 3 * 4


def blocked_slot(level: np.ndarray, heap: np.ndarray) -> np.ndarray:
    """Slot of heap node `heap` at `level` in its blocked tree (blocked_slot in tree_walk.h)."""
    j = heap - ((1 << level) - 1)
    g, ld = level >> 1, level & 1
    return (4**g - 1) // 3 * 4 + ((j >> ld) << 2) + ((1 << ld) - 1) + (j & ((1 << ld) - 1))


def _blocked(nodes: Tensor, depth: int) -> Tensor:
    """Heap-order perfect nodes [trees, stride, 2] in blocks of two levels (Note [GPU layouts]:
    kPerfectBlocked); unused slots are zero."""
    level = np.concatenate(
        [np.full(1 << d, d, dtype=np.int64) for d in range(depth)] or [np.zeros(0, np.int64)]
    )
    heap = np.arange(level.size, dtype=np.int64)
    out = torch.zeros((nodes.shape[0], max(blocked_slots(depth), 4), 2), dtype=nodes.dtype)  # >= one block
    out[:, torch.as_tensor(blocked_slot(level, heap))] = nodes[:, : heap.size]
    return out


def _tiled(nodes: Tensor, values: Tensor, depth: int) -> tuple[Tensor, Tensor]:
    """Heap-order perfect nodes [trees, stride, 2] and values [trees * 2^depth, 1] as tiles of TILED_TREES
    interleaved trees (Note [GPU layouts]: kPerfectTiled): nodes [tiles, 2^depth, 32, 2], values
    [tiles * 2^depth * 32, 1]; absent trees and each tree's unused last node slot are zero."""
    trees, leaves = nodes.shape[0], 1 << depth
    tiles = -(-trees // TILED_TREES)
    n = torch.zeros((tiles * TILED_TREES, leaves, 2), dtype=nodes.dtype)
    n[:trees, : leaves - 1] = nodes[:, : leaves - 1]
    v = torch.zeros((tiles * TILED_TREES, leaves), dtype=values.dtype)
    v[:trees] = values.reshape(trees, leaves)
    n = n.reshape(tiles, TILED_TREES, leaves, 2).transpose(1, 2).contiguous()
    v = v.reshape(tiles, TILED_TREES, leaves).transpose(1, 2).reshape(-1, 1).contiguous()
    return n, v


def _compact(forest: Forest, layout: str) -> tuple[Tensor, Tensor, Tensor]:
    """(nodes int32 [n, 2], root positions int32 [trees], threshold64 per position) of Note [GPU
    layouts]' compact nodes."""
    pos, _ = _positions(forest, layout)
    n = forest.feature.shape[0]
    ids = np.arange(n)
    leaf = leaf_mask(forest)
    offset = np.where(leaf, 0, pos[forest.left] - pos)
    cat = forest.cat_set >= 0
    word0 = (
        np.maximum(forest.feature, 0).astype(np.uint32)
        | (forest.default_left.astype(np.uint32) << C8_DEFAULT_LEFT_BIT)
        | (np.isin(forest.cmp, (CMP_LT, CMP_CAT_IN_RIGHT)).astype(np.uint32) << C8_CMP_LT_BIT)
        | (forest.missing.astype(np.uint32) << C8_MISSING_SHIFT)
        | (cat.astype(np.uint32) << C8_CATEGORICAL_BIT)
        | (offset.astype(np.uint32) << C8_OFFSET_SHIFT)
    )
    thr_bits = forest.threshold32.astype(np.float32).view(np.uint32)
    word1 = np.where(leaf, ids.astype(np.uint32), np.where(cat, forest.cat_set.astype(np.uint32), thr_bits))
    nodes = np.empty((n, 2), dtype=np.uint32)
    nodes[pos, 0] = word0
    nodes[pos, 1] = word1
    t64 = np.empty(n, dtype=np.float64)
    t64[pos] = forest.threshold64
    return (
        torch.as_tensor(nodes.view(np.int32)),
        torch.as_tensor(pos[forest.roots].astype(np.int32)),
        torch.as_tensor(t64),
    )
