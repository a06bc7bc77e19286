"""The optimizer and learning-rate schedule of a run (the `optim:` and `scheduler:` config groups), and the
rescaling of a resumed run's learning rates when `optim.lr` changed.

Each optimizer and each schedule declares what it reads (`OptimizerOptions`, `ScheduleOptions`) next to its code
and registers it (`OPTIMIZERS`, `SCHEDULES`); `conf/optim/<name>.yaml` and `conf/scheduler/<name>.yaml` hold its
values. Every module of this package is imported here, so a new module that registers one needs no import
elsewhere. See docs/extending.md.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch

from lightning_nmt.optim.adam import FUSED_ADAM
from lightning_nmt.optim.base import (
    OPTIMIZERS,
    SCHEDULES,
    OptimizerOptions,
    ScheduleOptions,
    StepSchedule,
    options_from,
    register_optimizer,
    register_schedule,
)

for _module in pkgutil.iter_modules(__path__):  # each module registers its optimizers or schedules
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FUSED_ADAM", "OPTIMIZERS", "SCHEDULES", "OptimizerOptions", "ScheduleOptions", "StepSchedule",
           "configure_optimizers", "make_optimizer", "make_schedule", "optimizer_options", "register_optimizer",
           "register_schedule", "rescale_learning_rates", "schedule_options"]

log = logging.getLogger("lightning_nmt")


def optimizer_options(cfg: Mapping[str, Any]) -> OptimizerOptions:
    """The options of the optimizer `cfg` (the `optim:` group) names (see `options_from`)."""
    return options_from(OPTIMIZERS, cfg, "optimizer")


def schedule_options(cfg: Mapping[str, Any]) -> ScheduleOptions:
    """The options of the schedule `cfg` (the `scheduler:` group) names (see `options_from`)."""
    return options_from(SCHEDULES, cfg, "schedule")


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any],
                   allow_fused: bool = True) -> torch.optim.Optimizer:
    """The optimizer `cfg` (the `optim:` group) describes, of `params`; an unknown name or a value out of range is
    a one-line `ConfigError`."""
    options = optimizer_options(cfg)
    options.check()
    return options.build(list(params), allow_fused)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """Lightning's `lr_scheduler` entry of the schedule `cfg` (the `scheduler:` group) describes, for `optimizer`,
    or None (a constant learning rate); an unknown name or a value out of range is a one-line `ConfigError`."""
    options = schedule_options(cfg)
    options.check()
    return options.build(optimizer)


def configure_optimizers(params: Iterable[torch.nn.Parameter], optim: Mapping[str, Any],
                         scheduler: Mapping[str, Any], trainer: L.Trainer | None) -> dict[str, Any]:
    """What `LightningModule.configure_optimizers` returns: the `optim:` optimizer and the `scheduler:` schedule."""
    # Lightning refuses to clip the gradients of a fused optimizer under mixed precision
    allow_fused = trainer is None or not (trainer.gradient_clip_val and "mixed" in str(trainer.precision))
    optimizer = make_optimizer(params, optim, allow_fused)
    schedule = make_schedule(optimizer, scheduler)
    return {"optimizer": optimizer} if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}


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
