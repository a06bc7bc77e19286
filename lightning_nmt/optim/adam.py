"""Adam and AdamW, fused where the parameters' devices have the kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lightning_nmt.optim.base import OptimizerOptions, register_optimizer

FUSED_ADAM = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
"""Whether fused Adam runs on the CPU (torch >= 2.4)."""


@register_optimizer("adam")
@dataclass
class AdamOptions(OptimizerOptions):
    """`optim=adam`: Adam (Kingma & Ba, 2015)."""

    betas: tuple[float, float] = (0.9, 0.999)
    algorithm: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Adam

    def check(self) -> None:
        super().check()
        self.require("betas", all(0 <= b < 1 for b in self.betas), "must be in [0, 1)")

    def build(self, params: list[torch.nn.Parameter], fused: bool) -> torch.optim.Optimizer:
        # fused Adam updates all parameters in one pass: a faster step (benchmarks/README.md)
        fused = fused and FUSED_ADAM and all(p.device.type in ("cpu", "cuda") for p in params)
        return self.algorithm(params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay,
                              fused=fused or None)


@register_optimizer("adamw")
@dataclass
class AdamWOptions(AdamOptions):
    """`optim=adamw`: Adam with decoupled weight decay (Loshchilov & Hutter, 2019)."""

    weight_decay: float = 0.01
    algorithm: ClassVar[type[torch.optim.Optimizer]] = torch.optim.AdamW
