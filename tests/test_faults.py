"""Faults of real runs: a diverging run stops with its last good checkpoint named and resumes with a lower
learning rate; a failed write (full disk, read-only directory) is one line naming what is intact; a missing
accelerator is one line; the progress bar counts steps when only max_steps bounds the run."""

from __future__ import annotations

import errno
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_nmt import app, resume
from lightning_nmt.app import train
from lightning_nmt.callbacks import StepProgressBar
from lightning_nmt.checkpoint import read_checkpoint
from lightning_nmt.cli import inference_device, run_cli
from lightning_nmt.errors import ConfigError, TrainingDiverged, WriteError
from lightning_nmt.eval import evaluate
from lightning_nmt.module import TranslationModule
from lightning_nmt.translate import translate
from tests.conftest import ROOT, compose_config

TINY = [
    "data.sample_sizes={train:600,val:20,test:20}", "data.tokenizer.vocab_size=300", "data.max_tokens=1024",
    "model.embedding_dim=16", "model.encoder_hidden=16", "model.decoder_hidden=32",
    "trainer.val_check_interval=4", "trainer.enable_progress_bar=false", "trainer.max_steps=12",
    "decoding.beam_size=1", "callbacks.num_heatmaps=0", "callbacks.num_examples=0", "logger=none",
    "scheduler.name=none",
]


def config(tmp_path: Path, cache: Path, *extra: str):
    cfg = compose_config("train", [*TINY, *extra], tmp_path)
    cfg.paths.cache_dir = str(cache)
    cfg.data.cache_dir = str(cache)
    return cfg


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: ")
    return err


def nan_loss_from(monkeypatch, step: int) -> None:
    """Make the training loss NaN from optimizer step `step` (0-based) on, as a diverging model's would be."""
    original = TranslationModule.token_loss

    def token_loss(self, batch, label_smoothing=0.0):
        loss, n = original(self, batch, label_smoothing)
        return (loss * math.nan if self.training and self.global_step >= step else loss), n

    monkeypatch.setattr(TranslationModule, "token_loss", token_loss)


# ---- divergence ---------------------------------------------------------------------------------------------

def test_diverging_run_stops_names_the_last_good_checkpoint_and_resumes_with_a_lower_lr(
        tmp_path, cache, monkeypatch, caplog):
    nan_loss_from(monkeypatch, 6)  # steps 1-6 fine, 7.. NaN: last.ckpt of step 4, not refreshed at step 8
    cfg = config(tmp_path, cache, "optim.lr=0.002")
    with pytest.raises(TrainingDiverged) as err:
        train(cfg)
    message = str(err.value)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert "5 consecutive steps, from step 7" in message and f"{last} (step 4)" in message, message
    assert "optim.lr=0.0002" in message and "resume=auto" in message
    checkpoint = read_checkpoint(last)
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()  # a sweep does not see a finished job

    monkeypatch.undo()  # the "lower learning rate" cures it
    caplog.set_level(logging.WARNING, logger="lightning_nmt")
    metrics = train(config(tmp_path, cache, "optim.lr=0.0002", "resume=auto"))
    assert metrics["steps"] == 12 and math.isfinite(metrics["val"]["loss"])
    assert "optim.lr is 0.0002, the checkpoint's was 0.002" in caplog.text
    lrs = [g["lr"] for g in read_checkpoint(last)["optimizer_states"][0]["param_groups"]]
    assert lrs == [pytest.approx(0.0002)]


def test_a_few_nonfinite_steps_are_skipped_without_update_and_training_goes_on(tmp_path, cache, monkeypatch):
    original = TranslationModule.token_loss
    seen: list[torch.Tensor] = []

    def token_loss(self, batch, label_smoothing=0.0):
        loss, n = original(self, batch, label_smoothing)
        if self.training and self.global_step in (2, 3):
            seen.append(torch.cat([p.detach().flatten() for p in self.parameters()]).clone())
            return loss * math.inf, n
        return loss, n

    monkeypatch.setattr(TranslationModule, "token_loss", token_loss)
    module_ref: list[TranslationModule] = []
    monkeypatch.setattr(app, "build_module", lambda *a: module_ref.append(app_build(*a)) or module_ref[-1])
    metrics = train(config(tmp_path, cache, "trainer.max_steps=6"))
    assert metrics["steps"] == 6
    assert torch.equal(seen[0], seen[1])  # the skipped step 3 applied no update (not even Adam's momentum)
    assert module_ref[0].guard.steps == 2


