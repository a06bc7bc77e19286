"""Shared fixtures: Hydra composition with outputs under tmp_path, and the real Multi30k location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from lightning_nmt.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
MULTI30K = Path(os.environ.get("MULTI30K_ROOT", ROOT.parent / "shared" / "data" / "multi30k"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(name: str, overrides: list[str], tmp_path: Path | None = None) -> DictConfig:
    """Compose `conf/<name>.yaml` as the CLI would; outputs and cache go under tmp_path."""
    return compose_many(name, [overrides], tmp_path)[0]


def compose_many(name: str, override_lists: list[list[str]], tmp_path: Path | None = None) -> list[DictConfig]:
    """Compose several override lists in one Hydra initialisation (faster than one each)."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfgs = [compose(config_name=name, overrides=o, return_hydra_config=True) for o in override_lists]
    finally:
        GlobalHydra.instance().clear()
    return [_local_paths(cfg, tmp_path) for cfg in cfgs]


def _local_paths(cfg: DictConfig, tmp_path: Path | None) -> DictConfig:
    if tmp_path is not None and "paths" in cfg:
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A sentencepiece and encoded-corpus cache shared by the tests of a module."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def multi30k_root() -> Path:
    if not (MULTI30K / "train.en.gz").is_file():
        pytest.skip(f"real Multi30k not found at {MULTI30K} (set MULTI30K_ROOT to run this test)")
    return MULTI30K
