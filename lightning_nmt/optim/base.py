"""What an optimizer and a learning-rate schedule declare (`OptimizerOptions`, `ScheduleOptions`), their
registries, and the options a config's `optim:` or `scheduler:` group selects."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import torch
from omegaconf import OmegaConf

from lightning_nmt.errors import ConfigError
from lightning_nmt.registry import register_in


@dataclass
class Options(ABC):
    """The keys one registered optimizer or schedule reads from its config group: subclasses declare them as
    fields with defaults (the values live in `conf/<group>/<name>.yaml`) and register with `register_optimizer` or
    `register_schedule`. The config schema and its `name` enum are derived from the registries."""

    group: ClassVar[str]
    """The config group the options are read from: `optim` or `scheduler`."""

    def check(self) -> None:
        """One-line `ConfigError` naming the key of a value out of range: no number may be negative. Subclasses
        add their own rules with `require`."""
        for option in fields(self):
            value = getattr(self, option.name)
            if isinstance(value, (int, float)):
                self.require(option.name, value >= 0, "must not be negative")

    def require(self, key: str, ok: bool, rule: str) -> None:
        """`ConfigError` "<group>.<key> <rule>, got <value>" unless `ok`."""
        if not ok:
            value = getattr(self, key)
            shown = list(value) if isinstance(value, (tuple, list)) else value
            raise ConfigError(f"{self.group}.{key} {rule}, got {shown}")


@dataclass
class OptimizerOptions(Options):
    """What one optimizer reads from `optim:`; every optimizer has a learning rate (a resumed run rescales it) and
    weight decay."""

    group: ClassVar[str] = "optim"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def check(self) -> None:
        self.require("lr", self.lr > 0, "must be positive")
        super().check()

    @abstractmethod
    def build(self, params: list[torch.nn.Parameter], fused: bool) -> torch.optim.Optimizer:
        """The optimizer of `params`; `fused`: whether it may use a fused implementation."""


@dataclass
class ScheduleOptions(Options):
    """What one learning-rate schedule reads from `scheduler:`."""

    group: ClassVar[str] = "scheduler"

    @abstractmethod
    def build(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Lightning's `lr_scheduler` entry for `optimizer` (the scheduler, its `interval`, ...), or None: the
        learning rate stays `optim.lr`."""


@dataclass
class StepSchedule(ScheduleOptions):
    """A schedule that multiplies `optim.lr` by a function of the optimizer steps taken, after every step."""

    @abstractmethod
    def multiplier(self, step: int) -> float:
        """The factor of `optim.lr` after `step` optimizer steps (0: the first update's)."""

    def build(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, self.multiplier), "interval": "step"}


OPTIMIZERS: dict[str, type[OptimizerOptions]] = {}
"""Optimizer name (`optim=name`, `optim.name`) -> its options."""
SCHEDULES: dict[str, type[ScheduleOptions]] = {}
"""Schedule name (`scheduler=name`, `scheduler.name`) -> its options."""

AnyOptions = TypeVar("AnyOptions", bound=Options)
OptimizerClass = TypeVar("OptimizerClass", bound=type[OptimizerOptions])
ScheduleClass = TypeVar("ScheduleClass", bound=type[ScheduleOptions])


def register_optimizer(name: str) -> Callable[[OptimizerClass], OptimizerClass]:
    """Class decorator: `optim=name` builds optimizers from these options. A name registered twice is an error."""
    return register_in(OPTIMIZERS, name, "optimizer")


def register_schedule(name: str) -> Callable[[ScheduleClass], ScheduleClass]:
    """Class decorator: `scheduler=name` builds schedules from these options. A name registered twice is an
    error."""
    return register_in(SCHEDULES, name, "schedule")


def options_from(table: Mapping[str, type[AnyOptions]], cfg: Mapping[str, Any], what: str) -> AnyOptions:
    """The options of the entry `cfg["name"]` of `table`, from `cfg` (the group as a dict or DictConfig). A key the
    entry reads that `cfg` lacks or leaves None (a checkpoint older than the key, or `optim.name=sgd` over another
    optimizer's file) takes the entry's default; the keys other entries read are ignored. An unknown name is a
    one-line `ConfigError` listing the registered ones."""
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    name = cfg.get("name")
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; registered: {', '.join(table)}")
    options = table[name]
    values = {option.name: cfg.get(option.name) for option in fields(options)}
    return options(**{key: value for key, value in values.items() if value is not None})
