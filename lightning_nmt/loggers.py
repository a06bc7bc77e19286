"""The run's logger (`logger.type`: none, csv, tensorboard, wandb), continued by a resumed run."""

from __future__ import annotations

import logging
import netrc
import os
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from lightning_nmt.atomic import atomic_write_text
from lightning_nmt.cli import to_dict
from lightning_nmt.resume import ResumedCSVLogger
from lightning_nmt.sweeps import swept_overrides

log = logging.getLogger("lightning_nmt")

WANDB_ID_FILE = "wandb_id.txt"


def build_logger(cfg: DictConfig, output_dir: Path, runtime: dict[str, Any] | None = None,
                 resume_step: int | None = None) -> list[Logger]:
    """The configured logger; `runtime`: the Hydra job's facts (`app.hydra_runtime`), `resume_step`: the step of the
    checkpoint this run continues from, if any."""
    kind = to_dict(cfg.logger)["type"]
    if kind == "none":
        return []
    if kind == "csv":
        if resume_step is None:
            return [CSVLogger(save_dir=str(output_dir), name="csv", version="")]
        return [ResumedCSVLogger(save_dir=str(output_dir), name="csv", version="", resume_step=resume_step)]
    if kind == "tensorboard":  # purge_step: TensorBoard hides the killed run's events from that step on
        return [TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", version="", purge_step=resume_step)]
    return [build_wandb_logger(cfg, output_dir, runtime or {})]


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def build_wandb_logger(cfg: DictConfig, output_dir: Path, runtime: dict[str, Any]) -> WandbLogger:
    """One wandb run per job; its id lives in the run directory so a resumed run continues it."""
    lcfg = cfg.logger
    offline = lcfg.offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun")
    if not offline and not _wandb_has_credentials():
        offline = True
        log.warning("wandb: no credentials found, logging offline. Upload later with: "
                    "wandb sync %s/wandb/offline-run-*", output_dir)
    if offline:
        os.environ["WANDB_MODE"] = "offline"  # never prompt for a login
    id_file = output_dir / WANDB_ID_FILE
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:8]  # wandb's own id format (wandb.util.generate_id is gone in 0.31)
        if rank_zero_only.rank == 0:  # ranks started at once (torchrun, SLURM) must not race for the file
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(id_file, run_id + "\n")
    overrides = runtime.get("overrides", [])
    if runtime.get("multirun"):
        group = lcfg.group or f"{cfg.task_name}-{Path(runtime['sweep_dir']).name}"
    else:
        group = lcfg.group or cfg.task_name
    swept = swept_overrides(overrides, set(runtime.get("swept_keys", [])))
    name = lcfg.name or ",".join(swept) or runtime.get("override_dirname") or output_dir.name
    tags = [tag[:64] for tag in [*lcfg.tags, *overrides] if not tag.startswith(("resume", "ckpt_path", "hydra."))]
    logger = WandbLogger(
        project=lcfg.project, entity=lcfg.entity, group=group, name=name, tags=tags, id=run_id,
        save_dir=str(output_dir), offline=offline, log_model=lcfg.log_model, resume="allow",
    )
    return logger
