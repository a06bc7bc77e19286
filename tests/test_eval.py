"""BLEU by source length: the groups split the test set by length and score each group alone."""

from __future__ import annotations

import pytest

from lightning_nmt.eval import bleu_by_length


def test_bleu_by_length_groups_and_scores() -> None:
    sources = [" ".join(["w"] * n) for n in (9, 1, 5, 3, 7, 11)]
    refs = [f"the reference sentence number {i} is here ." for i in range(6)]
    hyps = list(refs)
    hyps[5] = "something else entirely"  # the longest source (11 words) is translated badly
    hyps[0] = hyps[0].upper()  # the 9-word source: wrong case only, which the lowercased BLEU forgives
    groups = bleu_by_length(sources, hyps, refs, buckets=3, tgt_lang="en")
    assert [(g["min_words"], g["max_words"], g["sentences"]) for g in groups] == [(1, 3, 2), (5, 7, 2), (9, 11, 2)]
    assert groups[0]["bleu"] == pytest.approx(100.0) and groups[1]["bleu"] == pytest.approx(100.0)
    assert groups[2]["bleu"] < 90.0
    assert groups[2]["bleu_tok_lc"] > groups[2]["bleu"]  # the upper-cased sentence counts as correct
    assert groups[2]["bleu_tok_lc"] < 90.0


def test_data_in_the_other_direction_than_the_checkpoint_is_an_error() -> None:
    """An en->de model scored on de->en data printed a BLEU near 0 without a word."""
    from lightning_nmt.errors import ConfigError
    from lightning_nmt.eval import check_direction

    trained = {"corpus": "multi30k", "src_lang": "en", "tgt_lang": "de"}
    check_direction(trained, {"corpus": "files", "src_lang": "en", "tgt_lang": "de"})
    with pytest.raises(ConfigError, match="translates en->de, but data is de->en: pass data.src_lang=en "):
        check_direction(trained, {"corpus": "multi30k", "src_lang": "de", "tgt_lang": "en"})
    check_direction(trained, {"corpus": "files", "src_lang": "eng", "tgt_lang": "deu"})  # other labels pass
    check_direction({}, {"corpus": "multi30k", "src_lang": "de", "tgt_lang": "en"})  # no data hparams
