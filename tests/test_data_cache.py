"""The binarized cache: reuse without reading the corpus (in this and another process), invalidation by file
metadata and settings, damaged entries rebuilt (never used), a single build under concurrent setups."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_nmt.data.cache import build_or_load
from lightning_nmt.data.corpus import TextPair
from lightning_nmt.data.sample import write_sample_corpus

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"model_type": "bpe", "vocab_size": 500, "joint": True, "character_coverage": 1.0,
            "input_sentence_size": 1_000_000}
ENTRY_FILES = ["DONE", "joint.model", "meta.json", "rows.idx", "src.bin", "src.idx", "tgt.bin", "tgt.idx",
               "tokenizer.json"]


def corpus(tmp_path: Path, train: int = 1500) -> TextPair:
    prefixes = write_sample_corpus(tmp_path / "corpus", {"train": train, "val": 50, "test": 50}, seed=3)
    return TextPair.from_prefix(prefixes["train"], "en", "fr")


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("bin-*") if p.is_dir())


def same_arrays(a, b) -> bool:
    return all(np.array_equal(x, b.train.arrays()[k]) for k, x in a.train.arrays().items()) and np.array_equal(
        a.train.rows(), b.train.rows())


def test_second_open_reuses_the_entry_without_reading_the_corpus(tmp_path, caplog, monkeypatch):
    source = corpus(tmp_path)
    first, built = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    assert built and sorted(p.name for p in first.path.iterdir()) == ENTRY_FILES
    assert first.meta["layout"]["dtype"] == "uint16" and first.meta["layout"]["examples"] == 1500
    assert first.meta["drop_counts"] == {"empty": 0, "too_long": 0} and first.meta["pairs"] == 1500

    def no_reading(*args, **kwargs):
        raise AssertionError("a cached start read the corpus")

    monkeypatch.setattr(TextPair, "chunks", no_reading)
    with caplog.at_level(logging.INFO, logger="lightning_nmt.data"):
        second, built = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    assert not built and "using the binarized corpus cached" in caplog.text
    assert second.path == first.path and second.tokenizer.to_state() == first.tokenizer.to_state()
    assert same_arrays(first, second)


OTHER_PROCESS = """
import json, logging, sys
from pathlib import Path
from lightning_nmt.data.cache import build_or_load
from lightning_nmt.data.corpus import TextPair
logging.basicConfig(level=logging.INFO)
root = Path(sys.argv[1])
settings = json.loads(sys.argv[2])
entry, built = build_or_load(root / "cache", TextPair(root / "corpus/train.en", root / "corpus/train.fr"),
                             settings, max_len=200)
print(json.dumps({"built": built, "path": str(entry.path), "examples": len(entry.train),
                  "first": entry.train[0].src.tolist()}))
