"""Functions run on every rank of a spawned gloo job (importable, so the spawn start method finds them)."""

from __future__ import annotations

import copy

import torch

from pyzero import FusedShardedAdam, plan
from tests.zero.models import batches, loss_fn, make_model, param_groups

PARITY_STEPS = 10
LR = 1e-2
# A bucket of 71 fp32 elements (rounded down to the layout's unit): parameters straddle buckets.
TINY_BUCKET_MB = 71 * 4 / 2**20


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])


def reference(world: int, cfg: dict) -> torch.Tensor:
    """torch.optim.AdamW in fp64 on the full batch (all ranks' micro-batches), same schedule."""
    model = make_model(dtype=cfg.get("dtype", torch.float32)).double()
    groups = (
        [p for p in model.parameters() if p.requires_grad] if cfg.get("prefetch") else param_groups(model)
    )
    opt = torch.optim.AdamW(groups, lr=LR, foreach=False)
    accum = cfg.get("accum", 1)
    data = batches(PARITY_STEPS * accum, world)
    for step in range(PARITY_STEPS):
        for a in range(accum):
            loss_fn(model, torch.cat(data[step * accum + a])).backward()
        if cfg.get("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        opt.zero_grad()
    return flat_params(model)


def parity_job(rank: int, world: int, configs: list[dict]) -> list[float]:
    """Relative error vs the fp64 single-process reference, per config (computed on rank 0)."""
    errors = []
    for cfg in configs:
        model = make_model(dtype=cfg.get("dtype", torch.float32))
        accum = cfg.get("accum", 1)
        no_sync = cfg.get("no_sync", False)
        opt = FusedShardedAdam(
            model if cfg.get("prefetch") else param_groups(model),
            lr=LR,
            overlap_param_gather=cfg.get("prefetch", False),
            stage=cfg["stage"],
            bucket_cap_mb=cfg.get("bucket_mb", TINY_BUCKET_MB),
            max_grad_norm=cfg.get("clip"),
            accumulation_steps=1 if no_sync else accum,
        )
        data = batches(PARITY_STEPS * accum, world)
        for step in range(PARITY_STEPS):
            for a in range(accum):
                loss = loss_fn(model, data[step * accum + a][rank])
                if no_sync and a < accum - 1:
                    with opt.no_sync():
                        loss.backward()
                    continue
                loss.backward()
                opt.step()
                opt.zero_grad()
        opt.wait_for_params()
        ours = flat_params(model)
        gathered = [torch.zeros_like(ours) for _ in range(world)]
        torch.distributed.all_gather(gathered, ours)
        if any(not torch.equal(g, ours) for g in gathered):
            raise AssertionError(f"ranks disagree after training with {cfg}")
        if rank == 0:
            ref = reference(world, cfg)
            errors.append(((ours - ref).norm() / ref.norm()).item())
    return errors


def accounting_job(rank: int, world: int) -> dict:
    """memory_report vs plan, optimizer-state share, communication bytes per step."""
    out = {}
    for stage in (1, 2):
        for dtype in (torch.float32, torch.bfloat16):
            model = make_model(dtype=dtype)
            opt = FusedShardedAdam(model, stage=stage, bucket_cap_mb=TINY_BUCKET_MB)
            tokens = batches(1, world)[0][rank]
            opt.comm.reset_counts()
            loss_fn(model, tokens).backward()
            opt.step()
            key = f"stage{stage}_{str(dtype).split('.')[-1]}"
            out[key] = {
                "report": opt.memory_report(),
                "plan": plan(model, world, stage, bucket_cap_mb=TINY_BUCKET_MB),
                "unsharded": plan(model, world, 0, bucket_cap_mb=TINY_BUCKET_MB),
                "comm": dict(opt.comm.bytes),
                "flat_numel": sum(g.layout.flat_numel for g in opt.groups),
            }
    return out


def overflow_job(rank: int, world: int) -> dict:
    """fp16 with dynamic loss scaling; rank 1's loss overflows at step 1."""
    model = make_model(dtype=torch.float16)
    opt = FusedShardedAdam(model, lr=LR, stage=2, loss_scale="dynamic")
    opt.scaler.hysteresis = opt.scaler.overflows_left = 1
    opt.scaler.scale = 2.0**8  # 2^16 overflows this model's fp16 grads at once
    data = batches(3, world)
    history = []
    for step in range(3):
        before = flat_params(model)
        loss = loss_fn(model, data[step][rank])
        if step == 1 and rank == 1:
            loss = loss * float("inf")
        opt.backward(loss)
        opt.step()
        history.append(
            {
                "skipped": opt.last_step_skipped,
                "changed": not torch.equal(before, flat_params(model)),
                "scale": opt.loss_scale,
            }
        )
    return {"history": history}


def errors_job(rank: int, world: int) -> dict:
    """Bad input raises on every rank without hanging."""
    caught = {}
    model = make_model()
    opt = FusedShardedAdam(model, stage=2)
    try:
        opt.step()
    except RuntimeError as e:
        caught["step_without_backward"] = str(e)
    tiny = torch.nn.Linear(1, 1, bias=False)
    try:
        FusedShardedAdam(tiny, stage=1)
    except ValueError as e:
        caught["world_larger_than_numel"] = str(e)
    other = make_model()
    if rank == 1:
        other.extra = torch.nn.Parameter(torch.zeros(3))
    try:
        FusedShardedAdam(other, stage=2)
    except RuntimeError as e:
        caught["mismatch"] = str(e)
    return caught


def state_dict_job(rank: int, world: int) -> dict:
    """Save after 3 steps, continue 3 more; a fresh optimizer loaded from the save continues identically."""
    data = batches(6, world)
    model = make_model(dtype=torch.bfloat16)
    opt = FusedShardedAdam(model, lr=LR, stage=2)
    for step in range(3):
        loss_fn(model, data[step][rank]).backward()
        opt.step()
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    for step in range(3, 6):
        loss_fn(model, data[step][rank]).backward()
        opt.step()
    twin = make_model(dtype=torch.bfloat16)
    twin.load_state_dict(saved_model)
    opt2 = FusedShardedAdam(twin, lr=LR, stage=2)
    opt2.load_state_dict(saved_opt)
    for step in range(3, 6):
        loss_fn(twin, data[step][rank]).backward()
        opt2.step()
    return {"equal": torch.equal(flat_params(model), flat_params(twin))}
