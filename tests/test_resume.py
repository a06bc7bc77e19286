"""Resume: atomic checkpoints, weights_only loading, RNG/data-position state, and through the CLI: a killed
run resumed with resume=auto ends with the very weights of an uninterrupted one; SIGTERM saves and stops;
foreign, truncated and corrupt checkpoints are one-line errors."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_nmt import resume
from lightning_nmt.app import resume_checkpoint
from lightning_nmt.errors import CheckpointError
from lightning_nmt.loggers import build_logger
from lightning_nmt.resume import AtomicCheckpointIO, cluster_plugins, rng_state, set_rng_state
from tests.conftest import compose_config

# 2000 training pairs at max_tokens=2048 make 19 batches an epoch: checkpoints every 4 steps are all mid-epoch,
# and 24 steps cross the epoch boundary.
STEPS, EVERY, EPOCH_BATCHES = 24, 4, 19
TINY = [
    "data.sample_sizes={train:2000,val:60,test:60}", "data.tokenizer.vocab_size=300", "data.max_tokens=2048",
    "model.embedding_dim=32", "model.encoder_hidden=32", "model.decoder_hidden=64", "model.dropout=0.2",
    "trainer.val_check_interval=10", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
    "trainer.deterministic=true", "decoding.beam_size=1", "callbacks.num_heatmaps=1",
    f"callbacks.model_checkpoint.every_n_train_steps={EVERY}",
]


# ---------------------------------------------------------------------------------------------- helpers

def train_args(run: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lightning_nmt.train", *TINY, f"hydra.run.dir={run}", f"paths.cache_dir={cache}",
            *extra]


def run_train(run: Path, cache: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(train_args(run, cache, *extra), capture_output=True, text=True, timeout=timeout, env=env)


def start_train(run: Path, cache: Path, *extra: str) -> subprocess.Popen:
    """A training process whose output goes to <run>.log (a pipe could fill up and block it)."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    log = open(f"{run}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(train_args(run, cache, *extra), stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def checkpoint_step(path: Path) -> int | None:
    """global_step of a complete checkpoint file, None while there is none."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, min_step: int, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = checkpoint_step(path)
        if step is not None and step >= min_step:
            return step
        assert proc.poll() is None, f"training ended (status {proc.returncode}) before step {min_step}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint at step >= {min_step} within {timeout} s")


def csv_rows(run: Path) -> list[dict[str, str]]:
    """The rows of the run's CSV log (metrics.csv), in order."""
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0]


# ---------------------------------------------------------------------------------------------- unit tests

def test_atomic_save_failing_midway_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def killed_midway(obj, f, *args, **kwargs) -> None:
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # stands for a kill during the write

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


class NotAllowed:
    """A class weights_only loading must refuse to instantiate."""


def test_checkpoint_io_loads_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"global_step": 1, "payload": NotAllowed()}, path)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_rng_state_survives_weights_only_save_and_restores_every_generator(tmp_path: Path) -> None:
    torch.save(rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_resume_auto_without_checkpoint_starts_fresh_and_says_so(tmp_path: Path, caplog) -> None:
    cfg = compose_config("train", ["resume=auto"], tmp_path)
    with caplog.at_level(logging.INFO, logger="lightning_nmt"):
        assert resume_checkpoint(cfg, tmp_path / "run") is None
    assert "no checkpoint" in caplog.text and "starting fresh" in caplog.text


def test_resume_picks_last_or_explicit_checkpoint_and_refuses_to_overwrite_one(tmp_path: Path) -> None:
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    auto, never, explicit = (compose_config("train", o, tmp_path)
                             for o in (["resume=auto"], [], ["ckpt_path=/elsewhere/x.ckpt"]))
    assert resume_checkpoint(auto, tmp_path / "run") == str(last)
    assert resume_checkpoint(explicit, tmp_path / "run") == "/elsewhere/x.ckpt"
    with pytest.raises(CheckpointError, match="last.ckpt exists: pass resume=auto"):
        resume_checkpoint(never, tmp_path / "run")


def log_steps(logger: Logger, steps: range, value: Callable[[int], dict[str, float]]) -> None:
    for step in steps:
        logger.log_metrics(value(step), step=step)
    logger.finalize("success")


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_resumed_run_logs_replace_what_the_killed_run_logged_after_its_checkpoint(tmp_path: Path,
                                                                                   kind: str) -> None:
    """Killed after step 5, resumed from the checkpoint of step 3: the log holds steps 0-2 of the first run,
    then the resumed run's (Lightning's CSVLogger alone deletes steps 0-2, TensorBoard alone shows both 3-5s)."""
    cfg = compose_config("train", [f"logger={kind}"], tmp_path)
    (first,) = build_logger(cfg, tmp_path)
    log_steps(first, range(6), lambda step: {"train/loss": 10.0 - step})
    (resumed,) = build_logger(cfg, tmp_path, {}, resume_step=3)
    log_steps(resumed, range(3, 5), lambda step: {"train/loss": 100.0 + step, "val/bleu": 1.5} if step == 4
              else {"train/loss": 100.0 + step})  # a new column: the CSV is rewritten with a new header
    if kind == "csv":
        rows = csv_rows(tmp_path)
        logged = [(int(r["step"]), float(r["train/loss"])) for r in rows]
        assert [r["val/bleu"] for r in rows] == ["", "", "", "", "1.5"]
    else:
        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(0, 10.0), (1, 9.0), (2, 8.0), (3, 103.0), (4, 104.0)]

    (fresh,) = build_logger(cfg, tmp_path / "new", {}, resume_step=3)  # a checkpoint of another run: nothing to keep
    log_steps(fresh, range(3, 4), lambda step: {"train/loss": 1.0})
    if kind == "csv":
        assert [r["step"] for r in csv_rows(tmp_path / "new")] == ["3"]


