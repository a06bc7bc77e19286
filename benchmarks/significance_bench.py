"""Speed of lnmt-compare's significance test: approximate randomization stratified by seed, 10,000 trials over
1,000 sentences and 5 seeds a side, on one core (the target: under 5 s).

    python benchmarks/significance_bench.py [--sentences 1000] [--seeds 5] [--trials 10000] [--repeat 3]

The sentences are Multi30k's test2016 German references when ../shared/data/multi30k is there (else sentences of the
embedded corpus); each seed's "translations" are the references with a share of their words replaced. Prints the
time to extract the sentence statistics (once per run) and the median time of the test, for BLEU and chrF.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy loads
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gzip  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lightning_nmt import significance  # noqa: E402
from lightning_nmt.record import cpu_model  # noqa: E402

MULTI30K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k" / "test_2016_flickr.de.gz"


def references(n: int) -> tuple[list[str], str]:
    if MULTI30K_TEST.is_file():
        lines = gzip.open(MULTI30K_TEST, "rt", encoding="utf-8").read().splitlines()
        return (lines * (n // len(lines) + 1))[:n], f"Multi30k {MULTI30K_TEST.name}"
    from lightning_nmt.data.sample import generate_pairs

    return [tgt for _, tgt in generate_pairs(n, seed=1)], "the embedded corpus"


def corrupt(refs: list[str], error: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(w if rng.random() > error else "xx" for w in ref.split()) for ref in refs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=significance.AR_TRIALS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    refs, source = references(args.sentences)
    print(f"CPU: {cpu_model()}; {args.trials} trials, {len(refs)} sentences ({source}), {args.seeds} seeds a side, "
          f"one thread")
    for name in significance.METRICS:
        scorer = significance.metric(name)
        started = time.perf_counter()
        sides = [np.stack([significance.sentence_stats(scorer, corrupt(refs, error, 100 * side + s), refs)
                           for s in range(args.seeds)]) for side, error in enumerate((0.30, 0.28))]
        extract = time.perf_counter() - started
        times, p = [], None
        for _ in range(args.repeat):
            started = time.perf_counter()
            p = significance.stratified_ar(scorer, *sides, trials=args.trials)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        print(f"{name}: statistics of {2 * args.seeds} runs {extract:.2f} s; test median {median:.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeat} passes); p = {p:.4f}")


if __name__ == "__main__":
    main()
