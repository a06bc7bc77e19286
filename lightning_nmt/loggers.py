"""The run's loggers, any number at once (`logger=csv`, `logger='[csv,wandb]'`, `logger=many`: csv, tensorboard,
wandb, mlflow), each continued by a resumed run; and the names that group a job's runs on wandb and MLflow."""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import re
import uuid
from argparse import Namespace
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from lightning_nmt.atomic import atomic_write_text
from lightning_nmt.config import LoggerType, enabled_loggers
from lightning_nmt.resume import ResumedCSVLogger
from lightning_nmt.sweeps import IGNORED_KEYS, IGNORED_SUBKEYS, swept_overrides

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("lightning_nmt")

WANDB_ID_FILE = "wandb_id.txt"
MLFLOW_ID_FILE = "mlflow_id.txt"
MLFLOW_DB = "mlflow.db"
GROUP_LIMIT = 128
"""wandb's limit on a group name (and so on the configuration's name here)."""
WANDB_SHORT_LIMIT = 64
"""wandb's limit on a tag and a job type."""


def build_logger(cfg: DictConfig, output_dir: Path, runtime: dict[str, Any] | None = None,
                 resume_step: int | None = None) -> list[Logger]:
    """The chosen loggers (`config.enabled_loggers`); `runtime`: the Hydra job's facts (`app.hydra_runtime`),
    `resume_step`: the step of the checkpoint this run continues from, if any."""
    builders: dict[LoggerType, Callable[[DictConfig, Path, dict[str, Any], int | None], Logger]] = {
        LoggerType.csv: build_csv_logger, LoggerType.tensorboard: build_tensorboard_logger,
        LoggerType.wandb: build_wandb_logger, LoggerType.mlflow: build_mlflow_logger,
    }
    return [builders[kind](cfg, output_dir, runtime or {}, resume_step) for kind in enabled_loggers(cfg.logger)]


def build_csv_logger(cfg: DictConfig, output_dir: Path, runtime: dict[str, Any], resume_step: int | None) -> Logger:
    """<run dir>/csv/metrics.csv; a resumed run keeps the rows before its checkpoint's step."""
    flush = cfg.logger.csv.flush_logs_every_n_steps
    if resume_step is None:
        return CSVLogger(save_dir=str(output_dir), name="csv", version="", flush_logs_every_n_steps=flush)
    return ResumedCSVLogger(save_dir=str(output_dir), name="csv", version="", flush_logs_every_n_steps=flush,
                            resume_step=resume_step)


def build_tensorboard_logger(cfg: DictConfig, output_dir: Path, runtime: dict[str, Any],
                             resume_step: int | None) -> Logger:
    """<run dir>/tensorboard/; purge_step: TensorBoard hides the killed run's events from that step on."""
    return TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", version="", purge_step=resume_step,
                             default_hp_metric=cfg.logger.tensorboard.default_hp_metric)


# ---- names shared by wandb and MLflow ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunNames:
    """How a job's run is named and grouped on a tracking service."""

    group: str  # the configuration: runs of every seed of it, across sweeps
    name: str  # the swept overrides (the run within its sweep)
    sweep: str | None  # <task_name>-<sweep dir name> under -m, else None
    seed: int
    overrides: list[str]  # the job's overrides but resume, ckpt_path, hydra and paths ones


def run_names(cfg: DictConfig, output_dir: Path, runtime: dict[str, Any]) -> RunNames:
    """The names of this job's run (`configuration_group`, the swept overrides, the sweep's name)."""
    overrides = list(runtime.get("overrides", []))
    swept = swept_overrides(overrides, set(runtime.get("swept_keys", [])))
    sweep = f"{cfg.task_name}-{Path(runtime['sweep_dir']).name}" if runtime.get("multirun") else None
    return RunNames(
        group=configuration_group(cfg.task_name, overrides),
        name=",".join(swept) or runtime.get("override_dirname") or output_dir.name,
        sweep=sweep, seed=int(cfg.seed),
        overrides=[o for o in overrides if _key_path(o)[0] not in ("resume", "ckpt_path", "hydra", "paths")],
    )


