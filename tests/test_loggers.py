"""Several loggers at once (`logger='[csv,wandb]'`, `logger=many`), the retired flat `logger.*` keys, and the names
that group a configuration's runs on wandb and MLflow (fast: no training)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

from lightning_nmt.config import check_values
from lightning_nmt.errors import ConfigError
from lightning_nmt.loggers import GROUP_LIMIT, build_logger, configuration_group, run_names
from tests.conftest import compose_config, compose_many

CHOICES = {
    (): [CSVLogger],
    ("logger=[csv,wandb]",): [CSVLogger, WandbLogger],
    ("logger=many",): [CSVLogger, TensorBoardLogger, WandbLogger, MLFlowLogger],
    ("logger=none",): [],
    ("logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:1"): [MLFlowLogger],
}


def test_a_logger_list_or_preset_gives_each_chosen_logger(tmp_path: Path) -> None:
    cfgs = compose_many("train", [list(overrides) for overrides in CHOICES], tmp_path)
    for (overrides, kinds), cfg in zip(CHOICES.items(), cfgs):
        check_values(cfg)
        loggers = build_logger(cfg, tmp_path / str(len(overrides)), {})
        assert len(loggers) == len(kinds), overrides
        assert all(isinstance(logger, kind) for logger, kind in zip(loggers, kinds)), overrides


def test_each_logger_has_its_own_keys(tmp_path: Path) -> None:
    cfg = compose_config("train", ["logger=[csv,wandb]", "logger.wandb.project=nmt", "logger.wandb.group=mine",
                                   "logger.csv.flush_logs_every_n_steps=7"], tmp_path)
    csv, wandb = build_logger(cfg, tmp_path, {"overrides": ["seed=1"]})
    assert wandb._wandb_init["project"] == "nmt" and wandb._wandb_init["group"] == "mine"
    assert csv._flush_logs_every_n_steps == 7


@pytest.mark.parametrize("override, message", [
    ("logger.type=wandb", "logger.type is gone: choose loggers with logger=wandb or logger='[csv,wandb]'"),
    ("logger.project=nmt", "logger.project is now logger.wandb.project"),
    ("logger.group=g", "logger.group is now logger.wandb.group"),
    ("logger.tags=[a]", "logger.tags is now logger.wandb.tags"),
    ("logger.offline=true", "logger.offline is now logger.wandb.offline"),
    ("logger.wandb.project=nmt", "logger.wandb.project is set but wandb is not a chosen logger: add logger=wandb "
                                 "(several: logger='[csv,wandb]')"),
    ("logger.mlflow.tracking_uri=http://h:1", "logger.mlflow.tracking_uri is set but mlflow is not a chosen logger"),
])
def test_retired_keys_and_keys_of_a_logger_not_chosen_say_the_new_spelling(tmp_path: Path, override: str,
                                                                            message: str) -> None:
    cfg = compose_config("train", [override], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_values(cfg)


@pytest.mark.slow
def test_old_flat_keys_are_one_line_on_the_command_line_before_any_data_is_read(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lightning_nmt.train", "logger.type=wandb", "logger.project=nmt",
                           f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: logger.type is gone: choose loggers with logger=wandb or logger='[csv,wandb]'; "
        "logger.project is now logger.wandb.project")
    assert not (tmp_path / "cache").exists()


def test_mlflow_without_its_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config("train", ["logger=mlflow"], tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    message = "logger=mlflow needs the mlflow package: pip install -e '.[mlflow]'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_values(cfg)


def test_the_group_is_the_configuration_without_seed_nor_keys_that_do_not_change_it() -> None:
    overrides = ["experiment=attention_scores", "+variant=attention_dot", "seed=3", "resume=auto", "ckpt_path=a.ckpt",
                 "hydra.run.dir=x", "hydra/launcher=joblib", "logger=[csv,wandb]", "logger.wandb.project=p",
                 "trainer.enable_progress_bar=false", "paths.cache_dir=c", "data.cache_dir=c", "data.num_workers=2"]
    assert configuration_group("attention_scores", overrides) == "attention_scores:+variant=attention_dot"
    assert configuration_group("train", ["seed=1"]) == "train"
    assert configuration_group("train", ["trainer.max_steps=9", "model=basic", "data.tokenizer.vocab_size=300"]) == (
        "train:data.tokenizer.vocab_size=300,model=basic,trainer.max_steps=9")
    assert configuration_group("train", ["model=basic", "seed=1", "optim.lr=0.1"]) == (
        configuration_group("train", ["seed=2", "optim.lr=0.1", "model=basic"]))
    dot, general = (configuration_group("train", [f"model.attention={score}"]) for score in ("dot", "general"))
    assert dot != general


def test_a_long_group_is_cut_with_a_stable_hash_of_the_whole() -> None:
    overrides = [f"model.option_{i}=value_{i}" for i in range(20)]
    group = configuration_group("train", overrides)
    assert len(group) == GROUP_LIMIT and re.fullmatch(r"train:model\.option_0=value_0,.*~[0-9a-f]{8}", group)
    assert configuration_group("train", list(reversed(overrides))) == group
    other = configuration_group("train", [*overrides[:-1], "model.option_9=other"])  # differs after the cut
    assert other[:-8] == group[:-8] and other != group


def test_run_names_of_a_sweep_job(tmp_path: Path) -> None:
    cfg = compose_config("train", ["seed=2"], tmp_path)
    runtime = {"multirun": True, "sweep_dir": str(tmp_path / "2024-01-01_00-00-00"), "override_dirname": "x",
               "overrides": ["model=basic", "seed=2", "resume=auto", "paths.cache_dir=c"], "swept_keys": ["seed"]}
    names = run_names(cfg, tmp_path / "3", runtime)
    assert (names.group, names.name, names.sweep, names.seed) == ("train:model=basic", "seed=2",
                                                                    "train-2024-01-01_00-00-00", 2)
    assert names.overrides == ["model=basic", "seed=2"]
    single = run_names(cfg, tmp_path / "run", {})
    assert (single.group, single.name, single.sweep) == ("train", "run", None)
