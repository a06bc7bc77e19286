"""Transformer baseline (Vaswani et al., 2017), pre-norm or post-norm, with sinusoidal positions, behind
`Seq2Seq`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_nmt.models.base import (
    EncoderOutput,
    ModelOptions,
    Seq2Seq,
    cpu_autocast_dtype,
    length_mask,
    output_layer,
    per_hypothesis,
    per_sentence,
    register_model,
)
from lightning_nmt.tokens import PAD_ID


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal position encodings to (B, T, D) inputs (T <= max_len)."""

    def __init__(self, d_model: int, max_len: int = 5000) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * (-math.log(10000.0) / d_model))
        encoding = torch.zeros(max_len, d_model)
        encoding[:, 0::2] = torch.sin(position * frequency)
        encoding[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("encoding", encoding, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> x + PE[:T]."""
        return x + self.encoding[: x.size(1)]


class DecoderLayer(nn.Module):
    """Decoder layer: causal self-attention, cross-attention, feed-forward, each a residual block, pre-norm
    (`x + block(norm(x))`) or post-norm (`norm(x + block(x))`, the original Transformer's and fairseq's default).
    Unlike `nn.TransformerDecoderLayer` it can return its cross-attention weights."""

    def __init__(self, d_model: int, nhead: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, norm_first: bool) -> None:
        """`dropout` on each block's output (residual), `attention_dropout` on the attention weights,
        `activation_dropout` after the feed-forward ReLU (fairseq's three)."""
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=attention_dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=attention_dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Dropout(activation_dropout), nn.Linear(ffn_dim, d_model)
        )
        self.norm_self, self.norm_cross, self.norm_ffn = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, memory: Tensor, causal_mask: Tensor, memory_padding: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """x (R, T, D), R = r * B rows grouped by sentence, memory (B, S, D), causal_mask (T, T) True above
        the diagonal, memory_padding (B, S) True at padding -> x (R, T, D), cross-attention averaged over
        heads (R, T, S) or None."""
        x, _ = self._residual(x, self.norm_self, lambda h: (
            self.self_attn(h, h, h, attn_mask=causal_mask, is_causal=True, need_weights=False)[0], None))
        return self._cross_and_ffn(x, memory, memory_padding, need_weights)

    def _residual(self, x: Tensor, norm: nn.LayerNorm, block: Callable[[Tensor], tuple[Tensor, Any]]
                  ) -> tuple[Tensor, Any]:
        """One residual block around `block` (input -> output, anything else it returns): pre-norm
        `x + dropout(block(norm(x)))` or post-norm `norm(x + dropout(block(x)))`."""
        out, extra = block(norm(x) if self.norm_first else x)
        x = x + self.dropout(out)
        return (x if self.norm_first else norm(x)), extra

    def step(
        self, x: Tensor, cache: tuple[Tensor, Tensor], memory_kv: Tensor, memory_padding: Tensor, need_weights: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        """One decoding position (inference): x (R, 1, D), cache: the self-attention keys and values of the
        previous positions, each (R, heads, t, D / heads), memory_kv: the cross-attention keys and values of
        the source (B, 2, S, D, from `memory_kv`) -> x (R, 1, D), the cache with this position (t + 1),
        cross-attention (R, 1, S) or None. The same as `forward` on the whole prefix, whose earlier positions
        do not change (causal mask), without recomputing them."""
        heads, dim = self.self_attn.num_heads, x.size(-1)

        def self_attention(h: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            q, k, v = F.linear(h, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias).chunk(3, -1)
            q, k, v = (t.view(t.size(0), 1, heads, -1).transpose(1, 2) for t in (q, k, v))
            keys, values = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)  # (R, heads, t + 1, D / heads)
            attended = F.scaled_dot_product_attention(q, keys, values)  # every cached position is visible
            return self.self_attn.out_proj(attended.transpose(1, 2).reshape_as(h)), (keys, values)

        def cross_attention(h: Tensor) -> tuple[Tensor, Tensor]:
            # the source's keys and values projected once: the r rows of a sentence read them together
            sentences = memory_kv.size(0)
            q = F.linear(h, self.cross_attn.in_proj_weight[:dim], self.cross_attn.in_proj_bias[:dim])
            q = per_sentence(q, sentences).view(sentences, -1, heads, dim // heads).transpose(1, 2)  # (B, heads, r, d)
            k, v = (t.view(sentences, -1, heads, dim // heads).transpose(1, 2) for t in memory_kv.unbind(1))
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(dim // heads)  # (B, heads, r, S)
            weights = scores.masked_fill(memory_padding[:, None, None, :], float("-inf")).softmax(-1)
            attended = (weights @ v).transpose(1, 2).reshape(sentences, -1, dim)  # (B, r, D)
            return per_hypothesis(self.cross_attn.out_proj(attended), h.size(0)), weights

        x, cache = self._residual(x, self.norm_self, self_attention)
        x, weights = self._residual(x, self.norm_cross, cross_attention)
        weights = per_hypothesis(weights.mean(1), x.size(0)) if need_weights else None  # averaged over heads
        return self._feed_forward(x), cache, weights

    def memory_kv(self, memory: Tensor) -> Tensor:
        """The cross-attention keys and values of the encoder states: memory (B, S, D) -> (B, 2, S, D)."""
        dim = memory.size(-1)
        return F.linear(memory, self.cross_attn.in_proj_weight[dim:], self.cross_attn.in_proj_bias[dim:]).view(
            *memory.shape[:2], 2, dim).transpose(1, 2)

    def _cross_and_ffn(
        self, x: Tensor, memory: Tensor, memory_padding: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The cross-attention and feed-forward blocks: x (R, T, D) -> x (R, T, D), weights (R, T, S) or None."""
        def cross_attention(h: Tensor) -> tuple[Tensor, Tensor | None]:
            attended, weights = self.cross_attn(per_sentence(h, memory.size(0)), memory, memory,
                                                key_padding_mask=memory_padding, need_weights=need_weights)
            return per_hypothesis(attended, h.size(0)), weights

        x, weights = self._residual(x, self.norm_cross, cross_attention)
        weights = None if weights is None else per_hypothesis(weights, x.size(0))
        return self._feed_forward(x), weights

    def _feed_forward(self, x: Tensor) -> Tensor:
        """The feed-forward residual block: x (R, T, D) -> (R, T, D)."""
        return self._residual(x, self.norm_ffn, lambda h: (self.ffn(h), None))[0]


@dataclass
class DecoderCache:
    """The Transformer's decoding state: per decoder layer the self-attention keys and values of the positions
    read so far, each (R, heads, t, D / heads)."""

    layers: list[tuple[Tensor, Tensor]]
    length: int  # t, the positions read

    def index_select(self, index: Tensor) -> DecoderCache:
        return DecoderCache([(k.index_select(0, index), v.index_select(0, index)) for k, v in self.layers],
                            self.length)


@contextmanager
def plain_encoder_path() -> Iterator[None]:
    """Under CPU autocast, `nn.TransformerEncoderLayer` in eval mode takes its layer-by-layer path, not torch's
    fused inference kernel: torch's guard checks only CUDA autocast, and the fused kernel fails on a mix of bf16
    and fp32 (torch 2.5) or skips autocast's casts (torch 2.13). Elsewhere nothing changes."""
    if cpu_autocast_dtype() is None or not torch.backends.mha.get_fastpath_enabled():
        yield
        return
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


class TransformerSeq2Seq(Seq2Seq):
    """Encoder (`nn.TransformerEncoder`) and decoder (`DecoderLayer`s) of `num_layers` each, pre-norm or
    post-norm (`norm_first`).

    Embeddings are initialised N(0, 1/d_model) and scaled by sqrt(d_model); with `share_embeddings` the source
    and target embeddings are one matrix (one vocabulary for both sides), and with `tie_embeddings` it is also the
    output layer's (fairseq's `--share-all-embeddings`). Decoding reads one position per
    step and keeps each decoder layer's self-attention keys and values (`DecoderCache`), so a step costs the
    same at every position instead of recomputing the prefix; the source's cross-attention keys and values
    are projected once (`encode` in eval mode).
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        d_model: int,
        nhead: int,
        ffn_dim: int,
        num_layers: int,
        dropout: float,
        tie_embeddings: bool,
        share_embeddings: bool,
        attention_dropout: float,
        activation_dropout: float,
        norm_first: bool,
    ) -> None:
        super().__init__()
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(f"model.share_embeddings needs one vocabulary for both sides (data.tokenizer.joint=true); "
                             f"got {src_vocab_size} source and {tgt_vocab_size} target pieces")
        self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=PAD_ID)
        self.tgt_embed = self.src_embed if share_embeddings else nn.Embedding(tgt_vocab_size, d_model,
                                                                              padding_idx=PAD_ID)
        self.scale = math.sqrt(d_model)
        self.positions = PositionalEncoding(d_model)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, ffn_dim, dropout, batch_first=True, norm_first=norm_first
        )
        layer.self_attn.dropout = attention_dropout  # nn.TransformerEncoderLayer takes one rate for all three
        layer.dropout.p = activation_dropout  # the one after the feed-forward activation
        # pre-norm layers leave their outputs unnormalised: one LayerNorm after the last layer of each stack
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model) if norm_first else None, enable_nested_tensor=False
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(d_model, nhead, ffn_dim, dropout, attention_dropout, activation_dropout, norm_first)
            for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.output = output_layer(d_model, tgt_vocab_size, self.tgt_embed if tie_embeddings else None)
        for embedding in (self.src_embed, self.tgt_embed):  # N(0, d^-0.5), as Vaswani et al. and fairseq:
            nn.init.normal_(embedding.weight, std=d_model**-0.5)  # x sqrt(d) on input gives unit scale, and
            nn.init.zeros_(embedding.weight[PAD_ID])  # tied logits start near 0 (loss near ln V)

    def _embed(self, embedding: nn.Embedding, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> scaled embeddings plus positions, with dropout (B, T, D)."""
        return self.dropout(self.positions(embedding(tokens) * self.scale))

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        """In eval mode `cross_kv` holds each decoder layer's cross-attention keys and values of the source,
        (B, layers, 2, S, D), which decoding reads at every step."""
        mask = length_mask(src_lengths, src.size(1))
        with plain_encoder_path():
            memory = self.encoder(self._embed(self.src_embed, src), src_key_padding_mask=~mask)
        cross_kv = None if self.training else torch.stack([layer.memory_kv(memory) for layer in self.decoder_layers], 1)
        return EncoderOutput(memory, mask, cross_kv=cross_kv)

    def decode(
        self, tgt_in: Tensor, enc: EncoderOutput, return_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        x = self._embed(self.tgt_embed, tgt_in)
        steps = tgt_in.size(1)
        causal_mask = torch.ones(steps, steps, dtype=torch.bool, device=tgt_in.device).triu(1)
        padding = ~enc.mask
        last = len(self.decoder_layers) - 1
        weights = None
        for i, layer in enumerate(self.decoder_layers):
            x, weights = layer(x, enc.memory, causal_mask, padding, return_attention and i == last)
        return self.decoder_norm(x), weights

    def init_state(self, enc: EncoderOutput) -> DecoderCache:
        """Nothing read yet: empty keys and values (B, heads, 0, D / heads) per layer."""
        heads = self.decoder_layers[0].self_attn.num_heads
        empty = enc.memory.new_empty(enc.memory.size(0), heads, 0, enc.memory.size(-1) // heads)
        return DecoderCache([(empty, empty) for _ in self.decoder_layers], 0)

    def decode_step(
        self, tokens: Tensor, enc: EncoderOutput, state: DecoderCache
    ) -> tuple[Tensor, DecoderCache, Tensor]:
        position = self.positions.encoding[state.length]  # (D,)
        x = self.dropout(self.tgt_embed(tokens) * self.scale + position).unsqueeze(1)  # (R, 1, D)
        padding, layers, weights = ~enc.mask, [], None
        last = len(self.decoder_layers) - 1
        for i, (layer, cache) in enumerate(zip(self.decoder_layers, state.layers)):
            memory_kv = layer.memory_kv(enc.memory) if enc.cross_kv is None else enc.cross_kv[:, i]
            x, cache, weights = layer.step(x, cache, memory_kv, padding, need_weights=i == last)
            layers.append(cache)
        return self.project(self.decoder_norm(x[:, 0])), DecoderCache(layers, state.length + 1), weights[:, 0]

    def reorder(self, state: DecoderCache, index: Tensor) -> DecoderCache:
        return state.index_select(index)


@register_model("transformer")
@dataclass
class TransformerOptions(ModelOptions):
    """`model=transformer`: d_model is also the embedding size; `transformer_layers` encoder and decoder
    layers each; `dropout` on the embeddings and every block's output, and unless set apart on the attention
    weights and the feed-forward activation (fairseq: `--attention-dropout`, `--activation-dropout`, default 0)."""

    d_model: int
    nhead: int
    ffn_dim: int
    transformer_layers: int
    dropout: float
    tie_embeddings: bool  # the target embeddings are the output layer's weights
    share_embeddings: bool = False  # one embedding matrix for source and target (needs a joint vocabulary)
    attention_dropout: float | None = None  # on the attention weights; None (or absent in a checkpoint): `dropout`
    activation_dropout: float | None = None  # after the feed-forward ReLU; None: `dropout`
    norm_first: bool = True  # pre-norm; False: post-norm (fairseq's default, `--encoder-normalize-before` off)

    def __post_init__(self) -> None:
        self.attention_dropout = self.dropout if self.attention_dropout is None else self.attention_dropout
        self.activation_dropout = self.dropout if self.activation_dropout is None else self.activation_dropout

    def check(self) -> None:
        """Also: `d_model` must split evenly into `nhead` heads."""
        super().check()
        if self.d_model % self.nhead:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.nhead ({self.nhead})")

    def build(self, src_vocab_size: int, tgt_vocab_size: int) -> TransformerSeq2Seq:
        return TransformerSeq2Seq(src_vocab_size, tgt_vocab_size, self.d_model, self.nhead, self.ffn_dim,
                                  self.transformer_layers, self.dropout, self.tie_embeddings, self.share_embeddings,
                                  self.attention_dropout, self.activation_dropout, self.norm_first)
