"""FusedShardedAdam: ZeRO stage 1 (optimizer state partitioned), stage 2 (+ gradients) and
stage 3 (+ parameters).

Parameters live in flat buffers (Note [Flat layout] in layout.py); model parameters are views into
them. Gradients are reduce-scattered bucket by bucket from post-accumulate-grad hooks while
backward runs; one fused AdamW pass updates each rank's partition; in stages 1-2 updated parameters
come back by bucketed all-gather straight into the flat buffers, in stage 3 each unit is gathered
when the next forward needs it (stage3.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from pyzero import ops
from pyzero.optim.adam import _check_hyper
from pyzero.zero import memory
from pyzero.zero.comm import Comm
from pyzero.zero.layout import FlatLayout, make_layout
from pyzero.zero.loss_scaler import DynamicLossScaler
from pyzero.zero.param_use import ParamUseMode
from pyzero.zero.stage3 import Stage3Engine, is_managed
from pyzero.zero.units import UnitPolicy
from pyzero.zero.zero_init import full_numel, full_shape

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Added to the global gradient norm before dividing, as torch.nn.utils.clip_grad_norm_ does.
CLIP_EPS = 1e-6


class _FlatGroup:
    """One flat buffer: the params of one (param group, dtype) (stage 3: of one unit) and their shards.

    Stages 1-2 keep the full flat buffer (`flat_param`; model parameters are views into it). Stage 3
    keeps only this rank's `partition`; `full` is a buffer whose storage is allocated while the unit
    is gathered and resized to zero bytes when it is freed (Note [Stage-3 storage] in stage3.py).
    group_index None marks a stage-3 group of frozen parameters: stored and gathered, never updated.
    """

    def __init__(
        self,
        opt: FusedShardedAdam,
        group_index: int | None,
        params: list[nn.Parameter],
        stage3: tuple[FlatLayout, Tensor] | None = None,
    ) -> None:
        comm, stage = opt.comm, opt.stage
        self.group_index = group_index
        self.params = params
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.reduce_dtype = opt.reduce_dtype or memory.default_reduce_dtype(self.dtype)
        self.shard_dtype = memory.grad_shard_dtype(stage, self.reduce_dtype, opt.accumulation_steps)
        # stage 3: the layout and the full values (every rank's the same), assembled by the engine.
        values = None
        if stage3 is not None:
            self.layout, values = stage3
        else:
            self.layout = make_layout(
                [p.numel() for p in params],
                comm.world_size,
                memory.bucket_elems(opt.bucket_cap_mb, self.reduce_dtype),
            )
        lay, rank, dev = self.layout, comm.rank, self.device
        shard_ranges = [lay.shard_range(b, rank) for b in range(lay.num_buckets)]
        if values is None:
            # Model parameters become views into one flat buffer (rank 0's values, broadcast).
            self.flat_param = torch.zeros(lay.flat_numel, dtype=self.dtype, device=dev)
            with torch.no_grad():
                for p, off in zip(params, lay.offsets, strict=True):
                    self.flat_param[off : off + p.numel()].copy_(p.detach().reshape(-1))
                    p.data = self.flat_param[off : off + p.numel()].view_as(p)
            comm.broadcast(self.flat_param, 0)
            self.partition = None
            self.full = None
            self.param_shards = [self.flat_param[s:e] for s, e in shard_ranges]
        else:
            self.flat_param = None
            self.partition = torch.cat([values[s:e] for s, e in shard_ranges])
            self.param_shards = self._split(self.partition)
            self.full = torch.empty(lay.flat_numel, dtype=self.dtype, device=dev)
            self.full.untyped_storage().resize_(0)
        self.trainable = group_index is not None
        if not self.trainable:
            self.master = self.flat_grad = self.grad_shard = None
            self.exp_avg = self.exp_avg_sq = None
            self.bucket_bufs: list[Tensor | None] = [None] * lay.num_buckets
            return
        p_numel = lay.partition_numel
        # fp32 master weights: the param shards themselves for fp32 params, a separate buffer otherwise.
        if self.dtype == memory.MASTER_DTYPE:
            self.master = None
            self.master_shards = self.param_shards
        else:
            self.master = torch.cat([s.to(memory.MASTER_DTYPE) for s in self.param_shards])
            self.master_shards = self._split(self.master)
        self.exp_avg = torch.zeros(p_numel, dtype=torch.float32, device=dev)
        self.exp_avg_sq = torch.zeros(p_numel, dtype=torch.float32, device=dev)
        self.steps = [torch.zeros((), dtype=torch.float32, device=dev) for _ in range(lay.num_buckets)]
        # Gradients: stage 1 keeps the full flat gradient (reduce-scattered in place: a rank's shards
        # are the matching ranges of it); stages 2-3 keep only the shards, buckets are transient.
        if stage == 1:
            self.flat_grad = torch.zeros(lay.flat_numel, dtype=self.reduce_dtype, device=dev)
            self.grad_shard = None
            self.grad_shards = [self.flat_grad[s:e] for s, e in shard_ranges]
        else:
            self.flat_grad = None
            self.grad_shard = torch.zeros(p_numel, dtype=self.shard_dtype, device=dev)
            self.grad_shards = self._split(self.grad_shard)
        self.bucket_bufs = [None] * lay.num_buckets
        self.pieces = [lay.param_pieces(i) for i in range(len(params))]
        self.params_per_bucket = [0] * lay.num_buckets
        for pieces in self.pieces:
            for b, _, _ in pieces:
                self.params_per_bucket[b] += 1
        self.remaining = list(self.params_per_bucket)
        self.launched = [False] * lay.num_buckets  # reduction launched in the current backward
        self.shard_filled = [False] * lay.num_buckets  # stage 2: shard already holds gradient this cycle

    def full_bytes(self) -> int:
        """Bytes of the whole flat buffer in the parameter dtype (what a stage-3 gather allocates)."""
        return self.layout.flat_numel * torch.empty((), dtype=self.dtype).element_size()

    def _split(self, partition: Tensor) -> list[Tensor]:
        lay = self.layout
        return [
            partition[lay.partition_offset(b) : lay.partition_offset(b) + lay.shard_numel(b)]
            for b in range(lay.num_buckets)
        ]

    def bucket_grad(self, b: int) -> Tensor:
        """Gradient storage of bucket b (stage 1: a range of flat_grad; stage 2: allocated on demand)."""
        s, e = self.layout.bucket_bounds[b]
        if self.flat_grad is not None:
            return self.flat_grad[s:e]
        if self.bucket_bufs[b] is None:
            self.bucket_bufs[b] = torch.zeros(e - s, dtype=self.reduce_dtype, device=self.device)
        return self.bucket_bufs[b]


class FusedShardedAdam(torch.optim.Optimizer):
    """AdamW with ZeRO stage 1, 2 or 3 sharding over a torch.distributed process group.

    Each rank runs the same model on its own micro-batch; the optimizer owns gradient reduction (no
    DDP wrapper): gradients are averaged over ranks by bucketed reduce-scatter launched from
    post-accumulate-grad hooks, each rank updates its 1/N partition with one fused AdamW pass, and
    updated parameters come back by bucketed all-gather. After step() every rank holds identical
    parameters.

    Args:
        model_or_params: an nn.Module (its trainable parameters, one group) or an iterable of params /
            param-group dicts (torch style, per-group lr / weight_decay / betas / eps).
        stage: 1 (optimizer state sharded), 2 (+ gradients) or 3 (+ parameters: needs the nn.Module;
            each rank stores 1/N of every unit and gathers units around their forward and backward,
            see stage3.py).
        process_group: group to shard over (default: the default group; none initialized = 1 rank).
        bucket_cap_mb: gradient bucket size in MiB of the reduce dtype.
        overlap_comm: launch reductions asynchronously during backward (else at step()).
        overlap_param_gather: return from step() while the updated parameters are still being
            all-gathered; each module waits for its own parameters in a forward pre-hook (needs the
            nn.Module). Read parameters outside forward only after `wait_for_params()`.
        reduce_dtype: dtype gradients are reduced in (default fp32 for bf16 params, else the param dtype).
        max_grad_norm: clip the global gradient norm (over all shards) to this value.
        loss_scale: "dynamic" (fp16 dynamic loss scaling), a float (static scale) or None.
        accumulation_steps: step() applies the update every k-th call; stage 1 communicates only in the
            k-th backward, stage 2 reduce-scatters every backward into an fp32 shard accumulator.
        adamw_mode: decoupled weight decay (AdamW, default) or L2 (Adam).
        backend: fused kernel backend, as for pyzero.FusedAdamW.
        param_groups: with an nn.Module, torch-style param groups over its parameters (else one group).
        prefetch: stage 3: units gathered ahead of the one computing, in the recorded order (1, like
            FSDP2: measured on 2 CPU ranks, deeper prefetch only takes cores from compute).
        reshard_after_forward: stage 3: free gathered units after their forward (gathered again for
            backward: 1.5x stage 2's traffic) or keep them until their backward (stage 2's traffic).
        units: stage 3 units of sharding (Note [Stage-3 units]): None (each module owning parameters),
            a sequence of module classes, or a predicate fn(module) -> bool.

    `with opt.no_sync():` accumulates gradients with no communication at all until the next
    backward outside it (stage 2 then keeps full local gradients of the buckets meanwhile).
    """

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        stage: int = 2,
        process_group: Any = None,
        bucket_cap_mb: float = 25,
        overlap_comm: bool = True,
        overlap_param_gather: bool = False,
        master_dtype: torch.dtype = torch.float32,
        reduce_dtype: torch.dtype | None = None,
        max_grad_norm: float | None = None,
        loss_scale: str | float | None = None,
        accumulation_steps: int = 1,
        adamw_mode: bool = True,
        backend: str = "auto",
        param_groups: Iterable[dict[str, Any]] | None = None,
        prefetch: int = 1,
        reshard_after_forward: bool = True,
        units: UnitPolicy = None,
    ) -> None:
        if stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
        if master_dtype != torch.float32:
            raise ValueError(
                f"master_dtype must be torch.float32 (the fused kernel's contract), got {master_dtype}"
            )
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        if reduce_dtype is not None and reduce_dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"reduce_dtype must be one of {SUPPORTED_DTYPES}, got {reduce_dtype}")
        _check_hyper(lr, betas, eps, weight_decay)
        module = model_or_params if isinstance(model_or_params, nn.Module) else None
        if overlap_param_gather and module is None:
            raise ValueError(
                "overlap_param_gather=True needs the nn.Module (its forward pre-hooks wait for params)"
            )
        if stage == 3 and module is None:
            raise ValueError(
                "stage 3 needs the nn.Module itself as model_or_params (it gathers parameters around each "
                "unit's forward and backward), got an iterable of parameters; per-group settings go in "
                "param_groups="
            )
        if stage == 3 and module is not None and is_managed(module):
            raise ValueError(f"{type(module).__name__} already has a stage-3 optimizer")
        if stage == 3 and overlap_param_gather:
            raise ValueError(
                "overlap_param_gather is for stages 1-2; stage 3 gathers parameters in forward (prefetch=)"
            )
        if param_groups is not None and module is None:
            raise ValueError("param_groups= goes with an nn.Module; give the groups as model_or_params")
        if units is not None and stage != 3:
            raise ValueError(f"units= chooses stage-3 units of sharding; this optimizer has stage {stage}")
        if param_groups is not None:
            params = list(param_groups)
        elif module is not None:
            params = (
                [p for p in module.parameters() if p.requires_grad] if stage == 3 else module.parameters()
            )
        else:
            params = model_or_params
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.stage = stage
        self.comm = Comm(process_group)
        self.bucket_cap_mb = bucket_cap_mb
        self.overlap_comm = overlap_comm
        self.reduce_dtype = reduce_dtype
        self.max_grad_norm = max_grad_norm
        self.accumulation_steps = accumulation_steps
        self.adamw_mode = adamw_mode
        self.backend = backend
        if loss_scale == "dynamic":
            self.scaler: DynamicLossScaler | None = DynamicLossScaler()
            self.static_scale = None
        elif loss_scale is None or isinstance(loss_scale, (int, float)):
            self.scaler = None
            self.static_scale = float(loss_scale) if loss_scale is not None else None
        else:
            raise ValueError(f"loss_scale must be 'dynamic', a number or None, got {loss_scale!r}")
        self.overlap_param_gather = overlap_param_gather
        self._gathers: dict[tuple[int, int], Any] = {}  # (flat group, bucket) -> all-gather in flight
        self.stage3: Stage3Engine | None = None
        self._stage3_args = (module, units, prefetch, reshard_after_forward)
        self._build_groups()
        if overlap_param_gather:
            self._register_prefetch_waits(module)
        self._micro = 0  # step() calls since the last update
        self._backward_seen = False
        self._callback_queued = False
        self._no_sync = False
        self._works: list[tuple[_FlatGroup, int, Any, Tensor | None, bool]] = []
        self._unlaunched = False  # a backward ended without launching its reductions (no_sync)
        self.last_step_skipped = False

    # ----------------------------------------------------------------------------------- set-up
    def _build_groups(self) -> None:
        trainable = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if not trainable:
            raise ValueError("FusedShardedAdam got no trainable parameters (all have requires_grad=False)")
        devices = {p.device for p in trainable}
        if len(devices) > 1:
            raise ValueError(f"all parameters must be on one device, got {sorted(str(d) for d in devices)}")
        total = sum(full_numel(p) for p in trainable)
        if total < self.comm.world_size:
            raise ValueError(
                f"world size {self.comm.world_size} is larger than the number of trainable parameter "
                f"elements ({total}); use fewer ranks"
            )
        need = self.comm.device_for_collectives()
        if need is not None and next(iter(devices)) != need:
            raise ValueError(
                f"the {self.comm.backend} process group needs parameters on {need}, got {devices}"
            )
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.dtype not in SUPPORTED_DTYPES:
                    raise ValueError(
                        f"param_groups[{gi}]['params'][{pi}] has dtype {p.dtype}; "
                        f"supported: {SUPPORTED_DTYPES}"
                    )
        # Every rank must build the same layout: compared before any collective that depends on it.
        module, units, prefetch, reshard = self._stage3_args
        mine = [
            (gi, str(p.dtype), tuple(full_shape(p)), p.requires_grad)
            for gi, group in enumerate(self.param_groups)
            for p in group["params"]
        ]
        if module is not None and self.stage == 3:
            mine.append(
                ("frozen", [tuple(full_shape(p)) for p in module.parameters() if not p.requires_grad])
            )
        mine.append(("config", self.stage, self.accumulation_steps, self.bucket_cap_mb, prefetch, reshard))
        everyone = self.comm.all_gather_object(mine)
        for r, theirs in enumerate(everyone):
            if theirs != mine:
                raise RuntimeError(
                    f"FusedShardedAdam: rank {r} built a different layout or configuration than rank "
                    f"{self.comm.rank} (different model, param groups, stage, bucket size or world size in "
                    "the process group); every rank must construct the optimizer identically"
                )
        self.groups: list[_FlatGroup] = []
        if self.stage == 3:
            self.stage3 = Stage3Engine(self, module, units, prefetch, reshard)
        else:
            for gi, group in enumerate(self.param_groups):
                by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
                for p in reversed(group["params"]):  # gradients are ready roughly in reverse order
                    if p.requires_grad:
                        by_dtype.setdefault(p.dtype, []).append(p)
                for params in by_dtype.values():
                    self.groups.append(_FlatGroup(self, gi, params))
        self._hooks = []
        for g in self.groups:
            for i, p in enumerate(g.params):
                self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(g, i)))

    # ------------------------------------------------------------------------------- backward
    def _sync_this_backward(self) -> bool:
        if self._no_sync:
            return False
        if self.stage >= 2:
            return True  # stage 2 reduces every backward into its shard accumulator
        return (self._micro + 1) % self.accumulation_steps == 0

    def _make_hook(self, g: _FlatGroup, index: int):
        def hook(p: Tensor) -> None:
            grad = p.grad
            if grad is None:
                return
            p.grad = None
            self._receive(g, index, grad)
            if self.stage3 is not None:
                self.stage3.on_gradient(p)

        return hook

    def _receive(self, g: _FlatGroup, index: int, grad: Tensor) -> None:
        self._backward_seen = True
        self._queue_end_of_backward()
        flat = grad.detach().reshape(-1)
        off = g.layout.offsets[index]
        sync = self._sync_this_backward()
        for b, s, e in g.pieces[index]:
            if g.launched[b]:
                raise RuntimeError(
                    f"a gradient for a {tuple(g.params[index].shape)} parameter arrived after its bucket "
                    "was reduced in this backward (a parameter used after its gradient was final?)"
                )
            bs = g.layout.bucket_bounds[b][0]
            g.bucket_grad(b)[s - bs : e - bs].add_(flat[s - off : e - off])
            g.remaining[b] -= 1
        if sync and self.overlap_comm:
            self._launch_ready(g)
        self._release_finished()

    def _queue_end_of_backward(self) -> None:
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _launch_ready(self, g: _FlatGroup, force: bool = False) -> None:
        """Launches, in bucket order (the same on every rank), buckets whose gradients are complete."""
        for b in range(g.layout.num_buckets):
            if g.launched[b]:
                continue
            if g.remaining[b] > 0 and not force:
                break
            self._launch(g, b)

    def _launch(self, g: _FlatGroup, b: int) -> None:
        g.launched[b] = True
        inp = g.bucket_grad(b)
        temp = None
        accumulate = False
        if self.stage == 1:
            out = g.grad_shards[b]  # in place: this rank's chunk of its own bucket
        else:
            accumulate = g.shard_filled[b]
            if accumulate or g.shard_dtype != g.reduce_dtype:
                temp = torch.empty(g.layout.shard_numel(b), dtype=g.reduce_dtype, device=g.device)
            out = temp if temp is not None else g.grad_shards[b]
            g.shard_filled[b] = True
        work = self.comm.reduce_scatter(out, inp, async_op=True)
        self._works.append((g, b, work, temp, accumulate))

    def _end_of_backward(self) -> None:
        """Runs once at the end of every backward pass (queued from the first gradient hook)."""
        self._callback_queued = False
        sync = self._sync_this_backward()
        for g in self.groups:
            if sync:
                self._launch_ready(g, force=True)  # buckets with unused params: their grads are zero
                g.launched = [False] * g.layout.num_buckets
            g.remaining = list(g.params_per_bucket)
        self._unlaunched = not sync
        self._release_finished()
        if self.stage3 is not None:
            self.stage3.end_backward()

    def _release_finished(self) -> None:
        """Completes finished reductions in order (frees stage-2 bucket buffers early)."""
        while self._works and self._works[0][2].is_completed():
            self._complete(*self._works.pop(0))

    def _complete(self, g: _FlatGroup, b: int, work: Any, temp: Tensor | None, accumulate: bool) -> None:
        work.wait()
        if temp is not None:
            if accumulate:
                g.grad_shards[b].add_(temp)
            else:
                g.grad_shards[b].copy_(temp)
        if self.stage >= 2:
            g.bucket_bufs[b] = None

    def _finish_reductions(self) -> None:
        """Launches what a no_sync backward left behind, then waits for every reduction."""
        if self._unlaunched:
            for g in self.groups:
                self._launch_ready(g, force=True)
                g.launched = [False] * g.layout.num_buckets
            self._unlaunched = False
        while self._works:
            self._complete(*self._works.pop(0))

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate gradients locally with no communication."""
        prev = self._no_sync
        self._no_sync = True
        try:
            yield
        finally:
            self._no_sync = prev

    def backward(self, loss: Tensor) -> None:
        """loss.backward() with the current loss scale applied (fp16 loss scaling)."""
        scale = self.loss_scale
        (loss * scale if scale != 1.0 else loss).backward()

    @property
    def loss_scale(self) -> float:
        if self.scaler is not None:
            return self.scaler.scale
        return self.static_scale or 1.0

    # ----------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None) -> float | None:
        """Applies the update every `accumulation_steps` calls; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._backward_seen:
            raise RuntimeError(
                "FusedShardedAdam.step() was called without a backward pass since the last step"
            )
        self._micro += 1
        if self._micro % self.accumulation_steps != 0:
            if self.stage >= 2:
                self._finish_reductions()
            return loss
        self._micro = 0
        self._backward_seen = False
        self._finish_reductions()
        if self.stage3 is not None:
            self.stage3.release_all()  # a gathered copy would go stale with the update
        world, scale = self.comm.world_size, self.loss_scale
        grad_scale = 1.0 / (world * scale)
        self.last_step_skipped = False
        if self.max_grad_norm is not None or self.scaler is not None:
            sumsq = torch.zeros(1, dtype=torch.float64, device=self.groups[0].device)
            for g in self.groups:
                for shard in g.grad_shards:
                    sumsq += torch.linalg.vector_norm(shard, dtype=torch.float32).double() ** 2
            self.comm.all_reduce(sumsq, "sum")
            total = float(sumsq)
            overflow = not math.isfinite(total)
            if self.scaler is not None:
                self.scaler.update(overflow)
            if overflow:
                self.last_step_skipped = True
                self._clear_grads()
                return loss
            if self.max_grad_norm is not None:
                norm = math.sqrt(total) * grad_scale
                self.last_grad_norm = norm
                grad_scale *= min(1.0, self.max_grad_norm / (norm + CLIP_EPS))
        for g in self.groups:
            group = self.param_groups[g.group_index]
            beta1, beta2 = group["betas"]
            out = g.param_shards if g.master is not None else []
            gs = torch.full((), grad_scale, dtype=torch.float32, device=g.device)
            ops.run(
                ops.resolve_backend(self.backend, g.device),
                g.master_shards,
                g.grad_shards,
                g._split(g.exp_avg),
                g._split(g.exp_avg_sq),
                out,
                g.steps,
                lr=float(group["lr"]),
                beta1=float(beta1),
                beta2=float(beta2),
                eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]),
                adamw_mode=self.adamw_mode,
                maximize=False,
                grad_scale=gs,
            )
        # Stage 3 gathers each unit when the next forward needs it. Stages 1-2: buckets go out
        # last-first (the last bucket holds the first layers' parameters: reverse packing).
        for gi, g in enumerate(self.groups if self.stage3 is None else []):
            for b in reversed(range(g.layout.num_buckets)):
                s, e = g.layout.bucket_bounds[b]
                self._gathers[(gi, b)] = self.comm.all_gather(
                    g.flat_param[s:e], g.param_shards[b], async_op=True
                )
        if not self.overlap_param_gather:
            self.wait_for_params()
        self._clear_grads()
        return loss

    def wait_for_params(self, keys: Iterable[tuple[int, int]] | None = None) -> None:
        """Waits for the all-gathers of updated parameters still in flight (all, or the given
        (flat group, bucket) keys). Only needed with overlap_param_gather=True outside forward."""
        for key in list(self._gathers) if keys is None else keys:
            work = self._gathers.pop(key, None)
            if work is not None:
                work.wait()

    def _register_prefetch_waits(self, module: nn.Module) -> None:
        """Forward pre-hooks: each module waits only for the buckets holding its own parameters. The
        first forward also watches parameter reads (ParamUseMode): a parameter read outside its
        module's forward (a parent reading `self.child.weight`) adds its buckets to the innermost
        running module's waits."""
        where: dict[int, list[tuple[int, int]]] = {}
        for gi, g in enumerate(self.groups):
            for i, p in enumerate(g.params):
                where.setdefault(id(p), []).extend((gi, b) for b, _, _ in g.pieces[i])
        waits: dict[nn.Module, list[tuple[int, int]]] = {}
        for m in module.modules():
            keys = sorted({k for p in m.parameters(recurse=False) for k in where.get(id(p), [])})
            if keys or m is module:
                waits[m] = keys
        stack: list[nn.Module] = []
        recording: list[ParamUseMode] = []

        def on_use(p: nn.Parameter) -> None:
            waited = {k for m in stack for k in waits[m]}
            missing = [k for k in where.get(id(p), []) if k not in waited]
            if missing and stack:
                waits[stack[-1]].extend(missing)
                self.wait_for_params(missing)

        def pre(m: nn.Module, _args: Any) -> None:
            if m is module and not stack and self._record_param_uses:
                recording.append(ParamUseMode(on_use))
                recording[-1].__enter__()
            stack.append(m)
            self.wait_for_params(waits[m])

        def post(m: nn.Module, _args: Any, _out: Any) -> None:
            if stack and stack[-1] is m:
                stack.pop()
            if m is module and not stack and recording:
                recording.pop().__exit__(None, None, None)
                self._record_param_uses = False

        self._record_param_uses = True
        for m in waits:
            self._hooks.append(m.register_forward_pre_hook(pre))
            self._hooks.append(m.register_forward_hook(post, always_call=True))

    def _clear_grads(self) -> None:
        for g in self.groups:
            if g.flat_grad is not None:
                g.flat_grad.zero_()
            g.shard_filled = [False] * g.layout.num_buckets
            g.bucket_bufs = [None] * g.layout.num_buckets

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Parameters never hold .grad between steps (gradients live in the optimizer's buffers)."""
        for g in self.groups:
            for p in g.params:
                p.grad = None

    # ------------------------------------------------------------------------------ reporting
    def memory_report(self) -> dict[str, int]:
        """Bytes this rank holds per category (see pyzero.zero.memory), measured from the tensors.

        Stage 3 adds gathered_peak (most bytes of gathered units held at once so far) and working_set
        (the bound the schedule keeps that under, as pyzero.plan predicts it)."""

        def nbytes(t: Tensor | None) -> int:
            return 0 if t is None else t.numel() * t.element_size()

        parts = []
        frozen = [] if self.stage3 is None else self.stage3.frozen_groups
        for g in frozen:
            parts.append({k: 0 for k in memory.CATEGORIES} | {"params": nbytes(g.partition)})
        for g in self.groups:
            parts.append(
                {
                    "params": nbytes(g.flat_param) + nbytes(g.partition),
                    "grads": nbytes(g.flat_grad) + nbytes(g.grad_shard),
                    "master": nbytes(g.master),
                    "exp_avg": nbytes(g.exp_avg),
                    "exp_avg_sq": nbytes(g.exp_avg_sq),
                    "buffers": sum(nbytes(t) for t in g.bucket_bufs),
                }
            )
        out = memory.total(parts)
        if self.stage3 is not None:
            out["gathered_peak"] = self.stage3.peak_gathered_bytes
            out["working_set"] = self.stage3.working_set_bound()
        return out

    # ------------------------------------------------------------------------------- stage 3
    def _engine(self) -> Stage3Engine:
        if self.stage3 is None:
            raise ValueError(
                f"this is a stage-{self.stage} optimizer; parameters are only sharded in stage 3"
            )
        return self.stage3

    def gathered_parameters(
        self, params: Iterable[Tensor] | None = None, modifier_rank: int | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Stage 3: full parameters (all, or the units holding `params`) inside the context; every rank
        must enter it. With modifier_rank=r, rank r's in-place changes are written back to every rank's
        partition on exit (e.g. a custom re-initialisation); without it, a change raises."""
        return self._engine().gathered(params, modifier_rank)

    def register_external_parameter(self, module: nn.Module, param: nn.Parameter) -> None:
        """Stage 3: `module`'s forward uses `param`, which belongs to another unit (a tied weight read by
        a parent, say). Uses inside the model's forward are also detected on the first step."""
        self._engine().register_external_parameter(module, param)

    def comm_report(self) -> dict[str, float]:
        """Bytes per collective kind since the last reset (full tensors) and sent per rank (ring)."""
        out: dict[str, float] = {f"{k}_bytes": float(v) for k, v in self.comm.bytes.items()}
        out.update({f"{k}_sent_per_rank": v for k, v in self.comm.sent_bytes().items()})
        return out

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """This rank's shard of the optimizer state (load it at the same world size and stage)."""
        self.wait_for_params()
        return {
            "format": "pyzero.FusedShardedAdam/1",
            "stage": self.stage,
            "world_size": self.comm.world_size,
            "rank": self.comm.rank,
            "param_groups": [{k: v for k, v in grp.items() if k != "params"} for grp in self.param_groups],
            "groups": [
                {
                    "partition_numel": g.layout.partition_numel,
                    "step": float(g.steps[0]),
                    "master": None if g.master is None else g.master.clone(),
                    "exp_avg": g.exp_avg.clone(),
                    "exp_avg_sq": g.exp_avg_sq.clone(),
                }
                for g in self.groups
            ],
            "loss_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_for_params()
        for key, mine in (("world_size", self.comm.world_size), ("stage", self.stage)):
            if state_dict.get(key) != mine:
                raise ValueError(
                    f"state_dict was saved with {key}={state_dict.get(key)} but this optimizer has "
                    f"{key}={mine}; "
                    "resharding loads go through pyzero checkpoints"
                )
        saved = state_dict["groups"]
        if len(saved) != len(self.groups):
            raise ValueError(
                f"state_dict has {len(saved)} flat groups, this optimizer has {len(self.groups)}"
            )
        for i, (g, s) in enumerate(zip(self.groups, saved, strict=True)):
            if s["partition_numel"] != g.layout.partition_numel:
                raise ValueError(
                    f"flat group {i}: saved partition has {s['partition_numel']} elements, this one "
                    f"{g.layout.partition_numel}"
                )
        for g, s in zip(self.groups, saved, strict=True):
            for t in g.steps:
                t.fill_(s["step"])
            g.exp_avg.copy_(s["exp_avg"])
            g.exp_avg_sq.copy_(s["exp_avg_sq"])
            if g.master is not None:
                g.master.copy_(s["master"] if s["master"] is not None else torch.cat(g.param_shards).float())
        for grp, saved_grp in zip(self.param_groups, state_dict["param_groups"], strict=True):
            grp.update(saved_grp)
        if self.scaler is not None and state_dict.get("loss_scaler") is not None:
            self.scaler.load_state_dict(state_dict["loss_scaler"])