def configuration_group(task_name: str, overrides: list[str]) -> str:
    """`<task_name>:<overrides>`: the overrides that change what a job trains, sorted, without the seed and the keys
    of `sweeps.IGNORED_KEYS`/`IGNORED_SUBKEYS` (an `experiment=<task_name>` is said by the prefix). The same
    configuration gets the same group in any sweep; at most `GROUP_LIMIT` characters (`shorten`)."""
    kept = sorted(o for o in overrides if _changes_configuration(o) and o != f"experiment={task_name}")
    return shorten(f"{task_name}:{','.join(kept)}" if kept else task_name, GROUP_LIMIT)


def _key_path(override: str) -> list[str]:
    """The parts of an override's key: `+data.tokenizer.vocab_size=8000` -> data, tokenizer, vocab_size."""
    return re.split(r"[./]", override.split("=", 1)[0].lstrip("+~"))


def _changes_configuration(override: str) -> bool:
    section, *rest = _key_path(override)
    if section == "seed" or section in IGNORED_KEYS:
        return False
    return not (len(rest) == 1 and rest[0] in IGNORED_SUBKEYS.get(section, ()))


def shorten(text: str, limit: int) -> str:
    """`text`, or when longer than `limit` its start, `~` and 8 hex digits of the SHA-256 of the whole text (the same
    text always gives the same result; texts that differ after the cut end differently)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 9]}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _run_id_file(path: Path, make_id: Callable[[], str]) -> str:
    """The run id kept in `path`, or a new one written there (by rank 0 only: ranks started at once must not race)."""
    if path.is_file():
        return path.read_text().strip()
    run_id = make_id()
    if rank_zero_only.rank == 0:
        atomic_write_text(path, run_id + "\n")
    return run_id


# ---- wandb -------------------------------------------------------------------------------------------------------

def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def build_wandb_logger(cfg: DictConfig, output_dir: Path, runtime: dict[str, Any],
                       resume_step: int | None = None) -> WandbLogger:
    """One wandb run per job, in the group of its configuration (`configuration_group`), with the sweep's name as
    job type; its id lives in the run directory so a resumed run continues it."""
    lcfg = cfg.logger.wandb
    offline = lcfg.offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun")
    if not offline and not _wandb_has_credentials():
        offline = True
        log.warning("wandb: no credentials found, logging offline. Upload later with: "
                    "wandb sync %s/wandb/offline-run-*", output_dir)
    if offline:
        os.environ["WANDB_MODE"] = "offline"  # never prompt for a login
    run_id = _run_id_file(output_dir / WANDB_ID_FILE, lambda: uuid.uuid4().hex[:8])  # wandb's own id format
    names = run_names(cfg, output_dir, runtime)
    tags = [*lcfg.tags, f"seed={names.seed}", *([f"sweep={names.sweep}"] if names.sweep else []), *names.overrides]
    return WandbLogger(
        project=lcfg.project, entity=lcfg.entity, group=lcfg.group or names.group, name=lcfg.name or names.name,
        job_type=shorten(names.sweep or "run", WANDB_SHORT_LIMIT),
        tags=list(dict.fromkeys(shorten(tag, WANDB_SHORT_LIMIT) for tag in tags)), id=run_id,
        save_dir=str(output_dir), offline=offline, log_model=lcfg.log_model, resume="allow",
    )


# ---- MLflow ------------------------------------------------------------------------------------------------------

def build_mlflow_logger(cfg: DictConfig, output_dir: Path, runtime: dict[str, Any],
                        resume_step: int | None = None) -> MLFlowLogger:
    """One MLflow run per job in the experiment `task_name`, named and tagged as on wandb. Without
    `logger.mlflow.tracking_uri` (or MLFLOW_TRACKING_URI) a local store: sqlite:///<sweep dir, or run dir>/mlflow.db
    with artifacts in mlruns/ beside it. The run's id lives in the run directory so a resumed run continues it."""
    lcfg = cfg.logger.mlflow
    store = Path(runtime["sweep_dir"] if runtime.get("multirun") else output_dir).resolve()
    uri = lcfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    names = run_names(cfg, output_dir, runtime)
    tags = {"seed": str(names.seed), "group": names.group, **({"sweep": names.sweep} if names.sweep else {}),
            "run_dir": str(output_dir), **lcfg.tags}
    return RunMLFlowLogger(
        id_file=output_dir / MLFLOW_ID_FILE, local_store=None if uri else store,
        experiment_name=lcfg.experiment_name or cfg.task_name, run_name=lcfg.run_name or names.name, tags=tags,
        tracking_uri=uri or f"sqlite:///{store / MLFLOW_DB}", log_model=lcfg.log_model,
        artifact_location=None if uri else str(store / "mlruns"),
    )


