"""lnmt-export and the CTranslate2 backend (`lightning_nmt.ct2`): an exported float32 Transformer gives our per-token
log-probabilities and our greedy outputs, for pre- and post-norm, separate, shared and tied embeddings, joint and
separate vocabularies; its attention is ours; beam search ranks with our length penalty; an int8 export loads and
translates; recurrent, missing and corrupt checkpoints are one-line errors with exit status 2."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2", reason="CTranslate2 is not installed (pip install ctranslate2)")

from lightning_nmt.backends import Hypothesis, TorchBackend  # noqa: E402
from lightning_nmt.ct2 import CTranslate2Model  # noqa: E402
from lightning_nmt.data.batching import collate  # noqa: E402
from lightning_nmt.data.dataset import Example  # noqa: E402
from lightning_nmt.data.sample import generate_pairs  # noqa: E402
from lightning_nmt.data.tokenizer import Tokenizer  # noqa: E402
from lightning_nmt.errors import ConfigError  # noqa: E402
from lightning_nmt.export import RECURRENT_MESSAGE, export, main  # noqa: E402
from lightning_nmt.models import build_model  # noqa: E402
from lightning_nmt.module import TranslationModule  # noqa: E402
from lightning_nmt.search.beam import BeamStop  # noqa: E402
from lightning_nmt.tokens import PAD_ID  # noqa: E402
from lightning_nmt.translate import Translator, translate_lines  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
TRANSFORMER = FIXTURES / "transformer.ckpt"
# the fixture's lines: 8 test sentences, an empty line, and a 70-word line (translated in segments, max_len 60,
# its output stopped at the length limit)
LINES = json.loads((FIXTURES / "translations.json").read_text())["lines"]
PAIRS = generate_pairs(24, seed=11)  # real sentences of the sample corpus (en -> fr), as the fixture was trained on
VARIANTS = {  # model options over the fixture's (pre-norm, tied, separate embeddings, d_model 32, 2 heads, 2 layers)
    "post-norm, untied": {"norm_first": False, "tie_embeddings": False},
    "shared and tied": {"share_embeddings": True, "tie_embeddings": True},
    "post-norm, shared, untied": {"norm_first": False, "share_embeddings": True, "tie_embeddings": False},
    "separate vocabularies, 3 layers": {"d_model": 48, "nhead": 4, "ffn_dim": 80, "transformer_layers": 3},
}


def _export(ckpt: Path, directory: Path, quantization: str = "float32") -> Path:
    return export(ckpt, directory, quantization)


def _variant_checkpoint(directory: Path, name: str) -> Path:
    """A checkpoint in the format `read_checkpoint` accepts, with the fixture's settings, `VARIANTS[name]` model options
    and random weights (seeded); the tokenizer is the fixture's, or one model per side for "separate vocabularies"."""
    fixture = torch.load(TRANSFORMER, weights_only=True)
    hparams = copy.deepcopy(fixture["hyper_parameters"])
    hparams["model"].update(VARIANTS[name])
    tokenizer = Tokenizer.from_state(fixture["tokenizer"])
    if name.startswith("separate"):
        pairs = generate_pairs(1500, seed=5)
        tokenizer = Tokenizer.train([p[0] for p in pairs], [p[1] for p in pairs], vocab_size=350, joint=False)
        hparams["src_vocab_size"], hparams["tgt_vocab_size"] = tokenizer.src_vocab_size, tokenizer.tgt_vocab_size
    torch.manual_seed(sorted(VARIANTS).index(name))
    model = build_model(hparams["model"], hparams["src_vocab_size"], hparams["tgt_vocab_size"])
    state_dict = {f"model.{key}": value for key, value in model.state_dict().items()}  # the module's keys
    path = directory / f"{name.replace(' ', '_').replace(',', '')}.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": state_dict, "tokenizer": tokenizer.to_state()}, path)
    return path


@pytest.fixture(scope="module")
def fixture_export(tmp_path_factory) -> tuple[TranslationModule, CTranslate2Model, Path]:
    directory = _export(TRANSFORMER, tmp_path_factory.mktemp("ct2") / "float32")
    return TranslationModule.load(TRANSFORMER), CTranslate2Model(directory, threads=1), directory


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory) -> tuple[TranslationModule, CTranslate2Model]:
    tmp = tmp_path_factory.mktemp("variant")
    ckpt = _variant_checkpoint(tmp, request.param)
    return TranslationModule.load(ckpt), CTranslate2Model(_export(ckpt, tmp / "float32"), threads=1)


