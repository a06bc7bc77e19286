"""How often does lnmt-compare's test call a difference significant when there is none? The seeds of one
configuration are split into two groups, every distinct way (10 splits for 6 seeds), and each group is tested
against the other as `lnmt-compare --baseline` would (stratified approximate randomization, seeds paired by rank).

    python experiments/seed_calibration.py RUN_OR_SWEEP_DIR... [--trials 10000]

All runs given must be one configuration (`lnmt-compare`'s grouping), with at least 6 finished seeds and their kept
test translations. Prints each split's difference, p-values and flags, and how often p < 0.05 came out.
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

from lightning_nmt import significance
from lightning_nmt.compare import Configuration, StatsCache, group, load_runs, against_baseline


def splits(n: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every distinct split of n items into two halves (each unordered pair once)."""
    everyone = range(n)
    halves = [h for h in combinations(everyone, n // 2) if 0 in h] if n % 2 == 0 else list(combinations(everyone,
                                                                                                      n // 2))
    return [(h, tuple(i for i in everyone if i not in h)) for h in halves]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--trials", type=int, default=significance.AR_TRIALS)
    args = parser.parse_args()
    configs = [c for c in group(load_runs(args.paths)) if c.seeds]
    if len(configs) != 1:
        raise SystemExit(f"expected the runs of one configuration, got {len(configs)}: "
                         + "; ".join(c.label for c in configs))
    seeds = sorted(configs[0].seeds, key=lambda r: r.seed)
    if len(seeds) < 6:
        raise SystemExit(f"need at least 6 seeds, got {len(seeds)}")
    stats = StatsCache()
    print(f"{configs[0].label or 'one configuration'}: seeds {[r.seed for r in seeds]}, {args.trials} trials")
    for metric in significance.METRICS:
        significant = spread = 0
        all_splits = splits(len(seeds))
        for a, b in all_splits:
            base = Configuration(configs[0].config, [seeds[i] for i in a], label="A", short="A")
            other = Configuration(configs[0].config, [seeds[i] for i in b], label="B", short="B")
            result = against_baseline(other, base, metric, stats, args.trials)
            significant += result.p < 0.05
            spread += result.within_spread
            print(f"  {metric} seeds {[seeds[i].seed for i in b]} vs {[seeds[i].seed for i in a]}: "
                  f"{result.sentence().split(': ', 1)[1]}")
        print(f"{metric}: p < 0.05 in {significant} of {len(all_splits)} splits; flagged within seed spread in "
              f"{spread} of {len(all_splits)}")


if __name__ == "__main__":
    main()
