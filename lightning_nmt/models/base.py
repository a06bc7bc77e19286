"""The interface every model implements (`Seq2Seq`), the encoder output it passes around, and small
helpers shared by the model modules."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

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


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """lengths (B,) -> bool mask (B, max_len), True at the first `lengths[b]` positions."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


def per_sentence(query: Tensor, batch: int) -> Tensor:
    """query (B * r, T, D), r hypotheses per sentence grouped by sentence -> (B, r * T, D).

    In beam search the r hypotheses of a sentence attend to the same encoder states: folded into the
    time dimension they read them in one (r * T)-row product per sentence, instead of r copies of the
    encoder states (4x faster for a beam-5 decoding step's attention on the CPU).
    """
    return query.reshape(batch, -1, query.size(-1))


def per_hypothesis(x: Tensor, rows: int) -> Tensor:
    """The inverse of `per_sentence`: x (B, r * T, D) -> (rows = B * r, T, D)."""
    return x.reshape(rows, -1, x.size(-1))


class Linear(nn.Linear):
    """`nn.Linear` that multiplies by its weight in oneDNN's packed layout on the CPU.

    - In bf16 training, on inputs of at least `PACK_ROWS` rows (the whole target of a batch through the
      output layer, say): the weight is packed at each call, which costs about as much as multiplying ~50
      rows, and oneDNN's packed matmul is 5-15% faster than `F.linear` (a bf16 step +1-3.6%,
      benchmarks/README.md). The backward pass is two plain matmuls. Fewer rows (step-by-step decoders)
      keep `F.linear`. fp32 training keeps `F.linear` (MKL): through oneDNN it was as much faster, but
      ideep's per-shape cache (`LRU_CACHE_CAPACITY`) kept ~10 MB per batch shape, +390 MB of peak memory.
    - Inside `packed_linears` with gradients off (decoding): by `packed`, the weight and bias in the compute
      dtype, the weight packed once per search.
    """

    packed: tuple[Tensor, Tensor | None] | None = None
    PACK_ROWS = 1024

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None and not torch.is_grad_enabled():
            weight, bias = self.packed
            return torch.ops.mkldnn._linear_pointwise(x.to(weight.dtype), weight, bias, "none", [], "")
        if x.device.type == "cpu" and x.numel() >= self.PACK_ROWS * self.in_features:
            dtype = _compute_dtype(self.weight, _cpu_autocast_dtype())
            if dtype == torch.bfloat16 and dtype in packable_dtypes():
                bias = None if self.bias is None else self.bias.to(dtype)
                return _PackedLinear.apply(x.to(dtype), self.weight.to(dtype), bias)
        return super().forward(x)


class _PackedLinear(torch.autograd.Function):
    """y = x @ weight.T + bias with the weight packed for oneDNN in the forward pass; x (..., in)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_2d = grad.reshape(-1, grad.size(-1))  # (N, out)
        grad_x = grad @ weight if needs_x else None
        grad_weight = grad_2d.t() @ x.reshape(-1, x.size(-1)) if needs_weight else None
        return grad_x, grad_weight, grad_2d.sum(0) if needs_bias else None


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast casts fp32 matmul operands to, or None when it is off."""
    try:
        enabled, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return dtype if enabled else None


def _compute_dtype(weight: Tensor, autocast: torch.dtype | None) -> torch.dtype:
    """The dtype a CPU matmul with `weight` runs in: `autocast`'s for fp32 weights when it is on, else the
    weight's."""
    return autocast if autocast is not None and weight.dtype == torch.float32 else weight.dtype


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Inside, every `Linear` of a CPU `model` multiplies by its weight packed once for oneDNN (fp32 or
    bf16), instead of the weight being reordered at every call: decoding reads each weight at every step.

    Measured on the CPU (benchmarks/README.md): the output layer (320 x 512) @ (512 x 8000) 15.0 -> 11.8 ms
    in fp32, 6.5 -> 5.9 in bf16; bf16 beam 5 decoding +5%, greedy +7%, fp32 beam 5 +17%. No-op elsewhere
    (GPU, no oneDNN, or a dtype it has no kernel for). The weights must not change inside.
    """
    linears = [m for m in model.modules() if isinstance(m, Linear) and m.weight.device.type == "cpu"]
    dtypes, autocast = packable_dtypes(), _cpu_autocast_dtype()
    try:
        with torch.no_grad():
            for m in linears:
                dtype = _compute_dtype(m.weight, autocast)
                if dtype in dtypes:
                    bias = None if m.bias is None else m.bias.to(dtype)
                    m.packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.to(dtype), None), bias
        yield
    finally:
        for m in linears:
            m.packed = None


@functools.cache
def packable_dtypes() -> frozenset[torch.dtype]:
    """The dtypes oneDNN runs packed matmuls in on this CPU: none without oneDNN, bf16 only with CPU support.
    Asked once per process (`Linear` asks at every training call)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return frozenset()
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return frozenset({torch.float32, torch.bfloat16} if bf16 else {torch.float32})


