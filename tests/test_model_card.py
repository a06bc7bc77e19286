"""lnmt-export's model card (`README.md` of the exported directory): Hugging Face front matter, the checkpoint's
model, data and decoding settings, and only recorded scores: the training run's (`<run>/metrics.json`, when it
tested this checkpoint), an `lnmt-eval` output given with `--eval-json`, else "no scores" and how to get them. A
malformed eval.json is a one-line error that writes nothing; the card does not get in the way of serving."""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

ctranslate2 = pytest.importorskip("ctranslate2", reason="CTranslate2 is not installed (pip install ctranslate2)")

from lightning_nmt import export as export_module  # noqa: E402
from lightning_nmt import metrics, record  # noqa: E402
from lightning_nmt.ct2 import CTranslate2Model, read_metadata  # noqa: E402
from lightning_nmt.errors import UserError, WriteError  # noqa: E402
from lightning_nmt.export import CARD_FILE, ExportError, export, main  # noqa: E402
from lightning_nmt.module import TranslationModule  # noqa: E402
from lightning_nmt.record import FAILED, FINISHED, RunRecord  # noqa: E402

TRANSFORMER = Path(__file__).resolve().parent / "fixtures" / "checkpoints" / "transformer.ckpt"
HPARAMS = torch.load(TRANSFORMER, weights_only=True)["hyper_parameters"]
SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.4.0"


