"""What the entry points do, as importable functions: build the datamodule, module, trainer and logger
from a composed config, train, test, and summarise the run in its directory."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from lightning_nmt import record
from lightning_nmt.average import average_best, check_average_option
from lightning_nmt.callbacks import AttentionHeatmaps, ExampleTranslations, RunSummary, StepProgressBar, TestOutputs
from lightning_nmt.checkpoint import read_checkpoint
from lightning_nmt.cli import available_accelerators, to_dict
from lightning_nmt.config import check_values
from lightning_nmt.data import ParallelDataModule
from lightning_nmt.distributed import effective_batch, end_job, install_hydra_relaunch
from lightning_nmt.errors import CheckpointError, ConfigError, TrainingDiverged, UserError, WriteError, is_write_error
from lightning_nmt.kernels import cpu as cpu_kernels
from lightning_nmt.loggers import build_logger
from lightning_nmt.metrics import scoring
from lightning_nmt.models import model_differences
from lightning_nmt.module import TranslationModule
from lightning_nmt.record import FINISHED, RunRecord
from lightning_nmt.resume import (
    AtomicCheckpointIO,
    LastCheckpoint,
    Preempted,
    ResumeState,
    cluster_plugins,
)
from lightning_nmt.sweeps import (
    config_hash,
    failure_record,
    finished_metrics,
    report_job,
    skip_duplicate,
    swept_keys,
    write_failure,
)

log = logging.getLogger("lightning_nmt")

LAST_CKPT = "last.ckpt"


def hydra_runtime() -> dict[str, Any]:
    """Facts about the current Hydra job (empty when the config was composed in a test)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:
        return {}
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return {
        "multirun": multirun,
        "sweep_dir": hc.sweep.dir if multirun else None,
        "output_dir": hc.runtime.output_dir,
        "overrides": list(hc.overrides.task),
        "override_dirname": hc.job.override_dirname,
        "job_num": hc.job.num if multirun else None,
        "swept_keys": sorted(swept_keys(hc.sweep.dir, hc.sweeper.get("params"))) if multirun else [],
    }


def build_datamodule(data_cfg: DictConfig, seed: int) -> ParallelDataModule:
    return ParallelDataModule(**to_dict(data_cfg), seed=seed)


def build_module(cfg: DictConfig, datamodule: ParallelDataModule) -> TranslationModule:
    tokenizer = datamodule.tokenizer
    return TranslationModule(
        model=to_dict(cfg.model),
        src_vocab_size=tokenizer.src_vocab_size,
        tgt_vocab_size=tokenizer.tgt_vocab_size,
        optim=to_dict(cfg.optim),
        scheduler=to_dict(cfg.scheduler),
        decoding=to_dict(cfg.decoding),
        label_smoothing=cfg.label_smoothing,
        data=to_dict(cfg.data),
        tokenizer=tokenizer,
        speedups=cpu_kernels.setting(cfg.get("speedups", "auto")),
    )


def build_callbacks(cfg: DictConfig, output_dir: Path, has_logger: bool) -> list[L.Callback]:
    """Run outputs, and checkpoints: the best k by `monitor` at each validation (a resumed run overwrites
    its own files rather than adding `-v1` copies), and last.ckpt (see `LastCheckpoint`)."""
    ckpt, ckpt_dir = cfg.callbacks.model_checkpoint, output_dir / "checkpoints"
    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="best-step{step:06d}-bleu{val/bleu:.2f}",
            auto_insert_metric_name=False,
            monitor=ckpt.monitor, mode=ckpt.mode, save_top_k=ckpt.save_top_k, enable_version_counter=False,
        ),
        RunSummary(),
        ExampleTranslations(cfg.callbacks.num_examples),
        TestOutputs(output_dir),
        AttentionHeatmaps(output_dir, cfg.callbacks.num_heatmaps),
        ResumeState(),
        LastCheckpoint(ckpt_dir / LAST_CKPT, ckpt.every_n_train_steps),
    ]
    if cfg.callbacks.early_stopping.enabled:
        es = cfg.callbacks.early_stopping
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience))
    if has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(StepProgressBar())
    return callbacks


