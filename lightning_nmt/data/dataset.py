"""Encoded parallel data held as flat id arrays plus offsets (compact, fast to save and load)."""

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


class EncodedDataset:
    """Map-style dataset of ``Example`` for a torch DataLoader; item ``i`` has ``id == i``.

    (Plain class, not a ``torch.utils.data.Dataset`` subclass, so the cache does not import torch.)
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        """``arrays``: ``src_ids``, ``src_offsets`` and optionally ``tgt_ids``, ``tgt_offsets``."""
        self.src_ids, self.src_offsets = arrays["src_ids"], arrays["src_offsets"]
        self.tgt_ids, self.tgt_offsets = arrays.get("tgt_ids"), arrays.get("tgt_offsets")

    @classmethod
    def from_lists(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]] | None) -> EncodedDataset:
        src_ids, src_offsets = _flatten(src)
        arrays = {"src_ids": src_ids, "src_offsets": src_offsets}
        if tgt is not None:
            arrays["tgt_ids"], arrays["tgt_offsets"] = _flatten(tgt)
        return cls(arrays)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save (inverse of the constructor)."""
        arrays = {"src_ids": self.src_ids, "src_offsets": self.src_offsets}
        if self.tgt_ids is not None:
            arrays |= {"tgt_ids": self.tgt_ids, "tgt_offsets": self.tgt_offsets}
        return arrays

    @property
    def has_target(self) -> bool:
        return self.tgt_ids is not None

    def src_lengths(self) -> np.ndarray:
        """(N,) number of source pieces per example (EOS not included)."""
        return np.diff(self.src_offsets)

    def tgt_lengths(self) -> np.ndarray | None:
        """(N,) number of target pieces per example (BOS/EOS not included), None without target."""
        return None if self.tgt_offsets is None else np.diff(self.tgt_offsets)

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def __getitem__(self, i: int) -> Example:
        src = self.src_ids[self.src_offsets[i]:self.src_offsets[i + 1]]
        tgt = None if self.tgt_ids is None else self.tgt_ids[self.tgt_offsets[i]:self.tgt_offsets[i + 1]]
        return Example(int(i), src, tgt)
