"""The main job, for now: train one small model with pyzero.FusedAdamW and with torch.optim.AdamW
from the same initial weights, and show that the losses agree while the optimizer step is faster.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from pyzero.info import format_info, info
from pyzero.optim import FusedAdamW

# Demo model: an MLP regressor on a fixed random teacher, about 4.2M parameters.
DEMO_WIDTH = 1024
DEMO_DEPTH = 4
DEMO_BATCH = 256
LOG_EVERY = 10


def _model(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def run_demo(steps: int = 60, device: str = "cpu") -> int:
    """Prints `pyzero info`, then a loss / step-time table for both optimizers. Returns 0 on parity."""
    print(format_info(info()))
    torch.manual_seed(0)
    dev = torch.device(device)
    teacher = _model(DEMO_WIDTH, 1).to(dev)
    base = _model(DEMO_WIDTH, DEMO_DEPTH).to(dev)
    nparams = sum(p.numel() for p in base.parameters())
    runs = {}
    for name, make in (
        ("torch.optim.AdamW(fused)", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
        ("pyzero.FusedAdamW", lambda ps: FusedAdamW(ps, lr=1e-3)),
    ):
        model = copy.deepcopy(base)
        opt = make(model.parameters())
        gen = torch.Generator(device="cpu").manual_seed(1)
        losses, step_times = [], []
        for _ in range(steps):
            x = torch.randn(DEMO_BATCH, DEMO_WIDTH, generator=gen).to(dev)
            with torch.no_grad():
                y = teacher(x)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - t0)
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        runs[name] = (losses, step_times)

    print(
        f"\nMLP {DEMO_DEPTH}x{DEMO_WIDTH} ({nparams / 1e6:.1f}M params), batch {DEMO_BATCH}, "
        f"{steps} steps on {dev}"
    )
    names = list(runs)
    print(f"{'step':>5}  " + "  ".join(f"{n:>26}" for n in names))
    for s in range(0, steps, LOG_EVERY):
        print(f"{s:>5}  " + "  ".join(f"{runs[n][0][s]:>26.6f}" for n in names))
    med = {n: sorted(runs[n][1][2:])[len(runs[n][1][2:]) // 2] * 1e3 for n in names}
    print(f"{'ms/opt.step (median)':>20}  " + "  ".join(f"{med[n]:>10.3f}" for n in names))
    a, b = runs[names[0]][0][-1], runs[names[1]][0][-1]
    rel = abs(a - b) / max(abs(a), 1e-12)
    ok = rel < 1e-3
    print(f"final loss {b:.6f} vs {a:.6f} (rel diff {rel:.1e}): {'OK' if ok else 'MISMATCH'}")
    print(f"optimizer step speed vs torch fused AdamW: {med[names[0]] / med[names[1]]:.2f}x")
    return 0 if ok else 1
