"""The ZeRO-3 engine behind FusedShardedAdam(stage=3): partitioned parameters gathered on demand.

Note [Stage-3 storage]
Each unit (Note [Stage-3 units]) has one flat group per (param group, dtype); a rank keeps only its
partition of it. Gathering a unit resizes the storage of the group's `full` tensor back to the full
size, all-gathers the partitions into it bucket by bucket, and points every parameter's `.data` at
its view of `full`. Freeing resizes that storage to zero bytes and points `.data` at an empty
placeholder. Autograd may have saved views of `full` in forward; they stay valid because the same
storage is refilled before the backward that reads them (the pre-backward hook gathers the unit).
The truth is the partition: a gathered parameter modified in place, or whose `.data` was replaced,
is detected when it is freed (version counter, data pointer) and raises, because the change would
be lost.

Note [Stage-3 schedule]
- Forward: a module's pre-hook gathers the units it needs (Note [Stage-3 units]); its post-hook frees
  them unless they are used again within the next `prefetch` entries of the recorded forward order
  (a module called twice in a row keeps its unit), or reshard_after_forward=False with grad enabled.
  With grad enabled, the units the root module itself needs, and the units among the first `prefetch`
  (others) the recorded backward asks for that are still gathered when forward ends, stay gathered
  into backward (backward starts with them; FSDP2 keeps its root the same way). One step all-gathers
  2x the flat buffers minus those units.
  The post-hook also puts a hook on the outputs' gradients: the pre-backward point of that call.
- Backward: the pre-backward point gathers the units again; a unit is freed as soon as every
  trainable parameter of it has received its gradient (its gradient buckets are reduce-scattered by
  the optimizer at the same moment); units holding frozen parameters wait for the end of backward.
  Modules re-run inside backward (activation checkpointing) gather and keep their units the same way.
- Order: every gather request is appended to the current pass's sequence; at the end of a forward or
  backward, a sequence that differs from the recorded one replaces it. While a pass follows the
  recorded order, each request also starts gathers of the next `prefetch` units (asynchronously, in
  the same order on every rank); after a deviation, that pass prefetches nothing more.
- During a recording forward (the first, and any after the order changed) a TorchFunctionMode watches
  for parameters of units no active module gathered (a parameter used outside its module's forward):
  such a unit is gathered on the spot and becomes a need of the innermost hooked module.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from pyzero.zero.layout import make_layout
from pyzero.zero.memory import bucket_elems, default_reduce_dtype
from pyzero.zero.param_use import ParamUseMode
from pyzero.zero.units import UnitPlan, UnitPolicy, pinned_units, plan_units, working_set
from pyzero.zero.zero_init import SHARD_ATTR, shard_of

if TYPE_CHECKING:
    from pyzero.zero.sharded_adam import FusedShardedAdam, _FlatGroup

# Models under a stage-3 engine (for pyzero.full_state_dict and gathered_parameters).
_ENGINES: weakref.WeakKeyDictionary[nn.Module, Stage3Engine] = weakref.WeakKeyDictionary()

FREE, GATHERING, READY = "free", "gathering", "ready"


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def is_managed(model: nn.Module) -> bool:
    return model in _ENGINES


def engine_of(model: nn.Module) -> Stage3Engine:
    engine = _ENGINES.get(model)
    if engine is None:
        raise ValueError(
            f"{type(model).__name__} is not managed by a FusedShardedAdam(stage=3) optimizer "
            "(pass the model itself, the module given to the optimizer)"
        )
    return engine


class _Unit:
    """Runtime state of one unit (see Note [Stage-3 storage])."""

    def __init__(self, index: int, name: str, groups: list[_FlatGroup], names: dict[int, str]) -> None:
        self.index = index
        self.name = name
        self.groups = groups
        self.names = names  # id(param) -> qualified name
        self.shapes = {id(p): s for g in groups for p, s in zip(g.params, g.shapes, strict=True)}
        self.state = FREE
        self.works: list[Any] = []
        self.refs = 0  # active forward calls holding it
        self.bwd_hold = False  # held until its gradients are complete (or the end of backward)
        self.trainable = sum(len(g.params) for g in groups if g.trainable)
        self.has_frozen = any(not g.trainable for g in groups)
        self.remaining = self.trainable
        self.versions: dict[int, int] = {}
        self.ptrs: dict[int, int] = {}
        self.full_bytes = sum(g.full_bytes() for g in groups)


class _Order:
    """One pass's gather requests against the recorded order (Note [Stage-3 schedule])."""

    def __init__(self) -> None:
        self.recorded: list[int] | None = None
        self.seq: list[int] = []
        self.pos = 0
        self.follow = False

    def begin(self) -> None:
        self.seq, self.pos, self.follow = [], 0, self.recorded is not None

    def request(self, unit: int, prefetch: int) -> list[int]:
        """Appends a request; returns the units to prefetch while the pass follows the record."""
        self.seq.append(unit)
        if not self.follow:
            return []
        if self.pos < len(self.recorded) and self.recorded[self.pos] == unit:
            self.pos += 1
            return self.recorded[self.pos : self.pos + prefetch]
        self.follow = False
        return []

    def upcoming(self, n: int) -> list[int]:
        return self.recorded[self.pos : self.pos + n] if self.follow else []

    def finish(self) -> bool:
        """Records this pass's sequence; True when it differs from the previous record."""
        changed = self.seq != self.recorded
        self.recorded = self.seq
        return changed


