"""The fast teacher-forced path agrees with step-by-step decoding; padding changes nothing."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lightning_nmt.data.tokenizer import PAD_ID
from lightning_nmt.models.attention import ATTENTIONS
from lightning_nmt.models.layers import WordDropout
from tests.test_models_build import MODEL_KINDS, make_batch, random_batch, small_model


def stepwise(model, batch):
    """Features (B, T, D) and attention (B, T, S) | None from feeding tgt_in one token at a time."""
    enc = model.encode(batch["src"], batch["src_lengths"])
    state = model.init_state(enc)
    features, weights = [], []
    for t in range(batch["tgt_in"].size(1)):
        step_features, state, step_weights = model.decoder.step(batch["tgt_in"][:, t], enc, state)
        features.append(step_features)
        weights.append(step_weights)
    attention = None if weights[0] is None else torch.stack(weights, dim=1)
    return torch.stack(features, dim=1), attention


def loss(model, hidden, batch):
    return F.cross_entropy(model.project(hidden).transpose(1, 2), batch["tgt_out"], ignore_index=PAD_ID)


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
@pytest.mark.parametrize("attention", [*ATTENTIONS, None])
def test_fast_path_equals_step_by_step(attention, rnn_type):
    kind = {"type": "basic"} if attention is None else {"attention": attention}
    model = small_model(rnn_type=rnn_type, encoder_layers=2, decoder_layers=2, **kind)
    batch = random_batch(1, size=4)
    hidden, fast_attention = model(batch["src"], batch["src_lengths"], batch["tgt_in"], return_attention=True)
    step_hidden, step_attention = stepwise(model, batch)
    torch.testing.assert_close(step_hidden, hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss(model, step_hidden, batch), loss(model, hidden, batch), atol=1e-5, rtol=0)
    if attention is None:
        assert fast_attention is None and step_attention is None
    else:
        torch.testing.assert_close(step_attention, fast_attention, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
def test_input_feeding_forward_equals_decode_steps(rnn_type):
    model = small_model(rnn_type=rnn_type, input_feeding=True, bidirectional=False)
    batch = random_batch(2, size=4)
    hidden, attention = model(batch["src"], batch["src_lengths"], batch["tgt_in"], return_attention=True)
    step_hidden, step_attention = stepwise(model, batch)
    torch.testing.assert_close(step_hidden, hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(step_attention, attention, atol=1e-5, rtol=0)


def test_input_feeding_changes_the_model():
    batch = random_batch(3, size=2)
    plain, _ = small_model(input_feeding=False)(batch["src"], batch["src_lengths"], batch["tgt_in"])
    feeding = small_model(input_feeding=True)
    assert feeding.decoder.rnn.input_size == 16 + 20
    fed, _ = feeding(batch["src"], batch["src_lengths"], batch["tgt_in"])
    assert not torch.allclose(plain, fed)


def test_word_dropout_drops_whole_words_in_training_only():
    """`WordDropout(p)` in training zeroes a position's whole embedding with probability p and scales the others by
    1 / (1 - p); in eval it is the identity."""
    torch.manual_seed(0)
    emb = torch.rand(64, 50, 8) + 1.0  # no zero entries
    dropped = WordDropout(0.25).train()(emb)
    zeroed = (dropped == 0).all(-1)  # (64, 50)
    assert torch.equal(dropped == 0, zeroed.unsqueeze(-1).expand_as(emb))  # whole vectors or nothing
    assert abs(zeroed.float().mean().item() - 0.25) < 0.02
    torch.testing.assert_close(dropped[~zeroed], emb[~zeroed] / 0.75)
    assert torch.equal(WordDropout(0.25).eval()(emb), emb)


@pytest.mark.parametrize("kind", ["basic", "input_feeding"])
def test_word_dropout_acts_on_source_and_target_in_training(kind):
    """`model.word_dropout`: an RNN with it is, in eval, the same model as without it (no parameters); in training
    it changes the encoder states (source words) and, with the encoder's kept equal, the decoder (target words)."""
    batch = random_batch(4, size=3)
    args = batch["src"], batch["src_lengths"], batch["tgt_in"]
    plain, dropping = small_model(**MODEL_KINDS[kind]), small_model(word_dropout=0.5, **MODEL_KINDS[kind])
    torch.testing.assert_close(dropping(*args)[0], plain(*args)[0])
    plain.train(), dropping.train()
    memory = plain.encoder(batch["src"], batch["src_lengths"])[0]
    assert not torch.allclose(dropping.encoder(batch["src"], batch["src_lengths"])[0], memory)
    enc = plain.encode(batch["src"], batch["src_lengths"])
    target_side = dropping.decoder(batch["tgt_in"], enc, dropping.init_state(enc))[0]
    assert not torch.allclose(target_side, plain.decoder(batch["tgt_in"], enc, plain.init_state(enc))[0])


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_padding_changes_nothing(kind):
    model = small_model(**MODEL_KINDS[kind])
    alone = make_batch([[5, 6, 7]], [[8, 9]])
    both = make_batch([[5, 6, 7], [4, 5, 6, 7, 8, 9, 10]], [[8, 9], [4, 5, 6, 7, 8, 9]])
    for name in ("src", "tgt_in"):  # one more padding column than needed
        both[name] = F.pad(both[name], (0, 1), value=PAD_ID)
    hidden, attention = model(alone["src"], alone["src_lengths"], alone["tgt_in"], return_attention=True)
    padded_hidden, padded_attention = model(
        both["src"], both["src_lengths"], both["tgt_in"], return_attention=True
    )
    torch.testing.assert_close(padded_hidden[:1, :3], hidden, atol=1e-5, rtol=0)
    if attention is not None:
        torch.testing.assert_close(padded_attention[:1, :3, :4], attention, atol=1e-5, rtol=0)
        assert torch.all(padded_attention[0, :, 4:] == 0.0)


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_cached_steps_equal_the_full_prefix(norm_first):
    """The Transformer's decoding cache (keys and values of the positions read) gives the logits and
    attention of recomputing the decoder over the whole prefix, also for beams that diverge and are
    reordered; pre-norm and post-norm."""
    model = small_model(type="transformer", seed=3, norm_first=norm_first)
    batch = random_batch(2, size=4)
    tgt, sentences = batch["tgt_in"], batch["tgt_in"].size(0)
    with torch.no_grad():
        enc = model.encode(batch["src"], batch["src_lengths"])
        features, attention = model.decode(tgt, enc, return_attention=True)
        state, logits, weights = model.init_state(enc), [], []
        for t in range(tgt.size(1)):
            step_logits, state, step_weights = model.decode_step(tgt[:, t], enc, state)
            logits.append(step_logits)
            weights.append(step_weights)
        torch.testing.assert_close(torch.stack(logits, 1), model.project(features), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.stack(weights, 1), attention, atol=1e-5, rtol=0)
        # two hypotheses per sentence that read different tokens, then swap places (a beam step)
        rows = torch.arange(sentences).repeat_interleave(2)
        state, prefix = model.reorder(state, rows), tgt[rows]
        extra = torch.randint(4, 20, (2 * sentences, 3), generator=torch.Generator().manual_seed(5))
        for t in range(2):
            _, state, _ = model.decode_step(extra[:, t], enc, state)
        swap = torch.arange(2 * sentences).view(sentences, 2).flip(1).reshape(-1)
        state, prefix = model.reorder(state, swap), torch.cat([prefix, extra[:, :2]], 1)[swap]
        cached, _, _ = model.decode_step(extra[swap, 2], enc, state)
        full, _ = model.decode(torch.cat([prefix, extra[swap, 2:]], 1), enc, return_attention=False)
        torch.testing.assert_close(cached, model.project(full[:, -1]), atol=1e-5, rtol=0)
        # the source's cross-attention keys and values projected once (eval-mode encode) or at each step
        assert enc.cross_kv is not None
        uncached, _, _ = model.decode_step(extra[swap, 2], replace(enc, cross_kv=None), state)
        torch.testing.assert_close(uncached, cached, atol=1e-5, rtol=0)
