"""Reading and validating parallel text: one sentence a line, plain or gzip (``.gz``) UTF-8 files."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from lightning_nmt.data.errors import DataError


@dataclass(frozen=True)
class ParallelText:
    """The validated lines of one split.

    ``digest`` is a sha256 of both files' decompressed contents (keys the binarized cache).
    """

    src_path: Path
    tgt_path: Path
    src: list[str]
    tgt: list[str]
    digest: str

    def __len__(self) -> int:
        return len(self.src)


def resolve(prefix: str | Path, lang: str) -> Path:
    """Return ``PREFIX.lang`` or ``PREFIX.lang.gz``, whichever exists (plain first)."""
    candidates = [Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")]
    for path in candidates:
        if path.is_file():
            return path
    tried = " or ".join(str(p) for p in candidates)
    raise DataError(f"missing corpus file: {tried}")


def read_bytes(path: Path) -> bytes:
    """Return the (decompressed, for ``.gz``) contents of ``path``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def split_lines(data: bytes, path: Path) -> list[str]:
    """Decode UTF-8 ``data`` into lines, stripping only the line terminator (``\\n`` or ``\\r\\n``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"invalid UTF-8 in {path} at line {line}") from e
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines


def read_parallel(prefix: str | Path, src_lang: str, tgt_lang: str) -> ParallelText:
    """Read and validate the split ``PREFIX.src_lang`` / ``PREFIX.tgt_lang``.

    Raises DataError for a missing file, invalid UTF-8, an empty split or a line count mismatch.
    """
    src_path, tgt_path = resolve(prefix, src_lang), resolve(prefix, tgt_lang)
    src_data, tgt_data = read_bytes(src_path), read_bytes(tgt_path)
    src, tgt = split_lines(src_data, src_path), split_lines(tgt_data, tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"line count mismatch: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}"
        )
    if not src:
        raise DataError(f"empty split: {src_path} and {tgt_path} have no lines")
    digest = hashlib.sha256()
    for data in (src_data, tgt_data):
        digest.update(hashlib.sha256(data).digest())
    return ParallelText(src_path, tgt_path, src, tgt, digest.hexdigest())


def drop_empty(src: list[str], tgt: list[str]) -> list[int]:
    """Indices of the pairs whose sides both contain non-whitespace text (train cleaning)."""
    return [i for i, (s, t) in enumerate(zip(src, tgt, strict=True)) if s.strip() and t.strip()]
