"""Triton kernels. Importing this package never requires Triton; each kernel module does."""

from __future__ import annotations

import importlib.util
import os


def triton_available() -> bool:
    """True when Triton is importable and can run here (a GPU, or TRITON_INTERPRET=1 on CPU)."""
    if importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
