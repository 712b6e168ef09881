"""Per-rank memory of model states, predicted (`plan`) and measured (`FusedShardedAdam.memory_report`).

Categories, in bytes per rank: params (model-dtype parameters this rank stores), grads (gradient
storage: full flat gradients in stages 0-1, this rank's shards in stages 2-3), master (fp32 master
weights kept apart from the params; none when the params are fp32 themselves), exp_avg, exp_avg_sq,
buffers (persistent communication scratch), and model_states (the sum of the first five).
Scalars (step counts, the loss scale) are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pyzero.zero.layout import FlatLayout, make_layout
from pyzero.zero.units import UnitPolicy, plan_units, working_set
from pyzero.zero.zero_init import full_numel

CATEGORIES = ("params", "grads", "master", "exp_avg", "exp_avg_sq", "buffers")
MASTER_DTYPE = torch.float32


def default_reduce_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Gradient reduction dtype: fp32 for bf16 params (fp32 accumulation), the param dtype otherwise."""
    return torch.float32 if param_dtype == torch.bfloat16 else param_dtype


def grad_shard_dtype(stage: int, reduce_dtype: torch.dtype, accumulation_steps: int) -> torch.dtype:
    """Stage 2 keeps its gradient shard in fp32 between micro-steps when accumulating."""
    return torch.float32 if stage >= 2 and accumulation_steps > 1 else reduce_dtype


def bucket_elems(bucket_cap_mb: float, reduce_dtype: torch.dtype) -> int:
    return int(bucket_cap_mb * 2**20) // torch.empty((), dtype=reduce_dtype).element_size()


def group_bytes(
    layout: FlatLayout,
    stage: int,
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    accumulation_steps: int = 1,
    master_dtype: torch.dtype = MASTER_DTYPE,
) -> dict[str, int]:
    """Bytes per rank of one flat group (one (param group, dtype)) at ZeRO `stage` (0-3)."""

    def size(dtype: torch.dtype) -> int:
        return torch.empty((), dtype=dtype).element_size()

    full, part = layout.flat_numel, layout.partition_numel
    opt_numel = full if stage == 0 else part
    separate_master = param_dtype != master_dtype
    return {
        "params": (part if stage >= 3 else full) * size(param_dtype),
        "grads": (part if stage >= 2 else full)
        * size(grad_shard_dtype(stage, reduce_dtype, accumulation_steps)),
        "master": opt_numel * size(master_dtype) if separate_master else 0,
        "exp_avg": opt_numel * size(master_dtype),
        "exp_avg_sq": opt_numel * size(master_dtype),
        "buffers": 0,
    }


def total(parts: Iterable[dict[str, int]]) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for p in parts:
        for k in CATEGORIES:
            out[k] += p[k]
    out["model_states"] = sum(out[k] for k in ("params", "grads", "master", "exp_avg", "exp_avg_sq"))
    return out


def plan(
    model_or_numel: nn.Module | int,
    world_size: int,
    stage: int,
    param_dtype: torch.dtype | None = None,
    *,
    bucket_cap_mb: float = 25,
    reduce_dtype: torch.dtype | None = None,
    accumulation_steps: int = 1,
    prefetch: int = 2,
    units: UnitPolicy = None,
    reshard_after_forward: bool = True,
) -> dict[str, int]:
    """Predicted per-rank bytes of model states before training (see the module docstring).

    model_or_numel: an nn.Module (its trainable parameters, grouped by dtype as FusedShardedAdam
    groups them, one param group) or a parameter count. param_dtype: defaults to the module's
    parameter dtype(s), or fp32 for a count. Reproduces the ZeRO paper's Figure 1, e.g.
    plan(7_500_000_000, 64, 2, torch.float16)["model_states"] ~ 16.6e9.

    Stage 3 with a module lays out each unit (Note [Stage-3 units]; frozen parameters are stored too)
    and adds "working_set": the gathered bytes the schedule can hold at once, pinned units plus the
    (prefetch + 1) largest others (Note [Stage-3 schedule]). Modules called more than once per step
    or parameters read outside their module's forward are only known once training runs: the
    optimizer's memory_report()["working_set"] includes them.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage}")
    if stage == 3 and isinstance(model_or_numel, nn.Module):
        return _plan_stage3(
            model_or_numel,
            world_size,
            param_dtype,
            bucket_cap_mb,
            reduce_dtype,
            accumulation_steps,
            prefetch,
            units,
            reshard_after_forward,
        )
    groups: list[tuple[torch.dtype, list[int]]] = []
    if isinstance(model_or_numel, nn.Module):
        by_dtype: dict[torch.dtype, list[int]] = {}
        for p in reversed([p for p in model_or_numel.parameters() if p.requires_grad]):
            by_dtype.setdefault(param_dtype or p.dtype, []).append(full_numel(p))
        groups = list(by_dtype.items())
    else:
        groups = [(param_dtype or torch.float32, [int(model_or_numel)])]
    parts = []
    for dtype, numels in groups:
        rd = reduce_dtype or default_reduce_dtype(dtype)
        layout = make_layout(numels, world_size, bucket_elems(bucket_cap_mb, rd))
        parts.append(group_bytes(layout, stage, dtype, rd, accumulation_steps))
    return total(parts)


def _plan_stage3(
    model: nn.Module,
    world_size: int,
    param_dtype: torch.dtype | None,
    bucket_cap_mb: float,
    reduce_dtype: torch.dtype | None,
    accumulation_steps: int,
    prefetch: int,
    units: UnitPolicy,
    reshard_after_forward: bool,
) -> dict[str, int]:
    """plan() for stage 3 with a module: the same flat groups FusedShardedAdam(stage=3) builds."""
    unit_plan = plan_units(model, units)
    parts, unit_bytes = [], []
    for spec in unit_plan.units:
        keyed: dict[tuple[bool, torch.dtype], list[int]] = {}
        for p in reversed(spec.params):
            keyed.setdefault((not p.requires_grad, param_dtype or p.dtype), []).append(full_numel(p))
        full = 0
        for (frozen, dtype), numels in sorted(keyed.items(), key=lambda kv: kv[0][0]):
            rd = reduce_dtype or default_reduce_dtype(dtype)
            layout = make_layout(numels, world_size, bucket_elems(bucket_cap_mb, rd))
            size = torch.empty((), dtype=dtype).element_size()
            full += layout.flat_numel * size
            if frozen:
                parts.append(dict.fromkeys(CATEGORIES, 0) | {"params": layout.partition_numel * size})
            else:
                parts.append(group_bytes(layout, 3, dtype, rd, accumulation_steps))
        unit_bytes.append(full)
    out = total(parts)
    if reshard_after_forward:
        frozen_units = {
            i for i, spec in enumerate(unit_plan.units) if any(not p.requires_grad for p in spec.params)
        }
        out["working_set"] = working_set(unit_bytes, unit_plan.pinned() | frozen_units, prefetch)
    else:
        out["working_set"] = sum(unit_bytes)
    return out
