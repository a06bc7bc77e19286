"""The binarized-corpus cache: trained sentencepiece model(s) + encoded splits, built once per content.

Layout of ``<cache_dir>/bin-<key>/`` (``key``: sha256 of every split's file contents, the tokenizer
settings and ``max_len``)::

    tokenizer.json, joint.model | src.model + tgt.model   the Tokenizer (see Tokenizer.save)
    <split>.npz        src_ids, src_offsets, tgt_ids, tgt_offsets (+ keep: kept raw line indices, train)
    meta.json          key, settings, max_len, drop counts, split sizes, vocabulary sizes
    DONE               written last

The directory is built under a ``filelock.FileLock`` (``bin-<key>.lock``) in a temporary directory that
is renamed into place, so concurrent jobs (DDP ranks, sweep runs) train sentencepiece only once.
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

from lightning_nmt.data.atomic import atomic_directory
from lightning_nmt.data.corpus import ParallelText, drop_empty
from lightning_nmt.data.dataset import EncodedDataset
from lightning_nmt.data.errors import DataError
from lightning_nmt.data.tokenizer import Tokenizer

CACHE_VERSION = 1
log = logging.getLogger("lightning_nmt.data")


@dataclass
class Binarized:
    """A loaded cache entry. ``train_keep[i]`` is the raw train line of train example ``i``."""

    path: Path
    tokenizer: Tokenizer
    splits: dict[str, EncodedDataset]
    train_keep: np.ndarray
    meta: dict[str, Any]


def cache_key(corpora: Mapping[str, ParallelText], settings: Mapping[str, Any], max_len: int) -> str:
    """sha256 over the splits' contents, tokenizer settings and ``max_len``."""
    spec = {"version": CACHE_VERSION, "settings": dict(settings), "max_len": max_len,
            "splits": {name: text.digest for name, text in corpora.items()}}
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


def _build(
    directory: Path, key: str, corpora: Mapping[str, ParallelText], settings: Mapping[str, Any], max_len: int
) -> None:
    """Train, encode and write every file of a cache entry into ``directory``."""
    tokenizer, train, keep, drops = _clean_train(corpora["train"], settings, max_len)
    tokenizer.save(directory)
    np.savez(directory / "train.npz", keep=keep, **train.arrays())
    sizes = {"train": len(train)}
    for name, text in corpora.items():
        if name != "train":
            src, tgt = tokenizer.encode_src(text.src), tokenizer.encode_tgt(text.tgt)
            dataset = EncodedDataset.from_lists(src, tgt)
            np.savez(directory / f"{name}.npz", **dataset.arrays())
            sizes[name] = len(dataset)
    meta = {"version": CACHE_VERSION, "key": key, "settings": dict(settings), "max_len": max_len,
            "drop_counts": drops, "sizes": sizes,
            "vocab_size": {"src": tokenizer.src_vocab_size, "tgt": tokenizer.tgt_vocab_size},
            "files": {name: [str(t.src_path), str(t.tgt_path)] for name, t in corpora.items()}}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (directory / "DONE").touch()


def _load(directory: Path) -> Binarized:
    meta = json.loads((directory / "meta.json").read_text())
    splits, keep = {}, np.zeros(0, dtype=np.int64)
    for name in meta["sizes"]:
        with np.load(directory / f"{name}.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        if name == "train":
            keep = arrays.pop("keep")
        splits[name] = EncodedDataset(arrays)
    return Binarized(directory, Tokenizer.load(directory), splits, keep, meta)


def build_or_load(
    cache_dir: str | Path, corpora: Mapping[str, ParallelText], settings: Mapping[str, Any], max_len: int
) -> tuple[Binarized, bool]:
    """Load the cache entry for these inputs, building it first if needed.

    ``corpora`` must contain ``train``. Returns the entry and whether this call built it (i.e. trained
    sentencepiece).
    """
    key = cache_key(corpora, settings, max_len)
    directory = Path(cache_dir) / f"bin-{key[:20]}"
    built = False
    if not (directory / "DONE").is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory) + ".lock"):
            if not (directory / "DONE").is_file():
                shutil.rmtree(directory, ignore_errors=True)  # incomplete leftover
                log.info("training sentencepiece and binarizing the corpus into %s", directory)
                with atomic_directory(directory) as tmp:
                    _build(tmp, key, corpora, settings, max_len)
                built = True
    if not built:
        log.info("using the binarized corpus cached in %s", directory)
    return _load(directory), built
