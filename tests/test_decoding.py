"""Decoding as plug-ins: the one decoding object, sampling and its seeds, the penalties every strategy honours,
ensembles, and inference without the training stack."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_nmt.backends import TorchBackend, load_backend
from lightning_nmt.data.sample import generate_pairs
from lightning_nmt.data.tokenizer import Tokenizer
from lightning_nmt.errors import CheckpointError, ConfigError
from lightning_nmt.inference import InferenceModel
from lightning_nmt.models.ensemble import Ensemble
from lightning_nmt.search import SEARCHES, DecodingConfig, search
from lightning_nmt.search.base import penalize
from lightning_nmt.translate import Translator
from tests.test_models_build import MODEL_KINDS, random_batch, small_model

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
LINES = [p[0] for p in generate_pairs(12, seed=11)]  # sentences of the corpus the fixtures were trained on


def batch_of(seed: int, size: int = 6, max_len: int = 10):
    """A batch of `size` random sources (and targets)."""
    return random_batch(seed, size, max_len=max_len)


# ---- the decoding object ------------------------------------------------------------------------------------------

def test_the_decoding_object_is_frozen_hashable_and_round_trips_its_flat_form():
    decoding = DecodingConfig.from_dict({"strategy": "sampling", "top_p": 0.9, "seed": 3, "nbest": 2})
    assert decoding.strategy == "sampling" and decoding.options.top_p == 0.9 and decoding.seed == 3
    assert DecodingConfig.from_dict(decoding.to_dict()) == decoding
    assert len({decoding, DecodingConfig.from_dict(decoding.to_dict()), DecodingConfig()}) == 2  # the batcher's key
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoding.beam_size = 3  # type: ignore[misc]
    # another strategy keeps the common keys and drops the old strategy's own
    beam = decoding.with_overrides(strategy="beam", nbest=1)
    assert beam.strategy == "beam" and beam.seed == 3 and not hasattr(beam.options, "top_p")


@pytest.mark.parametrize(("given", "message"), [
    ({"top_k": 5}, "decoding.top_k is an option of strategy sampling, not of beam"),
    ({"strategy": "sampling", "beam_stop": "best_finished"}, "decoding.beam_stop is an option of strategy beam"),
    ({"strategy": "nucleus"}, "unknown decoding.strategy 'nucleus'; registered: "),
    ({"strategy": "sampling", "temperature": 0}, "decoding.temperature must be positive"),
    ({"strategy": "sampling", "top_p": 0}, "decoding.top_p must be in (0, 1]"),
    ({"strategy": "sampling", "top_k": -1}, "decoding.top_k must not be negative"),
    ({"nbest": 6}, "decoding.nbest=6 is more than strategy beam gives (at most 5 = beam_size)"),
    ({"strategy": "greedy", "nbest": 2}, "decoding.nbest=2 is more than strategy greedy gives (at most 1)"),
    ({"no_repeat_ngram_size": -2}, "decoding.no_repeat_ngram_size must not be negative"),
    ({"repetition_penalty": -1.0}, "decoding.repetition_penalty must be positive"),
])
def test_contradicting_or_out_of_range_options_are_one_error(given, message):
    with pytest.raises(ValueError) as err:
        DecodingConfig().with_overrides(**given)
    assert str(err.value).startswith(message), err.value


def test_every_strategy_has_a_conf_file_that_composes():
    from hydra import compose, initialize_config_dir

    from lightning_nmt.config import CONF_DIR, check_values, register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for name in SEARCHES:
            cfg = compose(config_name="train", overrides=[f"decoding={name}"])
            check_values(cfg)
            assert cfg.decoding.strategy == name
    assert sorted(p.stem for p in (Path(CONF_DIR) / "decoding").glob("*.yaml")) == sorted(SEARCHES)


# ---- sampling -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_top_k_1_sampling_is_greedy(kind):
    model, b = small_model(**MODEL_KINDS[kind]), batch_of(1)
    greedy = search(model, b["src"], b["src_lengths"], strategy="greedy", length_penalty=0.6)
    sampled = search(model, b["src"], b["src_lengths"], strategy="sampling", top_k=1, temperature=2.0, seed=9,
                     length_penalty=0.6)
    assert sampled.tokens == greedy.tokens
    torch.testing.assert_close(sampled.scores, greedy.scores)


def test_a_fixed_seed_reproduces_and_seeds_differ():
    model, b = small_model(), batch_of(2)
    runs = {seed: [search(model, b["src"], b["src_lengths"], strategy="sampling", seed=seed).tokens
                   for _ in range(2)] for seed in (1, 2)}
    assert runs[1][0] == runs[1][1] and runs[2][0] == runs[2][1]
    assert runs[1][0] != runs[2][0]


def test_a_seeded_sentence_is_the_same_whatever_is_batched_with_it():
    model, b = small_model(**MODEL_KINDS["transformer"]), batch_of(3)
    together = search(model, b["src"], b["src_lengths"], strategy="sampling", seed=5, nbest=3)
    for i in range(len(b["src"])):
        n = int(b["src_lengths"][i])
        alone = search(model, b["src"][i: i + 1, :n], b["src_lengths"][i: i + 1], strategy="sampling", seed=5,
                       nbest=3)
        assert alone.tokens[0] == together.tokens[i]


def test_nbest_draws_are_distinct_and_best_first():
    model, b = small_model(), batch_of(4)
    result = search(model, b["src"], b["src_lengths"], strategy="sampling", seed=1, nbest=4, temperature=1.5)
    for hyps, scores in zip(result.tokens, result.scores.tolist(), strict=True):
        assert len(hyps) == 4 and len({tuple(h) for h in hyps}) == 4
        assert scores == sorted(scores, reverse=True)
    # a peaked distribution has fewer distinct draws: fewer hypotheses, never a repeated one
    peaked = search(model, b["src"], b["src_lengths"], strategy="sampling", seed=1, nbest=3, top_k=1)
    assert all(len(hyps) == 1 for hyps in peaked.tokens)
    assert torch.isinf(peaked.scores[:, 1:]).all()


def test_truncation_keeps_what_each_rule_says():
    def kept(probs, **options):
        return SEARCHES["sampling"](**options).keep(torch.tensor([probs])).tolist()[0]

    probs = [0.5, 0.3, 0.15, 0.05]
    assert kept(probs, top_k=2) == [True, True, False, False]
    assert kept(probs, top_p=0.5) == [True, False, False, False]  # 0.5 reached by the first
    assert kept(probs, top_p=0.6) == [True, True, False, False]  # the token that reaches top_p is kept
    assert kept(probs, top_k=2, top_p=0.6) == [True, False, False, False]  # top-p of the renormalised top-k (.625)
    assert kept(probs, epsilon=0.1) == [True, True, True, False]
    assert kept([0.4, 0.3, 0.3], epsilon=0.9) == [True, False, False]  # the most probable is always kept


@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"epsilon": 0.05}, {"top_k": 5, "epsilon": 0.05},
                                     {"top_p": 0.7}, {"top_k": 4, "top_p": 0.8}, {"temperature": 0.5, "top_k": 2}])
def test_a_draw_picks_only_what_the_truncation_keeps(options):
    """The draw (a cumulative sum in vocabulary order unless the nucleus needs an order) picks only among the tokens
    the sorted rule `keep` allows, and picks each of them that has a renormalised probability above 0.1%."""
    torch.manual_seed(0)
    sampler = SEARCHES["sampling"](**options)
    log_probs = (torch.randn(4, 30) * 2).log_softmax(dim=1)
    ordered, order = (log_probs / sampler.temperature).log_softmax(dim=1).sort(dim=1, descending=True, stable=True)
    kept = ordered.exp() * sampler.keep(ordered.exp())
    kept = kept / kept.sum(dim=1, keepdim=True)
    drawn: list[set[int]] = [set() for _ in range(4)]
    for u in torch.linspace(0, 0.9999, 4000):
        for r, token in enumerate(sampler.draw(log_probs, u.repeat(4)).tolist()):
            drawn[r].add(token)
    for r in range(4):
        assert drawn[r] <= set(order[r][kept[r] > 0].tolist())
        assert drawn[r] >= set(order[r][kept[r] > 1e-3].tolist())


# ---- penalties ----------------------------------------------------------------------------------------------------

def repeats(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3), kind=st.sampled_from(["basic", "attention", "transformer"]),
       strategy=st.sampled_from(["greedy", "beam", "sampling"]))
def test_no_output_repeats_an_ngram(seed, n, kind, strategy):
    """Untrained models repeat themselves; under no_repeat_ngram_size=n no hypothesis holds an n-gram twice."""
    model = small_model(seed % 7, **MODEL_KINDS[kind])
    b = batch_of(seed, 3, max_len=8)
    extra = {"seed": seed} if strategy == "sampling" else {"beam_size": 3, "nbest": 3} if strategy == "beam" else {}
    result = search(model, b["src"], b["src_lengths"], strategy=strategy, no_repeat_ngram_size=n, max_len_ratio=3.0,
                    **extra)
    for hyps in result.tokens:
        for hyp in hyps:
            assert not repeats(hyp, n), (hyp, n)


def test_the_penalties_change_the_logits_as_documented():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0, -2.0]])
    prefix = torch.tensor([[1, 3, 3]])
    got = penalize(logits, prefix, DecodingConfig(repetition_penalty=2.0))
    assert got.tolist() == [[2.0, -2.0, 0.5, 0.5, -2.0]]  # held tokens: positive halved, negative doubled, once
    blocked = penalize(logits, torch.tensor([[1, 3, 1]]), DecodingConfig(no_repeat_ngram_size=2))
    assert blocked[0, 3] == float("-inf") and blocked[0, [0, 1, 2, 4]].isfinite().all()  # "1 3" seen: 3 after 1
    assert penalize(logits, prefix, DecodingConfig()) is logits


def test_the_score_is_what_the_search_ranked_by_penalties_included():
    """The greedy score with a repetition penalty is the sum of the penalised log-probabilities (teacher-forced)."""
    model, b = small_model(), batch_of(5, size=2)
    decoding = DecodingConfig(repetition_penalty=1.8, length_penalty=0.0)
    result = search(model, b["src"], b["src_lengths"], decoding, strategy="greedy")
    for row, hyps in enumerate(result.tokens):
        tokens = torch.tensor([[2, *hyps[0]]])  # BOS, the hypothesis
        n = int(b["src_lengths"][row])
        hidden, _ = model(b["src"][row: row + 1, :n], b["src_lengths"][row: row + 1], tokens)
        logits = model.project(hidden)[0].float()
        total = 0.0
        for t, token in enumerate([*hyps[0], 3]):
            step = penalize(logits[t: t + 1], tokens[:, 1: t + 1], decoding).log_softmax(-1)
            total += float(step[0, token])
        assert result.scores[row, 0].item() == pytest.approx(total, abs=1e-4)


# ---- ensembles ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["greedy", "beam", "sampling"])
def test_an_ensemble_of_a_model_with_itself_translates_as_the_model(strategy):
    model, b = small_model(**MODEL_KINDS["attention"]), batch_of(6)
    settings_ = {"strategy": strategy, "seed": 4} if strategy == "sampling" else {"strategy": strategy}
    alone = search(model, b["src"], b["src_lengths"], **settings_)
    pair = search(Ensemble([model, model]), b["src"], b["src_lengths"], **settings_)
    assert pair.tokens == alone.tokens
    torch.testing.assert_close(pair.scores, alone.scores, atol=1e-5, rtol=0)
    for ours, theirs in zip(pair.attention, alone.attention, strict=True):
        torch.testing.assert_close(ours[0], theirs[0])


def test_an_ensemble_of_two_types_averages_their_log_probabilities():
    a, b_model = small_model(1, **MODEL_KINDS["attention"]), small_model(2, **MODEL_KINDS["transformer"])
    b = batch_of(7, size=3)
    ensemble = Ensemble([a, b_model])
    enc = ensemble.encode(b["src"], b["src_lengths"])
    tokens = torch.full((3,), 2)
    log_probs, _, weights = ensemble.decode_step(tokens, enc, ensemble.init_state(enc))
    each = [m.decode_step(tokens, m.encode(b["src"], b["src_lengths"]),
                          m.init_state(m.encode(b["src"], b["src_lengths"])))[0].log_softmax(-1) for m in (a, b_model)]
    torch.testing.assert_close(log_probs, (each[0] + each[1]) / 2)
    assert weights is not None and weights.shape == (3, b["src"].size(1))


def test_an_ensemble_of_a_checkpoint_with_itself_on_the_command_line(tmp_path):
    ckpt = FIXTURES / "attention.ckpt"
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in LINES))
    outputs = {}
    for name, path in (("alone", str(ckpt)), ("pair", f"[{ckpt},{ckpt}]")):
        out = tmp_path / f"{name}.txt"
        proc = subprocess.run([sys.executable, "-m", "lightning_nmt.translate", f"ckpt_path={path}",
                               f"input={source}", f"output={out}", "beam_size=3"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outputs[name] = out.read_text()
    assert outputs["pair"] == outputs["alone"] and outputs["alone"].count("\n") == len(LINES)


def test_ensemble_members_must_share_the_tokenizer(tmp_path):
    fixture = torch.load(FIXTURES / "transformer.ckpt", weights_only=True)
    other = copy.deepcopy(fixture)
    pairs = generate_pairs(800, seed=5)
    other["tokenizer"] = Tokenizer.train([p[0] for p in pairs], [p[1] for p in pairs], vocab_size=400).to_state()
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError) as err:
        InferenceModel.load([FIXTURES / "transformer.ckpt", tmp_path / "other.ckpt"])
    assert str(err.value) == (f"ensemble member {tmp_path / 'other.ckpt'} does not share the tokenizer of "
                              f"{FIXTURES / 'transformer.ckpt'}: the source sentencepiece model, the target "
                              "sentencepiece model differ")


def test_a_missing_member_or_an_exported_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {tmp_path / 'gone.ckpt'}"):
        load_backend([FIXTURES / "attention.ckpt", tmp_path / "gone.ckpt"])
    (tmp_path / "exported").mkdir()
    with pytest.raises(ConfigError, match="exported CTranslate2 directory: an ensemble takes checkpoints"):
        load_backend([FIXTURES / "attention.ckpt", tmp_path / "exported"])


def test_an_ensemble_translator_reports_its_members():
    translator = Translator.from_checkpoint([FIXTURES / "attention.ckpt", FIXTURES / "transformer.ckpt"],
                                            beam_size=2)
    backend = translator.backend
    assert isinstance(backend, TorchBackend) and backend.model_type == "ensemble(attention,transformer)"
    hyps = translator.hypotheses(LINES[:2], attention=True)
    assert all(h[0].attention is not None for h in hyps)  # the mean of the members' weights


# ---- inference without the training stack --------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["lightning_nmt.serve", "lightning_nmt.translate"])
def test_inference_imports_neither_lightning_nor_torchmetrics(module):
    code = (f"import json, sys, {module}; training = {{'lightning', 'pytorch_lightning', 'torchmetrics'}}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & training)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == []


def test_a_checkpoint_translates_the_same_without_the_lightning_module():
    from lightning_nmt.module import TranslationModule
    from lightning_nmt.translate import translate_lines

    module = TranslationModule.load(FIXTURES / "transformer.ckpt")
    plain = Translator.from_checkpoint(FIXTURES / "transformer.ckpt", beam_size=3)
    assert [h[0][0] for h in translate_lines(module, LINES, beam_size=3)] == plain.translate(LINES)


def test_lnmt_eval_scores_an_ensemble_of_a_checkpoint_with_itself_as_the_checkpoint(tmp_path):
    """`lnmt-eval ckpt_path=[a,a]`: the same BLEU as `a`, no teacher-forced loss, both paths in eval.json."""
    from lightning_nmt.eval import evaluate
    from tests.conftest import compose_config

    ckpt = FIXTURES / "attention.ckpt"
    scores = []
    for name, path in (("alone", str(ckpt)), ("pair", f"[{ckpt},{ckpt}]")):
        cfg = compose_config("eval", [f"ckpt_path={path}", "beam_size=2", f"output={tmp_path / name}.json",
                                      "data=sample", "data.sample_sizes={train:20,val:10,test:30}"], tmp_path)
        scores.append(evaluate(cfg)["test"])
    assert scores[1]["bleu"] == scores[0]["bleu"] and scores[1]["sentences"] == 30
    assert scores[0]["loss"] > 0 and scores[1]["loss"] is None
    assert json.loads((tmp_path / "pair.json").read_text())["ckpt_path"] == [str(ckpt), str(ckpt)]


def test_an_empty_checkpoint_list_is_named():
    from lightning_nmt.translate import model_paths

    with pytest.raises(ConfigError, match=r"ckpt_path=\[\] names no checkpoint"):
        model_paths([])
