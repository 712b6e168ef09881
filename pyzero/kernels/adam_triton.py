"""Fused AdamW over one flat buffer in Triton: the same math as the CPU and CUDA kernels.

See Note [AdamW update] in csrc/adam.h. Runs on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Elements per program and warps per program of the update kernel.
BLOCK = 2048
NUM_WARPS = 8


@triton.jit
def _pow_f64(base_hi, base_lo, e):
    """(base_hi + base_lo) ** e in fp64 by repeated squaring; e is a non-negative int32."""
    b = tl.cast(base_hi, tl.float64) + tl.cast(base_lo, tl.float64)
    r = b * 0.0 + 1.0
    while e > 0:
        if e % 2 == 1:
            r = r * b
        b = b * b
        e = e // 2
    return r


@triton.jit
def _fused_adamw_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    out_ptr,
    step_ptr,
    grad_scale_ptr,
    found_inf_ptr,
    n,
    lr_hi,
    lr_lo,
    beta1_hi,
    beta1_lo,
    beta2_hi,
    beta2_lo,
    beta2,
    one_minus_beta1,
    one_minus_beta2,
    eps,
    decay,
    l2,
    ADAMW: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_OUT: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # The step count after this update (the wrapper advances the stored count afterwards).
    step = tl.load(step_ptr).to(tl.int32) + 1
    bc1 = 1.0 - _pow_f64(beta1_hi, beta1_lo, step)
    bc2 = 1.0 - _pow_f64(beta2_hi, beta2_lo, step)
    step_size = ((tl.cast(lr_hi, tl.float64) + tl.cast(lr_lo, tl.float64)) / bc1).to(tl.float32)
    bc2_sqrt = tl.sqrt(bc2).to(tl.float32)
    if HAS_FOUND_INF:
        # A nonzero flag empties the range, masking every load and store: the step is a no-op.
        n = tl.where(tl.load(found_inf_ptr) == 0.0, n, 0)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    if HAS_GRAD_SCALE:
        g = g * tl.load(grad_scale_ptr)
    if MAXIMIZE:
        g = -g
    p = tl.load(p_ptr + offs, mask=mask)
    if ADAMW:
        p = p * decay
    else:
        g = g + l2 * p
    m = tl.load(m_ptr + offs, mask=mask)
    m = m + one_minus_beta1 * (g - m)
    v = tl.load(v_ptr + offs, mask=mask) * beta2 + one_minus_beta2 * (g * g)
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    p = p - step_size * tl.div_rn(m, denom)
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    if HAS_OUT:
        tl.store(out_ptr + offs, p.to(out_ptr.dtype.element_ty), mask=mask)


def _split(x: float) -> tuple[float, float]:
    """x as an fp32 pair (hi, lo) with hi + lo == x to about 48 bits."""
    hi = float(torch.tensor(x, dtype=torch.float32))
    return hi, x - hi


def fused_adamw_flat(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    *,
    param_out: Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    adamw_mode: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One update of a flat buffer (any contiguous tensors of n elements), in place.

    Same contract as ``pyzero.reference.fused_adamw_reference`` for a single tensor; `step` is a
    one-element fp32 tensor, advanced by one unless `found_inf` is nonzero.
    """
    n = param.numel()
    lr_hi, lr_lo = _split(lr)
    b1_hi, b1_lo = _split(beta1)
    b2_hi, b2_lo = _split(beta2)
    if n > 0:
        grid = (triton.cdiv(n, BLOCK),)
        _fused_adamw_kernel[grid](
            param,
            grad,
            exp_avg,
            exp_avg_sq,
            param_out if param_out is not None else param,
            step,
            grad_scale if grad_scale is not None else step,
            found_inf if found_inf is not None else step,
            n,
            lr_hi,
            lr_lo,
            b1_hi,
            b1_lo,
            b2_hi,
            b2_lo,
            beta2,
            1.0 - beta1,
            1.0 - beta2,
            eps,
            1.0 - lr * weight_decay if adamw_mode else 1.0,
            0.0 if adamw_mode else weight_decay,
            ADAMW=adamw_mode,
            MAXIMIZE=maximize,
            HAS_OUT=param_out is not None,
            HAS_GRAD_SCALE=grad_scale is not None,
            HAS_FOUND_INF=found_inf is not None,
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
    if found_inf is None:
        step.add_(1)
    else:
        step.add_((found_inf == 0).to(step.dtype))
