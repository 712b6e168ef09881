"""Readable plain-torch references of every fused kernel.

They define what the fast paths compute and are the ``backend="reference"`` of the optimizers.
"""

from __future__ import annotations

import torch
from torch import Tensor


def adam_scalars(lr: float, beta1: float, beta2: float, step: float) -> tuple[float, float]:
    """(step_size, sqrt(1 - beta2^step)) in double, as Note [AdamW update] (csrc/adam.h) states."""
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return lr / bc1, bc2**0.5


@torch.no_grad()
def fused_adamw_reference(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    params_out: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    adamw_mode: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One AdamW/Adam step, in place, following Note [AdamW update] (csrc/adam.h) op by op.

    params, exp_avgs, exp_avg_sqs: fp32 tensors; grads: fp32/bf16/fp16 of the same sizes;
    params_out: [] or low-precision tensors that receive the updated params; state_steps: one-element
    fp32 tensors advanced by one; grad_scale: fp32 one-element multiplier of the grads; found_inf:
    fp32 one-element flag, nonzero makes the whole call a no-op.
    """
    if found_inf is not None and float(found_inf) != 0.0:
        return
    one_minus_beta1 = 1.0 - beta1
    one_minus_beta2 = 1.0 - beta2
    for i, p in enumerate(params):
        state_steps[i].add_(1)
        step_size, bc2_sqrt = adam_scalars(lr, beta1, beta2, float(state_steps[i]))
        g = grads[i].float()
        if grad_scale is not None:
            g = g * grad_scale.to(g.device)
        if maximize:
            g = -g
        if adamw_mode:
            p.mul_(1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m, v = exp_avgs[i], exp_avg_sqs[i]
        m.add_(one_minus_beta1 * (g - m))
        v.mul_(beta2).add_(one_minus_beta2 * (g * g))
        denom = v.sqrt() / bc2_sqrt + eps
        p.sub_(step_size * (m / denom))
        if params_out:
            params_out[i].copy_(p)
