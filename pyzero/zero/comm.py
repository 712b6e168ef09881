"""The only module that imports torch.distributed: collectives for FusedShardedAdam, with byte
accounting, async handles, and a local (world size 1, no process group) fallback."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class _Done:
    """Handle of an operation that already finished (local fallback)."""

    def wait(self) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


class Comm:
    """Collectives over one process group; counts the bytes each kind of collective moves.

    Without an initialized default group (and with process_group=None) it acts as world size 1.
    `bytes` counts the full tensor of each call (reduce-scatter input, all-gather output,
    all-reduce tensor); `sent_bytes()` turns that into bytes each rank sends with ring algorithms.
    """

    def __init__(self, process_group: Any = None) -> None:
        self.distributed = dist.is_available() and dist.is_initialized()
        if process_group is not None and not self.distributed:
            raise ValueError("process_group was given but torch.distributed is not initialized")
        self.group = process_group
        self.world_size = dist.get_world_size(process_group) if self.distributed else 1
        self.rank = dist.get_rank(process_group) if self.distributed else 0
        self.backend = dist.get_backend(process_group) if self.distributed else "local"
        self.bytes: dict[str, int] = defaultdict(int)
        # gloo's all_gather_single / reduce_scatter_single where this torch has them (the
        # *_tensor names are deprecated for gloo there), the *_tensor forms otherwise.
        self._all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

    def _count(self, kind: str, t: Tensor) -> None:
        self.bytes[kind] += t.numel() * t.element_size()

    def sent_bytes(self) -> dict[str, float]:
        """Bytes each rank sends per collective kind (ring: (N-1)/N of the tensor; all-reduce 2x)."""
        f = (self.world_size - 1) / self.world_size
        return {k: v * f * (2 if k == "all_reduce" else 1) for k, v in self.bytes.items()}

    def reset_counts(self) -> None:
        self.bytes.clear()

    def reduce_scatter(self, output: Tensor, input: Tensor, async_op: bool = True):
        """Sum of `input` over ranks, chunk `rank` into `output` (may alias that chunk of input)."""
        self._count("reduce_scatter", input)
        if self.world_size == 1:
            if output.data_ptr() != input.data_ptr():
                output.copy_(input)
            return _Done()
        work = self._reduce_scatter(output, input, group=self.group, async_op=async_op)
        return work if async_op else _Done()

    def all_gather(self, output: Tensor, input: Tensor, async_op: bool = True):
        """Concatenation of every rank's `input` into `output`; `input` may alias its own chunk."""
        self._count("all_gather", output)
        if self.world_size == 1:
            if output.data_ptr() != input.data_ptr():
                output.copy_(input)
            return _Done()
        if self.backend == "gloo" and _overlaps(output, input):
            input = input.clone()  # gloo copies the input into the output: keep the two apart
        work = self._all_gather(output, input, group=self.group, async_op=async_op)
        return work if async_op else _Done()

    def all_reduce(self, t: Tensor, op: str = "sum") -> None:
        """In-place all-reduce (op "sum" or "max"), blocking."""
        self._count("all_reduce", t)
        if self.world_size == 1:
            return
        red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        dist.all_reduce(t, op=red, group=self.group)

    def broadcast(self, t: Tensor, src_rank: int = 0) -> None:
        self._count("broadcast", t)
        if self.world_size == 1:
            return
        src = dist.get_global_rank(self.group, src_rank) if self.group is not None else src_rank
        dist.broadcast(t, src=src, group=self.group)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def device_for_collectives(self) -> torch.device | None:
        """The device NCCL needs tensors on, or None when any device works (gloo, local)."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else None


def _overlaps(a: Tensor, b: Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()
