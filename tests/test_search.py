"""Greedy and beam search: hand-worked examples on a stub model, then agreement checks on real models."""

import math

import pytest
import torch

from lightning_nmt.data.tokenizer import BOS_ID, EOS_ID
from lightning_nmt.models import EncoderOutput, Seq2Seq
from lightning_nmt.models.base import length_mask
from lightning_nmt.search import DecodingConfig, search
from lightning_nmt.search.beam import beam_search
from lightning_nmt.search.greedy import greedy
from tests.test_models_build import MODEL_KINDS, make_batch, random_batch, small_model

A, B = 4, 5  # the stub's two words


def probabilities(after_bos, after_a, after_b):
    """A (V, V) table of next-token probabilities (EOS, A, B) given the previous token."""
    table = torch.full((6, 6), 1e-9)
    for previous, (eos, a, b) in ((BOS_ID, after_bos), (A, after_a), (B, after_b)):
        table[previous, [EOS_ID, A, B]] = torch.tensor([eos, a, b])
    return table


# sentence kinds, chosen by the first source token (4 + kind)
KINDS = torch.stack(
    [
        probabilities((0.1, 0.5, 0.4), (0.4, 0.3, 0.3), (0.9, 0.05, 0.05)),  # greedy "a" loses to "b"
        probabilities((0.01, 0.6, 0.39), (0.01, 0.6, 0.39), (0.01, 0.6, 0.39)),  # runs to the length limit
        probabilities((0.9, 0.05, 0.05), (0.9, 0.05, 0.05), (0.9, 0.05, 0.05)),  # stops at once
    ]
)


class BigramStub(Seq2Seq):
    """Next token from a probability table of (sentence kind, previous token); records batch sizes (rows
    read) and the encoder output's rows (sentences)."""

    def __init__(self):
        super().__init__()
        self.log_probs = KINDS.log()
        self.batch_sizes, self.encoder_rows = [], []

    def encode(self, src, src_lengths):
        return EncoderOutput(src.unsqueeze(-1).float(), length_mask(src_lengths, src.size(1)))

    def decode(self, tgt_in, enc, return_attention):
        raise NotImplementedError

    def init_state(self, enc):
        return enc.memory[:, 0, 0].long() - 4  # the kind of each row

    def decode_step(self, tokens, enc, state):
        self.batch_sizes.append(len(tokens))
        self.encoder_rows.append(len(enc.mask))
        return self.log_probs[state, tokens], state, None

    def reorder(self, state, index):
        return state.index_select(0, index)


def gnmt(length, alpha):
    return ((5 + length) / 6) ** alpha


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_finds_what_greedy_misses(alpha):
    b = make_batch([[4, 9]])
    best = greedy(BigramStub(), b["src"], b["src_lengths"], DecodingConfig(length_penalty=alpha))
    assert best.tokens == [[[A]]] and best.attention is None
    torch.testing.assert_close(best.scores, torch.tensor([[math.log(0.5 * 0.4) / gnmt(2, alpha)]]))
    beam = search(BigramStub(), b["src"], b["src_lengths"], beam_size=2, nbest=2, length_penalty=alpha)
    assert beam.tokens == [[[B], [A]]]
    want = torch.tensor([[math.log(0.4 * 0.9), math.log(0.5 * 0.4)]]) / gnmt(2, alpha)
    torch.testing.assert_close(beam.scores, want)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_length_limit_forces_eos(beam_size):
    b = make_batch([[5, 9, 9], [5]])  # source lengths 4 and 2 (EOS included)
    result = search(
        BigramStub(), b["src"], b["src_lengths"], beam_size=beam_size, max_len_ratio=1.5, max_len_offset=2
    )
    max_lens = [math.ceil(4 * 1.5) + 2, math.ceil(2 * 1.5) + 2]  # 8, 5 (EOS included)
    assert [hyps[0] for hyps in result.tokens] == [[A] * (n - 1) for n in max_lens]
    want = [((n - 1) * math.log(0.6) + math.log(0.01)) / gnmt(n, 1.0) for n in max_lens]
    torch.testing.assert_close(result.scores[:, 0], torch.tensor(want))


