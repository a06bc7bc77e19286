"""The literature metrics: lowercased Moses-tokenised BLEU against hand-checked n-gram counts."""

from __future__ import annotations

import math

import pytest

from lightning_nmt.metrics import bleu, bleu_tok_lc, chrf


def test_tok_lc_ignores_case_and_tokenisation_that_cased_bleu_counts() -> None:
    hyp, ref = ["Ein Hund läuft."], ["ein hund läuft ."]
    assert bleu_tok_lc(hyp, ref, "de").score == pytest.approx(100.0)
    assert bleu(hyp, ref).score < 100.0  # "Ein"/"ein" and "Hund"/"hund" differ when cased
    assert chrf(hyp, ref).score < 100.0


def test_tok_lc_matches_hand_counted_ngrams() -> None:
    # Moses splits the reference's final period: "zwei hunde spielen im schnee ." (6 tokens, lowercased);
    # hypothesis "zwei hunde spielen im park" (5 tokens). Clipped n-gram matches:
    #   1-grams 4/5 (all but "park"), 2-grams 3/4, 3-grams 2/3, 4-grams 1/2 ("zwei hunde spielen im")
    # geometric mean = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = (1/5) ** (1/4)
    # brevity penalty = exp(1 - ref_len / hyp_len) = exp(1 - 6/5) = exp(-0.2)
    score = bleu_tok_lc(["zwei Hunde spielen im Park"], ["Zwei Hunde spielen im Schnee."], "de")
    assert score.score == pytest.approx(100 * math.exp(-0.2) * 0.2 ** 0.25, abs=1e-6)  # 54.751825...
    assert score.signature.startswith("nrefs:1|case:lc|eff:no|tok:none|") and score.signature.endswith("|moses:de")


def test_cased_bleu_signature_is_sacrebleu_default() -> None:
    score = bleu(["Two dogs play in the snow."], ["Two dogs play in the snow."])
    assert score.score == pytest.approx(100.0)
    assert score.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|")


def test_tok_lc_does_not_warn_about_the_tokenisation_it_does_on_purpose(caplog) -> None:
    """sacreBLEU warns when 100 lines end in a tokenised period; `bleu_tok_lc` tokenises on purpose, so
    `lnmt-eval` must not print that advice (its cased `bleu` still gets sacreBLEU's checks)."""
    lines = [f"Hund {i} läuft über die Wiese." for i in range(150)]
    with caplog.at_level("WARNING"):
        assert bleu_tok_lc(lines, lines, "de").score == pytest.approx(100.0)
    assert not [r for r in caplog.records if r.name == "sacrebleu"]


def test_a_lowercase_model_is_scored_case_insensitively_and_the_signature_says_so() -> None:
    """A model trained with `data.tokenizer.lowercase` writes lowercase text: its validation BLEU (early stopping,
    the plateau schedule, the kept checkpoints) must not count every capital of the reference as an error."""
    from lightning_nmt.evaluation import EvalMetrics, Translations

    hyps, refs = ["ein hund läuft über die wiese ."] * 3, ["Ein Hund läuft über die Wiese ."] * 3
    assert bleu(hyps, refs).score < 40.0 and chrf(hyps, refs).score < 90.0
    lowercase = bleu(hyps, refs, lowercase=True)
    assert lowercase.score == pytest.approx(100.0) and "|case:lc|" in lowercase.signature
    assert chrf(hyps, refs, lowercase=True).score == pytest.approx(100.0)
    translations = Translations(hyps, refs)
    assert EvalMetrics().compute(translations, None, lowercase=True)["bleu"] == pytest.approx(100.0)
    assert EvalMetrics().compute(translations, None, lowercase=False)["bleu"] < 40.0
