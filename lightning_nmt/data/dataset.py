"""Encoded parallel data held as flat id arrays plus offsets: ``Example`` and the in-memory ``EncodedDataset``.

The train split lives on disk in the same layout (``indexed.IndexedDataset``, memory-mapped); validation and test
sets, and text to translate, are small and stay in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import NamedTuple

import numpy as np


class Example(NamedTuple):
    """One sentence pair as piece ids without specials; ``tgt`` is None for raw-text translation."""

    id: int
    src: Sequence[int]
    tgt: Sequence[int] | None


def _flatten(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Id lists -> (ids (N_tokens,) int32, offsets (N + 1,) int64)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(offsets[-1]))
    return ids, offsets


def lengths(offsets: np.ndarray) -> np.ndarray:
    """Offsets (N + 1,) -> lengths (N,) int32, without an int64 temporary of N (for memory-mapped indices)."""
    out = np.empty(max(len(offsets) - 1, 0), np.int32)
    return np.subtract(offsets[1:], offsets[:-1], out=out, casting="unsafe")


class EncodedDataset:
    """Map-style dataset of ``Example`` for a torch DataLoader; item ``i`` has ``id == i``.

    Example ``i`` has source ids ``src_ids[src_offsets[i]:src_offsets[i + 1]]`` (and likewise the target).
    (Plain class, not a ``torch.utils.data.Dataset`` subclass, so the cache does not import torch.)
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        """``arrays``: ``src_ids`` (N_tokens,), ``src_offsets`` (N + 1,) and optionally ``tgt_ids``,
        ``tgt_offsets``."""
        self._data: dict[str, np.ndarray] | None = arrays

    @classmethod
    def from_lists(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]] | None) -> EncodedDataset:
        src_ids, src_offsets = _flatten(src)
        arrays = {"src_ids": src_ids, "src_offsets": src_offsets}
        if tgt is not None:
            arrays["tgt_ids"], arrays["tgt_offsets"] = _flatten(tgt)
        return cls(arrays)

    def arrays(self) -> dict[str, np.ndarray]:
        """``src_ids``, ``src_offsets`` and, with a target, ``tgt_ids``, ``tgt_offsets``."""
        return self._data

    def src_lengths(self) -> np.ndarray:
        """(N,) int32 number of source pieces per example (EOS not included)."""
        return lengths(self.arrays()["src_offsets"])

    def tgt_lengths(self) -> np.ndarray | None:
        """(N,) int32 number of target pieces per example (BOS/EOS not included), None without target."""
        offsets = self.arrays().get("tgt_offsets")
        return None if offsets is None else lengths(offsets)

    def __len__(self) -> int:
        return len(self.arrays()["src_offsets"]) - 1

    def __getitem__(self, i: int) -> Example:
        a = self.arrays()
        src_offsets, tgt_offsets = a["src_offsets"], a.get("tgt_offsets")
        src = a["src_ids"][src_offsets[i]:src_offsets[i + 1]]
        tgt = None if tgt_offsets is None else a["tgt_ids"][tgt_offsets[i]:tgt_offsets[i + 1]]
        return Example(int(i), src, tgt)
