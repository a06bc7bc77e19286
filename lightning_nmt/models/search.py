"""Greedy and beam search for every `Seq2Seq`, batched over sentences and beams.

Both run the encoder once (attention keys are projected there), loop over time steps only, and drop
a sentence from the active batch as soon as it is finished. The encoder output keeps one row per
sentence: the hypotheses of a sentence are consecutive rows and read it together (`Seq2Seq.decode_step`).

Rules shared by both:
- at most ceil(src_len * max_len_ratio) + max_len_offset output tokens (EOS included) per sentence;
  at the last allowed step EOS is forced, so every hypothesis ends with EOS;
- at least min(ceil(src_len * min_len_ratio), maximum) tokens: EOS is impossible before;
- PAD and BOS are never produced;
- score = sum of the token log-probabilities (EOS included) / ((5 + len) / 6) ** length_penalty
  (GNMT length penalty; len counts EOS; length_penalty=0 gives the plain sum).

Beam search follows fairseq: every step takes the 2k best extensions of the k live hypotheses of a
sentence; those ending in EOS among the best k are finished, the best k others live on. A sentence
is done when k hypotheses are finished (`beam_stop="k_finished"`), or, with `beam_stop="best_finished"`
(OpenNMT-py), as soon as its best candidate of a step ends in EOS; in any case at its maximum length.
Its nbest best finished hypotheses are returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from lightning_nmt.models.base import DecoderState, EncoderOutput, Seq2Seq
from lightning_nmt.tokens import BOS_ID, EOS_ID, PAD_ID

TopK = Callable[[Tensor, int], tuple[Tensor, Tensor]]
"""x (R, V), k -> the k largest values of each row and their columns, (R, k) each, largest first."""


def row_topk(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`torch.topk` over each row of x (R, V): the `TopK` beam search uses unless given another."""
    return x.topk(k, dim=1)


class BeamStop(str, Enum):
    k_finished = "k_finished"  # a sentence is done when beam_size hypotheses have ended (fairseq)
    best_finished = "best_finished"  # ... when its best candidate of a step ends (OpenNMT-py): fewer steps


