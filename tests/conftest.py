"""Shared test setup: seeds, markers, Triton interpreter on CPU, and the one tolerance table."""

from __future__ import annotations

import math
import os
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so set it before pyzero.kernels imports.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _exact_fma(a: float, b: float, c: float) -> float:
    """a * b + c rounded once, as a GPU's fma.rn.f64: Fraction arithmetic is exact and float() of a
    Fraction rounds to nearest even. Exact zeros and non-finite operands take IEEE's a * b + c (the
    same value, with its sign of zero)."""
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        return a * b + c
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:
        return a * b + c
    try:
        return float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


def _interpreter_fma(self, x, y, z):
    """tl.fma under the interpreter, fused as on the device (Triton's own rounds a * b, then adds c),
    so Note [Library exp]'s Triton helpers (pyzero/kernels/libm_triton.py) can be held to glibc here."""
    if z.dtype.scalar != tl.float64:
        raise NotImplementedError(f"tests/conftest.py rounds float64 tl.fma only, got {z.dtype.scalar}")
    a, b, c = np.broadcast_arrays(x.data, y.data, z.data)
    fused = [
        _exact_fma(*abc)
        for abc in zip(a.ravel().tolist(), b.ravel().tolist(), c.ravel().tolist(), strict=True)
    ]
    return triton_interpreter.TensorHandle(np.array(fused, dtype=np.float64).reshape(a.shape), z.dtype.scalar)


if os.environ.get("TRITON_INTERPRET") == "1":
    import triton.language as tl
    from triton.runtime import interpreter as triton_interpreter

    if not hasattr(triton_interpreter.InterpreterBuilder, "create_fma"):
        raise RuntimeError("Triton's interpreter has no InterpreterBuilder.create_fma to make exact")
    triton_interpreter.InterpreterBuilder.create_fma = _interpreter_fma

# Tolerances (relative, ||x - ref|| / ||ref||) used by every test; one place to read and change them.
TOL = {
    # fp32 fused AdamW vs torch.optim.AdamW run in fp64, after PARITY_STEPS steps.
    "adam_fp32_vs_fp64": 1e-6,
    # Low-precision paths may be at most this many times as far from the fp64 reference as the plain
    # torch low-precision baseline (DESIGN.md section 5).
    "lowp_vs_baseline_factor": 2.0,
}
PARITY_STEPS = 10
# Sizes that break assumptions (DESIGN.md section 5).
SIZES = [0, 1, 17, 4097, 278011]
# Triton's interpreter costs ~0.4 ms per program: keep its sizes small.
TRITON_SIZES = [0, 1, 17, 4097]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().flatten(), ref.double().flatten()
    if ref.numel() == 0:
        return 0.0
    den = ref.norm().item()
    return (x - ref).norm().item() / (den if den > 0 else 1.0)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
