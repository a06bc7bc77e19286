"""Sampling: each token is drawn from the model's distribution, sharpened or flattened by `temperature` and
truncated to the `top_k` most probable tokens, then to the smallest set of those whose renormalised probability
reaches `top_p` (nucleus, Holtzman et al.; the token that reaches it is kept), and to the tokens of probability at
least `epsilon` (Hewitt et al., on the temperature-scaled distribution); the most probable token is always kept, and
the kept tokens are renormalised. Top-k, temperature and top-p are CTranslate2's rules; it has no epsilon.

`nbest=n` gives n distinct draws of each sentence, best score first; a sentence gets fewer when `ROUNDS` rounds of
n draws hold fewer distinct ones (a peaked distribution). A hypothesis's score is that of every strategy (the log-
probabilities of the model with the penalties, not the temperature's or the truncation's).

Each draw has its own random numbers, seeded from `decoding.seed`, the sentence's source tokens and the draw's
number (None: a seed drawn from torch's global generator once per call). So a fixed seed gives a sentence the same
translations whatever else is in its batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_nmt.models.base import Seq2Seq
from lightning_nmt.search.base import (
    DecodingConfig,
    SearchOptions,
    SearchResult,
    TopK,
    max_lengths,
    register_search,
)
from lightning_nmt.search.greedy import choose_each_step

ROUNDS = 4
"""Rounds of nbest draws per sentence at most, to find nbest distinct ones."""


@register_search("sampling")
@dataclass(frozen=True)
class SamplingOptions(SearchOptions):
    """`strategy=sampling`: random draws from the (truncated) distribution, see the module docstring."""

    temperature: float = 1.0  # < 1 sharpens, > 1 flattens
    top_k: int = 0  # draw among the k most probable tokens; 0: all
    top_p: float = 1.0  # ... among the smallest set of probability >= top_p; 1: all
    epsilon: float = 0.0  # ... among the tokens of probability >= epsilon; 0: all

    def check(self, decoding: DecodingConfig) -> None:
        rules = [("temperature", self.temperature > 0, "must be positive"),
                 ("top_k", self.top_k >= 0, "must not be negative (0: no top-k)"),
                 ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
                 ("epsilon", 0 <= self.epsilon < 1, "must be in [0, 1)")]
        for key, ok, rule in rules:
            if not ok:
                raise ValueError(f"decoding.{key} {rule}, got {getattr(self, key)}")

    def max_nbest(self, decoding: DecodingConfig) -> None:
        return None

    def keep(self, probs: Tensor) -> Tensor:
        """probs (R, V) sorted in decreasing order -> the tokens that may be drawn, bool (R, V)."""
        keep = torch.ones_like(probs, dtype=torch.bool)
        if self.top_k:
            keep[:, self.top_k:] = False
        if self.top_p < 1:
            within = probs * keep
            within = within / within.sum(dim=1, keepdim=True)  # the top-k renormalised
            keep &= (within.cumsum(dim=1) - within) < self.top_p  # up to the token that reaches top_p
        if self.epsilon:
            keep &= probs >= self.epsilon
        keep[:, 0] = True
        return keep

    def draw(self, log_probs: Tensor, u: Tensor) -> Tensor:
        """One token per row of log_probs (R, V) by inverse transform sampling with the uniform numbers u (R,).
        Only the nucleus needs the tokens sorted by probability (the `top_k` best, or all); otherwise the
        cumulative sum runs in vocabulary order, with the top-k and epsilon masks (performance: no sort over V)."""
        scaled = (log_probs / self.temperature).log_softmax(dim=1)
        if self.top_k == 1:
            return scaled.argmax(dim=1)  # the greedy choice, exactly
        if self.top_p < 1:
            top, order = (scaled.topk(self.top_k, dim=1) if self.top_k
                          else scaled.sort(dim=1, descending=True, stable=True))
            probs = top.exp()
            probs = probs * self.keep(probs)
        else:
            probs, order = scaled.exp(), None
            keep = probs >= self.epsilon
            if self.top_k:
                keep &= torch.zeros_like(keep).scatter_(1, scaled.topk(self.top_k, dim=1).indices, True)
            keep.scatter_(1, scaled.argmax(dim=1, keepdim=True), True)
            probs = probs * keep
        cdf = probs.cumsum(dim=1)
        picked = torch.searchsorted(cdf, u.unsqueeze(1) * cdf[:, -1:], right=True).clamp(max=cdf.size(1) - 1)
        return picked.squeeze(1) if order is None else order.gather(1, picked).squeeze(1)

    def run(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig,
            topk: TopK) -> SearchResult:
        n = decoding.nbest
        enc = model.encode(src, src_lengths)
        seeds = sentence_seeds(src, src_lengths, decoding.seed)
        max_len = max_lengths(src_lengths, decoding.max_len_ratio, decoding.max_len_offset)
        found: list[dict[tuple[int, ...], tuple[float, Tensor | None]]] = [{} for _ in seeds]
        for round_ in range(ROUNDS):
            needy = [i for i, draws in enumerate(found) if len(draws) < n]
            if not needy:
                break
            sentences = torch.tensor(needy, device=src.device).repeat_interleave(n)  # (R,) n draws each
            draws = [round_ * n + j for _ in needy for j in range(n)]
            uniforms = torch.stack([  # (R, longest) the draw's random numbers, one per step
                torch.rand(int(max_len.max()), generator=torch.Generator().manual_seed(_seed(seeds[i], d)))
                for i, d in zip(sentences.tolist(), draws, strict=True)]).to(src.device)

            def sample(log_probs: Tensor, rows: Tensor, step: int, uniforms: Tensor = uniforms) -> Tensor:
                return self.draw(log_probs, uniforms[rows, step])

            lengths = src_lengths[sentences]
            result = choose_each_step(model, enc.index_select(sentences), lengths, decoding, sample).result(1, lengths)
            for row, i in enumerate(sentences.tolist()):
                key = tuple(result.tokens[row][0])
                if key not in found[i] and len(found[i]) < n:
                    attention = None if result.attention is None else result.attention[row][0]
                    found[i][key] = (float(result.scores[row, 0]), attention)
        return _best_first(found, n, src.device)


def sentence_seeds(src: Tensor, src_lengths: Tensor, seed: int | None) -> list[int]:
    """One seed per sentence of src (B, S) from `seed` (None: drawn from torch's global generator) and its tokens."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    rows = [ids[:n] for ids, n in zip(src.tolist(), src_lengths.tolist(), strict=True)]
    return [_seed(seed, *ids) for ids in rows]


def _seed(*numbers: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    digest = hashlib.blake2b(",".join(map(str, numbers)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _best_first(found: list[dict[tuple[int, ...], tuple[float, Tensor | None]]], n: int,
                device: torch.device) -> SearchResult:
    """The distinct draws of every sentence, best score first, as a SearchResult (scores -inf where fewer than n)."""
    scores = torch.full((len(found), n), float("-inf"), device=device)
    tokens: list[list[list[int]]] = []
    attention: list[list[Tensor]] | None = []
    for i, draws in enumerate(found):
        ranked = sorted(draws.items(), key=lambda item: -item[1][0])
        tokens.append([list(key) for key, _ in ranked])
        scores[i, : len(ranked)] = torch.tensor([score for _, (score, _) in ranked])
        if attention is not None and ranked and ranked[0][1][1] is None:
            attention = None
        if attention is not None:
            attention.append([weights for _, (_, weights) in ranked])
    return SearchResult(tokens, scores, attention)
