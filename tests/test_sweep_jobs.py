"""A sweep whose jobs fail, get interrupted or are rerun: a failed job is a result (its metrics.json says why),
the sweep goes on and ends with one summary line; a rerun with `resume=auto` does not retrain finished jobs; a
job requeued after its time limit continues to the state of an uninterrupted run; Optuna tells a failed trial as
failed."""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from lightning_nmt import app, resume
from lightning_nmt.app import train
from lightning_nmt.callbacks import StepProgressBar
from lightning_nmt.checkpoint import read_checkpoint
from lightning_nmt.cli import quiet_warnings
from lightning_nmt.data import ParallelDataModule
from lightning_nmt.errors import ConfigError
from lightning_nmt.module import TranslationModule
from lightning_nmt.record import RunRecord
from lightning_nmt.sweeps import JOBS_FILE, finished_metrics, sweep_summary, write_failure
from tests.conftest import ROOT
from tests.test_faults import config, nan_loss_from

TINY = [
    "data.sample_sizes={train:1500,val:40,test:40}", "data.tokenizer.vocab_size=300", "model.embedding_dim=32",
    "model.encoder_hidden=32", "model.decoder_hidden=64", "trainer.enable_progress_bar=false", "logger=none",
    "callbacks.num_heatmaps=0",
]


def as_sweep_job(monkeypatch, sweep_dir: Path) -> None:
    """Make `train` see a multirun job of the sweep in `sweep_dir`."""
    runtime = {"multirun": True, "sweep_dir": str(sweep_dir), "overrides": [], "swept_keys": []}
    monkeypatch.setattr(app, "hydra_runtime", lambda: runtime)


def jobs(sweep_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep_dir / JOBS_FILE).read_text().splitlines()]


# ---- in-process: what one job of a sweep does ------------------------------------------------------------------

def test_a_bad_value_in_a_sweep_job_is_recorded_and_returned(tmp_path, cache, monkeypatch):
    as_sweep_job(monkeypatch, tmp_path)
    metrics = train(config(tmp_path, cache, "optim.lr=-1"))
    assert metrics["status"] == "failed" and metrics["step"] == 0
    assert metrics["error"] == "optim.lr must be positive, got -1.0" and metrics["error_type"] == "ConfigError"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert jobs(tmp_path) == [{"dir": str(tmp_path / "run"), "status": "failed", "error": metrics["error"]}]


def test_divergence_in_a_sweep_job_is_recorded_with_the_step(tmp_path, cache, monkeypatch):
    as_sweep_job(monkeypatch, tmp_path)
    nan_loss_from(monkeypatch, 2)
    metrics = train(config(tmp_path, cache))
    assert metrics["status"] == "failed" and metrics["error_type"] == "TrainingDiverged"
    assert "5 consecutive steps, from step 3" in metrics["error"]
    assert metrics["step"] == 6  # steps 3-6 done (skipped), the 5th NaN step (7) stops the run


def test_out_of_memory_or_a_bug_in_a_sweep_job_is_recorded(tmp_path, cache, monkeypatch, caplog):
    as_sweep_job(monkeypatch, tmp_path)
    original = TranslationModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TranslationModule, "training_step", training_step)
    metrics = train(config(tmp_path, cache))
    assert (metrics["status"], metrics["step"], metrics["error_type"]) == ("failed", 3, "OutOfMemoryError")
    assert metrics["error"] == "CUDA out of memory. Tried to allocate 20.00 GiB"
    assert "Traceback" in caplog.text  # not a user error: the traceback goes to the job's log


def test_a_full_disk_or_a_data_error_in_a_sweep_job_is_recorded(tmp_path, cache, monkeypatch):
    as_sweep_job(monkeypatch, tmp_path)
    real_write = resume._WriteRecorder.write

    def write(self, data):  # the disk is full from the first checkpoint on
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(resume._WriteRecorder, "write", write)
    metrics = train(config(tmp_path, cache))
    assert (metrics["status"], metrics["error_type"]) == ("failed", "WriteError")
    assert "No space left on device" in metrics["error"] and metrics["step"] == 4  # the first validation's save
    monkeypatch.setattr(resume._WriteRecorder, "write", real_write)

    def broken_loader(self):
        raise ValueError("a corrupt shard")

    monkeypatch.setattr(ParallelDataModule, "train_dataloader", broken_loader)
    (tmp_path / "run" / "metrics.json").unlink()
    metrics = train(config(tmp_path, cache, "resume=auto"))
    assert (metrics["status"], metrics["error_type"], metrics["error"]) == ("failed", "ValueError", "a corrupt shard")
    assert [job["status"] for job in jobs(tmp_path)] == ["failed", "failed"]