def build_trainer(cfg: DictConfig, output_dir: Path, loggers: list[Logger], callbacks: list[L.Callback],
                  checkpoint_io: AtomicCheckpointIO) -> L.Trainer:
    """The Lightning Trainer of `cfg.trainer`; an accelerator, device count or strategy this machine cannot
    run is a one-line `ConfigError` listing what is available, another value Lightning refuses one naming it."""
    try:
        return L.Trainer(
            **to_dict(cfg.trainer), default_root_dir=str(output_dir), logger=loggers or False,
            callbacks=callbacks, use_distributed_sampler=False, plugins=[checkpoint_io, *cluster_plugins()],
        )
    except MisconfigurationException as err:
        raise ConfigError(f"trainer: {_one_line(str(err))} (trainer.accelerator={cfg.trainer.accelerator}, "
                          f"trainer.devices={cfg.trainer.devices}; available here: {available_accelerators()})"
                          ) from None
    except ValueError as err:  # a value Lightning refuses, e.g. trainer.precision=fp8 (it lists the valid ones)
        raise ConfigError(f"trainer: {_one_line(str(err))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint to continue from: `ckpt_path=...`, or with `resume=auto` the run's last.ckpt.
    Without either, a last.ckpt already in the run directory is an error rather than overwritten."""
    if cfg.ckpt_path:
        return str(cfg.ckpt_path)
    last = output_dir / "checkpoints" / LAST_CKPT
    if to_dict(cfg)["resume"] == "auto":
        if last.is_file():
            log.info("resume=auto: continuing from %s", last)
            return str(last)
        log.info("resume=auto: no checkpoint in %s, starting fresh", output_dir / "checkpoints")
    elif last.is_file():
        raise CheckpointError(f"{last} exists: pass resume=auto to continue that run, or choose another "
                              "hydra.run.dir to start a new one")
    return None


def check_compatible(module: TranslationModule, ckpt_path: str) -> int:
    """Refuse a checkpoint whose model or vocabulary differs from this run's, naming the difference;
    returns the checkpoint's global step."""
    checkpoint = read_checkpoint(ckpt_path)
    saved = checkpoint["hyper_parameters"]
    wanted = dict(module.hparams)
    diffs = [f"{key}: checkpoint {old!r} vs config {new!r}" for key, old, new in model_differences(saved, wanted)]
    if diffs:
        raise CheckpointError(f"{ckpt_path} was trained with a different configuration: " + "; ".join(diffs))
    return int(checkpoint.get("global_step", 0))


C = TypeVar("C", bound=L.Callback)


@dataclass
class Run:
    """Everything one training job is made of, built by `build_run`."""

    output_dir: Path
    datamodule: ParallelDataModule
    module: TranslationModule
    trainer: L.Trainer
    callbacks: list[L.Callback]
    loggers: list[Logger]
    checkpoint_io: AtomicCheckpointIO
    ckpt_path: str | None  # the checkpoint a resumed run continues from

    def callback(self, kind: type[C]) -> C:
        return next(cb for cb in self.callbacks if isinstance(cb, kind))


def setup_process() -> None:
    """The process-wide side effects of `lnmt-train`, in one place: Lightning's DDP launcher relaunches ranks
    with this job's overrides only (`install_hydra_relaunch`)."""
    install_hydra_relaunch()


def build_run(cfg: DictConfig, output_dir: Path) -> Run:
    """Data, module, loggers, callbacks and trainer of a job; checks the values (`config.check_values`, before
    any data is read) and a checkpoint to resume from first. Warns of bf16 on a CPU that emulates it."""
    check_values(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    ckpt_path = resume_checkpoint(cfg, output_dir)
    resume_step = check_compatible(module, ckpt_path) if ckpt_path else None
    loggers = build_logger(cfg, output_dir, hydra_runtime(), resume_step)
    callbacks = build_callbacks(cfg, output_dir, has_logger=bool(loggers))
    check_average_option(cfg)
    checkpoint_io = AtomicCheckpointIO(last=output_dir / "checkpoints" / LAST_CKPT)
    trainer = build_trainer(cfg, output_dir, loggers, callbacks, checkpoint_io)
    slow_precision = cpu_kernels.emulated_bf16_warning(str(trainer.precision),
                                                       isinstance(trainer.accelerator, CPUAccelerator))
    if slow_precision and trainer.is_global_zero:
        log.warning(slow_precision)
    return Run(output_dir, datamodule, module, trainer, callbacks, loggers, checkpoint_io, ckpt_path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, test the best checkpoint (with `average_checkpoints=k`: the average of the best k), write
    metrics.json; returns the metrics.

    In a multirun a job is a result, not the end of the sweep: a job that finished earlier (same directory, same
    effective config) is not trained again, its metrics are returned; a job that fails writes its metrics.json with
    `status: failed`, the error and the step it reached, and returns those (`main` gives the sweeper NaN).
    Ctrl-C and a stop signal still end the whole sweep."""
    started = time.time()
    setup_process()
    output_dir = Path(cfg.paths.output_dir).resolve()
    runtime = hydra_runtime()
    if not runtime.get("multirun"):
        return train_run(cfg, build_run(cfg, output_dir), started)
    run: Run | None = None
    try:
        metrics = finished_metrics(cfg, output_dir)
        if metrics is not None:
            log.info("finished earlier: not trained again (%s)", output_dir / "metrics.json")
        else:
            metrics = skip_duplicate(cfg, output_dir, runtime)
        if metrics is None:
            run = build_run(cfg, output_dir)
            metrics = train_run(cfg, run, started)
    except Exception as err:  # noqa: BLE001 (any failure of one job: a bad value, divergence, a bug, out of memory)
        failure = failure_record(cfg, err, run.trainer.global_step if run else 0)
        log.error("job failed at step %d: %s", failure.step, failure.error,
                  exc_info=None if isinstance(err, UserError) else err)
        if rank_zero_only.rank == 0:
            write_failure(output_dir, failure)
        metrics = failure.to_dict()
    if rank_zero_only.rank == 0:
        report_job(runtime["sweep_dir"], output_dir, metrics)
    return metrics


def train_run(cfg: DictConfig, run: Run, started: float) -> dict[str, Any]:
    """Fit and report a built run; metrics.json is written (by global rank 0) when it finishes."""
    output_dir = run.output_dir
    batch = effective_batch(cfg, run.trainer.world_size)
    if run.trainer.is_global_zero:
        log.info("effective batch: %s; padded fraction of target positions: %.3f", batch,
                 run.datamodule.padding_fraction)
        for logger in run.loggers:
            logger.log_hyperparams({"config": to_dict(cfg), "effective_batch": batch})
    try:
        fit(cfg, run)
        results = report(cfg, run, batch, started)
        if run.trainer.is_global_zero:
            done = run_record(cfg, run, results)
            record.write(output_dir, done)
            log.info("run directory: %s", output_dir)
            return done.to_dict()
        return results
    except OSError as err:  # a log, a plot... that could not be written (checkpoints raise WriteError)
        if not is_write_error(err):
            raise
        raise WriteError(err.filename, err, run.checkpoint_io.intact()) from None
    except WriteError as err:
        if err.intact:
            raise
        raise err.with_intact(run.checkpoint_io.intact()) from None
    finally:
        _finish_loggers(run.loggers)
        end_job()


def fit(cfg: DictConfig, run: Run) -> None:
    """`trainer.fit`; a preempted run exits 128 + signal, a diverged one says how to continue."""
    try:
        run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.ckpt_path)
    except Preempted as stop:
        log.warning("%s; continue with: resume=auto hydra.run.dir=%s", stop, run.output_dir)
        raise SystemExit(stop.exit_code) from None
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err}. {run.checkpoint_io.intact()}; continue from it with a lower learning "
                               f"rate: lnmt-train resume=auto hydra.run.dir={run.output_dir} "
                               f"optim.lr={cfg.optim.lr / 10:g} [the same overrides]") from None


def report(cfg: DictConfig, run: Run, batch: dict[str, Any], started: float) -> dict[str, Any]:
    """After fit: validation scores and history, throughput, the best (or averaged) checkpoint tested."""
    trainer, summary = run.trainer, run.callback(RunSummary)
    metrics: dict[str, Any] = {
        "val": {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith("val/")},
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        **summary.result,
        "val_history": summary.val_history,
    }
    checkpoint_cb = run.callback(ModelCheckpoint)
    best = checkpoint_cb.best_model_path or None
    metrics["best_checkpoint"] = best
    metrics.update(average_best(trainer, checkpoint_cb, cfg.average_checkpoints))
    if cfg.test_after_training:
        trainer.test(run.module, datamodule=run.datamodule, ckpt_path=metrics.get("averaged_checkpoint", best),
                     verbose=trainer.is_global_zero)
        metrics.update(_test_metrics(trainer.callback_metrics))
    metrics["wall_seconds"] = time.time() - started
    metrics["model"] = to_dict(cfg.model)["type"]
    metrics["effective_batch"] = batch
    metrics["padding_fraction"] = run.datamodule.padding_fraction
    return metrics


def run_record(cfg: DictConfig, run: Run, results: dict[str, Any]) -> RunRecord:
    """A finished run's record: `report`'s results with the seed, configuration hash, provenance (code, packages,
    hardware), the data's fingerprint and how the test sets were scored."""
    results = dict(results)
    lowercase = bool(run.datamodule.tokenizer.settings["lowercase"])
    return RunRecord(
        status=FINISHED, seed=cfg.seed, config_hash=config_hash(cfg), val_history=results.pop("val_history"),
        wall_seconds=results.pop("wall_seconds"), results=results, data=run.datamodule.fingerprint(),
        provenance=record.provenance(cfg.trainer.accelerator), scoring=scoring(lowercase))


def _test_metrics(callback_metrics: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{'test': {...}, 'test_<extra>': {...}} from the logged `test*/metric` values."""
    out: dict[str, dict[str, float]] = {}
    for key, value in callback_metrics.items():
        if key.startswith("test"):
            split, metric = key.split("/", 1)
            out.setdefault(split, {})[metric] = float(value)
    return out


def _finish_loggers(loggers: list[Logger]) -> None:
    """Close the job's wandb run, so the next job of a multirun starts its own."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
