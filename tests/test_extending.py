"""docs/extending.md's worked examples, run as they are written there: a score that overrides `forward`
(sparsemax), a model type, a corpus format (JSON Lines), an optimizer (NAdam), a schedule (cosine with warm-up) and a
decoding strategy (MBR over samples). In process with the registries restored afterwards; with `-m slow`, as
`lnmt-train` and `lnmt-translate` run in a copy of the source tree with just the doc's files added."""

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
from lightning_nmt.search import SEARCHES, DecodingConfig, search
from lightning_nmt.search.schema import decoding_schema
from tests.test_models_build import SMALL, make_batch, random_batch, small_model

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "extending.md").read_text()
FILES = {next(line[2:] for line in code.splitlines() if re.fullmatch(r"# [\w/]+\.(py|yaml)", line)): code
         for _, code in re.findall(r"```(python|yaml)\n(.*?)```", DOC, flags=re.S)}
"""The doc's code blocks by the path their first line names."""


def test_the_doc_adds_one_module_and_one_config_file_per_extension() -> None:
    assert sorted(FILES) == ["conf/data/jsonl.yaml", "conf/decoding/mbr.yaml", "conf/model/bag_of_words.yaml",
                             "conf/optim/nadam.yaml", "conf/scheduler/cosine.yaml",
                             "conf/variant/attention_sparsemax.yaml", "lightning_nmt/data/jsonl.py",
                             "lightning_nmt/models/bag_of_words.py", "lightning_nmt/models/sparsemax.py",
                             "lightning_nmt/optim/cosine.py", "lightning_nmt/optim/nadam.py",
                             "lightning_nmt/search/mbr.py"]


@pytest.fixture
def registries(monkeypatch):
    """The doc's registrations, undone afterwards."""
    monkeypatch.setattr("lightning_nmt.models.attention.ATTENTIONS", dict(ATTENTIONS))
    monkeypatch.setattr("lightning_nmt.data.formats.CORPORA", dict(CORPORA))
    yield
    MODEL_TYPES.pop("bag_of_words", None)
    OPTIMIZERS.pop("nadam", None)
    SCHEDULES.pop("cosine", None)
    SEARCHES.pop("mbr", None)


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


def test_chrf_from_the_docs_scores_token_ngrams_with_recall_weighed_twice(registries):
    namespace = run_module("lightning_nmt/search/mbr.py")
    chrf, expected_utility = namespace["chrf"], namespace["expected_utility"]
    assert chrf([4, 5, 6, 7], [4, 5, 6, 7]) == 1.0 and chrf([], []) == 1.0
    assert chrf([4, 5], [6, 7]) == 0.0 and chrf([], [4]) == 0.0 and chrf([4], []) == 0.0
    # orders 1-3 count (no 4-gram): precision = recall = (2/3 + 1/2 + 0) / 3
    assert chrf([4, 5, 6], [4, 5, 7]) == pytest.approx(7 / 18)
    # orders 1-2 count: precision 1, recall (1/2 + 1/3) / 2 = 5/12; F2 = 5 * 5/12 / (4 + 5/12)
    assert chrf([4, 5], [4, 5, 6, 7]) == pytest.approx(25 / 53)
    assert chrf([4, 5, 6, 7], [4, 5]) == pytest.approx(5 * 5 / 12 / (4 * 5 / 12 + 1))  # recall weighs more
    assert expected_utility([[4, 5, 6]]) == [0.0]
    assert expected_utility([[4, 5, 6], [4, 5, 7], [8]]) == pytest.approx([7 / 36, 7 / 36, 0.0])


def test_mbr_from_the_docs_picks_the_samples_of_highest_expected_utility(registries):
    """`strategy=mbr samples=8 seed=1` ranks the 8 draws of `strategy=sampling nbest=8 seed=1` by the doc's expected
    utility: its n-best are the draws of highest utility, with sampling's scores and attention."""
    namespace = run_module("lightning_nmt/search/mbr.py")
    assert SEARCHES["mbr"] is namespace["MBROptions"]
    expected_utility = namespace["expected_utility"]
    model, batch = small_model(), random_batch(3, size=5)
    src, lengths = batch["src"], batch["src_lengths"]
    drawn = search(model, src, lengths, strategy="sampling", nbest=8, seed=1, attention=True)
    ranked = search(model, src, lengths, strategy="mbr", samples=8, nbest=3, seed=1, attention=True)
    for i, candidates in enumerate(drawn.tokens):
        utility = expected_utility(candidates)
        picked = [candidates.index(hyp) for hyp in ranked.tokens[i]]  # each is one of the draws
        assert len(candidates) == 8 and len(set(picked)) == len(picked) == 3
        assert [utility[k] for k in picked] == sorted(utility, reverse=True)[:3]
        assert ranked.scores[i].tolist() == drawn.scores[i, picked].tolist()  # the model's scores, not utilities
        for k, weights in zip(picked, ranked.attention[i], strict=True):
            assert torch.equal(weights, drawn.attention[i][k])
    assert any(hyps[0] != candidates[0] for hyps, candidates in zip(ranked.tokens, drawn.tokens, strict=True))
    best = search(model, src, lengths, strategy="mbr", samples=8, seed=1)
    assert best.tokens == [hyps[:1] for hyps in ranked.tokens]
    assert best.tokens == search(model, src, lengths, strategy="mbr", samples=8, seed=1).tokens  # reproducible
    assert best.tokens != search(model, src, lengths, strategy="mbr", samples=8, seed=2).tokens