def output_layer(hidden_size: int, vocab_size: int, tied: nn.Embedding | None) -> nn.Module:
    """The output layer: features (..., hidden_size) -> logits (..., vocab_size).

    With `tied`, its weight is the embedding matrix, re-initialised N(0, 1/embedding_dim) so that the
    initial logits have unit scale (with `nn.Embedding`'s N(0, 1) they had a standard deviation of
    sqrt(embedding_dim), an initial loss far above ln V); if the embedding size differs from
    `hidden_size`, a bias-free linear layer first projects the features to the embedding size.
    """
    if tied is None:
        return Linear(hidden_size, vocab_size)
    with torch.no_grad():
        tied.weight.normal_(0.0, tied.embedding_dim**-0.5)
        if tied.padding_idx is not None:
            tied.weight[tied.padding_idx].zero_()
    out = Linear(tied.embedding_dim, vocab_size)
    out.weight = tied.weight
    if hidden_size == tied.embedding_dim:
        return out
    return nn.Sequential(Linear(hidden_size, tied.embedding_dim, bias=False), out)


class Dropout(nn.Dropout):
    """`nn.Dropout` with a cheaper mask on the CPU: 16 random bits per element, drawn as 64-bit integers (one
    generator call per 4 elements), so the dropout rate is p rounded to 1/65,536. `bernoulli_`, which
    `nn.Dropout` uses, took 14 ms for a 1800 x 1024 mask, `rand_like` 7.6 ms, this 2.1 ms (benchmarks/README.md)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return x * 0.0
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= round(-32768 + self.p * 65536)
        return x * keep * (1.0 / (1.0 - self.p))


@dataclass
class ModelOptions(ABC):
    """What one model type reads from the `model:` config group: subclasses declare the fields (names and
    types; the values live in `conf/model/<type>.yaml`) and `build`, and register with `register_model`.
    The config schema, the enum of model types and the keys a sweep compares are derived from the registry."""

    @abstractmethod
    def build(self, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
        """The model, untrained."""


MODEL_TYPES: dict[str, type[ModelOptions]] = {}
"""Model type name (`model.type`) -> its options."""

Options = TypeVar("Options", bound=type[ModelOptions])


def register_model(name: str) -> Callable[[Options], Options]:
    """Class decorator: `model.type=name` builds models from these options."""

    def register(options: Options) -> Options:
        MODEL_TYPES[name] = options
        return options

    return register


@dataclass
class EncoderOutput:
    """What the encoder hands to the decoder; every field has the batch on dim 0.

    memory: (B, S, H) encoder states.
    mask: (B, S) bool, True at real source positions.
    final: (B, H) summary of the source (RNN final states of the last layer, both directions), or None.
    keys: (B, S, K) attention keys projected once per sentence, or None.
    """

    memory: Tensor
    mask: Tensor
    final: Tensor | None = None
    keys: Tensor | None = None

    def index_select(self, index: Tensor) -> EncoderOutput:
        """Rows `index` (N,) of every field: to drop finished sentences."""

        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.index_select(0, index)

        return EncoderOutput(pick(self.memory), pick(self.mask), pick(self.final), pick(self.keys))


class Seq2Seq(nn.Module, ABC):
    """An encoder-decoder translation model.

    Training: `forward` (teacher forcing) gives the output features, `project` turns them into logits.
    Decoding (see `lightning_nmt.models.search`): `encode` once, `init_state`, then `decode_step` per
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
