"""Optimizers and learning-rate schedules: the registries are the schema and the config files, each registered one
builds from its file, a value out of range is one line naming the key, and the curves are today's."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from lightning_nmt.config import OptimConfig, OptimizerName, SchedulerConfig, SchedulerName, check_values
from lightning_nmt.errors import ConfigError
from lightning_nmt.module import TranslationModule
from lightning_nmt.optim import (
    FUSED_ADAM,
    OPTIMIZERS,
    SCHEDULES,
    configure_optimizers,
    make_optimizer,
)
from tests.conftest import CONF_DIR, compose_config, compose_many

GROUPS = {"optim": OPTIMIZERS, "scheduler": SCHEDULES}
FILES = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"


def keys(group: str, name: str) -> set[str]:
    return {option.name for option in fields(GROUPS[group][name])}


def lr_curve(configured: dict, steps: int) -> list[float]:
    """The learning rate of each of `steps` updates under a step-interval schedule."""
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_enums_and_files_are_the_registries():
    assert [m.value for m in OptimizerName] == list(OPTIMIZERS)
    assert [m.value for m in SchedulerName] == list(SCHEDULES)
    for group, table in GROUPS.items():
        assert sorted(name for g, name in FILES if g == group) == sorted(table), f"conf/{group}/"


def test_schema_keys_are_the_union_of_what_the_registered_ones_read():
    assert set(OmegaConf.structured(OptimConfig).keys()) == {"name", "max_nonfinite_steps"} | {
        key for name in OPTIMIZERS for key in keys("optim", name)}
    assert set(OmegaConf.structured(SchedulerConfig).keys()) == {"name"} | {
        key for name in SCHEDULES for key in keys("scheduler", name)}


@pytest.mark.parametrize(("group", "name"), FILES, ids=[f"{g}={n}" for g, n in FILES])
def test_each_file_sets_the_keys_its_entry_reads_and_builds(group: str, name: str, tmp_path: Path):
    cfg = compose_config("train", [f"{group}={name}"], tmp_path)
    values = OmegaConf.to_container(cfg[group], enum_to_str=True)
    assert values["name"] == name
    given = {key for key, value in values.items() if value is not None} - {"name", "max_nonfinite_steps"}
    assert given == keys(group, name), f"conf/{group}/{name}.yaml"
    check_values(cfg)
    params = torch.nn.Linear(3, 2).parameters()
    configured = configure_optimizers(params, cfg.optim, cfg.scheduler, None)
    assert configured["optimizer"].defaults["lr"] == cfg.optim.lr
    assert ("lr_scheduler" in configured) == (cfg.scheduler.name.value != "none")


def test_train_selects_adam_halved_on_a_plateau_and_the_transformer_recipe_inverse_sqrt(tmp_path: Path):
    default, transformer = compose_many("train", [[], ["experiment=multi30k_transformer"]], tmp_path)
    configured = configure_optimizers(torch.nn.Linear(3, 2).parameters(), default.optim, default.scheduler, None)
    assert type(configured["optimizer"]) is torch.optim.Adam and configured["optimizer"].defaults["lr"] == 0.002
    plateau = configured["lr_scheduler"]
    assert (plateau["monitor"], plateau["interval"], plateau["strict"]) == ("val/bleu", "epoch", False)
    assert (plateau["scheduler"].factor, plateau["scheduler"].patience) == (0.5, 2)
    assert OmegaConf.to_container(transformer.scheduler, enum_to_str=True) == {
        "name": "inverse_sqrt", "warmup_steps": 2000, "factor": None, "patience": None, "min_lr": None}
    assert (transformer.optim.lr, list(transformer.optim.betas)) == (0.005, [0.9, 0.98])


def test_the_old_name_overrides_keep_the_group_files_values(tmp_path: Path):
    """`optim.name=adamw` over conf/optim/adam.yaml: AdamW with Adam's values; a key no file sets: the default."""
    adamw, sgd, inverse_sqrt = compose_many("train", [["optim.name=adamw"], ["optim.name=sgd"],
                                                      ["scheduler.name=inverse_sqrt"]], tmp_path)
    params = list(torch.nn.Linear(3, 2).parameters())
    optimizer = make_optimizer(params, adamw.optim)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 0.0
    assert make_optimizer(params, sgd.optim).defaults["momentum"] == 0.9
    configured = configure_optimizers(params, inverse_sqrt.optim, inverse_sqrt.scheduler, None)
    assert lr_curve(configured, 1) == [pytest.approx(0.002 / 4000)]


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.lr=-0.001"], "optim.lr must be positive, got -0.001"),
    (["optim=sgd", "optim.lr=0"], "optim.lr must be positive, got 0.0"),
    (["optim.weight_decay=-1"], "optim.weight_decay must not be negative, got -1.0"),
    (["optim=adamw", "optim.betas=[0.9,1.0]"], "optim.betas must be in [0, 1), got [0.9, 1.0]"),
    (["optim=sgd", "optim.momentum=-0.5"], "optim.momentum must not be negative, got -0.5"),
    (["optim.max_nonfinite_steps=-1"], "optim.max_nonfinite_steps must not be negative, got -1"),
    (["scheduler=inverse_sqrt", "scheduler.warmup_steps=-5"], "scheduler.warmup_steps must not be negative, got -5"),
    (["scheduler.factor=1.5"], "scheduler.factor must be in (0, 1), got 1.5"),
    (["scheduler.patience=-1"], "scheduler.patience must not be negative, got -1"),
    (["scheduler.min_lr=-1"], "scheduler.min_lr must not be negative, got -1.0"),
])
def test_a_value_out_of_range_is_a_config_error_naming_the_key(overrides: list[str], message: str, tmp_path: Path):
    with pytest.raises(ConfigError) as error:
        check_values(compose_config("train", overrides, tmp_path))
    assert str(error.value) == message


