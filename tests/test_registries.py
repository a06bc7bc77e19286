"""Every choice is declared once: the config schema's enums and keys are the registries', and each
conf/model/<type>.yaml sets exactly the keys its model type reads."""

import inspect
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_nmt.config import Corpus, DataConfig, ModelConfig, ModelType, TokenizerConfig, check_values
from lightning_nmt.data import ParallelDataModule
from lightning_nmt.data.formats import CORPORA, corpus_formats, register_corpus
from lightning_nmt.data.tokenizer import settings_from_config
from lightning_nmt.errors import ConfigError
from lightning_nmt.models import MODEL_TYPES, model_keys, register_model
from lightning_nmt.models.attention import ATTENTIONS, register_attention
from lightning_nmt.models.layers import RNNS, RNNType
from lightning_nmt.optim import OPTIMIZERS, SCHEDULES, register_optimizer, register_schedule
from lightning_nmt.sweeps import effective_config
from tests.conftest import CONF_DIR, compose_config

MODEL_FILES = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_enums_are_the_registries():
    assert [m.value for m in ModelType] == list(MODEL_TYPES)
    assert [c.value for c in Corpus] == list(corpus_formats())
    assert [r.value for r in RNNType] == list(RNNS)


def test_an_attention_score_not_registered_is_a_config_error_listing_the_registered(tmp_path: Path):
    cfg = compose_config("train", ["model=attention", "model.attention=cosine"], tmp_path)
    with pytest.raises(ConfigError, match="unknown model.attention 'cosine'; valid values: " + ", ".join(ATTENTIONS)):
        check_values(cfg)


@pytest.mark.parametrize("register, registry", [(register_model, MODEL_TYPES), (register_corpus, CORPORA),
                                                (register_attention, ATTENTIONS), (register_optimizer, OPTIMIZERS),
                                                (register_schedule, SCHEDULES)])
def test_a_name_registered_twice_is_an_error(register, registry):
    name = next(iter(registry))
    with pytest.raises(ValueError, match=f"{name!r} is registered twice"):
        register(name)(type("Impostor", (), {}))
    assert registry[name].__name__ != "Impostor"


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


def test_data_schema_is_the_datamodules_arguments_and_the_formats_options() -> None:
    """`data:` declares the DataModule's own arguments with its defaults, and each format's options with the
    format's defaults; nothing else."""
    params = inspect.signature(ParallelDataModule.__init__).parameters
    options = {option.name: option for format_ in corpus_formats().values() for option in fields(format_)}
    assert {f.name for f in fields(DataConfig)} == set(params) - {"self", "seed", "options"} | set(options)
    schema = DataConfig()
    for name in ("max_tokens", "eval_max_tokens", "max_len", "cache_dir", "num_workers"):
        assert getattr(schema, name) == params[name].default, name
    for name, option in options.items():
        default = option.default_factory() if option.default_factory is not MISSING else option.default
        assert getattr(schema, name) == (None if default is MISSING else default), name
    tokenizer = {key: getattr(value, "value", value) for key, value in asdict(TokenizerConfig()).items()}
    assert settings_from_config(tokenizer) == settings_from_config({})

