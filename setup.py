"""Builds pyzero._C: a CppExtension, or a CUDAExtension when torch has CUDA and nvcc is found.

PYZERO_CUDA=0|1|auto (default auto) overrides the CUDA choice; TORCH_CUDA_ARCH_LIST is respected
and defaults to "8.0;9.0" (Ampere and Hopper).
"""

import glob
import os
import sys

from setuptools import setup
from torch.utils import cpp_extension

DEFAULT_CUDA_ARCHS = "8.0;9.0"
CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-Wno-maybe-uninitialized"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]


def log(msg: str) -> None:
    print(f"[pyzero build] {msg}", file=sys.stderr, flush=True)


def want_cuda() -> bool:
    import torch

    mode = os.environ.get("PYZERO_CUDA", "auto").strip().lower()
    if mode not in ("0", "1", "auto"):
        raise SystemExit(f"PYZERO_CUDA must be 0, 1 or auto, got {mode!r}")
    if mode == "0":
        log("CUDA kernels skipped: PYZERO_CUDA=0")
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} was built without CUDA")
    if cpp_extension.CUDA_HOME is None:
        reasons.append("nvcc not found (set CUDA_HOME to the toolkit root)")
    if reasons:
        if mode == "1":
            raise SystemExit("PYZERO_CUDA=1 but " + "; ".join(reasons))
        log("CUDA kernels skipped: " + "; ".join(reasons))
        return False
    return True


def extension():
    here = os.path.dirname(os.path.abspath(__file__))
    cpu_sources = sorted(
        glob.glob(os.path.join("csrc", "cpu", "*.cpp")) + glob.glob(os.path.join("csrc", "trees", "*.cpp"))
    )
    sources = [os.path.join("csrc", "bindings.cpp"), *cpu_sources]
    cxx = list(CXX_FLAGS)
    include_dirs = [os.path.join(here, "csrc")]
    if want_cuda():
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        cxx += ["-DPYZERO_WITH_CUDA", f'-DPYZERO_CUDA_ARCHS="{archs}"']
        log(
            f"building CUDAExtension: CPU kernels + CUDA kernels for archs {archs} "
            f"(nvcc in {cpp_extension.CUDA_HOME})"
        )
        return cpp_extension.CUDAExtension(
            "pyzero._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx, "nvcc": NVCC_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    log("building CppExtension: CPU kernels (AVX-512 / AVX2 / scalar, chosen at run time)")
    return cpp_extension.CppExtension(
        "pyzero._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
