"""The forest padded to perfect binary trees for the fast C++ CPU kernel (csrc/trees/tree_fast.h), and
as bitvectors for the kernel of small deep trees (csrc/trees/tree_qs.h).

The layout and the one decision rule every node follows are Note [Perfect trees] in
csrc/trees/tree_fast.h; `PerfectForest.from_forest` converts the IR to it exactly (or returns None)
and `why_ineligible` says why a forest does not fit. `BitvectorForest` is Note [Bitvector trees]
(csrc/trees/tree_qs.h) with the same node rule; `why_not_bitvector` says why a forest does not fit.

Tuning constants: PERFECT_MAX_DEPTH and PERFECT_MAX_BYTES below; kGroups, kTopLevels and
kPermuteLevels (with their measurements) in csrc/trees/tree_fast_avx512.cpp; kFastRowBlock in
csrc/trees/tree_fast.h.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyzero import _native
from pyzero.trees import inputs
from pyzero.trees.forest import (
    CAT_INVALID_LEFT,
    CAT_INVALID_RIGHT,
    CMP_CAT_IN_LEFT,
    CMP_CAT_IN_RIGHT,
    CMP_LE,
    CMP_LT,
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    Forest,
    leaf_mask,
    leaves_per_tree,
    levels,
    tree_of,
)

# Deepest forest the perfect layout takes: every tree walks all D levels and stores 2^D leaves, so
# cost grows with the deepest tree, not the typical one. Measured with bench/bench_fast_cpu.py (100
# trees, 10k rows, 28 features, 2 threads, busy 2-core EPYC): depth 12 runs 2.5 (XGBoost) / 2.2
# (LightGBM) M rows/s against 0.34 / 0.26 for PackedForest. 14 is a guess (memory 2^14 leaves/tree) not
# yet measured; deeper forests stay on PackedForest.
PERFECT_MAX_DEPTH = 14
# Most bytes the padded arrays of one forest may take (meta, thresholds, leaf ids, float64 and float32
# leaf values); above it the forest stays on PackedForest.
PERFECT_MAX_BYTES = 256 << 20
# Node slots per tree are at least this many (kMinNodeStride in tree_fast.h: permutes read 63 nodes).
MIN_NODE_STRIDE = 64
# column_kind values (kColumn* in tree_fast.h): how a feature's column is read.
COLUMN_AS_IS, COLUMN_NAN_TO_ZERO, COLUMN_ZERO_TO_NAN = 0, 1, 2
COLUMN_MISSING_MASK = 3  # the three kinds above (kColumnMissingMask)
COLUMN_LIGHTGBM_READING = 4  # flag: the kernel reads inputs as LightGBM does (tiny -> 0, inf -> max)
_COLUMN_OF_MISSING = {
    MISSING_NAN: COLUMN_AS_IS,
    MISSING_NONE: COLUMN_NAN_TO_ZERO,
    MISSING_ZERO: COLUMN_ZERO_TO_NAN,
}
DEFAULT_LEFT_BIT = 31
META_FEATURE_MASK = (1 << DEFAULT_LEFT_BIT) - 1  # kMetaFeatureMask
MAX_FEATURES = 1 << 26  # the kernel's 32-bit gather offsets (lane * n_features + feature)


def padded_bytes(n_trees: int, depth: int, n_outputs: int) -> int:
    leaves = 1 << depth
    stride = max(leaves, MIN_NODE_STRIDE)
    return n_trees * (stride * 8 + leaves * 4 + leaves * n_outputs * 12)


def _why_not_numeric(forest: Forest, categorical: bool = False) -> str | None:
    """None when every split fits the node rule of Note [Perfect trees] (or, with `categorical`, is a
    categorical split on a feature with no numeric ones), else the reason."""
    if forest.n_trees == 0 or forest.n_features < 1:
        return "no trees or no features"
    if forest.n_features >= MAX_FEATURES:
        return f"more than {MAX_FEATURES} features"
    split = forest.feature >= 0
    cat = np.isin(forest.cmp[split], (CMP_CAT_IN_LEFT, CMP_CAT_IN_RIGHT)) if categorical else False
    if not (np.isin(forest.cmp[split], (CMP_LE, CMP_LT)) | cat).all():
        return "a split is neither x <= t nor x < t" + (" nor categorical" if categorical else "")
    if categorical and np.intersect1d(forest.feature[split][cat], forest.feature[split][~cat]).size:
        return "a feature has both numeric and categorical splits"
    if not np.isin(forest.missing[split], tuple(_COLUMN_OF_MISSING)).all():
        return "unknown missing-value kind"
    if _column_kinds(forest) is None:
        return "a feature mixes missing-value kinds"
    return None


def why_ineligible(forest: Forest) -> str | None:
    """None when the forest fits Note [Perfect trees], else the reason it does not."""
    why = _why_not_numeric(forest)
    if why is not None:
        return why
    if forest.max_depth > PERFECT_MAX_DEPTH:
        return f"depth {forest.max_depth} > PERFECT_MAX_DEPTH={PERFECT_MAX_DEPTH}"
    size = padded_bytes(forest.n_trees, forest.max_depth, forest.n_outputs)
    if size > PERFECT_MAX_BYTES:
        return f"padded trees need {size} bytes > PERFECT_MAX_BYTES={PERFECT_MAX_BYTES}"
    return None


def _column_kinds(forest: Forest) -> np.ndarray | None:
    """column_kind per feature, or None when some feature's splits disagree on the missing kind."""
    split = forest.feature >= 0
    feats, kinds = forest.feature[split], forest.missing[split]
    out = np.full(forest.n_features, -1, dtype=np.int64)
    out[feats] = kinds
    if (out[feats] != kinds).any():  # np assigns one of the kinds; any other kind on that feature
        return None
    col = np.zeros(forest.n_features, dtype=np.int8)
    for missing, column in _COLUMN_OF_MISSING.items():
        col[out == missing] = column
    if reads_like_lightgbm(forest):
        col |= COLUMN_LIGHTGBM_READING
    return col


