"""The binarized-corpus cache: trained sentencepiece model(s) + encoded splits, built once per content.

Layout of ``<cache_dir>/bin-<key>/`` (``key``: sha256 of the train split's file contents, the tokenizer
settings and ``max_len``)::

    tokenizer.json, joint.model | src.model + tgt.model   the Tokenizer (see Tokenizer.save)
    train.npz          src_ids, src_offsets, tgt_ids, tgt_offsets, keep (kept raw line indices)
    <split>-<digest>.npz   an evaluation split (val, test, extra test sets), keyed by its own contents
    meta.json          key, settings, max_len, drop counts, train size, vocabulary sizes
    DONE               written last

An evaluation split is encoded with the entry's tokenizer the first time it is asked for, so adding a test
set or editing one never trains sentencepiece again. The entry is built under a ``filelock.FileLock``
(``bin-<key>.lock``) in a temporary directory that is renamed into place, and evaluation splits are added
under the same lock as files renamed into place, so concurrent jobs (DDP ranks, sweep runs) train
sentencepiece and encode each split only once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from lightning_nmt.data.atomic import atomic_directory, atomic_path
from lightning_nmt.data.corpus import ParallelText, drop_empty
from lightning_nmt.data.dataset import EncodedDataset
from lightning_nmt.data.errors import DataError
from lightning_nmt.data.tokenizer import Tokenizer

CACHE_VERSION = 2
log = logging.getLogger("lightning_nmt.data")


@dataclass
class Binarized:
    """A loaded cache entry. ``train_keep[i]`` is the raw train line of train example ``i``."""

    path: Path
    tokenizer: Tokenizer
    splits: dict[str, EncodedDataset]
    train_keep: np.ndarray
    meta: dict[str, Any]


def cache_key(train: ParallelText, settings: Mapping[str, Any], max_len: int) -> str:
    """sha256 over the train split's contents, tokenizer settings and ``max_len``."""
    spec = {"version": CACHE_VERSION, "settings": dict(settings), "max_len": max_len, "train": train.digest}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _clean_train(
    text: ParallelText, settings: Mapping[str, Any], max_len: int
) -> tuple[Tokenizer, EncodedDataset, np.ndarray, dict[str, int]]:
    """Drop empty/whitespace-only pairs, train the tokenizer, drop pairs over ``max_len`` pieces."""
    keep = drop_empty(text.src, text.tgt)
    if not keep:
        raise DataError(f"no training pairs left: every pair of {text.src_path} has an empty side")
    src, tgt = [text.src[i] for i in keep], [text.tgt[i] for i in keep]
    tokenizer = Tokenizer.train(src, tgt, **settings)
    src_ids, tgt_ids = tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)
    short = [j for j, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True))
             if len(s) <= max_len and len(t) <= max_len]
    if not short:
        raise DataError(f"no training pairs left: every pair of {text.src_path} is over max_len={max_len}")
    dataset = EncodedDataset.from_lists([src_ids[j] for j in short], [tgt_ids[j] for j in short])
    drops = {"empty": len(text) - len(keep), "too_long": len(keep) - len(short)}
    return tokenizer, dataset, np.asarray(keep, dtype=np.int64)[short], drops


def _build(directory: Path, key: str, train_text: ParallelText, settings: Mapping[str, Any], max_len: int) -> None:
    """Train the tokenizer, encode the train split and write them into ``directory``."""
    tokenizer, train, keep, drops = _clean_train(train_text, settings, max_len)
    tokenizer.save(directory)
    np.savez(directory / "train.npz", keep=keep, **train.arrays())
    meta = {"version": CACHE_VERSION, "key": key, "settings": dict(settings), "max_len": max_len,
            "drop_counts": drops, "sizes": {"train": len(train)},
            "vocab_size": {"src": tokenizer.src_vocab_size, "tgt": tokenizer.tgt_vocab_size},
            "files": {"train": [str(train_text.src_path), str(train_text.tgt_path)]}}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (directory / "DONE").touch()


def _split_file(directory: Path, name: str, text: ParallelText) -> Path:
    return directory / f"{name}-{text.digest[:16]}.npz"


def _encode_split(path: Path, tokenizer: Tokenizer, text: ParallelText) -> None:
    """Encode an evaluation split with the entry's tokenizer into ``path`` (atomically)."""
    dataset = EncodedDataset.from_lists(tokenizer.encode_src(text.src), tokenizer.encode_tgt(text.tgt))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **dataset.arrays())


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def build_or_load(
    cache_dir: str | Path, corpora: Mapping[str, ParallelText], settings: Mapping[str, Any], max_len: int
) -> tuple[Binarized, bool]:
    """Load the cache entry for these inputs, building it (or encoding a new evaluation split) first if needed.

    ``corpora`` must contain ``train``. Returns the entry and whether this call built it (i.e. trained
    sentencepiece).
    """
    key = cache_key(corpora["train"], settings, max_len)
    directory = Path(cache_dir) / f"bin-{key[:20]}"
    lock = FileLock(str(directory) + ".lock")
    built = False
    if not (directory / "DONE").is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with lock:
            if not (directory / "DONE").is_file():
                shutil.rmtree(directory, ignore_errors=True)  # incomplete leftover
                log.info("training sentencepiece and binarizing the corpus into %s", directory)
                with atomic_directory(directory) as tmp:
                    _build(tmp, key, corpora["train"], settings, max_len)
                built = True
    if not built:
        log.info("using the binarized corpus cached in %s", directory)
    tokenizer = Tokenizer.load(directory)
    evaluation = {name: (text, _split_file(directory, name, text)) for name, text in corpora.items()
                  if name != "train"}
    if any(not path.is_file() for _, path in evaluation.values()):
        with lock:
            for name, (text, path) in evaluation.items():
                if not path.is_file():
                    log.info("encoding %s with the cached tokenizer into %s", name, path)
                    _encode_split(path, tokenizer, text)
    train = _read_npz(directory / "train.npz")
    keep = train.pop("keep")
    splits = {"train": EncodedDataset(train)}
    splits.update({name: EncodedDataset(_read_npz(path)) for name, (_, path) in evaluation.items()})
    meta = json.loads((directory / "meta.json").read_text())
    return Binarized(directory, tokenizer, splits, keep, meta), built
