"""The optimizer and learning-rate schedule of a run (`optim:` and `scheduler:`), and the rescaling of a resumed
run's learning rates when `optim.lr` changed."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch

log = logging.getLogger("lightning_nmt")

FUSED_ADAM = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
"""Whether fused Adam runs on the CPU (torch >= 2.4)."""


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict[str, Any],
                   allow_fused: bool = True) -> torch.optim.Optimizer:
    """`optim.name`: adam, adamw (fused where the parameters' devices have the kernel) or sgd (momentum 0.9)."""
    name = cfg["name"]
    if name in ("adam", "adamw"):
        params = list(params)
        # fused Adam updates all parameters in one pass: a faster step (benchmarks/README.md)
        fused = allow_fused and FUSED_ADAM and all(p.device.type in ("cpu", "cuda") for p in params)
        adam = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return adam(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"],
                    fused=fused or None)
    return torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])


def configure_optimizers(params: Iterable[torch.nn.Parameter], optim: dict[str, Any], scheduler: dict[str, Any],
                         trainer: L.Trainer | None) -> dict[str, Any]:
    """What `LightningModule.configure_optimizers` returns: the optimizer and the `scheduler.name` schedule.

    `plateau` halves (`factor`) the learning rate when val BLEU stalls; the module steps it once per validation
    (`TranslationModule.on_validation_epoch_end`). `inverse_sqrt`: linear warm-up, then lr * sqrt(warmup / step).
    """
    # Lightning refuses to clip the gradients of a fused optimizer under mixed precision
    allow_fused = trainer is None or not (trainer.gradient_clip_val and "mixed" in str(trainer.precision))
    optimizer = make_optimizer(params, optim, allow_fused)
    name = scheduler["name"]
    if name == "none":
        return {"optimizer": optimizer}
    if name == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=scheduler["factor"], patience=scheduler["patience"],
            min_lr=scheduler["min_lr"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val/bleu",
                                                         "interval": "epoch", "strict": False}}
    warmup = max(1, scheduler["warmup_steps"])
    inverse_sqrt = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1))))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": inverse_sqrt, "interval": "step"}}


def rescale_learning_rates(trainer: L.Trainer, old: float, new: float) -> None:
    """Scale the restored optimizer and scheduler learning rates by new / old: a run resumed with another
    `optim.lr` (e.g. lower, after a divergence) uses it."""
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["lr"] *= new / old
            if "initial_lr" in group:
                group["initial_lr"] *= new / old
    for config in trainer.lr_scheduler_configs:
        if hasattr(config.scheduler, "base_lrs"):
            config.scheduler.base_lrs = [lr * new / old for lr in config.scheduler.base_lrs]
    log.warning("optim.lr is %g, the checkpoint's was %g: learning rates scaled by %g", new, old, new / old)
