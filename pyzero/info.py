"""What this installation of pyzero was built with and can run."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from pyzero import _native
from pyzero._version import __version__


def info() -> dict[str, Any]:
    """Version, torch version, built backends (CPU ISA, CUDA archs), Triton, threads."""
    C = _native.C
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    return {
        "pyzero": __version__,
        "torch": torch.__version__,
        "extension": "built" if C is not None else f"missing ({_native.IMPORT_ERROR})",
        "cpu_isa": C.cpu_isa() if C is not None else None,
        "cpu_isa_detected": C.cpu_isa_detected() if C is not None else None,
        "cuda_kernels": bool(C is not None and C.with_cuda),
        "cuda_archs": (C.cuda_archs or None) if C is not None else None,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "triton": triton_version,
        "threads": torch.get_num_threads(),
    }


def format_info(d: dict[str, Any]) -> str:
    width = max(len(k) for k in d)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in d.items())
