"""build_model: configs, errors, tied embeddings. Also the small configs and batches other model
tests import."""

from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf

from lightning_nmt.config import ModelConfig, ModelType
from lightning_nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from lightning_nmt.models import MODEL_TYPES, Seq2Seq, build_model
from lightning_nmt.models.attention import ATTENTIONS
from lightning_nmt.models.layers import RNNS
from lightning_nmt.models.rnn import BasicDecoder
from lightning_nmt.models.transformer import TransformerSeq2Seq

SMALL = {
    "type": "attention",
    "attention": "general",
    "rnn_type": "gru",
    "embedding_dim": 16,
    "encoder_hidden": 12,
    "bidirectional": True,
    "encoder_layers": 1,
    "decoder_hidden": 20,
    "decoder_layers": 1,
    "dropout": 0.0,
    "input_feeding": False,
    "tie_embeddings": False,
    "d_model": 16,
    "nhead": 2,
    "ffn_dim": 32,
    "transformer_layers": 2,
}

# one config per model kind: basic, attention with and without input feeding, transformer pre- and post-norm
MODEL_KINDS = {
    "basic": {"type": "basic"},
    "attention": {},
    "input_feeding": {"input_feeding": True, "attention": "concat", "rnn_type": "lstm"},
    "transformer": {"type": "transformer"},
    "transformer_post_norm": {"type": "transformer", "norm_first": False},
}


def small_model(seed=0, src_vocab=20, tgt_vocab=20, **overrides) -> Seq2Seq:
    """A small model of SMALL with `overrides`, in eval mode."""
    torch.manual_seed(seed)
    return build_model({**SMALL, **overrides}, src_vocab, tgt_vocab).eval()