def reads_like_lightgbm(forest: Forest) -> bool:
    """Whether the kernel itself reads inputs as LightGBM does (so the caller skips that step)."""
    return bool(forest.extra.get("zero_tiny_inputs") and forest.extra.get("clamp_inf"))


def _uniform_threshold(t32: np.ndarray, lt: np.ndarray) -> np.ndarray:
    """The float32 t' with `x <= t'` equal to the node's own test for every float32 x."""
    t32 = t32.astype(np.float32)
    below = np.nextafter(t32, np.float32(-np.inf))
    below[np.isneginf(t32)] = np.float32(np.nan)  # x < -inf never holds
    return np.where(lt, below, t32).astype(np.float32)


class _KernelOps:
    """raw() and leaves() of a C++ CPU kernel through its prepared calls (Note [Prepared CPU calls] in
    csrc/trees/tree_cpu_plan.h): `plan`, a pyzero._C.CpuKernelPlan made once from the arrays of the ops
    (its node arrays, values, values32, leaf_nodes, column_kind)."""

    values: Tensor
    values32: Tensor
    leaf_nodes: Tensor
    column_kind: Tensor
    plan: Any

    def _nodes(self) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def raw(self, x: Tensor, base: Tensor, float32_accum: bool) -> Tensor:
        """base + sum of the leaf values over trees in tree order: float64 [rows, outputs]."""
        return self.plan.raw(x, base, float32_accum)

    def leaves(self, x: Tensor) -> Tensor:
        """IR global node id of the leaf each row reaches in each tree: int64 [rows, trees]."""
        return self.plan.leaves(x).long()


