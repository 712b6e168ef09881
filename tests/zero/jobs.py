"""Functions run on every rank of a spawned gloo job (importable, so the spawn start method finds them)."""

from __future__ import annotations

import contextlib
import copy

import torch

from pyzero import FusedShardedAdam, plan
from tests.zero.models import batches, gpt_batches, loss_fn, make_model, param_groups, small_gpt_config

PARITY_STEPS = 10
LR = 1e-2
# A bucket of 71 fp32 elements (rounded down to the layout's unit): parameters straddle buckets.
TINY_BUCKET_MB = 71 * 4 / 2**20
# Prefetch depth of stage3_accounting_job (its communication theory depends on it).
STAGE3_PREFETCH = 1


def flat_params(model, opt=None) -> torch.Tensor:
    """All parameters, flattened in model order (stage 3: gathered for the occasion)."""
    with opt.gathered_parameters() if opt is not None and opt.stage == 3 else contextlib.nullcontext():
        return torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])


def make_optimizer(model, cfg: dict, **kwargs) -> FusedShardedAdam:
    """The optimizer a parity config asks for (stage 3: the model plus param groups)."""
    if cfg["stage"] == 3:
        return FusedShardedAdam(
            model,
            param_groups=param_groups(model),
            stage=3,
            prefetch=cfg.get("depth", 2),
            reshard_after_forward=cfg.get("reshard", True),
            units=cfg.get("units"),
            **kwargs,
        )
    return FusedShardedAdam(
        model if cfg.get("prefetch") else param_groups(model),
        overlap_param_gather=cfg.get("prefetch", False),
        stage=cfg["stage"],
        **kwargs,
    )


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
        model = make_model(dtype=cfg.get("dtype", torch.float32), checkpoint=cfg.get("checkpoint", False))
        accum = cfg.get("accum", 1)
        no_sync = cfg.get("no_sync", False)
        opt = make_optimizer(
            model,
            cfg,
            lr=LR,
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
        ours = flat_params(model, opt)
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


def _sample_peaks(engine) -> list[int]:
    """Measures engine.held_param_bytes() (every parameter storage this rank holds) right after each
    gather starts or completes: the moments the held bytes can grow."""
    peaks = [engine.held_param_bytes()]
    for name in ("_gather", "_wait"):
        inner = getattr(engine, name)

        def sampled(u, inner=inner):
            inner(u)
            peaks.append(engine.held_param_bytes())

        setattr(engine, name, sampled)
    return peaks


def stage3_accounting_job(rank: int, world: int) -> dict:
    """Stage 3 on examples/gpt.py's GPT with Block units: memory_report vs plan, measured peak of
    parameter bytes, and communication bytes per step for stage 3 and stage 2."""
    from gpt import GPT, Block, lm_loss

    cfg = small_gpt_config(layers=6)
    data = gpt_batches(2, world)
    out: dict = {}
    for reshard in (True, False):
        torch.manual_seed(0)
        model = GPT(cfg)
        full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        kw = dict(
            units=[Block],
            prefetch=STAGE3_PREFETCH,
            reshard_after_forward=reshard,
            bucket_cap_mb=TINY_BUCKET_MB,
        )
        planned = plan(model, world, 3, **kw)
        opt = FusedShardedAdam(model, stage=3, **kw)
        peaks = _sample_peaks(opt.stage3)
        for step in range(2):
            if step == 1:
                opt.comm.reset_counts()
            lm_loss(model, data[step][rank]).backward()
            opt.step()
        out[f"reshard={reshard}"] = {
            "report": opt.memory_report(),
            "plan": planned,
            "peak": max(peaks),
            "full_bytes": full_bytes,
            "flat_bytes": opt.stage3.flat_numel() * 4,
            "comm": dict(opt.comm.bytes),
            "root_units": [u.index for u in opt.stage3.needs[model]],
            "unit_bytes": [u.full_bytes for u in opt.stage3.units],
            "fwd_order": opt.stage3.fwd_order,
            "bwd_order": opt.stage3.bwd_order,
            "order_changes": opt.stage3.order_changes,
        }
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = FusedShardedAdam(model, stage=2, bucket_cap_mb=TINY_BUCKET_MB)
    for step in range(2):
        if step == 1:
            opt.comm.reset_counts()
        lm_loss(model, data[step][rank]).backward()
        opt.step()
    out["stage2"] = {
        "comm": dict(opt.comm.bytes),
        "flat_bytes": sum(g.layout.flat_numel for g in opt.groups) * 4,
    }
    return out


def zero_init_job(rank: int, world: int, budget_fraction: float) -> dict:
    """A GPT built under zero_init with a parameter budget below its full size, trained 3 steps; the
    same GPT built normally and trained the same way must end identical."""
    from gpt import GPT, Block, lm_loss

    import pyzero

    cfg = small_gpt_config(layers=8, dim=48)
    torch.manual_seed(0)
    plain = GPT(cfg)
    init_state = {k: v.clone() for k, v in plain.state_dict().items()}
    full_bytes = sum(p.numel() * p.element_size() for p in plain.parameters())
    budget = int(full_bytes * budget_fraction)
    torch.manual_seed(0)
    with pyzero.zero_init(budget_bytes=budget) as ledger:
        model = GPT(cfg)
    placeholders = all(p.numel() == 0 for p in model.parameters())
    opt = FusedShardedAdam(model, stage=3, units=[Block], prefetch=1, lr=LR)
    build_peak = opt.stage3.build_peak_bytes
    peaks = _sample_peaks(opt.stage3)
    at_init = pyzero.full_state_dict(model)
    twin_opt = FusedShardedAdam(plain, stage=3, units=[Block], prefetch=1, lr=LR)
    data = gpt_batches(3, world)
    for step in range(3):
        for m, o in ((model, opt), (plain, twin_opt)):
            lm_loss(m, data[step][rank]).backward()
            o.step()
    trained, twin = pyzero.full_state_dict(model), pyzero.full_state_dict(plain)
    return {
        "full_bytes": full_bytes,
        "budget": budget,
        "ledger_peak": ledger.peak,
        "build_peak": build_peak,
        "train_peak": max(peaks),
        "placeholders": placeholders,
        "init_equal": all(torch.equal(at_init[k], init_state[k]) for k in init_state),
        "trained_equal": all(torch.equal(trained[k], twin[k]) for k in twin),
        "changed": not all(torch.equal(trained[k], init_state[k]) for k in init_state),
    }


def stage3_state_dict_job(rank: int, world: int) -> dict:
    """full_state_dict on rank 0 only and on every rank, model.state_dict(), and eval / no_grad forward
    passes between training steps."""
    import pyzero

    model = make_model(checkpoint=True)
    opt = FusedShardedAdam(model, stage=3, lr=LR)
    data = batches(3, world)
    evals = []
    for step in range(3):
        loss_fn(model, data[step][rank]).backward()
        opt.step()
        with torch.no_grad():
            evals.append(loss_fn(model, data[0][0]).item())
    everywhere = pyzero.full_state_dict(model)
    rank0 = pyzero.full_state_dict(model, rank0_only=True)
    plain = model.state_dict()
    return {
        "keys": sorted(everywhere),
        "rank0_keys": sorted(rank0),
        "equal": all(torch.equal(everywhere[k], plain[k]) for k in plain)
        and sorted(plain) == sorted(everywhere),
        "tied": everywhere["embed.weight"] is everywhere["head.weight"],
        "flat": flat_params(model, opt).tolist(),
        "evals": evals,
        "gathered_after": opt.stage3.gathered_bytes,
    }
