#!/usr/bin/env bash
# The project's one entry point; sets everything up on first use (venv, dependencies, the build).
#   bash scripts/run.sh demo    the main job: `pyzero demo` (info + fused AdamW vs torch), then sharded
#                               training of a small GPT on 2 local gloo ranks (ZeRO stage 3, built
#                               under zero_init) checked against an unsharded run, then trees:
#                               compile + verify + speed
#   bash scripts/run.sh test    all tests: C++ unit tests (ctest) and pytest
#   bash scripts/run.sh setup   only the set-up
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PYZERO_VENV:-.venv}
PY=$VENV/bin/python
export PATH="$PWD/$VENV/bin:$PATH"  # the venv's ninja for torch's extension build and for cmake

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local deps_stamp="$VENV/.pyzero-deps" deps_hash
  deps_hash=$(sha256sum requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$deps_stamp" 2>/dev/null)" != "$deps_hash" ]; then
    "$PY" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    echo "$deps_hash" > "$deps_stamp"
  fi
  # Rebuild the extension only when its sources or build files changed.
  local build_stamp="$VENV/.pyzero-build" build_hash
  build_hash=$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$build_stamp" 2>/dev/null)" != "$build_hash" ] || ! "$PY" -c "import torch, pyzero._C" 2>/dev/null; then
    MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
    echo "$build_hash" > "$build_stamp"
  fi
}

cpp_tests() {
  cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release > build/cmake.log 2>&1 || { cat build/cmake.log; exit 1; }
  cmake --build build/cmake || exit 1
  (cd build/cmake && ctest --output-on-failure)
}

mkdir -p build
case "${1:-}" in
  setup) setup ;;
  demo)
    setup
    "$VENV/bin/pyzero" demo "${@:2}"
    "$VENV/bin/torchrun" --standalone --nproc_per_node=2 examples/train_gpt.py --zero-stage 3 --zero-init
    "$PY" examples/trees_demo.py
    ;;
  test)
    setup
    cpp_tests
    "$PY" -m pytest -q "${@:2}"
    ;;
  *)
    echo "usage: bash scripts/run.sh demo|test|setup [args]" >&2
    exit 2
    ;;
esac
