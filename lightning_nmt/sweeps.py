"""Sweep helpers: which overrides a multirun sweeps (for wandb names and tags), and the deduplication of
jobs whose *effective* configuration is the same (e.g. `model=basic` crossed with three attention scores:
the basic model ignores the score, so it is trained once and the other two jobs point at it)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lightning_nmt.data.atomic import atomic_write_text
from lightning_nmt.models import MODEL_TYPES, model_keys

log = logging.getLogger("lightning_nmt")

DEDUP_DIR = ".dedup"
"""Folder of the sweep directory holding one claim file per effective configuration."""

IGNORED_KEYS = ("paths", "logger", "task_name", "resume", "ckpt_path", "hydra")
"""Top-level keys that do not change what a job trains or measures."""

IGNORED_SUBKEYS = {"trainer": ("enable_progress_bar",), "data": ("cache_dir", "num_workers")}
"""Keys inside sections that change where or how fast, not what, a job trains."""

def effective_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved train config that decides the result: without paths, logger and resume keys,
    and without the model keys the chosen model type does not read."""
    eff = {k: _plain(cfg[k]) for k in cfg if k not in IGNORED_KEYS}
    for section, keys in IGNORED_SUBKEYS.items():
        if isinstance(eff.get(section), dict):
            eff[section] = {k: v for k, v in eff[section].items() if k not in keys}
    model = dict(eff.get("model", {}))
    if model.get("type") in MODEL_TYPES:
        eff["model"] = {k: model.get(k) for k in ["type", *model_keys(model["type"])]}
    return eff


def _plain(node: Any) -> Any:
    """A resolved plain copy of a config node (resolved against its root config)."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if OmegaConf.is_config(node) else node


def config_hash(cfg: Mapping[str, Any]) -> str:
    """A stable hash of the effective config."""
    text = json.dumps(effective_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def claim(sweep_dir: str | Path, output_dir: str | Path, cfg: Mapping[str, Any]) -> Path | None:
    """Claim this job's effective config in the sweep directory (atomically, O_EXCL).

    Returns None when this job owns the config (first to claim it, or the same job resumed), else the
    directory of the job that claimed it first: this job is a duplicate and need not train.
    """
    output_dir = Path(output_dir).resolve()
    path = Path(sweep_dir) / DEDUP_DIR / f"{config_hash(cfg)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        owner = Path(_read_owner(path))
        return None if owner == output_dir else owner
    with os.fdopen(fd, "w") as f:
        json.dump({"job_dir": str(output_dir)}, f)
    return None


def _read_owner(path: Path) -> str:
    """The owner of a claim; a claim being written this instant is empty for a moment, so retry briefly."""
    for _ in range(50):
        text = path.read_text()
        if text:
            return json.loads(text)["job_dir"]
        time.sleep(0.1)
    raise RuntimeError(f"empty dedup claim file {path}")


def swept_keys(sweep_dir: str | Path | None, hydra_sweeper_params: Mapping[str, Any] | None) -> set[str]:
    """Keys a multirun varies: those with sweep syntax (`a=1,2`, `range(...)`, `choice(...)`) on the command
    line (read from the sweep's multirun.yaml) and those of `hydra.sweeper.params`."""
    keys = {k.lstrip("+~") for k in (hydra_sweeper_params or {})}
    path = Path(sweep_dir) / "multirun.yaml" if sweep_dir else None
    if path is not None and path.is_file():
        from hydra.core.override_parser.overrides_parser import OverridesParser

        task = OmegaConf.load(path).hydra.overrides.task
        for override in OverridesParser.create().parse_overrides(list(task)):
            if override.is_sweep_override():
                keys.add(override.get_key_element().lstrip("+~"))
    return keys


def swept_overrides(overrides: list[str], keys: set[str]) -> list[str]:
    """The job's overrides whose key is swept, in the job's order (`model=basic`, `model.attention=dot`)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys]


def skip_duplicate(cfg: Mapping[str, Any], output_dir: Path, runtime: Mapping[str, Any]) -> dict[str, Any] | None:
    """In a multirun, a job whose effective config an earlier job of the sweep claimed is not trained: its
    metrics.json says `duplicate_of: <that job's dir>`. Returns None when the job must train, else the
    marker merged over the original's metrics when they exist already (the value an Optuna sweep needs)."""
    if not runtime.get("multirun"):
        return None
    original = claim(runtime["sweep_dir"], output_dir, cfg)
    if original is None:
        return None
    marker = {"duplicate_of": str(original)}
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "metrics.json", json.dumps(marker, indent=2) + "\n")
    log.info("same effective config as %s: not trained again (metrics.json points there)", original)
    metrics_file = original / "metrics.json"
    return {**json.loads(metrics_file.read_text()), **marker} if metrics_file.is_file() else marker
