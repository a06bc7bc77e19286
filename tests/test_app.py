"""End to end through the CLIs: lnmt-train writes every promised file, lnmt-translate and lnmt-eval use
its checkpoint, bad input is one clear line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_nmt.module import TranslationModule
from lightning_nmt.translate import translate_lines

TINY = [
    "data.sample_sizes={train:1500,val:40,test:40}", "data.tokenizer.vocab_size=300",
    "model.embedding_dim=32", "model.encoder_hidden=32", "model.decoder_hidden=64",
    "trainer.max_steps=12", "trainer.val_check_interval=6", "trainer.enable_progress_bar=false",
    "callbacks.num_heatmaps=3", "decoding.beam_size=2",
]


def run_cli(module: str, args: list[str], stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    proc = run_cli("lightning_nmt.train", [*TINY, f"hydra.run.dir={tmp}/run", f"paths.cache_dir={tmp}/cache"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


@pytest.mark.slow
def test_train_writes_every_output(trained_run: Path) -> None:
    ckpts = {p.name for p in (trained_run / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["steps"] == 12
    for split in ("val", "test"):
        assert set(metrics[split]) >= {"loss", "ppl", "bleu", "chrf"}
        assert metrics[split]["ppl"] == pytest.approx(torch.tensor(metrics[split]["loss"]).exp().item(), rel=1e-4)
    assert metrics["train_tgt_tokens_per_sec"] > 0 and metrics["wall_seconds"] > 0
    assert 0.0 <= metrics["padding_fraction"] < 0.1  # length bucketing
    assert [h["step"] for h in metrics["val_history"]] == [6, 12]
    hyps = (trained_run / "test.hyp.txt").read_text().split("\n")
    assert len(hyps) == 41 and hyps[-1] == ""  # 40 lines, newline-terminated
    refs = (trained_run / "test.ref.txt").read_text().split("\n")  # kept for lnmt-compare's tests
    assert len(refs) == 41 and refs[0] and refs != hyps
    heatmaps = sorted(p.name for p in (trained_run / "attention").glob("*.png"))
    assert heatmaps == ["test_000.png", "test_001.png", "test_002.png"]
    assert (trained_run / "attention" / "test_000.png").read_bytes()[:4] == b"\x89PNG"
    assert (trained_run / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_the_run_record_says_what_produced_the_run(trained_run: Path) -> None:
    import lightning

    from lightning_nmt import record
    from lightning_nmt.data.corpus import file_content

    rec = record.read(trained_run)
    assert rec.schema_version == record.SCHEMA_VERSION and rec.status == "finished" and rec.seed == 42
    assert len(rec.config_hash) == 20 and rec.scoring["lowercase"] is False
    prov = rec.provenance
    assert (prov["torch"], prov["lightning"]) == (torch.__version__, lightning.__version__)
    assert prov["cpu"] == record.cpu_model() and "cuda" in prov and len(prov.get("git_commit", "x" * 40)) == 40
    # the data by content: each split's files, with sizes and sha256 that a copy of the corpus elsewhere shares
    test_files = rec.data["splits"]["test"]
    assert rec.data["corpus"] == "sample" and len(test_files) == 2
    assert all(f == file_content(next(trained_run.parent.rglob(f["name"]))) for f in test_files)


@pytest.mark.slow
def test_checkpoint_alone_rebuilds_translator(trained_run: Path) -> None:
    module = TranslationModule.load(trained_run / "checkpoints" / "last.ckpt")
    source = "the small cats see the white dog ."
    again = TranslationModule.load(trained_run / "checkpoints" / "last.ckpt")
    assert translate_lines(module, [source]) == translate_lines(again, [source])
    for a, b in zip(module.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_translate_file_and_stdin(trained_run: Path, tmp_path: Path) -> None:
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    lines = ["the cat sees the dog .", "", "we have two small houses ."]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.txt"
    proc = run_cli("lightning_nmt.translate", [f"ckpt_path={ckpt}", f"input={src}", f"output={out}",
                                               f"attention_dir={tmp_path}/att"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    translated = out.read_text().split("\n")
    assert len(translated) == 4 and translated[1] == "" and translated[3] == ""
    assert sorted(p.name for p in (tmp_path / "att").glob("*.png")) == ["00001.png", "00003.png"]
    module = TranslationModule.load(ckpt)
    expected = [hyps[0][0] for hyps in translate_lines(module, lines)]
    assert translated[:3] == expected
    piped = run_cli("lightning_nmt.translate", [f"ckpt_path={ckpt}", "input=-", "output=-"], stdin=src.read_text())
    assert piped.returncode == 0 and piped.stdout.split("\n")[:3] == expected
    empty = run_cli("lightning_nmt.translate", [f"ckpt_path={ckpt}", "input=-", "output=-"], stdin="")
    assert empty.returncode == 0 and empty.stdout == ""
    nbest = run_cli("lightning_nmt.translate", [f"ckpt_path={ckpt}", "input=-", "output=-", "beam_size=3",
                                                "nbest=2"], stdin="the cat sees the dog .\n")
    rows = [line.split(" ||| ") for line in nbest.stdout.splitlines()]
    assert [r[0] for r in rows] == ["0", "0"] and float(rows[0][2]) >= float(rows[1][2])


@pytest.mark.slow
def test_eval_scores_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval.json"
    proc = run_cli("lightning_nmt.eval", [f"ckpt_path={ckpt}", "beam_size=1", f"output={out}",
                                          f"hydra.run.dir={tmp_path}/ev"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())["results"]["test"]
    assert result["sentences"] == 40 and result["beam_size"] == 1
    assert result["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert 0.0 <= result["bleu"] <= 100.0 and result["ppl"] > 1.0
    hyps = (tmp_path / "eval.test.hyp.txt").read_text().split("\n")
    assert result["hypotheses"] == str(tmp_path / "eval.test.hyp.txt") and len(hyps) == 41 and hyps[-1] == ""


def test_missing_corpus_file_is_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("lightning_nmt.train", ["data=files", f"data.train={tmp_path}/nope", f"data.val={tmp_path}/nope",
                                           f"data.test={tmp_path}/nope", "data.src_lang=en", "data.tgt_lang=de",
                                           f"hydra.run.dir={tmp_path}/run"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: missing corpus file")
    assert "Traceback" not in proc.stderr


def test_translate_corrupt_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    proc = run_cli("lightning_nmt.translate", [f"ckpt_path={bad}", "input=-", "output=-"], stdin="hello\n")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a readable checkpoint" in proc.stderr


def test_dockerfile_names_existing_entry_point() -> None:
    root = Path(__file__).resolve().parents[1]
    dockerfile = (root / "Dockerfile").read_text()
    scripts = (root / "pyproject.toml").read_text()
    assert 'ENTRYPOINT ["lnmt-train"]' in dockerfile and 'lnmt-train = "lightning_nmt.train:main"' in scripts
    assert "--gpus all" in dockerfile and "--gpus all" in (root / "README.md").read_text()


def test_docker_image_installs_the_torch_the_suite_runs_on() -> None:
    """The image's torch is the Makefile's TORCH, which `make test` (and CI) installs and tests."""
    root = Path(__file__).resolve().parents[1]
    makefile_torch = re.search(r"^TORCH \?= (\S+)$", (root / "Makefile").read_text(), re.M).group(1)
    docker_torch = re.search(r"^ARG TORCH=(\S+)$", (root / "Dockerfile").read_text(), re.M).group(1)
    assert docker_torch == makefile_torch and re.fullmatch(r"torch==[\d.]+", docker_torch)
    assert "FROM pytorch/" not in (root / "Dockerfile").read_text()  # no base image with a torch of its own