@pytest.mark.parametrize("beam_size", [1, 2])
def test_min_length_delays_eos(beam_size):
    # kind 2 stops at once; kind 0 after one word. With min_len_ratio 1.0 no hypothesis may end before
    # ceil(src_len) tokens (EOS included), capped at the maximum length.
    b = make_batch([[6, 9], [4, 9, 9]])  # source lengths 3 and 4 (EOS included)
    result = search(BigramStub(), b["src"], b["src_lengths"], beam_size=beam_size, min_len_ratio=1.0,
                    max_len_ratio=1.5, max_len_offset=0)
    assert [len(hyps[0]) + 1 for hyps in result.tokens] == [3, 4]
    capped = search(BigramStub(), b["src"], b["src_lengths"], beam_size=beam_size, min_len_ratio=9.0,
                    max_len_ratio=1.5, max_len_offset=0)
    assert [len(hyps[0]) + 1 for hyps in capped.tokens] == [math.ceil(3 * 1.5), math.ceil(4 * 1.5)]


def test_finished_sentences_leave_the_batch():
    b = make_batch([[6, 9], [5, 9, 9], [4]])  # stops at once, runs to max length 11, stops after 2
    stub = BigramStub()
    result = greedy(stub, b["src"], b["src_lengths"], DecodingConfig())
    assert result.tokens == [[[]], [[A] * 10], [[A]]]
    assert stub.batch_sizes == [3, 2] + [1] * 9
    stub = BigramStub()
    result = search(stub, b["src"], b["src_lengths"], beam_size=2)
    assert result.tokens == [[[]], [[A] * 10], [[B]]]
    assert stub.batch_sizes == [3, 6] + [2] * 9  # the first step reads one row per sentence, not k
    assert stub.encoder_rows == [3, 3] + [1] * 9  # one per sentence: its k hypotheses share it


