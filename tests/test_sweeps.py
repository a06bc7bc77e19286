"""Deduplication of sweep jobs by effective config, swept-override detection, and the sweep configs
(experiments, variants, Optuna search) composing as documented."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_nmt.config import check_values
from lightning_nmt.models import build_model
from lightning_nmt.sweeps import claim, config_hash, skip_duplicate, swept_keys, swept_overrides
from tests.conftest import CONF_DIR, compose_many


def hashes(tmp_path: Path, *override_lists: list[str]) -> list[str]:
    return [config_hash(cfg) for cfg in compose_many("train", list(override_lists), tmp_path)]


def test_basic_model_ignores_attention_settings_but_not_its_own(tmp_path: Path) -> None:
    dot, general, feeding, wider, seed = hashes(
        tmp_path,
        ["model=basic", "model.attention=dot"], ["model=basic", "model.attention=general"],
        ["model=basic", "model.input_feeding=true"], ["model=basic", "model.decoder_hidden=64"],
        ["model=basic", "seed=7"],
    )
    assert dot == general == feeding
    assert len({dot, wider, seed}) == 3


def test_attention_and_transformer_keep_the_keys_they_read(tmp_path: Path) -> None:
    att_dot, att_general, tr_a, tr_b, tr_heads = hashes(
        tmp_path,
        ["model=attention", "model.attention=dot"], ["model=attention", "model.attention=general"],
        ["model=transformer", "model.attention=dot"], ["model=transformer", "model.encoder_hidden=64"],
        ["model=transformer", "model.nhead=8"],
    )
    assert att_dot != att_general
    assert tr_a == tr_b != tr_heads


def test_output_paths_and_logger_do_not_change_the_hash(tmp_path: Path) -> None:
    a, b = hashes(tmp_path, ["logger=csv", "trainer.enable_progress_bar=false"], ["logger=wandb", "data.num_workers=2"])
    assert a == b


def test_first_claim_owns_the_config_later_jobs_point_to_it(tmp_path: Path) -> None:
    cfg = {"model": {"type": "basic"}, "seed": 1}
    assert claim(tmp_path, tmp_path / "0", cfg) is None
    assert claim(tmp_path, tmp_path / "1", cfg) == (tmp_path / "0").resolve()
    assert claim(tmp_path, tmp_path / "0", cfg) is None  # the owner itself, e.g. resumed
    assert claim(tmp_path, tmp_path / "2", {**cfg, "seed": 2}) is None


def test_concurrent_claims_have_exactly_one_owner(tmp_path: Path) -> None:
    cfg = {"model": {"type": "basic"}}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: claim(tmp_path, tmp_path / str(i), cfg), range(16)))
    owners = [i for i, r in enumerate(results) if r is None]
    assert len(owners) == 1
    assert {r for r in results if r is not None} == {(tmp_path / str(owners[0])).resolve()}


def test_skip_duplicate_writes_a_pointer_and_returns_the_original_metrics(tmp_path: Path) -> None:
    cfg = {"model": {"type": "basic", "attention": "dot"}}
    runtime = {"multirun": True, "sweep_dir": str(tmp_path)}
    first, second = tmp_path / "0", tmp_path / "1"
    assert skip_duplicate(cfg, first, runtime) is None
    first.mkdir()
    (first / "metrics.json").write_text(json.dumps({"val": {"bleu": 12.5}}))
    duplicate = {"model": {"type": "basic", "attention": "concat"}}
    result = skip_duplicate(duplicate, second, runtime)
    assert result["val"] == {"bleu": 12.5} and result["duplicate_of"] == str(first.resolve())
    marker = json.loads((second / "metrics.json").read_text())
    assert marker == {"schema_version": 2, "status": "duplicate", "duplicate_of": str(first.resolve()),
                      "config_hash": config_hash(duplicate)}


def test_single_runs_are_never_deduplicated(tmp_path: Path) -> None:
    cfg = {"model": {"type": "basic"}}
    runtime = {"multirun": False, "sweep_dir": None}
    assert skip_duplicate(cfg, tmp_path / "a", runtime) is None
    assert skip_duplicate(cfg, tmp_path / "b", runtime) is None
    assert not (tmp_path / "b" / "metrics.json").exists()


def test_swept_keys_from_command_line_and_sweeper_params(tmp_path: Path) -> None:
    task = ["model=basic,attention", "trainer.max_steps=5", "seed=range(1,3)", "+x=choice(a,b)", "experiment=e"]
    OmegaConf.save({"hydra": {"overrides": {"task": task}}}, tmp_path / "multirun.yaml")
    keys = swept_keys(tmp_path, {"+variant": "basic,attention_dot"})
    assert keys == {"model", "seed", "x", "variant"}
    job = ["model=basic", "trainer.max_steps=5", "seed=1", "+x=a", "experiment=e", "+variant=basic"]
    assert swept_overrides(job, keys) == ["model=basic", "seed=1", "+x=a", "+variant=basic"]


def test_attention_scores_experiment_lists_exactly_its_variants(tmp_path: Path) -> None:
    (base,) = compose_many("train", [["experiment=attention_scores"]])
    variants = str(base.hydra.sweeper.params["+variant"]).split(",")
    assert base.task_name == "attention_scores"  # the experiment overrides train.yaml's own values
    cfgs = compose_many("train", [["experiment=attention_scores", f"+variant={v}"] for v in variants], tmp_path)
    got = [(c.model.type.value, c.model.attention if c.model.type.value == "attention" else None) for c in cfgs]
    assert got == [("basic", None), ("attention", "dot"), ("attention", "general"), ("attention", "concat"),
                   ("attention", "scaled_dot")]
    assert len({config_hash(c) for c in cfgs}) == 5
    assert {c.trainer.max_steps for c in cfgs} == {base.trainer.max_steps}


def test_model_and_strategy_experiments_sweep_config_groups() -> None:
    models, strategies = compose_many("train", [["experiment=multi30k_models"], ["experiment=strategies"]])
    assert models.data.corpus.value == "multi30k" and (models.data.src_lang, models.data.tgt_lang) == ("en", "de")
    assert models.hydra.sweeper.params.model == "basic,attention,transformer"
    assert strategies.hydra.sweeper.params.trainer == "single_device,ddp,ddp_spawn,fsdp,deepspeed"
    for preset in strategies.hydra.sweeper.params.trainer.split(","):
        (cfg,) = compose_many("train", [["experiment=strategies", f"trainer={preset}"]])
        assert cfg.trainer.max_steps == strategies.trainer.max_steps  # the experiment's steps win over the preset


def test_optuna_search_maximises_val_bleu_over_the_documented_params() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    (cfg,) = compose_many("train", [["hparams_search=optuna"]])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optim.lr", "model.encoder_hidden", "model.decoder_hidden", "model.dropout"}


def test_slurm_launcher_starts_one_task_per_device() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    (cfg,) = compose_many("train", [["hydra/launcher=slurm", "trainer.devices=4"]])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 4 == cfg.hydra.launcher.gpus_per_node


def test_multi30k_recipes_compose_check_and_build_both_directions() -> None:
    """Each `multi30k_*` recipe composes en->de and de->en, passes the value checks and builds its model; the
    Transformer recipe is Wu et al.'s (post-norm, one embedding matrix, 8,192-token steps, no weight decay); the
    attention recipe is the basic one with input feeding and tied output embeddings, which basic does not take."""
    recipes = sorted(p.stem for p in (CONF_DIR / "experiment").glob("multi30k_*.yaml") if p.stem != "multi30k_models")
    assert recipes == ["multi30k_attention", "multi30k_basic", "multi30k_transformer"]
    directions = [[], ["data.src_lang=de", "data.tgt_lang=en"]]
    cfgs = compose_many("train", [[f"experiment={r}", *d] for r in recipes for d in directions])
    models = []
    for cfg in cfgs:
        check_values(cfg)
        models.append(build_model(cfg.model, 50, 50))
        assert cfg.data.corpus.value == "multi30k" and cfg.callbacks.early_stopping.enabled
        assert sum(p.numel() for p in models[-1].parameters()) > 0
    transformer = cfgs[-1]
    assert (transformer.data.src_lang, transformer.data.tgt_lang) == ("de", "en")
    assert transformer.model.norm_first is False and transformer.model.share_embeddings is True
    assert (transformer.data.max_tokens, transformer.optim.weight_decay) == (8192, 0.0)
    model = models[-1]
    assert model.src_embed is model.tgt_embed and model.output.weight is model.tgt_embed.weight
    attention, basic = models[0], models[2]  # en->de
    assert cfgs[0].model.type == "attention" and cfgs[0].model.attention == "concat"
    assert attention.decoder.input_feeding and attention.output[-1].weight is attention.decoder.embed.weight
    assert cfgs[2].model.type == "basic" and basic.output.weight is not basic.decoder.embed.weight
    assert cfgs[0].optim == cfgs[2].optim and cfgs[0].trainer == cfgs[2].trainer
