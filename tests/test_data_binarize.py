"""Streamed preprocessing of the train split: sentencepiece on a uniform sample, the report line, and the same
files whatever the chunk size, block size and number of encoding processes."""

import logging
from pathlib import Path

import numpy as np
import pytest

from lightning_nmt.data import binarize, corpus
from lightning_nmt.data.binarize import SAMPLE_FILES, _scan
from lightning_nmt.data.cache import build_or_load
from lightning_nmt.data.corpus import TextPair
from lightning_nmt.data.indexed import FILES
from lightning_nmt.data.sample import write_sample_corpus
from lightning_nmt.data.tokenizer import Tokenizer

SETTINGS = {"model_type": "bpe", "vocab_size": 400, "joint": True, "character_coverage": 1.0,
            "input_sentence_size": 1_000_000}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> TextPair:
    prefix = write_sample_corpus(tmp_path_factory.mktemp("corpus"), {"train": 2000}, seed=4)["train"]
    en, fr = Path(f"{prefix}.en"), Path(f"{prefix}.fr")
    lines = en.read_text().splitlines()
    lines[17], lines[1500] = "   ", ""  # two empty pairs
    en.write_text("\n".join(lines) + "\n")
    return TextPair(en, fr)


def test_reservoir_sample_is_uniform_over_the_corpus_and_deterministic(source, tmp_path):
    scan = _scan(source, tmp_path, sample_pairs=300)
    assert (scan.pairs, scan.kept, scan.sampled) == (2000, 1998, 300)
    src, tgt = ((tmp_path / name).read_text().splitlines() for name in SAMPLE_FILES)
    all_src = source.src_path.read_text().splitlines()
    all_tgt = source.tgt_path.read_text().splitlines()
    rows, row = [], -1  # the sample in corpus order: find each pair after the previous one
    for pair in zip(src, tgt, strict=True):
        row = next(r for r in range(row + 1, 2000) if (all_src[r], all_tgt[r]) == pair)
        rows.append(row)
    assert 17 not in rows and 1500 not in rows and max(rows) > 1500 and min(rows) < 500  # not a prefix
    again = tmp_path / "again"
    again.mkdir()
    _scan(source, again, sample_pairs=300)
    assert (again / "sample.src").read_text() == (tmp_path / "sample.src").read_text()


def test_sentencepiece_is_trained_on_the_sample_only(source, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lightning_nmt.data"):
        entry, _ = build_or_load(tmp_path, source, {**SETTINGS, "input_sentence_size": 600}, max_len=200)
    assert entry.meta["sample_pairs"] == 300  # joint: 600 sentences = 300 pairs
    assert "training sentencepiece (bpe, 400 pieces) on 300 of 1,998 pairs" in caplog.text
    _scan(source, tmp_path, sample_pairs=300)
    src, tgt = ((tmp_path / name).read_text().splitlines() for name in SAMPLE_FILES)
    expected = Tokenizer.train(src, tgt, model_type="bpe", vocab_size=400, joint=True)
    assert entry.tokenizer.to_state() == expected.to_state()
    assert not list(entry.path.glob("sample.*"))  # the sample files are not kept


def test_report_line(source, tmp_path):
    entry, _ = build_or_load(tmp_path, source, SETTINGS, max_len=40)
    line = binarize.report(entry.meta, 40)
    drops = entry.meta["drop_counts"]
    assert drops["empty"] == 2 and drops["too_long"] > 0
    assert line.startswith(f"train: 2,000 pairs read, dropped 2 empty or whitespace-only pairs and "
                           f"{drops['too_long']:,} pairs over max_len=40 pieces, {len(entry.train):,} pairs left; ")
    tokens = entry.meta["layout"]["tokens"]
    assert f"{tokens['src']:,} source and {tokens['tgt']:,} target tokens; built in " in line
    assert "pairs/s: reading " in line and "sentencepiece" in line and "encoding" in line


def test_chunks_blocks_and_worker_processes_do_not_change_the_files(source, tmp_path, monkeypatch):
    reference, _ = build_or_load(tmp_path / "one", source, SETTINGS, max_len=60, workers=1)
    monkeypatch.setattr(corpus, "CHUNK_PAIRS", 64)
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 1000)
    chunked, _ = build_or_load(tmp_path / "two", source, SETTINGS, max_len=60, workers=2)
    assert chunked.meta["workers"] == 2 and reference.meta["workers"] == 1
    assert chunked.tokenizer.to_state() == reference.tokenizer.to_state()
    for name in FILES:
        assert (chunked.path / name).read_bytes() == (reference.path / name).read_bytes(), name
    assert np.array_equal(chunked.train.src_lengths(), reference.train.src_lengths())
