"""pyzero: ZeRO-sharded training with fused optimizers, and exact compiled tree inference.

Import ``torch`` before the extension: this module does it for you.
"""

import torch  # noqa: F401  (loads libc10 before pyzero._C)

from pyzero._version import __version__
from pyzero.info import info
from pyzero.ops import fused_adamw
from pyzero.optim import FusedAdam, FusedAdamW
from pyzero.trees.compiled import tree_predict_cuda, tree_predict_triton
from pyzero.zero import (
    FusedShardedAdam,
    consolidate_checkpoint,
    full_state_dict,
    load_checkpoint,
    plan,
    save_checkpoint,
    zero_init,
)

__all__ = [
    "FusedAdam",
    "FusedAdamW",
    "FusedShardedAdam",
    "__version__",
    "consolidate_checkpoint",
    "full_state_dict",
    "fused_adamw",
    "info",
    "load_checkpoint",
    "plan",
    "save_checkpoint",
    "tree_predict_cuda",
    "tree_predict_triton",
    "zero_init",
]