def pad(rows, value=PAD_ID):
    """list of lists of ids -> right-padded LongTensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def make_batch(sources, targets=None):
    """Token lists (without specials) -> src, src_lengths, tgt_in, tgt_out as collate makes them."""
    src = [s + [EOS_ID] for s in sources]
    batch = {"src": pad(src), "src_lengths": torch.tensor([len(s) for s in src])}
    if targets is not None:
        batch["tgt_in"] = pad([[BOS_ID] + t for t in targets])
        batch["tgt_out"] = pad([t + [EOS_ID] for t in targets])
    return batch


def random_batch(seed, size=8, vocab=20, min_len=5, max_len=10):
    """`size` random pairs of lengths min_len..max_len over the ids 4..vocab-1."""
    g = torch.Generator().manual_seed(seed)

    def sentence():
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        return torch.randint(4, vocab, (length,), generator=g).tolist()

    return make_batch([sentence() for _ in range(size)], [sentence() for _ in range(size)])


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_forward_shapes(kind):
    model = small_model(tgt_vocab=23, **MODEL_KINDS[kind])
    b = make_batch([[5, 6, 7, 8], [9]], [[4, 5, 6], [7, 8]])
    hidden, attention = model(b["src"], b["src_lengths"], b["tgt_in"])
    assert hidden.shape[:2] == (2, 4) and attention is None
    assert model.project(hidden).shape == (2, 4, 23)
    _, attention = model(b["src"], b["src_lengths"], b["tgt_in"], return_attention=True)
    if kind == "basic":
        assert attention is None
    else:
        assert attention.shape == (2, 4, 5)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4))
        assert torch.all(attention[1, :, 2:] == 0.0)


@dataclass
class Config:
    type: str = "transformer"
    d_model: int = 8
    nhead: int = 2
    ffn_dim: int = 16
    transformer_layers: int = 1
    dropout: float = 0.1
    tie_embeddings: bool = True


def test_accepts_dataclass_and_dictconfig():
    assert isinstance(build_model(Config(), 10, 10), TransformerSeq2Seq)
    schema = OmegaConf.structured(ModelConfig(**{**SMALL, "type": ModelType.basic}))  # enum fields
    assert isinstance(build_model(schema, 10, 10).decoder, BasicDecoder)
    model = build_model(OmegaConf.create({**SMALL, "type": "basic"}), 10, 12)
    assert model.project(torch.zeros(1, SMALL["decoder_hidden"])).shape == (1, 12)


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("type", "rnn", ", ".join(MODEL_TYPES)),
        ("attention", "bilinear", ", ".join(ATTENTIONS)),
        ("rnn_type", "elman", ", ".join(RNNS)),
    ],
)
def test_unknown_choices_name_valid_values(field, value, valid):
    with pytest.raises(ValueError, match=valid):
        build_model({**SMALL, field: value}, 10, 10)


@pytest.mark.parametrize(
    ("overrides", "projected"),
    [({"decoder_hidden": 16}, False), ({"decoder_hidden": 20}, True), ({"type": "transformer"}, False)],
)
def test_tied_embeddings_share_the_weight(overrides, projected):
    model = small_model(tie_embeddings=True, **overrides)
    embedding = model.tgt_embed if isinstance(model, TransformerSeq2Seq) else model.decoder.embed
    output = model.output[-1] if projected else model.output
    assert output.weight is embedding.weight
    assert isinstance(model.output, torch.nn.Sequential) == projected
    b = random_batch(0, size=2)
    hidden, _ = model(b["src"], b["src_lengths"], b["tgt_in"])
    model.project(hidden).sum().backward()
    assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0


def test_shared_embeddings_are_one_matrix_for_source_target_and_output():
    """`model.share_embeddings` (fairseq's --share-all-embeddings with tie_embeddings): one V x d matrix, which the
    gradients of the encoder input, decoder input and output all reach."""
    separate = small_model(type="transformer", tie_embeddings=True)
    shared = small_model(type="transformer", tie_embeddings=True, share_embeddings=True)
    assert shared.src_embed is shared.tgt_embed and shared.output.weight is shared.src_embed.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) - count(shared) == 20 * 16
    b = random_batch(0, size=2)
    hidden, _ = shared(b["src"], b["src_lengths"], b["tgt_in"])
    shared.project(hidden).sum().backward()
    source_only = sorted(set(b["src"].flatten().tolist()) - set(b["tgt_in"].flatten().tolist()) - {PAD_ID})
    assert source_only and shared.src_embed.weight.grad[source_only].abs().sum() > 0
    with pytest.raises(ValueError, match="share_embeddings needs one vocabulary for both sides"):
        small_model(type="transformer", tie_embeddings=True, share_embeddings=True, src_vocab=30)


def test_options_newer_than_a_checkpoint_take_their_default():
    """A checkpoint's model hyperparameters from before `share_embeddings` (or the RNNs' `word_dropout`) existed
    still build (unshared, no word dropout)."""
    model = build_model({**SMALL, "type": "transformer", "dropout": 0.2}, 20, 20)
    assert model.src_embed is not model.tgt_embed
    assert model.decoder_layers[0].self_attn.dropout == model.decoder_layers[0].ffn[2].p == 0.2  # = dropout
    rnn = build_model(SMALL, 20, 20)  # from before `word_dropout`: none
    assert rnn.encoder.word_dropout.p == rnn.decoder.word_dropout.p == 0.0
    with pytest.raises(KeyError):
        build_model({k: v for k, v in SMALL.items() if k != "d_model"} | {"type": "transformer"}, 20, 20)


def test_transformer_dropout_placement_follows_fairseq_options():
    """`dropout` on block outputs; `attention_dropout` / `activation_dropout` (None: `dropout`) on the attention
    weights and after the feed-forward ReLU, in every encoder and decoder layer."""
    default = small_model(type="transformer", dropout=0.3)
    apart = small_model(type="transformer", dropout=0.3, attention_dropout=0.0, activation_dropout=0.1)
    for model, attention, activation in ((default, 0.3, 0.3), (apart, 0.0, 0.1)):
        for layer in model.encoder.layers:
            assert (layer.self_attn.dropout, layer.dropout.p, layer.dropout1.p) == (attention, activation, 0.3)
        for layer in model.decoder_layers:
            assert layer.self_attn.dropout == layer.cross_attn.dropout == attention
            assert (layer.ffn[2].p, layer.dropout.p) == (activation, 0.3)
    torch.manual_seed(0)
    b = random_batch(0, size=4)
    apart.train()
    hidden, _ = apart(b["src"], b["src_lengths"], b["tgt_in"])
    assert torch.isfinite(hidden).all()
    with pytest.raises(ValueError, match=r"model.attention_dropout must be in \[0, 1\), got 1.5"):
        build_model({**SMALL, "type": "transformer", "attention_dropout": 1.5}, 20, 20)


def test_transformer_post_norm_normalises_each_block_output():
    """`norm_first=False` (post-norm, fairseq's default): every encoder and decoder layer ends in a LayerNorm
    (each position's output has mean 0, variance 1) and no final norm follows the stacks; pre-norm layers
    leave the residual stream unnormalised and one LayerNorm ends each stack."""
    b = random_batch(0, size=4)
    for norm_first in (True, False):
        model = small_model(type="transformer", norm_first=norm_first)
        assert all(layer.norm_first == norm_first for layer in model.encoder.layers)
        assert (model.encoder.norm is None) == (not norm_first)
        enc = model.encode(b["src"], b["src_lengths"])
        x = model._embed(model.tgt_embed, b["tgt_in"])
        causal = torch.ones(x.size(1), x.size(1), dtype=torch.bool).triu(1)
        out, _ = model.decoder_layers[0](x, enc.memory, causal, ~enc.mask, need_weights=False)
        normalised = torch.allclose(out.mean(-1), torch.zeros(()), atol=1e-5) and torch.allclose(
            out.var(-1, unbiased=False), torch.ones(()), atol=1e-3)
        assert normalised == (not norm_first)
