"""Batched tree traversal in Triton over the GPU layouts (Note [GPU layouts], csrc/trees/tree_walk.h):
the CUDA kernel's twin.

A program takes BLOCK_R rows and walks the trees BLOCK_T at a time as one [BLOCK_R, BLOCK_T] tile of
(row, tree) pairs (perfect trees: exactly their depth in steps; node layouts: the forest's depth, a
leaf staying put), then adds the tile's leaf values to the row accumulators one tree after the other,
in tree order: column j is taken out of the tile by a sum in which every other entry is -0.0, which
is exact (x + -0.0 == x for every x). So the sums are the CPU kernels' and the CUDA kernel's bit for
bit, whatever BLOCK_R and BLOCK_T (Note [Tree autotuning] in pyzero/trees/gpu.py). The node rules
are the C++ kernels' (tree_cpu.h flags, Note [Perfect trees] in tree_fast.h). Tree count and depth
are compile-time constants (one kernel per forest shape). With tree_split > 1 (small batches, where a
few row blocks would leave the GPU idle) a second grid axis splits the trees: each program walks its
range and stores value rows, then a second kernel adds them per row in tree order, the same way. The
finish (Note [Fused finish]) takes glibc's exp steps (libm_triton.py) and both kernels launch with its
FP_OPTIONS (Note [Triton rounding]). Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from pyzero.kernels.libm_triton import FP_OPTIONS, libm_exp, libm_exp_tables, libm_expf

# What _walk_kernel writes: per row sums, IR leaf ids per (row, tree), or value rows per (row, tree).
OUT_SUMS, OUT_LEAVES, OUT_VALUE_ROWS = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
# Finish kinds (kFinish* in csrc/trees/tree_walk.h).
FINISH_RAW, FINISH_SIGMOID = tl.constexpr(0), tl.constexpr(1)
FLT_MAX = tl.constexpr(3.4028234663852886e38)
FINISH_TABLES = tl.constexpr(2)  # where the exp tables start in the finish words: after scale, divisor
NAN_BITS = tl.constexpr(0x7FC00000)  # a float32 NaN (a NaN constexpr never equals itself)


@triton.jit
def _read(x_ptr, row_base, c, m2, kinds_ptr, HAS_KINDS: tl.constexpr, PERFECT: tl.constexpr):
    """Feature c of the tile's rows as prepare_value (csrc/trees/tree_walk.h) reads it when HAS_KINDS:
    LightGBM's reading, and for the perfect layout the missing-value transforms of Note [Perfect trees]."""
    v = tl.load(x_ptr + row_base + c, mask=m2, other=0.0)
    if HAS_KINDS:
        kind = tl.load(kinds_ptr + c, mask=m2, other=0).to(tl.int32)
        read = tl.where(tl.abs(v) <= 1e-35, 0.0, v)
        read = tl.where(read > FLT_MAX, FLT_MAX, tl.where(read < -FLT_MAX, -FLT_MAX, read))
        v = tl.where((kind & 4) != 0, read, v)
        if PERFECT:
            missing = kind & 3
            v = tl.where((missing == 1) & (v != v), 0.0, v)
            nan = tl.full(v.shape, NAN_BITS, tl.int32).to(tl.float32, bitcast=True)
            v = tl.where((missing == 2) & ((v != v) | (tl.abs(v) <= 1e-35)), nan, v)
    return v


@triton.jit
def _node_left(
    v, meta_dl, meta_lt, kind, is_cat, tbits, thr, cat_bits_ptr, cat_words, cat_lo, cat_hi, cat_invalid, m2
):
    """The C++ node kernel's rule (tree_cpu.h): missing kinds, default direction, categorical sets."""
    v = tl.where((v != v) & (kind == 1), 0.0, v)  # missing type None: NaN reads as 0
    nan = v != v
    missing = tl.where(kind == 2, nan | (tl.abs(v) <= 1e-35), nan)
    go_left = tl.where(meta_lt, v < thr, v <= thr)
    # Note [Categorical splits] (pyzero/trees/forest.py); tbits is the set's row of cat_bits.
    valid = (v >= cat_lo) & (v < cat_hi)
    c = tl.where(valid, v, 0.0).to(tl.int32)
    word = c >> 5
    in_words = m2 & is_cat & valid & (word < cat_words)
    bits = tl.load(cat_bits_ptr + tbits.to(tl.int64) * cat_words + word, mask=in_words, other=0)
    in_set = in_words & (((bits >> (c & 31)) & 1) == 1)
    invalid_left = tl.where(cat_invalid == 2, meta_dl, cat_invalid == 0)
    cat_left = tl.where(valid, in_set != meta_lt, invalid_left)
    go_left = tl.where(is_cat, cat_left, go_left)
    return tl.where(missing, meta_dl, go_left)


