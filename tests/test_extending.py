"""docs/extending.md's worked examples, run as they are written there: a score that overrides `forward`
(sparsemax), a model type, a corpus format (JSON Lines), an optimizer (NAdam) and a schedule (cosine with warm-up).
In process with the registries restored afterwards; with `-m slow`, as `lnmt-train` runs in a copy of the source
tree with just the doc's files added."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lightning_nmt.data import DataError, ParallelDataModule
from lightning_nmt.data.formats import CORPORA
from lightning_nmt.data.sample import generate_pairs
from lightning_nmt.errors import ConfigError
from lightning_nmt.models import MODEL_TYPES, build_model, model_keys
from lightning_nmt.models.attention import ATTENTIONS
from lightning_nmt.optim import OPTIMIZERS, SCHEDULES, configure_optimizers, make_optimizer
from lightning_nmt.search import search
from tests.test_models_build import SMALL, make_batch

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "extending.md").read_text()
FILES = {next(line[2:] for line in code.splitlines() if re.fullmatch(r"# [\w/]+\.(py|yaml)", line)): code
         for _, code in re.findall(r"```(python|yaml)\n(.*?)```", DOC, flags=re.S)}
"""The doc's code blocks by the path their first line names."""


def test_the_doc_adds_one_module_and_one_config_file_per_extension() -> None:
    assert sorted(FILES) == ["conf/data/jsonl.yaml", "conf/model/bag_of_words.yaml", "conf/optim/nadam.yaml",
                             "conf/scheduler/cosine.yaml", "conf/variant/attention_sparsemax.yaml",
                             "lightning_nmt/data/jsonl.py", "lightning_nmt/models/bag_of_words.py",
                             "lightning_nmt/models/sparsemax.py", "lightning_nmt/optim/cosine.py",
                             "lightning_nmt/optim/nadam.py"]


@pytest.fixture
def registries(monkeypatch):
    """The doc's registrations, undone afterwards."""
    monkeypatch.setattr("lightning_nmt.models.attention.ATTENTIONS", dict(ATTENTIONS))
    monkeypatch.setattr("lightning_nmt.data.formats.CORPORA", dict(CORPORA))
    yield
    MODEL_TYPES.pop("bag_of_words", None)
    OPTIMIZERS.pop("nadam", None)
    SCHEDULES.pop("cosine", None)


def run_module(path: str) -> dict:
    namespace: dict = {}
    exec(compile(FILES[path], path, "exec"), namespace)
    return namespace


def train_step_and_decode(model: torch.nn.Module) -> list:
    """A teacher-forced step with its backward pass, then greedy and beam search; the search results."""
    batch = make_batch([[4, 5, 6, 7, 8, 9], [7, 8]], [[9, 10], [11, 12, 13]])
    hidden, _ = model(batch["src"], batch["src_lengths"], batch["tgt_in"])
    loss = torch.nn.functional.cross_entropy(model.project(hidden).flatten(0, 1), batch["tgt_out"].flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    results = [search(model.eval(), batch["src"], batch["src_lengths"], beam_size=size) for size in (1, 3)]
    assert all(len(result.tokens) == 2 and all(len(hyps) == 1 for hyps in result.tokens) for result in results)
    return results


def test_sparsemax_from_the_docs_runs_its_forward_in_training_and_decoding(registries):
    namespace = run_module("lightning_nmt/models/sparsemax.py")
    sparsemax, cls = namespace["sparsemax"], namespace["SparsemaxAttention"]
    scores, mask = torch.tensor([[[3.0, 1.0, 0.2, 9.0], [2.0, 1.5, 0.0, 0.0]]]), torch.tensor([[1, 1, 1, 0]]).bool()
    weights = sparsemax(scores, mask)  # position 3 is padding
    torch.testing.assert_close(weights, torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.75, 0.25, 0.0, 0.0]]]))
    model = build_model({**SMALL, "attention": "sparsemax"}, 20, 20)
    assert type(model.decoder.attention) is cls
    with mock.patch.object(cls, "forward", autospec=True, side_effect=cls.forward) as spy:
        batch = make_batch([[4, 5, 6]], [[6, 7]])
        model(batch["src"], batch["src_lengths"], batch["tgt_in"])  # teacher forcing: the training path
        trained = spy.call_count
        assert trained >= 1
        results = train_step_and_decode(model)
        assert spy.call_count > trained + 2  # the searches ran the override at every step
    for result in results:
        for (attention,) in result.attention:
            torch.testing.assert_close(attention.sum(-1), torch.ones(attention.size(0)))


def test_model_type_from_the_docs_builds_trains_and_decodes(registries):
    namespace = run_module("lightning_nmt/models/bag_of_words.py")
    values = yaml.safe_load(FILES["conf/model/bag_of_words.yaml"])
    assert MODEL_TYPES["bag_of_words"] is namespace["BagOfWordsOptions"]
    assert sorted(model_keys("bag_of_words")) == sorted(k for k in values if k != "type")
    train_step_and_decode(build_model(values, 20, 20))


