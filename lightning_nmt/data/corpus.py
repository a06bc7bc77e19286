"""Parallel text read in chunks and validated as it is read.

A ``PairSource`` is one split of a corpus: ``chunks()`` yields its sentence pairs a chunk at a time, so a split
of any size is read in bounded memory, and raises ``DataError`` at the first problem; ``fingerprint()`` says
what identifies the input without reading it (it keys the binarized cache). ``raw_chunks()`` yields the same
chunks undecoded (for text files: the bytes of their lines), so that the preprocessing's worker processes decode
and check them while this process only reads: ``raw.decode()`` is the ``Chunk``. The text formats are here:

- ``TextPair``: two UTF-8 files with one sentence a line, ``PREFIX.src_lang`` and ``PREFIX.tgt_lang``, plain or
  gzip (``.gz``). Only the line terminator (``\\n`` or ``\\r\\n``) is stripped. Errors: a missing file, invalid
  UTF-8 (file and line), a line count mismatch (both files and counts), an empty split.
- ``TsvFile``: one UTF-8 file (plain or ``.gz``), ``source<TAB>target`` on each line. Errors: as above, and a
  line without exactly two tab-separated columns (file, line and the count found).

Hugging Face datasets are in ``hf.py``. Validation and test sets are read whole (``read_all``): BLEU needs the
raw references.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from lightning_nmt.data.errors import DataError
from lightning_nmt.data.formats import CorpusFormat, configured, register_corpus

CHUNK_PAIRS = 20_000
BLOCK_BYTES = 1 << 22  # bytes read (and decompressed) at a time


@dataclass(frozen=True)
class Chunk:
    """Consecutive pairs of a split: ``src[i]``, ``tgt[i]`` is pair ``start + i`` (0-based line or row)."""

    start: int
    src: list[str]
    tgt: list[str]

    def decode(self) -> Chunk:
        """Itself (a chunk that needed no decoding)."""
        return self


class RawChunk(Protocol):
    """A chunk as read, picklable; ``decode()`` checks it and returns the ``Chunk`` (raises ``DataError``)."""

    def decode(self) -> Chunk: ...


class PairSource(ABC):
    """One split of a parallel corpus."""

    description: str  # names the input in messages, e.g. "corpus/train.en and corpus/train.de"

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of the input, from metadata only (paths, sizes, modification times)."""

    @abstractmethod
    def raw_chunks(self, size: int = CHUNK_PAIRS) -> Iterator[RawChunk]:
        """The pairs, ``size`` at a time (the last chunk may be shorter), not decoded yet; what can be checked
        without decoding (files, line counts, an empty split) is checked here."""

    def chunks(self, size: int = CHUNK_PAIRS) -> Iterator[Chunk]:
        """The validated pairs, ``size`` at a time."""
        for raw in self.raw_chunks(size):
            yield raw.decode()


