"""FusedAdam and FusedAdamW: torch.optim optimizers whose step is one fused kernel pass.

Drop-in for torch.optim.Adam / AdamW: same argument names and defaults, param groups, the same
state_dict format (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter, so checkpoints load both
ways), LR schedulers, ``zero_grad(set_to_none=True)``, and torch.amp.GradScaler (the scaler's
unscale and inf check are folded into the kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from pyzero import ops

LOW_PRECISION = (torch.bfloat16, torch.float16)
# State keys holding fp32 tensors shaped like the parameter.
FP32_STATE_KEYS = ("exp_avg", "exp_avg_sq", "master_param")


def _check_hyper(lr: Any, betas: Any, eps: float, weight_decay: float) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("lr as a Tensor must have one element")
    if not 0.0 <= float(lr):
        raise ValueError(f"Invalid learning rate: lr={float(lr)} (expected lr >= 0)")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if not 0.0 <= float(b) < 1.0:
            raise ValueError(f"Invalid beta parameter: betas[{i}]={float(b)} (expected 0 <= beta < 1)")
    if not eps > 0.0:
        raise ValueError(f"Invalid epsilon value: eps={eps} (expected eps > 0)")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: weight_decay={weight_decay} (expected >= 0)")


class _FusedAdamBase(torch.optim.Optimizer):
    """Shared implementation; subclasses fix the default weight-decay mode."""

    _decoupled_default: bool
    # torch.amp.GradScaler hands us its scale and inf flag instead of unscaling the grads itself.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        amsgrad: bool,
        *,
        maximize: bool,
        foreach: bool | None,
        capturable: bool,
        differentiable: bool,
        fused: bool | None,
        decoupled_weight_decay: bool,
        master_weights: bool,
        backend: str,
    ) -> None:
        _check_hyper(lr, betas, eps, weight_decay)
        if amsgrad:
            raise ValueError(
                f"amsgrad=True is not supported by {type(self).__name__}; use torch.optim for it"
            )
        if differentiable:
            raise ValueError(f"differentiable=True is not supported by {type(self).__name__}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        self.master_weights = master_weights
        self.backend = backend
        super().__init__(params, defaults)  # checks every group through add_param_group

    def _check_param(self, p: Tensor, where: str) -> None:
        name = type(self).__name__
        if p.is_complex():
            raise ValueError(f"{where} is complex ({p.dtype}); {name} supports real floating-point params")
        if not p.is_floating_point():
            raise ValueError(f"{where} has dtype {p.dtype}; {name} needs floating-point params")
        if p.dtype in LOW_PRECISION and not self.master_weights:
            raise ValueError(
                f"{where} is {p.dtype}; the fused kernel updates fp32 weights, so pass master_weights=True "
                "to keep fp32 master copies (the low-precision param is written in the same pass)"
            )
        if p.dtype not in (torch.float32, *LOW_PRECISION):
            raise ValueError(f"{where} has dtype {p.dtype}; {name} supports float32, bfloat16 and float16")
        if p.is_sparse:
            raise ValueError(f"{where} is sparse; {name} needs dense params")
        if not p.is_contiguous():
            raise ValueError(f"{where} must be contiguous")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyper(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        for pi, p in enumerate(group["params"]):
            self._check_param(p, f"param_groups[{len(self.param_groups) - 1}]['params'][{pi}]")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", self._decoupled_default)

    def _init_state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(
                p, dtype=torch.float32, memory_format=torch.contiguous_format
            )
        if p.dtype != torch.float32 and "master_param" not in state:
            state["master_param"] = p.detach().to(torch.float32, memory_format=torch.contiguous_format)
        return state

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], float] | None = None,
        *,
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
    ) -> float | None:
        """One fused update of every parameter that has a gradient.

        grad_scale: optional one-element fp32 tensor that multiplies every gradient (e.g.
        clip_coef / loss_scale). found_inf: optional one-element fp32 flag; nonzero skips the step
        (no state changes, steps not advanced). torch.amp.GradScaler sets both through
        attributes, which this method folds in.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        amp_scale = getattr(self, "grad_scale", None)
        if amp_scale is not None:
            inv = torch.reciprocal(amp_scale.to(torch.float32))
            grad_scale = inv if grad_scale is None else grad_scale * inv
        amp_found_inf = getattr(self, "found_inf", None)
        if amp_found_inf is not None:
            found_inf = amp_found_inf if found_inf is None else found_inf + amp_found_inf
        for gi, group in enumerate(self.param_groups):
            self._step_group(gi, group, grad_scale, found_inf)
        return loss

    def _step_group(
        self, gi: int, group: dict[str, Any], grad_scale: Tensor | None, found_inf: Tensor | None
    ):
        if group["amsgrad"]:
            raise ValueError(
                f"param_groups[{gi}] has amsgrad=True, which {type(self).__name__} does not support"
            )
        # One kernel call per (device, grad dtype, output dtype).
        buckets: dict[tuple, tuple[list[Tensor], ...]] = {}
        for pi, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    f"param_groups[{gi}]['params'][{pi}] has a sparse gradient; {type(self).__name__} "
                    "does not support sparse gradients"
                )
            state = self._init_state(p)
            master = state.get("master_param")
            key = (p.device, grad.dtype, p.dtype if master is not None else None)
            lists = buckets.setdefault(key, ([], [], [], [], [], []))
            lists[0].append(master if master is not None else p)
            lists[1].append(grad if grad.is_contiguous() else grad.contiguous())
            lists[2].append(state["exp_avg"])
            lists[3].append(state["exp_avg_sq"])
            if master is not None:
                lists[4].append(p)
            lists[5].append(state["step"])
        beta1, beta2 = group["betas"]
        hyper = dict(
            lr=float(group["lr"]),
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            adamw_mode=bool(group["decoupled_weight_decay"]),
            maximize=bool(group["maximize"]),
        )
        for (device, _, _), lists in buckets.items():
            backend = ops.resolve_backend(self.backend, device)
            ops.run(
                backend,
                *lists,
                grad_scale=None if grad_scale is None else grad_scale.to(device),
                found_inf=None if found_inf is None else found_inf.to(device),
                **hyper,
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict of this class or of torch.optim.Adam/AdamW (either direction works).

        Unlike torch's loader, moments stay fp32 (they are not cast to a bf16/fp16 param's dtype),
        and master weights are restored, or created from the params when the checkpoint has none.
        """
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            if pid not in saved_state:
                continue
            src = saved_state[pid]
            state = self.state[p]
            step = src["step"]
            state["step"] = torch.as_tensor(step, dtype=torch.float32).reshape(()).to(p.device, copy=True)
            for key in FP32_STATE_KEYS:
                if key in src:
                    t = src[key].to(device=p.device, dtype=torch.float32, copy=True)
                    state[key] = t.contiguous()
            if p.dtype == torch.float32:
                state.pop("master_param", None)
            elif "master_param" not in state:
                state["master_param"] = p.detach().to(torch.float32, memory_format=torch.contiguous_format)


class FusedAdamW(_FusedAdamBase):
    """AdamW (decoupled weight decay) with a fused step; drop-in for torch.optim.AdamW.

    Extra arguments: ``master_weights`` (for bf16/fp16 params: keep fp32 master weights in the
    state and write the low-precision param in the same kernel pass) and ``backend`` ("auto",
    "cpu", "cuda", "triton", "reference"). ``foreach``, ``fused`` and ``capturable`` are accepted
    for compatibility and ignored; ``amsgrad=True`` and ``differentiable=True`` are not supported.
    """

    _decoupled_default = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            master_weights=master_weights,
            backend=backend,
        )


class FusedAdam(_FusedAdamBase):
    """Adam (L2 penalty, or decoupled with ``decoupled_weight_decay=True``) with a fused step.

    Drop-in for torch.optim.Adam; extra arguments as for FusedAdamW.
    """

    _decoupled_default = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        master_weights: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
            master_weights=master_weights,
            backend=backend,
        )