def test_optimizer_from_the_docs_builds_checks_and_steps(registries):
    namespace = run_module("lightning_nmt/optim/nadam.py")
    values = yaml.safe_load(FILES["conf/optim/nadam.yaml"])
    assert OPTIMIZERS["nadam"] is namespace["NAdamOptions"]
    assert {option.name for option in fields(OPTIMIZERS["nadam"])} == set(values) - {"name"}
    model = torch.nn.Linear(4, 3)
    optimizer = make_optimizer(model.parameters(), values)
    assert type(optimizer) is torch.optim.NAdam and optimizer.defaults["momentum_decay"] == 0.004
    before = model.weight.detach().clone()
    model(torch.randn(2, 4)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(model.weight, before)
    with pytest.raises(ConfigError, match=r"^optim.momentum_decay must not be negative, got -1$"):
        make_optimizer(model.parameters(), {**values, "momentum_decay": -1})
    with pytest.raises(ConfigError, match=r"^optim.betas must be in \[0, 1\), got \[0.9, 1.0\]$"):
        make_optimizer(model.parameters(), {**values, "betas": [0.9, 1.0]})


def test_schedule_from_the_docs_warms_up_then_decays_along_the_cosine(registries):
    """warmup_steps 10 and total_steps trainer.max_steps (110): lr/10 ... lr over the first ten updates, lr at the
    end of the warm-up, half-way down to min_lr_ratio * lr at step 60, min_lr_ratio * lr from step 110 on."""
    namespace = run_module("lightning_nmt/optim/cosine.py")
    assert SCHEDULES["cosine"] is namespace["CosineOptions"]
    scheduler = yaml.safe_load(FILES["conf/scheduler/cosine.yaml"])
    cfg = OmegaConf.create({"trainer": {"max_steps": 110}, "scheduler": scheduler})
    cfg.scheduler.warmup_steps = 10
    param = torch.nn.Parameter(torch.zeros(1))
    configured = configure_optimizers([param], {"name": "sgd", "lr": 2.0}, cfg.scheduler, None)
    optimizer, entry = configured["optimizer"], configured["lr_scheduler"]
    assert entry["interval"] == "step"
    lrs = []
    for _ in range(120):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        entry["scheduler"].step()
    expected = {0: 0.2, 4: 1.0, 9: 2.0, 10: 2.0, 60: 0.2 + 1.8 / 2, 110: 0.2, 119: 0.2}
    assert {step: lrs[step] for step in expected} == pytest.approx(expected)
    assert lrs[10:111] == sorted(lrs[10:111], reverse=True)
    cfg.trainer.max_steps = 5
    with pytest.raises(ConfigError, match=r"^scheduler.total_steps must exceed scheduler.warmup_steps \(10\), got 5$"):
        configure_optimizers([param], {"name": "sgd"}, cfg.scheduler, None)


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> str:
    path.write_text("".join(json.dumps({"en": en, "fr": fr}, ensure_ascii=False) + "\n" for en, fr in pairs))
    return str(path)


def test_jsonl_format_from_the_docs_reads_validates_and_batches(registries, tmp_path):
    run_module("lightning_nmt/data/jsonl.py")
    pairs = generate_pairs(260, seed=3)
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", part)
             for name, part in (("train", pairs[:200]), ("val", pairs[200:230]), ("test", pairs[230:]))}
    dm = ParallelDataModule(corpus="jsonl", src_lang="en", tgt_lang="fr", **files, cache_dir=str(tmp_path / "cache"),
                            tokenizer={"type": "unigram", "vocab_size": 300, "joint": True})
    dm.setup()
    assert len(dm.dataset("train")) + sum(dm.drop_counts.values()) == 200
    assert dm.references("test") == [fr for _, fr in pairs[230:]]
    assert next(iter(dm.train_dataloader()))["src"].dim() == 2
    (tmp_path / "bad.jsonl").write_text('{"en": "a", "fr": "b"}\n{"en": "c"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: expected a JSON object with the keys 'en' and 'fr'"):
        ParallelDataModule(corpus="jsonl", src_lang="en", tgt_lang="fr", train=str(tmp_path / "bad.jsonl"),
                           cache_dir=str(tmp_path / "cache")).setup()


@pytest.mark.slow
def test_the_doc_files_alone_extend_lnmt_train(tmp_path):
    """A copy of the package and conf/ with the doc's files added, nothing else edited: `lnmt-train` trains
    `model=bag_of_words` with `optim=nadam scheduler=cosine`, and `+variant=attention_sparsemax`, on `data=jsonl`."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "lightning_nmt", src / "lightning_nmt", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", src / "conf")
    for path, code in FILES.items():
        (src / path).write_text(code)
    pairs = generate_pairs(400, seed=4)
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", part)
             for name, part in (("train", pairs[:340]), ("val", pairs[340:370]), ("test", pairs[370:]))}
    common = ["data=jsonl", "data.src_lang=en", "data.tgt_lang=fr", *(f"data.{k}={v}" for k, v in files.items()),
              "data.tokenizer.vocab_size=300", "trainer.max_steps=4", "trainer.val_check_interval=4",
              "decoding.beam_size=2", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
              "trainer.enable_progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    for name, extra in (("bow", ["model=bag_of_words", "optim=nadam", "scheduler=cosine", "scheduler.warmup_steps=2"]),
                        ("sparsemax", ["+variant=attention_sparsemax", "model.embedding_dim=32",
                                       "model.encoder_hidden=32", "model.decoder_hidden=32"])):
        run = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "lightning_nmt.train", *common, *extra, f"hydra.run.dir={run}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["steps"] == 4, metrics
    assert sorted(p.name for p in (tmp_path / "sparsemax" / "attention").glob("*.png"))  # its heatmaps were drawn
    last = torch.load(tmp_path / "bow" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert list(last["optimizer_states"][0]["state"].values())[0]["mu_product"] < 1  # NAdam's own state
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.002)  # the cosine's end
