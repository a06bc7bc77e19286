"""Glue for data-parallel training (DDP, FSDP, DeepSpeed) with Hydra.

- `install_hydra_relaunch()`: Lightning's `strategy=ddp` starts ranks 1.. by re-running the command line;
  under `-m` that would re-run the whole sweep. The patched command re-runs only this job's overrides, in
  run mode, in this job's directory.
- `end_job()`: after each job, leave no process group and no rank variables behind, so the next job of a
  multirun starts its own.
- `effective_batch()`: the batch size and learning rate one optimizer step really uses.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig

log = logging.getLogger("lightning_nmt")

RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Hydra overrides a relaunched rank must not repeat: it runs one job, in run mode, in the parent's directory.
_PARENT_ONLY = ("hydra.run.", "hydra.sweep.", "hydra.mode", "hydra.job.name", "hydra.output_subdir",
                "hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper")


def relaunch_command(local_rank: int) -> tuple[list[str], str]:
    """The command and working directory that start rank `local_rank` of the current Hydra job.

    Replaces `lightning.pytorch.strategies.launchers.subprocess_script._hydra_subprocess_cmd`, which
    repeats `sys.argv` (so `-m` too) and would make every rank run the whole sweep.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += [*config_dir_flags(hc.runtime.config_sources), f"--config-name={hc.job.config_name}",
                *child_overrides(hc.overrides.task, hc.overrides.hydra),
                f"hydra.run.dir={_quote(hc.runtime.output_dir)}",
                f"hydra.job.name={hc.job.name}_rank{local_rank}", "hydra.output_subdir=null"]
    return command, get_original_cwd()


def config_dir_flags(sources: Sequence[Any]) -> list[str]:
    """`--config-path` / `--config-dir` flags that give a relaunched rank the parent's config directories:
    the primary one and those added with `--config-dir` (a user's own experiment configs, say)."""
    flags = {"main": "--config-path", "command-line": "--config-dir"}
    return [f"{flags[s.provider]}={s.path}" for s in sources if s.schema == "file" and s.provider in flags]


def child_overrides(task: Sequence[str], hydra: Sequence[str]) -> list[str]:
    """The job's own overrides plus the Hydra overrides that still apply to one job in run mode."""
    return [*task, *(o for o in hydra if not o.lstrip("+~").startswith(_PARENT_ONLY))]


def _quote(value: str) -> str:
    """A Hydra override value that stays one string (a directory may hold `,` `=` or spaces)."""
    return "'" + value.replace("'", "\\'") + "'"


def torchrun_rank_overrides(argv: Sequence[str]) -> list[str]:
    """Hydra overrides for a process torchrun (or another launcher setting `RANK`) started as global rank > 0:
    no `.hydra` copy and a log of its own (`train_rank<k>.log`) in the run directory, where rank 0 writes the
    rest. None for rank 0, and for the ranks Lightning relaunches (they get theirs from `relaunch_command`)."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 or any(arg.startswith("hydra.job.name=") for arg in argv):
        return []
    return ["hydra.output_subdir=null", f"hydra.job.name=train_rank{rank}"]


def install_hydra_relaunch() -> None:
    """Make Lightning's DDP launcher start the other ranks with `relaunch_command` (idempotent)."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = relaunch_command


def end_job() -> None:
    """Destroy the process group and forget the rank variables Lightning's launcher put in the
    environment; otherwise the next job of a multirun joins the finished job's group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in RANK_VARIABLES:
        os.environ.pop(name, None)


def effective_batch(cfg: DictConfig, world: int) -> dict[str, Any]:
    """What one optimizer step uses: at most `max_tokens x world_size x accumulate_grad_batches` padded
    tokens, and the configured learning rate (not rescaled with the batch)."""
    accumulate = int(cfg.trainer.accumulate_grad_batches)
    return {
        "max_tokens_per_rank": int(cfg.data.max_tokens),
        "world_size": world,
        "accumulate_grad_batches": accumulate,
        "max_tokens_per_step": int(cfg.data.max_tokens) * world * accumulate,
        "lr": float(cfg.optim.lr),
    }