@triton.jit
def _add_in_order(
    acc, values_ptr, vr, m2, o, omask, n_outputs, tt, ACC_F32: tl.constexpr, BLOCK_T: tl.constexpr
):
    """acc + the leaf values of value rows vr [BLOCK_R, BLOCK_T], column after column (tree order)."""
    m3 = m2[:, :, None] & omask[None, None, :]
    vals = tl.load(values_ptr + vr[:, :, None] * n_outputs + o[None, None, :], mask=m3, other=-0.0)
    for j in tl.static_range(BLOCK_T):
        col = tl.sum(tl.where(tt[None, :, None] == j, vals, -0.0), axis=1)
        if ACC_F32:
            acc += col.to(tl.float32)
        else:
            acc += col
    return acc


@triton.jit
def _sum_start(base, ACC_F32: tl.constexpr, MEAN: tl.constexpr, BLOCK_R: tl.constexpr, OUT_P: tl.constexpr):
    """The accumulators' start (sum_start in tree_walk.h): base, or 0 for a mean finished later."""
    if MEAN:
        acc = tl.zeros((BLOCK_R, OUT_P), tl.float64)
    elif ACC_F32:
        acc = tl.zeros((BLOCK_R, OUT_P), tl.float32) + base.to(tl.float32)[None, :]
    else:
        acc = tl.zeros((BLOCK_R, OUT_P), tl.float64) + base[None, :]
    return acc


@triton.jit
def _finish_store(
    acc,
    base,
    finish_ptr,
    out_ptr,
    r,
    rmask,
    n_outputs,
    ACC_F32: tl.constexpr,
    FINISH: tl.constexpr,
    MEAN: tl.constexpr,
    PAIR: tl.constexpr,
):
    """Note [Fused finish] (tree_walk.h), then the store of acc [rows, OUT_P]: finish_ptr holds (scale,
    divisor) as float64, then for exp finishes the tables of libm_triton (glibc's exp, Note [Library
    exp]; the kernels run with its FP_OPTIONS); PAIR writes the single output as [1 - p, p]."""
    o = tl.arange(0, acc.shape[1])
    omask = o < n_outputs
    exp_tables_ptr = finish_ptr + FINISH_TABLES
    s = acc.to(tl.float64)
    if MEAN:
        s = s / tl.load(finish_ptr + 1) + base[None, :]
    if FINISH == FINISH_RAW:
        v = s
    elif ACC_F32:  # the library transforms in float32 too
        z = s.to(tl.float32) * tl.load(finish_ptr).to(tl.float32)
        if FINISH == FINISH_SIGMOID:
            v = tl.math.div_rn(1.0, 1.0 + libm_expf(-z, exp_tables_ptr)).to(tl.float64)
        else:
            v = libm_expf(z, exp_tables_ptr).to(tl.float64)
    else:
        z = s * tl.load(finish_ptr)
        if FINISH == FINISH_SIGMOID:
            v = 1.0 / (1.0 + libm_exp(-z, exp_tables_ptr))
        else:
            v = libm_exp(z, exp_tables_ptr)
    if PAIR:
        p = tl.sum(tl.where(o[None, :] == 0, v, -0.0), axis=1)  # the one output, exactly
        q = (1.0 - p.to(tl.float32)).to(tl.float64) if ACC_F32 else 1.0 - p  # P(0) in the library's precision
        tl.store(out_ptr + r.to(tl.int64) * 2, q, mask=rmask)
        tl.store(out_ptr + r.to(tl.int64) * 2 + 1, p, mask=rmask)
    else:
        tl.store(
            out_ptr + r.to(tl.int64)[:, None] * n_outputs + o[None, :],
            v,
            mask=rmask[:, None] & omask[None, :],
        )


