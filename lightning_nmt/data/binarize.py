"""Preprocessing of the train split, streamed: nothing of the size of the corpus is held in memory.

1. Read pass: every chunk is validated (see ``corpus``), pairs with an empty or whitespace-only side are
   counted, and a uniform random sample of the others is kept (reservoir sampling, seeded):
   ``input_sentence_size`` sentences per sentencepiece model (joint: half as many pairs). The sample is
   written to two files (in corpus order) and dropped from memory.
2. Sentencepiece is trained on the sample files, streamed.
3. Encode pass: the input is read again, chunk by chunk, as raw bytes; worker processes (``workers``, forked;
   one: all in this process) decode and check each chunk, drop the empty pairs, encode both sides (``encoder``)
   and drop the pairs over ``max_len`` pieces on either side; the results are appended in input order to the
   indexed files (``indexed``). This process only reads (and decompresses) and writes.

Each pass shows a progress bar on a terminal (tqdm, stderr; not in CI). Returns the entry's meta: counts,
tokens, timings and the file layout; ``report`` formats it as the one line logged at every start.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lightning_nmt.data import corpus
from lightning_nmt.data.corpus import Chunk, PairSource, RawChunk, drop_empty
from lightning_nmt.data.encoder import Encoder
from lightning_nmt.data.errors import DataError
from lightning_nmt.data.indexed import IndexedWriter, token_dtype
from lightning_nmt.data.tokenizer import Tokenizer
from lightning_nmt.kernels import available_cores

SAMPLE_SEED = 1
SAMPLE_FILES = ("sample.src", "sample.tgt")
log = logging.getLogger("lightning_nmt.data")


def _bar(desc: str, total: int | None) -> tqdm:
    """A progress bar in pairs on stderr, shown only on a terminal outside CI."""
    return tqdm(desc=desc, total=total, unit=" pairs", unit_scale=True, file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty() or bool(os.environ.get("CI")))


@dataclass
class _Scan:
    """What the read pass counted; the sample is in ``SAMPLE_FILES``."""

    pairs: int
    kept: int
    sampled: int


def _scan(source: PairSource, directory: Path, sample_pairs: int) -> _Scan:
    """Read pass: validate, count, and write a uniform sample of at most ``sample_pairs`` non-empty pairs."""
    rng = np.random.default_rng(SAMPLE_SEED)
    rows: list[int] = []  # the sample: input rows and sentences
    src: list[str] = []
    tgt: list[str] = []
    pairs = kept = 0
    with _bar(f"reading {source.description}", None) as bar:
        for chunk in source.chunks(corpus.CHUNK_PAIRS):
            keep = drop_empty(chunk.src, chunk.tgt)
            fill = min(len(keep), max(sample_pairs - kept, 0))
            rows += [chunk.start + i for i in keep[:fill]]
            src += [chunk.src[i] for i in keep[:fill]]
            tgt += [chunk.tgt[i] for i in keep[:fill]]
            if fill < len(keep):  # Algorithm R: the i-th pair (0-based) replaces a uniform slot of [0, i] if < k
                slots = rng.integers(0, np.arange(kept + fill, kept + len(keep)) + 1)
                hits = np.flatnonzero(slots < sample_pairs)
                for j, slot in zip(hits.tolist(), slots[hits].tolist(), strict=True):
                    i = keep[fill + j]
                    rows[slot], src[slot], tgt[slot] = chunk.start + i, chunk.src[i], chunk.tgt[i]
            pairs, kept = pairs + len(chunk.src), kept + len(keep)
            bar.update(len(chunk.src))
    order = np.argsort(np.asarray(rows, np.int64)).tolist()  # the sample in corpus order
    for name, lines in zip(SAMPLE_FILES, (src, tgt), strict=True):
        text = "\n".join(lines[i] for i in order)
        if text.count("\n") >= len(order):  # a sentence of a dataset may contain a line break: one line each here
            text = "\n".join(lines[i].replace("\n", " ") for i in order)
        (directory / name).write_text(text + "\n" if order else "", encoding="utf-8", newline="\n")
    return _Scan(pairs, kept, len(rows))


def _sample_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line[:-1]


def _encode_chunk(chunk: Chunk, encoders: tuple[Encoder, Encoder], max_len: int) -> dict[str, Any]:
    """Drop empty pairs, encode, drop pairs over ``max_len`` pieces: rows (n,), per side ids and lengths (n,)."""
    keep = drop_empty(chunk.src, chunk.tgt)
    sides = (chunk.src, chunk.tgt) if len(keep) == len(chunk.src) else ([lines[i] for i in keep]
                                                                        for lines in (chunk.src, chunk.tgt))
    (src_ids, src_len), (tgt_ids, tgt_len) = (encode(lines) for encode, lines in zip(encoders, sides, strict=True))
    short = (src_len <= max_len) & (tgt_len <= max_len)
    if not short.all():
        src_ids, tgt_ids = src_ids[np.repeat(short, src_len)], tgt_ids[np.repeat(short, tgt_len)]
        src_len, tgt_len = src_len[short], tgt_len[short]
    return {"rows": chunk.start + np.asarray(keep, np.int64)[short], "ids": {"src": src_ids, "tgt": tgt_ids},
            "lengths": {"src": src_len, "tgt": tgt_len}, "pairs": len(chunk.src), "too_long": int((~short).sum())}


_worker_encoders: tuple[Encoder, Encoder] | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_encoders
    _worker_encoders = tokenizer.bulk_encoders(num_threads=1)


def _encode_in_worker(raw: RawChunk, max_len: int) -> dict[str, Any]:
    return _encode_chunk(raw.decode(), _worker_encoders, max_len)


def _encoded_chunks(source: PairSource, tokenizer: Tokenizer, max_len: int, workers: int) -> Iterator[dict[str, Any]]:
    """``_encode_chunk`` of every chunk, in order. With ``workers`` > 1, in that many forked processes (each with
    its own word cache) that also decode the raw chunks, at most two chunks per worker in flight: this process
    only reads (and decompresses)."""
    chunks = source.raw_chunks(corpus.CHUNK_PAIRS)
    if workers <= 1:
        encoders = tokenizer.bulk_encoders(num_threads=available_cores())
        yield from (_encode_chunk(raw.decode(), encoders, max_len) for raw in chunks)
        return
    # fork: the workers need only numpy and sentencepiece, already imported; spawn would re-import __main__.
    # A worker that dies (e.g. out of memory) raises BrokenProcessPool here rather than hanging.
    with ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), _init_worker, (tokenizer,)) as pool:
        pending: deque[Future] = deque()
        for raw in chunks:
            pending.append(pool.submit(_encode_in_worker, raw, max_len))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def binarize(source: PairSource, directory: Path, settings: Mapping[str, Any], max_len: int,
             workers: int | None = None) -> dict[str, Any]:
    """Train the tokenizer on a sample of ``source`` and encode it into ``directory`` (see the module docstring).

    ``settings``: ``tokenizer.settings_from_config`` (with ``input_sentence_size``); ``workers``: encoding
    processes, None: every available core. Returns the meta: counts, sample size, timings, file layout.
    """
    started = time.perf_counter()
    settings = dict(settings)
    sentences = settings.pop("input_sentence_size")
    scan = _scan(source, directory, sentences // 2 if settings["joint"] else sentences)
    if scan.kept == 0:
        raise DataError(f"no training pairs left: every pair of {source.description} has an empty side")
    read = time.perf_counter()
    log.info("training sentencepiece (%s, %d pieces) on %s of %s pairs", settings["model_type"],
             settings["vocab_size"], f"{scan.sampled:,}", f"{scan.kept:,}")
    src_sample, tgt_sample = (directory / name for name in SAMPLE_FILES)
    tokenizer = Tokenizer.train(_sample_lines(src_sample), _sample_lines(tgt_sample), **settings)
    src_sample.unlink()
    tgt_sample.unlink()
    tokenizer.save(directory)
    trained = time.perf_counter()
    workers = min(workers or available_cores(), -(-scan.pairs // corpus.CHUNK_PAIRS))  # at most one per chunk
    if multiprocessing.current_process().daemon:  # a daemon process may not start processes
        workers = 1
    dtype = token_dtype(max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
    too_long = 0
    with IndexedWriter(directory, dtype) as writer, _bar(f"encoding {source.description}", scan.pairs) as bar:
        for encoded in _encoded_chunks(source, tokenizer, max_len, workers):
            writer.append(encoded["rows"], encoded["ids"], encoded["lengths"])
            too_long += encoded["too_long"]
            bar.update(encoded["pairs"])
        layout = writer.close()
    if layout["examples"] == 0:
        raise DataError(f"no training pairs left: every pair of {source.description} is over max_len={max_len}")
    done = time.perf_counter()
    meta = {"pairs": scan.pairs, "drop_counts": {"empty": scan.pairs - scan.kept, "too_long": too_long},
            "sample_pairs": scan.sampled, "workers": workers, "layout": layout,
            "seconds": {"read": read - started, "sentencepiece": trained - read, "encode": done - trained,
                        "total": done - started}}
    return meta


def report(meta: Mapping[str, Any], max_len: int) -> str:
    """The one-line summary of a train split's preprocessing."""
    drops, layout, seconds = meta["drop_counts"], meta["layout"], meta["seconds"]
    return (f"train: {meta['pairs']:,} pairs read, dropped {drops['empty']:,} empty or whitespace-only pairs and "
            f"{drops['too_long']:,} pairs over max_len={max_len} pieces, {layout['examples']:,} pairs left; "
            f"{layout['tokens']['src']:,} source and {layout['tokens']['tgt']:,} target tokens; built in "
            f"{seconds['total']:.1f} s ({meta['pairs'] / max(seconds['total'], 1e-9):,.0f} pairs/s: reading "
            f"{seconds['read']:.1f} s, sentencepiece {seconds['sentencepiece']:.1f} s on {meta['sample_pairs']:,} "
            f"pairs, encoding {seconds['encode']:.1f} s with {meta['workers']} process(es))")
