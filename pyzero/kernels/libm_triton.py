"""Note [Library exp] (csrc/trees/libm_exp.h) in Triton: glibc's expf and exp, operation for operation,
for the Triton twin's fused finish (tree_triton.py), so its probabilities equal the native libraries'
bit for bit as the CUDA kernel's do. The tables are libm_exp.h's (``pyzero._C.libm_exp_tables``), their
bits held in float64 words.

Note [Triton rounding]
Triton's defaults would change the bits: LLVM and ptxas contract a product and a sum into a fused
multiply-add, a Python float meeting tl.fma becomes a float32 constant, and `/` on float32 is div.full
(within 2 ulp). So every tree kernel launches with FP_OPTIONS (no contraction: the only fused
multiply-adds are the tl.fma calls, where glibc's machine code has them), float constants go through
_f64, and float32 division is tl.math.div_rn. tests/test_triton_sm90.py compiles every launch for
sm_90 and checks the PTX: each operation rounded once (.rn), and as many fused multiply-adds as
libm_exp.h. The interpreter rounds tl.fma twice; tests/conftest.py gives it the device's fused one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Launch options of every kernel that calls libm_expf / libm_exp (Note [Triton rounding]).
FP_OPTIONS = {"enable_fp_fusion": False}

# libm_exp.h's constants (kExpf*, kExp*, kRoundShift).
EXPF_INV_LN2_N = tl.constexpr(float.fromhex("0x1.71547652b82fep+5"))
EXPF_C0 = tl.constexpr(float.fromhex("0x1.c6af84b912394p-20"))
EXPF_C1 = tl.constexpr(float.fromhex("0x1.ebfce50fac4f3p-13"))
EXPF_C2 = tl.constexpr(float.fromhex("0x1.62e42ff0c52d6p-6"))
EXP_INV_LN2_N = tl.constexpr(float.fromhex("0x1.71547652b82fep+7"))
EXP_NEG_LN2_HI_N = tl.constexpr(float.fromhex("-0x1.62e42fefa0000p-8"))
EXP_NEG_LN2_LO_N = tl.constexpr(float.fromhex("-0x1.cf79abc9e3b3ap-47"))
EXP_C2 = tl.constexpr(float.fromhex("0x1.ffffffffffdbdp-2"))
EXP_C3 = tl.constexpr(float.fromhex("0x1.555555555543cp-3"))
EXP_C4 = tl.constexpr(float.fromhex("0x1.55555cf172b91p-5"))
EXP_C5 = tl.constexpr(float.fromhex("0x1.1111167a4d017p-7"))
ROUND_SHIFT = tl.constexpr(float.fromhex("0x1.8p52"))
# expf's limits: above it overflows, below the first it is 0, below the second glibc's smallest subnormal.
EXPF_OVERFLOW = tl.constexpr(float.fromhex("0x1.62e42ep6"))
EXPF_ZERO = tl.constexpr(float.fromhex("-0x1.9fe368p6"))
EXPF_TINY = tl.constexpr(float.fromhex("-0x1.9d1d9ep6"))
EXPF_TABLE_SIZE = tl.constexpr(32)  # offset of exp's table in the tables tensor
SCALE_UP = tl.constexpr(2.0**1009)
SCALE_DOWN = tl.constexpr(2.0**-1022)


@triton.jit
def _f64(v: tl.constexpr):
    """v as a float64 scalar, exactly."""
    return tl.full([], v, tl.float64)


@triton.jit
def _double_of(bits):
    return bits.to(tl.float64, bitcast=True)


@triton.jit
def libm_expf(x, tables_ptr):
    """glibc's expf of a float32 tensor (libm_exp.h's libm_expf); tables_ptr: the float64 words of
    libm_exp_tables(device)."""
    ux = x.to(tl.uint32, bitcast=True)
    abstop = (ux >> 20) & 0x7FF
    xd = x.to(tl.float64)
    kd = tl.fma(_f64(EXPF_INV_LN2_N), xd, _f64(ROUND_SHIFT))
    ki = kd.to(tl.uint64, bitcast=True)
    kd = kd - _f64(ROUND_SHIFT)
    r = tl.fma(_f64(EXPF_INV_LN2_N), xd, -kd)
    entry = tl.load(tables_ptr + (ki & 31).to(tl.int32)).to(tl.uint64, bitcast=True)
    s = _double_of(entry + (ki << 47))
    z = tl.fma(_f64(EXPF_C0), r, _f64(EXPF_C1))
    r2 = r * r
    y = tl.fma(z, r2, tl.fma(_f64(EXPF_C2), r, _f64(1.0)))
    v = (y * s).to(tl.float32)
    # |x| >= 88, or not finite: the limits, then the polynomial again
    big = v
    big = tl.where(x < EXPF_TINY, tl.full([], 1, tl.int32).to(tl.float32, bitcast=True), big)
    big = tl.where(x < EXPF_ZERO, 0.0, big)
    big = tl.where(x > EXPF_OVERFLOW, float("inf"), big)
    big = tl.where(abstop > 0x7F7, x + x, big)
    big = tl.where(ux == 0xFF800000, 0.0, big)
    return tl.where(abstop > 0x42A, big, v)


@triton.jit
def libm_exp(x, tables_ptr):
    """glibc's exp of a float64 tensor (libm_exp.h's libm_exp); tables_ptr: as libm_expf's."""
    ux = x.to(tl.uint64, bitcast=True)
    abstop = ((ux >> 52) & 0x7FF).to(tl.int32)
    kd = tl.fma(x, _f64(EXP_INV_LN2_N), _f64(ROUND_SHIFT))
    ki = kd.to(tl.uint64, bitcast=True)
    kd = kd - _f64(ROUND_SHIFT)
    r = tl.fma(kd, _f64(EXP_NEG_LN2_LO_N), tl.fma(kd, _f64(EXP_NEG_LN2_HI_N), x))
    idx = EXPF_TABLE_SIZE + 2 * (ki & 127).to(tl.int32)
    tail = tl.load(tables_ptr + idx)
    sbits = tl.load(tables_ptr + idx + 1).to(tl.uint64, bitcast=True) + (ki << 45)
    r2 = r * r
    low = tl.fma(r2, tl.fma(r, _f64(EXP_C3), _f64(EXP_C2)), r + tail)
    tmp = tl.fma(r2 * r2, tl.fma(r, _f64(EXP_C5), _f64(EXP_C4)), low)
    scale = _double_of(sbits)
    v = tl.fma(scale, tmp, scale)
    # 512 <= |x| < 1024: k > 0 scales down by 2^1009 first, k < 0 up by 2^1022 (a subnormal result
    # rounded once, to its own precision)
    up = _double_of(sbits - (1009 << 52))
    v_up = tl.fma(up, tmp, up) * _f64(SCALE_UP)
    down = _double_of(sbits + (1022 << 52))
    st = down * tmp
    y = down + st
    hi = y + _f64(1.0)
    lo = ((_f64(1.0) - hi) + y) + ((down - y) + st)
    y = tl.where(y < 1.0, (lo + hi) - _f64(1.0), y)
    v_down = y * _f64(SCALE_DOWN)
    v_scaled = tl.where((ki & 0x80000000) == 0, v_up, v_down)
    # |x| >= 1024, or not finite
    huge = tl.where((ux >> 63) != 0, _f64(0.0), _f64(float("inf")))
    huge = tl.where(abstop == 0x7FF, x + _f64(1.0), huge)
    huge = tl.where(ux == 0xFFF0000000000000, _f64(0.0), huge)
    v = tl.where(abstop == 0x408, v_scaled, v)
    v = tl.where(abstop >= 0x409, huge, v)
    return tl.where(abstop < 0x3C9, x + _f64(1.0), v)


