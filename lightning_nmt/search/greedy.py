"""Greedy search: at every step each sentence takes its most probable token. The loop (`choose_each_step`) is also
sampling's, with another choice of token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_nmt.models.base import EncoderOutput, Seq2Seq
from lightning_nmt.search.base import (
    DecodingConfig,
    Finished,
    Prefixes,
    SearchOptions,
    SearchResult,
    TopK,
    length_penalty,
    max_lengths,
    min_lengths,
    register_search,
    step_log_probs,
)
from lightning_nmt.tokens import BOS_ID, EOS_ID

Choose = Callable[[Tensor, Tensor, int], Tensor]
"""log_probs (N, V) of the active rows, the rows' indices (N,) in the batch, the step t -> the tokens (N,) chosen."""


def most_probable(log_probs: Tensor, rows: Tensor, step: int) -> Tensor:
    """The greedy choice: each row's most probable token."""
    return log_probs.argmax(dim=-1)


def choose_each_step(model: Seq2Seq, enc: EncoderOutput, src_lengths: Tensor, decoding: DecodingConfig,
                     choose: Choose) -> Finished:
    """One hypothesis per row of `enc` (src_lengths (B,) its sources' lengths), token by token as `choose` picks;
    a row leaves the batch when it ends. Returns the finished hypotheses (one slot per row)."""
    batch, device = len(src_lengths), src_lengths.device
    state = model.init_state(enc)
    max_len = max_lengths(src_lengths, decoding.max_len_ratio, decoding.max_len_offset)
    min_len = min_lengths(src_lengths, decoding.min_len_ratio, max_len)
    finished = Finished(batch, 1, int(max_len.max()), device)
    active = torch.arange(batch, device=device)
    tokens = torch.full((batch,), BOS_ID, device=device)
    prefixes = Prefixes(torch.empty(batch, 0, dtype=torch.long, device=device))
    scores = torch.zeros(batch, dtype=torch.float32, device=device)
    for t in range(finished.tokens.size(2)):
        log_probs, state, weights = step_log_probs(model, tokens, enc, state, prefixes.tokens,
                                                   max_len[active] == t + 1, min_len[active] > t + 1, decoding)
        tokens = choose(log_probs, active, t)
        scores = scores + log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        ended = tokens == EOS_ID
        done = ended.nonzero().squeeze(1)
        finished.add(active[done], prefixes.grow(done, tokens[done], weights),
                     scores[done] / length_penalty(t + 1, decoding.length_penalty))
        keep = (~ended).nonzero().squeeze(1)
        if len(keep) == 0:
            break
        prefixes, tokens, scores = prefixes.grow(keep, tokens[keep], weights), tokens[keep], scores[keep]
        if len(keep) < len(active):
            active, enc, state = active[keep], enc.index_select(keep), model.reorder(state, keep)
    return finished


def greedy(model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig) -> SearchResult:
    """Greedy decoding of src (B, S), src_lengths (B,)."""
    enc = model.encode(src, src_lengths)
    return choose_each_step(model, enc, src_lengths, decoding, most_probable).result(1, src_lengths)


@register_search("greedy")
@dataclass(frozen=True)
class GreedyOptions(SearchOptions):
    """`strategy=greedy`: the most probable token at each step (as `strategy=beam beam_size=1`)."""

    def max_nbest(self, decoding: DecodingConfig) -> int:
        return 1

    def run(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig,
            topk: TopK) -> SearchResult:
        return greedy(model, src, src_lengths, decoding)
