"""Recurrent models: the encoder, the basic (Cho et al., 2014) and the attention (Luong et al., 2015)
decoders, and `RNNSeq2Seq` joining an encoder and a decoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_nmt.models.attention import attention_class, build_attention
from lightning_nmt.models.base import (
    EncoderOutput,
    ModelOptions,
    Seq2Seq,
    length_mask,
    output_layer,
    per_hypothesis,
    register_model,
)
from lightning_nmt.models.layers import RNNType, WordDropout, build_rnn
from lightning_nmt.tokens import PAD_ID


class RNNState(NamedTuple):
    """Decoder state. hidden: (L, B, H), or (h, c) for an LSTM; feed: (B, 1, D) previous
    attentional vector when input feeding, else None."""

    hidden: Tensor | tuple[Tensor, Tensor]
    feed: Tensor | None


class RNNEncoder(nn.Module):
    """Embeddings and a (bidirectional) GRU/LSTM over the packed source, so padding costs nothing."""

    def __init__(
        self,
        rnn_type: str,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        word_dropout: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.word_dropout = WordDropout(word_dropout)
        self.dropout = nn.Dropout(dropout)
        self.rnn = build_rnn(rnn_type, embedding_dim, hidden_size, num_layers, dropout, bidirectional)
        self.output_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S), src_lengths (B,) -> states (B, S, H_out) (zero at padding) and
        final (B, H_out): the last layer's final states, both directions concatenated."""
        packed = pack_padded_sequence(
            self.dropout(self.word_dropout(self.embed(src))), src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        states, final = self.rnn(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=src.size(1))
        if isinstance(final, tuple):  # LSTM: (h, c) -> h
            final = final[0]
        directions = 2 if self.rnn.bidirectional else 1
        last = final.view(self.rnn.num_layers, directions, src.size(0), self.rnn.hidden_size)[-1]
        return self.dropout(states), last.transpose(0, 1).reshape(src.size(0), self.output_size)


class RNNDecoder(nn.Module):
    """What both recurrent decoders have: target embeddings, the bridge from the encoder's summary of the
    source to the initial state, the RNN, and W_c of the output features. Each decoder's `steps` says how
    it reads target words.

    Teacher forcing runs the whole target through `steps` in one call, or one word at a time when the RNN
    reads its previous output (input feeding); decoding reads one word at a time (`step`).
    """

    def __init__(self, rnn_type: str, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int,
                 encoder_size: int, dropout: float, word_dropout: float, input_feeding: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.word_dropout = WordDropout(word_dropout)
        self.dropout = nn.Dropout(dropout)
        self.bridge = nn.Linear(encoder_size, hidden_size)
        self.input_feeding = input_feeding
        self.rnn = build_rnn(rnn_type, self.rnn_input_size(embedding_dim, hidden_size, encoder_size), hidden_size,
                             num_layers, dropout)
        self.combine = nn.Linear(hidden_size + encoder_size, hidden_size)
        self.output_size, self.encoder_size = hidden_size, encoder_size

    def rnn_input_size(self, embedding_dim: int, hidden_size: int, encoder_size: int) -> int:
        """What the RNN reads at each step: the word embedding and what the decoder adds to it."""
        raise NotImplementedError

    def precompute_keys(self, memory: Tensor) -> Tensor | None:
        """memory (B, S, H) -> attention keys (B, S, K), or None without attention."""
        return None

    def steps(
        self, emb: Tensor, enc: EncoderOutput, state: RNNState
    ) -> tuple[Tensor, RNNState, Tensor | None]:
        """Read target embeddings emb (R, T, E) -> output features (R, T, D), the state after them,
        attention weights (R, T, S) or None. R = r * B rows, r per sentence of `enc`, grouped by sentence."""
        raise NotImplementedError

    def init_state(self, enc: EncoderOutput) -> RNNState:
        """Initial state tanh(W_b final) in every layer (h and c for an LSTM)."""
        h = torch.tanh(self.bridge(enc.final)).unsqueeze(0).repeat(self.rnn.num_layers, 1, 1)
        feed = h.new_zeros(h.size(1), 1, self.output_size) if self.input_feeding else None
        return RNNState((h, h) if isinstance(self.rnn, nn.LSTM) else h, feed)

    def forward(
        self, tgt_in: Tensor, enc: EncoderOutput, state: RNNState, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: tgt_in (B, T) -> features (B, T, D), attention (B, T, S) if asked and any."""
        emb = self.embed_words(tgt_in)
        if not self.input_feeding:  # the RNN reads the target words only: all T steps at once
            features, _, weights = self.steps(emb, enc, state)
            return features, weights if return_attention else None
        features, weights = [], []
        for t in range(emb.size(1)):  # the RNN reads the previous output features: one step at a time
            step_features, state, step_weights = self.steps(emb[:, t : t + 1], enc, state)
            features.append(step_features)
            weights.append(step_weights)
        return torch.cat(features, dim=1), torch.cat(weights, dim=1) if return_attention else None

    def embed_words(self, tokens: Tensor) -> Tensor:
        """tokens (R, T) -> embeddings (R, T, E), after word dropout and dropout."""
        return self.dropout(self.word_dropout(self.embed(tokens)))

    def step(
        self, tokens: Tensor, enc: EncoderOutput, state: RNNState
    ) -> tuple[Tensor, RNNState, Tensor | None]:
        """Read tokens (R,) -> features (R, D), new state, attention weights (R, S) or None."""
        features, state, weights = self.steps(self.embed_words(tokens.unsqueeze(1)), enc, state)
        return features.squeeze(1), state, None if weights is None else weights.squeeze(1)


class BasicDecoder(RNNDecoder):
    """Cho et al. (2014): the encoder's summary of the source c (its final states) initialises the decoder
    (through the bridge) and is read at every step, next to the input word and in the output features."""

    def rnn_input_size(self, embedding_dim: int, hidden_size: int, encoder_size: int) -> int:
        return embedding_dim + encoder_size  # the word and the context c

    def steps(self, emb: Tensor, enc: EncoderOutput, state: RNNState) -> tuple[Tensor, RNNState, None]:
        """Decoder steps with the fixed context c (see `RNNDecoder.steps`)."""
        rows, batch = emb.size(0), enc.final.size(0)
        # the context c, the same at every step: a view in training, one copy per hypothesis in beam search
        c = per_hypothesis(enc.final.unsqueeze(1).expand(-1, rows // batch, -1), rows).expand(-1, emb.size(1), -1)
        # Cho et al. (2014), section 2.2: h_t = f(h_{t-1}, y_{t-1}, c)
        h, hidden = self.rnn(torch.cat([emb, c], dim=-1), state.hidden)
        # the output features tanh(W_c [h_t; c]) the next word is predicted from (Cho et al.'s g(h_t, y_{t-1}, c)
        # without y_{t-1})
        features = torch.tanh(self.combine(self.dropout(torch.cat([h, c], dim=-1))))
        return features, RNNState(hidden, None), None


class AttentionDecoder(RNNDecoder):
    """Luong et al. (2015), global attention: the context c_t is attention over the encoder states,
    recomputed from each decoder state h_t; with `input_feeding`, the previous attentional vector h~_{t-1}
    is read next to the input word."""

    def __init__(self, *args: Any, attention: str, **kwargs: Any) -> None:
        """`RNNDecoder`'s arguments, and the registered name of the `attention`."""
        super().__init__(*args, **kwargs)
        self.attention = build_attention(attention, self.output_size, self.encoder_size)

    def rnn_input_size(self, embedding_dim: int, hidden_size: int, encoder_size: int) -> int:
        return embedding_dim + (hidden_size if self.input_feeding else 0)  # the word and, input feeding, h~_{t-1}

    def precompute_keys(self, memory: Tensor) -> Tensor:
        return self.attention.precompute_keys(memory)

    def steps(self, emb: Tensor, enc: EncoderOutput, state: RNNState) -> tuple[Tensor, RNNState, Tensor]:
        """Decoder steps with global attention (see `RNNDecoder.steps`): T at once without input feeding."""
        # the decoder state h_t; with input feeding the RNN also reads h~_{t-1} (Luong, section 3.3)
        inputs = emb if state.feed is None else torch.cat([emb, state.feed], dim=-1)
        h, hidden = self.rnn(inputs, state.hidden)  # (R, T, H)
        # the context c_t = sum_s a_t(s) h_s, a_t = softmax over the source of score(h_t, h_s) (Luong eqs. 7-8)
        context, weights = self.attention(h, enc.keys, enc.memory, enc.mask)  # (R, T, H_enc), (R, T, S)
        # Luong eq. 5: h~_t = tanh(W_c [c_t; h_t]) (here W_c's columns read [h_t; c_t])
        features = torch.tanh(self.combine(self.dropout(torch.cat([h, context], dim=-1))))
        return features, RNNState(hidden, features if self.input_feeding else None), weights


class RNNSeq2Seq(Seq2Seq):
    """A recurrent encoder and decoder (basic or attention) with the output layer."""

    def __init__(
        self, encoder: RNNEncoder, decoder: RNNDecoder, tgt_vocab_size: int, tie_embeddings: bool
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.output = output_layer(
            decoder.output_size, tgt_vocab_size, decoder.embed if tie_embeddings else None
        )

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        memory, final = self.encoder(src, src_lengths)
        mask = length_mask(src_lengths, src.size(1))
        return EncoderOutput(memory, mask, final, self.decoder.precompute_keys(memory))

    def decode(
        self, tgt_in: Tensor, enc: EncoderOutput, return_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        return self.decoder(tgt_in, enc, self.decoder.init_state(enc), return_attention)

    def init_state(self, enc: EncoderOutput) -> RNNState:
        return self.decoder.init_state(enc)

    def decode_step(
        self, tokens: Tensor, enc: EncoderOutput, state: RNNState
    ) -> tuple[Tensor, RNNState, Tensor | None]:
        features, state, weights = self.decoder.step(tokens, enc, state)
        # the logits W_s h~_t of p(y_t | y_<t, x) = softmax(W_s h~_t) (Luong eq. 6)
        return self.project(features), state, weights

    def reorder(self, state: RNNState, index: Tensor) -> RNNState:
        hidden = state.hidden
        if isinstance(hidden, tuple):
            hidden = (hidden[0].index_select(1, index), hidden[1].index_select(1, index))
        else:
            hidden = hidden.index_select(1, index)
        return RNNState(hidden, None if state.feed is None else state.feed.index_select(0, index))


@dataclass
class RNNOptions(ModelOptions):
    """What both recurrent model types read."""

    rnn_type: RNNType
    embedding_dim: int
    encoder_hidden: int  # per direction
    bidirectional: bool
    encoder_layers: int
    decoder_hidden: int
    decoder_layers: int
    dropout: float
    tie_embeddings: bool  # the target embeddings are the output layer's weights
    # whole source and target words dropped in training (`WordDropout`); a checkpoint without it loads with 0
    word_dropout: float = field(default=0.0, kw_only=True)

    def encoder(self, src_vocab_size: int) -> RNNEncoder:
        return RNNEncoder(self.rnn_type, src_vocab_size, self.embedding_dim, self.encoder_hidden,
                          self.encoder_layers, self.bidirectional, self.dropout, self.word_dropout)

    def decoder_args(self, tgt_vocab_size: int, encoder: RNNEncoder) -> dict[str, object]:
        return dict(rnn_type=self.rnn_type, vocab_size=tgt_vocab_size, embedding_dim=self.embedding_dim,
                    hidden_size=self.decoder_hidden, num_layers=self.decoder_layers,
                    encoder_size=encoder.output_size, dropout=self.dropout, word_dropout=self.word_dropout)


@register_model("basic")
@dataclass
class BasicOptions(RNNOptions):
    """`model=basic`: the encoder's final state is the one context vector (`BasicDecoder`)."""

    def build(self, src_vocab_size: int, tgt_vocab_size: int) -> RNNSeq2Seq:
        encoder = self.encoder(src_vocab_size)
        decoder = BasicDecoder(**self.decoder_args(tgt_vocab_size, encoder))
        return RNNSeq2Seq(encoder, decoder, tgt_vocab_size, self.tie_embeddings)


@register_model("attention")
@dataclass
class AttentionOptions(RNNOptions):
    """`model=attention`: attention over all encoder states at every step (`AttentionDecoder`)."""

    attention: str  # the score function: a registered name (`lightning_nmt.models.attention.ATTENTIONS`)
    input_feeding: bool  # the previous attentional vector is read next to the input embedding

    def check(self) -> None:
        """Also: `attention` must be a registered score."""
        super().check()
        attention_class(self.attention)

    def build(self, src_vocab_size: int, tgt_vocab_size: int) -> RNNSeq2Seq:
        encoder = self.encoder(src_vocab_size)
        decoder = AttentionDecoder(**self.decoder_args(tgt_vocab_size, encoder), attention=self.attention,
                                   input_feeding=self.input_feeding)
        return RNNSeq2Seq(encoder, decoder, tgt_vocab_size, self.tie_embeddings)
