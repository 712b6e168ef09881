"""ZeRO-sharded training: FusedShardedAdam (stages 1 and 2), its memory plan and communication."""

from pyzero.zero.memory import plan
from pyzero.zero.sharded_adam import FusedShardedAdam

__all__ = ["FusedShardedAdam", "plan"]
