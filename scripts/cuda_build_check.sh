#!/usr/bin/env bash
# Builds pyzero._C against the CUDA build of torch (no GPU needed) and imports it: catches broken
# CUDA code on machines without a GPU. Uses its own venv (.venv-cuda) and build folders.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PYZERO_CUDA_VENV:-.venv-cuda}
TORCH_CUDA_PIN=${PYZERO_TORCH_CUDA:-torch==2.14.1}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch; assert torch.version.cuda" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$TORCH_CUDA_PIN" ninja setuptools wheel numpy
fi
export PATH="$PWD/$VENV/bin:$PATH"
NVCC=$(command -v nvcc || true)
if [ -z "$NVCC" ]; then
  echo "cuda_build_check: nvcc not found; skipped" >&2
  exit 0
fi
# CUDA_HOME is the toolkit root: the folder above the real bin/nvcc (the PATH entry may be a wrapper).
if [ -z "${CUDA_HOME:-}" ]; then
  for root in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$NVCC")")")"; do
    if [ -x "$root/bin/nvcc" ]; then CUDA_HOME=$root; break; fi
  done
fi
export CUDA_HOME PYZERO_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-2}
"$VENV/bin/python" setup.py -q build_ext --build-temp build/cuda-temp --build-lib build/cuda-lib
# Import the built module from a copy of the package, away from the CPU build in the source tree.
PKG=build/cuda-import
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r pyzero "$PKG/" && find "$PKG" -name "*.so" -delete
cp build/cuda-lib/pyzero/_C*.so "$PKG/pyzero/"
(cd "$PKG" && "../../$VENV/bin/python" -c "
import torch, pyzero
from pyzero import _native
info = pyzero.info()
assert info['cuda_kernels'], info
assert hasattr(torch.ops.pyzero, 'fused_adamw_')
print('CUDA build OK: torch', info['torch'], 'archs', info['cuda_archs'], 'cpu isa', info['cpu_isa'])
")
