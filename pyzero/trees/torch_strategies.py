"""GEMM and perfect-tree strategies: portable torch alternatives to strategies.traverse.

Both run on any torch device with torch ops only, decide every split exactly as strategies.traverse
does (Note [Exact thresholds], the cmp and missing kinds of forest.py) and expose its interface:
`leaves(x)` gives the global IR leaf id reached in every tree, `raw_scores(...)` the aggregated leaf
values (float32_sequential included, bit for bit). Rows go in blocks sized so the working tensors of
one block stay under a byte budget.

GemmForest (Hummingbird's GEMM, trees with few leaves): every tree padded to I internal nodes and L
leaves. Per (row, internal node) the decision is computed elementwise (the feature value is gathered
with index_select, never multiplied by a one-hot matrix: NaN * 0 and inf * 0 are NaN). Then with the
path matrix C[t, l, i] (+1 when leaf l lies right of node i, -1 left of it, 0 off its path) and
D[t, l] (right turns on leaf l's path), leaf l is reached exactly when (C @ went_right)[t, l] ==
D[t, l]. All operands and sums are small integers, exact in float32 (and TF32 / bf16).

PerfectForest (Hummingbird's perfect tree traversal, up to depth PERFECT_MAX_DEPTH): every tree
padded to a complete binary tree of the forest's depth D (node p has children 2p+1, 2p+2; a leaf
above the bottom becomes a dummy split whose two subtrees both end in that leaf), one tensor step per
level for all (row, tree) pairs; children are computed, not looked up, and each level reads its own
small node table.

choose_strategy(forest, rows) picks gemm / perfect / traverse from the depth AND the batch size (see
the measured table next to GEMM_SMALL_BATCH_ROWS below; bench/bench_torch_strategies.py re-measures).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pyzero.trees import strategies
from pyzero.trees.forest import (
    CMP_LE,
    CMP_LT,
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    ZERO_THRESHOLD,
    Forest,
)

STRATEGY_NAMES = ("gemm", "perfect", "traverse")
# Working memory of one row block (the temporaries of a level / of the GEMM for those rows); the
# row block holds max(1, BLOCK_BYTES // bytes_per_row) rows.
BLOCK_BYTES = 32 << 20
# On accelerators a block is one batch of kernel launches: make it large so launches stay few (first
# H200 run with 32 MiB blocks: 100 trees depth 8, 10k rows, 3.0 M rows/s against Hummingbird's 12).
ACCELERATOR_BLOCK_BYTES = 2 << 30


def default_block_bytes(device: torch.device | str) -> int:
    return BLOCK_BYTES if torch.device(device).type == "cpu" else ACCELERATOR_BLOCK_BYTES


# Node kinds these strategies implement; any other (e.g. categorical splits) makes a forest ineligible.
SUPPORTED_CMP = (CMP_LE, CMP_LT)
SUPPORTED_MISSING = (MISSING_NAN, MISSING_NONE, MISSING_ZERO)
# GEMM: the path matrices C (trees x leaves x internal nodes, float32) may take at most this many bytes.
GEMM_MAX_MATRIX_BYTES = 256 << 20
# GEMM: a reached leaf's slot is read out with a second matmul, as two digits in this base: every
# operand and result is then an integer <= 256, exact even where matmuls round inputs (TF32, bf16).
SLOT_RADIX = 256
# Perfect trees: depth limit (tables grow as trees x 2^depth) and the byte limit of those tables.
PERFECT_MAX_DEPTH = 16
PERFECT_MAX_TABLE_BYTES = 512 << 20

# The automatic rule (choose_strategy), from bench/bench_torch_strategies.py on this machine (AMD EPYC,
# 2 cores shared with other jobs, torch.set_num_threads(2), torch 2.13 CPU; 100 trees, 28 features;
# rows/s of raw_scores in thousands, median of interleaved repeats). xgb: XGBoost max_depth=d (float32
# sequential sums: ~220 us of per-tree steps in every call flatten its batch-1 column); lgb: LightGBM
# max_depth=d, num_leaves=2^d - 1; lgb31: LightGBM num_leaves=31 without a depth limit (trees of
# depth 13 with <= 31 leaves). C++ = the extension's kernel, for scale.
#   model  depth batch  traverse  gemm  perfect  C++      model  depth batch  traverse  gemm  perfect
#   xgb      4      1       3.9    4.5     4.5   151      lgb      4      1       6.8   13.0     7.6
#   xgb      4    100        97    195     180  1393      lgb      4    100        92    155     142
#   xgb      4  10000       205    320     394  1834      lgb      4  10000       162     98     214
#   xgb      8      1       2.6    0.4     3.4    27      lgb      8      1       3.4    0.5     3.8
#   xgb      8    100        44    7.0      87   363      lgb      8    100        33    4.8      56
#   xgb      8  10000       109    7.7     260   868      lgb      8  10000        81    6.9     125
#   xgb     12      1       2.4      -     3.3    87      lgb     12      1       1.8   0.06     1.7
#   xgb     12    100        36      -      83   242      lgb     12    100      19**   0.7     14**
#   xgb     12  10000        79      -     181   330      lgb     12  10000        51    0.7      87
#   lgb      2      1      12.7   17.6    13.7            lgb31   13      1       2.2    7.7     2.5
#   lgb      2   1000       471    947     682            lgb31   13    100        44     82      46
#   lgb      2  10000       370    415     443            lgb31   13  10000        77     78     102
# (-: gemm ineligible, path matrices over GEMM_MAX_MATRIX_BYTES. **: best of the repeats 19 vs 28.)
# Reading: the GEMM's work per row grows with internal nodes x leaves, so what limits it is the leaf
# count (leaf depth = ceil(log2(max leaves of a tree)), the depth for full trees), not the depth: it
# wins for few leaves and small batches (one fused pass instead of one step per level), and loses to
# perfect trees once batches are large (then its I x L matmul dominates). Perfect trees beat traverse
# at every measured depth and batch but ties (computed children, per-level tables, fewer gathers).
GEMM_SMALL_BATCH_ROWS = 100  # "small batch": rows <= this
GEMM_MAX_LEAF_DEPTH_SMALL_BATCH = 5  # gemm for small batches when trees have <= 32 leaves
GEMM_MAX_LEAF_DEPTH = 2  # gemm for any batch when trees have <= 4 leaves
PERFECT_MAX_AUTO_DEPTH = 13  # deepest measured (tables grow as 2^depth); deeper: traverse


# ------------------------------------------------------------------------------------ eligibility
def _split_mask(forest: Forest) -> np.ndarray:
    ids = np.arange(forest.feature.shape[0])
    return (forest.left != ids) | (forest.right != ids)


def unsupported_reason(forest: Forest) -> str | None:
    """Why GEMM / perfect trees cannot run this forest (node kinds), or None when they can."""
    split = _split_mask(forest)
    bad_cmp = sorted(set(np.unique(forest.cmp[split]).tolist()) - set(SUPPORTED_CMP))
    if bad_cmp:
        return (
            f"split nodes with cmp kinds {bad_cmp} (only CMP_LE={CMP_LE} and CMP_LT={CMP_LT} are supported; "
            "categorical splits need strategy 'traverse')"
        )
    bad_missing = sorted(set(np.unique(forest.missing[split]).tolist()) - set(SUPPORTED_MISSING))
    if bad_missing:
        return f"split nodes with missing kinds {bad_missing} (supported: {list(SUPPORTED_MISSING)})"
    if (forest.feature[split] < 0).any():
        return "split nodes without a feature"
    return None


def _require_supported(forest: Forest, name: str) -> None:
    reason = unsupported_reason(forest)
    if reason is not None:
        raise ValueError(f"{name} cannot run {forest.source or 'this forest'}: {reason}")


# ------------------------------------------------------------------------------------ tree layout
class _Layout:
    """Every node reachable from a root, found level by level: its tree, parent, side, depth and
    position in the complete binary tree (root 0, children 2p+1 and 2p+2)."""

    def __init__(self, forest: Forest) -> None:
        n = forest.feature.shape[0]
        split = _split_mask(forest)
        self.split = split
        self.tree = np.full(n, -1, dtype=np.int64)
        self.parent = np.full(n, -1, dtype=np.int64)
        self.is_left = np.zeros(n, dtype=bool)
        self.level = np.full(n, -1, dtype=np.int64)
        self.pos = np.zeros(n, dtype=np.int64)
        frontier = forest.roots.astype(np.int64)
        trees = np.arange(frontier.shape[0], dtype=np.int64)
        level = 0
        while frontier.size:
            if level > forest.max_depth:
                raise ValueError("forest.depth is smaller than a tree's longest path (or a tree has a cycle)")
            self.tree[frontier] = trees
            self.level[frontier] = level
            inner = split[frontier]
            f, t = frontier[inner], trees[inner]
            left, right = forest.left[f].astype(np.int64), forest.right[f].astype(np.int64)
            self.parent[left], self.parent[right] = f, f
            self.is_left[left] = True
            self.pos[left], self.pos[right] = 2 * self.pos[f] + 1, 2 * self.pos[f] + 2
            frontier, trees = np.concatenate([left, right]), np.concatenate([t, t])
            level += 1


def _local_index(tree: np.ndarray, n_trees: int) -> tuple[np.ndarray, int]:
    """Rank of each entry among the entries of its tree (input sorted by tree), and the largest count."""
    counts = np.bincount(tree, minlength=n_trees)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.arange(tree.shape[0]) - first[tree], int(counts.max()) if counts.size else 0


class _Splits:
    """Split parameters of the IR nodes at `nodes` (an index array of any shape), as flat tensors, plus
    what the forest needs of _go_right (one comparison kind everywhere? special missing kinds?)."""

    def __init__(self, forest: Forest, nodes: np.ndarray, device: torch.device, flags: dict) -> None:
        def t(a, dtype):
            return torch.as_tensor(np.ascontiguousarray(a).reshape(-1)).to(device=device, dtype=dtype)

        self.shape = nodes.shape
        self.feature = t(forest.feature[nodes].clip(min=0), torch.int64)
        self.threshold = t(forest.threshold32[nodes], torch.float32)
        self.threshold64 = t(forest.threshold64[nodes], torch.float64)
        self.default_right = t(~forest.default_left[nodes], torch.bool)
        self.le = t(forest.cmp[nodes] == CMP_LE, torch.bool) if flags["le"] is None else flags["le"]
        self.missing = t(forest.missing[nodes], torch.int64) if flags["special_missing"] else None
        self.nan_thresholds = flags["nan_thresholds"]


def _split_flags(forest: Forest) -> dict:
    """Forest-wide facts that let _go_right skip work: le (True / False when every split compares with
    <= / <, None when mixed), special_missing (LightGBM's NONE / ZERO kinds occur), nan_thresholds."""
    split = _split_mask(forest)
    kinds = np.unique(forest.cmp[split])
    return {
        "le": bool(kinds[0] == CMP_LE) if kinds.size == 1 else (True if kinds.size == 0 else None),
        "special_missing": bool((forest.missing[split] != MISSING_NAN).any()),
        "nan_thresholds": bool(
            np.isnan(forest.threshold32[split]).any() or np.isnan(forest.threshold64[split]).any()
        ),
    }


def _go_right(
    v: Tensor,
    thr: Tensor,
    le: Tensor | bool,
    default_right: Tensor,
    kind: Tensor | None,
    nan_thresholds: bool,
    may_hold_nan: bool,
) -> Tensor:
    """Elementwise negation of strategies.traverse's go_left. v: feature values; thr, le, default_right,
    kind: the node's (kind None: every node MISSING_NAN); may_hold_nan False: v holds no NaN.

    Where the comparison decides, v is never NaN (NaN is missing, or read as 0.0 for MISSING_NONE), so
    not (v <= t) is v > t and not (v < t) is v >= t, unless a threshold is NaN (then negate exactly)."""
    missing = None
    if kind is not None:  # LightGBM's missing types (see forest.MISSING_*)
        is_nan = torch.isnan(v)
        v = torch.where(is_nan & (kind == MISSING_NONE), torch.zeros_like(v), v)
        zero = is_nan | (v.abs() <= ZERO_THRESHOLD)
        missing = torch.where(kind == MISSING_ZERO, zero, is_nan & (kind != MISSING_NONE))
    elif may_hold_nan:
        missing = torch.isnan(v)
    if nan_thresholds:
        left = (v <= thr) if le is True else (v < thr) if le is False else torch.where(le, v <= thr, v < thr)
        right = ~left
    elif le is True:
        right = v > thr
    elif le is False:
        right = v >= thr
    else:
        right = torch.where(le, v > thr, v >= thr)
    return right if missing is None else torch.where(missing, default_right, right)


def _may_hold_nan(x: Tensor) -> bool:
    """Whether x may hold NaN: checked on CPU (cheap, no device sync), assumed elsewhere."""
    return x.device.type != "cpu" or bool(torch.isnan(x).any())


# ------------------------------------------------------------------------------------ base class
class _BlockedStrategy:
    """Row blocking and score aggregation shared by the strategies; subclasses give _leaves_block."""

    name = ""

    def __init__(self, forest: Forest, device: torch.device, block_bytes: int) -> None:
        _require_supported(forest, self.name)
        self.device = torch.device(device)
        self.n_trees = forest.n_trees
        self.n_outputs = forest.n_outputs
        self.block_bytes = block_bytes
        self.value = torch.as_tensor(forest.value, dtype=torch.float64).to(self.device)
        self.flags = _split_flags(forest)

    def _row_bytes(self, x: Tensor) -> int:  # working bytes per row of a block
        raise NotImplementedError

    def _leaves_block(self, x: Tensor, may_hold_nan: bool) -> Tensor:  # [rows, trees] global leaf ids
        raise NotImplementedError

    def block_rows(self, x: Tensor) -> int:
        """Rows per block for input x, so that one block's temporaries stay under block_bytes."""
        return max(1, self.block_bytes // max(1, self._row_bytes(x)))

    def _blocks(self, x: Tensor):
        step = self.block_rows(x)
        for start in range(0, x.shape[0], step):
            yield x[start : start + step]

    def leaves(self, x: Tensor) -> Tensor:
        """Global IR leaf id reached in every tree: x [rows, features] -> int64 [rows, trees]."""
        nan = _may_hold_nan(x)
        out = [self._leaves_block(b, nan) for b in self._blocks(x)]
        if not out:
            return torch.zeros((0, self.n_trees), dtype=torch.int64, device=x.device)
        return torch.cat(out)

    def raw_scores(
        self, x: Tensor, n_trees: int, aggregation: str, base: Tensor, float32_sequential: bool = False
    ) -> Tensor:
        """Aggregated leaf values before the post-transform, float64 [rows, outputs]: the same numbers
        as strategies.raw_scores (float32_sequential: base, tree 0, tree 1, ... added in float32)."""
        nan = _may_hold_nan(x)
        out = [
            strategies.aggregate(
                self.value[self._leaves_block(b, nan)], n_trees, aggregation, base, float32_sequential
            )
            for b in self._blocks(x)
        ]
        if not out:
            return torch.zeros((0, base.shape[0]), dtype=torch.float64, device=x.device)
        return torch.cat(out)


# ------------------------------------------------------------------------------------ GEMM
class GemmForest(_BlockedStrategy):
    """Hummingbird-style GEMM strategy over padded [trees, leaves, internal nodes] path matrices.

    With r = went_right (0/1) per internal node: leaf l is reached iff (C @ r)[l] == D[l], where
    C[t, l, i] = +1 when l lies right of node i, -1 when left of it, 0 off its path, and D[t, l] is
    the number of right turns on l's path (the sum hits D only if every right turn on the path was
    taken and no left turn was refused). Padded leaf slots have D = -1 and never match. The matching
    slot comes out of a second matmul (argmax over the leaf axis is far slower on CPU)."""

    name = "gemm"

    def __init__(self, forest: Forest, device: torch.device | str = "cpu", block_bytes: int = BLOCK_BYTES):
        super().__init__(forest, device, block_bytes)
        T = forest.n_trees
        lay = _Layout(forest)
        reach = lay.tree >= 0
        inner = np.flatnonzero(reach & lay.split)
        inner = inner[np.argsort(lay.tree[inner], kind="stable")]
        leaf = np.flatnonzero(reach & ~lay.split)
        leaf = leaf[np.argsort(lay.tree[leaf], kind="stable")]
        inner_local, n_inner = _local_index(lay.tree[inner], T)
        leaf_local, n_leaf = _local_index(lay.tree[leaf], T)
        I, L = max(n_inner, 1), max(n_leaf, 1)
        matrix_bytes = T * I * L * 4
        if matrix_bytes > GEMM_MAX_MATRIX_BYTES:
            raise ValueError(
                f"gemm cannot run {forest.source or 'this forest'}: its path matrices would take "
                f"{matrix_bytes / 2**20:.0f} MiB ({T} trees x {L} leaves x {I} internal nodes; "
                f"limit GEMM_MAX_MATRIX_BYTES = {GEMM_MAX_MATRIX_BYTES >> 20} MiB)"
            )
        self.n_inner, self.n_leaf = I, L
        # Internal slots [T, I] -> IR node; padding repeats the root (its column of C is zero).
        slot = np.zeros((T, I), dtype=np.int64)
        if T:
            slot[:] = forest.roots[:, None]
        slot[lay.tree[inner], inner_local] = inner
        local = np.zeros(forest.feature.shape[0], dtype=np.int64)
        local[inner], local[leaf] = inner_local, leaf_local
        # Path matrices: walk every leaf up to its root, one vectorised step per level.
        C = np.zeros((T, L, I), dtype=np.float32)
        D = np.full((T, L), -1.0, dtype=np.float32)
        D[lay.tree[leaf], leaf_local] = 0.0
        cur = leaf.copy()
        while (lay.parent[cur] >= 0).any():
            up = lay.parent[cur] >= 0
            lf, c = leaf[up], cur[up]
            C[lay.tree[lf], local[lf], local[lay.parent[c]]] = np.where(lay.is_left[c], -1.0, 1.0)
            D[lay.tree[lf], local[lf]] += ~lay.is_left[c]
            cur = np.where(up, lay.parent[cur], cur)
        leaf_ids = np.zeros((T, L), dtype=np.int64)
        leaf_ids[lay.tree[leaf], leaf_local] = leaf
        self.splits = _Splits(forest, slot, self.device, self.flags)
        self.C = torch.as_tensor(C).to(self.device)
        self.D = torch.as_tensor(D).to(self.device).unsqueeze(-1)  # [T, L, 1]
        self.leaf_ids = torch.as_tensor(leaf_ids).to(self.device)
        digits = np.stack([np.arange(L) // SLOT_RADIX, np.arange(L) % SLOT_RADIX]).astype(np.float32)
        self.slot_digits = torch.as_tensor(np.broadcast_to(digits, (T, 2, L)).copy()).to(self.device)

        def col(a):  # per-node parameters as [T, I, 1] columns, broadcast over the rows
            return a.view(T, I, 1) if isinstance(a, Tensor) else a

        sp = self.splits
        self._thr, self._thr64 = col(sp.threshold), col(sp.threshold64)
        self._le, self._dr, self._kind = col(sp.le), col(sp.default_right), col(sp.missing)

    def _row_bytes(self, x: Tensor) -> int:
        T, I, L = self.n_trees, self.n_inner, self.n_leaf
        e = x.element_size()
        # values and masks [T, I, rows]; sums and hits [T, L, rows]; slots, leaves, leaf values.
        return x.shape[1] * e + T * I * (2 * e + 8) + T * L * 6 + T * (24 + 16 * self.n_outputs)

    def _leaves_block(self, x: Tensor, may_hold_nan: bool) -> Tensor:
        T, I = self.n_trees, self.n_inner
        rows = x.shape[0]
        v = x.t().contiguous().index_select(0, self.splits.feature).view(T, I, rows)  # exact copies of x
        thr = self._thr64 if x.dtype == torch.float64 else self._thr
        r = _go_right(v, thr, self._le, self._dr, self._kind, self.splits.nan_thresholds, may_hold_nan)
        sums = torch.bmm(self.C, r.to(self.C.dtype))  # [T, L, rows], small exact integers
        hit = (sums == self.D).to(self.C.dtype)  # one 1 per (tree, row): the leaf reached
        hi_lo = torch.bmm(self.slot_digits, hit)  # [T, 2, rows]: that leaf's slot in base SLOT_RADIX
        slot = (hi_lo[:, 0] * SLOT_RADIX + hi_lo[:, 1]).to(torch.int64)
        return torch.gather(self.leaf_ids, 1, slot).t().contiguous()  # [rows, trees] like traverse


# ------------------------------------------------------------------------------------ perfect trees
class PerfectForest(_BlockedStrategy):
    """Perfect-tree traversal: complete binary trees of the forest's max depth, one step per level.

    Level d of all trees is one table of T * 2^d slots; the slot of (tree t, heap node i = 2^d - 1 + p)
    is k = t * 2^d + p, and its children on level d+1 are 2k (left) and 2k + 1 (right), i.e. heap
    nodes 2i+1 and 2i+2. A leaf above the bottom fills both child slots (a dummy split whose subtrees
    end in the same leaf), so after D steps k indexes the [T * 2^D] table of IR leaf ids."""

    name = "perfect"

    def __init__(self, forest: Forest, device: torch.device | str = "cpu", block_bytes: int = BLOCK_BYTES):
        super().__init__(forest, device, block_bytes)
        T, depth = forest.n_trees, forest.max_depth
        table_bytes = T * (2**depth) * 40
        if depth > PERFECT_MAX_DEPTH or table_bytes > PERFECT_MAX_TABLE_BYTES:
            raise ValueError(
                f"perfect cannot run {forest.source or 'this forest'}: depth {depth} x {T} trees needs "
                f"{T} x 2^{depth} node slots (limits: PERFECT_MAX_DEPTH = {PERFECT_MAX_DEPTH}, "
                f"PERFECT_MAX_TABLE_BYTES = {PERFECT_MAX_TABLE_BYTES >> 20} MiB)"
            )
        self.depth = depth
        split = _split_mask(forest)
        node_at = forest.roots.astype(np.int64)[:, None]  # [T, 2^d]: the IR node in each slot of level d
        self.levels = []
        for _ in range(depth):
            self.levels.append(_Splits(forest, node_at, self.device, self.flags))
            is_split = split[node_at]
            left = np.where(is_split, forest.left[node_at], node_at)
            right = np.where(is_split, forest.right[node_at], node_at)
            node_at = np.stack([left, right], axis=2).reshape(T, -1).astype(np.int64)
        if split[node_at].any():
            raise ValueError("forest.depth is smaller than a tree's longest path")
        self.leaf_ids = torch.as_tensor(node_at.reshape(-1)).to(self.device)  # [T * 2^depth]
        self.roots = torch.arange(T, device=self.device)

    def _row_bytes(self, x: Tensor) -> int:
        # slot, feature, value, threshold, masks per (row, tree); leaf ids and leaf values.
        return self.n_trees * (40 + 2 * x.element_size() + 16 * self.n_outputs)

    def _leaves_block(self, x: Tensor, may_hold_nan: bool) -> Tensor:
        k = self.roots.expand(x.shape[0], -1)
        f64 = x.dtype == torch.float64
        for sp in self.levels:
            v = torch.gather(x, 1, sp.feature[k])
            thr = (sp.threshold64 if f64 else sp.threshold)[k]
            le = sp.le if isinstance(sp.le, bool) else sp.le[k]
            kind = None if sp.missing is None else sp.missing[k]
            dr = sp.default_right[k] if may_hold_nan or kind is not None else None
            r = _go_right(v, thr, le, dr, kind, sp.nan_thresholds, may_hold_nan)
            k = 2 * k + r
        return self.leaf_ids[k]


# ------------------------------------------------------------------------------------ traverse
class TraverseForest(_BlockedStrategy):
    """strategies.traverse behind the same interface (any node kind it supports)."""

    name = "traverse"

    def __init__(self, forest: Forest, device: torch.device | str = "cpu", block_bytes: int = 0) -> None:
        self.device = torch.device(device)
        self.n_trees = forest.n_trees
        self.ft = strategies.ForestTensors(forest, self.device)

    def leaves(self, x: Tensor) -> Tensor:
        return strategies.leaves(self.ft, x)

    def raw_scores(
        self, x: Tensor, n_trees: int, aggregation: str, base: Tensor, float32_sequential: bool = False
    ) -> Tensor:
        return strategies.raw_scores(self.ft, x, n_trees, aggregation, base, float32_sequential)


STRATEGY_CLASSES = {"gemm": GemmForest, "perfect": PerfectForest, "traverse": TraverseForest}


def build(name: str, forest: Forest, device: torch.device | str = "cpu", block_bytes: int | None = None):
    """The strategy object `name` ("gemm", "perfect", "traverse") for forest on device; ValueError when
    the forest is ineligible for it."""
    if name not in STRATEGY_CLASSES:
        raise ValueError(f"strategy must be one of {STRATEGY_NAMES}, got {name!r}")
    return STRATEGY_CLASSES[name](forest, device, block_bytes or default_block_bytes(device))


# ------------------------------------------------------------------------------------ auto choice
def profile(forest: Forest) -> dict:
    """What choose_strategy needs of a forest, computed once (it walks every node): which strategies
    can run it (node kinds and size limits), its depth and its leaf depth."""
    ok = unsupported_reason(forest) is None
    T, depth = forest.n_trees, forest.max_depth
    inner = leaves = 1
    if ok and T:
        lay = _Layout(forest)
        reach = lay.tree >= 0
        inner = max(int(np.bincount(lay.tree[reach & lay.split], minlength=T).max()), 1)
        leaves = max(int(np.bincount(lay.tree[reach & ~lay.split], minlength=T).max()), 1)
    return {
        "gemm": ok and T * inner * leaves * 4 <= GEMM_MAX_MATRIX_BYTES,
        "perfect": ok and depth <= PERFECT_MAX_DEPTH and T * (2**depth) * 40 <= PERFECT_MAX_TABLE_BYTES,
        "traverse": True,
        "depth": depth,
        "leaf_depth": int(np.ceil(np.log2(leaves))),
    }


def eligible(forest: Forest) -> dict[str, bool]:
    """Which strategies can run the forest (node kinds and size limits), without building them."""
    p = profile(forest)
    return {name: p[name] for name in STRATEGY_NAMES}


def choose_strategy(forest: Forest, rows: int, forest_profile: dict | None = None) -> str:
    """The strategy ("gemm", "perfect" or "traverse") for predicting `rows` rows at once, by depth AND
    batch size (the measured rule above GEMM_SMALL_BATCH_ROWS); never one the forest is ineligible
    for. forest_profile: profile(forest), when the caller keeps it."""
    p = profile(forest) if forest_profile is None else forest_profile
    small = rows <= GEMM_SMALL_BATCH_ROWS
    gemm_depth = GEMM_MAX_LEAF_DEPTH_SMALL_BATCH if small else GEMM_MAX_LEAF_DEPTH
    if p["gemm"] and p["leaf_depth"] <= gemm_depth:
        return "gemm"
    if p["perfect"] and p["depth"] <= PERFECT_MAX_AUTO_DEPTH:
        return "perfect"
    return "traverse"
