"""Every config group combination composes and validates; typos and unknown values are clear errors."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lightning_nmt.config import LoggerType
from lightning_nmt.data.formats import corpus_formats
from lightning_nmt.models import MODEL_TYPES
from tests.conftest import CONF_DIR, compose_config, compose_many

GROUPS = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in ("data", "model", "trainer", "logger")}
FILES_DATA = ["data.train=c/train", "data.val=c/val", "data.test=c/test", "data.src_lang=en", "data.tgt_lang=de"]


def test_every_registered_choice_has_its_config_file_and_every_file_a_registered_choice() -> None:
    """conf/data/*.yaml read registered corpus formats, and each format has a file named after it (a recipe such as
    wmt14_en_de may add more); conf/model/ and conf/logger/ are the model types and the logger types."""
    corpora = {name: OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml").corpus for name in GROUPS["data"]}
    assert set(corpora.values()) == set(corpus_formats())
    assert set(corpus_formats()) <= set(GROUPS["data"])
    assert GROUPS["model"] == sorted(MODEL_TYPES)
    assert GROUPS["logger"] == sorted([*(kind.value for kind in LoggerType), "many", "none"])
    assert {"cpu", "gpu", "ddp", "ddp_cpu", "ddp_spawn", "fsdp"} <= set(GROUPS["trainer"])


def _check_combinations(data: str, combos: list[tuple[str, str, str]], tmp_path) -> None:
    extra = FILES_DATA if data == "files" else []
    overrides = [[f"data={data}", f"model={m}", f"trainer={t}", f"logger={lg}", *extra] for m, t, lg in combos]
    for (model, _, logger), cfg in zip(combos, compose_many("train", overrides, tmp_path), strict=False):
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)
        assert container["model"]["type"] == model
        assert container["data"]["corpus"] == {"wmt14_en_de": "hf"}.get(data, data)
        chosen = {"many": [kind.value for kind in LoggerType], "none": []}.get(logger, [logger])
        assert [kind.value for kind in LoggerType if container["logger"][kind.value]["enabled"]] == chosen
        assert container["data"]["cache_dir"] == str(tmp_path / "cache")


@pytest.mark.parametrize("data", GROUPS["data"])
def test_each_option_composes(data: str, tmp_path) -> None:
    """Every model with this corpus, and every trainer and logger option at least once (fast)."""
    models, trainers, loggers = GROUPS["model"], GROUPS["trainer"], GROUPS["logger"]
    n = max(len(trainers), len(loggers))
    combos = [(models[i % len(models)], trainers[i % len(trainers)], loggers[i % len(loggers)]) for i in range(n)]
    _check_combinations(data, combos, tmp_path)


@pytest.mark.slow
def test_every_combination_composes(tmp_path) -> None:
    """The full product model x trainer x logger (~35 s), with the default corpus: the corpus is composed apart from
    the others (every corpus with every option of the others: `test_each_option_composes`)."""
    _check_combinations("sample", list(itertools.product(GROUPS["model"], GROUPS["trainer"], GROUPS["logger"])),
                        tmp_path)


def test_defaults_train_attention_on_sample_cpu(tmp_path) -> None:
    cfg = OmegaConf.to_container(compose_config("train", [], tmp_path), resolve=True, enum_to_str=True)
    assert (cfg["model"]["type"], cfg["data"]["corpus"], cfg["trainer"]["accelerator"]) == (
        "attention", "sample", "cpu")
    assert cfg["test_after_training"] is True


def test_stable_override_names(tmp_path) -> None:
    cfg = compose_config("train", [
        "model=basic", "model.attention=concat", "trainer.max_steps=7", "trainer.max_epochs=2",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "seed=3", "logger=none",
    ], tmp_path)
    assert (cfg.model.type.value, cfg.model.attention) == ("basic", "concat")
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs, cfg.trainer.devices, cfg.seed) == (7, 2, 2, 3)


def test_misspelt_override_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException, match="atention"):
        compose_config("train", ["model.atention=dot"])


@pytest.mark.parametrize(("override", "valid_values"), [
    ("model.rnn_type=rnn", ("gru", "lstm")),
    ("decoding.beam_stop=never", ("k_finished", "best_finished")),
])
def test_unknown_value_lists_valid_values(override, valid_values) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose_config("train", [override])
    message = str(info.value) + str(info.value.__cause__)
    for valid in valid_values:
        assert valid in message


def test_wrong_type_is_an_error() -> None:
    with pytest.raises((ConfigCompositionException, ValidationError), match="max_steps"):
        compose_config("train", ["trainer.max_steps=many"])


def test_typo_inside_experiment_yaml_is_caught(tmp_path) -> None:
    bad = tmp_path / "conf" / "experiment"
    bad.mkdir(parents=True)
    (bad / "typo.yaml").write_text("# @package _global_\nmodel:\n  atention: dot\n")
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose_config("train", [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=typo"])
    assert "atention" in str(info.value) + str(info.value.__cause__)


def test_cli_rejects_typo_without_training(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_nmt.train", "model.atention=dot", f"hydra.run.dir={tmp_path}/r"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "atention" in proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_eval_and_translate_configs_compose() -> None:
    ev = compose_config("eval", ["ckpt_path=x.ckpt", "data=multi30k", "beam_size=3"])
    assert ev.beam_size == 3 and ev.data.corpus.value == "multi30k"
    assert compose_config("eval", ["ckpt_path=x.ckpt"]).data is None
    tr = compose_config("translate", ["ckpt_path=x.ckpt", "input=-", "nbest=2"])
    assert tr.nbest == 2 and tr.output == "-"
