"""Attention score functions against hand-worked examples; masking; block vs single-step scoring."""

import math

import pytest
import torch

from lightning_nmt.models.attention import ATTENTIONS, build_attention

# three encoder states and one decoder state
KEYS = [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [2.0, 0.0, 1.0]]
QUERY = [1.0, 0.0, 2.0]


def attend(name, query, keys, mask=None, **weights):
    """Run attention `name` with parameters set to `weights`: one sentence, one query."""
    attention = build_attention(name, len(query), len(keys[0]))
    with torch.no_grad():
        for param, value in weights.items():
            attention.get_parameter(param).copy_(torch.tensor(value))
    memory = torch.tensor([keys])
    mask = torch.tensor([mask or [True] * len(keys)])
    context, w = attention(torch.tensor([[query]]), attention.precompute_keys(memory), memory, mask)
    return context[0, 0], w[0, 0]


def expected(scores, keys, mask=None):
    """Softmax over the unmasked scores and the weighted sum of the keys, by hand."""
    mask = mask or [True] * len(scores)
    exps = [math.exp(s) if m else 0.0 for s, m in zip(scores, mask, strict=True)]
    weights = [e / sum(exps) for e in exps]
    context = [sum(w * k[i] for w, k in zip(weights, keys, strict=True)) for i in range(len(keys[0]))]
    return torch.tensor(context), torch.tensor(weights)


def check(result, want):
    torch.testing.assert_close(result[0], want[0])
    torch.testing.assert_close(result[1], want[1])


def test_dot():
    # h.s = 1, 2, 4
    check(attend("dot", QUERY, KEYS), expected([1.0, 2.0, 4.0], KEYS))


def test_scaled_dot():
    scale = math.sqrt(3)
    check(attend("scaled_dot", QUERY, KEYS), expected([1 / scale, 2 / scale, 4 / scale], KEYS))


def test_general():
    # W s = (s1, 0, s0) -> h . W s = s1 + 2 s0 = 3, 1, 4
    w = [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    check(attend("general", QUERY, KEYS, **{"key_proj.weight": w}), expected([3.0, 1.0, 4.0], KEYS))


def test_concat():
    # W_q h = (h2, 0, 0) = (2, 0, 0); W_k s = (s0, s2, 0); v = (1, -1, 0)
    # score = tanh(2 + s0) - tanh(s2) = tanh(3) - tanh(0), tanh(2) - tanh(1), tanh(4) - tanh(1)
    params = {
        "query_proj.weight": [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        "key_proj.weight": [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
        "v.weight": [[1.0, -1.0, 0.0]],
    }
    scores = [math.tanh(3), math.tanh(2) - math.tanh(1), math.tanh(4) - math.tanh(1)]
    check(attend("concat", QUERY, KEYS, **params), expected(scores, KEYS))


@pytest.mark.parametrize("name", ["dot", "scaled_dot"])
def test_padding_gets_exactly_zero(name):
    mask = [True, True, False]
    context, weights = attend(name, QUERY, KEYS, mask)
    assert weights[2].item() == 0.0
    scale = math.sqrt(3) if name == "scaled_dot" else 1.0
    check((context, weights), expected([1.0 / scale, 2.0 / scale, 4.0 / scale], KEYS, mask))


def test_dot_projects_query_when_sizes_differ():
    attention = build_attention("dot", 5, 3)
    with torch.no_grad():
        attention.query_proj.weight.copy_(torch.eye(3, 5))  # keeps the first three components
    memory = torch.tensor([KEYS])
    query = torch.tensor([[QUERY + [7.0, -7.0]]])
    _, weights = attention(
        query, attention.precompute_keys(memory), memory, torch.ones(1, 3, dtype=torch.bool)
    )
    torch.testing.assert_close(weights[0, 0], expected([1.0, 2.0, 4.0], KEYS)[1])


@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_block_equals_steps_and_masking(name):
    torch.manual_seed(0)
    attention = build_attention(name, 6, 4)
    memory, query = torch.randn(3, 5, 4), torch.randn(3, 7, 6)
    mask = torch.arange(5) < torch.tensor([[5], [2], [1]])
    keys = attention.precompute_keys(memory)
    context, weights = attention(query, keys, memory, mask)
    assert context.shape == (3, 7, 4) and weights.shape == (3, 7, 5)
    assert torch.all(weights.masked_select(~mask.unsqueeze(1)) == 0.0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7))
    for t in range(7):
        step_context, step_weights = attention(query[:, t : t + 1], keys, memory, mask)
        torch.testing.assert_close(step_context, context[:, t : t + 1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(step_weights, weights[:, t : t + 1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_hypotheses_of_a_sentence_read_its_keys_together(name):
    """Beam search: r query rows per sentence (grouped by sentence) against one copy of the sentence's
    keys give what r copies of the keys give, row by row."""
    torch.manual_seed(0)
    attention = build_attention(name, 6, 4)
    r = 3
    memory, query = torch.randn(2, 5, 4), torch.randn(2 * r, 1, 6)
    mask = torch.arange(5) < torch.tensor([[5], [2]])
    keys = attention.precompute_keys(memory)
    context, weights = attention(query, keys, memory, mask)
    assert context.shape == (2 * r, 1, 4) and weights.shape == (2 * r, 1, 5)
    rows = torch.arange(2).repeat_interleave(r)  # 0 0 0 1 1 1
    want_context, want_weights = attention(query, keys[rows], memory[rows], mask[rows])
    torch.testing.assert_close(context, want_context, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights, want_weights, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(weights[0], weights[r])  # the two sentences differ: rows were not mixed up


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid values: " + ", ".join(ATTENTIONS)):
        build_attention("bilinear", 4, 4)