"""


def run_other_process(tmp_path: Path, settings: dict) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(tmp_path), json.dumps(settings)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_another_process_opens_the_cache_without_rebuilding(tmp_path):
    source = corpus(tmp_path)
    entry, built = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.path.iterdir()}
    result, log = run_other_process(tmp_path, SETTINGS)
    assert not result["built"] and result["path"] == str(entry.path) and "using the binarized corpus cached" in log
    assert "training sentencepiece" not in log
    assert result["examples"] == 1500 and result["first"] == entry.train[0].src.tolist()
    assert {p.name: p.stat().st_mtime_ns for p in entry.path.iterdir()} == stamps  # nothing rewritten


def test_changed_settings_or_input_file_build_a_new_entry(tmp_path):
    source = corpus(tmp_path)
    base, _ = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    changes = [({**SETTINGS, "vocab_size": 600}, 200), ({**SETTINGS, "model_type": "unigram"}, 200),
               ({**SETTINGS, "joint": False}, 200), ({**SETTINGS, "input_sentence_size": 400}, 200), (SETTINGS, 40)]
    for settings, max_len in changes:
        entry, built = build_or_load(tmp_path / "cache", source, settings, max_len)
        assert built and entry.path != base.path
    assert len(entries(tmp_path / "cache")) == 6

    stat = source.src_path.stat()
    os.utime(source.src_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same content
    touched, built = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    assert built and touched.path != base.path and same_arrays(base, touched)

    text = source.src_path.read_text()
    source.src_path.write_text(text.replace("the", "a", 1))  # a one-word edit
    edited, built = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    assert built and edited.path not in (base.path, touched.path) and not same_arrays(base, edited)
    assert len(entries(tmp_path / "cache")) == 8


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _scramble_index(path: Path) -> None:  # same size, offsets that no longer match the token file
    offsets = np.fromfile(path, np.int64)
    offsets[1:-1] = offsets[1:-1][::-1]
    offsets.tofile(path)


DAMAGE = {
    "truncated src.bin": lambda d: _truncate(d / "src.bin"),
    "truncated tgt.idx": lambda d: _truncate(d / "tgt.idx"),
    "index not matching": lambda d: _scramble_index(d / "src.idx"),
    "missing rows.idx": lambda d: (d / "rows.idx").unlink(),
    "no DONE marker": lambda d: (d / "DONE").unlink(),
    "meta.json garbage": lambda d: (d / "meta.json").write_text("{not json"),
    "model of another size": lambda d: (d / "joint.model").write_bytes(b"\0" * 100),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_entry_is_rebuilt_never_used(tmp_path, caplog, damage):
    source = corpus(tmp_path, train=600)
    good, _ = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    expected = {k: np.array(v) for k, v in good.train.arrays().items()}
    del good
    DAMAGE[damage](entries(tmp_path / "cache")[0])
    with caplog.at_level(logging.INFO, logger="lightning_nmt.data"):
        entry, built = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    assert built and "is damaged" in caplog.text and "building it again" in caplog.text
    assert all(np.array_equal(expected[k], v) for k, v in entry.train.arrays().items())
    assert [p.name for p in entries(tmp_path / "cache")] == [entry.path.name]  # the damaged one is gone
    assert not [p for p in (tmp_path / "cache").iterdir() if ".damaged-" in p.name or p.name.endswith(".tmp")]
    _, built = build_or_load(tmp_path / "cache", source, SETTINGS, max_len=200)
    assert not built


WORKER = """
import hashlib, json, sys
from pathlib import Path
from lightning_nmt.data.cache import build_or_load
from lightning_nmt.data.corpus import TextPair
root = Path(sys.argv[1])
settings = {"model_type": "unigram", "vocab_size": 800, "joint": True, "character_coverage": 1.0,
            "input_sentence_size": 1000000}
entry, built = build_or_load(root / "cache", TextPair(root / "corpus/train.en", root / "corpus/train.fr"), settings,
                             max_len=200)
digest = hashlib.sha256(entry.tokenizer.to_state()["src_model"])
for array in entry.train.arrays().values():
    digest.update(array.tobytes())
print(json.dumps({"built": built, "digest": digest.hexdigest(), "path": str(entry.path)}))
"""


def test_concurrent_setups_train_sentencepiece_once(tmp_path):
    corpus(tmp_path, train=6000)  # big enough for the build to overlap the other processes' start
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["built"] for r in results) == 1
    assert len({r["digest"] for r in results}) == 1 and len({r["path"] for r in results}) == 1
    names = [p.name for p in (tmp_path / "cache").iterdir()]
    assert sorted(names) == sorted([Path(results[0]["path"]).name, Path(results[0]["path"]).name + ".lock"])


def test_lowercase_setting_keys_a_new_entry_and_its_default_keeps_the_old_keys() -> None:
    """Entries built before `lowercase` existed keep their key (a 4M-pair corpus is not rebuilt on upgrade);
    `lowercase=True` is another entry."""
    from lightning_nmt.data.cache import cache_key
    from lightning_nmt.data.tokenizer import settings_from_config

    fingerprint = {"src": "/data/train.en", "size": 123}
    before = {k: v for k, v in settings_from_config({}).items() if k != "lowercase"}
    assert cache_key(fingerprint, settings_from_config({}), 100) == cache_key(fingerprint, before, 100)
    assert cache_key(fingerprint, settings_from_config({"lowercase": True}), 100) != cache_key(fingerprint, before, 100)
