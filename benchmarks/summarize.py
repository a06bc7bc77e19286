"""Medians of repeated benchmark runs, beside Joey NMT's (see benchmarks/README.md).

    python benchmarks/summarize.py results.jsonl

`results.jsonl` holds the last line of each `run.py` call, in the order they ran: a `--joey` run opens a
round, and the runs after it (other precisions or paths) are compared with that round's Joey figures.
Prints one Markdown table: per configuration the median over rounds of each figure and of its ratio to
Joey's figure of the same round.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from typing import Any

from lightning_nmt.compare import to_markdown

# (our field, Joey's field or None, column title, format)
COLUMNS = [
    ("train_tgt_tokens_per_sec", "train_tgt_tokens_per_s", "train tgt tok/s", "{:,.0f}"),
    ("roofline_fraction", None, "roofline", "{:.2f}"),
    ("peak_rss_mb", "peak_rss_mb", "train peak RSS MB", "{:,.0f}"),
    ("val_loss", None, "val loss", "{:.3f}"),
    ("greedy_sent_per_sec", "greedy_sent_per_s", "greedy sent/s", "{:.0f}"),
    ("greedy_hyp_words", "greedy_hyp_words", "greedy words", "{:.1f}"),
    ("greedy_forced_sent_per_sec", "greedy_sent_per_s", "greedy forced sent/s", "{:.0f}"),
    ("beam5_sent_per_sec", "beam5_sent_per_s", "beam5 sent/s", "{:.0f}"),
    ("beam5_hyp_words", "beam5_hyp_words", "beam5 words", "{:.1f}"),
    ("beam5_forced_sent_per_sec", "beam5_sent_per_s", "beam5 forced sent/s", "{:.0f}"),
    ("beam5_forced_hyp_words", "beam5_hyp_words", "beam5 forced words", "{:.1f}"),
    ("beam5_matched_sent_per_sec", "beam5_sent_per_s", "beam5 at Joey's length sent/s", "{:.0f}"),
    ("beam5_matched_hyp_words", "beam5_hyp_words", "beam5 at Joey's length words", "{:.1f}"),
    ("beam5_matched_best_stop_sent_per_sec", "beam5_sent_per_s", "beam5 at Joey's length, best_finished sent/s",
     "{:.0f}"),
    ("beam5_matched_best_stop_hyp_words", "beam5_hyp_words", "beam5 at Joey's length, best_finished words", "{:.1f}"),
]


def config_name(run: dict[str, Any]) -> str:
    name = run["model"] + (" + input feeding" if run["input_feeding"] else "") + f", {run['precision']}"
    return name + f" (decode {run.get('decode_precision', run['precision'])})"


def rounds(lines: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """[(Joey's figures, our runs compared with them)], one per `--joey` run."""
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for run in lines:
        if "joey" in run:
            out.append((run["joey"], []))
        if not out:
            raise SystemExit("error: the first line must come from a run.py --joey run")
        out[-1][1].append({k: v for k, v in run.items() if k not in ("joey", "ratio_vs_joey")})
    return out


def fmt(values: list[float], pattern: str) -> str:
    return pattern.format(statistics.median(values)) if values else "-"


def table(lines: list[dict[str, Any]]) -> str:
    by_config: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    joeys = []
    for joey, ours in rounds(lines):
        joeys.append(joey)
        for run in ours:
            by_config[config_name(run)].append((joey, run))
    header = ["medians of n rounds", "n", *(title for _, _, title, _ in COLUMNS)]
    joey_row = ["Joey NMT 2.3.0 (input feeding, fp32)", str(len(joeys))]
    for ours, theirs, _, pattern in COLUMNS:
        # Joey's own figure, in the column of the same name
        shown = theirs is not None and "forced" not in ours and "matched" not in ours
        joey_row.append(fmt([j[theirs] for j in joeys if j.get(theirs) is not None], pattern) if shown else "")
    rows = [joey_row]
    for name, pairs in by_config.items():
        cells, ratios = [name, str(len(pairs))], ["ratio to Joey (median of per-round ratios)", ""]
        for ours, theirs, _, pattern in COLUMNS:
            cells.append(fmt([run[ours] for _, run in pairs if run.get(ours) is not None], pattern))
            per_round = [run[ours] / joey[theirs] for joey, run in pairs
                         if theirs and "words" not in ours and run.get(ours) and joey.get(theirs)]
            ratios.append(f"**{statistics.median(per_round):.2f}x**" if per_round else "")
        rows += [cells, ratios]
    return to_markdown(header, rows)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    print(table(lines), end="")


if __name__ == "__main__":
    main()
