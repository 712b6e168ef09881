#!/usr/bin/env bash
# GPU check, for a machine with a CUDA GPU (H100/H200, torch with CUDA, nvcc, ninja; no internet):
# builds pyzero._C with its CUDA kernels in place, runs the cuda- and triton-marked tests, then the
# GPU benchmarks, and prints a short table last. Logs and JSON go to $OUT (or bench/out).
# Budget: under 8 minutes. GPU_CHECK_ONLY=trees: only the trees part (the build, the CUDA and Triton
# tree tests, bench_trees.py --device cuda), about 5 minutes; GPU_CHECK_PROFILE=1 adds
# bench/profile_trees_gpu.py (about a minute); GPU_CHECK_STAGES=tests,profile or =bench splits it. Wheels in .whl/ (e.g.
# xgboost-cpu, lightgbm, hummingbird-ml for Python 3.12) are installed first when present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export PYZERO_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
[ -n "${CUDA_HOME:-}" ] || export CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-deps --no-index .whl/*.whl 2>&1 | tail -2 \
    || "$PY" -m pip install -q --no-deps --no-index --break-system-packages .whl/*.whl 2>&1 | tail -2
fi
if [ "${GPU_CHECK_ONLY:-}" = trees ]; then
  # GPU_CHECK_STAGES picks stages, run in the order given (comma-separated: tests, profile, bench); by
  # default tests and bench, plus profile with GPU_CHECK_PROFILE=1, minus bench with GPU_CHECK_SKIP_BENCH=1.
  # A warm machine keeps the build, so stages can go in separate calls (each under the 10-minute limit).
  # GPU_CHECK_TESTS: the pytest arguments (default: the CUDA and Triton tree test files);
  # GPU_CHECK_PROFILE_ARGS and GPU_CHECK_TREE_ARGS: arguments of the profile and the benchmark.
  stages=${GPU_CHECK_STAGES:-tests$([ "${GPU_CHECK_PROFILE:-0}" = 1 ] && echo ,profile)$([ "${GPU_CHECK_SKIP_BENCH:-0}" = 1 ] || echo ,bench)}
  echo "== build (stages: $stages) =="
  t0=$(date +%s)
  "$PY" setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "built in $(( $(date +%s) - t0 )) s"
  for stage in ${stages//,/ }; do
    case $stage in
      tests)
        echo "== tree tests on the GPU (CUDA kernel, Triton kernel, torch strategies) =="
        # the host's libm against Note [Library exp], which the device's finish repeats
        LIBM_TEST=tests/trees/test_backends.py::test_libm_exp_equals_the_host_libm
        # shellcheck disable=SC2086  # GPU_CHECK_TESTS is a list of pytest arguments
        PYZERO_TEST_DEVICE=cuda timeout "${GPU_CHECK_TEST_S:-300}" "$PY" -m pytest -q -p no:cacheprovider --durations=10 \
          --maxfail=5 ${GPU_CHECK_TESTS:-tests/trees/test_cuda_trees.py tests/trees/test_triton_trees.py $LIBM_TEST} 2>&1 \
          | tee "$OUT/pytest_trees.log" | tail -40 ;;
      profile)  # where the time goes (kernel, graph, whole call)
        # shellcheck disable=SC2086
        timeout "${GPU_CHECK_PROFILE_S:-300}" "$PY" bench/profile_trees_gpu.py ${GPU_CHECK_PROFILE_ARGS:-} 2>&1 \
          | tee "$OUT/profile_trees_gpu.log" | tail -70
        "$PY" bench/bench_tree_call_overhead.py --device cuda --calls 5000 2>&1 | tee -a "$OUT/profile_trees_gpu.log" ;;
      bench)
        echo "== tree benchmark on the GPU =="
        # the SM clock, power and temperature every 0.5 s while it runs (what a slow run ran at)
        nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader \
          -lms 500 > "$OUT/nvidia_smi.csv" 2>/dev/null &
        smi=$!
        # shellcheck disable=SC2086
        "$PY" bench/bench_trees.py --device cuda ${GPU_CHECK_TREE_ARGS:-} --out "$OUT/bench_trees_gpu.json" 2>&1 \
          | tee "$OUT/bench_trees_gpu.log" | tail -30
        kill "$smi" 2>/dev/null
        cut -d, -f2 "$OUT/nvidia_smi.csv" | sort -n | awk '{c[NR] = $1} END {if (NR) print "SM clock during the benchmark (MHz): min " c[1] ", median " c[int((NR + 1) / 2)] ", max " c[NR]}' ;;
      *) echo "unknown stage $stage (tests, profile, bench)"; exit 2 ;;
    esac
  done
  exit 0
fi
echo "== build =="
t0=$(date +%s)
"$PY" setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
"$PY" -m pyzero info | tee "$OUT/info.txt"

echo "== tests (cuda, triton, then the rest) =="
"$PY" -m pytest -q -p no:cacheprovider -m "cuda or triton" tests 2>&1 | tee "$OUT/pytest_gpu.log" | tail -15
"$PY" -m pytest -q -p no:cacheprovider -m "not cuda and not triton" tests 2>&1 | tee "$OUT/pytest_rest.log" | tail -4

echo "== sharded training on the GPU (NCCL, 1 rank) =="
for stage in 1 2 "3 --zero-init"; do
  # shellcheck disable=SC2086  # "3 --zero-init" is two arguments
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 examples/train_gpt.py --zero-stage $stage \
    --steps 20 2>/dev/null | tail -3
done
[ "${GPU_CHECK_SKIP_BENCH:-0}" = 1 ] && exit 0
echo "== benchmarks =="
"$PY" bench/bench_adam.py --device cuda --out "$OUT/bench_adam_cuda.json" 2>&1 | tee "$OUT/bench_adam.log"
