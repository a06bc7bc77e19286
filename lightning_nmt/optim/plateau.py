"""The learning rate reduced when val BLEU stalls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lightning_nmt.optim.base import ScheduleOptions, register_schedule


@register_schedule("plateau")
@dataclass
class PlateauOptions(ScheduleOptions):
    """`scheduler=plateau`: the learning rate times `factor` after `patience` validations without a better val
    BLEU, down to `min_lr`. The module steps it once per validation (`TranslationModule.on_validation_epoch_end`)."""

    factor: float = 0.5
    patience: int = 2
    min_lr: float = 1e-6

    def check(self) -> None:
        super().check()
        self.require("factor", 0 < self.factor < 1, "must be in (0, 1)")

    def build(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=self.factor,
                                                             patience=self.patience, min_lr=self.min_lr)
        return {"scheduler": plateau, "monitor": "val/bleu", "interval": "epoch", "strict": False}