class PerfectForest(_KernelOps):
    """The Forest as perfect trees (Note [Perfect trees]) for pyzero::tree_perfect_raw / _leaves."""

    def __init__(self, forest: Forest) -> None:
        reason = why_ineligible(forest)
        if reason is not None:
            raise ValueError(f"forest does not fit the perfect-tree kernel: {reason}")
        is_leaf = leaf_mask(forest)
        depth, n_trees = forest.max_depth, forest.n_trees
        stride = max(1 << depth, MIN_NODE_STRIDE)
        meta = np.zeros((n_trees, stride), dtype=np.uint32)
        thr = np.zeros((n_trees, stride), dtype=np.float32)
        cur = forest.roots.astype(np.int64)[:, None]  # [trees, nodes of this level]
        split_meta = forest.feature.clip(min=0).astype(np.uint32) | (
            forest.default_left.astype(np.uint32) << DEFAULT_LEFT_BIT
        )
        split_thr = _uniform_threshold(forest.threshold32, forest.cmp == CMP_LT)
        for k in range(depth):
            off, leaf = (1 << k) - 1, is_leaf[cur]
            meta[:, off : off + (1 << k)] = np.where(leaf, 0, split_meta[cur])
            thr[:, off : off + (1 << k)] = np.where(leaf, np.float32(0), split_thr[cur])
            nxt = np.empty((n_trees, 2 << k), dtype=np.int64)
            nxt[:, 0::2] = np.where(leaf, cur, forest.left[cur])
            nxt[:, 1::2] = np.where(leaf, cur, forest.right[cur])
            cur = nxt
        if not is_leaf[cur].all():
            raise ValueError("Forest.depth is smaller than a tree's real depth")
        self.depth = depth
        self.meta = torch.as_tensor(meta.view(np.int32))
        self.threshold = torch.as_tensor(thr)
        self.leaf_nodes = torch.as_tensor(cur.astype(np.int32))
        values = np.ascontiguousarray(forest.value[cur], dtype=np.float64)  # [trees, 2^depth, outputs]
        self.values = torch.as_tensor(values)
        self.values32 = torch.as_tensor(values.astype(np.float32))
        self.column_kind = torch.as_tensor(_column_kinds(forest))
        self.plan = _native.require("the perfect-tree kernel").PerfectPlan(
            self.meta,
            self.threshold,
            self.values,
            self.values32,
            self.leaf_nodes,
            self.column_kind,
            forest.n_features,
        )

    @staticmethod
    def from_forest(forest: Forest) -> PerfectForest | None:
        """The perfect-tree form of `forest`, or None when it is ineligible (see why_ineligible)."""
        return PerfectForest(forest) if why_ineligible(forest) is None else None

    def _nodes(self) -> tuple[Tensor, ...]:
        return (self.meta, self.threshold)


# Note [Bitvector trees] (csrc/trees/tree_qs.h): leaves a word holds, and leaves a tree may have.
BITVECTOR_WORD_BITS = 64
BITVECTOR_MAX_LEAVES = 256
# Largest categorical tables (Note [Bitvector trees]): the sum over categorical features of (table rows)
# x (split nodes), which bounds the tables' construction memory and their entries (16M: 16 MB a build).
BITVECTOR_MAX_CAT_CELLS = 1 << 24
# Forests both CPU kernels take: the perfect kernel's cost grows with the depth (every tree walks all
# of its levels), the bitvector kernel's with the leaves. The cpu backend picks the bitvector kernel
# from depth BITVECTOR_MIN_DEPTH on when trees average at most BITVECTOR_LEAVES_PER_LEVEL leaves per
# level of depth. Measured (2-core EPYC, 2 threads, 100 LightGBM trees, 28 features, 10k rows, M rows/s
# perfect / bitvector): 31 leaves depth 8 5.6 / 6.1, depth 10 4.1 / 5.0, depth 12 3.1 / 5.0, depth 14
# 2.3 / 4.9; 63 leaves depth 10 4.1 / 2.6, depth 12 3.0 / 2.6; XGBoost depth 6 9.8 / 3.6.
BITVECTOR_MIN_DEPTH = 11
BITVECTOR_LEAVES_PER_LEVEL = 3


def prefers_bitvector(forest: Forest) -> bool:
    """Whether the bitvector kernel should take a forest that both CPU kernels fit (the measurements
    above)."""
    mean_leaves = leaf_mask(forest).sum() / max(forest.n_trees, 1)
    return (
        forest.max_depth >= BITVECTOR_MIN_DEPTH
        and mean_leaves <= BITVECTOR_LEAVES_PER_LEVEL * forest.max_depth
    )


def why_not_bitvector(forest: Forest) -> str | None:
    """None when the forest fits Note [Bitvector trees], else the reason it does not."""
    why = _why_not_numeric(forest, categorical=True)
    if why is not None:
        return why
    cat = forest.cat_set >= 0
    if cat.any():
        if not np.float32(forest.cat_domain[0]) > -1 or not np.float32(forest.cat_domain[1]) <= 2.0**31:
            return "the categorical domain is not within (-1, 2**31]"
        k = _set_categories(forest)[forest.cat_set[cat]]
        feat = forest.feature[cat]
        cells = sum((k[feat == c].max() + 3) * (feat == c).sum() for c in np.unique(feat))
        if cells > BITVECTOR_MAX_CAT_CELLS:
            return f"categorical tables of {cells} (value, node) cells > {BITVECTOR_MAX_CAT_CELLS}"
    leaves = leaves_per_tree(forest)
    if leaves.max() > BITVECTOR_MAX_LEAVES:
        return f"a tree has {int(leaves.max())} leaves > {BITVECTOR_MAX_LEAVES}"
    return None


