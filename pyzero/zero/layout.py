"""Pure partition math for the flat buffers of FusedShardedAdam (no torch.distributed, no tensors).

Note [Flat layout]
Trainable parameters of one (param group, dtype) are packed into one flat buffer, in reverse
registration order (gradients become ready roughly in that order during backward). Each parameter
starts at a multiple of ALIGN_ELEMS elements; the gaps are zero padding. The buffer is cut into
buckets of `bucket_elems` elements (the last one shorter), where bucket_elems and the padded total
size are multiples of world_size * ALIGN_ELEMS, so every bucket splits into world_size equal
shards whose starts are ALIGN_ELEMS-aligned. Rank r owns shard r of every bucket: gradients of a
bucket are reduce-scattered into those shards and updated parameters are all-gathered back from
them. A rank's partition is the concatenation of its shards in bucket order; it holds exactly
flat_numel / world_size elements, equal on every rank. Padding elements are zero and stay zero
(zero gradient, zero moments, so the update leaves them at zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Parameter starts and shard starts are multiples of this many elements (64 bytes of fp32).
ALIGN_ELEMS = 16


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclass(frozen=True)
class FlatLayout:
    """Where every parameter and every shard lives in one flat buffer (see Note [Flat layout])."""

    numels: tuple[int, ...]  # per parameter, in packing order
    offsets: tuple[int, ...]  # start of each parameter in the flat buffer
    flat_numel: int  # padded total, a multiple of world_size * ALIGN_ELEMS
    bucket_bounds: tuple[tuple[int, int], ...]  # [start, end) of each bucket in the flat buffer
    world_size: int

    @property
    def partition_numel(self) -> int:
        return self.flat_numel // self.world_size

    @property
    def num_buckets(self) -> int:
        return len(self.bucket_bounds)

    def shard_numel(self, bucket: int) -> int:
        start, end = self.bucket_bounds[bucket]
        return (end - start) // self.world_size

    def shard_range(self, bucket: int, rank: int) -> tuple[int, int]:
        """[start, end) in the flat buffer of `rank`'s shard of `bucket`."""
        start = self.bucket_bounds[bucket][0] + rank * self.shard_numel(bucket)
        return start, start + self.shard_numel(bucket)

    def partition_offset(self, bucket: int) -> int:
        """Where `bucket`'s shard starts inside a rank's partition."""
        return sum(self.shard_numel(b) for b in range(bucket))

    def param_pieces(self, index: int) -> list[tuple[int, int, int]]:
        """(bucket, start, end) flat ranges of parameter `index`, one per bucket it overlaps."""
        lo, hi = self.offsets[index], self.offsets[index] + self.numels[index]
        pieces = []
        for b, (bs, be) in enumerate(self.bucket_bounds):
            s, e = max(lo, bs), min(hi, be)
            if s < e:
                pieces.append((b, s, e))
        return pieces

    def fingerprint(self) -> tuple:
        """What every rank must agree on before any collective runs."""
        return (self.numels, self.flat_numel, self.bucket_bounds, self.world_size)


def make_layout(numels: Sequence[int], world_size: int, bucket_elems: int) -> FlatLayout:
    """Packs parameters of the given numels (in packing order) as Note [Flat layout] says.

    bucket_elems is rounded down to a multiple of world_size * ALIGN_ELEMS (at least one such unit).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    unit = world_size * ALIGN_ELEMS
    offsets = []
    pos = 0
    for n in numels:
        offsets.append(pos)
        pos = round_up(pos + n, ALIGN_ELEMS)
    flat_numel = max(round_up(pos, unit), unit)
    bucket = max(bucket_elems // unit * unit, unit)
    bounds = tuple((s, min(s + bucket, flat_numel)) for s in range(0, flat_numel, bucket))
    return FlatLayout(tuple(numels), tuple(offsets), flat_numel, bounds, world_size)