def test_ctrl_c_still_ends_the_sweep(tmp_path, cache, monkeypatch):
    as_sweep_job(monkeypatch, tmp_path)

    def interrupted(cfg, run):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, cache))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_finished_job_is_read_back_not_trained_again(tmp_path, cache, monkeypatch):
    as_sweep_job(monkeypatch, tmp_path)
    first = train(config(tmp_path, cache, "trainer.max_steps=4"))
    assert first["status"] == "finished" and first["steps"] == 4

    def no_training(*args):
        raise AssertionError("a finished job was built again")

    monkeypatch.setattr(app, "build_run", no_training)
    again = train(config(tmp_path, cache, "trainer.max_steps=4", "resume=auto"))
    assert again == first
    other = train(config(tmp_path, cache, "trainer.max_steps=4", "seed=7"))  # another job in the same directory
    assert other["status"] == "failed" and "holds a finished job of another configuration" in other["error"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == first  # kept
    assert [job["status"] for job in jobs(tmp_path)] == ["finished", "finished", "failed"]


def test_finished_metrics_reads_old_files_and_ignores_failed_ones(tmp_path):
    cfg = {"model": {"type": "basic"}, "seed": 1}
    (tmp_path / "metrics.json").write_text(json.dumps({"steps": 10, "val": {"bleu": 3.0}}))  # no status, no hash
    assert finished_metrics(cfg, tmp_path) == {"schema_version": 1, "status": "finished", "steps": 10,
                                               "val": {"bleu": 3.0}}
    write_failure(tmp_path, RunRecord(status="failed", error="x"))  # a finished job's file is kept, even an old one
    assert finished_metrics(cfg, tmp_path)["steps"] == 10
    (tmp_path / "metrics.json").unlink()
    write_failure(tmp_path, RunRecord(status="failed", error="x"))
    assert finished_metrics(cfg, tmp_path) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "finished", "config_hash": "0" * 20}))
    with pytest.raises(ConfigError, match="another configuration"):
        finished_metrics(cfg, tmp_path)


