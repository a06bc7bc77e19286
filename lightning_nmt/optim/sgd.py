"""Stochastic gradient descent with momentum."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_nmt.optim.base import OptimizerOptions, register_optimizer


@register_optimizer("sgd")
@dataclass
class SGDOptions(OptimizerOptions):
    """`optim=sgd`: SGD with (heavy-ball) momentum."""

    momentum: float = 0.9

    def build(self, params: list[torch.nn.Parameter], fused: bool) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