def test_beam_stops_when_best_candidate_ends_if_asked():
    # kind 2: EOS (0.9) is the best first candidate, but the second finished hypothesis ("A" EOS) comes a step later
    b = make_batch([[6, 9]])
    for beam_stop, steps, nbest in (("k_finished", [1, 2], [[], [A]]), ("best_finished", [1], [[]])):
        stub = BigramStub()
        result = search(stub, b["src"], b["src_lengths"], beam_size=2, nbest=1, beam_stop=beam_stop)
        assert stub.batch_sizes == steps and result.tokens == [[nbest[0]]]
        torch.testing.assert_close(result.scores, torch.tensor([[math.log(0.9) / gnmt(1, 1.0)]]))
    with pytest.raises(ValueError, match="k_finished, best_finished"):
        search(BigramStub(), b["src"], b["src_lengths"], beam_size=2, beam_stop="never")


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_best_finished_stop_scores_no_better_than_the_full_search(kind):
    """Stopping early keeps a subset of the full search's finished hypotheses: a valid hypothesis (its score is
    its teacher-forced score) that scores no better than the full search's best."""
    model = small_model(**MODEL_KINDS[kind])
    b = random_batch(8, size=6)
    full = search(model, b["src"], b["src_lengths"], beam_size=3, length_penalty=0.6)
    early = search(model, b["src"], b["src_lengths"], beam_size=3, length_penalty=0.6, beam_stop="best_finished")
    for i in range(6):
        assert early.scores[i, 0] <= full.scores[i, 0] + 1e-5
        score, _ = rescore(model, b["src"][i], b["src_lengths"][i], early.tokens[i][0], 0.6)
        torch.testing.assert_close(early.scores[i, 0], score, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_beam_of_one_is_greedy(kind, alpha):
    model = small_model(**MODEL_KINDS[kind])
    b = random_batch(4, size=6)
    expected = greedy(model, b["src"], b["src_lengths"], DecodingConfig(length_penalty=alpha))
    result = beam_search(model, b["src"], b["src_lengths"], DecodingConfig(beam_size=1, length_penalty=alpha))
    assert result.tokens == expected.tokens
    torch.testing.assert_close(result.scores, expected.scores)


def rescore(model, src, src_length, tokens, alpha):
    """Teacher-forced score of `tokens` + EOS and the attention (T_out, S) of that pass."""
    tgt_in, tgt_out = torch.tensor([[BOS_ID, *tokens]]), torch.tensor([[*tokens, EOS_ID]])
    hidden, attention = model(src[None, :src_length], src_length[None], tgt_in, return_attention=True)
    log_probs = model.project(hidden).log_softmax(-1).gather(-1, tgt_out.unsqueeze(-1)).sum()
    return log_probs / gnmt(len(tokens) + 1, alpha), None if attention is None else attention[0]


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_scores_and_attention_match_teacher_forcing(kind, beam_size):
    model = small_model(**MODEL_KINDS[kind])
    b = random_batch(5, size=4)
    result = search(
        model, b["src"], b["src_lengths"], beam_size=beam_size, nbest=beam_size, length_penalty=0.6
    )
    assert (result.attention is None) == (kind == "basic")
    for i in range(4):
        assert result.scores[i].tolist() == sorted(result.scores[i].tolist(), reverse=True)
        assert len({tuple(hyp) for hyp in result.tokens[i]}) == beam_size
        for n, hyp in enumerate(result.tokens[i]):
            score, attention = rescore(model, b["src"][i], b["src_lengths"][i], hyp, 0.6)
            torch.testing.assert_close(result.scores[i, n], score, atol=1e-4, rtol=1e-4)
            if attention is not None:
                assert result.attention[i][n].shape == (len(hyp) + 1, b["src_lengths"][i])
                torch.testing.assert_close(result.attention[i][n], attention, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_batched_beam_equals_one_sentence_at_a_time(kind):
    model = small_model(**MODEL_KINDS[kind])
    b = random_batch(6, size=5, min_len=1, max_len=12)
    batched = search(model, b["src"], b["src_lengths"], beam_size=4, nbest=2)
    for i in range(5):
        length = b["src_lengths"][i]
        alone = search(model, b["src"][i : i + 1, :length], length[None], beam_size=4, nbest=2)
        assert alone.tokens[0] == batched.tokens[i]
        torch.testing.assert_close(alone.scores[0], batched.scores[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_decode_step_reads_several_hypotheses_per_sentence(kind):
    """Rows r * i .. r * i + r - 1 of a decoding step belong to sentence i of the encoder output (one row
    per sentence, as beam search passes it): step after step, the same logits and weights as with the
    encoder output copied for every row."""
    model = small_model(**MODEL_KINDS[kind])
    batch = random_batch(3, size=3)
    r = 4
    enc = model.encode(batch["src"], batch["src_lengths"])
    per_row = enc.index_select(torch.arange(3).repeat_interleave(r))
    tokens = torch.randint(4, 20, (3 * r,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = model.reorder(model.init_state(enc), torch.arange(3).repeat_interleave(r))
        for _ in range(3):  # a few steps, so that the states differ from row to row
            logits, state_shared, weights = model.decode_step(tokens, enc, state)
            want_logits, _, want_weights = model.decode_step(tokens, per_row, state)
            torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
            if weights is not None:
                torch.testing.assert_close(weights, want_weights, atol=1e-6, rtol=1e-5)
            state, tokens = state_shared, logits.argmax(-1)
    assert not torch.allclose(logits[0], logits[r])


def test_keys_are_projected_once():
    model = small_model(attention="concat")
    calls = []
    model.decoder.attention.key_proj.register_forward_hook(lambda *_: calls.append(1))
    b = random_batch(7, size=3)
    search(model, b["src"], b["src_lengths"], beam_size=3)
    assert len(calls) == 1


def test_nbest_must_not_exceed_beam():
    b = make_batch([[4]])
    with pytest.raises(ValueError, match="nbest"):
        search(BigramStub(), b["src"], b["src_lengths"], beam_size=2, nbest=3)
