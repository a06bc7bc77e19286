"""Is a difference between two configurations real, or is it the seed? Seed statistics and paired tests on the
sentences of one test set, after Clark et al. 2011 ("Better Hypothesis Testing for Statistical Machine
Translation: Controlling for Optimizer Instability", the MultEval tool).

- Over seeds: mean, standard deviation and a 95% t-interval of the mean (`seed_summary`).
- One seed a side: sacreBLEU's own paired bootstrap resampling and paired approximate randomization
  (`sacrebleu.significance.PairedTest`, its seed `SACREBLEU_SEED`, 12345 by default).
- Several seeds: approximate randomization stratified by seed (`stratified_ar`). Each trial swaps the two
  configurations' translations of each sentence with probability 1/2, independently within each seed pair (the
  strata), and scores both sides on the pooled sufficient statistics of all their seeds. With one stratum it is
  sacreBLEU's paired AR, draw for draw.

Sufficient statistics are computed once per run and sentence (`sentence_stats`); trials only sum them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sacrebleu
from sacrebleu.metrics.base import Metric
from scipy import stats as scipy_stats

METRICS = ("bleu", "chrf")
AR_TRIALS = 10_000
"""sacreBLEU's default number of approximate randomization trials."""
BOOTSTRAP_SAMPLES = 1_000
"""sacreBLEU's default number of paired bootstrap resamples."""
ROWS_PER_BLOCK = 1_000
"""Trials whose swap masks are multiplied at once (bounds the float copy of the masks)."""


def sacrebleu_seed() -> int | None:
    """The seed sacreBLEU's tests use: `SACREBLEU_SEED` (12345 unless set; `none`: fresh entropy)."""
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    return None if seed.lower() == "none" else int(seed)


def metric(name: str, lowercase: bool = False) -> Metric:
    """The sacreBLEU metric `lightning_nmt.metrics` scores with: BLEU (13a) or chrF (no word n-grams)."""
    if name == "bleu":
        return sacrebleu.metrics.BLEU(lowercase=lowercase)
    if name == "chrf":
        return sacrebleu.metrics.CHRF(lowercase=lowercase)
    raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")


def sentence_stats(scorer: Metric, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N, K) sufficient statistics of each sentence (BLEU: lengths and n-gram matches; chrF: character n-gram
    counts): a corpus score is a function of their sum."""
    return np.asarray(scorer._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=np.float64)


def corpus_score(scorer: Metric, summed: np.ndarray) -> float:
    """The corpus score of summed statistics (K,)."""
    return float(scorer._compute_score_from_stats(summed).score)


def stratified_ar(scorer: Metric, base: np.ndarray, other: np.ndarray, trials: int = AR_TRIALS,
                  seed: int | None = 12345) -> float:
    """Two-sided p-value of approximate randomization stratified by seed.

    `base`, `other`: (R, N, K) statistics of R paired seeds (strata) of the two configurations on the same N
    sentences. The statistic is |score(pooled other) - score(pooled base)|; p = (c + 1) / (trials + 1), c the
    trials whose statistic exceeds the observed one (MultEval's and sacreBLEU's rule). Two sides with equal
    scores get p = 1: no difference to test (sacreBLEU's rule would give 1 / (trials + 1), as if it were real)."""
    if base.shape != other.shape or base.ndim != 3:
        raise ValueError(f"statistics of the two sides must both be (seeds, sentences, K), got {base.shape} and "
                         f"{other.shape}")
    rows = base.shape[0] * base.shape[1]
    diff = (other - base).reshape(rows, -1)  # what a swap moves from `other` to `base`
    base_sum, other_sum = base.sum((0, 1)), other.sum((0, 1))
    observed = abs(corpus_score(scorer, other_sum) - corpus_score(scorer, base_sum))
    if observed == 0:
        return 1.0
    # one draw for all trials, as sacreBLEU's paired AR draws it: the same seed gives the same swaps
    swaps = np.random.default_rng(seed).integers(2, size=(trials, rows), dtype=bool)
    exceed = 0
    for start in range(0, trials, ROWS_PER_BLOCK):
        moved = swaps[start:start + ROWS_PER_BLOCK].astype(np.float64) @ diff  # (trials in block, K)
        for shift in moved:
            delta = abs(corpus_score(scorer, other_sum - shift) - corpus_score(scorer, base_sum + shift))
            exceed += delta > observed
    return (exceed + 1) / (trials + 1)


@dataclass(frozen=True)
class SacreBleuTests:
    """sacreBLEU's paired tests of one system against a baseline (one seed a side)."""

    bootstrap_p: float
    ar_p: float


def sacrebleu_paired(metric_name: str, lowercase: bool, base: Sequence[str], other: Sequence[str],
                     references: Sequence[str]) -> SacreBleuTests:
    """p-values of sacreBLEU's paired bootstrap (1,000 resamples) and paired approximate randomization
    (10,000 trials), as `sacrebleu --paired-bs` / `--paired-ar` compute them; 1 for equal scores (see
    `stratified_ar`)."""
    from sacrebleu.significance import PairedTest

    p = {}
    for kind in ("bs", "ar"):
        test = PairedTest([("baseline", list(base)), ("system", list(other))], {metric_name: metric(metric_name,
                          lowercase)}, [list(references)], test_type=kind)
        _, scores = test()
        (base_result, result) = next(column for name, column in scores.items() if name != "System")
        p[kind] = 1.0 if result.score == base_result.score else float(result.p_value)
    return SacreBleuTests(p["bs"], p["ar"])


def bootstrap_diff_ci(scorer: Metric, base: np.ndarray, other: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int | None = 12345) -> tuple[float, float]:
    """95% paired bootstrap interval of score(other) - score(base) over resampled sentences; (N, K) each."""
    indices = np.random.default_rng(seed).choice(len(base), size=(samples, len(base)), replace=True)
    diffs = np.sort([corpus_score(scorer, other[i].sum(0)) - corpus_score(scorer, base[i].sum(0)) for i in indices])
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


# ---- over seeds --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedSummary:
    """A metric over a configuration's seeds: n, mean, sample standard deviation and the 95% t-interval of the
    mean (std and interval None with one seed: nothing is known of the spread)."""

    n: int
    mean: float
    std: float | None
    ci: tuple[float, float] | None


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student's t-interval of the mean of `values` (None for fewer than 2)."""
    n = len(values)
    if n < 2:
        return None
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def seed_summary(values: Sequence[float]) -> SeedSummary | None:
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return SeedSummary(len(values), float(np.mean(values)), std, t_interval(values))


def pair_seeds(base: Sequence[int], other: Sequence[int]) -> tuple[list[tuple[int, int]], int]:
    """Seeds of two configurations paired for a stratified test, and the number left unpaired.

    By value where the two share seed values (a seed both ran; the others are left out), by rank (sorted order)
    where they share none, as when one configuration's seeds are split in two groups."""
    common = sorted(set(base) & set(other))
    pairs = list(zip(common, common)) if common else list(zip(sorted(base), sorted(other)))
    return pairs, len(base) + len(other) - 2 * len(pairs)
