"""Translation models: `build_model` makes one from the `model:` config group; `search` decodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_nmt.models.base import EncoderOutput, Seq2Seq, lookup
from lightning_nmt.models.rnn import AttentionDecoder, BasicDecoder, RNNEncoder, RNNSeq2Seq
from lightning_nmt.models.search import SearchResult, search
from lightning_nmt.models.transformer import TransformerSeq2Seq

__all__ = ["EncoderOutput", "SearchResult", "Seq2Seq", "build_model", "search"]


def _field(cfg: Any, name: str) -> Any:
    """`cfg.name` for a dataclass or object, `cfg[name]` for a mapping (dict, DictConfig)."""
    return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)


def _rnn_parts(cfg: Any, src_vocab_size: int, tgt_vocab_size: int) -> tuple[RNNEncoder, dict[str, Any]]:
    """The encoder and the decoder arguments both recurrent models read from `cfg`: rnn_type,
    embedding_dim, encoder_hidden, bidirectional, encoder_layers, decoder_hidden, decoder_layers,
    dropout."""

    def get(name: str) -> Any:
        return _field(cfg, name)

    encoder = RNNEncoder(
        get("rnn_type"),
        src_vocab_size,
        get("embedding_dim"),
        get("encoder_hidden"),
        get("encoder_layers"),
        get("bidirectional"),
        get("dropout"),
    )
    decoder_args = dict(
        rnn_type=get("rnn_type"),
        vocab_size=tgt_vocab_size,
        embedding_dim=get("embedding_dim"),
        hidden_size=get("decoder_hidden"),
        num_layers=get("decoder_layers"),
        encoder_size=encoder.output_size,
        dropout=get("dropout"),
    )
    return encoder, decoder_args


def _basic_model(cfg: Any, src_vocab_size: int, tgt_vocab_size: int) -> RNNSeq2Seq:
    """type basic: `_rnn_parts` and tie_embeddings."""
    encoder, decoder_args = _rnn_parts(cfg, src_vocab_size, tgt_vocab_size)
    return RNNSeq2Seq(encoder, BasicDecoder(**decoder_args), tgt_vocab_size, _field(cfg, "tie_embeddings"))


def _attention_model(cfg: Any, src_vocab_size: int, tgt_vocab_size: int) -> RNNSeq2Seq:
    """type attention: `_rnn_parts`, attention, input_feeding and tie_embeddings."""
    encoder, decoder_args = _rnn_parts(cfg, src_vocab_size, tgt_vocab_size)
    decoder = AttentionDecoder(
        **decoder_args, attention=_field(cfg, "attention"), input_feeding=_field(cfg, "input_feeding")
    )
    return RNNSeq2Seq(encoder, decoder, tgt_vocab_size, _field(cfg, "tie_embeddings"))


def _transformer_model(cfg: Any, src_vocab_size: int, tgt_vocab_size: int) -> TransformerSeq2Seq:
    """type transformer; reads d_model (also the embedding size: embedding_dim is not used), nhead,
    ffn_dim, transformer_layers (encoder and decoder each), dropout, tie_embeddings."""
    return TransformerSeq2Seq(
        src_vocab_size,
        tgt_vocab_size,
        _field(cfg, "d_model"),
        _field(cfg, "nhead"),
        _field(cfg, "ffn_dim"),
        _field(cfg, "transformer_layers"),
        _field(cfg, "dropout"),
        _field(cfg, "tie_embeddings"),
    )


MODEL_TYPES = {"basic": _basic_model, "attention": _attention_model, "transformer": _transformer_model}


def build_model(cfg: Any, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    """The model described by `cfg` (mapping, DictConfig or dataclass with the `model:` config fields).

    Only the fields of the chosen `type` are read. An unknown type, attention or rnn_type is a
    ValueError naming the valid values.
    """
    return lookup(MODEL_TYPES, _field(cfg, "type"), "model type")(cfg, src_vocab_size, tgt_vocab_size)