class Stage3Engine:
    """Units, hooks and the gather / free schedule of one model (Note [Stage-3 schedule])."""

    def __init__(
        self,
        opt: FusedShardedAdam,
        module: nn.Module,
        policy: UnitPolicy,
        prefetch: int,
        reshard_after_forward: bool,
    ) -> None:
        from pyzero.zero.sharded_adam import _FlatGroup

        self.opt = opt
        self.comm = opt.comm
        self.root = module
        self.prefetch = prefetch
        self.reshard_after_forward = reshard_after_forward
        self.plan: UnitPlan = plan_units(module, policy)
        names: dict[int, str] = {}  # id(param) -> its first qualified name (tied weights have several)
        for n, p in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), n)
        group_of: dict[int, int] = {}
        for gi, group in enumerate(opt.param_groups):
            for p in group["params"]:
                if id(p) not in names:
                    raise ValueError(
                        f"param_groups[{gi}] holds a {tuple(p.shape)} parameter that is not in the model"
                    )
                group_of[id(p)] = gi
        self._placeholders: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self.units: list[_Unit] = []
        self.gathered_bytes = 0
        self.peak_gathered_bytes = 0
        self.build_peak_bytes = 0
        self.owner: dict[int, _Unit] = {}
        trainable_groups: list[_FlatGroup] = []
        for ui, spec in enumerate(self.plan.units):
            keyed: dict[tuple[int | None, torch.dtype], list[nn.Parameter]] = {}
            for p in reversed(spec.params):  # gradients are ready roughly in reverse order
                gi = group_of.get(id(p)) if p.requires_grad else None
                if p.requires_grad and gi is None:
                    raise ValueError(f"trainable parameter {names[id(p)]!r} is in no param group")
                keyed.setdefault((gi, p.dtype), []).append(p)
            groups = []
            for (gi, _dtype), params in sorted(
                keyed.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0)
            ):
                layout, values, shapes = self._assemble(params, names)
                g = _FlatGroup(opt, gi, params, stage3=(layout, values))
                g.shapes = shapes
                del values
                groups.append(g)
                if g.trainable:
                    trainable_groups.append(g)
                for p in params:
                    p.data = self._placeholder(p)
                    if shard_of(p) is not None:
                        delattr(p, SHARD_ATTR)
            unit = _Unit(ui, spec.name, groups, {id(p): names[id(p)] for p in spec.params})
            unit.versions = {id(p): p._version for p in spec.params}
            self.units.append(unit)
            for p in spec.params:
                self.owner[id(p)] = unit
        opt.groups = trainable_groups
        self.frozen_groups = [g for u in self.units for g in u.groups if not g.trainable]
        self.needs: dict[nn.Module, list[_Unit]] = {
            m: [self.units[u] for u in us] for m, us in self.plan.needs.items()
        }
        self._hooks: list[Any] = []
        self._hooked: set[nn.Module] = set()
        for m in self.needs:
            self._hook(m)
        # torch marks these hook objects, so they must be plain functions, not bound methods.
        self._hooks.append(module.register_state_dict_pre_hook(lambda *a: self._state_dict_pre(*a)))
        self._hooks.append(module.register_state_dict_post_hook(lambda *a: self._state_dict_post(*a)))
        self._stack: list[tuple[nn.Module, list[_Unit]]] = []
        self._fwd = _Order()
        self._bwd = _Order()
        self.order_changes = 0
        self._recording = True
        self._mode: ParamUseMode | None = None
        self._in_backward_pass = False
        self._state_dict_units: list[_Unit] = []
        self._suppress_state_dict = False
        self._param_names = {n for n, _ in module.named_parameters(remove_duplicate=False)}
        self._busy = 0  # engine code running: the ParamUseMode ignores its own tensor operations
        _ENGINES[module] = self

    # ------------------------------------------------------------------------------- building
    def _placeholder(self, p: Tensor) -> Tensor:
        key = (p.dtype, p.device)
        if key not in self._placeholders:
            self._placeholders[key] = torch.empty(0, dtype=p.dtype, device=p.device)
        return self._placeholders[key]

    @torch.no_grad()
    def _assemble(self, params: list[nn.Parameter], names: dict[int, str]):
        """Layout and full flat values of one flat group, identical on every rank: parameters built
        under zero_init are all-gathered from their chunks one at a time, the others broadcast from
        rank 0 (as stages 1-2 do)."""
        opt, comm = self.opt, self.comm
        dtype, device = params[0].dtype, params[0].device
        shapes, numels = [], []
        for p in params:
            sh = shard_of(p)
            if sh is not None:
                if p._version != sh.version:
                    raise RuntimeError(
                        f"parameter {names[id(p)]!r} was modified after pyzero.zero_init partitioned it "
                        "(an init in a parent module's __init__, say), and that change would be lost; "
                        "initialise parameters in the __init__ / reset_parameters of the module that "
                        "owns them"
                    )
                if sh.world_size != comm.world_size:
                    raise ValueError(
                        f"parameter {names[id(p)]!r} was partitioned over {sh.world_size} ranks by "
                        "zero_init, "
                        f"the optimizer's process group has {comm.world_size}"
                    )
                shapes.append(sh.shape)
            else:
                shapes.append(p.shape)
            numels.append(int(torch.Size(shapes[-1]).numel()))
        reduce_dtype = opt.reduce_dtype or default_reduce_dtype(dtype)
        layout = make_layout(numels, comm.world_size, bucket_elems(opt.bucket_cap_mb, reduce_dtype))
        values = torch.zeros(layout.flat_numel, dtype=dtype, device=device)
        plain = False
        for p, off, n in zip(params, layout.offsets, numels, strict=True):
            sh = shard_of(p)
            if sh is None:
                values[off : off + n].copy_(p.detach().reshape(-1))
                plain = True
                continue
            full = torch.empty(sh.chunk.numel() * comm.world_size, dtype=dtype, device=device)
            comm.all_gather(full, sh.chunk, async_op=True).wait()
            values[off : off + n].copy_(full[:n])
            self.build_peak_bytes = max(
                self.build_peak_bytes,
                self._held_partition_bytes()
                + values.numel() * values.element_size()
                + full.numel() * full.element_size(),
            )
            del full
        if plain:
            comm.broadcast(values, 0)
        return layout, values, shapes

    def _held_partition_bytes(self) -> int:
        return sum(g.partition.numel() * g.partition.element_size() for u in self.units for g in u.groups)

    def flat_numel(self) -> int:
        """Elements of all units' flat buffers (padded), what one gather of every unit moves."""
        return sum(g.layout.flat_numel for u in self.units for g in u.groups)

    # ---------------------------------------------------------------------------------- hooks
    def _hook(self, m: nn.Module) -> None:
        if m in self._hooked:
            return
        self._hooked.add(m)
        self._hooks.append(m.register_forward_pre_hook(self._pre_forward))
        self._hooks.append(m.register_forward_hook(self._post_forward, always_call=True))

    def register_external_parameter(self, module: nn.Module, param: nn.Parameter) -> None:
        unit = self.owner.get(id(param))
        if unit is None:
            raise ValueError(f"the {tuple(param.shape)} parameter is not a parameter of the model")
        if not any(module is m for m in self.root.modules()):
            raise ValueError(f"{type(module).__name__} is not a submodule of the model")
        needs = self.needs.setdefault(module, [])
        if unit not in needs:
            needs.append(unit)
        self._hook(module)

    def _pre_forward(self, module: nn.Module, args: Any) -> None:
        in_bwd = _in_backward()
        if module is self.root and not self._stack and not in_bwd:
            self._begin_forward()
        frame: list[_Unit] = []
        self._stack.append((module, frame))
        for u in self.needs.get(module, []):
            self._acquire(u, frame, in_bwd)

    def _post_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._stack or self._stack[-1][0] is not module:
            return  # the pre-hook did not run (an exception before it)
        _, frame = self._stack.pop()
        in_bwd = _in_backward()
        for u in frame:
            u.refs -= 1
        if sys.exc_info()[0] is not None:  # forward raised (always_call hooks run inside torch's except)
            if module is self.root and not self._stack and not in_bwd:
                self._exit_mode()
                self.release_all()  # no backward will come for this pass
            return
        if torch.is_grad_enabled() and not in_bwd and frame:
            outs = [t for t in tree_leaves(output) if isinstance(t, Tensor) and t.requires_grad]
            if outs:
                units = tuple(frame)
                torch.autograd.graph.register_multi_grad_hook(
                    outs, lambda _grads: self._pre_backward(units), mode="any"
                )
        end = module is self.root and not self._stack and not in_bwd
        if end and torch.is_grad_enabled():  # the root's units go straight on into backward
            for u in self.needs.get(self.root, []):
                u.bwd_hold = True
        for u in frame:
            self._after_use(u, in_bwd)
        if end:
            self._end_forward()

    def _begin_forward(self) -> None:
        self._fwd.begin()
        if self._recording:
            self._mode = ParamUseMode(self._external_use, lambda: self._busy > 0)
            self._mode.__enter__()

    def _exit_mode(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def _end_forward(self) -> None:
        self._exit_mode()
        keep = torch.is_grad_enabled()  # units marked for backward stay (see Note [Stage-3 schedule])
        if keep:
            for i in self._upcoming():  # the first units backward asks for
                if self.units[i].state != FREE:
                    self.units[i].bwd_hold = True
        for u in self.units:
            if u.refs == 0 and not (keep and u.bwd_hold):
                u.bwd_hold = False
                self._release(u)
        had_order = self._fwd.recorded is not None
        self._recording = self._fwd.finish()
        self.order_changes += self._recording and had_order

    def _acquire(self, u: _Unit, frame: list[_Unit], in_bwd: bool) -> None:
        u.refs += 1
        frame.append(u)
        if in_bwd:
            u.bwd_hold = True
            self._gather(u)
            self._wait(u)
            return
        self._gather(u)
        for nxt in self._fwd.request(u.index, self.prefetch):
            self._gather(self.units[nxt])
        self._wait(u)

    def _after_use(self, u: _Unit, in_bwd: bool) -> None:
        if u.refs > 0 or u.bwd_hold:
            return
        if torch.is_grad_enabled() and not in_bwd and not self.reshard_after_forward:
            u.bwd_hold = True
            return
        if not in_bwd and u.index in self._upcoming():
            return  # used again in a moment: keeping it saves a gather
        self._release(u)

    def _upcoming(self) -> list[int]:
        """The next `prefetch` units the recorded order will request: the rest of this forward, then
        (grad enabled) the start of backward, not counting the root's units (already kept)."""
        if not self._fwd.follow:
            return []
        nxt = self._fwd.upcoming(self.prefetch)
        if len(nxt) < self.prefetch and self._bwd.recorded is not None and torch.is_grad_enabled():
            root = {u.index for u in self.needs.get(self.root, [])}
            nxt = nxt + [i for i in self._bwd.recorded if i not in root][: self.prefetch - len(nxt)]
        return nxt

    def _external_use(self, p: nn.Parameter) -> None:
        u = self.owner.get(id(p))
        if u is None or not self._stack or any(u in frame for _, frame in self._stack):
            return
        module, frame = self._stack[-1]
        needs = self.needs.setdefault(module, [])
        if u not in needs:
            needs.append(u)
        with self._internal():
            self._acquire(u, frame, _in_backward())

    def _pre_backward(self, units: tuple[_Unit, ...]) -> None:
        if not self._in_backward_pass:
            self._in_backward_pass = True
            self._bwd.begin()
            self.opt._queue_end_of_backward()
        for u in units:
            u.bwd_hold = True
            self._gather(u)
            for nxt in self._bwd.request(u.index, self.prefetch):
                self._gather(self.units[nxt])
            self._wait(u)

    def on_gradient(self, p: Tensor) -> None:
        """A trainable parameter's gradient arrived (called by the optimizer's gradient hook)."""
        u = self.owner[id(p)]
        u.remaining -= 1
        if u.remaining == 0 and not u.has_frozen and u.refs == 0:
            u.bwd_hold = False
            self._release(u)

    def end_backward(self) -> None:
        """End of a backward pass: every unit is freed, counters reset, the order recorded."""
        self._in_backward_pass = False
        for u in self.units:
            u.remaining = u.trainable
            if u.refs == 0:
                u.bwd_hold = False
                self._release(u)
        had_order = self._bwd.recorded is not None
        self.order_changes += self._bwd.finish() and had_order

    # ------------------------------------------------------------------------ gather / free
    @contextlib.contextmanager
    def _internal(self) -> Iterator[None]:
        """Engine code touching parameters: not a use the ParamUseMode should report."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    def _gather(self, u: _Unit) -> None:
        """Starts gathering a free unit (asynchronously; `_wait` completes it)."""
        if u.state != FREE:
            return
        with self._internal():
            for g in u.groups:
                g.full.untyped_storage().resize_(g.full_bytes())
                for b in range(g.layout.num_buckets):
                    s, e = g.layout.bucket_bounds[b]
                    u.works.append(self.comm.all_gather(g.full[s:e], g.param_shards[b], async_op=True))
            u.state = GATHERING
            self.gathered_bytes += u.full_bytes
            self.peak_gathered_bytes = max(self.peak_gathered_bytes, self.gathered_bytes)

    def _wait(self, u: _Unit) -> None:
        if u.state != GATHERING:
            return
        with self._internal():
            for w in u.works:
                w.wait()
            u.works = []
            touched = None
            for g in u.groups:
                for p, off, shape in zip(g.params, g.layout.offsets, g.shapes, strict=True):
                    if p._version != u.versions[id(p)] and touched is None:
                        touched = u.names[id(p)]
                    n = int(torch.Size(shape).numel())
                    p.data = g.full[off : off + n].view(shape)
                    u.versions[id(p)] = p._version
                    u.ptrs[id(p)] = p.data_ptr()
            u.state = READY
            if touched is not None:  # raised once the unit is consistent again
                raise RuntimeError(
                    f"parameter {touched!r} was modified in place while partitioned (ZeRO stage 3 holds "
                    "only an empty placeholder between uses), so the change was lost: modify parameters "
                    "inside opt.gathered_parameters(..., modifier_rank=r)"
                )

    def _release(self, u: _Unit) -> None:
        if u.state == FREE:
            return
        with self._internal():
            problem = None
            if u.state == GATHERING:
                for w in u.works:
                    w.wait()
                u.works = []
            else:
                problem = self._modification(u)
            for g in u.groups:
                for p in g.params:
                    p.data = self._placeholder(p)
                    u.versions[id(p)] = p._version
                g.full.untyped_storage().resize_(0)
            u.state = FREE
            self.gathered_bytes -= u.full_bytes
            if problem is not None:  # raised after freeing, so the engine stays consistent
                raise RuntimeError(problem)

    def _modification(self, u: _Unit) -> str | None:
        """Why a gathered unit's parameters cannot be freed without losing a change, or None."""
        for g in u.groups:
            for p, shape in zip(g.params, g.shapes, strict=True):
                name = u.names[id(p)]
                if p.data_ptr() != u.ptrs[id(p)] or p.shape != shape:
                    return (
                        f"parameter {name!r} had its .data replaced while gathered; under ZeRO stage 3 "
                        "the partition is the truth and the new tensor would be lost: change parameters "
                        "through the optimizer or inside opt.gathered_parameters(..., modifier_rank=r)"
                    )
                if p._version != u.versions[id(p)]:
                    return (
                        f"parameter {name!r} was modified in place outside the optimizer while gathered; "
                        "under ZeRO stage 3 that change would be lost when it is freed: modify it inside "
                        "opt.gathered_parameters(..., modifier_rank=r)"
                    )
        return None

    def release_all(self) -> None:
        """Frees every unit (the first modification found is raised after all are freed)."""
        self._stack.clear()
        problem = None
        for u in self.units:
            u.refs = 0
            u.bwd_hold = False
            try:
                self._release(u)
            except RuntimeError as e:
                problem = problem or e
        if problem is not None:
            raise problem

    # --------------------------------------------------------------------------- user access
    def units_of(self, params: Iterable[Tensor] | None) -> list[_Unit]:
        if params is None:
            return list(self.units)
        out: list[_Unit] = []
        for p in params:
            u = self.owner.get(id(p))
            if u is None:
                raise ValueError(
                    f"a {tuple(p.shape)} tensor given to gathered_parameters is not a model parameter"
                )
            if u not in out:
                out.append(u)
        return out

    @contextlib.contextmanager
    def gathered(
        self, params: Iterable[Tensor] | None = None, modifier_rank: int | None = None
    ) -> Iterator[None]:
        """Full parameters inside (collective: every rank enters). With modifier_rank, that rank's
        in-place changes are broadcast and written back to every rank's partition on exit."""
        if modifier_rank is not None and not 0 <= modifier_rank < self.comm.world_size:
            raise ValueError(f"modifier_rank must be in [0, {self.comm.world_size}), got {modifier_rank}")
        units = [u for u in self.units_of(params) if u.state == FREE]
        for u in units:
            self._gather(u)
        for u in units:
            self._wait(u)
        try:
            yield
        finally:
            if modifier_rank is not None:
                with torch.no_grad():
                    for u in units:
                        for g in u.groups:
                            self._check_pointers(u, g)
                            self.comm.broadcast(g.full, modifier_rank)
                            g.partition.copy_(torch.cat(self._my_ranges(g)))
                            if g.trainable and g.master is not None:
                                g.master.copy_(g.partition.float())
                            for p in g.params:
                                u.versions[id(p)] = p._version
            for u in units:
                self._release(u)

    def _check_pointers(self, u: _Unit, g: _FlatGroup) -> None:
        for p in g.params:
            if p.data_ptr() != u.ptrs[id(p)]:
                raise RuntimeError(
                    f"parameter {u.names[id(p)]!r} had its .data replaced inside gathered_parameters; "
                    "modify it in place (p.copy_(...)) instead"
                )

    def _my_ranges(self, g: _FlatGroup) -> list[Tensor]:
        lay = g.layout
        return [g.full[slice(*lay.shard_range(b, self.comm.rank))] for b in range(lay.num_buckets)]

    @torch.no_grad()
    def full_state_dict(self, rank0_only: bool = False, cpu_offload: bool = True) -> dict[str, Tensor]:
        """model.state_dict() with full parameters, gathered one unit at a time (collective)."""
        self._suppress_state_dict = True
        try:
            skeleton = self.root.state_dict(keep_vars=True)
        finally:
            self._suppress_state_dict = False
        keys_of: dict[int, list[str]] = {}
        for k, v in skeleton.items():
            if isinstance(v, nn.Parameter) and id(v) in self.owner:
                keys_of.setdefault(id(v), []).append(k)
        keep = not rank0_only or self.comm.rank == 0
        out: dict[str, Tensor] = {}
        for u in self.units:
            was_free = u.state == FREE
            self._gather(u)
            self._wait(u)
            if keep:
                for g in u.groups:
                    for p in g.params:
                        t = p.detach().to("cpu", copy=True) if cpu_offload else p.detach().clone()
                        for k in keys_of.get(id(p), []):
                            out[k] = t
            if was_free:
                self._release(u)
        if not keep:
            return {}
        result = {}
        for k, v in skeleton.items():
            if k in out:
                result[k] = out[k]
            else:
                result[k] = v.detach().to("cpu", copy=True) if cpu_offload else v.detach()
        return result

    def _state_dict_pre(self, module: nn.Module, prefix: str, keep_vars: bool) -> None:
        if self._suppress_state_dict:
            return
        self._state_dict_units = [u for u in self.units if u.state == FREE]
        for u in self._state_dict_units:
            self._gather(u)
        for u in self._state_dict_units:
            self._wait(u)

    def _state_dict_post(self, module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
        if self._suppress_state_dict:
            return
        clones: dict[int, Tensor] = {}  # tied parameters stay one tensor
        for k, v in list(state_dict.items()):
            if k.startswith(prefix) and k[len(prefix) :] in self._param_names and isinstance(v, Tensor):
                if id(v) not in clones:
                    clones[id(v)] = v.detach().clone()
                state_dict[k] = clones[id(v)]
        for u in self._state_dict_units:
            self._release(u)
        self._state_dict_units = []

    # ------------------------------------------------------------------------------ accounting
    def held_param_bytes(self) -> int:
        """Bytes of every storage this rank holds for parameters right now: partitions, gathered full
        buffers, and whatever the parameters' .data point at (each storage counted once)."""
        seen: dict[int, int] = {}
        with self._internal():  # reading .data is not a use of the parameter
            for u in self.units:
                for g in u.groups:
                    for t in [g.partition, g.full, *(p.data for p in g.params)]:
                        st = t.untyped_storage()
                        if st.nbytes():
                            seen[st.data_ptr()] = st.nbytes()
        return sum(seen.values())

    def working_set_bound(self) -> int:
        """Largest gathered bytes the schedule can hold at once (Note [Stage-3 schedule]): pinned units
        (enclosing, needed by several modules, holding frozen parameters, or appearing more than once in
        the recorded forward order) plus the (prefetch + 1) largest of the others; everything when
        reshard_after_forward is False."""
        if not self.reshard_after_forward:
            return sum(u.full_bytes for u in self.units)
        return working_set(
            [u.full_bytes for u in self.units],
            self.pinned(),
            self.prefetch,
        )

    def pinned(self) -> set[int]:
        """Units that can stay gathered across other units' work (Note [Stage-3 units]), as known now:
        from the hooked modules' needs (external uses included), frozen parameters, and repeats in
        the recorded forward order."""
        pinned = pinned_units({m: [u.index for u in us] for m, us in self.needs.items()})
        pinned |= {u.index for u in self.units if u.has_frozen}
        seq = self.fwd_order or []
        return pinned | {u for u in set(seq) if seq.count(u) > 1}

    def full_shape(self, p: Tensor) -> torch.Size:
        """A managed parameter's shape (its .data is an empty placeholder between uses)."""
        return torch.Size(self.owner[id(p)].shapes[id(p)])

    @property
    def fwd_order(self) -> list[int] | None:
        """Unit indices in the order the last forward requested them."""
        return self._fwd.recorded

    @property
    def bwd_order(self) -> list[int] | None:
        """Unit indices in the order the last backward requested them."""
        return self._bwd.recorded
