"""Transformer baseline (Vaswani et al., 2017), pre-norm, with sinusoidal positions, behind `Seq2Seq`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_nmt.data.tokenizer import PAD_ID
from lightning_nmt.models.base import (
    EncoderOutput,
    ModelOptions,
    Seq2Seq,
    length_mask,
    output_layer,
    per_hypothesis,
    per_sentence,
    register_model,
)


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
    """Pre-norm decoder layer: causal self-attention, cross-attention, feed-forward, each a residual
    block. Unlike `nn.TransformerDecoderLayer` it can return its cross-attention weights."""

    def __init__(self, d_model: int, nhead: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.norm_self, self.norm_cross, self.norm_ffn = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, memory: Tensor, causal_mask: Tensor, memory_padding: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """x (R, T, D), R = r * B rows grouped by sentence, memory (B, S, D), causal_mask (T, T) True above
        the diagonal, memory_padding (B, S) True at padding -> x (R, T, D), cross-attention averaged over
        heads (R, T, S) or None."""
        h = self.norm_self(x)
        x = x + self.dropout(
            self.self_attn(h, h, h, attn_mask=causal_mask, is_causal=True, need_weights=False)[0]
        )
        h = per_sentence(self.norm_cross(x), memory.size(0))
        attended, weights = self.cross_attn(
            h, memory, memory, key_padding_mask=memory_padding, need_weights=need_weights
        )
        x = x + self.dropout(per_hypothesis(attended, x.size(0)))
        weights = None if weights is None else per_hypothesis(weights, x.size(0))
        return x + self.dropout(self.ffn(self.norm_ffn(x))), weights


class TransformerSeq2Seq(Seq2Seq):
    """Encoder (`nn.TransformerEncoder`, pre-norm) and decoder (`DecoderLayer`s) of `num_layers` each.

    Embeddings are initialised N(0, 1/d_model) and scaled by sqrt(d_model). Decoding recomputes the decoder
    over the whole prefix at every step (the state is the prefix), batched over all rows.
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
    ) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model, padding_idx=PAD_ID)
        self.scale = math.sqrt(d_model)
        self.positions = PositionalEncoding(d_model)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, ffn_dim, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(d_model, nhead, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.output = output_layer(d_model, tgt_vocab_size, self.tgt_embed if tie_embeddings else None)
        for embedding in (self.src_embed, self.tgt_embed):  # N(0, d^-0.5), as Vaswani et al. and fairseq:
            nn.init.normal_(embedding.weight, std=d_model**-0.5)  # x sqrt(d) on input gives unit scale, and
            nn.init.zeros_(embedding.weight[PAD_ID])  # tied logits start near 0 (loss near ln V)

    def _embed(self, embedding: nn.Embedding, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> scaled embeddings plus positions, with dropout (B, T, D)."""
        return self.dropout(self.positions(embedding(tokens) * self.scale))

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        mask = length_mask(src_lengths, src.size(1))
        return EncoderOutput(self.encoder(self._embed(self.src_embed, src), src_key_padding_mask=~mask), mask)

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

    def init_state(self, enc: EncoderOutput) -> Tensor:
        """The empty prefix (B, 0)."""
        return enc.mask.new_empty(enc.mask.size(0), 0, dtype=torch.long)

    def decode_step(self, tokens: Tensor, enc: EncoderOutput, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        prefix = torch.cat([state, tokens.unsqueeze(1)], dim=1)
        features, weights = self.decode(prefix, enc, return_attention=True)
        return self.project(features[:, -1]), prefix, weights[:, -1]

    def reorder(self, state: Tensor, index: Tensor) -> Tensor:
        return state.index_select(0, index)


@register_model("transformer")
@dataclass
class TransformerOptions(ModelOptions):
    """`model=transformer`: d_model is also the embedding size; `transformer_layers` encoder and decoder
    layers each."""

    d_model: int
    nhead: int
    ffn_dim: int
    transformer_layers: int
    dropout: float
    tie_embeddings: bool  # the target embeddings are the output layer's weights

    def build(self, src_vocab_size: int, tgt_vocab_size: int) -> TransformerSeq2Seq:
        return TransformerSeq2Seq(src_vocab_size, tgt_vocab_size, self.d_model, self.nhead, self.ffn_dim,
                                  self.transformer_layers, self.dropout, self.tie_embeddings)
