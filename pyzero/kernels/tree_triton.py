"""Batched tree traversal in Triton over the packed forest of the C++ node kernel.

The same node format (csrc/trees/tree_cpu.h: 16-byte nodes, flags in the first word) and the same
decision rule per node (NaN / missing kinds, default direction, categorical sets, float32 thresholds
or float64 ones for float64 inputs), so outputs equal the C++ kernel's bit for bit. Each program takes
BLOCK_R rows and walks every tree in order, the forest's depth in steps (leaves point to themselves:
the tree count and depth are compile-time constants, one kernel per forest shape), adding
leaf values in the forest's order: results never depend on the batch size. Runs on CUDA tensors, or
on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Rows per program.
BLOCK_R = 64

# Flags of a packed node's first word (pyzero/trees/strategies.py, csrc/trees/tree_cpu.h).
FEATURE_MASK = (1 << 24) - 1
DEFAULT_LEFT = 1 << 24
CMP_LT = 1 << 25
MISSING_SHIFT = 26
CATEGORICAL = 1 << 28


@triton.jit
def _tree_kernel(
    nodes_ptr,
    values_ptr,
    roots_ptr,
    thr64_ptr,
    cat_bits_ptr,
    x_ptr,
    base_ptr,
    out_ptr,
    rows,
    n_features,
    n_outputs,
    cat_words,
    cat_lo,
    cat_hi,
    cat_invalid,
    N_TREES: tl.constexpr,
    MAX_DEPTH: tl.constexpr,
    X_F64: tl.constexpr,
    ACC_F32: tl.constexpr,
    LEAVES: tl.constexpr,
    BLOCK: tl.constexpr,
    OUT_P: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = r < rows
    row_base = r.to(tl.int64) * n_features
    o = tl.arange(0, OUT_P)
    omask = o < n_outputs
    base = tl.load(base_ptr + o, mask=omask, other=0.0)
    if ACC_F32:
        acc = tl.zeros((BLOCK, OUT_P), tl.float32) + base.to(tl.float32)[None, :]
    else:
        acc = tl.zeros((BLOCK, OUT_P), tl.float64) + base[None, :]
    for t in range(N_TREES):
        node = tl.zeros((BLOCK,), tl.int32) + tl.load(roots_ptr + t)
        for _ in range(MAX_DEPTH):
            at = node.to(tl.int64) * 4
            meta = tl.load(nodes_ptr + at, mask=rmask, other=0)
            tbits = tl.load(nodes_ptr + at + 1, mask=rmask, other=0)
            left = tl.load(nodes_ptr + at + 2, mask=rmask, other=0)
            right = tl.load(nodes_ptr + at + 3, mask=rmask, other=0)
            v = tl.load(x_ptr + row_base + (meta & 16777215), mask=rmask, other=0.0)
            kind = (meta >> 26) & 3
            v = tl.where((v != v) & (kind == 1), 0.0, v)  # missing type None: NaN reads as 0
            nan = v != v
            missing = tl.where(kind == 2, nan | (tl.abs(v) <= 1e-35), nan)
            default_left = (meta & 16777216) != 0
            lt = (meta & 33554432) != 0
            if X_F64:
                thr = tl.load(thr64_ptr + node, mask=rmask, other=0.0)
            else:
                thr = tbits.to(tl.float32, bitcast=True)
            go_left = tl.where(lt, v < thr, v <= thr)
            # Note [Categorical splits] (pyzero/trees/forest.py); `tbits` is the set's row of cat_bits.
            is_cat = (meta & 268435456) != 0
            valid = (v >= cat_lo) & (v < cat_hi)
            c = tl.where(valid, v, 0.0).to(tl.int32)
            word = c >> 5
            in_words = rmask & is_cat & valid & (word < cat_words)
            bits = tl.load(cat_bits_ptr + tbits.to(tl.int64) * cat_words + word, mask=in_words, other=0)
            in_set = in_words & (((bits >> (c & 31)) & 1) == 1)
            invalid_left = tl.where(cat_invalid == 2, default_left, cat_invalid == 0)
            cat_left = tl.where(valid, in_set != lt, invalid_left)
            go_left = tl.where(is_cat, cat_left, go_left)
            go_left = tl.where(missing, default_left, go_left)
            node = tl.where(go_left, left, right)
        if LEAVES:
            tl.store(out_ptr + r.to(tl.int64) * N_TREES + t, node, mask=rmask)
        else:
            vmask = rmask[:, None] & omask[None, :]
            vals = tl.load(
                values_ptr + node.to(tl.int64)[:, None] * n_outputs + o[None, :], mask=vmask, other=0.0
            )
            if ACC_F32:
                acc += vals.to(tl.float32)
            else:
                acc += vals
    if not LEAVES:
        dst = out_ptr + r.to(tl.int64)[:, None] * n_outputs + o[None, :]
        tl.store(dst, acc.to(tl.float64), mask=rmask[:, None] & omask[None, :])


def _launch(
    arrays: tuple[Tensor, ...],
    shape: tuple[int, tuple[float, float, int]],
    x: Tensor,
    base: Tensor | None,
    float32_accum: bool,
    leaves: bool,
):
    nodes, values, roots, _depths, threshold64, cat_bits, _cat_domain = arrays
    max_depth, (lo, hi, invalid) = shape
    if x.dim() != 2 or x.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"x must be a 2-D float32 or float64 tensor, got {x.dtype} of shape {tuple(x.shape)}"
        )
    x = x.contiguous()
    rows, n_trees, n_outputs = x.shape[0], roots.shape[0], values.shape[1]
    if leaves:
        out = torch.empty((rows, n_trees), dtype=torch.int32, device=x.device)
        base = torch.zeros(1, dtype=torch.float64, device=x.device)
    else:
        out = torch.empty((rows, n_outputs), dtype=torch.float64, device=x.device)
    if rows == 0:
        return out
    grid = (triton.cdiv(rows, BLOCK_R),)
    _tree_kernel[grid](
        nodes,
        values,
        roots,
        threshold64,
        cat_bits,
        x,
        base,
        out,
        rows,
        x.shape[1],
        n_outputs,
        cat_bits.shape[1],
        lo,
        hi,
        int(invalid),
        N_TREES=n_trees,
        MAX_DEPTH=max_depth,
        X_F64=x.dtype == torch.float64,
        ACC_F32=float32_accum,
        LEAVES=leaves,
        BLOCK=BLOCK_R,
        OUT_P=triton.next_power_of_2(max(n_outputs, 1)),
    )
    return out


def tree_predict_raw(
    arrays: tuple[Tensor, ...],
    shape: tuple[int, tuple[float, float, int]],
    x: Tensor,
    base: Tensor,
    float32_accum: bool,
) -> Tensor:
    """raw[r, o] = base[o] + leaf values of every tree in order: float64 [rows, outputs].

    arrays: strategies.PackedForest's tensors on x's device; shape: (the forest's depth, its
    categorical domain (lo, hi, invalid)), kept on the host so a call never waits for the device;
    float32_accum: add in float32 as XGBoost does."""
    return _launch(arrays, shape, x, base, float32_accum, leaves=False)


def tree_predict_leaves(
    arrays: tuple[Tensor, ...], shape: tuple[int, tuple[float, float, int]], x: Tensor
) -> Tensor:
    """Global leaf node id reached in every tree: int32 [rows, trees]."""
    return _launch(arrays, shape, x, None, False, leaves=True)