@triton.jit
def _libm_exp_kernel(x_ptr, y_ptr, n, tables_ptr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    x = tl.load(x_ptr + i, mask=mask, other=0.0)
    if x.dtype == tl.float32:
        y = libm_expf(x, tables_ptr)
    else:
        y = libm_exp(x, tables_ptr)
    tl.store(y_ptr + i, y, mask=mask)


# Elements a program of _libm_exp_kernel takes.
EXP_BLOCK = 256

_TABLES: dict[torch.device, Tensor] = {}


def libm_exp_tables(device: torch.device) -> Tensor:
    """libm_exp.h's expf table (32 entries) then exp's (256), their bits as float64 [288] on `device`
    (the words the kernels read), made once."""
    device = torch.device(device)
    if device not in _TABLES:
        from pyzero import _native

        expf_table, exp_table = _native.require("the Triton finish").libm_exp_tables()
        _TABLES[device] = torch.cat([expf_table, exp_table]).view(torch.float64).to(device)
    return _TABLES[device]


def exp(x: Tensor) -> Tensor:
    """glibc's expf (float32) or exp (float64) of each element of x by the Triton helpers, on x's device
    (CPU tensors under TRITON_INTERPRET=1): a tensor of x's shape and dtype."""
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    xc = x.contiguous()
    y = torch.empty_like(xc)
    if xc.numel():
        grid = (triton.cdiv(xc.numel(), EXP_BLOCK),)
        _libm_exp_kernel[grid](xc, y, xc.numel(), libm_exp_tables(xc.device), BLOCK=EXP_BLOCK, **FP_OPTIONS)
    return y
