"""Rank functions for the checkpoint tests (importable, so spawned processes find them)."""

from __future__ import annotations

import torch

import pyzero
from tests.zero.jobs import LR, TINY_BUCKET_MB, flat_params, make_optimizer
from tests.zero.models import batches, loss_fn, make_model

SAVE_AT = 3  # steps before the save
STEPS = 6  # steps in all
GLOBAL_ROWS = 12  # sequences per step, divisible by every world size tested (1-4)


def _train(model, opt, rank: int, world: int, steps: range) -> None:
    """The same global batch of GLOBAL_ROWS sequences per step at every world size, split evenly."""
    data = batches(STEPS, 1, micro=GLOBAL_ROWS)
    rows = GLOBAL_ROWS // world
    for step in steps:
        loss_fn(model, data[step][0][rank * rows : (rank + 1) * rows]).backward()
        opt.step()
        opt.zero_grad()


def _full_state(model, opt) -> dict[str, list]:
    sd = pyzero.full_state_dict(model) if opt.stage == 3 else model.state_dict()
    return {k: v.float().tolist() for k, v in sd.items()}


def save_job(rank: int, world: int, path: str, stage: int, dtype: torch.dtype = torch.float32) -> dict:
    """Train SAVE_AT steps, save, train on to STEPS; returns the state at the save and at the end."""
    model = make_model(dtype=dtype)
    opt = make_optimizer(model, {"stage": stage}, lr=LR, bucket_cap_mb=TINY_BUCKET_MB, max_grad_norm=0.05)
    _train(model, opt, rank, world, range(SAVE_AT))
    at_save = _full_state(model, opt)
    pyzero.save_checkpoint(path, model, opt, extra={"step": SAVE_AT - 1, "note": "x", "t": torch.arange(3)})
    _train(model, opt, rank, world, range(SAVE_AT, STEPS))
    return {"at_save": at_save, "final": flat_params(model, opt).tolist()}


def load_job(rank: int, world: int, path: str, stage: int, dtype: torch.dtype = torch.float32) -> dict:
    """A differently initialised model loads the checkpoint (any world size / stage) and trains on."""
    model = make_model(seed=7, dtype=dtype)
    opt = make_optimizer(model, {"stage": stage}, lr=LR, bucket_cap_mb=TINY_BUCKET_MB, max_grad_norm=0.05)
    opt.param_groups[0]["lr"] = 123.0  # restored from the checkpoint
    extra = pyzero.load_checkpoint(path, model, opt)
    restored_lr = opt.param_groups[0]["lr"]
    _train(model, opt, rank, world, range(extra["step"] + 1, STEPS))
    return {
        "final": flat_params(model, opt).tolist(),
        "extra": {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in extra.items()},
        "lr": restored_lr,
    }
