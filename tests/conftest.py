"""Shared test setup: seeds, markers, Triton interpreter on CPU, and the one tolerance table."""

from __future__ import annotations

import os
import random

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so set it before pyzero.kernels imports.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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
