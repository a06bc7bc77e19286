"""The binarized-corpus cache: the trained sentencepiece model(s) and the encoded train split, built once.

Layout of ``<cache_dir>/bin-<key>/``::

    tokenizer.json, joint.model | src.model + tgt.model   the Tokenizer (see Tokenizer.save)
    src.bin src.idx tgt.bin tgt.idx rows.idx             the encoded train split (see indexed.py)
    meta.json          key, input fingerprint, settings, max_len, counts, timings, layout, every file's size
    DONE               written last

``key``: sha256 of the cache version, the tokenizer settings (``input_sentence_size`` included), ``max_len`` and
the train input's fingerprint: for files their absolute path, size and modification time (ns); for a Hugging
Face dataset its name, configuration, split, languages, fingerprint and the same of its Arrow files. A cached
start therefore reads no corpus: it stats the input files, maps the cache and reads its two indices. Anything
that changes a file's size or mtime (an edit, ``touch``, a new download or copy) builds a new entry; an edit
that keeps both (a content change with the mtime set back) is not noticed. Validation and test sets are not
cached: they are read and encoded with the cached tokenizer at every start (they are small).

An entry is built under a ``filelock.FileLock`` (``bin-<key>.lock``) in a temporary directory renamed into
place, so concurrent jobs (DDP ranks, sweep runs) build it once. Opening an entry checks that ``DONE`` exists,
that meta.json matches the key, that every file has the size meta.json recorded and that the indices are
consistent; a damaged entry (a truncated or missing file, an index that does not match) is logged, removed and
built again, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from lightning_nmt.atomic import atomic_directory
from lightning_nmt.data.binarize import binarize
from lightning_nmt.data.corpus import PairSource
from lightning_nmt.data.indexed import DamagedIndex, IndexedDataset
from lightning_nmt.data.tokenizer import Tokenizer

CACHE_VERSION = 3
log = logging.getLogger("lightning_nmt.data")


@dataclass
class Binarized:
    """A loaded cache entry: its directory, tokenizer, encoded train split and meta.json."""

    path: Path
    tokenizer: Tokenizer
    train: IndexedDataset
    meta: dict[str, Any]


class _Unusable(Exception):
    """The entry is missing (no message) or damaged (the message says how)."""


def cache_key(fingerprint: Mapping[str, Any], settings: Mapping[str, Any], max_len: int) -> str:
    """sha256 over the cache version, tokenizer settings, ``max_len`` and the train input's fingerprint. A setting
    at the value a state without it reads as (``lowercase=False``) is left out, so an entry keeps its key."""
    settings = {k: v for k, v in settings.items() if (k, v) != ("lowercase", False)}
    spec = {"version": CACHE_VERSION, "settings": settings, "max_len": max_len, "train": dict(fingerprint)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _open(directory: Path, key: str, max_len: int) -> Binarized:
    """The entry in ``directory``, checked; raises ``_Unusable``."""
    if not directory.is_dir():
        raise _Unusable()
    if not (directory / "DONE").is_file():
        raise _Unusable("incomplete: no DONE marker")
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("key") != key:
            raise _Unusable("meta.json belongs to another entry")
        for name, size in meta["files"].items():
            path = directory / name
            actual = path.stat().st_size if path.is_file() else None
            if actual != size:
                raise _Unusable(f"{name} has {actual} bytes, expected {size}")
        train = IndexedDataset(directory, meta["layout"])
        train.check(max_len)
        tokenizer = Tokenizer.load(directory)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, DamagedIndex) as e:
        raise _Unusable(" ".join(str(e).split()) or type(e).__name__) from e
    return Binarized(directory, tokenizer, train, meta)


def _discard(directory: Path) -> None:
    """Move a damaged entry out of the way (readers that mapped its files keep them), then delete it."""
    if directory.exists():
        trash = directory.with_name(f".{directory.name}.damaged-{uuid.uuid4().hex[:8]}")
        os.replace(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _build(directory: Path, key: str, train: PairSource, fingerprint: Mapping[str, Any],
           settings: Mapping[str, Any], max_len: int, workers: int | None) -> None:
    meta = binarize(train, directory, settings, max_len, workers)
    meta = {"version": CACHE_VERSION, "key": key, "input": dict(fingerprint), "settings": dict(settings),
            "max_len": max_len, **meta}
    meta["files"] = {p.name: p.stat().st_size for p in sorted(directory.iterdir())}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (directory / "DONE").write_text(key + "\n")


def build_or_load(cache_dir: str | Path, train: PairSource, settings: Mapping[str, Any], max_len: int,
                  workers: int | None = None) -> tuple[Binarized, bool]:
    """Open the cache entry for this train split, building it first if it is missing or damaged.

    ``settings``: ``tokenizer.settings_from_config``; ``workers``: encoding processes of a build (None: every
    core). Returns the entry and whether this call built it (i.e. trained sentencepiece).
    """
    fingerprint = train.fingerprint()
    key = cache_key(fingerprint, settings, max_len)
    directory = Path(cache_dir) / f"bin-{key[:20]}"
    try:
        entry = _open(directory, key, max_len)
        log.info("using the binarized corpus cached in %s", directory)
        return entry, False
    except _Unusable:
        pass
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        try:  # another process may have built it while this one waited for the lock
            entry = _open(directory, key, max_len)
            log.info("using the binarized corpus cached in %s", directory)
            return entry, False
        except _Unusable as problem:
            if str(problem):
                log.warning("the cache entry %s is damaged (%s): building it again", directory, problem)
        _discard(directory)
        log.info("training sentencepiece and binarizing the corpus into %s", directory)
        with atomic_directory(directory) as tmp:
            _build(tmp, key, train, fingerprint, settings, max_len, workers)
        return _open(directory, key, max_len), True
