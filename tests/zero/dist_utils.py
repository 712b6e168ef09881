"""Runs a function on N real gloo processes on 127.0.0.1 and collects what each returns."""

from __future__ import annotations

import os
import socket
import traceback

import torch.multiprocessing as mp

# Collectives and the whole job give up after these many seconds instead of hanging.
COLLECTIVE_TIMEOUT_S = 60
JOB_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn, args, queue) -> None:
    import torch
    import torch.distributed as dist

    from pyzero.zero import comm

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        comm.init_local_gloo(rank, world, port, COLLECTIVE_TIMEOUT_S)
        result = fn(rank, world, *args)
        queue.put((rank, "ok", result))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(world: int, fn, *args, timeout: float = JOB_TIMEOUT_S) -> list:
    """fn(rank, world, *args) on `world` gloo processes; returns the results in rank order.

    fn must be importable (module level). A failure on any rank raises with that rank's traceback.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    errors = []
    try:
        for _ in range(world):
            rank, status, payload = queue.get(timeout=timeout)
            if status == "ok":
                results[rank] = payload
            else:
                errors.append(f"rank {rank}:\n{payload}")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("distributed job failed\n" + "\n".join(errors))
    return [results[r] for r in range(world)]
