"""Bounded inputs at inference: a source longer than `max_input_len` pieces is cut into its sentences (at
sentence punctuation), and a sentence still too long at the limit; the segments are translated like any
sentence and their translations joined back into one. Time and memory then grow linearly with the input's length (one
segment's search is bounded), instead of the quadratic growth, and beyond, of one search over everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_nmt.search.base import SearchResult
from lightning_nmt.tokens import EOS_ID, PAD_ID

SENTENCE_END = (".", "!", "?", ";", ":", "…", "。", "！", "？")


def boundary_ids(pieces: Sequence[str]) -> frozenset[int]:
    """The ids of the pieces (index = id) a sentence can end with: those ending in sentence punctuation."""
    return frozenset(i for i, piece in enumerate(pieces) if piece.endswith(SENTENCE_END))


def cut_points(ids: Sequence[int], limit: int, boundaries: frozenset[int]) -> list[int]:
    """Where to cut `ids` into segments: the end index of each. One segment per sentence (ending after a
    boundary piece), as the model was trained on sentences; a sentence longer than `limit` is cut every
    `limit` ids."""
    ends, start = [], 0
    for i, token in enumerate(ids):
        if token in boundaries or i + 1 == len(ids):
            while i + 1 - start > limit:
                start += limit
                ends.append(start)
            ends.append(i + 1)
            start = i + 1
    return ends


def split_rows(src: Tensor, src_lengths: Tensor, max_input_len: int,
               boundaries: frozenset[int]) -> tuple[Tensor, Tensor, list[list[tuple[int, int]]]]:
    """src (B, S) (ids + EOS, right-padded) -> segment rows (N, S') with lengths (N,), and for each input row
    its segments as (segment row, first source position) pairs; every segment is <= max_input_len with EOS."""
    rows: list[list[int]] = []
    owners: list[list[tuple[int, int]]] = []
    for row, length in zip(src.tolist(), src_lengths.tolist(), strict=True):
        ids, start, own = row[: length - 1], 0, []  # without EOS
        ends = cut_points(ids, max(1, max_input_len - 1), boundaries) if length > max_input_len else [len(ids)]
        for end in ends:
            own.append((len(rows), start))
            rows.append([*ids[start:end], EOS_ID])
            start = end
        owners.append(own)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    padded = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = torch.tensor(r)
    return padded.to(src.device), lengths.to(src.device), owners


def join(result: SearchResult, owners: list[list[tuple[int, int]]], src_lengths: Tensor) -> SearchResult:
    """The segments' hypotheses of `result` joined back into one per input row (k-th best with k-th best);
    score: the mean of the segments'; attention: each segment's block at its source positions (EOS columns
    go to the row's EOS), one row per output token plus one for the final EOS."""
    tokens = [[sum((result.tokens[seg][k] for seg, _ in own), []) for k in range(len(result.tokens[own[0][0]]))]
              for own in owners]
    scores = torch.stack([result.scores[[seg for seg, _ in own]].mean(0) for own in owners])
    attention = None
    if result.attention is not None:
        attention = [[_join_attention([result.attention[seg][k] for seg, _ in own], [s for _, s in own], n_src)
                      for k in range(len(tokens[i]))]
                     for i, (own, n_src) in enumerate(zip(owners, src_lengths.tolist(), strict=True))]
    return SearchResult(tokens, scores, attention)


def _join_attention(blocks: list[Tensor], starts: list[int], n_src: int) -> Tensor:
    """Segment weights (T_j + 1, S_j + 1) -> (sum T_j + 1, n_src); a segment's own EOS row is dropped but
    the last."""
    blocks = [b[:-1] for b in blocks[:-1]] + blocks[-1:]
    out = blocks[0].new_zeros(sum(b.size(0) for b in blocks), n_src)
    row = 0
    for block, start in zip(blocks, starts, strict=True):
        width = block.size(1) - 1
        out[row : row + block.size(0), start : start + width] = block[:, :-1]
        out[row : row + block.size(0), n_src - 1] = block[:, -1]
        row += block.size(0)
    return out


def bounded(search: Callable[[Tensor, Tensor], SearchResult], src: Tensor, src_lengths: Tensor,
            max_input_len: int | None, boundaries: frozenset[int]) -> SearchResult:
    """`search(src, src_lengths)` with every row longer than `max_input_len` translated in segments."""
    if max_input_len is None or int(src_lengths.max()) <= max_input_len:
        return search(src, src_lengths)
    segments, lengths, owners = split_rows(src, src_lengths, max_input_len, boundaries)
    return join(search(segments, lengths), owners, src_lengths)
