"""Linear warm-up, then the inverse square root of the step (Vaswani et al., 2017)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_nmt.optim.base import StepSchedule, register_schedule


@register_schedule("inverse_sqrt")
@dataclass
class InverseSqrtOptions(StepSchedule):
    """`scheduler=inverse_sqrt`: lr * step / warmup_steps up to `warmup_steps`, then lr * sqrt(warmup_steps / step)
    (steps counted from 1)."""

    warmup_steps: int = 4000

    def multiplier(self, step: int) -> float:
        warmup = max(1, self.warmup_steps)
        return min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
