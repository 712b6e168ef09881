"""ZeRO-sharded training: FusedShardedAdam (stages 1-3), zero_init, full state dicts, checkpoints,
the memory plan."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pyzero.zero.checkpoint import consolidate_checkpoint, load_checkpoint, save_checkpoint
from pyzero.zero.memory import plan
from pyzero.zero.sharded_adam import FusedShardedAdam
from pyzero.zero.stage3 import engine_of
from pyzero.zero.zero_init import zero_init


def full_state_dict(
    model: nn.Module, *, rank0_only: bool = False, cpu_offload: bool = True
) -> dict[str, Any]:
    """`model.state_dict()` with every parameter in full, for a model under FusedShardedAdam(stage=3).

    Collective (every rank calls it); units are gathered one at a time, so the extra memory is one
    unit plus the result. rank0_only: other ranks return {}. cpu_offload: values are CPU copies.
    """
    return engine_of(model).full_state_dict(rank0_only=rank0_only, cpu_offload=cpu_offload)


def register_external_parameter(module: nn.Module, param: Tensor, model: nn.Module) -> None:
    """Declares that `module`'s forward reads `param` of another unit of stage-3 `model`."""
    engine_of(model).register_external_parameter(module, param)


__all__ = [
    "FusedShardedAdam",
    "consolidate_checkpoint",
    "full_state_dict",
    "load_checkpoint",
    "plan",
    "register_external_parameter",
    "save_checkpoint",
    "zero_init",
]
