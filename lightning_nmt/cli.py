"""What every entry point (`lnmt-train`, `lnmt-eval`, `lnmt-translate`, `lnmt-serve`) shares: running a command
with one-line user errors, the inference device, decoding settings given on the command line. Imports no training
code (no Lightning, no wandb, no torchmetrics): `lnmt-translate` and `lnmt-serve` start without them."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_nmt.errors import ConfigError, UserError, WriteError, is_write_error
from lightning_nmt.kernels import cpu as cpu_kernels
from lightning_nmt.search import DecodingConfig


def to_dict(node: Any) -> Any:
    """A plain (YAML/pickle-safe) copy of a config node; enums become their names."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


QUIET_WARNINGS = (
    r"`training_step` returned `None`",  # a step skipped for a NaN/inf loss: counted and logged by the module
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # torch's deprecation, raised inside Lightning
)
"""Warnings a user cannot act on: written to the run's log file (train.log), not to the terminal."""


def quiet_warnings() -> None:
    """Send the `QUIET_WARNINGS` to the log files of the root logger only (idempotent)."""
    show = warnings.showwarning
    if getattr(show, "quiet", False):
        return

    def show_or_file(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
        if not any(re.search(pattern, str(message)) for pattern in QUIET_WARNINGS):
            return show(message, category, filename, lineno, file, line)
        record = logging.LogRecord("py.warnings", logging.WARNING, filename, lineno,
                                   f"{category.__name__}: {message}", None, None)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    show_or_file.quiet = True  # type: ignore[attr-defined]
    warnings.showwarning = show_or_file


def run_cli(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point; a user error is one line on stderr and exit status 2, not a traceback. With
    `speedups=auto` on the CPU, the process settings of the CPU kernels are applied first; the warnings a user
    cannot act on go to the log file only (`quiet_warnings`)."""
    quiet_warnings()
    accelerator = cfg.trainer.accelerator if "trainer" in cfg else cfg.get("accelerator", "cpu")
    cpu_kernels.tune_process(cfg.get("speedups", "auto"), accelerator)
    try:
        return fn(cfg)
    except UserError as err:
        _fail(err)
    except OSError as err:  # a write the user can fix (a full disk, a directory that cannot be written)
        if not is_write_error(err):
            raise
        _fail(WriteError(err.filename, err))


def global_rank() -> int:
    """This process's global rank: Lightning's when it is loaded (it sets the rank of the processes it launches),
    else the launcher's environment (torchrun, SLURM), else 0."""
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    if rank_zero is not None:
        return int(getattr(rank_zero.rank_zero_only, "rank", 0))
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _fail(err: UserError) -> None:
    """Exit with status 2 after one line on stderr (from global rank 0 only: DDP ranks stop together)."""
    if global_rank() == 0:
        print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def available_accelerators() -> str:
    """The accelerators this machine has, e.g. `cpu` or `cpu, cuda (2 devices)`."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append(f"cuda ({torch.cuda.device_count()} devices)")
    if torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


def inference_device(accelerator: str) -> torch.device:
    """The device `lnmt-eval` / `lnmt-translate` run on: `cpu`, `gpu`/`cuda`, or `auto` (a GPU when there is
    one); a GPU that is not there is a one-line `ConfigError`."""
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"accelerator={accelerator}, but this machine has no CUDA GPU; available here: "
                              f"{available_accelerators()} (use accelerator=cpu)")
        return torch.device("cuda")
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator != "cpu":
        raise ConfigError(f"unknown accelerator {accelerator!r}; valid values: cpu, gpu, cuda, auto")
    return torch.device("cpu")


def decoding_overrides(decoding: DecodingConfig, **given: Any) -> DecodingConfig:
    """A checkpoint's decoding settings with the flat keys `lnmt-eval` / `lnmt-translate` were given (None: keep); a
    value no search can use (`beam_size=0`), or options that contradict each other (`top_k` with beam search), is a
    one-line `ConfigError`."""
    try:
        return decoding.with_overrides(**given)
    except ValueError as err:
        raise ConfigError(str(err).replace("decoding.", "")) from None
