"""Small models for ZeRO tests, built identically on every rank and in the reference process."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import nn

EXAMPLES = str(Path(__file__).resolve().parents[2] / "examples")
if EXAMPLES not in sys.path:
    sys.path.append(EXAMPLES)

VOCAB = 37
DIM = 24
SEQ = 5


class TinyGPT(nn.Module):
    """Tied embedding / LM head, a block called twice (optionally under activation checkpointing), a
    position table read outside its module's forward, a frozen projection, no zero-gradient params
    (no attention key bias: see DESIGN.md's parity pitfall). Parameter numels are not multiples of 4."""

    def __init__(self, checkpoint: bool = False) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(SEQ, DIM)
        self.block = nn.Sequential(nn.Linear(DIM, DIM + 7), nn.GELU(), nn.Linear(DIM + 7, DIM))
        self.frozen = nn.Linear(DIM, DIM, bias=False)
        self.frozen.requires_grad_(False)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx) + self.pos.weight[: idx.shape[1]]  # pos's parameter, outside pos's forward
        for _ in range(2):  # the same module twice
            if self.checkpoint:
                h = h + torch.utils.checkpoint.checkpoint(self.block, h, use_reentrant=False)
            else:
                h = h + self.block(h)
        h = self.frozen(h)
        return self.head(self.norm(h))


def make_model(seed: int = 0, dtype=torch.float32, checkpoint: bool = False) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(checkpoint).to(dtype)


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


def small_gpt_config(layers: int = 3, dim: int = 32):
    """examples/gpt.py's GPT at test size (tied tok / head, `Block` units)."""
    from gpt import GPTConfig

    return GPTConfig(vocab=64, seq=8, dim=dim, layers=layers, heads=4)


def gpt_batches(steps: int, world: int, micro: int = 2, seed: int = 2) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, 64, (micro, 9), generator=g) for _ in range(world)] for _ in range(steps)]
