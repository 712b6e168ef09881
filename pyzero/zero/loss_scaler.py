"""Dynamic loss scaling for fp16 training (DeepSpeed / Megatron semantics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

INITIAL_SCALE = 2.0**16
GROWTH_INTERVAL = 1000
BACKOFF = 0.5
GROWTH = 2.0
HYSTERESIS = 2
MIN_SCALE = 1.0


@dataclass
class DynamicLossScaler:
    """Loss scale that halves after `hysteresis` consecutive overflowing steps and doubles after
    `growth_interval` clean steps in a row.

    scale: current loss scale. hysteresis: overflows tolerated before a backoff (reset on a clean step).
    """

    scale: float = INITIAL_SCALE
    growth_interval: int = GROWTH_INTERVAL
    backoff: float = BACKOFF
    growth: float = GROWTH
    hysteresis: int = HYSTERESIS
    min_scale: float = MIN_SCALE
    clean_steps: int = 0
    overflows_left: int = HYSTERESIS

    def update(self, overflow: bool) -> None:
        if overflow:
            self.clean_steps = 0
            self.overflows_left -= 1
            if self.overflows_left <= 0:
                self.scale = max(self.scale * self.backoff, self.min_scale)
                self.overflows_left = self.hysteresis
            return
        self.overflows_left = self.hysteresis
        self.clean_steps += 1
        if self.clean_steps % self.growth_interval == 0:
            self.scale *= self.growth

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)