@dataclass
class DecodingConfig:
    """How to decode: the `decoding:` config group, passed as one object from the module to the search."""

    beam_size: int = 5  # test / eval / translate; 1 is greedy
    val_beam_size: int = 1  # validation during training (greedy is fast)
    length_penalty: float = 1.0  # GNMT alpha; 0: the plain sum of log-probabilities
    max_len_ratio: float = 1.5  # at most ceil(src_len * ratio) + offset output tokens, EOS included
    max_len_offset: int = 5
    min_len_ratio: float = 0.0  # EOS not before ceil(src_len * min_len_ratio) output tokens (capped at the maximum)
    beam_stop: BeamStop = BeamStop.k_finished
    max_input_len: int | None = None  # longer sources are translated in segments; None: the training data.max_len

    def check(self) -> None:
        """ValueError naming the `decoding.*` key of a value no search can use."""
        for key in ("beam_size", "val_beam_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"decoding.{key} must be at least 1 (1 is greedy), got {getattr(self, key)}")
        for key in ("max_len_ratio", "max_len_offset", "min_len_ratio"):
            if getattr(self, key) < 0:
                raise ValueError(f"decoding.{key} must not be negative, got {getattr(self, key)}")
        if self.max_len_ratio == 0 and self.max_len_offset == 0:
            raise ValueError("decoding.max_len_ratio and decoding.max_len_offset are both 0: no output token fits")
        if self.max_input_len is not None and self.max_input_len < 1:
            raise ValueError(f"decoding.max_input_len must be at least 1 (or null), got {self.max_input_len}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecodingConfig:
        """From a config or checkpoint dict; keys of older versions are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class SearchResult:
    """tokens: [batch][nbest] ids without BOS/EOS/PAD, best first.
    scores: (B, nbest) length-normalised log-probabilities, best first (on the model's device).
    attention: [batch][nbest] weights (T_out, S_real) on the CPU, one row per output token and one
    for EOS (T_out = len(tokens) + 1), one column per real source token; None if the model has none.
    """

    tokens: list[list[list[int]]]
    scores: Tensor
    attention: list[list[Tensor]] | None


@dataclass
class _Prefixes:
    """The output so far of each row: tokens (R, t) (BOS excluded), attention (R, t, S) or None."""

    tokens: Tensor
    attention: Tensor | None = None

    def grow(self, rows: Tensor, words: Tensor, weights: Tensor | None) -> _Prefixes:
        """Prefixes `rows` (N,) extended by words (N,) and the rows' weights of this step (R, S)."""
        tokens = torch.cat([self.tokens[rows], words.unsqueeze(1)], dim=1)
        if weights is None:
            return _Prefixes(tokens)
        attention = weights[rows].float().unsqueeze(1)  # fp32 whatever the model computes in
        if self.attention is not None:
            attention = torch.cat([self.attention[rows], attention], dim=1)
        return _Prefixes(tokens, attention)


class _Finished:
    """Finished hypotheses of every sentence, `slots` per sentence, up to `max_len` tokens."""

    def __init__(self, batch: int, slots: int, max_len: int, device: torch.device) -> None:
        self.tokens = torch.full((batch, slots, max_len), PAD_ID, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch, slots, dtype=torch.long, device=device)
        self.scores = torch.full((batch, slots), float("-inf"), dtype=torch.float32, device=device)
        self.attention: Tensor | None = None
        self.count = torch.zeros(batch, dtype=torch.long, device=device)

    def add(self, sentences: Tensor, hyps: _Prefixes, scores: Tensor) -> None:
        """Store hypotheses hyps (N, t) with scores (N,) of sentences (N,), sorted ascending."""
        rank = torch.arange(len(sentences), device=sentences.device) - torch.searchsorted(
            sentences, sentences
        )
        slot = self.count[sentences] + rank
        length = hyps.tokens.size(1)
        self.tokens[sentences, slot, :length] = hyps.tokens
        self.lengths[sentences, slot] = length
        self.scores[sentences, slot] = scores
        if hyps.attention is not None:
            if self.attention is None:
                self.attention = hyps.attention.new_zeros(*self.tokens.shape, hyps.attention.size(2))
            self.attention[sentences, slot, :length] = hyps.attention
        self.count.index_add_(0, sentences, torch.ones_like(sentences))

    def result(self, nbest: int, src_lengths: Tensor) -> SearchResult:
        """The nbest best hypotheses of every sentence."""
        scores, best = self.scores.topk(nbest, dim=1)
        rows = torch.arange(len(best), device=best.device).unsqueeze(1)
        lengths = self.lengths[rows, best].tolist()
        tokens = [
            [hyp[: n - 1] for hyp, n in zip(hyps, lens, strict=True)]
            for hyps, lens in zip(self.tokens[rows, best].tolist(), lengths, strict=True)
        ]
        if self.attention is None:
            return SearchResult(tokens, scores, None)
        attention = self.attention[rows, best].cpu()
        return SearchResult(
            tokens,
            scores,
            [
                [att[:n, :src_len] for att, n in zip(atts, lens, strict=True)]
                for atts, lens, src_len in zip(attention, lengths, src_lengths.tolist(), strict=True)
            ],
        )


def _max_lengths(src_lengths: Tensor, ratio: float, offset: int) -> Tensor:
    """Maximum output length (EOS included) of each sentence: ceil(src_len * ratio) + offset, (B,)."""
    return torch.ceil(src_lengths.float() * ratio).long() + offset


def _min_lengths(src_lengths: Tensor, ratio: float, max_len: Tensor) -> Tensor:
    """Minimum output length (EOS included) of each sentence: ceil(src_len * ratio), at most max_len, (B,)."""
    return torch.minimum(_max_lengths(src_lengths, ratio, 0), max_len)


def _penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5 + length) / 6) ** alpha


def _log_probs(
    model: Seq2Seq, tokens: Tensor, enc: EncoderOutput, state: DecoderState, last: Tensor, short: Tensor
) -> tuple[Tensor, DecoderState, Tensor | None]:
    """One decoder step: tokens (R,) -> log-probabilities (R, V) (PAD and BOS impossible, only EOS
    where `last` (R,) is True, no EOS where `short` (R,) is True), new state, attention weights (R, S) or None."""
    logits, state, weights = model.decode_step(tokens, enc, state)
    log_probs = logits.float().log_softmax(dim=-1)
    log_probs[:, [PAD_ID, BOS_ID]] = float("-inf")
    if bool(short.any()):
        log_probs[short, EOS_ID] = float("-inf")
    if bool(last.any()):  # rows at their length limit may only end (most steps have none: (R, V) untouched)
        eos = log_probs[last, EOS_ID]
        log_probs[last] = float("-inf")
        log_probs[last, EOS_ID] = eos
    return log_probs, state, weights


@torch.no_grad()
def greedy(model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig) -> SearchResult:
    """Greedy decoding of src (B, S), src_lengths (B,); the model should be in eval mode."""
    batch = src.size(0)
    enc = model.encode(src, src_lengths)
    state = model.init_state(enc)
    max_len = _max_lengths(src_lengths, decoding.max_len_ratio, decoding.max_len_offset)
    min_len = _min_lengths(src_lengths, decoding.min_len_ratio, max_len)
    finished = _Finished(batch, 1, int(max_len.max()), src.device)
    active = torch.arange(batch, device=src.device)
    tokens = torch.full((batch,), BOS_ID, device=src.device)
    prefixes = _Prefixes(src.new_empty(batch, 0))
    scores = torch.zeros(batch, dtype=torch.float32, device=src.device)
    for t in range(finished.tokens.size(2)):
        log_probs, state, weights = _log_probs(
            model, tokens, enc, state, max_len[active] == t + 1, min_len[active] > t + 1
        )
        step_scores, tokens = log_probs.max(dim=-1)
        scores = scores + step_scores
        ended = tokens == EOS_ID
        done = ended.nonzero().squeeze(1)
        finished.add(
            active[done],
            prefixes.grow(done, tokens[done], weights),
            scores[done] / _penalty(t + 1, decoding.length_penalty),
        )
        keep = (~ended).nonzero().squeeze(1)
        if len(keep) == 0:
            break
        prefixes, tokens, scores = prefixes.grow(keep, tokens[keep], weights), tokens[keep], scores[keep]
        if len(keep) < len(active):
            active, enc, state = active[keep], enc.index_select(keep), model.reorder(state, keep)
    return finished.result(1, src_lengths)


@torch.no_grad()
def beam_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig,
                nbest: int = 1, topk: TopK = row_topk) -> SearchResult:
    """Beam search of src (B, S), src_lengths (B,) over all B x beam_size hypotheses at once; the
    model should be in eval mode. `topk` finds each row's best extensions."""
    batch, k = src.size(0), decoding.beam_size
    device = src.device
    enc = model.encode(src, src_lengths)
    state = model.init_state(enc)
    max_len = _max_lengths(src_lengths, decoding.max_len_ratio, decoding.max_len_offset)
    min_len = _min_lengths(src_lengths, decoding.min_len_ratio, max_len)
    finished = _Finished(batch, 2 * k, int(max_len.max()), device)
    active = torch.arange(batch, device=device)
    # rows are (sentence, hypothesis), `width` hypotheses per sentence: one at the first step (the k beams
    # would all be the same), then k
    width = 1
    beam_scores = torch.zeros(batch, width, dtype=torch.float32, device=device)
    tokens = torch.full((batch,), BOS_ID, device=device)
    prefixes = _Prefixes(src.new_empty(batch, 0))
    for t in range(finished.tokens.size(2)):
        n = len(active)
        last = max_len[active] == t + 1
        short = (min_len[active] > t + 1).repeat_interleave(width)
        log_probs, state, weights = _log_probs(model, tokens, enc, state, last.repeat_interleave(width), short)
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
        finished.add(
            active[sent],
            prefixes.grow(ended, words[sent, cand], weights),
            top_scores[sent, cand] / _penalty(t + 1, decoding.length_penalty),
        )
        # the best k others live on
        beam_scores, pick = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)
        done = (finished.count[active] >= k) | last
        if decoding.beam_stop == BeamStop.best_finished:
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
    return finished.result(nbest, src_lengths)


def search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig | None = None,
           nbest: int = 1, topk: TopK | None = None, **overrides: Any) -> SearchResult:
    """Translate src (B, S) with src_lengths (B,) as `decoding` says (`DecodingConfig()` by default; keyword
    `overrides` replace its fields, e.g. `beam_size=1`): greedy if beam_size == 1, else beam search, whose
    per-row top-k is `topk` (None: `torch.topk`).

    Returns the nbest (<= beam_size) best hypotheses of each sentence (see the module docstring for
    the rules). Call with the model in eval mode.
    """
    decoding = replace(decoding or DecodingConfig(), **overrides)
    if not 1 <= nbest <= decoding.beam_size:
        raise ValueError(f"need 1 <= nbest <= beam_size, got nbest={nbest}, beam_size={decoding.beam_size}")
    if decoding.beam_stop not in set(BeamStop):
        raise ValueError(f"unknown beam_stop {decoding.beam_stop!r}; valid values: {', '.join(BeamStop)}")
    if decoding.beam_size == 1:
        return greedy(model, src, src_lengths, decoding)
    return beam_search(model, src, src_lengths, decoding, nbest, topk or row_topk)