def test_summary_counts_each_job_once_by_its_last_report(tmp_path):
    lines = [{"dir": str(tmp_path / d), "status": s, "error": None} for d, s in
             [("0", "finished"), ("1", "failed"), ("2", "failed"), ("2", "finished"), ("3", "failed")]]
    (tmp_path / JOBS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert sweep_summary(tmp_path) == ("4 jobs: 2 finished, 2 failed: 1 3", True)
    (tmp_path / JOBS_FILE).write_text(json.dumps(lines[0]) + "\n")
    assert sweep_summary(tmp_path) == ("1 jobs: 1 finished, 0 failed", False)


def test_optuna_tells_a_nan_trial_as_failed_and_goes_on():
    optuna = pytest.importorskip("optuna")
    from hydra_plugins.lnmt_optuna_sweeper.lnmt_optuna_sweeper import nan_is_a_failed_trial

    study = optuna.create_study(direction="maximize")
    with nan_is_a_failed_trial():
        study.tell(study.ask(), math.nan)
        study.tell(study.ask(), 2.5)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"] and study.best_value == 2.5
    with pytest.raises(ValueError):  # outside, Optuna's own behaviour
        study.tell(study.ask(), math.nan)


# ---- the terminal --------------------------------------------------------------------------------------------

def test_progress_bars_are_closed_before_the_error_line():
    bar = StepProgressBar()
    bar._train_progress_bar, bar._val_progress_bar = Tqdm(total=10, file=io.StringIO()), Tqdm(file=io.StringIO())
    bar.on_exception(None, None, RuntimeError("diverged"))
    assert bar._train_progress_bar.disable and bar._val_progress_bar.disable  # tqdm.close() disables a bar


def test_warnings_a_user_cannot_act_on_go_to_the_log_file_only(tmp_path):
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    shown: list[str] = []  # the terminal
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
            quiet_warnings()
            warnings.warn("`training_step` returned `None`. If this was on purpose, ignore this warning...",
                          UserWarning, stacklevel=1)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
            warnings.warn("a warning a user can act on", UserWarning, stacklevel=1)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert shown == ["a warning a user can act on"]
    log = (tmp_path / "train.log").read_text()
    assert "returned `None`" in log and "LeafSpec" in log and "act on" not in log


# ---- end to end: sweeps through the CLI ----------------------------------------------------------------------

def lnmt_train(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "lightning_nmt.train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_a_sweep_with_a_bad_job_finishes_the_others_and_a_rerun_retrains_nothing_finished(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "optim.lr=0.001,-1,0.002", *TINY, "trainer.max_steps=4", "trainer.val_check_interval=2",
            f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={sweep}"]
    proc = lnmt_train(args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "3 jobs: 2 finished, 1 failed: 1"
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert (failed["status"], failed["error"], failed["step"]) == ("failed", "optim.lr must be positive, got -1.0", 0)
    for job in ("0", "2"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "finished"
    checkpoints = {p: p.stat().st_mtime_ns for p in sweep.glob("[02]/checkpoints/*.ckpt")}

    rerun = lnmt_train([*args, "resume=auto"])
    assert rerun.returncode == 1 and rerun.stderr.strip().splitlines()[-1] == "3 jobs: 2 finished, 1 failed: 1"
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("[02]/checkpoints/*.ckpt")} == checkpoints
    for job in ("0", "2"):
        assert (sweep / job / "train.log").read_text().count("finished earlier: not trained again") == 1
    assert (sweep / "1" / "train.log").read_text().count("job failed at step 0") == 2  # the failed job ran again


@pytest.mark.slow
def test_a_job_requeued_after_its_time_limit_ends_as_an_uninterrupted_one(tmp_path):
    """submitit's local executor signals (USR2) 30 s before a 1-minute limit: the job saves last.ckpt, is requeued
    into the same directory and continues with resume=auto; its final weights equal an uninterrupted run's. The
    run is sized by this machine's speed (a 100-step run first) to train about a minute, so the signal always comes
    during training, and each attempt of ~23 s gets further (up to 10 requeues)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    base = [*TINY, "decoding.beam_size=1", f"paths.cache_dir={tmp_path}/cache"]
    probe = lnmt_train([*base, "trainer.max_steps=100", "trainer.limit_val_batches=0", "test_after_training=false",
                        f"hydra.run.dir={tmp_path}/probe"])
    assert probe.returncode == 0, probe.stderr[-3000:]
    rate = 100 / json.loads((tmp_path / "probe" / "metrics.json").read_text())["train_seconds"]
    steps = max(400, int(rate * 60) // 100 * 100)
    common = [*base, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps // 2}",
              "callbacks.model_checkpoint.every_n_train_steps=50", "resume=auto"]
    requeued = lnmt_train(["-m", *common, f"hydra.sweep.dir={tmp_path}/sweep", "hydra/launcher=submitit_local",
                           "hydra.launcher.timeout_min=1", "+hydra.launcher.max_num_timeout=10"])
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    job = tmp_path / "sweep" / "0"
    log = (job / "train.log").read_text()
    assert "received SIGUSR2: saving a checkpoint" in log and "Requeued job" in log
    assert "resume=auto: continuing from" in log
    plain = lnmt_train([*common, f"hydra.run.dir={tmp_path}/plain"])
    assert plain.returncode == 0, plain.stderr[-3000:]
    a, b = (read_checkpoint(d / "checkpoints" / "last.ckpt") for d in (job, tmp_path / "plain"))
    assert a["global_step"] == b["global_step"] == steps
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (job, tmp_path / "plain")]
    assert metrics[0]["test"] == metrics[1]["test"]


SEARCH = """# @package _global_
defaults:
  - optuna
hydra:
  sweeper:
    n_trials: 3
    params:  # the search's own parameters, each held to one small value, and a learning rate that can fail
      model.encoder_hidden: choice(32)
      model.decoder_hidden: choice(64)
      model.dropout: choice(0.1)
      optim.lr: choice(0.001, -1)
"""


@pytest.mark.slow
def test_an_optuna_search_goes_on_after_a_failed_trial_and_continues_its_study(tmp_path):
    """conf/hparams_search/optuna.yaml's sweeper with one parameter, a learning rate that is fine or fails; the same
    command again adds trials to the study kept in the database, in new trial directories."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import optuna

    search = tmp_path / "configs" / "hparams_search" / "lr_or_bad.yaml"
    search.parent.mkdir(parents=True)
    search.write_text(SEARCH)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["-m", f"--config-dir={tmp_path / 'configs'}", "hparams_search=lr_or_bad", *TINY, "trainer.max_steps=2",
            "trainer.val_check_interval=2", f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path}/sweep",
            f"paths.cache_dir={tmp_path}/cache", "resume=auto"]
    for run in (1, 2):
        proc = lnmt_train(args)
        study = optuna.load_study(study_name="lnmt-val-bleu", storage=storage)
        trials = study.trials
        assert len(trials) == 3 * run, proc.stderr[-3000:]
        assert {(t.params["optim.lr"], t.state.name) for t in trials} <= {(-1, "FAIL"), (0.001, "COMPLETE")}
        this_run = trials[-3:]
        failed = [f"trial_{t.number}" for t in this_run if t.state.name == "FAIL"]
        assert proc.returncode == (1 if failed else 0)
        summary = f"3 jobs: {3 - len(failed)} finished, {len(failed)} failed" + (": " + " ".join(failed) if failed
                                                                                   else "")
        assert proc.stderr.strip().splitlines()[-1] == summary if failed else summary in proc.stdout
        for t in this_run:
            metrics = json.loads((tmp_path / "sweep" / f"trial_{t.number}" / "metrics.json").read_text())
            if "duplicate_of" in metrics:  # the same configuration as an earlier trial: not run again
                metrics = json.loads((Path(metrics["duplicate_of"]) / "metrics.json").read_text())
            assert metrics["status"] == ("failed" if t.state.name == "FAIL" else "finished")
    assert {t.state.name for t in study.trials} == {"FAIL", "COMPLETE"}