class RunMLFlowLogger(MLFlowLogger):
    """Lightning's `MLFlowLogger`, continuing the run whose id is in `id_file` (or starting one and writing its id
    there), with hyperparameters MLflow accepts: values cut at MLflow's limit (Lightning cuts at 250 characters) and,
    on a continued run, only the keys not logged yet (MLflow refuses a second value for a key: a changed one, such as
    `config/resume`, keeps its first value and is named in the log). `local_store`: the directory of a local sqlite
    store, created under a file lock so that concurrent jobs of a sweep share it."""

    def __init__(self, *, id_file: Path, local_store: Path | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._id_file = id_file
        self._local_store = local_store

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        if not self._initialized:
            self._start_run()
        return self._mlflow_client

    def _start_run(self) -> None:
        client, run_id = self._mlflow_client, self._stored_run_id()
        if run_id is None:
            from mlflow.tracking.context.registry import resolve_tags  # user, source, git commit

            run = client.create_run(self._experiment_or_create(), run_name=self._run_name, tags=resolve_tags(self.tags))
            run_id = run.info.run_id
            atomic_write_text(self._id_file, run_id + "\n")
        else:
            client.update_run(run_id, status="RUNNING")
        self._run_id, self._experiment_id = run_id, client.get_run(run_id).info.experiment_id
        self._initialized = True

    def _stored_run_id(self) -> str | None:
        """The run id of `id_file` when the store has that run (a run directory logged to another store starts a
        new run there)."""
        from mlflow.exceptions import MlflowException

        if not self._id_file.is_file():
            return None
        run_id = self._id_file.read_text().strip()
        try:
            with self._store_lock():
                self._mlflow_client.get_run(run_id)
        except MlflowException:
            log.warning("mlflow: run %s of %s is not in %s: starting a new run", run_id, self._id_file,
                        self._tracking_uri)
            return None
        return run_id

    def _experiment_or_create(self) -> str:
        """The experiment's id, creating it if needed (a job creating it at the same moment is no error)."""
        from mlflow.exceptions import MlflowException

        with self._store_lock():
            experiment = self._mlflow_client.get_experiment_by_name(self._experiment_name)
            if experiment is not None:
                if experiment.lifecycle_stage == "deleted":
                    self._mlflow_client.restore_experiment(experiment.experiment_id)
                return experiment.experiment_id
            try:
                return self._mlflow_client.create_experiment(self._experiment_name, self._artifact_location)
            except MlflowException:
                return self._mlflow_client.get_experiment_by_name(self._experiment_name).experiment_id

    def _store_lock(self) -> AbstractContextManager[Any]:
        """A lock on the local store (its first use creates the database tables), else nothing."""
        if self._local_store is None:
            return nullcontext()
        self._local_store.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self._local_store / f"{MLFLOW_DB}.lock"))

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        flat = {key: str(value)[:MAX_PARAM_VAL_LENGTH] for key, value in _flatten_dict(_convert_params(params)).items()}
        logged = self.experiment.get_run(self.run_id).data.params
        changed = sorted(key for key, value in flat.items() if logged.get(key, value) != value)
        if changed:
            log.info("mlflow keeps the first value of a run's parameters: %s logged before, different now",
                     ", ".join(f"{key}={logged[key]}" for key in changed))
        new = [Param(key, value) for key, value in flat.items() if key not in logged]
        for start in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.experiment.log_batch(run_id=self.run_id, params=new[start:start + MAX_PARAMS_TAGS_PER_BATCH])
