"""Corpus scores of detokenized translations against raw references, as the published results compute them.

- `bleu`: sacreBLEU (cased, its own `13a` tokenisation of detokenized text): the honest modern number,
  comparable with any paper that reports a sacreBLEU signature.
- `bleu_tok_lc`: lowercased BLEU on Moses-tokenised text (`tokenizer.perl -l <lang>` + `multi-bleu.perl -lc`),
  the metric of published Multi30k results: LIUM-CVC's WMT17 system 39.00, Wu et al. 2021 41.02, nmtpy 37.33
  (en->de test_2016_flickr).
- `chrf`: sacreBLEU's chrF (character n-gram F-score), the WMT metrics-task baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import sacrebleu
from sacremoses import MosesTokenizer

VAL_METRICS = ("loss", "ppl", "bleu", "chrf")
"""What each validation logs (as `val/<name>`): what `callbacks.*.monitor` may name."""


@dataclass(frozen=True)
class Score:
    """A corpus score (0-100) and the sacreBLEU signature that says how it was computed."""

    score: float
    signature: str


def bleu(hypotheses: list[str], references: list[str], lowercase: bool = False) -> Score:
    """Cased sacreBLEU of detokenized text (tokenisation `13a`): compares with any sacreBLEU signature.
    `lowercase` (for a model trained on lowercased text): case-insensitive, `case:lc` in the signature."""
    metric = sacrebleu.metrics.BLEU(lowercase=lowercase)
    return Score(metric.corpus_score(hypotheses, [references]).score, str(metric.get_signature()))


def bleu_tok_lc(hypotheses: list[str], references: list[str], lang: str) -> Score:
    """Lowercased BLEU of Moses-tokenised hypotheses and references (`lang`: the target language), i.e.
    `tokenizer.perl -l lang -no-escape` + `multi-bleu.perl -lc`: the number published Multi30k results
    report (LIUM-CVC WMT17 39.00, Wu et al. 2021 41.02, nmtpy 37.33 on en->de test_2016_flickr)."""
    tokenize = _moses(lang)
    metric = sacrebleu.metrics.BLEU(tokenize="none", lowercase=True, force=True)  # tokenised on purpose: no warning
    score = metric.corpus_score([tokenize(h) for h in hypotheses], [[tokenize(r) for r in references]])
    return Score(score.score, f"{metric.get_signature()}|moses:{lang}")


def chrf(hypotheses: list[str], references: list[str], lowercase: bool = False) -> Score:
    """sacreBLEU's chrF (character 6-grams, beta 2, no word n-grams), computed on detokenized text;
    case-insensitive with `lowercase`."""
    metric = sacrebleu.metrics.CHRF(lowercase=lowercase)
    return Score(metric.corpus_score(hypotheses, [references]).score, str(metric.get_signature()))


def scoring(lowercase: bool) -> dict[str, object]:
    """How `bleu` and `chrf` score a model's test sets (its record's `scoring`): case, tokenisation, version."""
    return {"lowercase": lowercase, "bleu_tokenize": "13a", "chrf_word_order": 0, "sacrebleu": sacrebleu.__version__}


@lru_cache(maxsize=8)
def _moses(lang: str) -> Callable[[str], str]:
    """Moses tokenisation of one line for `lang` (kept: building the tokenizer compiles its rules)."""
    tokenizer = MosesTokenizer(lang=lang)
    return lambda text: tokenizer.tokenize(text, escape=False, return_str=True)