@pytest.mark.parametrize(("given", "message"), [
    ({"samples": 0}, "decoding.samples must be at least 1, got 0"),
    ({"samples": 4, "nbest": 5}, "decoding.nbest=5 is more than strategy mbr gives (at most 4)"),
    ({"top_p": 0.0}, "decoding.top_p must be in (0, 1], got 0.0"),
    ({"top_k": 5}, "decoding.top_k is an option of strategy sampling, not of mbr (set strategy=sampling)"),
])
def test_mbr_from_the_docs_refuses_a_bad_option_in_one_line(registries, given, message):
    run_module("lightning_nmt/search/mbr.py")
    model, batch = small_model(), random_batch(3, size=1)
    with pytest.raises(ValueError) as err:
        search(model, batch["src"], batch["src_lengths"], strategy="mbr", **given)
    assert str(err.value) == message


def test_mbr_conf_file_from_the_docs_sets_the_strategys_keys_and_fits_the_schema(registries):
    """In process the `decoding:` schema of lightning_nmt/config.py was built before the doc's module registered
    (the `-m slow` test composes it in a copy of the source tree); here the conf file holds the strategy's keys with
    their defaults, and merges into a schema derived with it registered."""
    namespace = run_module("lightning_nmt/search/mbr.py")
    values = yaml.safe_load(FILES["conf/decoding/mbr.yaml"])
    common = {option.name for option in fields(DecodingConfig)}
    own = {key: value for key, value in values.items() if key not in common and key != "strategy"}
    assert own == {option.name: option.default for option in fields(namespace["MBROptions"])}
    decoding = DecodingConfig.from_dict(values)
    decoding.check()
    assert decoding.strategy == values["strategy"] == "mbr" and decoding.options == namespace["MBROptions"]()
    merged = OmegaConf.merge(OmegaConf.structured(decoding_schema()), values)  # no key declared twice, other types
    assert merged.strategy == "mbr" and merged.samples == 16 and merged.top_k is None


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


def source_copy(tmp_path: Path) -> Path:
    """A copy of the package and conf/ under tmp_path/src with the doc's files added, nothing else edited."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "lightning_nmt", src / "lightning_nmt", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", src / "conf")
    for path, code in FILES.items():
        (src / path).write_text(code)
    return src


def copy_env(src: Path) -> dict[str, str]:
    """The environment of a command line run from the copy `src`."""
    return {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_the_doc_files_alone_extend_lnmt_train(tmp_path):
    """A copy of the package and conf/ with the doc's files added, nothing else edited: `lnmt-train` trains
    `model=bag_of_words` with `optim=nadam scheduler=cosine`, and `+variant=attention_sparsemax`, on `data=jsonl`."""
    src = source_copy(tmp_path)
    pairs = generate_pairs(400, seed=4)
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", part)
             for name, part in (("train", pairs[:340]), ("val", pairs[340:370]), ("test", pairs[370:]))}
    common = ["data=jsonl", "data.src_lang=en", "data.tgt_lang=fr", *(f"data.{k}={v}" for k, v in files.items()),
              "data.tokenizer.vocab_size=300", "trainer.max_steps=4", "trainer.val_check_interval=4",
              "decoding.beam_size=2", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
              "trainer.enable_progress_bar=false"]
    env = copy_env(src)
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


@pytest.mark.slow
def test_the_doc_files_alone_extend_lnmt_translate_with_mbr(tmp_path):
    """In a copy of the source tree with the doc's files added, `lnmt-translate strategy=mbr samples=4 seed=1` runs
    on a checkpoint of before the strategy existed, with `samples` a command-line key, and translates each line with
    one of the translations `strategy=sampling nbest=4 seed=1` draws for it."""
    src = source_copy(tmp_path)
    lines = [en for en, _ in generate_pairs(6, seed=11)]
    (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines))
    common = [f"ckpt_path={ROOT / 'tests' / 'fixtures' / 'checkpoints' / 'attention.ckpt'}",
              f"input={tmp_path / 'in.txt'}", "seed=1", "max_input_len=1000"]  # no line in segments (each its own)
    for name, extra in (("mbr", ["strategy=mbr", "samples=4"]), ("sampling", ["strategy=sampling", "nbest=4"])):
        done = subprocess.run([sys.executable, "-m", "lightning_nmt.translate", *common, *extra,
                               f"output={tmp_path / name}.txt"], cwd=tmp_path, env=copy_env(src),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    picked = (tmp_path / "mbr.txt").read_bytes().decode().split("\n")[:-1]  # a sampled piece may be \x1c, \r ...
    drawn: dict[int, list[str]] = {}
    for line in (tmp_path / "sampling.txt").read_bytes().decode().split("\n")[:-1]:
        index, translation, _ = line.split(" ||| ")
        drawn.setdefault(int(index), []).append(translation)
    assert len(picked) == len(lines) and sorted(drawn) == list(range(len(lines)))
    assert all(translation in drawn[i] for i, translation in enumerate(picked)), (picked, drawn)
