"""Functional fused AdamW over lists of tensors, with backend choice and argument checks.

Every backend computes Note [AdamW update] (csrc/adam.h); ``pyzero.reference`` is the readable
definition.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from pyzero import _native
from pyzero.kernels import triton_available
from pyzero.reference import fused_adamw_reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Maps ``backend`` ("auto" or a name in BACKENDS) to a concrete backend for ``device``.

    Raises ValueError for an unknown name or one that cannot run on ``device``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            if _native.cuda_built():
                return "cuda"
            return "triton" if triton_available() else "reference"
        if device.type == "cpu" and _native.C is not None:
            return "cpu"
        return "reference"
    if backend == "cpu":
        _native.require("backend='cpu'")
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
    elif backend == "cuda":
        if not _native.cuda_built():
            raise ValueError("backend='cuda' needs pyzero._C built with CUDA (see `pyzero info`)")
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
    elif backend == "triton":
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if not triton_available() or not (device.type == "cuda" or (device.type == "cpu" and interpreted)):
            raise ValueError(
                f"backend='triton' needs Triton and CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
                f"got tensors on {device}"
            )
    return backend


def _check(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    params_out: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> torch.device:
    n = len(params)
    lists = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "state_steps": state_steps}
    for name, lst in lists.items():
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} tensors but params has {n}")
    if params_out and len(params_out) != n:
        raise ValueError(f"params_out must be empty or hold {n} tensors, got {len(params_out)}")
    if n == 0:
        return torch.device("cpu")
    device = params[0].device
    for i, p in enumerate(params):
        named = [
            ("params", p),
            ("grads", grads[i]),
            ("exp_avgs", exp_avgs[i]),
            ("exp_avg_sqs", exp_avg_sqs[i]),
        ]
        if params_out:
            named.append(("params_out", params_out[i]))
        for name, t in named:
            if t.device != device:
                raise ValueError(
                    f"{name}[{i}] is on {t.device} but params[0] is on {device}; one call takes one device"
                )
            if t.is_sparse:
                raise ValueError(f"{name}[{i}] is sparse; fused AdamW needs dense tensors")
            if t.numel() != p.numel():
                raise ValueError(f"{name}[{i}] has {t.numel()} elements but params[{i}] has {p.numel()}")
            if not t.is_contiguous():
                raise ValueError(f"{name}[{i}] must be contiguous")
        for name, t in (("params", p), ("exp_avgs", exp_avgs[i]), ("exp_avg_sqs", exp_avg_sqs[i])):
            if t.dtype != torch.float32:
                raise ValueError(f"{name}[{i}] must be float32, got {t.dtype}")
        if grads[i].dtype not in GRAD_DTYPES:
            raise ValueError(f"grads[{i}] must be one of {GRAD_DTYPES}, got {grads[i].dtype}")
        if params_out and params_out[i].dtype not in OUT_DTYPES:
            raise ValueError(f"params_out[{i}] must be one of {OUT_DTYPES}, got {params_out[i].dtype}")
        s = state_steps[i]
        if s.dtype != torch.float32 or s.numel() != 1 or s.device != device:
            raise ValueError(f"state_steps[{i}] must be a one-element float32 tensor on {device}")
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None and (t.dtype != torch.float32 or t.numel() != 1 or t.device != device):
            raise ValueError(f"{name} must be a one-element float32 tensor on {device}")
    return device


def fused_adamw(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    adamw_mode: bool = True,
    maximize: bool = False,
    params_out: Sequence[Tensor] | None = None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    backend: str = "auto",
) -> None:
    """Fused AdamW (``adamw_mode=True``) or Adam with L2 penalty over lists of tensors, in place.

    params: fp32 master params (any shapes, contiguous; a flat buffer is a list of one tensor).
    grads: fp32/bf16/fp16, same numels. exp_avgs, exp_avg_sqs: fp32. state_steps: one-element fp32
    tensors, advanced by one. params_out: optional bf16/fp16/fp32 tensors that receive the updated
    params in the same pass. grad_scale: one-element fp32 multiplier applied to the grads (loss-scale
    unscale times clip coefficient). found_inf: one-element fp32 flag; nonzero makes the step a no-op
    (nothing written, steps not advanced). All tensors on one device. amsgrad is not supported.
    """
    params_out = list(params_out or [])
    device = _check(params, grads, exp_avgs, exp_avg_sqs, params_out, state_steps, grad_scale, found_inf)
    if not params:
        return
    run(
        resolve_backend(backend, device),
        list(params),
        list(grads),
        list(exp_avgs),
        list(exp_avg_sqs),
        params_out,
        list(state_steps),
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        adamw_mode=adamw_mode,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )


def run(
    backend: str,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    params_out: list[Tensor],
    state_steps: list[Tensor],
    **hyper,
) -> None:
    """Runs one concrete backend on already checked lists (the optimizers call this directly)."""
    if backend in ("cpu", "cuda"):
        torch.ops.pyzero.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, params_out, state_steps, **hyper)
    elif backend == "triton":
        from pyzero.kernels.adam_triton import fused_adamw_flat

        for i in range(len(params)):
            fused_adamw_flat(
                params[i],
                grads[i],
                exp_avgs[i],
                exp_avg_sqs[i],
                state_steps[i],
                param_out=params_out[i] if params_out else None,
                **hyper,
            )
    elif backend == "reference":
        fused_adamw_reference(params, grads, exp_avgs, exp_avg_sqs, params_out, state_steps, **hyper)
    else:
        raise ValueError(f"run() needs a concrete backend, got {backend!r}")
