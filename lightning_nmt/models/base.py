"""The interface every model implements (`Seq2Seq`), the encoder output it passes around, and small
helpers shared by the model modules."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lightning_nmt.registry import register_in

T = TypeVar("T")
DecoderState = Any
"""Model-specific decoding state (tensors with a batch dimension); only the model interprets it."""


def lookup(table: Mapping[str, T], name: str | Enum, what: str) -> T:
    """`table[name]` (an Enum counts by its value), or a ValueError naming `what` and listing the
    valid names."""
    name = name.value if isinstance(name, Enum) else name
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid values: {', '.join(table)}")
    return table[name]


def cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast casts fp32 matmul operands to, or None when it is off."""
    try:
        enabled, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return dtype if enabled else None


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """lengths (B,) -> bool mask (B, max_len), True at the first `lengths[b]` positions."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


def per_sentence(query: Tensor, batch: int) -> Tensor:
    """query (B * r, T, D), r hypotheses per sentence grouped by sentence -> (B, r * T, D).

    In beam search the r hypotheses of a sentence attend to the same encoder states: folded into the
    time dimension they read them in one (r * T)-row product per sentence, instead of r copies of the
    encoder states.
    """
    return query.reshape(batch, -1, query.size(-1))


def per_hypothesis(x: Tensor, rows: int) -> Tensor:
    """The inverse of `per_sentence`: x (B, r * T, D) -> (rows = B * r, T, D)."""
    return x.reshape(rows, -1, x.size(-1))


def output_layer(hidden_size: int, vocab_size: int, tied: nn.Embedding | None) -> nn.Module:
    """The output layer: features (..., hidden_size) -> logits (..., vocab_size).

    With `tied`, its weight is the embedding matrix, re-initialised N(0, 1/embedding_dim) so that the
    initial logits have unit scale (`nn.Embedding`'s N(0, 1) would give them a standard deviation of
    sqrt(embedding_dim), an initial loss far above ln V); if the embedding size differs from
    `hidden_size`, a bias-free linear layer first projects the features to the embedding size.
    """
    if tied is None:
        return nn.Linear(hidden_size, vocab_size)
    with torch.no_grad():
        tied.weight.normal_(0.0, tied.embedding_dim**-0.5)
        if tied.padding_idx is not None:
            tied.weight[tied.padding_idx].zero_()
    out = nn.Linear(tied.embedding_dim, vocab_size)
    out.weight = tied.weight
    if hidden_size == tied.embedding_dim:
        return out
    return nn.Sequential(nn.Linear(hidden_size, tied.embedding_dim, bias=False), out)


@dataclass
class ModelOptions(ABC):
    """What one model type reads from the `model:` config group: subclasses declare the fields (names and
    types; the values live in `conf/model/<type>.yaml`) and `build`, and register with `register_model`.
    The config schema, the enum of model types and the keys a sweep compares are derived from the registry."""

    @abstractmethod
    def build(self, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
        """The model, untrained."""

    def check(self) -> None:
        """ValueError naming the `model.*` key of a value no model can be built from: every integer option
        (a size, a number of layers or heads) must be positive and every `*dropout` in [0, 1). Subclasses add
        their own rules."""
        for option in fields(self):
            value = getattr(self, option.name)
            if option.type in (int, "int") and value < 1:
                raise ValueError(f"model.{option.name} must be a positive integer, got {value}")
            if option.name.endswith("dropout") and value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"model.{option.name} must be in [0, 1), got {value}")


MODEL_TYPES: dict[str, type[ModelOptions]] = {}
"""Model type name (`model.type`) -> its options."""

Options = TypeVar("Options", bound=type[ModelOptions])


def register_model(name: str) -> Callable[[Options], Options]:
    """Class decorator: `model.type=name` builds models from these options. A name registered twice is an error."""
    return register_in(MODEL_TYPES, name, "model type")


@dataclass
class EncoderOutput:
    """What the encoder hands to the decoder; every field has the batch on dim 0.

    memory: (B, S, H) encoder states.
    mask: (B, S) bool, True at real source positions.
    final: (B, H) summary of the source (RNN final states of the last layer, both directions), or None.
    keys: (B, S, K) attention keys projected once per sentence (recurrent attention), or None.
    cross_kv: (B, L, 2, S, D) the keys and values of the source for each of L decoder layers' cross-attention,
        projected once per sentence (Transformer decoding), or None.
    """

    memory: Tensor
    mask: Tensor
    final: Tensor | None = None
    keys: Tensor | None = None
    cross_kv: Tensor | None = None

    def index_select(self, index: Tensor) -> EncoderOutput:
        """Rows `index` (N,) of every field: to drop finished sentences."""

        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.index_select(0, index)

        return EncoderOutput(pick(self.memory), pick(self.mask), pick(self.final), pick(self.keys), pick(self.cross_kv))


class Seq2Seq(nn.Module, ABC):
    """An encoder-decoder translation model.

    Training: `forward` (teacher forcing) gives the output features, `project` turns them into logits.
    Decoding (see `lightning_nmt.search`): `encode` once, `init_state`, then `decode_step` per
    target position; `reorder` picks decoder-state rows (beams), `EncoderOutput.index_select` the
    encoder rows (sentences). A decoding step reads r >= 1 rows (hypotheses) per sentence of the encoder
    output, grouped by sentence: rows r * i ... r * i + r - 1 belong to sentence i.
    """

    output: nn.Module
    """The output layer, features (..., D) -> logits (..., V); set by subclasses."""

    def forward(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced pass.

        src (B, S), src_lengths (B,), tgt_in (B, T) -> features (B, T, D) and, if `return_attention`
        and the model has it, attention weights (B, T, S) (else None).
        """
        return self.decode(tgt_in, self.encode(src, src_lengths), return_attention)

    def project(self, hidden: Tensor) -> Tensor:
        """Output layer: features (..., D) -> logits (..., V)."""
        return self.output(hidden)

    @abstractmethod
    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        """src (B, S), src_lengths (B,) -> EncoderOutput (attention keys already projected)."""

    @abstractmethod
    def decode(
        self, tgt_in: Tensor, enc: EncoderOutput, return_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced decoder: tgt_in (B, T) -> features (B, T, D), attention (B, T, S) or None."""

    @abstractmethod
    def init_state(self, enc: EncoderOutput) -> DecoderState:
        """Decoder state before the first target token (BOS) is read."""

    @abstractmethod
    def decode_step(
        self, tokens: Tensor, enc: EncoderOutput, state: DecoderState
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """Read one token per row: tokens (R,), R = r * B rows grouped by sentence (B: enc's batch) ->
        logits (R, V) of the next token, new state, attention weights (R, S) of this step or None."""

    @abstractmethod
    def reorder(self, state: DecoderState, index: Tensor) -> DecoderState:
        """Rows `index` (N,) of the decoder state (beam reordering, dropping finished sentences)."""
