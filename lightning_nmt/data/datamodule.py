"""``ParallelDataModule``: the one LightningDataModule for every corpus format."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from lightning_nmt.data.batching import TokenBatchSampler, make_eval_loader, make_loader
from lightning_nmt.data.binarize import report
from lightning_nmt.data.cache import Binarized, build_or_load
from lightning_nmt.data.corpus import PairSource, ParallelText, file_content, read_all
from lightning_nmt.data.dataset import EncodedDataset
from lightning_nmt.data.errors import DataError
from lightning_nmt.data.formats import CorpusFormat, corpus_formats
from lightning_nmt.data.tokenizer import Tokenizer, settings_from_config

SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
log = logging.getLogger("lightning_nmt.data")


def corpus_options(corpus: str, options: Mapping[str, Any]) -> CorpusFormat:
    """The format `corpus` with its keys from `options` (None: the format's default; other formats' keys are
    ignored); DataError for an unknown corpus or a key no format reads."""
    formats = corpus_formats()
    if corpus not in formats:
        raise DataError(f"unknown corpus {corpus!r}; valid: {', '.join(formats)}")
    known = {option.name for format_ in formats.values() for option in fields(format_)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown data option(s) {unknown}; valid: {sorted(known)}")
    own = {option.name for option in fields(formats[corpus])}
    return formats[corpus](**{key: value for key, value in options.items() if key in own and value is not None})


class ParallelDataModule(L.LightningDataModule):
    """Validated, tokenized and token-batched parallel data, from any registered corpus format.

    ``corpus`` names the format (``lightning_nmt.data.formats``: ``sample``, ``multi30k``, ``files``, ``tsv``,
    ``hf``, and any registered); ``train``, ``val``, ``test`` and ``extra_tests`` (name -> value, test sets added
    to any corpus) are what the format reads them as (prefixes, files, split names); ``options`` are the format's
    own keys (``root``, ``hf_name``, ...; those of other formats are ignored). ``tokenizer`` is the
    ``data.tokenizer`` config group (type, vocab_size, joint, character_coverage, input_sentence_size);
    ``preprocess_workers``: processes that encode the train split (None: every core).

    ``prepare_data`` generates/downloads; ``setup`` validates the evaluation splits and reads them into memory,
    builds or opens the binarized cache of the train split (streamed: see ``binarize``; memory-mapped: see
    ``indexed``; built once, under a file lock) and creates the samplers for this rank.
    Under DDP the Trainer must use ``use_distributed_sampler=False``: sharding is done here.
    """

    def __init__(
        self,
        corpus: str = "files",
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        extra_tests: Mapping[str, str] | None = None,
        tokenizer: Mapping[str, Any] | None = None,
        max_tokens: int = 4096,
        eval_max_tokens: int = 8192,
        max_len: int = 100,
        cache_dir: str = ".cache/lightning_nmt",
        num_workers: int = 0,
        preprocess_workers: int | None = None,
        seed: int = 42,
        **options: Any,
    ) -> None:
        super().__init__()
        self.corpus = corpus
        self.format = corpus_options(corpus, options)
        self.src_lang, self.tgt_lang = self._langs(src_lang, tgt_lang)
        self.split_names = {"train": train, "val": val, "test": test}
        self.extra_tests = dict(extra_tests or {})
        for name in self.extra_tests:
            if name in self.split_names or not SPLIT_NAME.fullmatch(name):
                raise DataError(f"invalid extra test name {name!r}: use letters, digits, '_', '-', '.' "
                                "and none of train/val/test")
        self.preprocess_workers = preprocess_workers
        self.tokenizer_settings = settings_from_config(tokenizer or {})
        self.max_tokens, self.eval_max_tokens, self.max_len = max_tokens, eval_max_tokens, max_len
        self.cache_dir = Path(cache_dir)
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer: Tokenizer | None = None
        self.train_sampler: TokenBatchSampler | None = None
        self._eval_names: list[str] | None = None  # set by setup_eval
        self.built_cache = False  # whether setup() trained sentencepiece (cache miss)
        self._entry: Binarized | None = None  # the train split's cache entry
        self._inputs: dict[str, PairSource] | None = None
        self._texts: dict[str, ParallelText] = {}  # the evaluation splits, raw
        self._splits: dict[str, EncodedDataset] | None = None  # every split, encoded (train: memory-mapped)
        self._rank, self._world = 0, 1

    def _langs(self, src_lang: str | None, tgt_lang: str | None) -> tuple[str, str]:
        default_src, default_tgt = self.format.default_langs or (None, None)
        src_lang, tgt_lang = src_lang or default_src, tgt_lang or default_tgt
        if src_lang is None or tgt_lang is None:
            raise DataError(f"data.src_lang and data.tgt_lang are required for corpus={self.corpus}")
        if src_lang == tgt_lang:
            raise DataError(f"source and target language are both {src_lang!r}")
        self.format.check_langs(src_lang, tgt_lang)
        return src_lang, tgt_lang

    def _sources(self) -> dict[str, PairSource]:
        """Split name -> its input; generates or downloads the corpus files when needed (once)."""
        if self._inputs is None:
            self._inputs = self.format.sources(self.split_names, self.extra_tests, self.src_lang, self.tgt_lang,
                                               self.cache_dir)
        return self._inputs

    def fingerprint(self) -> dict[str, Any]:
        """The corpus by content: per split its files' names, sizes and sha256 (`file_content`); an input without
        files (a Hugging Face dataset) by its own fingerprint. Two runs with equal `splits` read the same data."""
        splits = {}
        for name, source in self._sources().items():
            identity = source.fingerprint()
            splits[name] = ([file_content(Path(f["path"])) for f in identity["files"]] if "files" in identity
                            else identity)
        return {"corpus": self.corpus, "src_lang": self.src_lang, "tgt_lang": self.tgt_lang, "splits": splits}

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Generate (sample) or download (multi30k) the corpus files; no-op for the others."""
        self._sources()

    def setup(self, stage: str | None = None) -> None:
        """Validate every split and build or load the cache (once); create this rank's train sampler.

        May be called before a Trainer exists (to learn the vocabulary sizes) and again by the Trainer:
        the sampler is recreated only when the rank or world size changed.
        """
        if self._splits is None:
            self._load()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if "train" not in self._splits:  # set up by setup_eval: test sets only
            self._rank, self._world = rank, world
            return
        if self.train_sampler is None or (rank, world) != (self._rank, self._world):
            self._rank, self._world = rank, world
            train = self.dataset("train")
            self.train_sampler = TokenBatchSampler(
                train.src_lengths(), train.tgt_lengths(), self.max_tokens, shuffle=True, even=True,
                num_replicas=world, rank=rank, seed=self.seed)

    def _encode_eval(self) -> dict[str, EncodedDataset]:
        """The evaluation splits read into ``_texts``, encoded with ``self.tokenizer`` (in memory)."""
        encode_src, encode_tgt = self.tokenizer.encode_src, self.tokenizer.encode_tgt
        return {name: EncodedDataset.from_lists(encode_src(text.src), encode_tgt(text.tgt))
                for name, text in self._texts.items()}

    def setup_eval(self, tokenizer: Tokenizer, split: str = "test") -> None:
        """Read and validate the test sets (``split="val"``: the validation set instead) only and encode them
        with ``tokenizer`` (a checkpoint's), so a trained model can be scored on any corpus; no sentencepiece
        training, no cache."""
        if split not in ("test", "val"):
            raise DataError(f"unknown evaluation split {split!r}; valid: test (and data.extra_tests), val")
        wanted = ("val",) if split == "val" else ("test", *self.extra_tests)
        names = [name for name in self._sources() if name in wanted]
        if not names:
            raise DataError("no validation set configured (data.val)" if split == "val"
                            else "no test set configured (data.test or data.extra_tests)")
        self._eval_names = names
        self.tokenizer = tokenizer
        self._texts = {name: read_all(self._sources()[name]) for name in names}
        self._splits = self._encode_eval()

    def _load(self) -> None:
        # the evaluation splits are read (validated) first, before the long preprocessing of the train split
        self._texts = {name: read_all(source) for name, source in self._sources().items() if name != "train"}
        self._entry, self.built_cache = build_or_load(self.cache_dir, self._sources()["train"],
                                                      self.tokenizer_settings, self.max_len, self.preprocess_workers)
        self.tokenizer = self._entry.tokenizer
        self._splits = {"train": self._entry.train, **self._encode_eval()}
        log.info(report(self._entry.meta, self.max_len))

    def dataset(self, name: str) -> EncodedDataset:
        """The encoded split ``name`` (train: memory-mapped; val, test or an extra test name: in memory)."""
        if self._splits is None:
            raise RuntimeError("call setup() first")
        if name not in self._splits:
            raise DataError(f"no {name!r} split; available: {', '.join(self._splits)}")
        return self._splits[name]

    def _eval_loader(self, name: str) -> DataLoader:
        dataset = self.dataset(name)
        if len(dataset) < self._world:
            raise DataError(f"the {name} set has {len(dataset)} examples, fewer than the {self._world} "
                            "processes that evaluate it (trainer.devices x trainer.num_nodes)")
        return make_eval_loader(dataset, self.eval_max_tokens, self.num_workers, self._world, self._rank)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.dataset("train"), self.train_sampler, self.num_workers)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader ([] when no val split is configured)."""
        return self._eval_loader("val") if "val" in self._texts else []

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader, or a list in ``test_names`` order when there are extra test sets."""
        loaders = [self._eval_loader(name) for name in self.test_names]
        return loaders[0] if len(loaders) == 1 else loaders

    # ------------------------------------------------------------------ accessors

    @property
    def test_names(self) -> list[str]:
        """Names of the test sets: ``test`` (if configured) first, then ``extra_tests`` in order; after
        ``setup_eval(split="val")``: ``val``."""
        return [name for name in (self._eval_names or ("test", *self.extra_tests)) if name in self._texts]

    @property
    def drop_counts(self) -> dict[str, int]:
        """Train pairs dropped: ``empty`` (a side empty/whitespace-only), ``too_long`` (> max_len pieces)."""
        if self._entry is None:
            raise RuntimeError("call setup() first")
        return dict(self._entry.meta["drop_counts"])

    @property
    def padding_fraction(self) -> float:
        """Padded fraction of target positions in this rank's training batches of the current epoch."""
        if self.train_sampler is None:
            raise RuntimeError("call setup() first")
        return self.train_sampler.padding_fraction

    def _raw(self, name: str, side: str) -> list[str]:
        self.dataset(name)  # raises for an unknown split
        if name != "train":
            return list(getattr(self._texts[name], side))
        rows, lines = self._entry.train.rows(), []  # the train split is read again from its input
        for chunk in self._sources()["train"].chunks():
            first, end = np.searchsorted(rows, [chunk.start, chunk.start + len(chunk.src)])
            chunk_lines = getattr(chunk, side)
            lines += [chunk_lines[row - chunk.start] for row in rows[first:end].tolist()]
        return lines

    def sources(self, name: str) -> list[str]:
        """Raw source sentences of a split, aligned with the examples' ``ids`` (train: after cleaning, read
        from the input again, so for a large corpus a large list)."""
        return self._raw(name, "src")

    def references(self, name: str) -> list[str]:
        """Raw target sentences of a split, aligned with the examples' ``ids`` (train: as ``sources``)."""
        return self._raw(name, "tgt")

    def encode_source_lines(self, lines: Sequence[str]) -> EncodedDataset:
        """Raw source text -> dataset of target-less ``Example`` (for translation)."""
        if self.tokenizer is None:
            raise RuntimeError("call setup() or set .tokenizer first")
        return EncodedDataset.from_lists(self.tokenizer.encode_src(lines), None)

    def make_eval_loader(self, examples: EncodedDataset, max_tokens: int | None = None) -> DataLoader:
        """Unsharded, length-sorted loader over ``examples``; ``batch["ids"]`` restores the order."""
        return make_eval_loader(examples, max_tokens or self.eval_max_tokens, self.num_workers)

