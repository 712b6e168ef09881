"""How fast are pyzero checkpoints against torch.save of a full state dict and against
torch.distributed.checkpoint (DCP) of an FSDP2 model, for the same GPT on the same gloo ranks?

Measures save, load at the same world size, load resharded (the stage-2 checkpoint into a stage-3
optimizer, whose partitions cut the parameters differently) and offline consolidation into one
safetensors file. Throughput is checkpoint bytes on disk per second (median of interleaved reps);
every writer fsyncs (torch.save is followed by an fsync too). Loads read from the page cache, as they
do right after a save on any machine.

    python bench/bench_checkpoint.py [--ranks 2] [--dim 512] [--layers 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
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


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def timed(fn) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def worker(rank: int, world: int, port: int, args, root: str, queue) -> None:
    torch.set_num_threads(1)
    comm.init_local_gloo(rank, world, port, timeout_s=600)
    cfg = common.gpt_config(args)
    torch.manual_seed(0)
    tokens = torch.randint(0, cfg.vocab, (2, cfg.seq + 1))

    def trained(stage: int):
        torch.manual_seed(0)
        model = GPT(cfg)
        kw = {"units": [Block]} if stage == 3 else {}
        opt = pyzero.FusedShardedAdam(model, lr=LR, stage=stage, **kw)
        lm_loss(model, tokens).backward()
        opt.step()
        return model, opt

    model, opt = trained(2)
    model3, opt3 = trained(3)
    # Peers: torch AdamW state on a replicated model (torch.save on rank 0), FSDP2 + DCP (sharded).
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    full = GPT(cfg)
    full_opt = torch.optim.AdamW(full.parameters(), lr=LR)
    lm_loss(full, tokens).backward()
    full_opt.step()
    torch.manual_seed(0)
    fsdp = GPT(cfg)
    for blk in fsdp.blocks:
        fully_shard(blk)
    fully_shard(fsdp)
    fsdp_opt = torch.optim.AdamW(fsdp.parameters(), lr=LR)
    lm_loss(fsdp, tokens).backward()
    fsdp_opt.step()

    import torch.distributed.checkpoint as dcp

    def one_rep(base: Path) -> tuple[dict[str, float], dict[str, int]]:
        ours, dcp_dir, tsave = base / "pyzero" / "ckpt", base / "dcp", base / "torch.pt"

        def torch_save():
            if rank == 0:
                torch.save({"model": full.state_dict(), "optim": full_opt.state_dict()}, tsave)
                with open(tsave, "rb+") as f:
                    os.fsync(f.fileno())

        def torch_load():
            sd = torch.load(tsave, weights_only=True)
            full.load_state_dict(sd["model"])
            full_opt.load_state_dict(sd["optim"])

        def dcp_save():
            msd, osd = get_state_dict(fsdp, fsdp_opt)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(dcp_dir))

        def dcp_load():
            msd, osd = get_state_dict(fsdp, fsdp_opt)
            state = {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=str(dcp_dir))
            set_state_dict(fsdp, fsdp_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])

        def consolidate():
            if rank == 0:
                pyzero.consolidate_checkpoint(ours, base / "model.safetensors", include_optimizer=True)

        steps = [
            ("save", "pyzero", lambda: pyzero.save_checkpoint(ours, model, opt)),
            ("save", "torch.save (rank 0, full)", torch_save),
            ("save", "DCP (FSDP2)", dcp_save),
            ("load", "pyzero", lambda: pyzero.load_checkpoint(ours, model, opt)),
            ("load", "torch.load (every rank, full)", torch_load),
            ("load", "DCP (FSDP2)", dcp_load),
            ("load resharded", "pyzero (stage 2 -> 3)", lambda: pyzero.load_checkpoint(ours, model3, opt3)),
            ("consolidate", "pyzero (offline, rank 0)", consolidate),
        ]
        times = {f"{op}|{method}": timed(fn) for op, method, fn in steps}
        sizes = {}
        if rank == 0:
            sizes = {
                "pyzero": dir_bytes(ours),
                "torch": tsave.stat().st_size,
                "dcp": dir_bytes(dcp_dir),
                "consolidated": (base / "model.safetensors").stat().st_size,
            }
            shutil.rmtree(base)
        dist.barrier()
        return times, sizes

    times: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    for rep in range(args.reps):
        t, sizes = one_rep(Path(root) / f"rep{rep}")
        for k, v in t.items():
            times.setdefault(k, []).append(v)
    queue.put((rank, {"times": {k: statistics.median(v) for k, v in times.items()}, "sizes": sizes}))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_gpt_args(ap)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "out" / "bench_checkpoint.json"))
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="pyzero-bench-ckpt-", dir=os.environ.get("BENCH_CKPT_DIR"))
    results = common.spawn_ranks(worker, args.ranks, args, root)
    shutil.rmtree(root, ignore_errors=True)
    r0 = results[0]
    sizes = r0["sizes"]
    size_of = {"pyzero": sizes["pyzero"], "torch": sizes["torch"], "DCP": sizes["dcp"]}
    rows = []
    for key, t in r0["times"].items():
        op, method = key.split("|")
        nbytes = (
            sizes["consolidated"]
            if op == "consolidate"
            else next(v for k, v in size_of.items() if method.startswith(k))
        )
        rows.append(
            {
                "operation": op,
                "method": method,
                "s": f"{t:.3f}",
                "MiB": f"{nbytes / 2**20:.0f}",
                "GB/s": f"{nbytes / t / 1e9:.2f}",
            }
        )
    common.write_json(args.out, {"machine": common.machine("cpu"), "args": vars(args), "ranks": results})
    print(
        f"\nCheckpoints of a GPT with optimizer state, {args.ranks} gloo ranks; {common.machine('cpu')}; "
        f"disk under {root}"
    )
    common.print_table(rows, ["operation", "method", "s", "MiB", "GB/s"])


if __name__ == "__main__":
    main()
