"""Shared benchmark helpers: machine description, interleaved timing with medians, tables, JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable

import torch


def machine(device: str) -> str:
    """One line naming the machine or card the numbers come from."""
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call of fn; CUDA work is timed with events."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_medians(
    fns: dict[str, Callable[[], object]], device: str, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each fn, running them round-robin so drift hits all equally."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def budgeted_medians(
    fns: dict[str, Callable[[], object]],
    device: str,
    budget_s: float,
    max_calls: int,
    block: dict[str, int] | None = None,
) -> tuple[dict[str, float], dict[str, int]]:
    """(median seconds per call, calls timed) of each fn, round-robin like interleaved_medians (warm up
    first, outside): each fn is timed at least once, then until it has spent budget_s or made max_calls
    calls. A turn runs block[name] consecutive calls (default 1) and, when more than one, drops the
    first, so fast calls are timed warm rather than right after another library's."""
    block = block or {}
    times: dict[str, list[float]] = {k: [] for k in fns}
    spent = dict.fromkeys(fns, 0.0)
    active = list(fns)
    while active:
        for name in active:
            n = min(block.get(name, 1), max_calls - len(times[name]) + 1)  # + 1: the dropped call
            for i in range(n):
                t = time_once(fns[name], device)
                spent[name] += t
                if i or n == 1:
                    times[name].append(t)
        active = [k for k in active if spent[k] < budget_s and len(times[k]) < max_calls]
    return {k: statistics.median(v) for k, v in times.items()}, {k: len(v) for k, v in times.items()}


def rows_per_s(fn: Callable[[object], object], X, repeats: int) -> float:
    """Rows per second of fn(X): median of `repeats` timed calls after one warm-up."""
    fn(X)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(X)
        times.append(time.perf_counter() - t0)
    return X.shape[0] / statistics.median(times)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(f"{c:>{widths[c]}}" for c in columns))
    for r in rows:
        print("  ".join(f"{r.get(c, '')!s:>{widths[c]}}" for c in columns))


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a local process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker: Callable[..., None], ranks: int, *args: object, timeout_s: float = 3600) -> dict:
    """Runs worker(rank, ranks, port, *args, queue) in `ranks` spawned processes, each putting
    (rank, result) on the queue; returns {rank: result}."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, ranks, port, *args, queue)) for r in range(ranks)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=timeout_s) for _ in procs)
    for p in procs:
        p.join()
    return results


def add_gpt_args(ap: argparse.ArgumentParser) -> None:
    """--ranks and the examples/gpt.py model the distributed benchmarks share (35.7M parameters)."""
    ap.add_argument("--ranks", type=int, default=2, help="gloo ranks")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--heads", type=int, default=8)


def gpt_config(args: argparse.Namespace):
    """The GPTConfig add_gpt_args describes (examples/gpt.py must be importable)."""
    from gpt import GPTConfig

    return GPTConfig(vocab=args.vocab, seq=args.seq, dim=args.dim, layers=args.layers, heads=args.heads)
