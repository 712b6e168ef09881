"""Helpers shared by the optimizer and kernel tests."""

from __future__ import annotations

import torch

from tests.conftest import PARITY_STEPS


def adamw_fp64_reference(
    p0: torch.Tensor,
    grads: list[torch.Tensor],
    *,
    lr: float,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    adamw: bool = True,
    maximize: bool = False,
) -> torch.Tensor:
    """Runs torch.optim.AdamW / Adam (foreach=False) in fp64 over the given gradient sequence."""
    p = p0.detach().double().clone().requires_grad_(True)
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    opt = cls([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=False)
    for g in grads:
        p.grad = g.double().reshape(p.shape)
        opt.step()
    return p.detach()


def random_grads(n: int, steps: int = PARITY_STEPS, dtype=torch.float32, device="cpu") -> list[torch.Tensor]:
    """Gradient sequence with a spread of magnitudes, already rounded to `dtype`."""
    scale = torch.logspace(-3, 1, max(n, 1))[:n]
    return [(torch.randn(n, dtype=torch.float64) * scale).to(dtype).to(device) for _ in range(steps)]