app_build = app.build_module


def test_divergence_through_the_cli_is_one_line_and_exit_2(tmp_path, cache, capsys):
    cfg = config(tmp_path, cache, "optim.lr=1e36")  # a learning rate far too high: inf after one update
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, cfg)
    assert exit_info.value.code == 2
    err = one_line_error(capsys)
    assert "training diverged: the loss was NaN/inf at 5 consecutive steps" in err


def test_bf16_mixed_divergence_stops_the_same_way(tmp_path, cache):
    with pytest.raises(TrainingDiverged, match="5 consecutive steps"):
        train(config(tmp_path, cache, "optim.lr=1e36", "trainer.precision=bf16-mixed"))


@pytest.mark.slow
def test_ddp_ranks_decide_together_and_stop_without_a_hang(tmp_path, cache):
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_nmt.train", *TINY, "trainer=ddp_cpu", "trainer.max_steps=12",
         "trainer.val_check_interval=4", "optim.lr=1e36", f"hydra.run.dir={tmp_path}/run",
         f"paths.cache_dir={cache}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "training diverged: the loss was NaN/inf at 5 consecutive steps" in errors[0]


def test_checkpoint_with_nonfinite_weights_is_never_written(tmp_path, cache):
    cfg = config(tmp_path, cache)
    datamodule = app.build_datamodule(cfg.data, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = app.build_module(cfg, datamodule)
    with torch.no_grad():
        next(module.parameters()).view(-1)[0] = math.nan
    with pytest.raises(TrainingDiverged, match="NaN/inf; no checkpoint was written"):
        module.on_save_checkpoint({})


# ---- write failures ---------------------------------------------------------------------------------------

def test_full_disk_during_a_checkpoint_save_is_one_line_and_the_previous_checkpoint_stays(
        tmp_path, cache, monkeypatch, capsys):
    real_write = resume._WriteRecorder.write
    state = {"saves": 0}

    def write(self, data):
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    real_save = resume.AtomicCheckpointIO.save_checkpoint

    def save(self, checkpoint, path, storage_options=None):
        state["full"] = checkpoint["global_step"] >= 8  # the disk fills after step 4's checkpoints
        return real_save(self, checkpoint, path, storage_options)

    state["full"] = False
    monkeypatch.setattr(resume._WriteRecorder, "write", write)
    monkeypatch.setattr(resume.AtomicCheckpointIO, "save_checkpoint", save)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, config(tmp_path, cache))
    assert exit_info.value.code == 2
    err = one_line_error(capsys)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert "No space left on device" in err and "checkpoints/" in err and "is intact (step 4)" in err, err
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 4
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]  # no partial file left


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_unwritable_metrics_file_is_one_line_naming_the_last_checkpoint(tmp_path, cache, monkeypatch, capsys, code):
    from lightning_nmt import atomic

    real = atomic.atomic_write_bytes

    def refuse_metrics(path, data):
        if Path(path).name == "metrics.json":
            with atomic.atomic_path(path):
                raise OSError(code, "refused")
        return real(path, data)

    monkeypatch.setattr(atomic, "atomic_write_bytes", refuse_metrics)
    with pytest.raises(SystemExit):
        run_cli(train, config(tmp_path, cache, "trainer.max_steps=4"))
    err = one_line_error(capsys)
    assert f"could not write {tmp_path / 'run' / 'metrics.json'}: refused" in err
    assert "the last complete checkpoint is" in err and "(step 4)" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_write_error_message_names_file_reason_and_checkpoint(tmp_path):
    io = resume.AtomicCheckpointIO(last=tmp_path / "last.ckpt")
    err = WriteError(tmp_path / "x.ckpt", OSError(errno.ENOSPC, "No space left on device"), io.intact())
    assert str(err) == f"could not write {tmp_path / 'x.ckpt'}: No space left on device; no checkpoint of this " \
                       "run was written"


