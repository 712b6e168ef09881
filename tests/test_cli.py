"""`pyzero info` / `python -m pyzero info` and the backend choice errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import pyzero
from pyzero import _native, ops


def test_info_reports_build_and_runtime():
    d = pyzero.info()
    assert d["pyzero"] == pyzero.__version__ and d["torch"] == torch.__version__
    assert d["extension"] == "built"
    assert d["cpu_isa"] in ("avx512", "avx2", "scalar") and d["threads"] == torch.get_num_threads()
    assert d["cuda_kernels"] == _native.cuda_built()


def test_python_m_pyzero_info_json():
    out = subprocess.run(
        [sys.executable, "-m", "pyzero", "info", "--json"], check=True, capture_output=True, text=True
    ).stdout
    d = json.loads(out)
    assert d["pyzero"] == pyzero.__version__ and d["cpu_isa"] == _native.C.cpu_isa()


def test_set_cpu_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="isa must be 'scalar', 'avx2' or 'avx512'"):
        _native.C.set_cpu_isa("sse9")


@pytest.mark.parametrize(
    ("backend", "device", "match"),
    [
        ("gpu", "cpu", "backend must be one of"),
        ("cpu", "meta", "backend='cpu' needs CPU tensors"),
        ("cuda", "cpu", "backend='cuda' needs"),  # no CUDA build, or CPU tensors: both say so
    ],
)
def test_backend_errors_name_the_problem(backend, device, match):
    with pytest.raises(ValueError, match=match):
        ops.resolve_backend(backend, torch.device(device))


def test_functional_api_rejects_float64_params():
    p = torch.zeros(3, dtype=torch.float64)
    g = torch.zeros(3)
    with pytest.raises(ValueError, match=r"params\[0\] must be float32, got torch.float64"):
        pyzero.fused_adamw([p], [g], [g.clone()], [g.clone()], [torch.zeros(())], lr=1e-3)
