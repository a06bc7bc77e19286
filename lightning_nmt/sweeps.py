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
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightning_nmt import record
from lightning_nmt.errors import ConfigError
from lightning_nmt.models import MODEL_TYPES
from lightning_nmt.optim import OPTIMIZERS, SCHEDULES
from lightning_nmt.record import DUPLICATE, FAILED, FINISHED, RunRecord

log = logging.getLogger("lightning_nmt")

DEDUP_DIR = ".dedup"
"""Folder of the sweep directory holding one claim file per effective configuration."""

IGNORED_KEYS = ("paths", "logger", "task_name", "resume", "ckpt_path", "hydra")
"""Top-level keys that do not change what a job trains or measures."""

IGNORED_SUBKEYS = {"trainer": ("enable_progress_bar",), "data": ("cache_dir", "num_workers")}
"""Keys inside sections that change where or how fast, not what, a job trains."""

CHOICES = {"model": ("type", MODEL_TYPES, ()), "optim": ("name", OPTIMIZERS, ("max_nonfinite_steps",)),
           "scheduler": ("name", SCHEDULES, ())}
"""Sections whose keys depend on a registered choice: the key naming it, the registry, the keys every choice reads."""


def effective_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved train config that decides the result: without paths, logger and resume keys,
    and without the model, optimizer and schedule keys the chosen model type, optimizer and schedule do not read
    (so a config written by an older version, with other unread keys, compares equal)."""
    eff = {k: _plain(cfg[k]) for k in cfg if k not in IGNORED_KEYS}
    for section, keys in IGNORED_SUBKEYS.items():
        if isinstance(eff.get(section), dict):
            eff[section] = {k: v for k, v in eff[section].items() if k not in keys}
    for section, (name_key, table, common) in CHOICES.items():
        chosen = dict(eff.get(section) or {})
        if chosen.get(name_key) in table:
            read = [f.name for f in fields(table[chosen[name_key]])]
            eff[section] = {k: chosen.get(k) for k in [name_key, *read, *common]}
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
    marker = RunRecord(status=DUPLICATE, duplicate_of=str(original), seed=cfg.get("seed"), config_hash=config_hash(cfg))
    record.write(output_dir, marker)
    log.info("same effective config as %s: not trained again (metrics.json points there)", original)
    first = record.read(original)
    # the original's outcome (its status too: a duplicate of a failed job is a failed trial) and where it lies
    return {**first.to_dict(), "duplicate_of": str(original)} if first is not None else marker.to_dict()


# ---- a failed job is a result; a rerun finishes the sweep ------------------------------------------------------
def finished_metrics(cfg: Mapping[str, Any], output_dir: Path) -> dict[str, Any] | None:
    """The metrics of a job that finished earlier in `output_dir` with the same effective config, else None.

    A record without `config_hash` (written before it existed) counts as the same config; one of another config
    is a `ConfigError` (the sweep directory was reused for another sweep)."""
    earlier = record.read(output_dir)
    if earlier is None or not earlier.finished:
        return None
    wanted = config_hash(cfg)
    if (earlier.config_hash or wanted) != wanted:
        raise ConfigError(f"{output_dir} holds a finished job of another configuration; run this sweep in "
                          "another hydra.sweep.dir")
    return earlier.to_dict()


def failure_record(cfg: Mapping[str, Any], err: Exception, step: int) -> RunRecord:
    """What metrics.json of a failed job says: status, the error line, its type and the step reached."""
    error = " ".join(str(err).split()) or type(err).__name__
    return RunRecord(status=FAILED, error=error, error_type=type(err).__name__, step=step, seed=cfg.get("seed"),
                     config_hash=config_hash(cfg), provenance=record.provenance())


def write_failure(output_dir: Path, failure: RunRecord) -> None:
    """Write a failed job's metrics.json, unless the directory holds a finished job's (which is kept)."""
    earlier = record.read(output_dir)
    if earlier is None or not earlier.finished:
        record.write(output_dir, failure)


JOBS_FILE = ".jobs.jsonl"
"""File of the sweep directory with one line per job this invocation of the sweep ran: its directory, status and
error (appended by each job, so it works with every launcher; emptied when the sweep starts)."""


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
