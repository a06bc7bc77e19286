"""The binarized cache: reuse, invalidation and a single build under concurrent setups."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lightning_nmt.data.cache import build_or_load
from lightning_nmt.data.corpus import read_parallel
from lightning_nmt.data.sample import write_sample_corpus

SETTINGS = {"model_type": "bpe", "vocab_size": 500, "joint": True, "character_coverage": 1.0}


def corpora(prefixes: dict[str, Path]) -> dict:
    return {name: read_parallel(prefix, "en", "fr") for name, prefix in prefixes.items()}


def corpus(tmp_path: Path, train: int = 1500) -> dict[str, Path]:
    return write_sample_corpus(tmp_path / "corpus", {"train": train, "val": 50, "test": 50}, seed=3)


def test_second_build_reuses_the_cache(tmp_path, caplog):
    prefixes = corpus(tmp_path)
    first, built = build_or_load(tmp_path / "cache", corpora(prefixes), SETTINGS, max_len=200)
    assert built and (first.path / "DONE").is_file()
    names = sorted(p.name.split("-")[0] for p in first.path.iterdir())
    assert names == ["DONE", "joint.model", "meta.json", "test", "tokenizer.json", "train.npz", "val"]
    with caplog.at_level(logging.INFO, logger="lightning_nmt.data"):
        second, built = build_or_load(tmp_path / "cache", corpora(prefixes), SETTINGS, max_len=200)
    assert not built and "using the binarized corpus cached" in caplog.text
    assert second.path == first.path
    assert second.tokenizer.to_state() == first.tokenizer.to_state()
    for name in ("train", "val", "test"):
        for key, array in first.splits[name].arrays().items():
            assert np.array_equal(array, second.splits[name].arrays()[key])
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["sizes"] == {"train": 1500} and len(first.splits["val"]) == len(first.splits["test"]) == 50
    assert meta["drop_counts"] == {"empty": 0, "too_long": 0}


def test_changed_train_content_or_settings_rebuild(tmp_path):
    prefixes = corpus(tmp_path)
    base, _ = build_or_load(tmp_path / "cache", corpora(prefixes), SETTINGS, max_len=200)
    changes = [({**SETTINGS, "vocab_size": 600}, 200), ({**SETTINGS, "model_type": "unigram"}, 200),
               ({**SETTINGS, "joint": False}, 200), (SETTINGS, 40)]
    for settings, max_len in changes:
        entry, built = build_or_load(tmp_path / "cache", corpora(prefixes), settings, max_len)
        assert built and entry.path != base.path
    train_en = Path(f"{prefixes['train']}.en")
    train_en.write_text(train_en.read_text().replace("the", "a", 1))  # a one-word edit in the train split
    entry, built = build_or_load(tmp_path / "cache", corpora(prefixes), SETTINGS, max_len=200)
    assert built and entry.path != base.path
    assert len(list((tmp_path / "cache").glob("bin-*[!k]"))) == 6


def test_new_or_edited_test_sets_are_encoded_without_training_sentencepiece_again(tmp_path, caplog):
    prefixes = corpus(tmp_path)
    base, _ = build_or_load(tmp_path / "cache", corpora(prefixes), SETTINGS, max_len=200)
    extra = write_sample_corpus(tmp_path / "extra", {"train": 10, "test": 30}, seed=9)["test"]
    test_en = Path(f"{prefixes['test']}.en")
    edited = test_en.read_text().replace("the", "a", 1)  # a one-word edit in the test split
    test_en.write_text(edited)
    with caplog.at_level(logging.INFO, logger="lightning_nmt.data"):
        texts = {**corpora(prefixes), "extra": read_parallel(extra, "en", "fr")}
        entry, built = build_or_load(tmp_path / "cache", texts, SETTINGS, max_len=200)
    assert not built and entry.path == base.path  # the same tokenizer, not trained again
    assert "encoding test" in caplog.text and "encoding extra" in caplog.text and "encoding val" not in caplog.text
    first_line = edited.splitlines()[0]
    assert list(entry.splits["test"][0].src) == entry.tokenizer.encode_src([first_line])[0]
    assert list(base.splits["test"][0].src) != list(entry.splits["test"][0].src)
    assert len(entry.splits["extra"]) == 30 and len(entry.splits["val"]) == 50
    assert len(list((tmp_path / "cache").glob("bin-*[!k]"))) == 1


WORKER = """
import hashlib, json, sys
from pathlib import Path
from lightning_nmt.data.cache import build_or_load
from lightning_nmt.data.corpus import read_parallel
root = Path(sys.argv[1])
texts = {n: read_parallel(root / "corpus" / n, "en", "fr") for n in ("train", "val", "test")}
settings = {"model_type": "unigram", "vocab_size": 800, "joint": True, "character_coverage": 1.0}
entry, built = build_or_load(root / "cache", texts, settings, max_len=200)
digest = hashlib.sha256(entry.tokenizer.to_state()["src_model"])
for name in ("train", "val", "test"):
    for array in entry.splits[name].arrays().values():
        digest.update(array.tobytes())
print(json.dumps({"built": built, "digest": digest.hexdigest(), "path": str(entry.path)}))
"""


def test_concurrent_setups_train_sentencepiece_once(tmp_path):
    corpus(tmp_path, train=6000)  # big enough for the build to overlap the other processes' start
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["built"] for r in results) == 1
    assert len({r["digest"] for r in results}) == 1 and len({r["path"] for r in results}) == 1
    entries = [p.name for p in (tmp_path / "cache").iterdir()]
    assert sorted(entries) == sorted([Path(results[0]["path"]).name, Path(results[0]["path"]).name + ".lock"])
