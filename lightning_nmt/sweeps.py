"""Sweep helpers: which overrides a multirun sweeps (for wandb names and tags), and the deduplication of
jobs whose *effective* configuration is the same (e.g. `model=basic` crossed with three attention scores:
the basic model ignores the score, so it is trained once and the other two jobs point at it)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightning_nmt.atomic import atomic_write_text
from lightning_nmt.errors import ConfigError
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


# ---- a failed job is a result; a rerun finishes the sweep ------------------------------------------------------
JOBS_FILE = ".jobs.jsonl"
"""File of the sweep directory with one line per job this invocation of the sweep ran: its directory, status and
error (appended by each job, so it works with every launcher; emptied when the sweep starts)."""

FINISHED, FAILED = "finished", "failed"


def finished_metrics(cfg: Mapping[str, Any], output_dir: Path) -> dict[str, Any] | None:
    """The metrics of a job that finished earlier in `output_dir` with the same effective config, else None.

    A metrics.json without `status` or `config_hash` (written before they existed) counts as finished when it
    has `steps`; one of another config is a `ConfigError` (the sweep directory was reused for another sweep)."""
    path = output_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("status", FINISHED if "steps" in metrics else None) != FINISHED:
        return None
    wanted = config_hash(cfg)
    if metrics.get("config_hash", wanted) != wanted:
        raise ConfigError(f"{output_dir} holds a finished job of another configuration; run this sweep in "
                          "another hydra.sweep.dir")
    return metrics


def failure_metrics(cfg: Mapping[str, Any], err: Exception, step: int) -> dict[str, Any]:
    """What metrics.json of a failed job says: status, the error line, its type and the step reached."""
    error = " ".join(str(err).split()) or type(err).__name__
    return {"status": FAILED, "error": error, "error_type": type(err).__name__, "step": step,
            "config_hash": config_hash(cfg)}


def write_failure(output_dir: Path, metrics: dict[str, Any]) -> None:
    """Write a failed job's metrics.json, unless the directory holds a finished job's (which is kept)."""
    path = output_dir / "metrics.json"
    if path.is_file() and json.loads(path.read_text()).get("status") == FINISHED:
        return
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")


def report_job(sweep_dir: str | Path, output_dir: Path, metrics: Mapping[str, Any]) -> None:
    """Append this job's outcome to the sweep's `JOBS_FILE` (one short O_APPEND write: lines never mix)."""
    status = FAILED if metrics.get("status") == FAILED else FINISHED
    line = {"dir": str(output_dir), "status": status, "error": metrics.get("error")}
    with open(Path(sweep_dir) / JOBS_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def sweep_summary(sweep_dir: str | Path) -> tuple[str, bool]:
    """One line on the jobs of this sweep (`12 jobs: 10 finished, 2 failed: <dirs>`) and whether any failed."""
    path = Path(sweep_dir) / JOBS_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    jobs = {job["dir"]: job for job in map(json.loads, lines)}  # a job reported twice (requeued): its last line
    failed = [d for d, job in jobs.items() if job["status"] == FAILED]
    text = f"{len(jobs)} jobs: {len(jobs) - len(failed)} finished, {len(failed)} failed"
    if failed:
        text += ": " + " ".join(os.path.relpath(d, sweep_dir) for d in failed)
    return text, bool(failed)


class SweepSummary(Callback):
    """Hydra callback of `lnmt-train -m`: empties `JOBS_FILE` when the sweep starts; at its end prints
    `sweep_summary` and exits with status 1 if a job failed (each failed job's metrics.json says why)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / JOBS_FILE).write_text("")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        text, any_failed = sweep_summary(config.hydra.sweep.dir)
        print(text, file=sys.stderr if any_failed else sys.stdout)
        if any_failed:
            sys.exit(1)
