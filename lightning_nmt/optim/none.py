"""No schedule: a constant learning rate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_nmt.optim.base import ScheduleOptions, register_schedule


@register_schedule("none")
@dataclass
class ConstantOptions(ScheduleOptions):
    """`scheduler=none`: the learning rate stays `optim.lr`."""

    def build(self, optimizer: torch.optim.Optimizer) -> None:
        return None
