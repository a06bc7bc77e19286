"""Hugging Face ``datasets`` input (``data=hf``; the optional extra ``pip install -e '.[hf]'``).

A split of a dataset with the usual translation layout, a ``translation`` column of ``{lang: sentence}``
dicts (``wmt14``, ``wmt16``, ``iwslt2017``, ``opus_books``, ...). The dataset is given by its hub name and
configuration (``datasets.load_dataset(name, config, split=...)``, downloaded and cached by ``datasets``) or as
a local directory written by ``DatasetDict.save_to_disk`` (``datasets.load_from_disk``). Arrow files are
memory-mapped by ``datasets`` and read here a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_nmt.data.corpus import CHUNK_PAIRS, Chunk, PairSource, file_identity
from lightning_nmt.data.errors import DataError
from lightning_nmt.data.formats import CorpusFormat, configured, register_corpus

INSTALL = "pip install -e '.[hf]'"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class HFSplit(PairSource):
    """Split ``split`` of the dataset ``name`` (hub name, or a ``save_to_disk`` directory) in configuration
    ``config``; pairs ``(translation[src_lang], translation[tgt_lang])``. Loaded when first read."""

    def __init__(self, name: str, config: str | None, split: str, src_lang: str, tgt_lang: str) -> None:
        self.name, self.config, self.split = name, config, split
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.local = Path(name).is_dir()
        self.description = f"{name}{f' ({config})' if config else ''} split {split!r}"
        self._loaded: Any = None

    def _dataset(self) -> Any:
        """The ``datasets.Dataset`` of the split, its ``translation`` column checked."""
        if self._loaded is None:
            try:
                import datasets
            except ImportError as e:
                raise DataError(f"data=hf needs the Hugging Face datasets package: {INSTALL}") from e
            try:
                if self.local:
                    loaded = datasets.load_from_disk(self.name)
                    if not isinstance(loaded, datasets.DatasetDict):
                        raise DataError(f"{self.name} holds a single dataset; save a DatasetDict (with train, "
                                        "validation and test splits) with save_to_disk")
                    if self.split not in loaded:
                        raise DataError(f"{self.name} has no split {self.split!r}; splits: {', '.join(loaded)}")
                    loaded = loaded[self.split]
                else:
                    loaded = datasets.load_dataset(self.name, self.config, split=self.split)
            except (ValueError, KeyError, OSError, ConnectionError) as e:
                raise DataError(f"cannot load {self.description}: {_one_line(e)}") from e
            feature = loaded.features.get("translation")
            langs = getattr(feature, "languages", None) or (list(feature) if isinstance(feature, dict) else [])
            if self.src_lang not in langs or self.tgt_lang not in langs:
                raise DataError(f"{self.description} has no 'translation' column with {self.src_lang!r} and "
                                f"{self.tgt_lang!r} entries (columns: {loaded.features})")
            self._loaded = loaded.select_columns(["translation"])
        return self._loaded

    def fingerprint(self) -> dict[str, Any]:
        dataset = self._dataset()
        files = [file_identity(Path(f["filename"])) for f in dataset.cache_files]
        return {"format": "hf", "name": str(Path(self.name).resolve()) if self.local else self.name,
                "config": self.config, "split": self.split, "src": self.src_lang, "tgt": self.tgt_lang,
                "fingerprint": dataset._fingerprint, "files": files}

    def raw_chunks(self, size: int = CHUNK_PAIRS) -> Iterator[Chunk]:
        """Decoded already (the strings come out of Arrow), and checked."""
        dataset = self._dataset()
        if len(dataset) == 0:
            raise DataError(f"empty split: {self.description} has no rows")
        start = 0
        for batch in dataset.iter(batch_size=size):
            rows = batch["translation"]
            src, tgt = [row[self.src_lang] for row in rows], [row[self.tgt_lang] for row in rows]
            for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
                if not isinstance(s, str) or not isinstance(t, str):
                    raise DataError(f"{self.description} row {start + i}: translation has no "
                                    f"{self.src_lang!r} or {self.tgt_lang!r} text")
            yield Chunk(start, src, tgt)
            start += len(rows)

    def __getstate__(self) -> dict[str, Any]:
        """Without the loaded dataset (reloaded where needed)."""
        return {**self.__dict__, "_loaded": None}


@register_corpus("hf")
@dataclass
class HFCorpus(CorpusFormat):
    """`data=hf`: `data.train`/`val`/`test` (and extra tests) are split names of the dataset `hf_name` (a hub name,
    or a directory written by `save_to_disk`), configuration `hf_config`."""

    hf_name: str | None = None
    hf_config: str | None = None

    def __post_init__(self) -> None:
        if not self.hf_name:
            raise DataError("data.hf_name is required for corpus=hf: a hub dataset name (e.g. wmt14) or a directory "
                            "written by save_to_disk")

    def sources(self, splits: Mapping[str, str | None], extra_tests: Mapping[str, str], src_lang: str,
                tgt_lang: str, cache_dir: Path) -> dict[str, PairSource]:
        return {name: HFSplit(self.hf_name, self.hf_config, split, src_lang, tgt_lang)
                for name, split in configured(splits, extra_tests).items()}