class BitvectorForest(_KernelOps):
    """The Forest as Note [Bitvector trees] (csrc/trees/tree_qs.h) for pyzero::tree_qs_raw / _leaves:
    every numeric split node as one entry (threshold, word, mask of the leaves it leaves standing there
    when it fails) per word of leaves its left subtree touches, sorted by threshold within its feature,
    the entries a NaN fails per feature, and each categorical feature's table of the entries each kind
    of value fails."""

    def __init__(self, forest: Forest) -> None:
        reason = why_not_bitvector(forest)
        if reason is not None:
            raise ValueError(f"forest does not fit the bitvector kernel: {reason}")
        n = forest.feature.shape[0]
        ids = np.arange(n)
        is_leaf = leaf_mask(forest)
        tree = tree_of(forest)
        # leaves under each node, then the first leaf of each (leaves numbered left to right per tree)
        count = is_leaf.astype(np.int64)
        by_level = levels(forest)
        for lv in reversed(by_level):
            inner = lv[~is_leaf[lv]]
            count[inner] = count[forest.left[inner]] + count[forest.right[inner]]
        first = np.zeros(n, dtype=np.int64)
        for lv in by_level:
            inner = lv[~is_leaf[lv]]
            first[forest.left[inner]] = first[inner]
            first[forest.right[inner]] = first[inner] + count[forest.left[inner]]
        word_start = np.zeros(forest.n_trees + 1, dtype=np.int64)
        word_start[1:] = np.cumsum(-(-count[forest.roots] // BITVECTOR_WORD_BITS))
        split = ids[~is_leaf]
        # one entry per word that the left subtree's leaves [lo, hi) touch
        lo, hi = first[forest.left[split]], first[forest.left[split]] + count[forest.left[split]]
        w_lo = lo // BITVECTOR_WORD_BITS
        runs = (hi - 1) // BITVECTOR_WORD_BITS - w_lo + 1
        node = split[np.repeat(np.arange(split.size), runs)]  # the split node of each entry
        local = w_lo.repeat(runs) + np.arange(node.size) - np.repeat(np.cumsum(runs) - runs, runs)
        bit_lo = np.clip(lo.repeat(runs) - local * BITVECTOR_WORD_BITS, 0, BITVECTOR_WORD_BITS)
        bit_hi = np.clip(hi.repeat(runs) - local * BITVECTOR_WORD_BITS, 0, BITVECTOR_WORD_BITS)
        mask = ~(_low_bits(bit_hi) & ~_low_bits(bit_lo))  # a failed node rules out its left subtree's leaves
        word = word_start[tree[node]] + local
        self.column_kind = torch.as_tensor(_column_kinds(forest))
        numeric = np.isin(forest.cmp[node], (CMP_LE, CMP_LT))
        self._numeric_lists(forest, node[numeric], word[numeric], mask[numeric])
        self._categorical_tables(forest, node[~numeric], word[~numeric], mask[~numeric])
        self.word_start = torch.as_tensor(word_start)
        leaf = ids[is_leaf]
        slot = word_start[tree[leaf]] * BITVECTOR_WORD_BITS + first[leaf]
        n_slots = int(word_start[-1]) * BITVECTOR_WORD_BITS
        leaf_nodes = np.zeros(n_slots, dtype=np.int32)
        leaf_nodes[slot] = leaf
        values = np.zeros((n_slots, forest.n_outputs), dtype=np.float64)
        values[slot] = forest.value[leaf]
        self.leaf_nodes = torch.as_tensor(leaf_nodes.reshape(-1, BITVECTOR_WORD_BITS))
        self.values = torch.as_tensor(values.reshape(-1, BITVECTOR_WORD_BITS, forest.n_outputs))
        self.values32 = self.values.to(torch.float32)
        self.plan = _native.require("the bitvector kernel").QsPlan(
            list(self._nodes()),
            self.values,
            self.values32,
            self.leaf_nodes,
            self.column_kind,
            forest.n_features,
        )

    def _numeric_lists(self, forest: Forest, node: np.ndarray, word: np.ndarray, mask: np.ndarray) -> None:
        """The numeric entries (node, word, mask) by feature, then threshold (NaN, x < -inf, first), and
        the entries a NaN fails by feature."""
        thr = _uniform_threshold(forest.threshold32[node], forest.cmp[node] == CMP_LT)
        feat = forest.feature[node].astype(np.int64)
        nan_thr = np.isnan(thr)
        order = np.lexsort((~nan_thr, np.where(nan_thr, -np.inf, thr), feat))
        starts = np.zeros(forest.n_features + 1, dtype=np.int64)
        starts[1:] = np.cumsum(np.bincount(feat, minlength=forest.n_features))
        nan_col = (self.column_kind.numpy() & COLUMN_MISSING_MASK) != COLUMN_NAN_TO_ZERO
        fails_nan = ~forest.default_left[node] & nan_col[feat]  # a NaN goes right there
        nan_order = np.flatnonzero(fails_nan)[np.argsort(feat[fails_nan], kind="stable")]
        nan_starts = np.zeros(forest.n_features + 1, dtype=np.int64)
        nan_starts[1:] = np.cumsum(np.bincount(feat[fails_nan], minlength=forest.n_features))
        self.threshold = torch.as_tensor(thr[order].astype(np.float32))
        self.word = torch.as_tensor(word[order].astype(np.int32))
        self.mask = torch.as_tensor(mask[order].view(np.int64))
        self.start = torch.as_tensor(starts)
        self.nan_word = torch.as_tensor(word[nan_order].astype(np.int32))
        self.nan_mask = torch.as_tensor(mask[nan_order].view(np.int64))
        self.nan_start = torch.as_tensor(nan_starts)

    def _categorical_tables(
        self, forest: Forest, node: np.ndarray, word: np.ndarray, mask: np.ndarray
    ) -> None:
        """Each categorical feature's table (Note [Bitvector trees]): rows of the K categories below its
        sets' highest bit, then categories >= K, values outside the domain, NaN; a row's entries are its
        failing nodes' entries, one per word (masks ANDed)."""
        cat_feature = np.full((forest.n_features, 2), -1, dtype=np.int64)
        rows_words, rows_masks, row_counts = [], [], []
        n_rows = 0
        invalid = int(forest.cat_domain[2])
        for c in np.unique(forest.feature[node]):
            ents = np.flatnonzero(forest.feature[node] == c)
            nodes, pos = np.unique(node[ents], return_inverse=True)
            in_set = _category_bits(forest, nodes)  # [nodes, K]
            k = in_set.shape[1]
            goes_right = forest.cmp[nodes] == CMP_CAT_IN_RIGHT  # in its set -> right (fails)
            fails_default = ~forest.default_left[nodes]
            fails = np.vstack(
                [
                    (in_set == goes_right[:, None]).T,  # category k: fails when it goes right
                    ~goes_right,  # no set holds categories >= K
                    np.full(nodes.size, invalid == CAT_INVALID_RIGHT)
                    if invalid in (CAT_INVALID_LEFT, CAT_INVALID_RIGHT)
                    else fails_default,
                    fails_default,  # NaN: missing
                ]
            )  # [K + 3, nodes]
            row, e = np.nonzero(fails[:, pos])  # (table row, entry of feature c) pairs
            w, m = word[ents][e], mask[ents][e]
            order = np.lexsort((w, row))
            row, w, m = row[order], w[order], m[order]
            new = np.ones(row.size, dtype=bool)
            new[1:] = (row[1:] != row[:-1]) | (w[1:] != w[:-1])
            at = np.flatnonzero(new)
            rows_words.append(w[at])
            rows_masks.append(np.bitwise_and.reduceat(m, at) if at.size else m[:0])
            row_counts.append(np.bincount(row[at], minlength=k + 3))
            cat_feature[c] = (n_rows, k)
            n_rows += k + 3
        row_start = np.zeros(n_rows + 1, dtype=np.int64)
        if row_counts:
            row_start[1:] = np.cumsum(np.concatenate(row_counts))
        self.cat_feature = torch.as_tensor(cat_feature)
        self.cat_row_start = torch.as_tensor(row_start)
        self.cat_word = torch.as_tensor(np.concatenate([np.zeros(0, np.int64), *rows_words]).astype(np.int32))
        self.cat_mask = torch.as_tensor(np.concatenate([np.zeros(0, np.uint64), *rows_masks]).view(np.int64))
        self.cat_domain = torch.as_tensor(np.asarray(forest.cat_domain, dtype=np.float64))

    def _nodes(self) -> tuple[Tensor, ...]:
        return (
            self.threshold,
            self.word,
            self.mask,
            self.start,
            self.nan_word,
            self.nan_mask,
            self.nan_start,
            self.word_start,
            self.cat_feature,
            self.cat_row_start,
            self.cat_word,
            self.cat_mask,
            self.cat_domain,
        )


def _set_categories(forest: Forest) -> np.ndarray:
    """int64 [sets]: one past the highest category each row of cat_bits holds (0 for an empty set)."""
    bits = forest.cat_bits.astype(np.uint32)
    if bits.size == 0:
        return np.zeros(bits.shape[0], dtype=np.int64)
    nz = bits != 0
    last = bits.shape[1] - 1 - np.argmax(nz[:, ::-1], axis=1)  # the last non-zero word
    top = np.frexp(bits[np.arange(bits.shape[0]), last].astype(np.float64))[1]  # its bit length
    return np.where(nz.any(axis=1), 32 * last + top, 0).astype(np.int64)


def _category_bits(forest: Forest, nodes: np.ndarray) -> np.ndarray:
    """bool [nodes, K]: category k in categorical node n's set, K one past the highest category any of
    the nodes' sets holds (Note [Categorical splits]: bit k % 32 of word k // 32)."""
    sets = forest.cat_set[nodes]
    k = int(_set_categories(forest)[sets].max(initial=0))
    words = forest.cat_bits[sets, : -(-k // 32)].astype("<u4")
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little").astype(bool)
    return bits[:, :k]


def _low_bits(k: np.ndarray) -> np.ndarray:
    """uint64 words of k low bits set, for k in [0, 64]."""
    ones = np.uint64(1)
    full = k >= BITVECTOR_WORD_BITS
    return np.where(full, ~np.uint64(0), (ones << np.where(full, 0, k).astype(np.uint64)) - ones)


# Note [CPU kernel choice]
# ~~~~~~~~~~~~~~~~~~~~~~~~
# Which of the perfect and bitvector kernels is faster for a forest both take depends on its rows as well
# as its shape: the bitvector kernel stops a feature's nodes once a vector of rows fails none, so
# clustered thresholds favour it (breast_cancer, XGBoost depth 6: 19.6 against 9.5 M rows/s) and spread
# ones do not (28 HIGGS-like features: 3.6 against 9.8). Batches of fewer than CPU_TUNE_MIN_ROWS rows
# take the static choice (prefers_bitvector); the first batch of at least that many times both kernels
# on CPU_TUNE_ROWS of its own rows (the best of CPU_TUNE_REPS interleaved calls each) and larger batches
# keep the other kernel only if it was CPU_TUNE_MARGIN times faster (a noisy timing must not trade a
# kernel for a slower one). Both give the same bits (the same node rule, sums in tree order), so the
# choice changes speed only.
CPU_TUNE_MIN_ROWS = 2048
CPU_TUNE_ROWS = 2048
CPU_TUNE_REPS = 5
CPU_TUNE_MARGIN = 1.25


class CpuKernelChoice:
    """The perfect and bitvector kernels of a forest that fits both, chosen per batch (Note [CPU kernel
    choice]); raw() and leaves() as theirs."""

    def __init__(self, forest: Forest) -> None:
        self.kernels = {"perfect": PerfectForest(forest), "bitvector": BitvectorForest(forest)}
        self.static = "bitvector" if prefers_bitvector(forest) else "perfect"
        self.large: str | None = None  # the timed choice for large batches, once timed

    @property
    def plan(self) -> Any:
        """The static kernel's plan (Note [Prepared CPU calls]): batches of fewer than CPU_TUNE_MIN_ROWS
        rows, which always take it."""
        return self.kernels[self.static].plan

    def name_for(self, rows: int) -> str:
        """The kernel a batch of `rows` takes (large batches before the first one: the static choice)."""
        return (self.large or self.static) if rows >= CPU_TUNE_MIN_ROWS else self.static

    def _run(self, x: Tensor, call: Callable[[Any, Tensor], Tensor]) -> Tensor:
        """call(kernel, x) with the kernel of x's batch, timing both first on the first large batch."""
        if x.shape[0] >= CPU_TUNE_MIN_ROWS and self.large is None:
            sample = x[:CPU_TUNE_ROWS]
            best = dict.fromkeys(self.kernels, float("inf"))
            for _ in range(CPU_TUNE_REPS):  # interleaved, the best of each: a busy machine hurts both alike
                for name, kernel in self.kernels.items():
                    t0 = time.perf_counter()
                    call(kernel, sample)
                    best[name] = min(best[name], time.perf_counter() - t0)
            other = next(name for name in self.kernels if name != self.static)
            self.large = other if best[other] * CPU_TUNE_MARGIN < best[self.static] else self.static
        return call(self.kernels[self.name_for(x.shape[0])], x)

    def raw(self, x: Tensor, base: Tensor, float32_accum: bool) -> Tensor:
        if x.shape[0] < CPU_TUNE_MIN_ROWS:  # small batches: no timing, no closure (batch-1 latency)
            return self.kernels[self.static].raw(x, base, float32_accum)
        return self._run(x, lambda kernel, rows: kernel.raw(rows, base, float32_accum))

    def leaves(self, x: Tensor) -> Tensor:
        return self._run(x, lambda kernel, rows: kernel.leaves(rows))


# Note [Binned float64 inputs]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# Forests that compare float64 inputs (scikit-learn's HistGradientBoosting: float64 x <= float64 t) run
# on the float32 kernels exactly after one pass over the rows (pyzero::bin_rows): value x of feature c
# becomes r(x) = how many of feature c's distinct thresholds t_0 < t_1 < ... lie below x, an integer
# that float32 holds exactly, and the node of threshold t_k becomes r <= k. The two agree for every x:
# x <= t_k leaves at most t_0 .. t_(k-1) below x, and x > t_k leaves t_0 .. t_k below it. NaN stays NaN
# and goes the node's default way, infinities count 0 or all thresholds. A feature without thresholds
# passes as float32(x): HistGradientBoosting's categorical features, whose inputs its encoding has made
# codes below 256 or NaN (Note [Categorical splits]), exact in float32, so their nodes stay as they are.
# Forests of x <= t splits with NaN as their missing value and categorical splits on encoded features
# (no x < t, no NaN thresholds, no feature with both kinds).
# Binning is a lockstep binary search per value (pyzero::bin_rows: 5 ms for 100k rows of 20 features on
# the 2-core EPYC). HistGradientBoostingClassifier, 100 trees, 28 features with NaN, 2 threads
# (bench/bench_deep_cpu.py --only HistGradient): 31 leaves (depth 13) 3.0 M rows/s on the bitvector
# kernel against 0.9 M on the float64 node kernel and 0.45-0.60 M for scikit-learn; depth 6: 5.2 M on
# the perfect kernel, 1.3 M and 0.44-0.56 M; four categorical features: 2.8 M, 0.77 M and 0.26 M.
# BinnedKernel.plan bins inside the prepared call (batch 1: 6.7 us).
#
# Note [Encoded categories]
# ~~~~~~~~~~~~~~~~~~~~~~~~~
# HistGradientBoosting encodes its categorical features before its trees read them (an OrdinalEncoder:
# a category's position among the known ones, NaN for any other value); inputs.py does the same in numpy
# or torch (_encode_numeric). For numeric rows taken as they are, the prepared call does it instead
# (BinnedRows.encoding, the plan of BinnedKernel): in pyzero::bin_rows a feature's known categories are
# its edges, ascending, and a value takes the code of the edge it equals (the same lockstep search), NaN
# when it equals none, so a batch of categorical rows takes one C++ call too. Forests whose categories
# are all numbers (not NaN) and whose encoded features have no thresholds.


def why_not_binned(forest: Forest) -> str | None:
    """None when Note [Binned float64 inputs] applies to the forest, else the reason it does not."""
    if forest.n_trees == 0 or forest.n_features < 1:
        return "no trees or no features"
    split = forest.feature >= 0
    cat = split & np.isin(forest.cmp, (CMP_CAT_IN_LEFT, CMP_CAT_IN_RIGHT))
    numeric = split & ~cat
    if not (forest.cmp[numeric] == CMP_LE).all():
        return "a split is neither x <= t nor categorical"
    if not (forest.missing[split] == MISSING_NAN).all():
        return "a split's missing value is not NaN"
    if np.isnan(forest.threshold64[numeric]).any():
        return "a threshold is NaN"
    cat_features = np.unique(forest.feature[cat])
    if np.intersect1d(cat_features, forest.feature[numeric]).size:
        return "a feature has both numeric and categorical splits"
    if cat_features.size and not (
        forest.encode_numeric and set(cat_features.tolist()) <= set(forest.categories)
    ):
        return "a categorical feature's inputs are not encoded as codes"
    return None


class BinnedRows:
    """Note [Binned float64 inputs] for a forest that why_not_binned accepts: `forest`, its copy whose
    node of feature c's k-th smallest threshold compares with k (float32 input), and `kernel(inner)`,
    a kernel of that copy taking float64 rows."""

    def __init__(self, forest: Forest) -> None:
        reason = why_not_binned(forest)
        if reason is not None:
            raise ValueError(f"forest inputs cannot be binned: {reason}")
        split = (forest.feature >= 0) & (forest.cmp == CMP_LE)  # categorical features keep their codes
        feat, thr = forest.feature[split], forest.threshold64[split]
        edges = [np.unique(thr[feat == c]) for c in range(forest.n_features)]
        starts = np.zeros(forest.n_features + 1, dtype=np.int64)
        starts[1:] = np.cumsum([e.size for e in edges])
        rank = forest.threshold64.copy()
        for c, e in enumerate(edges):
            nodes = np.flatnonzero(split & (forest.feature == c))
            rank[nodes] = np.searchsorted(e, forest.threshold64[nodes])
        self.edges = torch.as_tensor(np.concatenate(edges) if edges else np.zeros(0))
        self.starts = torch.as_tensor(starts)
        self.encoding = _encoding(forest, edges)
        self.forest = replace(
            forest,
            threshold64=rank,
            threshold32=np.where(split, rank.astype(np.float32), forest.threshold32),
            extra={**forest.extra, "input": "float32"},
        )
        _native.require("binned float64 inputs")  # registers pyzero::bin_rows

    def bin(self, x: Tensor) -> Tensor:
        """float32 [rows, n_features] ranks of float64 rows x [rows, n_features] (categories encoded)."""
        return torch.ops.pyzero.bin_rows(x.contiguous(), self.edges, self.starts)

    def encode_and_bin(self, x: Tensor) -> Tensor:
        """bin() of rows whose categorical features hold categories, not codes (Note [Encoded
        categories]); self.encoding must not be None."""
        return torch.ops.pyzero.bin_rows(x.contiguous(), *self.encoding)

    def kernel(self, inner: Any) -> BinnedKernel:
        return BinnedKernel(self, inner)


def _encoding(forest: Forest, edges: list[np.ndarray]) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Note [Encoded categories]: bin_rows' (edges, starts, codes, encoded) that also encode the
    categorical features (float64, int64 [n_features + 1], float32, bool [n_features]), or None."""
    if not (forest.encode_numeric and forest.categories):
        return None
    try:
        table = inputs.category_codes(forest)
    except TypeError:  # string categories: DataFrames only
        return None
    edges = list(edges)
    codes = [np.zeros(e.size, dtype=np.float32) for e in edges]
    encoded = np.zeros(forest.n_features, dtype=bool)
    for j, known, code in table:
        if edges[j].size or np.isnan(known).any():
            return None
        edges[j], codes[j], encoded[j] = known, code.astype(np.float32), True
    starts = np.concatenate([[0], np.cumsum([e.size for e in edges])]).astype(np.int64)
    as_tensor = [np.concatenate(edges).astype(np.float64), starts, np.concatenate(codes), encoded]
    return tuple(torch.as_tensor(a) for a in as_tensor)


class BinnedKernel:
    """raw() and leaves() of a float32 CPU kernel (`inner`, built on BinnedRows.forest) on float64 rows,
    binned first (Note [Binned float64 inputs])."""

    def __init__(self, binned: BinnedRows, inner: Any) -> None:
        self.binned, self.inner = binned, inner
        # Note [Prepared CPU calls]: the inner kernel's plan behind the binning, in one C++ call; it takes
        # categories rather than codes when it encodes them (Note [Encoded categories])
        self.encodes = binned.encoding is not None
        self.plan = _native.C.BinnedPlan(inner.plan, *(binned.encoding or (binned.edges, binned.starts)))

    def raw(self, x: Tensor, base: Tensor, float32_accum: bool) -> Tensor:
        """base + sum of the leaf values over trees in tree order: float64 [rows, outputs]."""
        return self.inner.raw(self.binned.bin(x), base, float32_accum)

    def leaves(self, x: Tensor) -> Tensor:
        """IR global node id of the leaf each row reaches in each tree: int64 [rows, trees]."""
        return self.inner.leaves(self.binned.bin(x))
