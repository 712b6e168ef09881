"""How does FusedShardedAdam (ZeRO stages 1, 2 and 3) compare with DDP + torch fused AdamW,
torch's ZeroRedundancyOptimizer and FSDP2 (fully_shard) on the same GPT and the same gloo ranks?
Reports step time (forward + backward + step, median of interleaved steps), per-rank model-state
and parameter memory, and pyzero's communication bytes per step next to theory. Stage 3 and FSDP2
shard the same units (each transformer Block, the rest in the root).

    python bench/bench_zero.py [--ranks 2] [--dim 512] [--layers 10] [--steps 6]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples")]
import common  # noqa: E402
from gpt import GPT, Block, lm_loss  # noqa: E402

import pyzero  # noqa: E402
from pyzero.zero import comm  # noqa: E402

LR = 1e-4
WARMUP = 2


def nbytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        if hasattr(t, "to_local"):
            t = t.to_local()
        total += t.numel() * t.element_size()
    return total


def optimizer_state_bytes(opt) -> int:
    return nbytes(v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)


def build(method: str, base: torch.nn.Module):
    """(model, step function, memory function) for one method."""
    model = copy.deepcopy(base)
    params = list(model.parameters())
    if method == "DDP + AdamW(fused)":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, gradient_as_bucket_view=True)
        opt = torch.optim.AdamW(ddp.parameters(), lr=LR, fused=True)

        def mem():
            st = optimizer_state_bytes(opt)
            return nbytes(params) + nbytes(p.grad for p in params) + st, st, nbytes(params)

        return ddp, opt, mem
    if method == "ZeroRedundancyOptimizer":
        from torch.distributed.optim import ZeroRedundancyOptimizer
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, gradient_as_bucket_view=True)
        opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.AdamW, lr=LR, fused=True)

        def mem():
            st = optimizer_state_bytes(opt.optim)
            return nbytes(params) + nbytes(p.grad for p in params) + st, st, nbytes(params)

        return ddp, opt, mem
    if method == "FSDP2 fully_shard":
        from torch.distributed.fsdp import fully_shard

        for blk in model.blocks:
            fully_shard(blk)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=LR)

        def mem():
            ps = list(model.parameters())
            st = optimizer_state_bytes(opt)
            return nbytes(ps) + nbytes(p.grad for p in ps) + st, st, nbytes(ps)

        return model, opt, mem
    stage = int(method.split("stage ")[1][0])
    if stage == 3:
        opt = pyzero.FusedShardedAdam(
            model, lr=LR, stage=3, units=[Block], reshard_after_forward="keep" not in method
        )
    else:
        opt = pyzero.FusedShardedAdam(model, lr=LR, stage=stage, overlap_param_gather="prefetch" in method)

    def mem():
        r = opt.memory_report()
        return r["model_states"], r["master"] + r["exp_avg"] + r["exp_avg_sq"], r["params"]

    return model, opt, mem


def worker(rank: int, world: int, port: int, args, queue) -> None:
    torch.set_num_threads(args.threads)
    comm.init_local_gloo(rank, world, port, timeout_s=300)
    torch.manual_seed(0)
    cfg = common.gpt_config(args)
    base = GPT(cfg)
    methods = [
        "DDP + AdamW(fused)",
        "ZeroRedundancyOptimizer",
        "FSDP2 fully_shard",
        "pyzero stage 1",
        "pyzero stage 2",
        "pyzero stage 2 +prefetch",
        "pyzero stage 3",
        "pyzero stage 3 keep-after-forward",
    ]
    setups = {m: build(m, base) for m in methods}
    gen = torch.Generator().manual_seed(100 + rank)
    times: dict[str, list[float]] = {m: [] for m in methods}
    comm_bytes = {}
    mems = {}
    for it in range(WARMUP + args.steps):
        tokens = torch.randint(0, cfg.vocab, (args.batch, cfg.seq + 1), generator=gen)
        for m in methods:
            model, opt, _ = setups[m]
            dist.barrier()
            if m.startswith("pyzero"):
                opt.comm.reset_counts()
            t0 = time.perf_counter()
            lm_loss(model, tokens).backward()
            opt.step()
            dt = time.perf_counter() - t0
            mems[m] = setups[m][2]()  # model states at step time, gradients included
            opt.zero_grad(set_to_none=True)
            if it >= WARMUP:
                times[m].append(dt)
            if m.startswith("pyzero"):
                comm_bytes[m] = opt.comm_report()
    result = {
        "params": sum(p.numel() for p in base.parameters()),
        "median_s": {m: statistics.median(v) for m, v in times.items()},
        "mem": mems,
        "comm": comm_bytes,
    }
    queue.put((rank, result))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_gpt_args(ap)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=str(HERE / "out" / "bench_zero.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    results = common.spawn_ranks(worker, args.ranks, args)
    r0 = results[0]
    n = r0["params"]
    ddp = r0["median_s"]["DDP + AdamW(fused)"]
    rows = []
    for m, t in r0["median_s"].items():
        rows.append(
            {
                "method": m,
                "s/step": f"{t:.3f}",
                "vs DDP": f"{t / ddp:.2f}x",
                "model states MiB/rank": f"{max(r['mem'][m][0] for r in results.values()) / 2**20:.0f}",
                "optimizer state MiB/rank": f"{max(r['mem'][m][1] for r in results.values()) / 2**20:.0f}",
                "params MiB/rank": f"{max(r['mem'][m][2] for r in results.values()) / 2**20:.0f}",
            }
        )
    theory = 2 * 4 * n * (args.ranks - 1) / args.ranks
    common.write_json(args.out, {"machine": common.machine("cpu"), "args": vars(args), "ranks": results})
    print(
        f"\nZeRO step, GPT {n / 1e6:.1f}M params, {args.ranks} gloo ranks x {args.threads} thread(s), "
        f"batch {args.batch}x{args.seq} per rank; {common.machine('cpu')}"
    )
    for m, c in r0["comm"].items():
        sent = c.get("reduce_scatter_sent_per_rank", 0) + c.get("all_gather_sent_per_rank", 0)
        if m == "pyzero stage 3":  # gathers again for backward, except units kept into backward
            bound = f"at most 3 x params x (N-1)/N = {1.5 * theory / 2**20:.1f} MiB"
        else:
            bound = f"theory 2 x params x (N-1)/N = {theory / 2**20:.1f} MiB (+ padding)"
        print(f"{m}: sent {sent / 2**20:.1f} MiB/rank/step (reduce-scatter + all-gather); {bound}")
    fsdp, s3 = r0["median_s"]["FSDP2 fully_shard"], r0["median_s"]["pyzero stage 3"]
    print(f"pyzero stage 3: {s3 / ddp:.2f}x DDP's step time, {fsdp / s3:.2f}x faster than FSDP2")
    common.print_table(
        rows,
        [
            "method",
            "s/step",
            "vs DDP",
            "model states MiB/rank",
            "optimizer state MiB/rank",
            "params MiB/rank",
        ],
    )


if __name__ == "__main__":
    main()
