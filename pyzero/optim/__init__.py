"""Drop-in fused replacements for torch.optim.Adam and torch.optim.AdamW."""

from pyzero.optim.adam import FusedAdam, FusedAdamW

__all__ = ["FusedAdam", "FusedAdamW"]
