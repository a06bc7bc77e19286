"""The encoded train split on disk, in the layout of fairseq's memory-mapped indexed datasets.

Files of one split directory (N examples, ``T_side`` tokens per side)::

    src.bin, tgt.bin   the token ids of every example, back to back: (T_side,) uint16, or int32 for a vocabulary
                       over 65,535 pieces
    src.idx, tgt.idx   offsets (N + 1,) int64: example i is ``bin[idx[i]:idx[i + 1]]``
    rows.idx           (N,) int64, strictly increasing: the input pair (0-based line) each example came from

``IndexedWriter`` appends encoded chunks to them as they come; ``IndexedDataset`` maps them with ``np.memmap``
when first used, so opening costs O(1) in every process (DDP ranks, DataLoader workers) and the corpus itself is
only paged in by the operating system, shared by all processes. The dataset pickles as its directory and layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lightning_nmt.data.dataset import EncodedDataset, lengths

SIDES = ("src", "tgt")
FILES = ("src.bin", "src.idx", "tgt.bin", "tgt.idx", "rows.idx")


class DamagedIndex(Exception):
    """An indexed directory whose files do not agree with each other or with its layout."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id of a vocabulary: uint16 up to 65,535 pieces, else int32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.int32)


class IndexedWriter:
    """Writes encoded examples chunk by chunk into a directory (see the module docstring); a context manager.

    ``close()`` returns the layout ``IndexedDataset`` needs: examples, dtype, tokens per side, file sizes.
    """

    def __init__(self, directory: str | os.PathLike, dtype: np.dtype) -> None:
        self.directory, self.dtype = Path(directory), np.dtype(dtype)
        self._files = {name: open(self.directory / name, "wb") for name in FILES}  # noqa: SIM115 - closed in close()
        self.tokens = dict.fromkeys(SIDES, 0)
        self.examples = 0
        for side in SIDES:
            np.zeros(1, np.int64).tofile(self._files[f"{side}.idx"])

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._files.values():
            f.close()

    def append(self, rows: np.ndarray, ids: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray]) -> None:
        """Add examples: ``rows`` (n,) their input rows, per side ``ids`` (sum of lengths,) and ``lengths`` (n,)."""
        for side in SIDES:
            ids[side].astype(self.dtype, copy=False).tofile(self._files[f"{side}.bin"])
            (self.tokens[side] + np.cumsum(lengths[side], dtype=np.int64)).tofile(self._files[f"{side}.idx"])
            self.tokens[side] += int(np.sum(lengths[side]))
        np.asarray(rows, dtype=np.int64).tofile(self._files["rows.idx"])
        self.examples += len(rows)

    def close(self) -> dict[str, Any]:
        """Close the files; the layout of what was written."""
        self.__exit__()
        return {"examples": self.examples, "dtype": self.dtype.name, "tokens": dict(self.tokens),
                "files": {name: (self.directory / name).stat().st_size for name in FILES}}


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    """The file as a read-only memory-mapped array (a plain ndarray view of it)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r").view(np.ndarray)


class IndexedDataset(EncodedDataset):
    """``EncodedDataset`` over an indexed directory; the arrays are memory-mapped on first use in each process.

    ``layout``: what ``IndexedWriter.close`` returned. Only ``src_lengths()`` / ``tgt_lengths()`` (for bucketing)
    read a whole file (an index) into memory.
    """

    def __init__(self, directory: str | os.PathLike, layout: Mapping[str, Any]) -> None:
        self.directory, self.layout = Path(directory), dict(layout)
        self._data = None

    def arrays(self) -> dict[str, np.ndarray]:
        if self._data is None:
            dtype = np.dtype(self.layout["dtype"])
            self._data = {}
            for side in SIDES:
                self._data[f"{side}_ids"] = _map(self.directory / f"{side}.bin", dtype)
                self._data[f"{side}_offsets"] = _map(self.directory / f"{side}.idx", np.dtype(np.int64))
        return self._data

    def rows(self) -> np.ndarray:
        """(N,) int64, increasing: the input row (0-based) of each example (memory-mapped)."""
        return _map(self.directory / "rows.idx", np.dtype(np.int64))

    def __len__(self) -> int:
        return int(self.layout["examples"])

    def check(self, max_len: int) -> None:
        """Raise ``DamagedIndex`` unless the files have the layout's sizes and consistent indices with every
        example's length in [0, max_len]. Reads the two indices, not the token files."""
        n, dtype = len(self), np.dtype(self.layout["dtype"])
        expected = {"rows.idx": 8 * n}
        for side in SIDES:
            expected |= {f"{side}.idx": 8 * (n + 1), f"{side}.bin": dtype.itemsize * self.layout["tokens"][side]}
        for name, size in expected.items():
            path = self.directory / name
            actual = path.stat().st_size if path.is_file() else None
            if actual != size or self.layout["files"].get(name) != size:
                raise DamagedIndex(f"{name} has {actual} bytes, expected {size}")
        self._data = None  # map the files as they are now
        for side in SIDES:
            offsets = self.arrays()[f"{side}_offsets"]
            if offsets[0] != 0 or offsets[-1] != self.layout["tokens"][side]:
                raise DamagedIndex(f"{side}.idx does not span {side}.bin")
            sizes = lengths(offsets)
            if n and not 0 <= sizes.min() <= sizes.max() <= max_len:
                raise DamagedIndex(f"{side}.idx has lengths outside [0, {max_len}]")

    def __getstate__(self) -> dict[str, Any]:
        """Only the directory and layout: a DataLoader worker maps the files itself, nothing is copied."""
        return {"directory": self.directory, "layout": self.layout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory, self.layout, self._data = state["directory"], state["layout"], None
