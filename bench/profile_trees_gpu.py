"""Where a GPU tree prediction spends its time: the CUDA kernel alone (CUDA events) for every candidate
configuration, the small-batch graph replay alone, the whole predict_proba call (host and device
input), and the same call without a graph, at the batch sizes given; for batch 1 also where the Python
of predict_proba goes (cProfile). For the latency and throughput work of issue 7.

    python bench/profile_trees_gpu.py [--case xgb1000] [--batches 1,16,1M] [--top 8]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from bench_trees import higgs_like, parse_ints
from bench_trees_gpu import CASES, TRAIN_ROWS, timed, train

from pyzero import trees
from pyzero.trees import gpu

REPS = 50  # timed calls per measurement (median), after WARMUP calls
WARMUP = 5
PROFILE_CALLS = 2000  # predict_proba calls under cProfile at batch 1
PROFILE_LINES = 14


def events_median(fn, reps: int = REPS) -> float:
    """Median GPU seconds of fn (the tuner's CUDA-event timer), after WARMUP calls."""
    for _ in range(WARMUP):
        fn()
    return gpu._time(fn, reps)


def kernel_median(fn, batch: int, reps: int = REPS) -> float:
    """GPU seconds per call of fn as the tuner times it: inside a graph of GRAPH_TIMING_CALLS calls for
    small batches (a lone launch of a few-microsecond kernel times the launch), else one call."""
    if batch > gpu.GRAPH_MAX_ROWS:
        return events_median(fn, reps)
    fn()
    return events_median(gpu._graph_of(fn, gpu.GRAPH_TIMING_CALLS), reps) / gpu.GRAPH_TIMING_CALLS


def wall_median(fn, reps: int = REPS) -> float:
    """Median wall seconds of fn, synchronised."""
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def profile_batch(cf, Xb: np.ndarray, base: torch.Tensor, f32: bool, top: int) -> None:
    runner, batch = cf._gpu, Xb.shape[0]
    xd = torch.as_tensor(Xb, device="cuda")
    cf.predict_proba(Xb)  # tunes the bucket and captures its graphs
    chosen = cf.kernel_config(batch)
    rows = []
    for lay in runner.eligible:
        for cfg in gpu._cuda_candidates(lay, batch, runner.shape(lay)):
            try:
                rows.append((kernel_median(partial(runner.run, xd, base, f32, False, cfg), batch, 10), cfg))
            except RuntimeError as e:
                print(f"  {cfg}: {e}")
    rows.sort(key=lambda r: r[0])
    print(f"\nbatch {batch:,}: chosen {chosen}")
    for s, cfg in rows[:top]:
        print(f"  kernel {s * 1e6:9.1f} us  {cfg}")
    kernel = kernel_median(partial(runner.run, xd, base, f32, False, chosen), batch)
    lone = events_median(partial(runner.run, xd, base, f32, False, chosen))
    print(f"  one launch (chosen)          {lone * 1e6:9.1f} us (GPU, events around a single call)")
    print(f"  kernel (chosen)              {kernel * 1e6:9.1f} us (GPU)")
    if batch <= gpu.GRAPH_MAX_ROWS:
        for key, g in cf._graphs._graphs.items():
            if key[1] == gpu.SmallBatchGraphs.size_for(batch):
                print(f"  graph replay {key}   {events_median(g.graph.replay) * 1e6:9.1f} us (GPU)")
    for name, X in (("device", xd), ("numpy", Xb)):
        print(
            f"  predict_proba, {name} input  {wall_median(partial(cf.predict_proba, X)) * 1e6:9.1f} us (wall)"
        )
    # the benchmark's own timer (bench_trees_gpu.timed: a 0.5 s loop), to compare with its table
    bench_s = timed(partial(cf.predict_proba, xd))
    print(f"  predict_proba, device input  {bench_s * 1e6:9.1f} us (the benchmark's timer)")
    paths = {k: "direct" if v else "graph" for k, v in cf._graphs._direct.items()}
    print(f"  device-input path timed per (kind, bucket): {paths} (one-launch kinds skip the graph)")
    # the same probabilities without the graph: one kernel launch (fused finish), no copies in or out
    print(f"  no graph, device input       {wall_median(partial(cf._proba_direct, xd)) * 1e6:9.1f} us (wall)")
    launch = wall_median(partial(runner.run, xd, base, f32, False, chosen))
    print(f"  kernel launch alone          {launch * 1e6:9.1f} us (wall)")
    plans = cf._plans.get("proba")  # Note [Prepared walks]: what predict_proba on device rows calls
    if plans is not None and plans(xd) is not None:
        wall, events = wall_median(partial(plans, xd)), events_median(partial(plans, xd))
        print(f"  prepared call alone          {wall * 1e6:9.1f} us (wall)")
        print(f"  prepared call alone          {events * 1e6:9.1f} us (GPU, events around a single call)")
    if batch == 1:
        python_profile(partial(cf.predict_proba, xd))


def python_profile(fn) -> None:
    """The functions predict_proba's calls spend their time in (own time), synchronised each call."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(PROFILE_CALLS):
        fn()
        torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(PROFILE_LINES)
    print(f"  cProfile of {PROFILE_CALLS} calls (device input):")
    print("\n".join("    " + line for line in out.getvalue().splitlines()[6:] if line.strip()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="xgb1000", choices=list(CASES))
    p.add_argument("--batches", type=parse_ints, default=[1, 16, 1_000_000])
    p.add_argument("--top", type=int, default=8, help="fastest kernel configurations listed per batch")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    lib, n_trees, depth = CASES[args.case]
    X_all, y_all = higgs_like(np.random.default_rng(0), TRAIN_ROWS + max(args.batches))
    model = train(lib, n_trees, depth, X_all[:TRAIN_ROWS], y_all[:TRAIN_ROWS])
    cf = trees.compile(model, device="cuda")
    f32 = cf.forest.extra.get("accumulate") == "float32"
    base = torch.zeros(cf.forest.n_outputs, dtype=torch.float64, device="cuda")
    print(f"{lib} {n_trees}x{depth} on {common.machine('cuda')}")
    for batch in args.batches:
        profile_batch(cf, X_all[TRAIN_ROWS : TRAIN_ROWS + batch], base, f32, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