def card(directory: Path) -> tuple[dict[str, Any], str]:
    """The front matter (parsed) and the Markdown body of an exported directory's card."""
    text = (directory / CARD_FILE).read_text(encoding="utf-8")
    match = re.fullmatch(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL)
    assert match, text[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def section(body: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", body, re.DOTALL | re.MULTILINE)
    assert match, f"no section {title!r}"
    return match.group(1)


def table(text: str) -> dict[str, str]:
    """The first two cells of each row of the Markdown tables in `text`, header and rule rows left out."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and cells[0] and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1]
    return rows


def run_dir(tmp_path: Path, **results: Any) -> Path:
    """A training run directory: `checkpoints/best.ckpt` (the fixture) and a metrics.json with `results`."""
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(TRANSFORMER, ckpt)
    fingerprint = {"corpus": "sample", "src_lang": "en", "tgt_lang": "fr",
                   "splits": {"train": [{"name": "train.en", "size": 123, "sha256": "ab" * 32}]}}
    record.write(ckpt.parent.parent, RunRecord(
        status=FINISHED, seed=7, results={"best_checkpoint": str(ckpt), **results}, data=fingerprint,
        provenance={"package": "0.1.0", "git_commit": "c0ffee"}, scoring=metrics.scoring(False)))
    return ckpt


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """The fixture checkpoint exported from outside a run directory, without --eval-json."""
    return export(TRANSFORMER, tmp_path_factory.mktemp("card") / "exported")


def test_front_matter(plain):
    front, body = card(plain)
    assert front["language"] == ["en", "fr"] and front["library_name"] == "lightning-nmt"
    assert front["tags"] == ["translation", "ctranslate2", "transformer"]
    assert front["datasets"] == ["sample"] and front["license"] == "unknown"
    assert "model-index" not in front  # no scores: no results claimed
    assert body.startswith("\n# exported\n")


def test_model_data_and_decoding_are_the_checkpoint(plain):
    _, body = card(plain)
    model = table(section(body, "Model"))
    module = TranslationModule.load(TRANSFORMER)
    assert model["parameters"] == f"{sum(p.numel() for p in module.model.parameters()):,}"
    assert {key: model[key] for key in ("d_model", "nhead", "ffn_dim", "transformer_layers")} == \
        {key: str(HPARAMS["model"][key]) for key in ("d_model", "nhead", "ffn_dim", "transformer_layers")}
    data = table(section(body, "Training data"))
    assert data["corpus"] == "sample" and data["languages"] == "en → fr"
    assert json.loads(data["sample_sizes"].strip("`")) == HPARAMS["data"]["sample_sizes"]
    decoding = table(section(body, "Decoding defaults"))
    assert {key: yaml.safe_load(decoding[key]) for key in HPARAMS["decoding"]} == HPARAMS["decoding"]
    exported = read_metadata(plain)["decoding"]  # what lnmt-serve and lnmt-translate use: all of it in the card
    assert {key: yaml.safe_load(decoding[key]) for key in exported} == exported
    assert decoding["max_input_len (in effect)"] == str(HPARAMS["data"]["max_len"])
    usage = section(body, "Usage")
    assert f"lnmt-serve {plain}" in usage and f"lnmt-translate ckpt_path={plain} input=" in usage
    assert f'Translator.load("{plain}")' in usage


def test_no_scores(plain):
    _, body = card(plain)
    scores = section(body, "Scores")
    assert "no scores were recorded" in scores.lower()
    assert f"lnmt-eval ckpt_path={plain} output=eval.json" in scores and "--eval-json eval.json" in scores
    assert not re.search(r"\d+\.\d\d", scores)  # no number stands in for a score


def test_the_card_does_not_get_in_the_way(plain):
    assert read_metadata(plain)["model_type"] == "transformer"
    model = CTranslate2Model(plain, threads=1)
    assert model.translate_batch(["A man is riding a bike."], beam_size=1)[0][0].tgt.strip()
    assert [p.name for p in plain.parent.iterdir()] == ["exported"]  # no temporary file or directory left


def test_scores_of_the_training_run(tmp_path):
    ckpt = run_dir(tmp_path, test={"bleu": 31.4159, "chrf": 55.55, "loss": 1.2, "bleu_tok_lc": 33.0},
                   test_flickr={"bleu": 20.5, "chrf": 48.25}, val={"bleu": 30.0})
    front, body = card(export(ckpt, tmp_path / "out"))
    results = front["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["test", "flickr"]
    assert results[0]["metrics"] == [{"type": "bleu", "value": 31.42, "name": "BLEU (sacreBLEU)"},
                                     {"type": "chrf", "value": 55.55, "name": "chrF"}]
    scores = section(body, "Scores")
    assert "metrics.json" in scores and "| test | 31.42 | 55.55 | 33.00 |" in scores and "| flickr | 20.50 |" in scores
    # the signature is the one lightning_nmt.metrics scores with, as the record's `scoring` describes it
    assert f"test, BLEU: `{metrics.bleu(['a'], ['a']).signature}`" in scores
    assert f"test, chrF: `{metrics.chrf(['a'], ['a']).signature}`" in scores
    data = section(body, "Training data")
    assert "ab" * 32 in data and table(data)["training seed"] == "7" and "c0ffee" in data


def test_the_recorded_sacrebleu_version_and_case(tmp_path):
    ckpt = run_dir(tmp_path, test={"bleu": 12.0})
    rec = record.read(ckpt.parent.parent)
    rec.scoring = {**rec.scoring, "sacrebleu": "2.3.1", "lowercase": True}
    record.write(ckpt.parent.parent, rec)
    _, body = card(export(ckpt, tmp_path / "out"))
    assert "test, BLEU: `nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:2.3.1`" in body


def test_a_record_without_scoring_has_no_signature(tmp_path):
    """A record written before schema version 2: its scores, and no invented signature."""
    ckpt = run_dir(tmp_path, test={"bleu": 12.0})
    rec = record.read(ckpt.parent.parent)
    rec.scoring = {}
    record.write(ckpt.parent.parent, rec)
    _, body = card(export(ckpt, tmp_path / "out"))
    scores = section(body, "Scores")
    assert "| test | 12.00 |" in scores and "test, BLEU: not recorded" in scores and "nrefs:" not in scores


@pytest.mark.parametrize("case", ["another checkpoint tested", "failed", "no test"])
def test_run_without_scores_of_this_checkpoint(tmp_path, case):
    ckpt = run_dir(tmp_path, test={"bleu": 31.4} if case != "no test" else {})
    rec = record.read(ckpt.parent.parent)
    if case == "another checkpoint tested":
        rec.results["averaged_checkpoint"] = str(ckpt.parent / "averaged.ckpt")
    elif case == "failed":
        rec.status, rec.error = FAILED, "out of memory"
    record.write(ckpt.parent.parent, rec)
    front, body = card(export(ckpt, tmp_path / "out"))
    assert "model-index" not in front
    scores = section(body, "Scores")
    assert "no scores were recorded" in scores.lower() and "31.4" not in scores
    if case == "another checkpoint tested":
        assert "`averaged.ckpt`, not this checkpoint" in scores


def eval_json(path: Path, ckpt: Path, **result: Any) -> Path:
    results = {"test": {"bleu": 27.346, "signature": SIGNATURE, "chrf": 51.0, "sentences": 20, "beam_size": 4,
                        "length_penalty": 0.6, **result}}
    path.write_text(json.dumps({"ckpt_path": str(ckpt), "results": results}))
    return path


def test_scores_of_an_eval_json(tmp_path, capsys):
    scored = eval_json(tmp_path / "eval.json", TRANSFORMER)
    main([str(TRANSFORMER), str(tmp_path / "out"), "--eval-json", str(scored)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    front, body = card(tmp_path / "out")
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == 27.35
    scores = section(body, "Scores")
    assert str(scored) in scores and "| test | 27.35 | 51.00 | 20 | 4 | 0.6 |" in scores
    assert f"test, BLEU: `{SIGNATURE}`" in scores


def test_an_eval_json_of_an_export(tmp_path, plain):
    """lnmt-eval of an exported directory: its lightning_nmt.json says which checkpoint it came from."""
    _, body = card(export(TRANSFORMER, tmp_path / "out", eval_json=eval_json(tmp_path / "eval.json", plain)))
    assert "| test | 27.35 |" in body and "float32 weights" in section(body, "Scores")


def test_an_eval_json_of_another_checkpoint_is_refused(tmp_path, capsys):
    other = tmp_path / "other.ckpt"
    other.write_bytes(TRANSFORMER.read_bytes() + b"\0")
    with pytest.raises(SystemExit) as exit_info:
        main([str(TRANSFORMER), str(tmp_path / "out"), "--eval-json", str(eval_json(tmp_path / "e.json", other))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not" in err and "other.ckpt" in err
    assert not (tmp_path / "out").exists()


MALFORMED = {
    "not JSON": "{\"ckpt_path\": ",
    "a list": "[1, 2]",
    "no results": json.dumps({"ckpt_path": str(TRANSFORMER)}),
    "no ckpt_path": json.dumps({"results": {"test": {"bleu": 1.0, "signature": SIGNATURE}}}),
    "bleu not a number": json.dumps({"ckpt_path": str(TRANSFORMER), "results": {"test": {"bleu": "high",
                                                                                         "signature": SIGNATURE}}}),
    "no signature": json.dumps({"ckpt_path": str(TRANSFORMER), "results": {"test": {"bleu": 30.0}}}),
    "chrf not a number": json.dumps({"ckpt_path": str(TRANSFORMER),
                                     "results": {"test": {"bleu": 30.0, "signature": SIGNATURE, "chrf": [1]}}}),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_eval_json_is_one_line_and_writes_nothing(tmp_path, capsys, name):
    bad = tmp_path / "eval.json"
    bad.write_text(MALFORMED[name])
    with pytest.raises(ExportError, match="is not an lnmt-eval output") as error:
        export(TRANSFORMER, tmp_path / "out", eval_json=bad)
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        main([str(TRANSFORMER), str(tmp_path / "out"), "--eval-json", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]  # no directory, not even a temporary one


def test_a_missing_eval_json_keeps_the_previous_export(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        main([str(TRANSFORMER), str(out), "--force", "--eval-json", str(tmp_path / "none.json")])
    assert "not found" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_card_write_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(path, text, encoding="utf-8"):  # what atomic_write_text raises on a full disk
        raise WriteError(path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(export_module, "atomic_write_text", full_disk)
    with pytest.raises(WriteError, match="No space left") as error:
        export(TRANSFORMER, tmp_path / "out")
    assert error.value.path == tmp_path / "out"  # the directory asked for, not its temporary one
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_run_record_is_one_line(tmp_path):
    ckpt = run_dir(tmp_path, test={"bleu": 1.0})
    record.path(ckpt.parent.parent).write_text("{not json")
    with pytest.raises(ExportError, match="metrics.json cannot be read") as error:
        export(ckpt, tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()
