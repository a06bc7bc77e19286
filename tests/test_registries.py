"""Every choice is declared once: the config schema's enums and keys are the registries', and each
conf/model/<type>.yaml sets exactly the keys its model type reads."""

import inspect
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_nmt.config import DataConfig, ModelConfig, ModelType, TokenizerConfig
from lightning_nmt.data import ParallelDataModule
from lightning_nmt.data.tokenizer import settings_from_config
from lightning_nmt.models import MODEL_TYPES, model_keys
from lightning_nmt.models.attention import ATTENTIONS, AttentionScore
from lightning_nmt.models.layers import RNNS, RNNType
from lightning_nmt.sweeps import effective_config
from tests.conftest import CONF_DIR, compose_config

MODEL_FILES = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_enums_are_the_registries():
    assert [m.value for m in ModelType] == list(MODEL_TYPES)
    assert [a.value for a in AttentionScore] == list(ATTENTIONS)
    assert [r.value for r in RNNType] == list(RNNS)


def test_schema_keys_are_the_union_of_what_model_types_read():
    schema = set(OmegaConf.structured(ModelConfig).keys()) - {"type"}
    assert schema == {key for name in MODEL_TYPES for key in model_keys(name)}


def test_every_model_type_has_a_config_file_and_every_file_a_type():
    assert MODEL_FILES == sorted(MODEL_TYPES)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_file_sets_exactly_the_keys_its_type_reads(name: str, tmp_path: Path):
    model = OmegaConf.to_container(compose_config("train", [f"model={name}"], tmp_path).model, enum_to_str=True)
    assert model["type"] == name
    given = {key for key, value in model.items() if value is not None} - {"type"}
    assert given == set(model_keys(name)), f"conf/model/{name}.yaml: unread {given - set(model_keys(name))}, " \
                                           f"missing {set(model_keys(name)) - given}"


def test_sweep_compares_only_the_keys_the_model_type_reads(tmp_path: Path):
    a, b = (compose_config("train", ["model=basic", f"model.attention={s}"], tmp_path) for s in ("dot", "concat"))
    assert effective_config(a) == effective_config(b)  # basic reads no score: one job for both
    c = compose_config("train", ["model=basic", "model.dropout=0.3"], tmp_path)
    assert effective_config(a) != effective_config(c)


def test_data_schema_is_the_datamodules_arguments_and_defaults() -> None:
    """`data:` declares no option the DataModule does not take, misses none, and repeats none of its defaults."""
    params = inspect.signature(ParallelDataModule.__init__).parameters
    assert {f.name for f in fields(DataConfig)} == set(params) - {"self", "seed"}
    schema = DataConfig()
    for name in ("base_url", "sample_seed", "max_tokens", "eval_max_tokens", "max_len", "cache_dir", "num_workers"):
        assert getattr(schema, name) == params[name].default, name
    tokenizer = {key: getattr(value, "value", value) for key, value in asdict(TokenizerConfig()).items()}
    assert settings_from_config(tokenizer) == settings_from_config({})