def file_identity(path: Path) -> dict[str, Any]:
    """Absolute path, size and modification time (ns) of a file: what the cache key holds for it."""
    try:
        stat = path.stat()
    except FileNotFoundError as e:
        raise DataError(f"missing corpus file: {path}") from e
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_content(path: Path) -> dict[str, Any]:
    """A file's name, size and sha256: its identity by content, wherever it lies (a run's data fingerprint)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return {"name": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()}


def decode_lines(data: bytes, path: Path, first_line: int) -> list[str]:
    """UTF-8 ``data`` (whole lines of ``path``, the first being line ``first_line``, 1-based) -> the lines
    without their terminator (``\\n`` or ``\\r\\n``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise DataError(f"invalid UTF-8 in {path} at line {line}") from e
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines


class _Lines:
    """The lines of a file (plain or gzip) as bytes, read a block at a time; a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file: IO[bytes] = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
        except OSError as e:
            raise DataError(f"cannot read {path}: {e}") from e
        self._data = b""  # bytes not handed out yet: whole lines, then maybe the start of the next one
        self._ends = np.zeros(0, np.int64)  # where each whole line of _data ends (after its newline)
        self._next = 0  # index in _ends of the next line to hand out
        self._offset = 0  # where that line starts in _data
        self._eof = False

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def _fill(self) -> bool:
        """Read the next block; False at the end of the file."""
        if self._eof:
            return False
        try:
            block = self._file.read(BLOCK_BYTES)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot read {self.path}: {e}") from e
        self._data = self._data[self._offset:] + block
        self._ends = np.flatnonzero(np.frombuffer(self._data, np.uint8) == ord("\n")) + 1
        self._next = self._offset = 0
        if not block:
            self._eof = True
            if self._data and not self._data.endswith(b"\n"):  # a last line without terminator
                self._ends = np.append(self._ends, len(self._data))
        return True

    def take(self, n: int) -> tuple[bytes, int]:
        """The bytes of the next ``n`` lines (fewer at the end of the file) and how many there are."""
        while len(self._ends) - self._next < n and self._fill():
            pass
        count = min(n, len(self._ends) - self._next)
        if count == 0:
            return b"", 0
        end = int(self._ends[self._next + count - 1])
        data = self._data[self._offset:end]
        self._next, self._offset = self._next + count, end
        return data, count

    def count_rest(self) -> int:
        """Read the rest of the file; the number of lines it had."""
        rest = 0
        while count := self.take(CHUNK_PAIRS)[1]:
            rest += count
        return rest


def resolve(prefix: str | Path, lang: str) -> Path:
    """Return ``PREFIX.lang`` or ``PREFIX.lang.gz``, whichever exists (plain first)."""
    candidates = [Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")]
    for path in candidates:
        if path.is_file():
            return path
    tried = " or ".join(str(p) for p in candidates)
    raise DataError(f"missing corpus file: {tried}")


@dataclass(frozen=True)
class _RawLines:
    """Raw chunk: the bytes of the same lines of two files (a ``TextPair``) or of one (a ``TsvFile``, each line
    ``source<TAB>target``)."""

    start: int
    data: tuple[bytes, ...]
    paths: tuple[Path, ...]

    def decode(self) -> Chunk:
        sides = [decode_lines(data, path, self.start + 1) for data, path in zip(self.data, self.paths, strict=True)]
        if len(sides) == 2:
            return Chunk(self.start, *sides)
        columns = [line.split("\t") for line in sides[0]]
        for i, fields in enumerate(columns):
            if len(fields) != 2:
                raise DataError(f"{self.paths[0]} line {self.start + i + 1}: expected 2 tab-separated columns "
                                f"(source, target), found {len(fields)}")
        return Chunk(self.start, [f[0] for f in columns], [f[1] for f in columns])


class TextPair(PairSource):
    """Two line-aligned files, one sentence a line (see the module docstring)."""

    def __init__(self, src_path: str | Path, tgt_path: str | Path) -> None:
        self.src_path, self.tgt_path = Path(src_path), Path(tgt_path)
        self.description = f"{self.src_path} and {self.tgt_path}"

    @classmethod
    def from_prefix(cls, prefix: str | Path, src_lang: str, tgt_lang: str) -> TextPair:
        """``PREFIX.src_lang`` and ``PREFIX.tgt_lang``, each plain or ``.gz``."""
        return cls(resolve(prefix, src_lang), resolve(prefix, tgt_lang))

    def fingerprint(self) -> dict[str, Any]:
        return {"format": "text", "files": [file_identity(self.src_path), file_identity(self.tgt_path)]}

    def raw_chunks(self, size: int = CHUNK_PAIRS) -> Iterator[_RawLines]:
        with _Lines(self.src_path) as src_file, _Lines(self.tgt_path) as tgt_file:
            start = 0
            while True:
                (src, n_src), (tgt, n_tgt) = src_file.take(size), tgt_file.take(size)
                if n_src != n_tgt:
                    n_src, n_tgt = start + n_src + src_file.count_rest(), start + n_tgt + tgt_file.count_rest()
                    raise DataError(f"line count mismatch: {self.src_path} has {n_src} lines but {self.tgt_path} "
                                    f"has {n_tgt}")
                if not n_src:
                    break
                yield _RawLines(start, (src, tgt), (self.src_path, self.tgt_path))
                start += n_src
        if start == 0:
            raise DataError(f"empty split: {self.src_path} and {self.tgt_path} have no lines")


class TsvFile(PairSource):
    """One file of ``source<TAB>target`` lines (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = str(self.path)

    def fingerprint(self) -> dict[str, Any]:
        return {"format": "tsv", "files": [file_identity(self.path)]}

    def raw_chunks(self, size: int = CHUNK_PAIRS) -> Iterator[_RawLines]:
        if not self.path.is_file():
            raise DataError(f"missing corpus file: {self.path}")
        with _Lines(self.path) as lines:
            start = 0
            while count := (taken := lines.take(size))[1]:
                yield _RawLines(start, (taken[0],), (self.path,))
                start += count
        if start == 0:
            raise DataError(f"empty split: {self.path} has no lines")


@register_corpus("files")
@dataclass
class FilesCorpus(CorpusFormat):
    """`data=files`: `data.train`/`val`/`test` (and extra tests) are prefixes of `PREFIX.<lang>[.gz]` files."""

    def sources(self, splits: Mapping[str, str | None], extra_tests: Mapping[str, str], src_lang: str,
                tgt_lang: str, cache_dir: Path) -> dict[str, PairSource]:
        return {name: TextPair.from_prefix(prefix, src_lang, tgt_lang)
                for name, prefix in configured(splits, extra_tests).items()}


@register_corpus("tsv")
@dataclass
class TsvCorpus(CorpusFormat):
    """`data=tsv`: `data.train`/`val`/`test` (and extra tests) are `source<TAB>target` files."""

    def sources(self, splits: Mapping[str, str | None], extra_tests: Mapping[str, str], src_lang: str,
                tgt_lang: str, cache_dir: Path) -> dict[str, PairSource]:
        return {name: TsvFile(path) for name, path in configured(splits, extra_tests).items()}


@dataclass(frozen=True)
class ParallelText:
    """A whole split in memory (validation and test sets)."""

    src: list[str]
    tgt: list[str]


def read_all(source: PairSource) -> ParallelText:
    """Read and validate a whole split."""
    src: list[str] = []
    tgt: list[str] = []
    for chunk in source.chunks():
        src += chunk.src
        tgt += chunk.tgt
    return ParallelText(src, tgt)


def drop_empty(src: list[str], tgt: list[str]) -> list[int]:
    """Indices of the pairs whose sides both contain non-whitespace text (train cleaning)."""
    if not any("" in side or any(map(str.isspace, side)) for side in (src, tgt)):
        return list(range(len(src)))  # the usual case, checked without a Python loop per pair
    return [i for i, (s, t) in enumerate(zip(src, tgt, strict=True)) if s.strip() and t.strip()]