def test_a_key_the_chosen_schedule_does_not_read_is_ignored(tmp_path: Path):
    check_values(compose_config("train", ["scheduler.warmup_steps=-5"], tmp_path))  # plateau has no warm-up


@pytest.mark.parametrize(("group", "what"), [("optim", "optimizer"), ("scheduler", "schedule")])
def test_an_unknown_name_is_a_config_error_listing_the_registered(group: str, what: str, tmp_path: Path):
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config("train", [], tmp_path), enum_to_str=True))
    cfg[group].name = "lion"
    with pytest.raises(ConfigError, match=f"^unknown {what} 'lion'; registered: {', '.join(GROUPS[group])}$"):
        check_values(cfg)


def test_inverse_sqrt_warms_up_linearly_then_decays_as_before():
    """lr * min(step / warmup, sqrt(warmup / step)), steps counted from 1."""
    param = torch.nn.Parameter(torch.zeros(1))
    configured = configure_optimizers([param], {"name": "sgd", "lr": 1.0}, {"name": "inverse_sqrt", "warmup_steps": 4},
                                      None)
    assert configured["lr_scheduler"]["interval"] == "step"
    lrs = lr_curve(configured, 100)
    assert lrs[:6] == pytest.approx([0.25, 0.5, 0.75, 1.0, math.sqrt(4 / 5), math.sqrt(4 / 6)])
    assert (lrs[15], lrs[99]) == pytest.approx((0.5, 0.2))


def test_plateau_halves_the_learning_rate_after_patience_validations_without_progress():
    param = torch.nn.Parameter(torch.zeros(1))
    configured = configure_optimizers([param], {"name": "adam", "lr": 0.002},
                                      {"name": "plateau", "factor": 0.5, "patience": 2, "min_lr": 0.0004}, None)
    optimizer, plateau = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    lrs = []
    for bleu in (10.0, 11.0, 11.0, 11.0, 11.0, 12.0, 12.0, 12.0, 12.0, 12.0, 12.0, 12.0, 12.0):
        plateau.step(bleu)  # once per validation, with val/bleu
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.002] * 4 + [0.001] * 4 + [0.0005] * 3 + [0.0004] * 2)


@pytest.mark.parametrize(("clip", "precision", "fused"), [(1.0, "bf16-mixed", False), (None, "bf16-mixed", True),
                                                          (1.0, "32-true", True)])
def test_adam_is_fused_unless_lightning_clips_mixed_precision_gradients(clip, precision, fused):
    if not FUSED_ADAM:
        pytest.skip("torch < 2.4 has no fused Adam on the CPU")
    trainer = SimpleNamespace(gradient_clip_val=clip, precision=precision)
    configured = configure_optimizers(torch.nn.Linear(3, 2).parameters(), {"name": "adamw"}, {"name": "none"},
                                      trainer)
    assert bool(configured["optimizer"].defaults["fused"]) is fused


@pytest.mark.parametrize("model", ["basic", "attention", "transformer"])
def test_a_checkpoint_written_before_the_registries_configures_its_optimizer(model: str):
    """The fixtures' `optim`/`scheduler` hyperparameters (every key of the old schema) build what they did; a key a
    checkpoint lacks takes its default."""
    module = TranslationModule.load(FIXTURES / f"{model}.ckpt")
    configured = module.configure_optimizers()
    assert type(configured["optimizer"]) is torch.optim.Adam and configured["optimizer"].defaults["lr"] == 0.003
    assert configured["lr_scheduler"]["scheduler"].factor == 0.5
    module.hparams.scheduler = {"name": "inverse_sqrt"}
    assert lr_curve(module.configure_optimizers(), 1) == [pytest.approx(0.003 / 4000)]
