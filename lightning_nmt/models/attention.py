"""Attention: score functions behind one interface, chosen by name with `build_attention`.

Every `Attention` scores a block of decoder states (queries) against the encoder states (keys)
in one batched product: queries (B, T, Hq) for a whole teacher-forced target, or (r * B, 1, Hq)
for one decoding step of r hypotheses per sentence (beam search), which read their sentence's keys
together. Key projections are done once per sentence by `precompute_keys`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from lightning_nmt.models.base import lookup, per_hypothesis, per_sentence
from lightning_nmt.registry import register_in

ATTENTIONS: dict[str, type[Attention]] = {}
"""`model.attention` name -> its class."""

AttentionClass = TypeVar("AttentionClass", bound=type["Attention"])


def register_attention(name: str) -> Callable[[AttentionClass], AttentionClass]:
    """Class decorator: `model.attention=name` builds this class, `cls(query_size, key_size)`. A name registered
    twice is an error."""
    return register_in(ATTENTIONS, name, "attention")


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """scores (B, T, S), mask (B, S) True at real positions -> weights (B, T, S).

    Padding gets exactly 0 and the weights of each query sum to 1.
    """
    return scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(dim=-1)


class Attention(nn.Module):
    """Base class: a score function, the masked softmax and the weighted sum of the values. The decoder calls
    `forward`; a subclass changes the score (`score`, `precompute_keys`) or the whole step (`forward`, e.g. a
    sparse normalisation instead of the softmax)."""

    def precompute_keys(self, memory: Tensor) -> Tensor:
        """memory (B, S, Hk) -> keys (B, S, K) in the form `score` expects (here: unchanged)."""
        return memory

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """query (B, T, Hq), keys (B, S, K) from `precompute_keys` -> scores (B, T, S)."""
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (R, T, Hq), keys (B, S, K), values (B, S, Hv), mask (B, S) -> context (R, T, Hv),
        weights (R, T, S); R = r * B: r hypotheses per sentence, grouped by sentence."""
        rows, batch = query.size(0), keys.size(0)
        # score(h_t, h_s) against every encoder state (Luong eq. 8); the r query rows of a sentence are folded
        # into its time dimension, so that they read its keys once
        scores = self.score(per_sentence(query, batch), keys)  # (B, r * T, S)
        # a_t(s): softmax over the source positions, padding masked (Luong eq. 7, Bahdanau eq. 6)
        weights = masked_softmax(scores, mask)
        # the context c_t = sum_s a_t(s) h_s (Bahdanau eq. 5)
        return per_hypothesis(torch.bmm(weights, values), rows), per_hypothesis(weights, rows)


@register_attention("dot")
class DotAttention(Attention):
    """score(h, s) = h . s.

    If the decoder size differs from the encoder size, the query is first projected to the
    encoder size by a bias-free linear layer: score = (P h) . s.
    """

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.query_proj = (
            nn.Identity() if query_size == key_size else nn.Linear(query_size, key_size, bias=False)
        )

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(self.query_proj(query), keys.transpose(1, 2))


@register_attention("scaled_dot")
class ScaledDotAttention(DotAttention):
    """score(h, s) = h . s / sqrt(d), d the encoder size (query projected as in `DotAttention`)."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__(query_size, key_size)
        self.scale = 1.0 / math.sqrt(key_size)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return super().score(query, keys) * self.scale


@register_attention("general")
class GeneralAttention(Attention):
    """score(h, s) = h^T W s (Luong "general"); W s is computed once per sentence."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(key_size, query_size, bias=False)

    def precompute_keys(self, memory: Tensor) -> Tensor:
        """memory (B, S, Hk) -> W s (B, S, Hq)."""
        return self.key_proj(memory)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


@register_attention("concat")
class ConcatAttention(Attention):
    """score(h, s) = v^T tanh(W [h; s]) (Bahdanau, additive), computed as v^T tanh(W_q h + W_k s)
    with W = [W_q W_k], so that W_k s is computed once per sentence. The hidden size is Hq."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_size, query_size, bias=False)
        self.key_proj = nn.Linear(key_size, query_size, bias=False)
        self.v = nn.Linear(query_size, 1, bias=False)

    def precompute_keys(self, memory: Tensor) -> Tensor:
        """memory (B, S, Hk) -> W_k s (B, S, Hq)."""
        return self.key_proj(memory)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, Hq)
        return self.v(hidden).squeeze(-1)


def attention_class(name: str) -> type[Attention]:
    """The class registered as `name`; ValueError listing the registered names otherwise."""
    return lookup(ATTENTIONS, name, "model.attention")


def build_attention(name: str, query_size: int, key_size: int) -> Attention:
    """The attention `name` (see `attention_class`) for decoder size `query_size` and encoder size `key_size`."""
    return attention_class(name)(query_size, key_size)
