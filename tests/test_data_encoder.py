"""Bulk encoders give exactly sentencepiece's ids: the word cache (BPE) on awkward spacing and characters, across
batches and cache resets; unigram goes through sentencepiece's threads."""

import numpy as np
import pytest

from lightning_nmt.data.encoder import ThreadedEncoder, WordCacheEncoder
from lightning_nmt.data.sample import generate_pairs
from lightning_nmt.data.tokenizer import Tokenizer

PAIRS = generate_pairs(1500, seed=8)
AWKWARD = ["", " ", "   ", "a  b", " leading", "trailing ", "  both  ", "tab\there", "x\ry", "new\nline",
           "ünïcödé 漢字 ✓ ‘quotes’", "a\u3000b\u00a0c", "\u2581lone \u2581", "in\u2581side", "éé éé éé", "ab" * 300]


def split(ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    ends = np.cumsum(lengths)
    return [ids[end - n:end].tolist() for n, end in zip(lengths.tolist(), ends.tolist(), strict=True)]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_bulk_encoders_equal_sentencepiece(model_type):
    tokenizer = Tokenizer.train([en for en, _ in PAIRS], [fr for _, fr in PAIRS], model_type=model_type,
                                vocab_size=600, joint=False)
    encode_src, encode_tgt = tokenizer.bulk_encoders(num_threads=2)
    kind = WordCacheEncoder if model_type == "bpe" else ThreadedEncoder
    assert isinstance(encode_src, kind) and encode_src is not encode_tgt
    lines = [fr for _, fr in PAIRS[:400]] + AWKWARD
    got = []
    for start in range(0, len(lines), 97):  # several batches: words learned in one are reused in the next
        ids, lengths = encode_tgt(lines[start:start + 97])
        assert ids.dtype == np.int32 and lengths.dtype == np.int64
        got += split(ids, lengths)
    assert got == tokenizer.encode_tgt(lines)
    assert split(*encode_src([])) == []


def test_word_cache_starts_afresh_when_full_and_stays_exact():
    tokenizer = Tokenizer.train([en for en, _ in PAIRS], [fr for _, fr in PAIRS], model_type="bpe", vocab_size=600)
    encoder = WordCacheEncoder(tokenizer._src, num_threads=1, max_words=50)
    lines = [en for en, _ in PAIRS] + AWKWARD
    got = []
    for start in range(0, len(lines), 40):
        got += split(*encoder(lines[start:start + 40]))
        assert len(encoder._index) <= 50 + 40 * 31  # reset above max_words: at most one batch's new words more
    assert got == tokenizer.encode_src(lines)
