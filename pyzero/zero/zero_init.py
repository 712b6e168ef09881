"""`pyzero.zero_init()`: build a model with its parameters already partitioned over the ranks.

Inside the context every nn.Module subclass's `__init__` is wrapped: when the outermost `__init__`
of a module instance returns (its own initialisation, `reset_parameters` included, is done), the
parameters it registered directly are broadcast from rank 0 and cut into equal chunks; the rank keeps
its chunk and the parameter's data becomes an empty placeholder. At most one module's own parameters
exist in full at a time, so a model larger than one process's memory can be built. The stage-3
optimizer later moves the chunks into its flat layout (Note [Stage-3 units]).

A parameter modified after it was partitioned (an init pass in a parent's `__init__`, say) would lose
that change; the optimizer detects it from the parameter's version counter and raises.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pyzero.zero.comm import Comm

# Attribute set on a partitioned parameter.
SHARD_ATTR = "_pyzero_zero_init"


@dataclass
class InitShard:
    """This rank's chunk of one parameter built under zero_init."""

    shape: torch.Size
    numel: int
    chunk: Tensor  # this rank's ceil(numel / world) elements (zero-padded at the end)
    version: int  # the parameter's version counter right after partitioning
    world_size: int


@dataclass
class InitLedger:
    """Parameter bytes this rank held while building (partitioned chunks plus full parameters of the
    module being partitioned), the peak of it, and an optional budget that raises when crossed."""

    budget: int | None = None
    held: int = 0
    peak: int = 0
    parameters: int = 0  # parameters partitioned
    full_bytes: int = 0  # their total full size
    events: list[str] = field(default_factory=list)

    def observe(self, transient: int, what: str) -> None:
        now = self.held + transient
        self.peak = max(self.peak, now)
        if self.budget is not None and now > self.budget:
            raise MemoryError(
                f"zero_init: building {what} needs {now} parameter bytes on this rank, over the budget of "
                f"{self.budget} bytes"
            )


def shard_of(p: Tensor) -> InitShard | None:
    return getattr(p, SHARD_ATTR, None)


def full_shape(p: Tensor) -> torch.Size:
    """A parameter's shape, also while zero_init holds it partitioned."""
    sh = shard_of(p)
    return p.shape if sh is None else sh.shape


def full_numel(p: Tensor) -> int:
    sh = shard_of(p)
    return p.numel() if sh is None else sh.numel


def _all_subclasses(cls: type) -> set[type]:
    out, todo = set(), [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in out:
                out.add(sub)
                todo.append(sub)
    return out


class _Partitioner:
    def __init__(self, comm: Comm, ledger: InitLedger) -> None:
        self.comm = comm
        self.ledger = ledger
        self.depth: dict[int, int] = {}

    def wrap(self, init):
        partitioner = self

        @functools.wraps(init)
        def __init__(module: nn.Module, *args: Any, **kwargs: Any) -> None:
            key = id(module)
            partitioner.depth[key] = partitioner.depth.get(key, 0) + 1
            try:
                init(module, *args, **kwargs)
            finally:
                partitioner.depth[key] -= 1
                outermost = partitioner.depth[key] == 0
                if outermost:
                    del partitioner.depth[key]
            if outermost:
                partitioner.partition(module)

        __init__._pyzero_wrapped = init
        return __init__

    @torch.no_grad()
    def partition(self, module: nn.Module) -> None:
        fresh = [
            (n, p)
            for n, p in module._parameters.items()
            if p is not None and shard_of(p) is None and p.numel()
        ]
        if not fresh:
            return
        world, rank = self.comm.world_size, self.comm.rank
        self.ledger.observe(
            sum(p.numel() * p.element_size() for _, p in fresh), f"{type(module).__name__}'s parameters"
        )
        for _, p in fresh:
            self.comm.broadcast(p.data, 0)  # ranks may have drawn different random inits
            flat = p.data.reshape(-1)
            per = -(-flat.numel() // world)
            chunk = torch.zeros(per, dtype=p.dtype, device=p.device)
            mine = flat[rank * per : (rank + 1) * per]
            chunk[: mine.numel()].copy_(mine)
            shape = p.shape
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            setattr(p, SHARD_ATTR, InitShard(shape, flat.numel(), chunk, p._version, world))
            self.ledger.held += chunk.numel() * chunk.element_size()
            self.ledger.parameters += 1
            self.ledger.full_bytes += flat.numel() * flat.element_size()


@contextlib.contextmanager
def zero_init(process_group: Any = None, *, budget_bytes: int | None = None) -> Iterator[InitLedger]:
    """Modules constructed inside get their parameters partitioned over `process_group`'s ranks.

    Yields an InitLedger (the parameter bytes this rank held and their peak); budget_bytes makes
    construction raise MemoryError as soon as this rank would hold more parameter bytes than that.
    The model must then go to FusedShardedAdam(model, stage=3), which gathers parameters on demand.
    """
    comm = Comm(process_group)
    ledger = InitLedger(budget=budget_bytes)
    partitioner = _Partitioner(comm, ledger)
    patched: list[tuple[type, Any]] = []

    def patch(cls: type) -> None:
        init = cls.__dict__.get("__init__")
        if init is not None and not hasattr(init, "_pyzero_wrapped"):
            patched.append((cls, init))
            cls.__init__ = partitioner.wrap(init)

    original_init_subclass = nn.Module.__dict__.get("__init_subclass__")

    def init_subclass(cls, **kwargs):  # classes defined inside the context
        super(nn.Module, cls).__init_subclass__(**kwargs)
        patch(cls)

    for cls in _all_subclasses(nn.Module):
        patch(cls)
    nn.Module.__init_subclass__ = classmethod(init_subclass)
    try:
        yield ledger
    finally:
        for cls, init in reversed(patched):
            cls.__init__ = init
        if original_init_subclass is None:
            del nn.Module.__init_subclass__
        else:
            nn.Module.__init_subclass__ = original_init_subclass