def torch_log_probs(module: TranslationModule, src_lines: list[str], tgt_lines: list[str]) -> list[list[float]]:
    """Ours, teacher-forced: the log-probability of each target piece and of EOS, per pair."""
    tok = module.tokenizer
    batch = collate([Example(i, s, t) for i, (s, t) in
                     enumerate(zip(tok.encode_src(src_lines), tok.encode_tgt(tgt_lines), strict=True))])
    with torch.no_grad():
        hidden, _ = module.model(batch["src"], batch["src_lengths"], batch["tgt_in"])
        log_probs = module.model.project(hidden).float().log_softmax(-1)
    picked = log_probs.gather(2, batch["tgt_out"].unsqueeze(2)).squeeze(2)
    lengths = batch["tgt_out"].ne(PAD_ID).sum(1).tolist()
    return [picked[i, :n].tolist() for i, n in enumerate(lengths)]


def assert_same_log_probs(module: TranslationModule, model: CTranslate2Model) -> None:
    src, tgt = [p[0] for p in PAIRS] + LINES[:2], [p[1] for p in PAIRS] + ["", "un homme ."]
    ours, theirs = torch_log_probs(module, src, tgt), model.score(src, tgt)
    assert [len(x) for x in theirs] == [len(x) for x in ours]
    worst = max(abs(a - b) for o, t in zip(ours, theirs) for a, b in zip(o, t))
    assert worst < 1e-4, f"per-token log-probabilities differ by up to {worst}"


def test_log_probs_equal_ours(fixture_export):
    module, model, _ = fixture_export
    assert_same_log_probs(module, model)


def test_log_probs_equal_ours_variants(variant):
    assert_same_log_probs(*variant)


def test_greedy_equals_ours(fixture_export):
    module, model, _ = fixture_export
    lines = LINES + [p[0] for p in PAIRS]
    ours = translate_lines(module, lines, beam_size=1)
    theirs = model.translate_batch(lines, beam_size=1)
    assert [h[0].tgt for h in theirs] == [o[0][0] for o in ours]
    worst = max(abs(h[0].score - o[0][1]) for h, o in zip(theirs, ours))
    assert worst < 1e-4, f"greedy scores differ by up to {worst}"
    assert theirs[8] == [Hypothesis("", 0.0, [], [], None)]  # the empty line, not translated


@pytest.mark.parametrize("limits", [{"min_len_ratio": 1.0, "max_len_ratio": 1.1, "max_len_offset": 0},
                                    {"max_len_ratio": 0.0, "max_len_offset": 1}])
def test_greedy_equals_ours_at_length_limits(fixture_export, monkeypatch, limits):
    """A minimum length (EOS masked: CTranslate2 renormalises, so the outputs are rescored), outputs stopped at the
    maximum (EOS forced, as ours), and a maximum of 1 (nothing but EOS fits)."""
    module, model, _ = fixture_export
    monkeypatch.setattr(module, "decoding", dataclasses.replace(module.decoding, **limits))
    monkeypatch.setattr(model, "decoding", dataclasses.replace(model.decoding, **limits))
    ours = translate_lines(module, LINES, beam_size=1)
    theirs = model.translate_batch(LINES, beam_size=1, attention=True)
    assert [h[0].tgt for h in theirs] == [o[0][0] for o in ours]
    assert max(abs(h[0].score - o[0][1]) for h, o in zip(theirs, ours)) < 1e-4
    assert all(len(h[0].attention) == len(h[0].tgt_pieces) + 1 for h in theirs if h[0].src_pieces)


