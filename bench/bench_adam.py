"""How fast is pyzero's fused AdamW step against torch's AdamW (for-loop, foreach, fused) and
DeepSpeedCPUAdam, for fp32 and mixed precision (bf16 params + fp32 master), as a list of tensors
and as one flat buffer? Reports ms/step, GB/s at the contract's 28 bytes per parameter, and % of a
bandwidth measured in the same run (in-place add on CPU, device-to-device copy on GPU).

    python bench/bench_adam.py [--device cpu|cuda] [--params N] [--tensors K] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import pyzero
from pyzero import _native

# Contract bytes per parameter (DESIGN.md section 3): fp32 p/g/m/v read + p/m/v written; mixed:
# bf16 grad + fp32 master/m/v read, fp32 master/m/v + bf16 param written.
BYTES_PER_PARAM = 28
DEFAULT_PARAMS = {"cpu": 20_000_000, "cuda": 512_000_000}
DEFAULT_TENSORS = 40
DEFAULT_REPEATS = {"cpu": 15, "cuda": 30}
LR = 1e-3


def bandwidth_fn(device: str, n: int):
    """(fn, bytes moved, name) of the reference bandwidth over the fp32 step's footprint (16 B/param):
    in-place add of two 2n-element buffers on CPU (12 B/elem), D2D copy of 2n elements on GPU."""
    a = torch.rand(2 * n, device=device)
    b = torch.rand(2 * n, device=device)
    if device == "cuda":
        return (lambda: b.copy_(a)), 8 * 2 * n, "device-to-device copy"
    return (lambda: a.add_(b)), 12 * 2 * n, "in-place add"


def make_params(n: int, tensors: int, dtype: torch.dtype, device: str) -> list[torch.nn.Parameter]:
    sizes = [n // tensors] * tensors
    sizes[-1] += n - sum(sizes)
    params = []
    for s in sizes:
        p = torch.nn.Parameter(torch.randn(s, device=device).to(dtype))
        p.grad = (torch.randn(s, device=device) * 1e-2).to(dtype)
        params.append(p)
    return params


def torch_variants(params, mixed: bool):
    """torch's AdamW flavours; in mixed mode the composition fp32 master + AdamW + copy to bf16."""
    fns = {}
    for flavour, kw in (
        ("for-loop", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        if not mixed:
            opt = torch.optim.AdamW(params, lr=LR, **kw)
            fns[f"torch AdamW {flavour}"] = opt.step
            continue
        masters = [torch.nn.Parameter(p.detach().float()) for p in params]
        for m, p in zip(masters, params, strict=True):
            m.grad = p.grad.float()
        opt = torch.optim.AdamW(masters, lr=LR, **kw)
        lowp = list(params)
        grads = [p.grad for p in params]
        mgrads = [m.grad for m in masters]

        @torch.no_grad()
        def step(opt=opt, masters=masters, lowp=lowp, grads=grads, mgrads=mgrads):
            torch._foreach_copy_(mgrads, grads)
            opt.step()
            torch._foreach_copy_(lowp, masters)

        fns[f"torch master+AdamW {flavour}+copy"] = step
    return fns


def pyzero_variants(params, device: str, mixed: bool):
    backends = ["cpu"] if device == "cpu" else []
    if device == "cuda":
        if _native.cuda_built():
            backends.append("cuda")
        from pyzero.kernels import triton_available

        if triton_available():
            backends.append("triton")
    fns = {}
    for backend in backends:
        opt = pyzero.FusedAdamW(params, lr=LR, master_weights=mixed, backend=backend)
        fns[f"pyzero {backend}"] = opt.step
    return fns


def deepspeed_variant(params, device: str, mixed: bool):
    if device != "cpu" or mixed:
        return {}
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception:  # deepspeed not installed or its op cannot build here
        return {}
    opt = DeepSpeedCPUAdam(params, lr=LR, adamw_mode=True)
    return {"DeepSpeedCPUAdam": opt.step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    ap.add_argument("--params", type=int, default=None)
    ap.add_argument("--tensors", type=int, default=DEFAULT_TENSORS)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--only", default=None, help="comma-separated substrings: keep methods whose name has one"
    )
    args = ap.parse_args()
    dev = args.device
    n = args.params or DEFAULT_PARAMS[dev]
    repeats = args.repeats or DEFAULT_REPEATS[dev]
    torch.manual_seed(0)
    bw_fn, bw_bytes, bw_name = bandwidth_fn(dev, n)
    bws = []
    rows = []
    for mixed in (False, True):
        for layout, tensors in ((f"{args.tensors} tensors", args.tensors), ("flat buffer", 1)):
            dtype = torch.bfloat16 if mixed else torch.float32
            params = make_params(n, tensors, dtype, dev)
            fns = {"bandwidth": bw_fn}
            fns.update(torch_variants(params, mixed))
            fns.update(deepspeed_variant(params, dev, mixed))
            fns.update(pyzero_variants(params, dev, mixed))
            if args.only:
                keep = [k.strip() for k in args.only.split(",")]
                fns = {k: f for k, f in fns.items() if k == "bandwidth" or any(w in k for w in keep)}
            med = common.interleaved_medians(fns, dev, repeats)
            bw = bw_bytes / med.pop("bandwidth") / 1e9  # measured in the same interleaved run
            bws.append(bw)
            torch_best = min(v for k, v in med.items() if k.startswith("torch"))
            torch_fused = min(v for k, v in med.items() if k.startswith("torch") and "fused" in k)
            for name, t in med.items():
                gbs = BYTES_PER_PARAM * n / t / 1e9
                rows.append(
                    {
                        "precision": "mixed bf16" if mixed else "fp32",
                        "bandwidth_GBps": bw,
                        "layout": layout,
                        "method": name,
                        "ms/step": f"{t * 1e3:.2f}",
                        "GB/s": f"{gbs:.1f}",
                        "% bw": f"{100 * gbs / bw:.0f}",
                        "vs torch fused": f"{torch_fused / t:.2f}x",
                        "vs best torch": f"{torch_best / t:.2f}x",
                        "seconds": t,
                    }
                )
            del params, fns
            if dev == "cuda":
                torch.cuda.empty_cache()
    where = common.machine(dev)
    out = args.out or str(Path(__file__).resolve().parent / "out" / f"bench_adam_{dev}.json")
    common.write_json(
        out,
        {"machine": where, "params": n, "bandwidth_kind": bw_name, "rows": rows},
    )
    print(f"\nfused AdamW step, {n / 1e6:.0f}M params, {where}")
    print(
        f"reference bandwidth ({bw_name}, same footprint, interleaved): "
        + ", ".join(f"{b:.1f}" for b in bws)
        + f" GB/s per block; GB/s counts {BYTES_PER_PARAM} B/param"
    )
    common.print_table(
        rows, ["precision", "layout", "method", "ms/step", "GB/s", "% bw", "vs torch fused", "vs best torch"]
    )


if __name__ == "__main__":
    main()
