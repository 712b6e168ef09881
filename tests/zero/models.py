"""Small models for ZeRO tests, built identically on every rank and in the reference process."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 37
DIM = 24
SEQ = 5


class TinyGPT(nn.Module):
    """Tied embedding / LM head, a block called twice, a frozen projection, no zero-gradient params
    (no attention key bias: see DESIGN.md's parity pitfall). Parameter numels are not multiples of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.block = nn.Sequential(nn.Linear(DIM, DIM + 7), nn.GELU(), nn.Linear(DIM + 7, DIM))
        self.frozen = nn.Linear(DIM, DIM, bias=False)
        self.frozen.requires_grad_(False)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)
        h = h + self.block(h)
        h = h + self.block(h)  # the same module twice
        h = self.frozen(h)
        return self.head(self.norm(h))


def make_model(seed: int = 0, dtype=torch.float32) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT().to(dtype)


def batches(steps: int, world: int, micro: int = 3, seed: int = 1) -> list[list[torch.Tensor]]:
    """batches[step][rank]: token ids of shape (micro, SEQ + 1)."""
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.randint(0, VOCAB, (micro, SEQ + 1), generator=g) for _ in range(world)] for _ in range(steps)
    ]


def loss_fn(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def param_groups(model: nn.Module) -> list[dict]:
    """Different lr and weight decay for matrices and vectors."""
    mats = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vecs = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": mats, "weight_decay": 0.1}, {"params": vecs, "lr": 3e-3, "weight_decay": 0.0}]
