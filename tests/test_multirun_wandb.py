"""End to end: a small multirun with wandb offline gives one run directory and one wandb run per job, grouped by
configuration (every seed of it, in any sweep) with the sweep as job type; the basic model is trained once however
many attention settings the sweep crosses it with; lnmt-compare lists every job."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_nmt.loggers import GROUP_LIMIT
from tests.wandb_records import OfflineRun, read_offline_run

pytestmark = pytest.mark.slow

TINY = [
    "data.sample_sizes={train:2000,val:60,test:60}", "data.tokenizer.vocab_size=300",
    "model.embedding_dim=32", "model.encoder_hidden=32", "model.decoder_hidden=64",
    "trainer.max_steps=10", "trainer.max_epochs=null", "trainer.val_check_interval=5",
    "trainer.check_val_every_n_epoch=null", "trainer.log_every_n_steps=2", "trainer.enable_progress_bar=false",
    "decoding.beam_size=1", "callbacks.num_heatmaps=2", "logger=wandb",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("multirun")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "lightning_nmt.train", "-m", "model=basic,attention", "model.attention=dot,general",
           *TINY, f"paths.cache_dir={tmp / 'cache'}", f"hydra.sweep.dir={tmp / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep"


@pytest.fixture(scope="module")
def seed_sweep(sweep: Path) -> Path:
    """Two configurations (one of them also in `sweep`) with two seeds each, in a second sweep."""
    tmp = sweep.parent
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "lightning_nmt.train", "-m", "model=attention", "model.attention=dot,general",
           "seed=1,2", *TINY, f"paths.cache_dir={tmp / 'cache'}", f"hydra.sweep.dir={tmp / 'seeds'}"]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "seeds"


def metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def test_each_job_has_its_own_run_dir_and_wandb_run(sweep: Path) -> None:
    trained = {"0": ("basic", "dot"), "2": ("attention", "dot"), "3": ("attention", "general")}
    runs = {num: read_offline_run(sweep / num) for num in trained}
    assert len({run.run_id for run in runs.values()}) == 3
    assert len({run.group for run in runs.values()}) == 3  # three configurations
    for num, (model, attention) in trained.items():
        run, job_metrics = runs[num], metrics(sweep / num)
        assert (sweep / num / "wandb_id.txt").read_text().strip() == run.run_id
        assert run.name == f"model={model},model.attention={attention}" and run.job_type == "train-sweep"
        assert {f"model={model}", f"model.attention={attention}", "seed=42", "sweep=train-sweep"} <= set(run.tags)
        assert run.config["config"]["model"]["type"] == model
        assert run.config["config"]["model"]["attention"] == attention
        assert run.config["config"]["trainer"]["max_steps"] == 10
        assert run.summary["test/bleu"] == pytest.approx(job_metrics["test"]["bleu"], abs=1e-6)
        assert job_metrics["steps"] == 10
        assert {"train/loss", "val/bleu", "val/examples", "lr-Adam"} <= {k.split("/_")[0] for k in run.history_keys}
        assert any(k.startswith("attention/") for k in run.history_keys) == (model == "attention")


def seed_runs(sweep_dir: Path) -> dict[tuple[str, str], OfflineRun]:
    """The wandb run of each job of `seed_sweep`, by (model.attention, seed)."""
    runs = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        runs[overrides["model.attention"], overrides["seed"]] = read_offline_run(job)
    return runs


def test_the_seeds_of_a_configuration_share_a_group_in_any_sweep(sweep: Path, seed_sweep: Path) -> None:
    runs = seed_runs(seed_sweep)
    assert sorted(runs) == [("dot", "1"), ("dot", "2"), ("general", "1"), ("general", "2")]
    dot, general = runs["dot", "1"].group, runs["general", "1"].group
    assert runs["dot", "2"].group == dot and runs["general", "2"].group == general and dot != general
    assert dot == read_offline_run(sweep / "2").group  # model=attention model.attention=dot in the first sweep
    for group in (dot, general):  # TINY's overrides make a long group: cut, with a hash of the whole
        assert len(group) == GROUP_LIMIT and re.fullmatch(r"train:callbacks\.num_heatmaps=2,.*~[0-9a-f]{8}", group)
    for (attention, seed), run in runs.items():
        assert run.name == f"model.attention={attention},seed={seed}" and run.job_type == "train-seeds"
        assert {f"seed={seed}", "sweep=train-seeds", f"model.attention={attention}"} <= set(run.tags)
        assert run.config["config"]["seed"] == int(seed)


def test_basic_job_with_another_attention_score_is_not_trained_again(sweep: Path) -> None:
    assert metrics(sweep / "1")["duplicate_of"] == str((sweep / "0").resolve())
    assert not (sweep / "1" / "wandb").exists() and not (sweep / "1" / "checkpoints").exists()


def test_compare_lists_every_job(sweep: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lightning_nmt.compare", str(sweep), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "compare_runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["run"] for row in rows] == ["sweep/0", "sweep/1", "sweep/2", "sweep/3"]
    for num, row in enumerate(rows):
        if num == 1:
            assert row["test BLEU"] == "" and row["note"] == "duplicate of sweep/0"
        else:
            assert float(row["test BLEU"]) == pytest.approx(metrics(sweep / str(num))["test"]["bleu"], abs=0.01)
    with open(tmp_path / "compare.csv") as f:
        configurations = list(csv.DictReader(f))
    assert len(configurations) == 3 and "sweep/1: duplicate of sweep/0" in configurations[0]["note"]
    assert (tmp_path / "val_bleu.png").stat().st_size > 0