# ---- accelerators, progress ---------------------------------------------------------------------------------

def test_a_precision_lightning_refuses_is_one_line_listing_the_valid_ones(tmp_path, cache, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, config(tmp_path, cache, "trainer.precision=fp8"))
    assert exit_info.value.code == 2
    assert "trainer: Precision 'fp8' is invalid. Allowed precision values:" in one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_without_a_gpu_is_one_line_listing_what_is_available(tmp_path, cache, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, config(tmp_path, cache, "trainer=gpu"))
    assert exit_info.value.code == 2
    err = one_line_error(capsys)
    assert "trainer.accelerator=gpu" in err and "available here: cpu" in err
    with pytest.raises(ConfigError, match="no CUDA GPU; available here: cpu"):
        inference_device("gpu")
    assert inference_device("auto") == torch.device("cpu")
    for name, entry in (("eval", evaluate), ("translate", translate)):
        with pytest.raises(SystemExit):
            run_cli(entry, compose_config(name, [f"ckpt_path={tmp_path}/x.ckpt", "accelerator=gpu"], tmp_path))
        assert "accelerator=gpu, but this machine has no CUDA GPU; available here: cpu" in one_line_error(capsys)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.dropout=1.5"], "model.dropout must be in [0, 1), got 1.5"),
    (["model.encoder_hidden=0"], "model.encoder_hidden must be a positive integer, got 0"),
    (["model=transformer", "model.nhead=3"], "model.d_model (256) must be divisible by model.nhead (3)"),
    (["model=transformer", "model.transformer_layers=-1"], "model.transformer_layers must be a positive integer"),
    (["optim.lr=-0.001"], "optim.lr must be positive, got -0.001"),
    (["optim.betas=[0.9,1.0]"], "optim.betas must be in [0, 1)"),
    (["label_smoothing=1.5"], "label_smoothing must be in [0, 1), got 1.5"),
    (["scheduler.name=inverse_sqrt", "scheduler.warmup_steps=-5"], "scheduler.warmup_steps must not be negative"),
    (["decoding.beam_size=0"], "decoding.beam_size must be at least 1"),
    (["decoding.max_len_ratio=0", "decoding.max_len_offset=0"], "no output token fits"),
    (["callbacks.early_stopping.enabled=true", "callbacks.early_stopping.monitor=val/blue"],
     "callbacks.early_stopping.monitor='val/blue' is not logged"),
    (["callbacks.model_checkpoint.mode=maximum"], "callbacks.model_checkpoint.mode must be min or max"),
    (["scheduler.name=plateau", "scheduler.patience=-1"], "scheduler.patience must not be negative"),
    (["model=transformer", "model.share_embeddings=true", "data.tokenizer.joint=false"],
     "model.share_embeddings needs one vocabulary for both sides (data.tokenizer.joint=true)"),
])
def test_values_out_of_range_are_one_line_before_any_data_is_read(tmp_path, cache, capsys, overrides,
                                                                             message):
    """Before, torch raised from deep inside the module or the optimizer (a traceback, after the corpus was read),
    label smoothing 1.5 at the first step, beam_size=0 at the first validation, and a negative warm-up trained."""
    cfg = config(tmp_path, cache, *overrides)
    cfg.paths.cache_dir = cfg.data.cache_dir = str(tmp_path / "untouched")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, cfg)
    assert exit_info.value.code == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "untouched").exists()


def test_progress_bar_counts_steps_when_only_max_steps_is_set(tmp_path, cache, monkeypatch):
    seen = []
    original = StepProgressBar.on_train_batch_end

    def spy(self, trainer, *args):
        original(self, trainer, *args)
        seen.append((self.train_progress_bar.desc, self.train_progress_bar.n, self.train_progress_bar.total))

    monkeypatch.setattr(StepProgressBar, "on_train_batch_end", spy)
    train(config(tmp_path, cache, "trainer.enable_progress_bar=true", "trainer.max_steps=6",
                 "test_after_training=false"))
    assert seen[-1] == ("step: ", 6, 6) and seen[0][1:] == (1, 6)  # tqdm shows "step:  17%|...| 1/6"