@triton.jit
def _sum_value_rows_kernel(
    rows_ptr,
    values_ptr,
    base_ptr,
    finish_ptr,
    out_ptr,
    rows,
    n_outputs,
    N_TREES: tl.constexpr,
    ACC_F32: tl.constexpr,
    FINISH: tl.constexpr,
    MEAN: tl.constexpr,
    PAIR: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
    OUT_P: tl.constexpr,
):
    """base + the leaf values of value rows [rows, N_TREES] (a split walk's), in tree order."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < rows
    o = tl.arange(0, OUT_P)
    omask = o < n_outputs
    base = tl.load(base_ptr + o, mask=omask, other=0.0)
    acc = _sum_start(base, ACC_F32, MEAN, BLOCK_R, OUT_P)
    tt = tl.arange(0, BLOCK_T)
    for c0 in range(0, N_TREES, BLOCK_T):
        t = c0 + tt
        m2 = rmask[:, None] & (t < N_TREES)[None, :]
        vr = tl.load(rows_ptr + r.to(tl.int64)[:, None] * N_TREES + t[None, :], mask=m2, other=0).to(tl.int64)
        acc = _add_in_order(acc, values_ptr, vr, m2, o, omask, n_outputs, tt, ACC_F32, BLOCK_T)
    _finish_store(acc, base, finish_ptr, out_ptr, r, rmask, n_outputs, ACC_F32, FINISH, MEAN, PAIR)


@triton.jit
def _walk_kernel(
    nodes_ptr,
    roots_ptr,
    leaf_nodes_ptr,
    values_ptr,
    thr64_ptr,
    cat_bits_ptr,
    kinds_ptr,
    x_ptr,
    base_ptr,
    finish_ptr,
    out_ptr,
    rows,
    x_stride,
    n_features,
    n_slots,
    n_outputs,
    node_stride,
    cat_words,
    cat_lo,
    cat_hi,
    cat_invalid,
    FORMAT: tl.constexpr,
    N_TREES: tl.constexpr,
    STEPS: tl.constexpr,
    HAS_KINDS: tl.constexpr,
    X_F64: tl.constexpr,
    ACC_F32: tl.constexpr,
    OUT: tl.constexpr,
    FINISH: tl.constexpr,
    MEAN: tl.constexpr,
    PAIR: tl.constexpr,
    TREES_PER_PROGRAM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
    OUT_P: tl.constexpr,
):
    LEAVES = OUT != OUT_SUMS
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < rows
    row_base = (r.to(tl.int64) * x_stride)[:, None]
    o = tl.arange(0, OUT_P)
    omask = o < n_outputs
    base = tl.load(base_ptr + o, mask=omask & (not LEAVES), other=0.0)
    acc = _sum_start(base, ACC_F32, MEAN, BLOCK_R, OUT_P)
    tt = tl.arange(0, BLOCK_T)
    t_lo = tl.program_id(1) * TREES_PER_PROGRAM  # this program's trees: t_lo .. t_lo + TREES_PER_PROGRAM
    for step in range(0, TREES_PER_PROGRAM, BLOCK_T):
        c0 = t_lo + step
        t = c0 + tt
        tmask = t < N_TREES
        m2 = rmask[:, None] & tmask[None, :]
        if FORMAT == 0 or FORMAT == 3:  # perfect trees: heap order or blocked, STEPS = depth
            tree_base = (t.to(tl.int64) * node_stride * 2)[None, :]
            i = tl.zeros((BLOCK_R, BLOCK_T), tl.int64)
            for d in range(STEPS):
                slot = i
                if FORMAT == 3:  # blocked_slot in tree_walk.h
                    j = i - ((1 << d) - 1)
                    g = d // 2
                    ld = d % 2
                    slot = (
                        ((1 << (2 * g)) - 1) // 3 * 4
                        + ((j >> ld) << 2)
                        + ((1 << ld) - 1)
                        + (j & ((1 << ld) - 1))
                    )
                meta = tl.load(nodes_ptr + tree_base + 2 * slot, mask=m2, other=0)
                thr = tl.load(nodes_ptr + tree_base + 2 * slot + 1, mask=m2, other=0).to(
                    tl.float32, bitcast=True
                )
                # Note [Row slots] (csrc/trees/tree_walk.h): slot s = k * n_features + c, copy k
                s = tl.minimum(tl.maximum(meta, 0), n_slots - 1)
                k = (s >= n_features).to(tl.int32) + (s >= 2 * n_features).to(tl.int32)
                v = _read(x_ptr, row_base, s - k * n_features, m2, kinds_ptr, HAS_KINDS, True)
                v = tl.where((k == 1) & (v != v), float("-inf"), v)
                v = tl.where(k == 2, tl.where(v != v, 0.0, 1.0), v)
                i = 2 * i + tl.where(v <= thr, 1, 2)
            vr = (t.to(tl.int64) << STEPS)[None, :] + i - ((1 << STEPS) - 1)
            leaf = tl.load(leaf_nodes_ptr + vr, mask=m2, other=0)
        else:
            pos = (
                tl.zeros((BLOCK_R, BLOCK_T), tl.int64)
                + tl.load(roots_ptr + t, mask=tmask, other=0).to(tl.int64)[None, :]
            )
            for _ in range(STEPS):
                if FORMAT == 1:  # compact 8-byte nodes (Note [GPU layouts])
                    w0 = tl.load(nodes_ptr + pos * 2, mask=m2, other=0)
                    tbits = tl.load(nodes_ptr + pos * 2 + 1, mask=m2, other=0)
                    off = (w0 >> 18) & 16383
                    feature = w0 & 8191
                    dl = (w0 & 8192) != 0
                    lt = (w0 & 16384) != 0
                    kind = (w0 >> 15) & 3
                    is_cat = (w0 & 131072) != 0
                    is_leaf = off == 0
                else:  # the 16-byte nodes of tree_cpu.h, IR order
                    w0 = tl.load(nodes_ptr + pos * 4, mask=m2, other=0)
                    tbits = tl.load(nodes_ptr + pos * 4 + 1, mask=m2, other=0)
                    left_id = tl.load(nodes_ptr + pos * 4 + 2, mask=m2, other=0).to(tl.int64)
                    right_id = tl.load(nodes_ptr + pos * 4 + 3, mask=m2, other=0).to(tl.int64)
                    feature = w0 & 16777215
                    dl = (w0 & 16777216) != 0
                    lt = (w0 & 33554432) != 0
                    kind = (w0 >> 26) & 3
                    is_cat = (w0 & 268435456) != 0
                    is_leaf = (left_id == pos) & (right_id == pos)
                v = _read(x_ptr, row_base, feature, m2 & ~is_leaf, kinds_ptr, HAS_KINDS, False)
                if X_F64:
                    thr = tl.load(thr64_ptr + pos, mask=m2, other=0.0)
                else:
                    thr = tbits.to(tl.float32, bitcast=True)
                go_left = _node_left(
                    v,
                    dl,
                    lt,
                    kind,
                    is_cat,
                    tbits,
                    thr,
                    cat_bits_ptr,
                    cat_words,
                    cat_lo,
                    cat_hi,
                    cat_invalid,
                    m2 & ~is_leaf,
                )
                if FORMAT == 1:
                    nxt = pos + off + tl.where(go_left, 0, 1)
                else:
                    nxt = tl.where(go_left, left_id, right_id)
                pos = tl.where(is_leaf, pos, nxt)
            if FORMAT == 1:
                leaf = tl.load(nodes_ptr + pos * 2 + 1, mask=m2, other=0)
            else:
                leaf = pos.to(tl.int32)
            vr = leaf.to(tl.int64)
        if OUT == OUT_LEAVES:
            tl.store(out_ptr + r.to(tl.int64)[:, None] * N_TREES + t[None, :], leaf.to(tl.int32), mask=m2)
        elif OUT == OUT_VALUE_ROWS:
            tl.store(out_ptr + r.to(tl.int64)[:, None] * N_TREES + t[None, :], vr.to(tl.int32), mask=m2)
        else:
            acc = _add_in_order(acc, values_ptr, vr, m2, o, omask, n_outputs, tt, ACC_F32, BLOCK_T)
    if not LEAVES:
        _finish_store(acc, base, finish_ptr, out_ptr, r, rmask, n_outputs, ACC_F32, FINISH, MEAN, PAIR)


def walk(
    layout,
    x: Tensor,
    base: Tensor,
    float32_accum: bool,
    leaves: bool,
    block_r: int,
    block_t: int,
    tree_split: int = 1,
    finish: tuple[float, ...] = (),
) -> Tensor:
    """The Triton kernel on a pyzero.trees.gpu_layout.GpuLayout (tensors on x's device): raw float64
    [rows, outputs] (base + leaf values in tree order), or with leaves=True the IR leaf node id of every
    tree, int32 [rows, trees]. block_r rows and block_t trees per step: powers of two; tree_split >= 1
    programs share a row block's trees (module docstring); finish: () or (kind, scale, divisor, pair)
    as pyzero::tree_walk takes it (Note [Fused finish] in csrc/trees/tree_walk.h; [rows, 2] when pair)."""
    if x.dim() != 2 or x.dtype not in (torch.float32, torch.float64) or x.shape[1] < layout.n_features:
        raise ValueError(
            f"x must be a 2-D float32 or float64 tensor with {layout.n_features} features, got {x.dtype} "
            f"of shape {tuple(x.shape)}"
        )
    for name, v in (("block_r", block_r), ("block_t", block_t)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two, got {v}")
    if tree_split < 1:
        raise ValueError(f"tree_split must be >= 1, got {tree_split}")
    kind, scale, divisor, pair = finish if finish else (0, 1.0, 0.0, 0)
    if len(finish) not in (0, 4) or kind not in (0, 1, 2) or divisor < 0 or (leaves and finish):
        raise ValueError(
            f"finish must be () or (kind 0/1/2, scale, divisor >= 0, pair), not for leaves; got {finish}"
        )
    if layout.format in (0, 3) and x.dtype != torch.float32:
        raise ValueError("the perfect layout compares float32 inputs only")
    if layout.copies > 1 and x.shape[1] != layout.n_features:
        raise ValueError(
            f"x must have exactly {layout.n_features} features for a layout of {layout.copies} row copies "
            f"(Note [Row slots]), got {x.shape[1]}"
        )
    nodes, roots, leaf_nodes, values, threshold64, cat_bits, column_kind = layout.tensors
    x = x.contiguous()
    rows, n_outputs = x.shape[0], values.shape[1]
    if leaves:
        out = torch.empty((rows, layout.n_trees), dtype=torch.int32, device=x.device)
        base = torch.zeros(1, dtype=torch.float64, device=x.device)
    else:
        if pair and n_outputs != 1:
            raise ValueError(f"finish pair needs one output, the forest has {n_outputs}")
        out = torch.empty((rows, 2 if pair else n_outputs), dtype=torch.float64, device=x.device)
    if rows == 0 or layout.n_trees == 0:
        if layout.n_trees == 0 and finish:
            raise ValueError("finish needs at least one tree")
        if not leaves:
            out[:] = base
        return out
    fin = _finish_scalars(x.device, float(scale), float(divisor), exp=kind != 0)
    # compile-time arguments of the sums, their finish and the tile, the same in both kernels
    sums = {
        "ACC_F32": float32_accum,
        "FINISH": int(kind),
        "MEAN": divisor > 0,
        "PAIR": bool(pair),
        "BLOCK_R": block_r,
        "BLOCK_T": block_t,
        "OUT_P": triton.next_power_of_2(max(n_outputs, 1)),
    }
    dummy_i = nodes  # pointers the format does not read still need a tensor
    lo, hi, invalid = layout.cat_domain
    # trees per program: whole steps of block_t, tree_split programs (or fewer) per row block
    per_program = triton.cdiv(triton.cdiv(layout.n_trees, tree_split), block_t) * block_t
    split = triton.cdiv(layout.n_trees, per_program)
    mode = (OUT_LEAVES if leaves else OUT_SUMS if split == 1 else OUT_VALUE_ROWS).value
    walked = out
    if mode == OUT_VALUE_ROWS.value:
        walked = torch.empty((rows, layout.n_trees), dtype=torch.int32, device=x.device)
    _walk_kernel[(triton.cdiv(rows, block_r), split)](
        nodes,
        roots if roots.numel() else dummy_i,
        leaf_nodes if leaf_nodes.numel() else dummy_i,
        values,
        threshold64 if threshold64.numel() else values,
        cat_bits,
        column_kind if column_kind.numel() else dummy_i,
        x,
        base,
        fin,
        walked,
        rows,
        x.shape[1],
        layout.n_features,
        layout.n_features * layout.copies,
        n_outputs,
        nodes.shape[1] if layout.format in (0, 3) else 0,
        cat_bits.shape[1],
        lo,
        hi,
        int(invalid),
        FORMAT=layout.format,
        N_TREES=layout.n_trees,
        STEPS=layout.depth if layout.format in (0, 3) else layout.max_depth,
        HAS_KINDS=bool(column_kind.numel()),
        X_F64=x.dtype == torch.float64,
        OUT=mode,
        TREES_PER_PROGRAM=per_program,
        **sums,
        **FP_OPTIONS,
    )
    if mode == OUT_VALUE_ROWS.value:
        _sum_value_rows_kernel[(triton.cdiv(rows, block_r),)](
            walked,
            values,
            base,
            fin,
            out,
            rows,
            n_outputs,
            N_TREES=layout.n_trees,
            **sums,
            **FP_OPTIONS,
        )
    return out


_FINISH_SCALARS: dict[tuple[torch.device, float, float, bool], Tensor] = {}


def _finish_scalars(device: torch.device, scale: float, divisor: float, exp: bool) -> Tensor:
    """(scale, divisor) as a float64 tensor on `device`, then with `exp` the tables of libm_triton
    (from FINISH_TABLES on), made once: a kernel argument that is a Python float would be float32, and a
    graph cannot copy it from the host while it captures."""
    key = (device, scale, divisor, exp)
    if key not in _FINISH_SCALARS:
        scalars = torch.tensor([scale, divisor], dtype=torch.float64, device=device)
        _FINISH_SCALARS[key] = torch.cat([scalars, libm_exp_tables(device)]) if exp else scalars
    return _FINISH_SCALARS[key]
