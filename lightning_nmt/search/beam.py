"""Beam search, batched over sentences and beams, as fairseq: every step takes the 2k best extensions of the k live
hypotheses of a sentence; those ending in EOS among the best k are finished, the best k others live on. A sentence
is done when k hypotheses are finished (`beam_stop=k_finished`), or, with `beam_stop=best_finished` (OpenNMT-py),
as soon as its best candidate of a step ends in EOS; in any case at its maximum length. Its nbest best finished
hypotheses are returned. The encoder runs once (attention keys are projected there), and a finished sentence
leaves the batch; the encoder output keeps one row per sentence, whose k hypotheses are consecutive rows and read
it together (`Seq2Seq.decode_step`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from lightning_nmt.models.base import Seq2Seq
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
    row_topk,
    step_log_probs,
)
from lightning_nmt.search.greedy import greedy
from lightning_nmt.tokens import BOS_ID, EOS_ID


class BeamStop(str, Enum):
    k_finished = "k_finished"  # a sentence is done when beam_size hypotheses have ended (fairseq)
    best_finished = "best_finished"  # ... when its best candidate of a step ends (OpenNMT-py): fewer steps


def beam_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig,
                beam_stop: BeamStop = BeamStop.k_finished, topk: TopK = row_topk) -> SearchResult:
    """Beam search of src (B, S), src_lengths (B,) over all B x beam_size hypotheses at once. `topk` finds each
    row's best extensions."""
    batch, k = src.size(0), decoding.beam_size
    device = src.device
    enc = model.encode(src, src_lengths)
    state = model.init_state(enc)
    max_len = max_lengths(src_lengths, decoding.max_len_ratio, decoding.max_len_offset)
    min_len = min_lengths(src_lengths, decoding.min_len_ratio, max_len)
    finished = Finished(batch, 2 * k, int(max_len.max()), device)
    active = torch.arange(batch, device=device)
    # rows are (sentence, hypothesis), `width` hypotheses per sentence: one at the first step (the k beams
    # would all be the same), then k
    width = 1
    beam_scores = torch.zeros(batch, width, dtype=torch.float32, device=device)
    tokens = torch.full((batch,), BOS_ID, device=device)
    prefixes = Prefixes(src.new_empty(batch, 0))
    for t in range(finished.tokens.size(2)):
        n = len(active)
        last = max_len[active] == t + 1
        short = (min_len[active] > t + 1).repeat_interleave(width)
        log_probs, state, weights = step_log_probs(model, tokens, enc, state, prefixes.tokens,
                                                   last.repeat_interleave(width), short, decoding)
        # the 2k best of each row first, then the 2k best of the sentence's width x 2k: the same candidates as
        # one top-k over (n, width * V)
        row_scores, row_words = topk(log_probs, 2 * k)  # (n * width, 2k)
        candidates = (beam_scores.view(-1, 1) + row_scores).view(n, width * 2 * k)
        top_scores, top = candidates.topk(2 * k, dim=1)
        rows = top // (2 * k) + torch.arange(0, n * width, width, device=device).unsqueeze(1)  # (n, 2k) extended
        words = row_words.view(n, width * 2 * k).gather(1, top)
        is_eos = words == EOS_ID
        # the best k candidates that end with EOS are finished hypotheses
        sent, cand = (is_eos[:, :k] & top_scores[:, :k].isfinite()).nonzero(as_tuple=True)
        ended = rows[sent, cand]
        finished.add(active[sent], prefixes.grow(ended, words[sent, cand], weights),
                     top_scores[sent, cand] / length_penalty(t + 1, decoding.length_penalty))
        # the best k others live on
        beam_scores, pick = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)
        done = (finished.count[active] >= k) | last
        if beam_stop == BeamStop.best_finished:
            done |= is_eos[:, 0] & top_scores[:, 0].isfinite()
        keep = (~done).nonzero().squeeze(1)
        if len(keep) == 0:
            break
        rows, tokens, beam_scores = (
            rows.gather(1, pick)[keep].view(-1),
            words.gather(1, pick)[keep].view(-1),
            beam_scores[keep],
        )
        prefixes, state, width = prefixes.grow(rows, tokens, weights), model.reorder(state, rows), k
        if len(keep) < n:  # the k rows of a sentence share its encoder output (one row per sentence)
            active, enc = active[keep], enc.index_select(keep)
    return finished.result(decoding.nbest, src_lengths)


@register_search("beam")
@dataclass(frozen=True)
class BeamOptions(SearchOptions):
    """`strategy=beam` (the default): beam search with `beam_size` beams; `beam_size=1` is greedy."""

    beam_stop: BeamStop = BeamStop.k_finished

    def check(self, decoding: DecodingConfig) -> None:
        if self.beam_stop not in set(BeamStop):
            raise ValueError(f"unknown decoding.beam_stop {self.beam_stop!r}; valid values: {', '.join(BeamStop)}")

    def run(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig,
            topk: TopK) -> SearchResult:
        if decoding.beam_size == 1:
            return greedy(model, src, src_lengths, decoding)
        return beam_search(model, src, src_lengths, decoding, BeamStop(self.beam_stop), topk)
