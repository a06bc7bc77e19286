"""Corpus formats: each declares the `data:` keys it reads in a dataclass next to its reader and registers it under
its `data.corpus` name (`register_corpus`). `ParallelDataModule` builds its inputs from the registry, and the
`data:` schema (`lightning_nmt.config`) and the valid `data.corpus` values are derived from it. A module in
`lightning_nmt/data/` that registers a format is found by `corpus_formats` without an import elsewhere
(docs/extending.md)."""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

from lightning_nmt.data.errors import DataError
from lightning_nmt.registry import register_in

if TYPE_CHECKING:
    from lightning_nmt.data.corpus import PairSource


@dataclass
class CorpusFormat(ABC):
    """What one format reads from `data:` besides the keys every corpus has (languages, splits, tokenizer,
    batching): subclasses declare the fields (with defaults) and `sources`."""

    default_langs: ClassVar[tuple[str, str] | None] = None
    """(src_lang, tgt_lang) when `data.src_lang` / `data.tgt_lang` are not given; None: they are required."""

    def check_langs(self, src_lang: str, tgt_lang: str) -> None:  # noqa: B027 (any pair, unless overridden)
        """DataError for a language pair this corpus does not have (any pair by default)."""

    @abstractmethod
    def sources(self, splits: Mapping[str, str | None], extra_tests: Mapping[str, str], src_lang: str,
                tgt_lang: str, cache_dir: Path) -> dict[str, PairSource]:
        """Split name -> its input. `splits`: the `data.train`, `data.val`, `data.test` values (None: not given),
        `extra_tests`: name -> value of `data.extra_tests`. May generate or download files (once, under a lock)."""


def configured(splits: Mapping[str, str | None], extra_tests: Mapping[str, str]) -> dict[str, str]:
    """The given splits and extra tests, name -> value; `data.train` is required."""
    if splits.get("train") is None:
        raise DataError("data.train is required (the training split)")
    return {name: value for name, value in splits.items() if value is not None} | dict(extra_tests)


CORPORA: dict[str, type[CorpusFormat]] = {}
"""`data.corpus` name -> its format."""

Format = TypeVar("Format", bound=type[CorpusFormat])


def register_corpus(name: str) -> Callable[[Format], Format]:
    """Class decorator: `data.corpus=name` reads its splits with this format. A name registered twice is an
    error."""
    return register_in(CORPORA, name, "corpus format")


def corpus_formats() -> dict[str, type[CorpusFormat]]:
    """The registry, after importing every module of `lightning_nmt.data` (each registers its formats)."""
    package = importlib.import_module("lightning_nmt.data")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"lightning_nmt.data.{module.name}")
    return CORPORA