@pytest.mark.parametrize(("beam_size", "beam_stop"), [(1, "k_finished"), (4, "k_finished"), (4, "best_finished")])
def test_a_batch_gives_each_line_its_own_search(fixture_export, monkeypatch, beam_size, beam_stop):
    """Lines of different lengths share a CTranslate2 call under the largest of their length limits; a line whose
    search had not ended before its own limit is searched again under it: the batch gives each line what searching
    it alone gives (with limits tight enough that some lines stop at theirs). With best_finished, lines share calls
    only with lines of the same limits."""
    _, model, _ = fixture_export
    monkeypatch.setattr(model, "decoding", model.decoding.with_overrides(max_len_ratio=0.6, max_len_offset=2,
                                                                         beam_stop=BeamStop(beam_stop)))
    lines = [line for line in LINES + [p[0] for p in PAIRS] if line.strip()]
    calls: list[list[tuple[list[int], int, int]]] = []
    collect = model._collect
    limits: list[list[tuple[int, int]]] = []  # (max_len, min_len) of each source, per round

    def spy(batches: list[tuple[list[int], int, int]], pieces: list[list[str]], source_limits: list[tuple[int, int]],
            *args: Any) -> None:
        calls.append(batches)
        limits.append(source_limits)
        collect(batches, pieces, source_limits, *args)

    monkeypatch.setattr(model, "_collect", spy)
    together = model.translate_batch(lines, beam_size=beam_size, nbest=beam_size)
    if beam_stop == "k_finished":
        assert calls[0] and calls[1], "no line was searched again: the test does not reach the second round"
    else:  # one limit per call: nothing to search again
        assert calls[0] and not calls[1]
        assert all(len({limits[0][i] for i in batch}) == 1 for batch, _, _ in calls[0])
        assert len({limits[0][i] for batch, _, _ in calls[0] for i in batch}) > 1  # lines of several limits
    alone = [model.translate_batch([line], beam_size=beam_size, nbest=beam_size)[0] for line in lines]
    for line, mine, its_own in zip(lines, together, alone, strict=True):
        assert [h.tgt for h in mine] == [h.tgt for h in its_own], line
        assert max(abs(a.score - b.score) for a, b in zip(mine, its_own)) < 1e-4, line


def test_greedy_equals_ours_variants(variant):
    module, model = variant
    lines = LINES + [p[0] for p in PAIRS]
    assert [h[0].tgt for h in model.translate_batch(lines, beam_size=1)] == \
        [o[0][0] for o in translate_lines(module, lines, beam_size=1)]


def test_beam_ranks_with_our_length_penalty(fixture_export):
    """CTranslate2's own penalty is score / len ** a: `CTranslate2Model` ranks the k finished hypotheses with ours
    (GNMT), and gets our n-best lists. Beam search is exact up to float32 near-ties (lightning_nmt/ct2.py): one line in
    the whole set may go the other way on another CPU."""
    module, model, _ = fixture_export
    lines = LINES + [p[0] for p in PAIRS]
    ours = translate_lines(module, lines, beam_size=5, nbest=2)
    theirs = model.translate_batch(lines, beam_size=5, nbest=2)
    differing = [i for i, (o, h) in enumerate(zip(ours, theirs)) if [x[0] for x in o] != [x.tgt for x in h]]
    assert len(differing) <= 1, f"lines {differing} differ from ours"
    for i, (o, h) in enumerate(zip(ours, theirs)):
        if i not in differing:
            assert max(abs(x[1] - y.score) for x, y in zip(o, h)) < 1e-4


@pytest.mark.parametrize("beam_size", [1, 3])
def test_attention_equals_ours(fixture_export, beam_size):
    """The last layer's cross-attention averaged over heads, (len(tgt_pieces) + 1) x len(src_pieces), for sentences
    translated whole and in segments, with and without a forced EOS."""
    module, model, _ = fixture_export
    lines = [line for line in LINES if line.strip()]
    theirs = model.translate_batch(lines, beam_size=beam_size, nbest=beam_size, attention=True)
    encoded = module.tokenizer.encode_src(lines)
    batch = collate([Example(i, ids, None) for i, ids in enumerate(encoded)])
    with torch.no_grad():
        ours = module.translate(batch["src"], batch["src_lengths"], beam_size=beam_size, nbest=beam_size)
    for i, hyps in enumerate(theirs):
        assert hyps[0].src_pieces == module.tokenizer.src_pieces(lines[i])
        for j, hyp in enumerate(hyps):
            weights = torch.tensor(hyp.attention)
            assert weights.shape == (len(hyp.tgt_pieces) + 1, len(hyp.src_pieces))
            assert hyp.tgt_pieces == module.tokenizer.tgt_pieces_from_ids(ours.tokens[i][j])
            assert torch.allclose(weights, ours.attention[i][j], atol=1e-4), (i, j)