def test_slurm_requeue_is_left_to_submitit_or_slurm(monkeypatch) -> None:
    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        monkeypatch.delenv(var)
    assert cluster_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "nmt")
    (plugin,) = cluster_plugins()
    assert isinstance(plugin, resume.SLURMEnvironment) and plugin.auto_requeue is False


# ---------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    full = run_train(tmp_path / "full", cache, f"trainer.max_steps={STEPS}", "logger=csv")
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "killed"
    proc = start_train(run, cache, f"trainer.max_steps={STEPS}", "logger=csv", "resume=auto")
    wait_for_checkpoint(proc, run / "checkpoints" / "last.ckpt", min_step=2 * EVERY)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_step(run / "checkpoints" / "last.ckpt")
    assert killed_at < STEPS and killed_at % EPOCH_BATCHES != 0, killed_at  # a mid-epoch resume

    resumed = run_train(run, cache, f"trainer.max_steps={STEPS}", "logger=csv", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume=auto: continuing from" in resumed.stdout + resumed.stderr
    assert "not resumable" not in resumed.stdout + resumed.stderr  # Lightning's warning, untrue here

    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS and a["epoch"] == b["epoch"] == 1
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name  # exact, not approximate
    for key, state in a["optimizer_states"][0]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer_states"][0]["state"][key]["exp_avg"])
    # the CSV log holds every step once, as the uninterrupted run's: the rows before the checkpoint are kept
    # (Lightning's CSVLogger alone deletes them), those logged after it before the kill are replaced
    full_rows, resumed_rows = csv_rows(tmp_path / "full"), csv_rows(run)
    assert any(row["train/loss"] and int(row["step"]) < killed_at for row in full_rows)
    assert resumed_rows == full_rows

    m_full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    m_resumed = json.loads((run / "metrics.json").read_text())
    assert m_resumed["steps"] == m_full["steps"] == STEPS
    assert m_resumed["val_history"] == m_full["val_history"]
    assert m_resumed["test"] == m_full["test"]  # test_after_training ran on the resumed run
    assert (run / "test.hyp.txt").read_text() == (tmp_path / "full" / "test.hyp.txt").read_text()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_stops_and_the_wandb_run_continues(tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = ("trainer.max_steps=40", "logger=wandb", "resume=auto", "test_after_training=false")
    proc = start_train(run, cache, *args)
    wait_for_checkpoint(proc, run / "checkpoints" / "last.ckpt", min_step=EVERY)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    output = Path(f"{run}.log").read_text()
    assert "resume=auto: no checkpoint" in output and "starting fresh" in output
    assert "Traceback" not in output
    stopped = next(line for line in output.splitlines() if "stopped by SIGTERM at step" in line)
    step = int(stopped.split("at step ")[1].split(";")[0])
    assert EVERY <= step < 40 and checkpoint_step(run / "checkpoints" / "last.ckpt") == step
    assert not (run / "metrics.json").exists()

    resumed = run_train(run, cache, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_id = (run / "wandb_id.txt").read_text().strip()
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline), offline
    assert json.loads((run / "metrics.json").read_text())["steps"] == 40


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("short")
    proc = run_train(tmp / "run", tmp / "cache", "trainer.max_steps=2", "logger=none", "test_after_training=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


@pytest.mark.slow
@pytest.mark.parametrize(("override", "difference"), [
    ("model.embedding_dim=48", "model.embedding_dim: checkpoint 32 vs config 48"),
    ("data.tokenizer.vocab_size=400", "src_vocab_size: checkpoint 300 vs config 400"),
])
def test_checkpoint_of_another_config_is_refused_naming_the_difference(short_run: Path, tmp_path: Path,
                                                                        override: str, difference: str) -> None:
    proc = run_train(tmp_path / "run", short_run.parent / "cache", "trainer.max_steps=4", "logger=none",
                     f"ckpt_path={short_run}/checkpoints/last.ckpt", override)
    assert_one_line_error(proc, "different configuration", difference)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_damaged_last_checkpoint_is_refused_in_one_line(short_run: Path, tmp_path: Path, damage: str) -> None:
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    good = (short_run / "checkpoints" / "last.ckpt").read_bytes()
    last.write_bytes(good[: len(good) // 2] if damage == "truncated" else os.urandom(4096))
    proc = run_train(tmp_path / "run", short_run.parent / "cache", "trainer.max_steps=4", "logger=none",
                     "resume=auto")
    assert_one_line_error(proc, str(last), "not a readable checkpoint")
    shutil.rmtree(tmp_path / "run")


@pytest.mark.parametrize("dropout", [0.3, 0.1])
def test_checkpoint_from_before_a_new_model_option_resumes_with_its_default(tmp_path: Path, dropout: float) -> None:
    """A Transformer checkpoint written before `share_embeddings`, `attention_dropout` and `activation_dropout`
    existed has none of them in its hyperparameters: they are its defaults (False, `dropout`, `dropout`), which
    the config's equal, so the run resumes; a real difference is still refused."""
    from lightning_nmt.app import check_compatible
    from tests.test_average import tiny_module

    small = ["model=transformer", "model.d_model=16", "model.nhead=2", "model.ffn_dim=32",
             "model.transformer_layers=1", f"model.dropout={dropout}"]
    module = tiny_module(small, tmp_path)
    hparams = dict(module.hparams)
    old_model = {k: v for k, v in hparams["model"].items()
                 if k not in ("share_embeddings", "attention_dropout", "activation_dropout")}
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {**hparams, "model": old_model}, "state_dict": {}, "tokenizer": {},
                "global_step": 7}, path)
    assert check_compatible(module, str(path)) == 7
    apart = tiny_module([*small, "model.attention_dropout=0"], tmp_path)
    with pytest.raises(CheckpointError, match=rf"model.attention_dropout: checkpoint {dropout} vs config 0.0"):
        check_compatible(apart, str(path))


@pytest.mark.slow
def test_last_checkpoint_after_a_validation_holds_what_that_validation_kept(tmp_path: Path) -> None:
    """last.ckpt is written after each validation; it must hold the best-k ModelCheckpoint and EarlyStopping
    states after that validation. Saved before them (the callback order Lightning used to give it), a run
    resumed from it forgot the checkpoint that validation kept: the file stayed on disk, outside the best k,
    never averaged, and a worse one was averaged in its place."""
    proc = run_train(tmp_path / "run", tmp_path / "cache", "trainer.max_steps=10", "logger=none",
                     "test_after_training=false", "callbacks.early_stopping.enabled=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    kept = sorted(p.name for p in checkpoints.glob("best-*.ckpt"))
    assert kept and kept[-1].startswith("best-step000010-"), kept  # the one validation, at step 10
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 10
    states = last["callbacks"]
    best_k = next(s for key, s in states.items() if key.startswith("ModelCheckpoint"))["best_k_models"]
    assert sorted(Path(p).name for p in best_k) == kept
    early = next(s for key, s in states.items() if key.startswith("EarlyStopping"))
    assert float(early["best_score"]) == pytest.approx(float(kept[-1].removesuffix(".ckpt").split("bleu")[1]),
                                                       abs=0.005)