def test_empty_lines_do_not_run_the_model(fixture_export, monkeypatch):
    _, model, _ = fixture_export
    monkeypatch.setattr(model, "translator", None)  # any call would fail
    assert model.translate_batch(["", "   \t"], beam_size=5, nbest=2) == [[Hypothesis("", 0.0, [], [], None)]] * 2
    with pytest.raises(ConfigError, match="nbest"):
        model.translate_batch(["a"], beam_size=2, nbest=3)


def test_directory_contents(fixture_export):
    module, model, directory = fixture_export
    meta = json.loads((directory / "lightning_nmt.json").read_text())
    assert meta["model_type"] == "transformer" and meta["quantization"] == "float32"
    assert meta["decoding"]["beam_size"] == module.decoding.beam_size == model.decoding.beam_size
    assert meta["decoding"]["length_penalty"] == module.decoding.length_penalty
    assert meta["max_input_len"] == module.max_input_len == model.max_input_len == 60
    assert meta["source"]["checkpoint"] == str(TRANSFORMER.resolve())
    assert {"model.bin", "config.json", "shared_vocabulary.json", "joint.model", "tokenizer.json"} <= \
        {p.name for p in directory.iterdir()}
    vocabulary = json.loads((directory / "shared_vocabulary.json").read_text())
    assert vocabulary == module.tokenizer.src_pieces_from_ids(range(module.tokenizer.src_vocab_size))
    config = json.loads((directory / "config.json").read_text())
    assert config["decoder_start_token"] == "<s>" and config["layer_norm_epsilon"] == 1e-5
    assert Tokenizer.load(directory).to_state() == module.tokenizer.to_state()


def test_separate_vocabularies_are_written_apart(tmp_path):
    ckpt = _variant_checkpoint(tmp_path, "separate vocabularies, 3 layers")
    directory = _export(ckpt, tmp_path / "out")
    names = {p.name for p in directory.iterdir()}
    assert {"source_vocabulary.json", "target_vocabulary.json", "src.model", "tgt.model"} <= names


def test_int8_export_loads_and_translates(fixture_export, tmp_path, capsys):
    _, _, float32 = fixture_export
    main([str(TRANSFORMER), str(tmp_path / "int8"), "--quantization", "int8"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "int8")
    # int8 weights; the position table (5000 x 32 floats, not a weight) stays float32
    assert (tmp_path / "int8" / "model.bin").stat().st_size < (float32 / "model.bin").stat().st_size - 150_000
    model = CTranslate2Model(tmp_path / "int8", threads=1)
    assert model.metadata["quantization"] == "int8"
    found = model.translate_batch(LINES[:4], beam_size=3, nbest=2)
    assert all(len(hyps) == 2 and hyps[0].tgt.strip() and hyps[0].score >= hyps[1].score for hyps in found)
    assert all(len(scores) == len(model.tokenizer.encode_tgt([p[1]])[0]) + 1
               for scores, p in zip(model.score([p[0] for p in PAIRS[:4]], [p[1] for p in PAIRS[:4]]), PAIRS))


def _fails(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_recurrent_checkpoint_is_refused(tmp_path, capsys):
    err = _fails([str(FIXTURES / "attention.ckpt"), str(tmp_path / "out")], capsys)
    assert RECURRENT_MESSAGE in err
    assert "lnmt-serve CHECKPOINT.ckpt" in err and not (tmp_path / "out").exists()


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    assert "not found" in _fails([str(tmp_path / "none.ckpt"), str(tmp_path / "out")], capsys)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    assert "garbage.ckpt" in _fails([str(garbage), str(tmp_path / "out")], capsys)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(TRANSFORMER.read_bytes()[:50_000])
    assert "truncated.ckpt" in _fails([str(truncated), str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    assert "--force" in _fails([str(TRANSFORMER), str(out)], capsys)
    assert (out / "old.txt").read_text() == "keep me"
    main([str(TRANSFORMER), str(out), "--force"])
    assert not (out / "old.txt").exists() and (out / "model.bin").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind


def test_translate_and_eval_take_an_exported_directory(fixture_export, tmp_path):
    """`Translator.load`, `lnmt-translate` and `lnmt-eval` read an exported directory as they read the checkpoint:
    the same greedy translations, the same test BLEU; `lnmt-eval` reports no teacher-forced loss for it."""
    from lightning_nmt.eval import evaluate
    from lightning_nmt.translate import Translator, translate
    from tests.conftest import compose_config

    _, _, directory = fixture_export
    lines = LINES[:6]
    by_ckpt = Translator.load(TRANSFORMER, beam_size=1)
    by_dir = Translator.load(directory, beam_size=1)
    assert by_dir.backend.backend == "ctranslate2" and by_dir.translate(lines) == by_ckpt.translate(lines)
    (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines))
    outputs = []
    for model in (TRANSFORMER, directory):
        out = tmp_path / f"{Path(model).name}.out"
        translate(compose_config("translate", [f"ckpt_path={model}", f"input={tmp_path / 'in.txt'}", f"output={out}",
                                               "beam_size=1"]))
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] == "".join(line + "\n" for line in by_ckpt.translate(lines))
    scores = []
    for model in (TRANSFORMER, directory):
        cfg = compose_config("eval", [f"ckpt_path={model}", "beam_size=1", f"output={tmp_path / Path(model).name}.json",
                                      "data=sample", "data.sample_sizes={train:20,val:10,test:40}"], tmp_path)
        scores.append(evaluate(cfg)["test"])
    assert scores[0]["bleu"] == scores[1]["bleu"] and scores[0]["sentences"] == scores[1]["sentences"] > 0
    assert scores[0]["loss"] > 0 and scores[1]["loss"] is None


# ---- decoding options on CTranslate2 ------------------------------------------------------------------------------

@pytest.mark.parametrize("penalties", [{"no_repeat_ngram_size": 2}, {"no_repeat_ngram_size": 1},
                                       {"repetition_penalty": 1.6},
                                       {"no_repeat_ngram_size": 3, "repetition_penalty": 1.3}])
def test_penalties_under_greedy_give_our_outputs(fixture_export, penalties):
    """CTranslate2 applies our rules (logits before the log-softmax, the output so far without BOS): greedy outputs
    are equal."""
    module, model, _ = fixture_export
    lines = LINES[:8] + [p[0] for p in PAIRS]
    decoding = module.decoding.with_overrides(beam_size=1, **penalties)
    ours = Translator(TorchBackend(module.inference_model()), beam_size=1, **penalties).hypotheses(lines)
    theirs = model.translate_batch(lines, decoding)
    assert [h[0].tgt for h in theirs] == [o[0].tgt for o in ours]
    plain = Translator(TorchBackend(module.inference_model()), beam_size=1).translate(lines)
    assert plain != [o[0].tgt for o in ours]  # the penalties changed something


def test_top_k_1_sampling_on_ctranslate2_is_greedy(fixture_export):
    _, model, _ = fixture_export
    lines = [p[0] for p in PAIRS[:8]]
    greedy = model.translate_batch(lines, beam_size=1)
    sampled = model.translate_batch(lines, strategy="sampling", top_k=1, nbest=3)
    assert [h[0].tgt for h in sampled] == [h[0].tgt for h in greedy] and all(len(h) == 1 for h in sampled)


def test_sampling_on_ctranslate2_is_seeded_at_load_and_refuses_what_it_cannot_run(fixture_export):
    _, _, directory = fixture_export
    lines = [p[0] for p in PAIRS[:6]]
    runs = [CTranslate2Model(directory, seed=7).translate_batch(lines, strategy="sampling", seed=7, nbest=3)
            for _ in range(2)]
    assert [[h.tgt for h in hyps] for hyps in runs[0]] == [[h.tgt for h in hyps] for hyps in runs[1]]
    for hyps in runs[0]:
        assert len({h.tgt for h in hyps}) == len(hyps) and [h.score for h in hyps] == sorted(
            [h.score for h in hyps], reverse=True)
    model = CTranslate2Model(directory, seed=7)
    assert model.workers == 1
    for options, message in (({"seed": 8}, "seed=8 does not run on the ctranslate2 backend"),
                             ({"epsilon": 0.1}, "epsilon does not run on the ctranslate2 backend")):
        with pytest.raises(ConfigError, match=message):
            model.translate_batch(lines, strategy="sampling", **options)
